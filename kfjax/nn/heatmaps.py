"""Landmark heatmaps: Gaussian targets and the differentiable soft-argmax that reads coordinates back.

Coordinates are in index order and pixel units, pixel centres at integers: (row, col) in 2-D,
(slice, row, col) in 3-D, so `image[..., round(r), round(c)]` is the pixel of landmark (r, c) and
`kfjax.metrics.landmark_errors(pred, target, spacing)` turns differences into mm.

    target = gaussian_heatmaps(landmarks, (H, W), sigma=3.0)    # (B, K, 2) -> (B, H, W, K)
    coords = soft_argmax(logits)                                 # (B, H, W, K) -> (B, K, 2)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kfjax.errors import InputError


def _axes(shape: tuple[int, ...], dtype) -> list[jax.Array]:
    """One coordinate vector per spatial axis, each broadcastable to (1, *shape, 1)."""
    n = len(shape)
    out = []
    for i, size in enumerate(shape):
        view = [1] * (n + 2)
        view[i + 1] = size
        out.append(jnp.arange(size, dtype=dtype).reshape(view))
    return out


def gaussian_heatmaps(landmarks, shape: tuple[int, ...], sigma: float = 3.0):
    """Unnormalised Gaussians exp(-|q - l|² / 2σ²), peak 1 at each landmark.

    landmarks: (B, K, D) index coordinates (pixels); shape: the D spatial sizes; sigma in pixels.
    Returns (B, *shape, K) float32 (float64 for float64 landmarks).
    """
    lm = jnp.asarray(landmarks)
    if lm.ndim != 3 or lm.shape[-1] != len(shape):
        raise InputError(f"landmarks must be (B, K, {len(shape)}) for a {len(shape)}-D shape {tuple(shape)};"
                         f" got {lm.shape}")
    if sigma <= 0:
        raise InputError(f"sigma must be positive (pixels), got {sigma}")
    dtype = jnp.promote_types(lm.dtype, jnp.float32)
    lm = lm.astype(dtype)
    d2 = 0.0
    for axis, grid in enumerate(_axes(tuple(shape), dtype)):
        centre = lm[:, :, axis].reshape((lm.shape[0],) + (1,) * len(shape) + (lm.shape[1],))
        d2 = d2 + (grid - centre) ** 2
    return jnp.exp(-d2 / (2.0 * sigma**2))


def soft_argmax(logits, temperature: float = 1.0):
    """Expected coordinates under softmax(logits / temperature) over the spatial axes.

    logits: (B, *spatial, K). Returns (B, K, D) index coordinates; differentiable everywhere.
    """
    x = jnp.asarray(logits)
    if x.ndim < 4:
        raise InputError(f"soft_argmax expects (B, *spatial, K) with 2 or 3 spatial axes, got {x.shape}")
    spatial = x.shape[1:-1]
    b, k = x.shape[0], x.shape[-1]
    flat = x.reshape(b, -1, k) / temperature
    p = jax.nn.softmax(flat, axis=1).reshape(x.shape)
    coords = [jnp.sum(p * grid, axis=tuple(range(1, len(spatial) + 1))) for grid in _axes(spatial, p.dtype)]
    return jnp.stack(coords, axis=-1)


def hard_argmax(heatmaps):
    """Index of each channel's maximum. heatmaps: (B, *spatial, K) -> (B, K, D) float coordinates."""
    x = jnp.asarray(heatmaps)
    spatial = x.shape[1:-1]
    flat = jnp.argmax(x.reshape(x.shape[0], -1, x.shape[-1]), axis=1)  # (B, K)
    coords = jnp.unravel_index(flat, spatial)
    return jnp.stack(coords, axis=-1).astype(jnp.promote_types(x.dtype, jnp.float32))
