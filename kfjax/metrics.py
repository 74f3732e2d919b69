"""Evaluation metrics: image similarity, overlap, surface distance, landmark and registration errors.

Arrays are channel-last: images (B, H, W, C), volumes (B, D, H, W, C). The jnp metrics are
jit-able and return one value per batch element, shape (B,), unless noted. A `mask` is 1 where
the metric is computed and 0 elsewhere; it has the image shape, or lacks trailing axes (e.g. a
(B, H, W) mask for (B, H, W, C) images), and `mask=None` means everywhere. The surface-distance
metrics and `error_stats` are host (numpy/scipy) functions, not jit-able.

`Mean` and `merge_metrics` / `compute_metrics` accumulate exact averages over batches and
devices: an eval step returns sums and counts, never averages of averages.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from scipy import ndimage

from kfjax.errors import InputError

__all__ = [
    "psnr", "ssim", "mae", "dice", "average_surface_distance", "hausdorff_distance_95",
    "landmark_errors", "error_stats", "mtre", "gross_failure_rate", "accuracy",
    "Mean", "merge_metrics", "compute_metrics",
]


def _pair(pred, target):
    """Two float arrays of the same shape (B, ..., C)."""
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    if pred.shape != target.shape:
        raise InputError(f"pred has shape {pred.shape} but target has {target.shape}; pass arrays of the same shape")
    if pred.ndim < 2:
        raise InputError(f"expected batched arrays (B, ..., C), got shape {pred.shape}; add the batch and channel axes")
    dtype = jnp.result_type(pred.dtype, target.dtype, jnp.float32)
    return pred.astype(dtype), target.astype(dtype)


def broadcast_mask(mask, shape, dtype=jnp.float32):
    """`mask` aligned on the leading axes and broadcast to `shape` (missing trailing axes are added)."""
    m = jnp.asarray(mask)
    if m.ndim > len(shape):
        raise InputError(f"mask has shape {m.shape}, more axes than the data {tuple(shape)};"
                         " pass a mask of the data shape")
    m = m.reshape(m.shape + (1,) * (len(shape) - m.ndim))
    try:
        return jnp.broadcast_to(m, shape).astype(dtype)
    except ValueError:
        raise InputError(f"mask of shape {m.shape} does not fit data of shape {tuple(shape)};"
                         " pass a mask of the data shape") from None


def _masked_mean(values, mask, axes):
    """Mean of `values` over `axes`, over the mask's pixels only when `mask` is given."""
    if mask is None:
        return jnp.mean(values, axis=axes)
    m = broadcast_mask(mask, values.shape, values.dtype)
    return jnp.sum(values * m, axis=axes) / jnp.sum(m, axis=axes)


def psnr(pred, target, data_range, mask=None):
    """Peak signal-to-noise ratio in dB, 10 log10(R^2 / MSE), per image.

    pred, target: (B, ..., C). data_range R: scalar or (B,), the intensity range (e.g. 1.0 or 4095).
    The MSE is over all channels of the masked pixels. Identical images give inf. Returns (B,).
    """
    pred, target = _pair(pred, target)
    axes = tuple(range(1, pred.ndim))
    mse = _masked_mean((pred - target) ** 2, mask, axes)
    r = jnp.asarray(data_range, pred.dtype)
    return 10.0 * jnp.log10(r**2 / mse)


def mae(pred, target, mask=None):
    """Mean absolute error per image over all channels of the masked pixels. (B, ..., C) -> (B,)."""
    pred, target = _pair(pred, target)
    return _masked_mean(jnp.abs(pred - target), mask, tuple(range(1, pred.ndim)))


