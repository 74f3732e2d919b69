"""U-Net (Ronneberger et al. 2015) in 2-D or 3-D, channel-last, with resize+conv upsampling.

`UNet(out_channels=1, channels=(32, 64, 128, 256))` maps `(B, H, W, C_in) -> (B, H, W, out_channels)`
(or the 3-D equivalent). Each level is two 3x3 ConvNormAct blocks; the encoder downsamples by 2x2
max pooling, the decoder upsamples (nearest x2 + 3x3 conv), concatenates the skip features and applies
two more blocks. Spatial sizes must be divisible by 2**(len(channels) - 1).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfjax.nn.blocks import DoubleConv, Upsample, max_pool


class UNet(nn.Module):
    """Plain U-Net; `channels[i]` features at level i (the last entry is the bottleneck)."""

    out_channels: int = 1
    channels: Sequence[int] = (32, 64, 128, 256)
    norm: str = "group"
    act: str = "relu"
    upsample: str = "nearest"
    zero_output: bool = False  # zero-initialise the output conv (a residual branch that starts as identity)
    remat: bool = False  # recompute each level's DoubleConv in the backward pass (model.remat=blocks)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        skips = []
        for i, features in enumerate(self.channels):
            x = DoubleConv(features, self.norm, self.act, self.remat)(x, train)
            if i < len(self.channels) - 1:
                skips.append(x)
                x = max_pool(x)
        for features, skip in zip(reversed(self.channels[:-1]), reversed(skips)):
            x = Upsample(features, self.upsample)(x)
            x = jnp.concatenate([x, skip], axis=-1)
            x = DoubleConv(features, self.norm, self.act, self.remat)(x, train)
        dims = x.ndim - 2
        init = nn.initializers.zeros if self.zero_output else nn.initializers.lecun_normal()
        return nn.Conv(self.out_channels, (1,) * dims, kernel_init=init)(x)
