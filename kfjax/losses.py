"""Training losses (jit-able, differentiable).

Arrays are channel-last: images (B, H, W, C), volumes (B, D, H, W, C). `reduction` follows MONAI:
"mean" (default) averages, "sum" sums, "none" returns the unreduced loss (its shape is stated in
each docstring). A `mask` has the data shape or lacks trailing axes (e.g. (B, H, W) for
(B, H, W, C) data); masked "mean" divides by the mask's sum, i.e. for a binary mask by the number
of nonzero (broadcast) elements rather than all of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kfjax.errors import InputError
from kfjax.metrics import broadcast_mask

__all__ = [
    "l1_loss", "l2_loss", "bce_with_logits", "softmax_cross_entropy", "soft_dice_loss",
    "focal_loss", "lsgan_loss", "vanilla_gan_loss", "heatmap_loss",
]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise InputError(f"unknown reduction {reduction!r}; use 'mean', 'sum' or 'none'")


def _float(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _reduce(loss, reduction: str, mask=None):
    """Reduce an elementwise loss, averaging over the mask when one is given."""
    _check_reduction(reduction)
    if mask is not None:
        m = broadcast_mask(mask, loss.shape, loss.dtype)
        loss = loss * m
        if reduction == "mean":
            return jnp.sum(loss) / jnp.maximum(jnp.sum(m), 1e-12)
    if reduction == "mean":
        return jnp.mean(loss)
    if reduction == "sum":
        return jnp.sum(loss)
    return loss


def _same_shape(a, b, what: str):
    a, b = _float(a), _float(b)
    if a.shape != b.shape:
        raise InputError(f"{what}: shapes {a.shape} and {b.shape} differ; pass arrays of the same shape")
    return a, b


def l1_loss(pred, target, mask=None, reduction: str = "mean"):
    """Mean absolute error. pred, target: any same shape. "none" returns |pred - target| (masked)."""
    pred, target = _same_shape(pred, target, "l1_loss")
    return _reduce(jnp.abs(pred - target), reduction, mask)


def l2_loss(pred, target, mask=None, reduction: str = "mean"):
    """Mean squared error. pred, target: any same shape. "none" returns (pred - target)^2 (masked)."""
    pred, target = _same_shape(pred, target, "l2_loss")
    return _reduce((pred - target) ** 2, reduction, mask)


def _bce(logits, targets):
    """Elementwise, numerically stable binary cross-entropy from logits."""
    return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def bce_with_logits(logits, targets, reduction: str = "mean"):
    """Binary cross-entropy of sigmoid(logits) against targets in [0, 1].

    logits, targets: any same shape. "none" returns the elementwise loss of that shape (nats).
    """
    logits, targets = _same_shape(logits, targets, "bce_with_logits")
    return _reduce(_bce(logits, targets), reduction)


def softmax_cross_entropy(logits, labels, reduction: str = "mean"):
    """Softmax cross-entropy over the last axis.

    logits: (..., N). labels: integer labels (...) or one-hot / soft labels (..., N).
    "none" returns the per-position loss (...) in nats.
    """
    logits = _float(logits)
    labels = jnp.asarray(labels)
    logp = jax.nn.log_softmax(logits, axis=-1)
    if labels.shape == logits.shape[:-1]:
        loss = -jnp.take_along_axis(logp, labels.astype(jnp.int32)[..., None], axis=-1)[..., 0]
    elif labels.shape == logits.shape:
        loss = -jnp.sum(labels.astype(logp.dtype) * logp, axis=-1)
    else:
        raise InputError(f"labels {labels.shape} do not fit logits {logits.shape};"
                         " pass (...) int labels or (..., N) one-hot")
    return _reduce(loss, reduction)


def soft_dice_loss(pred, target, sigmoid: bool = False, softmax: bool = False,
                   include_background: bool = True, smooth_nr: float = 1e-5,
                   smooth_dr: float = 1e-5, reduction: str = "mean"):
    """Soft Dice loss with MONAI DiceLoss semantics, per sample and channel over spatial axes.

    pred: probabilities, or logits with sigmoid=True / softmax=True, (B, ..., C).
    target: one-hot (B, ..., C) or integer labels (B, ...) (one-hot encoded to C channels).
    loss[b, c] = 1 - (2 sum(p t) + smooth_nr) / (sum(p) + sum(t) + smooth_dr).
    include_background=False drops channel 0 (after the softmax). "none" returns (B, C').
    """
    if sigmoid and softmax:
        raise InputError("soft_dice_loss: choose sigmoid=True or softmax=True, not both")
    p = _float(pred)
    t = jnp.asarray(target)
    if t.ndim == p.ndim - 1:
        t = jax.nn.one_hot(t, p.shape[-1], dtype=p.dtype)
    if t.shape != p.shape:
        raise InputError(f"soft_dice_loss: target {t.shape} does not fit pred {p.shape};"
                         " pass one-hot (B, ..., C) or labels (B, ...)")
    t = t.astype(p.dtype)
    if p.ndim < 3:
        raise InputError(f"soft_dice_loss needs (B, ..., C) with spatial axes, got {p.shape}")
    if sigmoid:
        p = jax.nn.sigmoid(p)
    if softmax:
        p = jax.nn.softmax(p, axis=-1)
    if not include_background:
        p, t = p[..., 1:], t[..., 1:]
    axes = tuple(range(1, p.ndim - 1))
    inter = jnp.sum(p * t, axis=axes)
    denom = jnp.sum(p, axis=axes) + jnp.sum(t, axis=axes)
    loss = 1.0 - (2.0 * inter + smooth_nr) / (denom + smooth_dr)
    return _reduce(loss, reduction)


def focal_loss(logits, target, gamma: float = 2.0, alpha: float | None = None,
               reduction: str = "mean"):
    """Sigmoid focal loss (Lin et al. 2017): -alpha_t (1 - p_t)^gamma log(p_t).

    logits, target: any same shape, target in [0, 1]. alpha=None applies no class weight;
    alpha weights positives by alpha and negatives by 1 - alpha. gamma=0, alpha=None equals
    `bce_with_logits`. "none" returns the elementwise loss.
    """
    logits, target = _same_shape(logits, target, "focal_loss")
    p = jax.nn.sigmoid(logits)
    p_t = p * target + (1.0 - p) * (1.0 - target)
    loss = _bce(logits, target)
    if gamma != 0:
        loss = loss * (1.0 - p_t) ** gamma
    if alpha is not None:
        loss = loss * (alpha * target + (1.0 - alpha) * (1.0 - target))
    return _reduce(loss, reduction)


def lsgan_loss(pred, is_real, reduction: str = "mean"):
    """Least-squares GAN loss (Mao et al.): (pred - 1)^2 if is_real else pred^2.

    pred: discriminator outputs, any shape. is_real: bool, or an array broadcastable to pred.
    "none" returns the elementwise loss.
    """
    pred = _float(pred)
    label = jnp.asarray(is_real, pred.dtype)
    return _reduce((pred - label) ** 2, reduction)


def vanilla_gan_loss(logits, is_real, reduction: str = "mean"):
    """Original GAN loss: binary cross-entropy of the discriminator logits against 1 (real) or 0.

    logits: any shape. is_real: bool, or an array broadcastable to logits. "none": elementwise.
    """
    logits = _float(logits)
    label = jnp.broadcast_to(jnp.asarray(is_real, logits.dtype), logits.shape)
    return _reduce(_bce(logits, label), reduction)


def heatmap_loss(pred, target, mask=None, reduction: str = "mean"):
    """Landmark heatmap regression loss: mean squared error. pred, target: (B, ..., K)."""
    return l2_loss(pred, target, mask=mask, reduction=reduction)
