"""ADN networks (Liao et al., TMI 2020): three encoders, an artifact-free decoder and an artifact decoder
that fuses the artifact code pyramid. Channel-last 2-D images `(B, H, W, 1)` in [-1, 1]; H, W divisible by
`2**num_down`.

Naming follows the paper's code: "low" = artifact-affected (x^a), "high" = artifact-free (y).
- `ADNEncoder`: reflect conv7 (base, IN, ReLU) -> num_down x [conv4/s2 (x2 channels, IN, ReLU)] ->
  num_residual residual blocks (IN, ReLU). Returns the code and every layer's output (finest first).
- `ADNDecoder`: num_residual residual blocks (IN, LeakyReLU 0.2) -> num_up x [nearest x2, reflect conv5
  (/2 channels), layer norm, LeakyReLU] -> reflect conv7 + tanh. Given artifact side features
  (coarsest first), each is fused into the input of the last `len(sides)` layers by concat + 1x1 conv.
- `ADNNet`: `forward1(low) -> (ll, lh)`, `forward2(low, high) -> (hl, hh)`, `reduce(low) -> lh`,
  `transfer(low, high) -> hl`; `__call__` runs all of them (used by init).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfjax.nn.blocks import upsample_nearest
from kfjax.nn.gan import ConvBlock, ResidualBlock

__all__ = ["ADNDecoder", "ADNEncoder", "ADNNet"]


class ADNEncoder(nn.Module):
    """`(B, H, W, C) -> (code (B, H/4, W/4, 4 base), [conv0, conv1, ..., res_last] outputs)` for num_down=2."""

    base: int = 64
    num_down: int = 2
    num_residual: int = 4
    remat: bool = False  # recompute each residual block in the backward pass

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        sides = []
        x = ConvBlock(self.base, 7, norm="instance", act="relu")(x)
        sides.append(x)
        for i in range(1, self.num_down + 1):
            x = ConvBlock(self.base * 2**i, 4, strides=2, padding=1, norm="instance", act="relu")(x)
            sides.append(x)
        for _ in range(self.num_residual):
            x = ResidualBlock("instance", "relu", self.remat)(x)
            sides.append(x)
        return x, sides


class ADNDecoder(nn.Module):
    """Code `(B, h, w, base * 2**num_up)` [+ side features, coarsest first] -> image `(B, H, W, out_channels)`."""

    out_channels: int = 1
    base: int = 64
    num_up: int = 2
    num_residual: int = 4
    up_norm: str = "layer"
    remat: bool = False  # recompute each residual block in the backward pass

    @nn.compact
    def __call__(self, x: jax.Array, sides: tuple[jax.Array, ...] = ()) -> jax.Array:
        layers = [lambda y: ResidualBlock("instance", "leaky_relu", self.remat)(y) for _ in range(self.num_residual)]
        channels = self.base * 2**self.num_up
        for _ in range(self.num_up):
            channels //= 2
            layers.append(lambda y, c=channels: ConvBlock(c, 5, norm=self.up_norm, act="leaky_relu")(
                upsample_nearest(y, 2)))
        layers.append(lambda y: jnp.tanh(ConvBlock(self.out_channels, 7, norm="none", act="none")(y)))
        if len(sides) > len(layers):
            raise ValueError(f"{len(sides)} side inputs for a decoder of {len(layers)} layers")
        first_fused = len(layers) - len(sides)
        for i, layer in enumerate(layers):
            if i >= first_fused:
                side = sides[i - first_fused]
                x = nn.Conv(x.shape[-1], (1, 1), name=f"fuse{i - first_fused}")(jnp.concatenate([x, side], -1))
            x = layer(x)
        return x


class ADNNet(nn.Module):
    """The ADN generator: encoders E_low, E_high, E_art and decoders G (artifact-free), G_art (with artifacts).

    num_sides: how many artifact encoder outputs (the finest ones: conv_{num_down} ... conv0) the artifact
    decoder fuses; ADN's default 3 = full, 1/2 and 1/4 resolution.
    """

    channels: int = 1
    base: int = 64
    num_down: int = 2
    num_residual: int = 4
    num_sides: int = 3
    remat: bool = False  # recompute each residual block in the backward pass (model.remat=blocks)

    def setup(self):
        enc = {"base": self.base, "num_down": self.num_down, "num_residual": self.num_residual, "remat": self.remat}
        dec = {"out_channels": self.channels, "base": self.base, "num_up": self.num_down,
               "num_residual": self.num_residual, "remat": self.remat}
        self.encoder_low = ADNEncoder(**enc)
        self.encoder_high = ADNEncoder(**enc)
        self.encoder_art = ADNEncoder(**enc)
        self.decoder = ADNDecoder(**dec)
        self.decoder_art = ADNDecoder(**dec)

    def artifact_code(self, low: jax.Array) -> tuple[jax.Array, ...]:
        """Side features of E_art fused by G_art, coarsest first (the layer order of the decoder)."""
        _, sides = self.encoder_art(low)
        return tuple(sides[::-1][-self.num_sides:]) if self.num_sides else ()

    def forward1(self, low: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x^a -> (ll = G_art(c_x, a): reconstruction, lh = G(c_x): artifact-reduced)."""
        code, _ = self.encoder_low(low)
        return self.decoder_art(code, self.artifact_code(low)), self.decoder(code)

    def forward2(self, low: jax.Array, high: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(x^a, y) -> (hl = G_art(c_y, a): y with x^a's artifacts, hh = G(c_y): reconstruction of y)."""
        code, _ = self.encoder_high(high)
        return self.decoder_art(code, self.artifact_code(low)), self.decoder(code)

    def reduce(self, low: jax.Array) -> jax.Array:
        """Metal artifact reduction G(E_low(x^a)): the model used at test time."""
        code, _ = self.encoder_low(low)
        return self.decoder(code)

    def __call__(self, low: jax.Array, high: jax.Array) -> dict[str, jax.Array]:
        """All generated images {ll, lh, hl, hh, hlh}, each `(B, H, W, C)`."""
        art = self.artifact_code(low)  # computed once, shared by ll and hl
        code_low, _ = self.encoder_low(low)
        code_high, _ = self.encoder_high(high)
        hl = self.decoder_art(code_high, art)
        return {"ll": self.decoder_art(code_low, art), "lh": self.decoder(code_low), "hl": hl,
                "hh": self.decoder(code_high), "hlh": self.reduce(hl)}
