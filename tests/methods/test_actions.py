"""Optimal action maps and greedy walks: the closed form equals the brute-force definition, the walk on the
exact map ends within one pixel of the landmark from any start, bad shapes are refused."""

import itertools

import jax
import numpy as np
import pytest

from kfjax.errors import InputError
from kfjax.methods.common.actions import action_steps, boundary_distance, greedy_walk, optimal_action_map, \
    optimal_actions, walk_on_map


def brute_force_map(landmark: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """argmax_a <e_a, l - q> pixel by pixel, first maximum on ties (the documented rule)."""
    steps = action_steps(len(shape)).astype(np.float64)
    out = np.zeros(shape, np.int32)
    for q in itertools.product(*(range(s) for s in shape)):
        scores = steps @ (landmark - np.asarray(q, np.float64))
        out[q] = int(np.flatnonzero(scores == scores.max())[0])
    return out


def test_action_steps_order():
    np.testing.assert_array_equal(action_steps(2), [[1, 0], [-1, 0], [0, 1], [0, -1]])
    assert action_steps(3).shape == (6, 3)
    np.testing.assert_array_equal(action_steps(3).sum(axis=0), 0)


@pytest.mark.parametrize("shape", [(13, 17), (6, 7, 5)])
def test_closed_form_map_matches_brute_force(shape):
    rng = np.random.default_rng(0)
    # fractional landmarks, integer ones (ties on the diagonals and at the landmark) and one outside the image
    lm = np.concatenate([rng.uniform(0, np.array(shape) - 1, (3, len(shape))),
                         rng.integers(0, np.array(shape), (2, len(shape))).astype(np.float64),
                         np.array([[-2.5] + [1.0] * (len(shape) - 1)])])
    got = np.asarray(optimal_action_map(lm.astype(np.float32), shape))
    assert got.shape == (len(lm), *shape) and got.dtype == np.int32
    for b, landmark in enumerate(lm):
        np.testing.assert_array_equal(got[b], brute_force_map(landmark.astype(np.float32), shape))


def test_actions_at_positions_equal_the_map_and_boundaries_are_the_diagonals():
    rng = np.random.default_rng(2)
    shape = (12, 9)
    lm = rng.uniform(0, 8, (3, 2)).astype(np.float32)
    amap = np.asarray(optimal_action_map(lm, shape))
    pos = rng.integers(0, 9, (3, 20, 2))
    got = np.asarray(optimal_actions(np.repeat(lm[:, None], 20, axis=1), pos))
    np.testing.assert_array_equal(got, amap[np.arange(3)[:, None], pos[..., 0], pos[..., 1]])
    dist = np.asarray(boundary_distance(lm, shape))
    q = np.stack(np.meshgrid(np.arange(12), np.arange(9), indexing="ij"), -1)
    d = np.abs(lm[:, None, None] - q[None])
    np.testing.assert_allclose(dist, np.abs(d[..., 0] - d[..., 1]) / np.sqrt(2), atol=1e-5)
    assert dist.shape == (3, *shape)


def test_map_has_one_sector_per_action_meeting_at_the_landmark():
    amap = np.asarray(optimal_action_map(np.array([[10.3, 20.6]], np.float32), (32, 32)))[0]
    assert set(np.unique(amap)) == {0, 1, 2, 3}
    assert amap[0, 20] == 0 and amap[31, 20] == 1 and amap[10, 0] == 2 and amap[10, 31] == 3


@pytest.mark.parametrize("shape", [(19, 23), (9, 8, 10)])
def test_walk_on_exact_map_lands_within_one_pixel_from_any_start(shape):
    """The bound argued in the module docstring: every position of the final cycle is within 1 px per axis."""
    rng = np.random.default_rng(1)
    dims = len(shape)
    lm = np.concatenate([rng.uniform(0, np.array(shape) - 1, (4, dims)),
                         rng.integers(0, np.array(shape), (2, dims)).astype(np.float64)]).astype(np.float32)
    amap = optimal_action_map(lm, shape)
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"), -1).reshape(-1, dims)
    starts = np.broadcast_to(grid, (len(lm), *grid.shape)).astype(np.int32)
    max_steps = sum(shape) + 4  # the L1 distance to the landmark plus a cycle
    # every start separately: n_starts walkers averaged would hide a bad one, so walk them one per row
    flat_map = np.repeat(np.asarray(amap), len(grid), axis=0)
    est = walk_on_map(flat_map, starts.reshape(-1, 1, dims), max_steps)
    err = np.abs(np.asarray(est) - np.repeat(lm, len(grid), axis=0))
    assert err.max() <= 1.0, err.max()


def test_greedy_walk_is_jittable_and_stops_at_the_cycle():
    target = np.array([[5, 7], [0, 0]], np.int32)

    def policy(pos):  # exact policy towards an integer target: cycle {target, target + e0}
        return optimal_action_map_at(pos, target)

    def optimal_action_map_at(pos, tgt):
        d = (tgt - pos).astype(np.float32)
        scores = jax.numpy.stack([d[:, 0], -d[:, 0], d[:, 1], -d[:, 1]], -1)
        return jax.numpy.argmax(scores, -1)

    walk = jax.jit(lambda s: greedy_walk(policy, s, (16, 16), 40))
    est = np.asarray(walk(np.array([[15, 0], [3, 3]], np.int32)))
    np.testing.assert_allclose(est, [[5.5, 7.0], [0.5, 0.0]])


def test_walk_without_a_cycle_returns_the_last_position():
    est = greedy_walk(lambda p: 0 * p[:, 0], np.array([[0, 3]]), (50, 50), 10)
    np.testing.assert_allclose(np.asarray(est), [[10.0, 3.0]])


def test_bad_shapes_are_refused():
    with pytest.raises(InputError, match="2-D or 3-D"):
        action_steps(4)
    with pytest.raises(InputError, match="landmarks must be"):
        optimal_action_map(np.zeros((2, 3)), (8, 8))
    with pytest.raises(InputError, match="positive"):
        optimal_action_map(np.zeros((2, 2)), (0, 8))
    with pytest.raises(InputError, match="both be"):
        optimal_actions(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(InputError, match="starts must be"):
        greedy_walk(lambda p: p[:, 0], np.zeros((2, 3), np.int32), (8, 8), 5)
    with pytest.raises(InputError, match="max_steps"):
        greedy_walk(lambda p: p[:, 0], np.zeros((2, 2), np.int32), (8, 8), 0)
    with pytest.raises(InputError, match="action_map"):
        walk_on_map(np.zeros((8, 8), np.int32), np.zeros((8, 1, 1), np.int32), 5)
    with pytest.raises(InputError, match="starts must be"):
        walk_on_map(np.zeros((2, 8, 8), np.int32), np.zeros((3, 1, 2), np.int32), 5)
