"""GAN building blocks (Flax Linen, channel-last 2-D images `(B, H, W, C)`).

- `PatchDiscriminator`: the pix2pix/CycleGAN "NLayer" PatchGAN (kernel 4, padding 1, LeakyReLU 0.2);
  `n_layers=3` gives the 70x70 receptive field, `n_layers=2` ADN's 34x34 one. Output: a logit map
  `(B, h, w, 1)`.
- `ResnetGenerator`: CycleGAN's ResNet generator (7x7 stem, 2 stride-2 downsamplings, `n_blocks` residual
  blocks, 2 upsamplings, 7x7 + tanh), reflection padding. Upsampling is nearest x2 + conv, not a
  transposed convolution (its weight gradient is slow on XLA:CPU).
- `ReflectConv`, `ResidualBlock`: reflection-padded convolution and the two-conv residual block shared with ADN.
- Image pool: CycleGAN's history buffer of generated images as a pytree (`pool_init`, `pool_query`),
  updated inside the jitted step with an explicit key.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfjax.nn.blocks import ACTIVATIONS, Norm, run_block, upsample_nearest

__all__ = [
    "ConvBlock",
    "PatchDiscriminator",
    "ReflectConv",
    "ResidualBlock",
    "ResnetGenerator",
    "pool_init",
    "pool_query",
]


class ReflectConv(nn.Module):
    """2-D convolution with reflection padding of `kernel_size // 2` (or `padding`) pixels per side."""

    features: int
    kernel_size: int = 3
    strides: int = 1
    padding: int | None = None
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.kernel_size // 2 if self.padding is None else self.padding
        if p:
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
        k = self.kernel_size
        return nn.Conv(self.features, (k, k), strides=(self.strides,) * 2, padding="VALID", use_bias=self.use_bias)(x)


class ConvBlock(nn.Module):
    """Reflect-padded conv -> norm ("instance", "layer", "batch", "none") -> activation (kfjax.nn.blocks names)."""

    features: int
    kernel_size: int = 3
    strides: int = 1
    padding: int | None = None
    norm: str = "instance"
    act: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = ReflectConv(self.features, self.kernel_size, self.strides, self.padding)(x)
        return ACTIVATIONS[self.act](Norm(self.norm)(x, train))


class ResidualBlock(nn.Module):
    """x + [conv3 -> norm -> act -> conv3 -> norm](x), reflection padding, channels kept."""

    norm: str = "instance"
    act: str = "relu"
    remat: bool = False  # recompute the block's activations in the backward pass

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def body(module, x):
            c = x.shape[-1]
            y = ConvBlock(c, 3, norm=self.norm, act=self.act)(x, train)
            return x + ConvBlock(c, 3, norm=self.norm, act="none")(y, train)

        return run_block(self, body, self.remat, x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: conv4/s2 (no norm) -> (n_layers - 1) x conv4/s2+norm -> conv4/s1+norm -> conv4/s1 to 1 logit.

    Channels `features * min(2**i, 8)`; zero padding 1 as in pix2pix. `(B, H, W, C) -> (B, h, w, 1)`.
    """

    features: int = 64
    n_layers: int = 3
    norm: str = "instance"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        pad = ((1, 1), (1, 1))
        x = nn.leaky_relu(nn.Conv(self.features, (4, 4), (2, 2), padding=pad)(x), 0.2)
        for n in range(1, self.n_layers + 1):
            stride = 2 if n < self.n_layers else 1
            x = nn.Conv(self.features * min(2**n, 8), (4, 4), (stride, stride), padding=pad,
                        use_bias=self.norm != "batch")(x)
            x = nn.leaky_relu(Norm(self.norm)(x, train), 0.2)
        return nn.Conv(1, (4, 4), padding=pad)(x)


class ResnetGenerator(nn.Module):
    """CycleGAN ResNet generator, `(B, H, W, C_in) -> (B, H, W, out_channels)` in [-1, 1] (tanh).

    H and W must be divisible by 4. `n_blocks=9` is the 256x256 "resnet_9blocks" network.
    """

    out_channels: int = 1
    features: int = 64
    n_blocks: int = 9
    norm: str = "instance"
    remat: bool = False  # recompute each residual block in the backward pass (model.remat=blocks)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        f = self.features
        x = ConvBlock(f, 7, norm=self.norm)(x, train)
        for mult in (2, 4):
            x = ConvBlock(f * mult, 3, strides=2, norm=self.norm)(x, train)
        for _ in range(self.n_blocks):
            x = ResidualBlock(self.norm, remat=self.remat)(x, train)
        for mult in (2, 1):
            x = ConvBlock(f * mult, 3, norm=self.norm)(upsample_nearest(x, 2), train)
        return jnp.tanh(ReflectConv(self.out_channels, 7)(x))


def pool_init(size: int, image_shape: tuple[int, ...], dtype=jnp.float32) -> dict[str, jax.Array]:
    """Empty history buffer: {"images": (size, *image_shape), "count": int32 number stored}."""
    return {"images": jnp.zeros((size, *image_shape), dtype), "count": jnp.zeros((), jnp.int32)}


def pool_query(pool: dict[str, jax.Array], images: jax.Array, key: jax.Array):
    """CycleGAN's image pool, one image at a time: `(pool, (B, ...) fakes, key) -> ((B, ...) for D, pool)`.

    Until the pool is full each fake is stored and returned. Then, with probability 1/2, a fake replaces
    a random stored image and that older image is returned; otherwise the fake itself is returned.
    A pool of size 0 returns the fakes unchanged.
    """
    size = pool["images"].shape[0]
    if size == 0:
        return images, pool

    def one(carry, item):
        stored, count = carry
        image, k = item
        k_swap, k_slot = jax.random.split(k)
        filling = count < size
        swap = jax.random.uniform(k_swap) < 0.5
        slot = jnp.where(filling, count, jax.random.randint(k_slot, (), 0, size))
        old = stored[slot]
        out = jnp.where(filling | ~swap, image, old)
        stored = stored.at[slot].set(jnp.where(filling | swap, image, old))
        return (stored, jnp.minimum(count + 1, size)), out

    keys = jax.random.split(key, images.shape[0])
    (stored, count), out = jax.lax.scan(one, (pool["images"], pool["count"]), (images, keys))
    return out, {"images": stored, "count": count}
