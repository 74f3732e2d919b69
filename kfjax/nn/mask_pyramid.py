"""DuDoNet's mask-pyramid U-Net (SE-Net): a U-Net whose encoder sees the metal trace at every scale.

`MaskPyramidUNet(out_channels=1, channels=(16, 32, 64, 128))` maps an input `(B, V, D, C)` and a mask
`(B, V, D, 1)` to `(B, V, D, out_channels)`. At each encoder level the mask is max-pooled to that scale (so
thin traces survive), passed through a 3x3 conv + ReLU and concatenated to the features before the level's
two conv blocks (Lin et al., CVPR 2019). Sinograms of any size work: views are padded circularly (a 360°
scan is periodic) and detector bins by edge replication to a multiple of 2**(levels-1), then cropped back.
With `padding="circular_rows"` every 3x3 convolution also wraps around the view axis (exactly periodic when
the number of views is a multiple of 2**(levels-1)); "zeros" pads each convolution with zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfjax.nn.blocks import DoubleConv, Upsample, conv_padding, max_pool


def pad_sinogram(x: jax.Array, multiple: int) -> tuple[jax.Array, tuple[int, int]]:
    """Pad `(B, V, D, C)` to multiples of `multiple`: views circularly, bins by edge values; returns the pads."""
    pad_v, pad_d = (-x.shape[1]) % multiple, (-x.shape[2]) % multiple
    if pad_v:
        x = jnp.concatenate([x, x[:, :pad_v]], axis=1)
    if pad_d:
        x = jnp.pad(x, ((0, 0), (0, 0), (pad_d // 2, pad_d - pad_d // 2), (0, 0)), mode="edge")
    return x, (pad_v, pad_d)


def crop_sinogram(x: jax.Array, pads: tuple[int, int]) -> jax.Array:
    """Undo `pad_sinogram`."""
    pad_v, pad_d = pads
    v, d = x.shape[1] - pad_v, x.shape[2] - pad_d
    return x[:, :v, pad_d // 2 : pad_d // 2 + d]


class MaskPyramidUNet(nn.Module):
    """U-Net with the mask concatenated (through a small conv) at every encoder scale."""

    out_channels: int = 1
    channels: Sequence[int] = (16, 32, 64, 128)
    mask_features: int = 8
    norm: str = "group"
    act: str = "relu"
    upsample: str = "nearest"
    zero_output: bool = False  # zero-initialise the output conv (a residual branch that starts as identity)
    remat: bool = False  # recompute each level's DoubleConv in the backward pass (model.remat=blocks)
    padding: str = "zeros"  # convolution padding: zeros | circular_rows (the view axis wraps)

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
        multiple = 2 ** (len(self.channels) - 1)
        x, pads = pad_sinogram(x, multiple)
        mask, _ = pad_sinogram(mask, multiple)
        skips = []
        for i, features in enumerate(self.channels):
            padded, pads_m = conv_padding(mask, 3, self.padding)
            m = nn.relu(nn.Conv(self.mask_features, (3, 3), padding=pads_m, name=f"mask_conv_{i}")(padded))
            x = DoubleConv(features, self.norm, self.act, self.remat, self.padding)(
                jnp.concatenate([x, m], axis=-1), train)
            if i < len(self.channels) - 1:
                skips.append(x)
                x, mask = max_pool(x), max_pool(mask)
        for features, skip in zip(reversed(self.channels[:-1]), reversed(skips)):
            x = Upsample(features, self.upsample, self.padding)(x)
            x = DoubleConv(features, self.norm, self.act, self.remat, self.padding)(
                jnp.concatenate([x, skip], axis=-1), train)
        init = nn.initializers.zeros if self.zero_output else nn.initializers.lecun_normal()
        x = nn.Conv(self.out_channels, (1, 1), kernel_init=init)(x)
        return crop_sinogram(x, pads)
