"""POINT²'s tracker: Siamese features of a DRR and an X-ray, per-POI template correlation, soft-argmax.

    logits = PoiTracker(...)(drr, xray, uv_drr)      # (B, H, W) images, (B, K, 2) POI pixels in the DRR
    uv, spread, probability = soft_argmax(logits, stride)

One feature network (a U-Net, shared by both images: Siamese) maps each image to ``features`` unit-length
channels, average-pooled by ``stride``. For each point of interest the DRR's features are sampled bilinearly
on a ``patch`` x ``patch`` grid of feature pixels about its DRR position: that template is correlated with the
X-ray's features at every feature pixel ('same' padding), which gives one score map per POI, shift-invariant
by construction. Scores are cosine similarities averaged over the template, times a learned temperature, plus
a learned bias.

Pixel convention (:mod:`kfjax.physics.carm`): (u, v) = (column, row), pixel (i, j) has its centre at
(j + 0.5, i + 0.5). Feature pixel (i, j) covers detector pixels [i s, (i + 1) s) x [j s, (j + 1) s), so its
centre is at u = (j + 0.5) s.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfjax.nn.unet import UNet

__all__ = ["PoiTracker", "sample_patches", "correlate", "soft_argmax", "to_feature", "to_pixel"]


def to_feature(uv, stride: int):
    """Detector pixel coordinates (..., 2) -> continuous feature-pixel indices (x, y) (..., 2)."""
    return uv / stride - 0.5


def to_pixel(xy, stride: int):
    """Inverse of :func:`to_feature`."""
    return (xy + 0.5) * stride


def sample_patches(features, centres, patch: int):
    """Bilinear templates (K, patch, patch, C) of ``features`` (H, W, C) about ``centres`` (K, 2) = feature-pixel
    (x, y); zero outside the map."""
    h, w, _ = features.shape
    r = (patch - 1) / 2.0
    offsets = jnp.arange(patch, dtype=centres.dtype) - r
    x = centres[:, None, None, 0] + offsets[None, None, :]  # (K, 1, P)
    y = centres[:, None, None, 1] + offsets[None, :, None]  # (K, P, 1)
    x, y = jnp.broadcast_to(x, (len(centres), patch, patch)), jnp.broadcast_to(y, (len(centres), patch, patch))
    x0, y0 = jnp.floor(x), jnp.floor(y)
    out = 0.0
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1.0 - jnp.abs(x - xi)) * (1.0 - jnp.abs(y - yi))
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
            value = features[jnp.clip(yi, 0, h - 1).astype(jnp.int32), jnp.clip(xi, 0, w - 1).astype(jnp.int32)]
            out = out + jnp.where(inside, weight, 0.0)[..., None] * value
    return out


def correlate(features, templates):
    """Score maps (K, H, W) of templates (K, P, P, C) slid over ``features`` (H, W, C) ('same' padding): the
    template's mean over its P² positions of the per-pixel feature dot products.

    Written as P² matrix products of shifted feature maps rather than a convolution with K kernels: XLA's CPU
    gradient of a convolution with batched kernels is an order of magnitude slower than the forward pass."""
    k, p = templates.shape[:2]
    h, w, _ = features.shape
    r = (p - 1) // 2
    padded = jnp.pad(features, ((r, p - 1 - r), (r, p - 1 - r), (0, 0)))
    out = jnp.zeros((k, h, w), features.dtype)
    for dy in range(p):
        for dx in range(p):
            out = out + jnp.einsum("kc,hwc->khw", templates[:, dy, dx], padded[dy:dy + h, dx:dx + w])
    return out / (p * p)


def soft_argmax(logits, stride: int):
    """(uv (..., 2) detector pixels, spread (...,) feature pixels, probability (..., H, W)) of score maps
    (..., H, W): the expected position under the spatial softmax and the root of its variance."""
    h, w = logits.shape[-2:]
    p = jax.nn.softmax(logits.reshape(logits.shape[:-2] + (h * w,)), axis=-1).reshape(logits.shape)
    ys, xs = jnp.arange(h, dtype=p.dtype), jnp.arange(w, dtype=p.dtype)
    ex = jnp.sum(p * xs, axis=(-2, -1))
    ey = jnp.sum(p * ys[:, None], axis=(-2, -1))
    var = jnp.sum(p * ((xs - ex[..., None, None]) ** 2 + (ys[:, None] - ey[..., None, None]) ** 2), axis=(-2, -1))
    return to_pixel(jnp.stack([ex, ey], -1), stride), jnp.sqrt(var + 1e-12), p


class PoiTracker(nn.Module):
    """Score-map logits (B, K, H/stride, W/stride) of K POIs from a DRR and an X-ray (B, H, W) and the POIs'
    DRR pixels (B, K, 2). Both images should be standardised (zero mean, unit variance) by the caller."""

    features: int = 32
    channels: Sequence[int] = (16, 32, 64)
    stride: int = 2
    patch: int = 5
    norm: str = "group"

    @nn.compact
    def __call__(self, drr, xray, uv_drr, train: bool = False):
        b = drr.shape[0]
        both = jnp.concatenate([drr, xray], 0)[..., None]  # one network for both: Siamese
        f = UNet(out_channels=self.features, channels=tuple(self.channels), norm=self.norm)(both, train)
        if self.stride > 1:
            f = nn.avg_pool(f, (self.stride, self.stride), (self.stride, self.stride))
        f = f / jnp.sqrt(jnp.sum(f**2, -1, keepdims=True) + 1e-6)
        fd, fx = f[:b], f[b:]
        templates = jax.vmap(sample_patches, in_axes=(0, 0, None))(fd, to_feature(uv_drr, self.stride), self.patch)
        scores = jax.vmap(correlate)(fx, templates)  # (B, K, H', W')
        temperature = self.param("temperature", nn.initializers.constant(10.0), ())
        bias = self.param("bias", nn.initializers.zeros, ())
        return temperature * scores + bias
