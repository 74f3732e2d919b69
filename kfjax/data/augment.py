"""Data augmentation on host numpy batches ``(B, H, W, C)`` with explicit randomness.

Every function takes a ``numpy.random.Generator``; :func:`augment` also accepts an int seed, a tuple of
ints or a JAX PRNG key (typed or raw ``uint32[2]``), turned into a Generator by :func:`as_rng`. The same
key and the same batch give the same output, bit for bit. Parameters are drawn per sample and always in
the same order, so switching one augmentation off does not change the draws of the others.

Geometric transforms (flips, a small rotation/scale/translation about the image centre) are applied to
image keys and label keys alike, images interpolated linearly (edges repeated), labels by nearest
neighbour (outside filled with 0), so labels keep their values. Intensity transforms (scale, shift,
gamma) touch only the intensity keys (default: the image keys), each key with its own draws.

    loader = BatchLoader(ds, sampler, 0, steps, transform=make_transform(seed, label_keys=("label",)))
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from kfjax.errors import InputError

__all__ = ["AugmentConfig", "as_rng", "random_flips", "affine_matrices", "apply_affine", "random_intensity",
           "augment", "make_transform"]


@dataclass(frozen=True)
class AugmentConfig:
    """What :func:`augment` does; the defaults are mild, suitable for CT/MR slices."""

    flip_axes: tuple[int, ...] = (2,)  # image axes that may flip: 1 = rows (up-down), 2 = columns (left-right)
    flip_p: float = 0.5  # probability of flipping each axis in flip_axes
    affine_p: float = 1.0  # probability of a random affine per sample
    rotate_deg: float = 10.0  # rotation uniform in [-rotate_deg, rotate_deg] degrees
    scale: float = 0.1  # isotropic scale uniform in [1 - scale, 1 + scale]
    translate: float = 0.05  # shift uniform in [-translate, translate] times the image size, per axis
    intensity_p: float = 1.0  # probability of the intensity transform per sample
    intensity_scale: float = 0.1  # multiply by uniform [1 - s, 1 + s]
    intensity_shift: float = 0.1  # add uniform [-s, s] times the sample's intensity range
    gamma: float = 0.2  # gamma = exp(uniform [-g, g]) on the sample's [min, max] normalised intensities


def as_rng(key: Any) -> np.random.Generator:
    """A numpy Generator from a Generator (returned as is), an int, a tuple of ints or a JAX PRNG key."""
    if isinstance(key, np.random.Generator):
        return key
    if isinstance(key, (int, np.integer)):
        return np.random.default_rng(int(key))
    if isinstance(key, tuple):
        return np.random.default_rng(tuple(int(k) for k in key))
    import jax

    if hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    data = np.asarray(key)
    if data.dtype.kind != "u" or data.size == 0:
        raise InputError(f"augmentation key must be a Generator, int seed or JAX PRNG key, got {type(key).__name__}")
    return np.random.default_rng(data.astype(np.uint32).ravel().tolist())


def _check(x: np.ndarray, name: str) -> None:
    if x.ndim != 4:
        raise InputError(f"augmentation expects '{name}' of shape (B, H, W, C), got {x.shape}")


def random_flips(rng: np.random.Generator, n: int, axes: Sequence[int], p: float) -> np.ndarray:
    """Bool ``(n, len(axes))``: whether sample i flips along ``axes[j]``."""
    return rng.random((n, len(axes))) < p


def affine_matrices(rng: np.random.Generator, n: int, rotate_deg: float, scale: float, translate: float,
                    shape: tuple[int, int]) -> np.ndarray:
    """``(n, 2, 3)`` output->input pixel maps ``[A | b]`` of random rotation, scale and shift about the centre."""
    theta = np.deg2rad(rng.uniform(-rotate_deg, rotate_deg, n))
    zoom = rng.uniform(1.0 - scale, 1.0 + scale, n)
    shift = rng.uniform(-translate, translate, (n, 2)) * np.asarray(shape, np.float64)
    centre = (np.asarray(shape, np.float64) - 1.0) / 2.0
    out = np.zeros((n, 2, 3))
    for i in range(n):
        c, s = np.cos(theta[i]), np.sin(theta[i])
        forward = zoom[i] * np.array([[c, -s], [s, c]])  # input -> output about the centre
        inv = np.linalg.inv(forward)
        out[i, :, :2] = inv
        out[i, :, 2] = centre - inv @ (centre + shift[i])
    return out


def apply_affine(x: np.ndarray, matrices: np.ndarray, order: int, mode: str = "nearest", cval: float = 0.0,
                 active: np.ndarray | None = None) -> np.ndarray:
    """Warp each sample/channel of ``x (B, H, W, C)`` by its ``matrices[i] (2, 3)``; same dtype and shape.

    ``order`` 1 (linear, images) or 0 (nearest, labels); samples with ``active[i]`` False are copied.
    """
    _check(x, "x")
    out = np.array(x, copy=True)
    for i in range(x.shape[0]):
        if active is not None and not active[i]:
            continue
        for c in range(x.shape[3]):
            src = x[i, ..., c]
            src = src.astype(np.float32) if order or src.dtype == bool else src
            out[i, ..., c] = ndimage.affine_transform(src, matrices[i, :, :2], offset=matrices[i, :, 2],
                                                      order=order, mode=mode, cval=cval)
    return out


def random_intensity(rng: np.random.Generator, x: np.ndarray, scale: float, shift: float, gamma: float,
                     p: float = 1.0) -> np.ndarray:
    """Per-sample gamma (on [min, max] normalised values), then scale and shift; float32 ``(B, H, W, C)``."""
    _check(x, "x")
    n = x.shape[0]
    active = rng.random(n) < p
    g = np.exp(rng.uniform(-gamma, gamma, n))
    s = rng.uniform(1.0 - scale, 1.0 + scale, n)
    b = rng.uniform(-shift, shift, n)
    out = np.asarray(x, np.float32).copy()
    for i in np.flatnonzero(active):
        lo, hi = float(out[i].min()), float(out[i].max())
        span = hi - lo
        if span > 0:
            out[i] = lo + span * ((out[i] - lo) / span) ** g[i]
        out[i] = out[i] * s[i] + b[i] * span
    return out


def augment(batch: dict[str, np.ndarray], key: Any, image_keys: Sequence[str] = ("image",),
            label_keys: Sequence[str] = ("label",), intensity_keys: Sequence[str] | None = None,
            config: AugmentConfig = AugmentConfig()) -> dict[str, np.ndarray]:
    """Augmented copy of ``batch``: the same geometry for every image and label key, per sample.

    Keys not named pass through unchanged. ``key`` is anything :func:`as_rng` accepts.
    Raises InputError for a missing key, a non-4-D array or mismatched batch/spatial sizes.
    """
    rng = as_rng(key)
    geo = list(image_keys) + list(label_keys)
    missing = [k for k in geo if k not in batch]
    if missing:
        raise InputError(f"batch has no key {', '.join(missing)}; it has {', '.join(batch)}")
    for k in geo:
        _check(batch[k], k)
    shapes = {batch[k].shape[:3] for k in geo}
    if len(shapes) > 1:
        raise InputError(f"image and label keys differ in (B, H, W): { {k: batch[k].shape for k in geo} }")
    n, h, w = shapes.pop()
    cfg = config
    flips = random_flips(rng, n, cfg.flip_axes, cfg.flip_p)
    active = rng.random(n) < cfg.affine_p
    matrices = affine_matrices(rng, n, cfg.rotate_deg, cfg.scale, cfg.translate, (h, w))
    out = dict(batch)
    for k in geo:
        x = np.array(batch[k], copy=True)
        for j, axis in enumerate(cfg.flip_axes):
            x[flips[:, j]] = np.flip(x[flips[:, j]], axis=axis)
        if k in label_keys:
            x = apply_affine(x, matrices, order=0, mode="constant", cval=0, active=active)
        else:
            x = apply_affine(x, matrices, order=1, mode="nearest", active=active)
        out[k] = x
    for k in image_keys if intensity_keys is None else intensity_keys:
        out[k] = random_intensity(rng, out[k], cfg.intensity_scale, cfg.intensity_shift, cfg.gamma, cfg.intensity_p)
    return out


def make_transform(seed: int, image_keys: Sequence[str] = ("image",), label_keys: Sequence[str] = ("label",),
                   config: AugmentConfig = AugmentConfig(), stream: int = 0) -> Callable[[dict, int], dict]:
    """``transform(batch, step)`` for :class:`kfjax.data.pipeline.BatchLoader`: key ``(seed, stream, step)``.

    Give each process its own ``stream`` (e.g. its process index) so its rows draw their own parameters.
    """

    def transform(batch: dict, step: int) -> dict:
        return augment(batch, (seed, stream, step), image_keys, label_keys, config=config)

    return transform
