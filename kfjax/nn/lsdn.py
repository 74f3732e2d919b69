"""Location-sensitive deep network (Van Nguyen, Zhou, Vemulapalli, MICCAI 2015), fully convolutional, 2-D or 3-D.

The paper regresses the target intensity of a voxel from a small source patch x (3x3x3) and the voxel's
atlas coordinate s (3,). Applied to every voxel at once, the patch layer is a 3x3(x3) convolution and the
coordinate layer a 1x1(x1) one, so the network maps `image (B, *S, 1)` and `coords (B, *S, 3)` to
`(B, *S, 1)`. The first hidden layer (width n1) is, per variant:

    lsdn   h_j = sigmoid(w_j^T x + b_j) * sigmoid(v_j^T s + c_j)   (product of a feature and a spatial unit)
    cdn    h_j = sigmoid(w_j^T x + v_j^T s + b_j)                   (the same MLP on [x; s] concatenated)
    blind  h_j = sigmoid(w_j^T x + b_j)                             (location-blind)

then `hidden[1:]` fully connected layers (1x1 convolutions, `activation`) and a linear output.

Counting (`param_count`, `multiplies`) is analytic and equals the parameter tree; `matched_width` picks the
first width of a variant whose parameter count is closest to a reference network's. `compress` folds a
ShrinkConnect fit (`kfjax.nn.shrink_connect`) into a narrower network of the same class.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kfjax.errors import ConfigError
from kfjax.nn.conv3d import Conv

__all__ = ["VARIANTS", "ACTIVATIONS", "LSDN", "check_network", "param_count", "multiplies", "matched_width",
           "compress"]

VARIANTS = ("lsdn", "cdn", "blind")
ACTIVATIONS = {"sigmoid": nn.sigmoid, "relu": nn.relu, "tanh": jnp.tanh}
N_COORDS = 3  # atlas coordinates per voxel


def check_network(variant: str, hidden: tuple[int, ...], spatial_dims: int, kernel: int, activation: str) -> None:
    """ConfigError (one line, naming the `model.*` key) unless the settings make a valid network."""
    if variant not in VARIANTS:
        raise ConfigError(f"model.variant '{variant}' is not one of {', '.join(VARIANTS)}")
    if spatial_dims not in (2, 3):
        raise ConfigError(f"model.spatial_dims={spatial_dims}; choose 2 (slices) or 3 (volumes)")
    if not hidden or min(hidden) < 1:
        raise ConfigError(f"model.hidden={list(hidden)} needs one or more positive widths, e.g. [64,32]")
    if kernel < 1 or kernel % 2 == 0:
        raise ConfigError(f"model.kernel={kernel} must be odd and positive (3: the paper's 3x3x3 patch)")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"model.activation '{activation}' is not one of {', '.join(ACTIVATIONS)}")


class LSDN(nn.Module):
    """`(image (B, *S, 1), coords (B, *S, 3)) -> (B, *S, 1)`: see the module docstring."""

    hidden: tuple[int, ...] = (64, 32)  # widths: the first (product) layer, then the fully connected layers
    variant: str = "lsdn"  # lsdn | cdn | blind
    spatial_dims: int = 2  # 2: slices (B, H, W, C) | 3: volumes (B, D, H, W, C)
    kernel: int = 3  # side of the source patch (3: 3x3 or 3x3x3)
    activation: str = "sigmoid"  # of the layers after the first (the first is always sigmoid, as the paper's)

    def setup(self):
        check_network(self.variant, tuple(self.hidden), self.spatial_dims, self.kernel, self.activation)
        n1 = self.hidden[0]
        self.feature = Conv(n1, (self.kernel,) * self.spatial_dims, padding="SAME", name="feature")
        if self.variant != "blind":  # a 1x1 convolution on the coordinates; cdn shares the feature bias
            self.spatial = nn.Dense(n1, use_bias=self.variant == "lsdn", name="spatial")
        self.layers = [nn.Dense(n, name=f"dense_{i}") for i, n in enumerate(self.hidden[1:])]
        self.out = nn.Dense(1, name="out")

    def first_layer(self, image: jax.Array, coords: jax.Array) -> jax.Array:
        """First hidden responses `(B, *S, n1)` (what ShrinkConnect approximates)."""
        f = self.feature(image)
        if self.variant == "lsdn":
            return nn.sigmoid(f) * nn.sigmoid(self.spatial(coords.astype(f.dtype)))
        if self.variant == "cdn":
            return nn.sigmoid(f + self.spatial(coords.astype(f.dtype)))
        return nn.sigmoid(f)

    def head(self, h: jax.Array) -> jax.Array:
        """The layers after the first: `(B, *S, n1) -> (B, *S, 1)` (linear output)."""
        act = ACTIVATIONS[self.activation]
        for layer in self.layers:
            h = act(layer(h))
        return self.out(h)

    def __call__(self, image: jax.Array, coords: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout or normalisation
        if image.ndim != self.spatial_dims + 2 or coords.shape[:-1] != image.shape[:-1]:
            raise ValueError(f"LSDN(spatial_dims={self.spatial_dims}) needs image (B, *S, 1) and coords (B, *S, 3) "
                             f"with the same S, got {image.shape} and {coords.shape}")
        return self.head(self.first_layer(image, coords))


def _first_per_unit(variant: str, spatial_dims: int, kernel: int) -> int:
    """Parameters of one first-layer unit: patch weights + bias (+ coordinate weights, + their bias for lsdn)."""
    patch = kernel**spatial_dims + 1
    return patch + {"lsdn": N_COORDS + 1, "cdn": N_COORDS, "blind": 0}[variant]


def param_count(hidden: tuple[int, ...], variant: str, spatial_dims: int = 2, kernel: int = 3) -> int:
    """Number of parameters of `LSDN(hidden, variant, spatial_dims, kernel)` (equals the parameter tree's)."""
    count = hidden[0] * _first_per_unit(variant, spatial_dims, kernel)
    for n_in, n_out in zip(hidden, (*hidden[1:], 1)):
        count += n_in * n_out + n_out
    return int(count)


def multiplies(hidden: tuple[int, ...], variant: str, spatial_dims: int = 2, kernel: int = 3) -> dict[str, int]:
    """Multiplications per output voxel: `first_layer` (patch and coordinate weights, and the lsdn products),
    `total` (all layers). FLOPs = 2 x total (a multiply and an add each); activations are not counted."""
    n1 = hidden[0]
    first = n1 * kernel**spatial_dims + (0 if variant == "blind" else n1 * N_COORDS) + (n1 if variant == "lsdn" else 0)
    rest = sum(a * b for a, b in zip(hidden, (*hidden[1:], 1)))
    return {"first_layer": int(first), "total": int(first + rest)}


def matched_width(reference: tuple[int, ...], variant: str, spatial_dims: int = 2, kernel: int = 3,
                  reference_variant: str = "lsdn") -> tuple[int, ...]:
    """`reference` with its first width changed so that `variant` has the parameter count closest to that of
    `LSDN(reference, reference_variant)` (off by at most half of one first-layer unit's parameters)."""
    target = param_count(tuple(reference), reference_variant, spatial_dims, kernel)
    per_unit = _first_per_unit(variant, spatial_dims, kernel) + (reference[1] if len(reference) > 1 else 1)
    fixed = param_count((0, *reference[1:]), variant, spatial_dims, kernel)
    n1 = max(1, int(round((target - fixed) / per_unit)))
    return (n1, *tuple(reference[1:]))


def compress(params: dict, support: np.ndarray, coef: np.ndarray, offset: np.ndarray, variant: str) -> dict:
    """Parameters of the network with first layer `hidden[0] = len(support)` that computes, in place of the first
    responses h (n1,), the approximation h_S @ coef + offset (ShrinkConnect), folded into the next layer:

        W' = coef @ W (k, n2),  b' = b + offset @ W,   first-layer weights: the columns in `support`.

    `params`: an LSDN parameter tree; `coef (k, n1)`, `offset (n1,)` from `kfjax.nn.shrink_connect`.
    """
    support = np.asarray(support, np.int64)
    nxt = "dense_0" if "dense_0" in params else "out"
    dtype = params[nxt]["kernel"].dtype
    w, b = np.asarray(params[nxt]["kernel"], np.float64), np.asarray(params[nxt]["bias"], np.float64)
    out = {name: dict(p) for name, p in params.items()}
    out["feature"] = {"kernel": params["feature"]["kernel"][..., support], "bias": params["feature"]["bias"][support]}
    if variant != "blind":
        out["spatial"] = {k: v[..., support] for k, v in params["spatial"].items()}
    out[nxt] = {"kernel": jnp.asarray(np.asarray(coef, np.float64) @ w, dtype),
                "bias": jnp.asarray(b + np.asarray(offset, np.float64) @ w, dtype)}
    return out
