"""Building blocks shared by the networks of kfjax (Flax Linen, channel-last).

Every block works for 2-D inputs `(B, H, W, C)` and 3-D inputs `(B, D, H, W, C)`; the number of
spatial dimensions is read from the input. Upsampling never uses a transposed convolution: on XLA
its weight gradient is several times slower than its forward pass, so we resize (or pixel-shuffle)
and convolve instead.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfjax.nn.conv3d import Conv

NORMS = ("batch", "group", "instance", "layer", "none")
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "leaky_relu": lambda x: nn.leaky_relu(x, 0.2),
    "gelu": nn.gelu,
    "silu": nn.silu,
    "tanh": jnp.tanh,
    "none": lambda x: x,
}


PADDINGS = ("zeros", "circular_rows")


def conv_padding(x: jax.Array, kernel_size: int, padding: str) -> tuple[jax.Array, str | list[tuple[int, int]]]:
    """`(x, padding argument of nn.Conv)` for a stride-1 'same' convolution of odd `kernel_size`.

    "zeros": zero padding on every spatial axis. "circular_rows": axis 1 wraps around (the view axis of a
    sinogram: a 360° scan is periodic, so view V-1 neighbours view 0), the other spatial axes are zero-padded.
    """
    if padding == "zeros":
        return x, "SAME"
    if padding != "circular_rows":
        raise ValueError(f"unknown padding {padding!r}; choose one of {PADDINGS}")
    half = kernel_size // 2
    x = jnp.pad(x, [(0, 0), (half, half)] + [(0, 0)] * (x.ndim - 2), mode="wrap")
    return x, [(0, 0)] + [(half, half)] * (x.ndim - 3)


def run_block(module: nn.Module, body: Callable, remat: bool, *args):
    """`body(module, *args)`, rematerialised when `remat`: its activations are recomputed in the backward
    pass instead of kept. Submodules made inside `body` keep the names (and parameters) they have without it."""
    return (nn.remat(body) if remat else body)(module, *args)


class Norm(nn.Module):
    """Normalisation by name: batch (running statistics), group, instance, layer or none.

    `group` uses `min(groups, C)` groups; `instance` normalises each channel of each sample over space;
    `layer` normalises each sample over space and channels (the ADN "layer norm").
    """

    kind: str = "group"
    groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        channels = x.shape[-1]
        if self.kind == "batch":
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        if self.kind == "group":
            groups = min(self.groups, channels)
            while channels % groups:
                groups -= 1
            return nn.GroupNorm(num_groups=groups, epsilon=1e-5)(x)
        if self.kind == "instance":
            return nn.GroupNorm(num_groups=channels, epsilon=1e-5)(x)
        if self.kind == "layer":
            return nn.LayerNorm(reduction_axes=tuple(range(1, x.ndim)), feature_axes=-1, epsilon=1e-5)(x)
        if self.kind == "none":
            return x
        raise ValueError(f"unknown norm {self.kind!r}; choose one of {NORMS}")


class ConvNormAct(nn.Module):
    """Convolution ('SAME' padding) -> normalisation -> activation."""

    features: int
    kernel_size: int = 3
    strides: int = 1
    norm: str = "group"
    act: str = "relu"
    padding: str = "zeros"  # zeros | circular_rows (see `conv_padding`; stride 1 only)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        dims = x.ndim - 2
        if self.padding != "zeros" and self.strides != 1:
            raise ValueError(f"padding {self.padding!r} needs stride 1, got {self.strides}")
        x, pads = conv_padding(x, self.kernel_size, self.padding)
        x = Conv(
            self.features,
            (self.kernel_size,) * dims,
            strides=(self.strides,) * dims,
            padding=pads,
            use_bias=self.norm in ("none", "layer"),
        )(x)
        x = Norm(self.norm)(x, train)
        return ACTIVATIONS[self.act](x)


class DoubleConv(nn.Module):
    """Two 3x3 ConvNormAct blocks: the U-Net's per-level unit."""

    features: int
    norm: str = "group"
    act: str = "relu"
    remat: bool = False  # recompute the block's activations in the backward pass
    padding: str = "zeros"  # zeros | circular_rows (`conv_padding`)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def body(module, x):
            x = ConvNormAct(self.features, norm=self.norm, act=self.act, padding=self.padding)(x, train)
            return ConvNormAct(self.features, norm=self.norm, act=self.act, padding=self.padding)(x, train)

        return run_block(self, body, self.remat, x)


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour upsampling of every spatial axis by an integer factor, as broadcast+reshape."""
    batch, *spatial, channels = x.shape
    for axis in range(1, len(spatial) + 1):
        x = jnp.repeat(x, factor, axis=axis)
    return x


def pixel_shuffle(x: jax.Array, factor: int = 2) -> jax.Array:
    """Depth-to-space: `(B, *S, C * f**d) -> (B, *(s * f), C)`."""
    batch, *spatial, channels = x.shape
    dims = len(spatial)
    out_channels = channels // factor**dims
    x = x.reshape(batch, *spatial, *(factor,) * dims, out_channels)
    # interleave each spatial axis with its factor axis
    order = [0]
    for i in range(dims):
        order += [1 + i, 1 + dims + i]
    order.append(1 + 2 * dims)
    x = x.transpose(order)
    return x.reshape(batch, *(s * factor for s in spatial), out_channels)


class Upsample(nn.Module):
    """x2 upsampling followed by a 3x3 convolution to `features` channels.

    mode: "nearest" (repeat, then conv), "linear" (bi/trilinear resize, then conv) or
    "pixelshuffle" (conv to features*2^d channels, then depth-to-space).
    """

    features: int
    mode: str = "nearest"
    padding: str = "zeros"  # zeros | circular_rows (`conv_padding`)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dims = x.ndim - 2
        if self.mode == "pixelshuffle":
            x, pads = conv_padding(x, 3, self.padding)
            x = Conv(self.features * 2**dims, (3,) * dims, padding=pads)(x)
            return pixel_shuffle(x, 2)
        if self.mode == "nearest":
            x = upsample_nearest(x, 2)
        elif self.mode == "linear":
            shape = (x.shape[0], *(s * 2 for s in x.shape[1:-1]), x.shape[-1])
            x = jax.image.resize(x, shape, method="linear")
        else:
            raise ValueError(f"unknown upsample mode {self.mode!r}; choose nearest, linear or pixelshuffle")
        x, pads = conv_padding(x, 3, self.padding)
        return Conv(self.features, (3,) * dims, padding=pads)(x)


def max_pool(x: jax.Array, factor: int = 2) -> jax.Array:
    """Max pooling by `factor` over every spatial axis (trailing rows that do not fill a window are dropped).

    x: (B, *spatial, C) -> (B, *(n // factor), C). The same values and the same gradient as `nn.max_pool`
    (each window's gradient goes to its first maximum), but written as a reshape, an argmax and a select, so
    that on CPU the gradient is an elementwise mask instead of the select-and-scatter of a window reduction
    (several times faster; see benchmarks/conv3d_ops.py).
    """
    b, *spatial, c = x.shape
    dims = len(spatial)
    x = x[(slice(None), *(slice(0, n - n % factor) for n in spatial))]
    x = x.reshape(b, *[v for n in spatial for v in (n // factor, factor)], c)
    order = (0, *range(1, 2 * dims, 2), 2 * dims + 1, *range(2, 2 * dims + 1, 2))  # window offsets last
    windows = x.transpose(order).reshape(b, *(n // factor for n in spatial), c, factor**dims)
    first = jax.nn.one_hot(jnp.argmax(jax.lax.stop_gradient(windows), axis=-1), factor**dims, dtype=bool)
    return jnp.sum(jnp.where(first, windows, jnp.zeros_like(windows)), axis=-1)
