"""The deep-image-prior "skip" network (Ulyanov et al., CVPR 2018, `models/skip.py` of the paper's code).

An encoder-decoder with `scales` levels. Level i: skip branch = conv1x1 to `skip_channels[i]` -> norm ->
LeakyReLU 0.2; down branch = conv3/s2 -> norm -> act -> conv3 -> norm -> act -> (level i+1) -> bilinear x2;
then concat(skip, down) -> norm -> conv3 to `up_channels[i]` -> norm -> act -> conv1x1 -> norm -> act.
Output: conv1x1 to `out_channels` + sigmoid. Reflection padding everywhere. DIP runs its network in
training mode on one image, where BatchNorm normalises each channel over the image: that is instance norm,
which this module uses (per-image, so it is also exact under `vmap`).

`(B, H, W, C_z) -> (B, H, W, out_channels)` in (0, 1); H, W divisible by `2**scales`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfjax.nn.blocks import Norm
from kfjax.nn.gan import ReflectConv

__all__ = ["SkipNet"]


def _act(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, 0.2)


class SkipNet(nn.Module):
    """DIP's skip network; the paper's denoising setting is 5 scales of 128 channels with 4 skip channels."""

    out_channels: int = 1
    down_channels: tuple[int, ...] = (128,) * 5
    up_channels: tuple[int, ...] = (128,) * 5
    skip_channels: tuple[int, ...] = (4,) * 5
    sigmoid: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scales = len(self.down_channels)
        if not len(self.up_channels) == len(self.skip_channels) == scales:
            raise ValueError("down_channels, up_channels and skip_channels need one entry per scale")
        skips = []
        for i in range(scales):
            if self.skip_channels[i]:
                skips.append(_act(Norm("instance")(ReflectConv(self.skip_channels[i], 1)(x))))
            else:
                skips.append(None)
            x = _act(Norm("instance")(ReflectConv(self.down_channels[i], 3, strides=2)(x)))
            x = _act(Norm("instance")(ReflectConv(self.down_channels[i], 3)(x)))
        for i in reversed(range(scales)):
            b, h, w, c = x.shape
            x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="linear")
            if skips[i] is not None:
                x = jnp.concatenate([skips[i], x], axis=-1)
            x = Norm("instance")(x)
            x = _act(Norm("instance")(ReflectConv(self.up_channels[i], 3)(x)))
            x = _act(Norm("instance")(ReflectConv(self.up_channels[i], 1)(x)))
        x = ReflectConv(self.out_channels, 1)(x)
        return jax.nn.sigmoid(x) if self.sigmoid else x