def _window(window: str, n_spatial: int):
    """1-D weights of the separable SSIM window and the covariance normalisation."""
    if window == "uniform":  # scikit-image default: 7-wide box, sample covariance
        w = np.full(7, 1.0 / 7.0)
        n = 7**n_spatial
        return w, n / (n - 1.0)
    if window == "gaussian":  # Wang et al. 2004: 11 taps, sigma 1.5, population covariance
        i = np.arange(-5, 6, dtype=np.float64)
        w = np.exp(-0.5 * (i / 1.5) ** 2)
        return w / w.sum(), 1.0
    raise InputError(f"unknown SSIM window {window!r}; use 'uniform' or 'gaussian'")


def _filter_valid(f, weights):
    """Separable 'valid' correlation (no padding) of f (N, *S, 1) with 1-D `weights` on every spatial axis."""
    n = f.ndim - 2
    dn = ("NHWC", "HWIO", "NHWC") if n == 2 else ("NDHWC", "DHWIO", "NDHWC")
    for ax in range(n):
        shape = [1] * (n + 2)
        shape[ax] = len(weights)
        kernel = jnp.asarray(weights, f.dtype).reshape(shape)
        f = jax.lax.conv_general_dilated(f, kernel, (1,) * n, "VALID", dimension_numbers=dn,
                                         precision=jax.lax.Precision.HIGHEST)
    return f


