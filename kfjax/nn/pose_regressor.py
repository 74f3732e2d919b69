"""The pose-regression baseline's network: a CNN from a case's DRRs and X-rays to a 6-parameter pose update.

    update = PoseRegressor(channels=(16, 32, 64, 128))(images)   # (B, H, W, 2V) -> (B, 6)

Per level: a stride-2 3x3 convolution then a 3x3 convolution (each normalised, ReLU); then the mean over
space, a hidden dense layer and a dense output initialised to zero, so that an untrained network returns
the zero update (the start pose). The method scales the 6 outputs to radians and mm.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from kfjax.nn.blocks import ConvNormAct

__all__ = ["PoseRegressor"]


class PoseRegressor(nn.Module):
    channels: Sequence[int] = (16, 32, 64, 128)
    hidden: int = 128
    norm: str = "group"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = images
        for c in self.channels:
            x = ConvNormAct(c, strides=2, norm=self.norm)(x, train)
            x = ConvNormAct(c, norm=self.norm)(x, train)
        x = nn.relu(nn.Dense(self.hidden)(x.mean(axis=(1, 2))))
        return nn.Dense(6, kernel_init=nn.initializers.zeros)(x)
