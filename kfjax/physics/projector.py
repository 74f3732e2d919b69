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
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from kfjax.errors import InputError
from kfjax.physics.geometry import ParallelBeam
from kfjax.physics.rays import adjoint_taps, bin_reach, fan_reach, pixel_to_bin, ray_table


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
    if not isinstance(geometry, ParallelBeam):
        return _fan_adjoint(geometry, sinogram)
    h, w = geometry.image_shape
    values, bc = _to_columns(sinogram)  # (V, D, N)
    n = values.shape[-1]
    dtype = values.dtype
    n_det = geometry.n_det
    major, a, b, length = ray_table(geometry, dtype)
    theta = jnp.asarray(geometry.angles(), dtype)
    columns, rows, x, y = _pixel_grid(geometry, dtype)
    reach = bin_reach(geometry)
    taps = adjoint_taps(geometry)

    def view(total, inputs):
        angle, major_v, a_v, b_v, length_v, value_v = inputs
        centre = pixel_to_bin(geometry, x, y, jnp.cos(angle), jnp.sin(angle))
        first = jnp.floor(centre - reach).astype(jnp.int32) + 1
        # one direction per view: only the offsets a differ between rays
        own_major = jnp.where(major_v[0], columns, rows)
        own_minor = jnp.where(major_v[0], rows, columns)
        slope = b_v[0] * own_major
        for m in range(taps):
            d = first + m
            ok = (d >= 0) & (d < n_det)
            dc = jnp.clip(d, 0, n_det - 1)
            minor = a_v.at[dc].get(mode="promise_in_bounds") + slope
            tent = jnp.maximum(0, 1 - jnp.abs(minor - own_minor))
            weight = jnp.where(ok, length_v[0] * tent, 0)
            total = total + weight[..., None] * value_v.at[dc].get(mode="promise_in_bounds")
        return total, None

    total, _ = jax.lax.scan(view, jnp.zeros((h, w, n), dtype), (theta, major, a, b, length, values))
    return _from_columns(total, bc)


def _pixel_grid(geometry, dtype):
    """Column and row index of every pixel, and its world centre (x, y) in mm, each `(H, W)`."""
    h, w = geometry.image_shape
    s = geometry.pixel_size
    rows = jnp.arange(h, dtype=dtype)[:, None] * jnp.ones((1, w), dtype)
    columns = jnp.ones((h, 1), dtype) * jnp.arange(w, dtype=dtype)[None, :]
    return columns, rows, (columns - (w - 1) / 2) * s, ((h - 1) / 2 - rows) * s


def _fan_rows(geometry, values: jnp.ndarray, taps: int) -> tuple[jnp.ndarray, ...]:
    """Per view and bin the ray's weight plane `(w, A, B, C)` and its sinogram values, zero rows as padding.

    The Joseph weight of ray `(major, a, b, w)` on pixel (row r, column c) is `w·max(0, 1 - |a + b·k - j|)`
    with (k, j) = (c, r) for a column-marched ray and (r, c) otherwise; folded into one plane,
    `max(0, w - |A + B·c + C·r|)`, so a tap needs no branch on the ray's major axis. A zero row has weight 0,
    which replaces the in-range test of bins past either end of the detector. Tables are
    `(V, taps + D + taps, ·)`: one `(w, A, B, C, value)` table for a single column (one gather per tap, fused
    into the sum), else the planes and the values apart: XLA:CPU stores a gathered row that is sliced several
    ways, and with many columns that buffer leaves the cache.
    """
    major, a, b, length = ray_table(geometry, values.dtype)
    minus = -jnp.ones_like(b)
    planes = jnp.stack(
        [length, length * a, length * jnp.where(major, b, minus), length * jnp.where(major, minus, b)], -1
    )
    tables = (jnp.concatenate([planes, values], -1),) if values.shape[-1] == 1 else (planes, values)
    return tuple(jnp.pad(t, ((0, 0), (taps, taps), (0, 0))) for t in tables)


def _fan_adjoint(geometry, sinogram: jnp.ndarray) -> jnp.ndarray:
    """`_adjoint` for a fan beam: per pixel and view, the bins within `fan_reach` of its centre.

    Each tap gathers the ray's weight plane and its sinogram values from `_fan_rows`. The first bin of view
    v + 1 is computed at the end of step v and carried, so XLA keeps it as one small integer array per view
    instead of recomputing the pixel-to-bin map inside every tap's gather.
    """
    h, w = geometry.image_shape
    values, bc = _to_columns(sinogram)  # (V, D, N)
    n = values.shape[-1]
    dtype = values.dtype
    reach = fan_reach(geometry)
    taps = max(1, math.ceil(2 * reach * (1 + 1e-6)))
    tables = _fan_rows(geometry, values, taps)
    theta = jnp.asarray(geometry.angles(), dtype)
    columns, rows, x, y = _pixel_grid(geometry, dtype)

    def first_bin(angle):
        return _first_bin(geometry, x, y, angle, reach, taps)

    def view(carry, inputs):
        total, first = carry
        next_angle, *tables_v = inputs
        for m in range(taps):
            ray, *rest = (t.at[first + m].get(mode="promise_in_bounds") for t in tables_v)
            weight = jnp.maximum(0, ray[..., 0] - jnp.abs(ray[..., 1] + ray[..., 2] * columns + ray[..., 3] * rows))
            total = total + weight[..., None] * (rest[0] if rest else ray[..., 4:])
        return (total, first_bin(next_angle)), None

    next_angles = jnp.concatenate([theta[1:], theta[:1]])  # the last one is computed and dropped
    start = (jnp.zeros((h, w, n), dtype), first_bin(theta[0]))
    (total, _), _ = jax.lax.scan(view, start, (next_angles, *tables))
    return _from_columns(total, bc)


def _first_bin(geometry, x, y, angle, reach: float, taps: int) -> jnp.ndarray:
    """Row of `_fan_rows` of the lowest bin within `reach` bins of the ray through (x, y), `(H, W)` int32.

    Clipped to [-taps, n_det] before the shift by `taps`, so all `taps` rows from it lie in the padded table
    and the bins outside the detector land on zero rows.
    """
    centre = pixel_to_bin(geometry, x, y, jnp.cos(angle), jnp.sin(angle))
    first = jnp.floor(centre - reach).astype(jnp.int32) + 1
    return jnp.clip(first, -taps, geometry.n_det) + taps


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
    `image_shape` overrides `geometry.image_shape`. Both compute in float32 (float64 inputs in float64): a
    bfloat16/float16 input from a mixed-precision network is cast to float32 first, and so is the result.
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

    def project(image):
        return forward(at_least_float32(image))

    def backproject(sinogram):
        return adjoint(at_least_float32(sinogram))

    return project, backproject


def at_least_float32(x: jnp.ndarray) -> jnp.ndarray:
    """`x` cast to float32 when it is a half-precision float (physics runs in float32 or float64)."""
    return x.astype(jnp.float32) if x.dtype in (jnp.bfloat16, jnp.float16) else x


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
