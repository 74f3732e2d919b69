"""U²-Net (Huang et al., MICCAI 2019): one U-Net for several segmentation domains, with separable adapters.

Every domain-specific parameter is STACKED over the domains, with a leading axis of length `n_domains`, and
named with the prefix `domain_`; the network picks its domain's slice with `jnp.take(param, domain, 0)`,
the domain index being data. One compiled function therefore serves every domain (no compile per domain).

Units (2-D `(B, H, W, C)` or 3-D `(B, D, H, W, C)`, the number of spatial axes read from the input):

- stride-1 3x3x3 conv unit, by `mode`:
    universal:   per-domain depthwise 3x3x3 -> per-domain norm -> LeakyReLU(0.01) -> SHARED pointwise 1x1x1
                 -> per-domain norm -> LeakyReLU (the separable adapter)
    independent: per-domain full 3x3x3 conv -> per-domain norm -> LeakyReLU (N networks, stacked)
    shared:      shared full 3x3x3 conv -> shared norm -> LeakyReLU (one network)
- stride-2 3x3x3 down conv and 1x1x1 conv units: shared kernel in universal and shared mode (universal
  keeps a per-domain norm), per-domain kernel in independent mode.
- input layer (every mode): per-domain 3x3x3 conv of the input padded to the largest channel count. Channels
  at and past the domain's own count are zeroed first, so the padded kernel rows never see data and get
  zero gradient: exactly one kernel of `in_channels[d]` rows per domain, stored padded.
- output (every mode): per-domain 1x1x1 conv to the largest class count, plus per-domain deep-supervision
  heads on the two coarser decoder levels, upsampled and summed coarse to fine into the logits. Logits of
  the classes a domain does not have are set to `MASKED_LOGIT` (softmax 0, finite log-probability).

Norms are instance norms (per sample and channel over space) with an affine scale and bias, as the paper's.
Encoder block: two conv units with a residual add; down: stride-2 conv unit; decoder level: nearest x2
upsampling + conv unit, concatenation with the skip, a 3x3x3 conv unit and a 1x1x1 conv unit.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kfjax.nn.blocks import upsample_nearest
from kfjax.nn.conv3d import conv_general_dilated

MODES = ("independent", "shared", "universal")
DOMAIN_PREFIX = "domain_"  # parameter names of domain-specific (stacked) parameters start with this
MASKED_LOGIT = -1.0e4  # logit of a class the domain does not have
LEAK = 0.01  # LeakyReLU slope (the paper's)
NORM_EPS = 1e-5
DEEP_SUPERVISION_LEVELS = (1, 2)  # decoder levels (0 = finest) with an extra per-domain head

_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
_stacked_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal", batch_axis=(0,))


def _act(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, LEAK)


def _conv(x: jax.Array, kernel: jax.Array, strides: int) -> jax.Array:
    dims = x.ndim - 2
    numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("N" + "DHW"[-dims:] + "C",
                                                                     "DHW"[-dims:] + "IO", "N" + "DHW"[-dims:] + "C"))
    return conv_general_dilated(x, kernel.astype(x.dtype), (strides,) * dims, "SAME", dimension_numbers=numbers)


def _depthwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 'same' depthwise convolution as a sum of shifted, channel-scaled copies of `x`.

    kernel `(*k, 1, C)`. XLA's grouped convolution is about 3x slower than the whole rest of the network on
    CPU; k**d fused multiply-adds are not.
    """
    size, dims = kernel.shape[0], x.ndim - 2
    half = size // 2
    padded = jnp.pad(x, [(0, 0)] + [(half, half)] * dims + [(0, 0)])
    spatial = x.shape[1:-1]
    out = jnp.zeros_like(x)
    for offset in np.ndindex(*(size,) * dims):
        window = padded[(slice(None), *(slice(o, o + n) for o, n in zip(offset, spatial)), slice(None))]
        out = out + window * kernel[offset][0].astype(x.dtype)
    return out