def ssim(pred, target, data_range, window: str = "uniform", mask=None):
    """Mean structural similarity per image; channels are computed separately then averaged.

    pred, target: (B, H, W, C) or (B, D, H, W, C). data_range: scalar or (B,).
    window="uniform": scikit-image's default (7-wide box, K1=0.01, K2=0.03, sample covariance).
    window="gaussian": Wang et al. / MATLAB (11 taps, sigma 1.5, population covariance).
    Like scikit-image, the SSIM map is averaged over the region (win-1)//2 away from every border;
    with a mask, over the mask's pixels inside that region. Returns (B,). `window` must be static
    under jit.
    """
    x, y = _pair(pred, target)
    n_sp = x.ndim - 2
    if n_sp not in (2, 3):
        raise InputError(f"ssim needs (B, H, W, C) or (B, D, H, W, C) arrays, got shape {x.shape}")
    w, cov_norm = _window(window, n_sp)
    k = len(w)
    if min(x.shape[1:-1]) < k:
        raise InputError(f"ssim with the {window} window needs every spatial size >= {k}, got shape {x.shape}")
    # Work in units of data_range (then C1 = K1^2, C2 = K2^2) and centred on the target's mean,
    # which keeps the float32 variances E[x^2] - E[x]^2 accurate.
    r = jnp.asarray(data_range, x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    x, y = x / r, y / r
    sp_axes = tuple(range(1, x.ndim - 1))
    c = jnp.mean(y, axis=sp_axes, keepdims=True)
    x, y = x - c, y - c
    f = jnp.stack([x, y, x * x, y * y, x * y])  # (5, B, *S, C) -> one single-channel batch
    f = jnp.moveaxis(f, -1, 2).reshape((-1,) + x.shape[1:-1] + (1,))
    f = _filter_valid(f, w)
    f = f.reshape((5, x.shape[0], x.shape[-1]) + f.shape[1:-1])
    mx, my, mxx, myy, mxy = jnp.moveaxis(f, 2, -1)  # each (B, *S', C)
    vx = cov_norm * (mxx - mx * mx)
    vy = cov_norm * (myy - my * my)
    vxy = cov_norm * (mxy - mx * my)
    ux, uy = mx + c, my + c
    c1, c2 = 0.01**2, 0.03**2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    if mask is None:
        per_channel = jnp.mean(s, axis=sp_axes)
    else:
        pad = (k - 1) // 2
        m = broadcast_mask(mask, x.shape, s.dtype)
        for ax in sp_axes:
            m = jax.lax.slice_in_dim(m, pad, m.shape[ax] - pad, axis=ax)
        per_channel = jnp.sum(s * m, axis=sp_axes) / jnp.sum(m, axis=sp_axes)
    return jnp.mean(per_channel, axis=-1)


def dice(pred, target, include_background: bool = True, eps: float = 1e-8):
    """Dice overlap 2|P∩T| / (|P| + |T|) per sample and channel.

    pred, target: one-hot or binary masks (B, ..., C) (binary masks: C = 1). Returns (B, C), or
    (B, C-1) with include_background=False (drops channel 0). Both empty gives 1.0; `eps` only
    guards the division.
    """
    p, t = _pair(pred, target)
    if not include_background:
        p, t = p[..., 1:], t[..., 1:]
    axes = tuple(range(1, p.ndim - 1))
    inter = jnp.sum(p * t, axis=axes)
    denom = jnp.sum(p, axis=axes) + jnp.sum(t, axis=axes)
    return jnp.where(denom > 0, 2.0 * inter / jnp.maximum(denom, eps), 1.0)


def _surface_distances(pred, target, spacing):
    """Distances (mm) from pred's surface voxels to target's surface, and back; None if a mask is empty."""
    p, t = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    if p.shape != t.shape or p.ndim not in (2, 3):
        raise InputError(f"expected two single 2-D or 3-D masks of the same shape, got {p.shape} and {t.shape}")
    if not p.any() or not t.any():
        return None
    sampling = np.broadcast_to(np.asarray(1.0 if spacing is None else spacing, np.float64), (p.ndim,))
    structure = ndimage.generate_binary_structure(p.ndim, 1)  # face-connected: 4 in 2-D, 6 in 3-D
    # Erosion treats outside the array as background, so mask voxels on the array border are surface.
    sp = p & ~ndimage.binary_erosion(p, structure=structure)
    st = t & ~ndimage.binary_erosion(t, structure=structure)
    d_to_t = ndimage.distance_transform_edt(~st, sampling=sampling)
    d_to_p = ndimage.distance_transform_edt(~sp, sampling=sampling)
    return d_to_t[sp], d_to_p[st]


def average_surface_distance(pred, target, spacing=None) -> float:
    """Symmetric average surface distance in mm between two binary masks (host function).

    pred, target: one mask each, (H, W) or (D, H, W). spacing: voxel size in mm per axis (default 1).
    Surface = mask minus its face-connected erosion. ASD = (sum of pred->target distances + sum of
    target->pred distances) / (number of surface voxels of both). nan if either mask is empty.
    """
    d = _surface_distances(pred, target, spacing)
    if d is None:
        return float("nan")
    return float((d[0].sum() + d[1].sum()) / (d[0].size + d[1].size))


def hausdorff_distance_95(pred, target, spacing=None) -> float:
    """95th-percentile Hausdorff distance in mm between two binary masks (host function).

    MONAI's convention: the maximum of the two directed 95th percentiles (pred->target and
    target->pred surface distances, numpy's linear percentile). Shapes and spacing as in
    `average_surface_distance`. nan if either mask is empty.
    """
    d = _surface_distances(pred, target, spacing)
    if d is None:
        return float("nan")
    return float(max(np.percentile(d[0], 95), np.percentile(d[1], 95)))


def landmark_errors(pred, target, spacing=None):
    """Euclidean landmark errors. pred, target: (B, K, D) voxel (or mm) coordinates.

    spacing: None (coordinates already in mm), scalar, (D,) or (B, D) mm per voxel; it multiplies
    the coordinate differences. Returns (B, K) in mm.
    """
    pred, target = _pair(pred, target)
    diff = pred - target
    if spacing is not None:
        s = jnp.asarray(spacing, diff.dtype)
        diff = diff * (s[:, None, :] if s.ndim == 2 else s)
    return jnp.sqrt(jnp.sum(diff**2, axis=-1))


def error_stats(errors) -> dict:
    """Summary of errors of any shape (host function): mean, std (population, ddof=0), median, p80."""
    e = np.asarray(errors, np.float64).ravel()
    if e.size == 0:
        raise InputError("error_stats got no errors; pass at least one value")
    return {"mean": float(e.mean()), "std": float(e.std()), "median": float(np.median(e)),
            "p80": float(np.percentile(e, 80))}


def mtre(T_pred, T_true, points):
    """Mean target registration error per sample, mean_x ||T_pred x - T_true x||.

    T_pred, T_true: (B, 4, 4) homogeneous transforms. points: (K, 3) or (B, K, 3) target points
    (mm). Returns (B,) in the units of the points.
    """
    tp, tt = _pair(T_pred, T_true)
    if tp.shape[-2:] != (4, 4):
        raise InputError(f"expected (B, 4, 4) transforms, got {tp.shape}")
    x = jnp.asarray(points, tp.dtype)
    if x.ndim == 2:
        x = x[None]
    xh = jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), x.dtype)], axis=-1)  # (B|1, K, 4)
    d = tp[:, :3, :] - tt[:, :3, :]  # (B, 3, 4)
    diff = jnp.sum(d[:, None, :, :] * xh[:, :, None, :], axis=-1)  # (B, K, 3), no matmul precision loss
    return jnp.mean(jnp.sqrt(jnp.sum(diff**2, axis=-1)), axis=-1)


