"""Joseph forward projector and its exactly matched adjoint, both gathers, tied by `jax.custom_vjp`.

    forward, adjoint = make_projector(geometry)
    sino = forward(mu)        # (B, H, W, C) μ in 1/mm -> (B, n_views, n_det, C) line integrals
    back = adjoint(sino)      # (B, n_views, n_det, C) -> (B, H, W, C), the exact transpose of forward

Forward: for every ray, a sum over its major axis of the two-tap linear interpolation across the minor axis,
times the path length per step (Joseph 1982). Adjoint: for every pixel and view, the few rays that pass
within one pixel, weighted by the same tent weights, so <A x, y> = <x, Aᵀ y> to round-off. Neither direction
scatters. `grad` through `forward` runs `adjoint` and vice versa, so memory is O(image + sinogram): the
loops run over the major axis (forward) and over views (adjoint) with `lax.scan`.

Works under `jit`, `vmap` and `grad` (reverse mode), in float32 and float64 (the dtype of the input).
Batch and channels travel together as the trailing axis of every gather, so a batch costs one set of index
computations.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from kfjax.errors import InputError
from kfjax.physics.geometry import ParallelBeam
from kfjax.physics.rays import adjoint_taps, bin_reach, pixel_to_bin, ray_table


def _to_columns(x: jnp.ndarray) -> tuple[jnp.ndarray, tuple[int, int]]:
    """(B, *S, C) -> (*S, B·C): batch and channels become the trailing gather axis."""
    b, c = x.shape[0], x.shape[-1]
    moved = jnp.moveaxis(x, 0, -2)
    return moved.reshape(moved.shape[:-2] + (b * c,)), (b, c)


def _from_columns(x: jnp.ndarray, bc: tuple[int, int]) -> jnp.ndarray:
    b, c = bc
    return jnp.moveaxis(x.reshape(x.shape[:-1] + (b, c)), -2, 0)


def _forward(geometry, image: jnp.ndarray) -> jnp.ndarray:
    """Joseph projection. `image (B, H, W, C)` -> `(B, n_views, n_det, C)`."""
    h, w = geometry.image_shape
    cols, bc = _to_columns(image)  # (H, W, N)
    n = cols.shape[-1]
    dtype = cols.dtype
    # column-major copy for rays marched along x, row-major for rays marched along y; one zero pixel of
    # padding on both sides of the minor axis so the two taps never leave the buffer
    by_column = jnp.pad(jnp.swapaxes(cols, 0, 1), ((0, 0), (1, 1), (0, 0))).reshape(w * (h + 2), n)
    by_row = jnp.pad(cols, ((0, 0), (1, 1), (0, 0))).reshape(h * (w + 2), n)
    buffer = jnp.concatenate([by_column, by_row, jnp.zeros((1, n), dtype)])  # + 1: the upper tap of a clipped ray
    major, a, b, length = (t.reshape(-1) for t in ray_table(geometry, dtype))
    n_minor = jnp.where(major, h, w)
    n_major = jnp.where(major, w, h)
    base = jnp.where(major, 0, w * (h + 2))
    stride = jnp.where(major, h + 2, w + 2)

    square = h == w

    def step(total, k):
        minor = a + b * k.astype(dtype)
        inside = (minor > -1) & (minor < n_minor.astype(dtype))
        if not square:
            inside = inside & (k < n_major)
        # shift by one so the lower tap index is a truncation of a non-negative number; the weight comes
        # from that integer index, never from a second floor(), which XLA:CPU may round differently under
        # jit(vmap) and so put a tap one whole pixel off
        shifted = jnp.clip(minor + 1, 0, n_minor.astype(dtype) + 1)
        low = shifted.astype(jnp.int32)
        frac = shifted - low.astype(dtype)
        index = base + (k if square else jnp.minimum(k, n_major - 1)) * stride + low
        v0 = buffer.at[index].get(mode="promise_in_bounds")
        v1 = buffer.at[index + 1].get(mode="promise_in_bounds")
        weight = jnp.where(inside, length, 0)[:, None]
        return total + weight * (v0 + frac[:, None] * (v1 - v0)), None

    steps = jnp.arange(max(h, w), dtype=jnp.int32)
    total, _ = jax.lax.scan(step, jnp.zeros((a.shape[0], n), dtype), steps)
    return _from_columns(total.reshape(geometry.n_views, geometry.n_det, n), bc)


def _adjoint(geometry, sinogram: jnp.ndarray) -> jnp.ndarray:
    """Exact transpose of `_forward`. `sinogram (B, n_views, n_det, C)` -> `(B, H, W, C)`."""
    h, w = geometry.image_shape
    s = geometry.pixel_size
    values, bc = _to_columns(sinogram)  # (V, D, N)
    n = values.shape[-1]
    dtype = values.dtype
    n_det = geometry.n_det
    major, a, b, length = ray_table(geometry, dtype)
    parallel = isinstance(geometry, ParallelBeam)
    theta = jnp.asarray(geometry.angles(), dtype)
    rows = jnp.arange(h, dtype=dtype)[:, None] * jnp.ones((1, w), dtype)
    columns = jnp.ones((h, 1), dtype) * jnp.arange(w, dtype=dtype)[None, :]
    x = (columns - (w - 1) / 2) * s
    y = ((h - 1) / 2 - rows) * s
    reach = bin_reach(geometry)
    taps = adjoint_taps(geometry)

    def view(total, inputs):
        angle, major_v, a_v, b_v, length_v, value_v = inputs
        centre = pixel_to_bin(geometry, x, y, jnp.cos(angle), jnp.sin(angle))
        first = jnp.floor(centre - reach).astype(jnp.int32) + 1
        if parallel:  # one direction per view: only the offsets a differ between rays
            own_major = jnp.where(major_v[0], columns, rows)
            own_minor = jnp.where(major_v[0], rows, columns)
            slope = b_v[0] * own_major
        else:
            table = jnp.stack([major_v.astype(dtype), a_v, b_v, length_v], -1)  # (D, 4): one gather per tap
        for m in range(taps):
            d = first + m
            ok = (d >= 0) & (d < n_det)
            dc = jnp.clip(d, 0, n_det - 1)
            if parallel:
                minor = a_v.at[dc].get(mode="promise_in_bounds") + slope
                step = length_v[0]
            else:
                ray = table.at[dc].get(mode="promise_in_bounds")
                is_major = ray[..., 0] > 0.5
                own_major = jnp.where(is_major, columns, rows)
                own_minor = jnp.where(is_major, rows, columns)
                minor = ray[..., 1] + ray[..., 2] * own_major
                step = ray[..., 3]
            tent = jnp.maximum(0, 1 - jnp.abs(minor - own_minor))
            weight = jnp.where(ok, step * tent, 0)
            total = total + weight[..., None] * value_v.at[dc].get(mode="promise_in_bounds")
        return total, None

    total, _ = jax.lax.scan(view, jnp.zeros((h, w, n), dtype), (theta, major, a, b, length, values))
    return _from_columns(total, bc)


def _check(geometry, x: jnp.ndarray, shape: tuple[int, ...], what: str) -> None:
    if x.ndim != 4 or tuple(x.shape[1:3]) != tuple(shape):
        raise InputError(
            f"{what} must have shape (B, {shape[0]}, {shape[1]}, C) for this {geometry.kind} geometry, "
            f"got {tuple(x.shape)}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InputError(f"{what} must be floating point (float32 or float64), got {x.dtype}")


def make_projector(geometry, image_shape: tuple[int, int] | None = None):
    """`(forward, adjoint)` for `geometry` (`ParallelBeam` or `FanBeam`).

    forward: `(B, H, W, C)` μ (1/mm) -> `(B, n_views, n_det, C)` line integrals (μ·mm).
    adjoint: `(B, n_views, n_det, C)` -> `(B, H, W, C)`, its exact transpose (mm).
    `image_shape` overrides `geometry.image_shape`.
    """
    if image_shape is not None and tuple(image_shape) != tuple(geometry.image_shape):
        geometry = dataclasses.replace(geometry, image_shape=tuple(image_shape))
    image_dims = tuple(geometry.image_shape)
    sino_dims = (geometry.n_views, geometry.n_det)

    @jax.custom_vjp
    def forward(image):
        _check(geometry, image, image_dims, "image")
        return _forward(geometry, image)

    @jax.custom_vjp
    def adjoint(sinogram):
        _check(geometry, sinogram, sino_dims, "sinogram")
        return _adjoint(geometry, sinogram)

    forward.defvjp(lambda x: (forward(x), None), lambda _, g: (adjoint(g),))
    adjoint.defvjp(lambda y: (adjoint(y), None), lambda _, g: (forward(g),))
    return forward, adjoint


@partial(jax.jit, static_argnums=0)
def project(geometry, image: jnp.ndarray) -> jnp.ndarray:
    """One-shot jitted forward projection, `(B, H, W, C)` -> `(B, n_views, n_det, C)`."""
    return make_projector(geometry)[0](image)


@partial(jax.jit, static_argnums=0)
def backproject(geometry, sinogram: jnp.ndarray) -> jnp.ndarray:
    """One-shot jitted adjoint, `(B, n_views, n_det, C)` -> `(B, H, W, C)`."""
    return make_projector(geometry)[1](sinogram)


def operator_norm(geometry, iterations: int = 20, seed: int = 0) -> float:
    """Largest singular value of the forward projector by power iteration (for step sizes)."""
    forward, adjoint = make_projector(geometry)
    step = jax.jit(lambda v: adjoint(forward(v)))
    v = np.random.default_rng(seed).random((1, *geometry.image_shape, 1)).astype(np.float32)
    v = jnp.asarray(v)
    norm = 0.0
    for _ in range(iterations):
        v = step(v)
        norm = float(jnp.linalg.norm(v))
        v = v / norm
    return norm**0.5