class DomainConv(nn.Module):
    """Convolution whose kernel is per domain (stacked `(n_domains, *k, I, O)`) or shared (`(*k, I, O)`).

    depthwise: a `(*k, 1, C)` kernel applied channel by channel (features must equal the input channels).
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    per_domain: bool = False
    n_domains: int = 1
    depthwise: bool = False
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, domain: jax.Array) -> jax.Array:
        dims, channels = x.ndim - 2, x.shape[-1]
        shape = (self.kernel_size,) * dims + (1 if self.depthwise else channels, self.features)
        if self.per_domain:
            stacked = self.param(DOMAIN_PREFIX + "kernel", _stacked_kernel_init, (self.n_domains, *shape))
            kernel = jnp.take(stacked, domain, axis=0)
        else:
            kernel = self.param("kernel", _kernel_init, shape)
        if self.depthwise:
            y = _depthwise(x, kernel)
        else:
            y = _conv(x, kernel, self.strides)
        if self.use_bias:
            if self.per_domain:
                bias = jnp.take(self.param(DOMAIN_PREFIX + "bias", nn.initializers.zeros,
                                           (self.n_domains, self.features)), domain, axis=0)
            else:
                bias = self.param("bias", nn.initializers.zeros, (self.features,))
            y = y + bias.astype(y.dtype)
        return y


class DomainNorm(nn.Module):
    """Instance norm with an affine scale/bias per domain (`(n_domains, C)`) or shared (`(C,)`)."""

    per_domain: bool = False
    n_domains: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, domain: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        axes = tuple(range(1, x.ndim - 1))
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # statistics in float32 or better
        mean = x32.mean(axes, keepdims=True)
        var = jnp.square(x32 - mean).mean(axes, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + NORM_EPS)
        if self.per_domain:
            scale = jnp.take(self.param(DOMAIN_PREFIX + "scale", nn.initializers.ones, (self.n_domains, channels)),
                             domain, axis=0)
            bias = jnp.take(self.param(DOMAIN_PREFIX + "bias", nn.initializers.zeros, (self.n_domains, channels)),
                            domain, axis=0)
        else:
            scale = self.param("scale", nn.initializers.ones, (channels,))
            bias = self.param("bias", nn.initializers.zeros, (channels,))
        return (y * scale + bias).astype(x.dtype)


class ConvUnit(nn.Module):
    """One conv unit (see the module docstring): conv (or separable adapter) -> norm -> LeakyReLU."""

    features: int
    mode: str
    n_domains: int
    kernel_size: int = 3
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, domain: jax.Array) -> jax.Array:
        n = self.n_domains
        if self.mode == "universal" and self.kernel_size > 1 and self.strides == 1:
            x = DomainConv(x.shape[-1], self.kernel_size, 1, True, n, depthwise=True, name="depthwise")(x, domain)
            x = _act(DomainNorm(True, n, name="depthwise_norm")(x, domain))
            x = DomainConv(self.features, 1, 1, False, n, name="pointwise")(x, domain)
            return _act(DomainNorm(True, n, name="norm")(x, domain))
        per_domain = self.mode == "independent"
        x = DomainConv(self.features, self.kernel_size, self.strides, per_domain, n, name="conv")(x, domain)
        return _act(DomainNorm(self.mode != "shared", n, name="norm")(x, domain))


class U2Net(nn.Module):
    """Multi-domain U-Net: `(B, *S, max(in_channels))`, scalar int domain -> logits `(B, *S, max(class_counts))`.

    in_channels / class_counts: per domain (their length is the number of domains). channels: features per
    level, finest first (spatial sides must divide by 2**(len(channels) - 1)). mode: one of MODES.
    """

    in_channels: tuple[int, ...]
    class_counts: tuple[int, ...]
    channels: tuple[int, ...] = (16, 32, 64, 128)
    mode: str = "universal"

    @nn.compact
    def __call__(self, x: jax.Array, domain: jax.Array, train: bool = False) -> jax.Array:
        if self.mode not in MODES:
            raise ValueError(f"unknown U2Net mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if len(self.in_channels) != len(self.class_counts):
            raise ValueError("in_channels and class_counts need one entry per domain")
        if x.shape[-1] != max(self.in_channels):
            raise ValueError(f"input has {x.shape[-1]} channels; pad every domain to {max(self.in_channels)}")
        n, mode, chans = len(self.in_channels), self.mode, self.channels
        domain = jnp.asarray(domain, jnp.int32)
        own = jnp.take(jnp.asarray(self.in_channels, jnp.int32), domain)
        x = jnp.where(jnp.arange(x.shape[-1]) < own, x, 0.0).astype(x.dtype)
        x = DomainConv(chans[0], 3, 1, True, n, name="input_conv")(x, domain)
        x = _act(DomainNorm(True, n, name="input_norm")(x, domain))
        skips = []
        for level, features in enumerate(chans):
            if level:
                x = ConvUnit(features, mode, n, 3, 2, name=f"down{level}")(x, domain)
            y = ConvUnit(features, mode, n, name=f"enc{level}a")(x, domain)
            x = x + ConvUnit(features, mode, n, name=f"enc{level}b")(y, domain)
            skips.append(x)
        logits = None
        for level in range(len(chans) - 2, -1, -1):
            x = ConvUnit(chans[level], mode, n, name=f"up{level}")(upsample_nearest(x, 2), domain)
            x = jnp.concatenate([x, skips[level]], axis=-1)
            x = ConvUnit(chans[level], mode, n, name=f"dec{level}a")(x, domain)
            x = ConvUnit(chans[level], mode, n, 1, name=f"dec{level}b")(x, domain)
            if level == 0 or level in DEEP_SUPERVISION_LEVELS:
                head = DomainConv(max(self.class_counts), 1, 1, True, n, use_bias=True,
                                  name="output" if level == 0 else f"side{level}")(x, domain)
                logits = head if logits is None else head + upsample_nearest(logits, 2)
            elif logits is not None:
                logits = upsample_nearest(logits, 2)
        valid = jnp.arange(logits.shape[-1]) < jnp.take(jnp.asarray(self.class_counts, jnp.int32), domain)
        return jnp.where(valid, logits, jnp.asarray(MASKED_LOGIT, logits.dtype))


# ---------------------------------------------------------------- parameter counts


def is_domain_specific(path) -> bool:
    """True for a parameter path (a tuple of keys from `jax.tree_util`) of a stacked per-domain parameter."""
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", str(last)))
    return str(name).startswith(DOMAIN_PREFIX)


def _count(params, domain_specific: bool | None = None) -> int:
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sum(int(np.prod(x.shape)) for p, x in leaves if domain_specific is None or is_domain_specific(p) == domain_specific)


def param_shapes(net: U2Net, spatial_dims: int = 3):
    """Parameter shapes of `net` from `jax.eval_shape` (nothing is computed or allocated)."""
    side = 2 ** (len(net.channels) - 1)
    x = jax.ShapeDtypeStruct((1, *(side,) * spatial_dims, max(net.in_channels)), jnp.float32)
    return jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros(x.shape), jnp.zeros((), jnp.int32)))["params"]


def param_counts(in_channels: tuple[int, ...], class_counts: tuple[int, ...], channels: tuple[int, ...],
                 mode: str, spatial_dims: int = 3) -> dict[str, float]:
    """Parameter counts of one mode: total, shared, per_domain (domain-specific / n_domains), one_network
    (a single-domain network of the same widths: the cost of one separate model) and per_domain_pct
    (per_domain as % of one_network)."""
    params = param_shapes(U2Net(in_channels, class_counts, channels, mode), spatial_dims)
    one = _count(param_shapes(U2Net((max(in_channels),), (max(class_counts),), channels, "shared"), spatial_dims))
    per_domain = _count(params, True) / len(in_channels)
    return {"total": _count(params), "shared": _count(params, False), "per_domain": per_domain,
            "one_network": one, "per_domain_pct": 100.0 * per_domain / one}


def count_table(in_channels: tuple[int, ...], class_counts: tuple[int, ...], channels: tuple[int, ...],
                spatial_dims: int = 3) -> str:
    """A plain-text table of `param_counts` for every mode (what `kfjax` prints for `u2net`)."""
    lines = [f"U2Net {spatial_dims}-D, {len(in_channels)} domains, channels {','.join(map(str, channels))}",
             f"{'mode':12s} {'total':>12s} {'shared':>12s} {'per domain':>12s} {'% of one net':>13s}"]
    for mode in MODES:
        c = param_counts(in_channels, class_counts, channels, mode, spatial_dims)
        lines.append(f"{mode:12s} {c['total']:12,d} {c['shared']:12,d} {c['per_domain']:12,.0f} "
                     f"{c['per_domain_pct']:12.2f}%")
    return "\n".join(lines)
