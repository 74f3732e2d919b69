"""Image similarities of 2D/3D registration: normalised cross-correlation and gradient correlation.

Both take images ``(..., H, W)`` (batch axes broadcast), return ``(...)`` in [-1, 1] (1 = identical up to
a positive affine change of intensity), are invariant to affine intensity changes and differentiable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kfjax.errors import InputError

__all__ = ["SIMILARITIES", "SIMILARITY_FUNCTIONS", "ncc", "sobel", "gradient_correlation"]

SIMILARITIES = ("ncc", "gc")


def _pair(x, y, name: str, min_size: int = 1):
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim < 2 or y.ndim < 2:
        raise InputError(f"{name}: images must be (..., H, W), got shapes {x.shape} and {y.shape}")
    if x.shape[-2:] != y.shape[-2:]:
        raise InputError(f"{name}: image sizes differ, {x.shape[-2:]} vs {y.shape[-2:]}; resample one first")
    try:
        jnp.broadcast_shapes(x.shape, y.shape)
    except ValueError:
        raise InputError(f"{name}: batch shapes {x.shape[:-2]} and {y.shape[:-2]} do not broadcast") from None
    if min(x.shape[-2:]) < min_size:
        raise InputError(f"{name}: images must be at least {min_size}x{min_size}, got {x.shape[-2:]}")
    dtype = jnp.result_type(x, y, jnp.float32)
    return x.astype(dtype), y.astype(dtype)


@jax.jit
def _ncc(x, y, eps):
    xc = x - jnp.mean(x, (-2, -1), keepdims=True)
    yc = y - jnp.mean(y, (-2, -1), keepdims=True)
    sxy = jnp.mean(xc * yc, (-2, -1))
    sxx = jnp.mean(xc * xc, (-2, -1))
    syy = jnp.mean(yc * yc, (-2, -1))
    return sxy / jnp.sqrt((sxx + eps) * (syy + eps))


def ncc(x, y, *, eps: float = 1e-12):
    """Normalised cross-correlation of images (..., H, W) and (..., H, W) -> (...) in [-1, 1].

    Pearson correlation of the pixel values of each image pair (batch axes broadcast): 1 for ``y = a x + b``
    with ``a > 0``, -1 with ``a < 0``, invariant to affine intensity changes of either image. ``eps`` is
    added to each variance (units of the images squared), so a constant image gives 0, not NaN.
    Differentiable in both arguments.
    """
    x, y = _pair(x, y, "ncc")
    return _ncc(x, y, eps)


def sobel(x):
    """Sobel derivatives of images (..., H, W): (d/dcol, d/drow), each (..., H-2, W-2) (valid region)."""
    x = jnp.asarray(x)
    rows = x[..., :-2, :] + 2.0 * x[..., 1:-1, :] + x[..., 2:, :]  # smoothed across rows
    cols = x[..., :, :-2] + 2.0 * x[..., :, 1:-1] + x[..., :, 2:]  # smoothed across columns
    return rows[..., :, 2:] - rows[..., :, :-2], cols[..., 2:, :] - cols[..., :-2, :]


def gradient_correlation(x, y, *, eps: float = 1e-12):
    """Gradient correlation (Penney et al., 1998) of images (..., H, W) -> (...) in [-1, 1].

    The mean of the NCCs of the column and the row Sobel derivatives of ``x`` and ``y`` (valid region, so
    images need at least 3x3 pixels). 1 for ``y = a x + b`` with ``a > 0``; invariant to affine intensity
    changes; insensitive to smooth additive backgrounds (it compares edges). Differentiable.
    """
    x, y = _pair(x, y, "gradient_correlation", min_size=3)
    return _gc(x, y, eps)


@jax.jit
def _gc(x, y, eps):
    gx, gy = sobel(x), sobel(y)
    return 0.5 * (_ncc(gx[0], gy[0], eps) + _ncc(gx[1], gy[1], eps))


#: similarity name -> function
SIMILARITY_FUNCTIONS = {"ncc": ncc, "gc": gradient_correlation}
