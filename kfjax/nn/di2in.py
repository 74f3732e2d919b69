"""DI2IN: deep image-to-image network (Yang et al., MICCAI 2017), 2-D or 3-D.

Encoder: per level two 3x3 ConvNormAct blocks, downsampling by a stride-2 convolution (no pooling).
Decoder: x2 upsampling (resize or pixel shuffle, then conv), concatenation of the matching encoder
features (multi-level feature concatenation), two ConvNormAct blocks. Deep supervision: a 1x1 head at
every decoder level, upsampled to full size; the final map is a 1x1 convolution over the concatenated
side outputs and the last decoder features' head.

Input `(B, *S, C_in)`; output `(final, sides)` with `final: (B, *S, out_channels)` logits and `sides`
a tuple of `(B, *S, out_channels)` logits, coarsest first. S must be divisible by 2**(len(channels)-1).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfjax.nn.blocks import ConvNormAct, Upsample, run_block, upsample_nearest


class DI2IN(nn.Module):
    """Encoder-decoder with multi-level concatenation and deep supervision."""

    out_channels: int = 1
    channels: Sequence[int] = (16, 32, 64, 128)
    norm: str = "batch"
    act: str = "leaky_relu"
    upsample: str = "nearest"
    remat: bool = False  # recompute each level's pair of ConvNormAct blocks in the backward pass

    def _pair(self, features: int, train: bool):
        """`body(module, x)` of two 3x3 ConvNormAct blocks."""

        def body(module, x):
            x = ConvNormAct(features, norm=self.norm, act=self.act)(x, train)
            return ConvNormAct(features, norm=self.norm, act=self.act)(x, train)

        return body

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        dims = x.ndim - 2
        skips = []
        for i, features in enumerate(self.channels):
            if i > 0:
                x = ConvNormAct(features, strides=2, norm=self.norm, act=self.act)(x, train)
            x = run_block(self, self._pair(features, train), self.remat, x)
            skips.append(x)
        skips.pop()
        sides = []
        levels = len(self.channels) - 1
        for level, (features, skip) in enumerate(zip(reversed(self.channels[:-1]), reversed(skips))):
            x = Upsample(features, self.upsample)(x)
            x = jnp.concatenate([x, skip], axis=-1)
            x = run_block(self, self._pair(features, train), self.remat, x)
            side = nn.Conv(self.out_channels, (1,) * dims, name=f"side_{level}")(x)
            factor = 2 ** (levels - 1 - level)
            sides.append(upsample_nearest(side, factor) if factor > 1 else side)
        final = nn.Conv(self.out_channels, (1,) * dims, name="fuse")(jnp.concatenate(sides, axis=-1))
        return final, tuple(sides)
