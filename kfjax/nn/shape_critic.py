"""The shape critic of DI2IN-AN: a small 3-D CNN that tells a predicted organ mask from a true one.

Per level a 3x3x3 convolution with stride 2, a normalisation and LeakyReLU(0.2) (the first level has no
normalisation, as in DCGAN-style discriminators), then a global mean over space and a dense layer to one
logit per sample. Input: the mask (a probability map, `(B, D, H, W, 1)`) or, for the image-conditioned
ablation, the image and the mask concatenated `(B, D, H, W, 2)`. Output: `(B,)` logits, "real" > 0.
Works on 2-D inputs too (the spatial rank is read from the input). Batch norm is not offered: real and
fake masks go through the critic as separate batches, and batch statistics would tell them apart.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfjax.nn.blocks import ConvNormAct

CRITIC_NORMS = ("layer", "group", "instance", "none")


class ShapeCritic(nn.Module):
    """`(B, *S, C) -> (B,)` real/fake logits of masks (C = 1) or image-mask pairs (C = 2)."""

    channels: Sequence[int] = (8, 16, 32, 64)  # features per stride-2 level
    norm: str = "layer"  # layer | group | instance | none (not on the first level)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.norm not in CRITIC_NORMS:
            raise ValueError(f"unknown critic norm {self.norm!r}; choose one of {CRITIC_NORMS}")
        for level, features in enumerate(self.channels):
            norm = "none" if level == 0 else self.norm
            x = ConvNormAct(features, strides=2, norm=norm, act="leaky_relu")(x, train)
        x = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
        return nn.Dense(1)(x)[:, 0]