def gross_failure_rate(mtre_values, threshold: float = 10.0):
    """Fraction in [0, 1] (not percent) of cases with mTRE strictly greater than `threshold` (mm)."""
    v = jnp.asarray(mtre_values)
    return jnp.mean((v > threshold).astype(jnp.float32))


def accuracy(pred, labels):
    """Fraction of correct labels per sample.

    pred: logits/probabilities (B, ..., N) (argmax over the last axis) or labels (B, ...).
    labels: integer labels (B, ...). Returns (B,): 0/1 for one label per sample, else the fraction.
    """
    pred, labels = jnp.asarray(pred), jnp.asarray(labels)
    if pred.ndim == labels.ndim + 1:
        pred = jnp.argmax(pred, axis=-1)
    if pred.shape != labels.shape or labels.ndim < 1:
        raise InputError(f"pred {pred.shape} does not match labels {labels.shape};"
                         " pass (B, ..., N) logits or (B, ...) labels")
    correct = (pred == labels).astype(jnp.float32)
    return jnp.mean(correct, axis=tuple(range(1, correct.ndim)))


@struct.dataclass
class Mean:
    """Streaming mean as (total, count) arrays: a pytree that jit-ed steps can return and merge."""

    total: jax.Array
    count: jax.Array

    @classmethod
    def empty(cls) -> "Mean":
        """A mean of nothing (merges as the identity)."""
        return cls(total=jnp.zeros((), jnp.float32), count=jnp.zeros((), jnp.float32))

    @classmethod
    def from_values(cls, values, mask=None) -> "Mean":
        """Sum and count of `values` (any shape); `mask` (leading-aligned, e.g. (B,)) weights them.

        Entries where the mask is 0 are skipped even when they are nan.
        """
        v = jnp.asarray(values, jnp.float32)
        if mask is None:
            return cls(total=jnp.sum(v), count=jnp.asarray(v.size, jnp.float32))
        m = broadcast_mask(mask, v.shape, jnp.float32)
        return cls(total=jnp.sum(jnp.where(m > 0, v * m, 0.0)), count=jnp.sum(m))

    def merge(self, other: "Mean") -> "Mean":
        """Combine two accumulators (sums the totals and counts)."""
        return Mean(total=self.total + other.total, count=self.count + other.count)

    def compute(self):
        """total / count; nan when the count is 0."""
        ok = self.count > 0
        return jnp.where(ok, self.total / jnp.where(ok, self.count, 1.0), jnp.nan)


def merge_metrics(a: dict | None, b: dict) -> dict:
    """Merge two dicts of `Mean`; keys present in only one are kept. `a` may be None or {}."""
    out = dict(a or {})
    for k, v in b.items():
        out[k] = out[k].merge(v) if k in out else v
    return out


def compute_metrics(d: dict) -> dict:
    """{name: Mean} -> {name: scalar mean array}."""
    return {k: v.compute() for k, v in d.items()}
