"""Landmark search as image partitioning: the closed-form optimal action map and the greedy walk.

An agent at integer position q moves one pixel along one axis per step; action `2*i` is +1 along axis i and
`2*i + 1` is -1 along axis i (index order: rows before columns, slices before rows). When the landmark l is
known, the optimal action is a*(q) = argmax_a <e_a, l - q>: step along the axis of largest |l - q| towards
l. This splits the image into 2*D sectors (triangles in 2-D, pyramids in 3-D) bounded by the diagonals
through l, whose apexes meet at l (Xu et al., MICCAI 2017, "supervised action classifier/map").

Ties (pixels on a diagonal, or the landmark pixel itself) go to the lowest action index: the earlier axis
wins and, at l - q = 0, action 0 (+axis 0). `jnp.argmax` returns the first maximum, which is this rule.

A greedy walk follows a policy until it revisits a position (an oscillation); the estimate is the mean of
the positions in that final cycle. On the exact map the walk ends within one pixel of l on every axis:
while some |l_i - q_i| > 1 a step shortens |l - q|_1 by exactly 1, and once max_i |l_i - q_i| <= 1 a step
keeps it <= 1 (the moved coordinate goes from x to |x - 1| <= 1), so every position of the final cycle,
and hence their mean, is within 1 pixel of l per axis. Steps are clipped to the image; a landmark inside
the image never needs the clip.

    steps = action_steps(2)                                  # (4, 2): +row, -row, +col, -col
    amap = optimal_action_map(landmarks, (H, W))             # (B, 2) -> (B, H, W) int32
    est = walk_on_map(amap, starts, max_steps=2 * (H + W))   # starts (B, n, 2) int32 -> (B, 2) float32
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kfjax.errors import InputError

SPATIAL_DIMS = (2, 3)  # image (row, col) and volume (slice, row, col) agents


def _check_dims(dims: int) -> None:
    if dims not in SPATIAL_DIMS:
        raise InputError(f"landmark agents move in 2-D or 3-D; got {dims} spatial dimensions")


def _check_shape(shape) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    _check_dims(len(shape))
    if min(shape) < 1:
        raise InputError(f"image shape must be positive sizes, got {shape}")
    return shape


def action_steps(dims: int) -> np.ndarray:
    """(2*dims, dims) int32 unit steps: +axis0, -axis0, +axis1, -axis1 (, +axis2, -axis2)."""
    _check_dims(dims)
    eye = np.eye(dims, dtype=np.int32)
    return np.stack([s * eye[i] for i in range(dims) for s in (1, -1)])


def _best_action(delta: jax.Array) -> jax.Array:
    """delta: (..., D) landmark minus position -> (...) int32 argmax_a <e_a, delta>, ties to the lowest index."""
    scores = jnp.stack([s * delta[..., i] for i in range(delta.shape[-1]) for s in (1, -1)], axis=-1)
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)


def _deltas(landmarks, shape) -> jax.Array:
    """landmarks (B, D) -> l - q at every pixel q, (B, *shape, D) float."""
    shape = _check_shape(shape)
    lm = jnp.asarray(landmarks)
    if lm.ndim != 2 or lm.shape[-1] != len(shape):
        raise InputError(f"landmarks must be (B, {len(shape)}) for image shape {shape}; got {lm.shape}")
    lm = lm.astype(jnp.promote_types(lm.dtype, jnp.float32))
    grid = jnp.stack(jnp.meshgrid(*(jnp.arange(s, dtype=lm.dtype) for s in shape), indexing="ij"), axis=-1)
    return lm.reshape((lm.shape[0],) + (1,) * len(shape) + (len(shape),)) - grid[None]


def optimal_action_map(landmarks, shape) -> jax.Array:
    """Optimal action towards each landmark at every pixel.

    landmarks: (B, D) index coordinates (pixels, may be fractional); shape: the D spatial sizes.
    Returns (B, *shape) int32 action indices (see `action_steps`; ties to the lowest index).
    """
    return _best_action(_deltas(landmarks, shape))


def optimal_actions(landmarks, positions) -> jax.Array:
    """Optimal action at given positions. landmarks, positions: (..., D) -> (...) int32."""
    lm, pos = jnp.asarray(landmarks), jnp.asarray(positions)
    if lm.shape != pos.shape or lm.shape[-1] not in SPATIAL_DIMS:
        raise InputError(f"landmarks {lm.shape} and positions {pos.shape} must both be (..., 2) or (..., 3)")
    return _best_action(lm.astype(jnp.float32) - pos.astype(jnp.float32))


def boundary_distance(landmarks, shape) -> jax.Array:
    """Distance (pixels) from every pixel to the nearest sector boundary of the landmark's action map.

    A boundary is where the two largest |l_i - q_i| tie (the diagonals through l in 2-D), so the distance is
    (largest - second largest) / sqrt(2). landmarks: (B, D) -> (B, *shape) float32. Labels of pixels close to
    a boundary are ambiguous to a network that sees the image, not l: a loss may weight them down.
    """
    top = jax.lax.top_k(jnp.abs(_deltas(landmarks, shape)), 2)[0]
    return (top[..., 0] - top[..., 1]) / np.sqrt(2.0)


def greedy_walk(policy: Callable[[jax.Array], jax.Array], starts, shape, max_steps: int) -> jax.Array:
    """Walk each agent greedily until it revisits a position or `max_steps` steps are taken.

    policy: positions (B, D) int32 -> actions (B,) int32, traceable under jit.
    starts: (B, D) int positions (clipped into the image). shape: the D spatial sizes.
    Returns (B, D) float32: the mean of the positions in the final cycle, or the last position for an
    agent that never revisited one. Runs in a `lax.while_loop` over a (B, max_steps + 1, D) history.
    """
    shape = _check_shape(shape)
    dims = len(shape)
    starts = jnp.asarray(starts)
    if starts.ndim != 2 or starts.shape[-1] != dims:
        raise InputError(f"starts must be (B, {dims}) positions for image shape {shape}; got {starts.shape}")
    if int(max_steps) < 1:
        raise InputError(f"max_steps must be at least 1, got {max_steps}")
    max_steps = int(max_steps)
    steps = jnp.asarray(action_steps(dims))
    upper = jnp.asarray(shape, jnp.int32) - 1
    batch = starts.shape[0]
    slots = jnp.arange(max_steps + 1)

    start = jnp.clip(starts.astype(jnp.int32), 0, upper)
    history = jnp.zeros((batch, max_steps + 1, dims), jnp.int32).at[:, 0].set(start)
    zeros = jnp.zeros((batch,), jnp.int32)
    # carry: t (steps taken), history, done (B,), cycle_first (B,), cycle_last (B,)
    init = (jnp.int32(0), history, jnp.zeros((batch,), bool), zeros, zeros)

    def cond(carry):
        t, _, done, _, _ = carry
        return (t < max_steps) & ~jnp.all(done)

    def body(carry):
        t, history, done, first, last = carry
        position = history[:, t]
        action = policy(position).astype(jnp.int32)
        moved = jnp.clip(position + steps[action], 0, upper)
        seen = jnp.all(history == moved[:, None], axis=-1) & (slots <= t)[None]  # (B, max_steps + 1)
        revisit = ~done & jnp.any(seen, axis=-1)
        first = jnp.where(revisit, jnp.argmax(seen, axis=-1).astype(jnp.int32), first)
        last = jnp.where(revisit, t, last)
        done = done | revisit
        history = history.at[:, t + 1].set(jnp.where(done[:, None], position, moved))
        return t + 1, history, done, first, last

    t, history, done, first, last = jax.lax.while_loop(cond, body, init)
    end = jnp.where(done, last, t)
    begin = jnp.where(done, first, t)
    inside = (slots[None] >= begin[:, None]) & (slots[None] <= end[:, None])  # (B, max_steps + 1)
    weight = inside.astype(jnp.float32)[..., None]
    return jnp.sum(history.astype(jnp.float32) * weight, axis=1) / jnp.sum(weight, axis=1)


def walk_on_map(action_map, starts, max_steps: int) -> jax.Array:
    """Greedy walks on per-image action maps, averaged over starts.

    action_map: (B, *S) int actions (e.g. the argmax of a predicted map); starts: (B, n_starts, D) int.
    Returns (B, D) float32 landmark estimates (index coordinates).
    """
    amap = jnp.asarray(action_map)
    starts = jnp.asarray(starts)
    if amap.ndim - 1 not in SPATIAL_DIMS:
        raise InputError(f"action_map must be (B, H, W) or (B, D, H, W) action indices; got {amap.shape}")
    shape = amap.shape[1:]
    dims = len(shape)
    if starts.ndim != 3 or starts.shape[0] != amap.shape[0] or starts.shape[-1] != dims:
        raise InputError(f"starts must be ({amap.shape[0]}, n_starts, {dims}) for action_map {amap.shape};"
                         f" got {starts.shape}")
    batch, n_starts = starts.shape[:2]
    owner = jnp.repeat(jnp.arange(batch), n_starts)  # image index of each walker

    def policy(position):
        return amap[(owner, *(position[:, i] for i in range(dims)))]

    flat = greedy_walk(policy, starts.reshape(batch * n_starts, dims), shape, max_steps)
    return flat.reshape(batch, n_starts, dims).mean(axis=1)


def start_grid(size: int, per_axis: int) -> np.ndarray:
    """`(per_axis², 2)` int32 starts at the centres of a per_axis x per_axis tiling of a size² image (a centre
    between two pixels goes to the lower one)."""
    centres = np.floor((np.arange(per_axis) + 0.5) * size / per_axis - 0.5).astype(np.int32)
    return np.stack(np.meshgrid(centres, centres, indexing="ij"), axis=-1).reshape(-1, 2)
