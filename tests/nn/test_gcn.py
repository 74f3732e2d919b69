"""GCN blocks: shapes, the k x k receptive field of a global convolution, boundary refinement as a residual,
and the multitask network's outputs per head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax.nn.gcn import GCN, MGCN, BoundaryRefinement, ResidualUnit, gcn_kernel


def test_shapes():
    x = jnp.zeros((2, 16, 12, 3))
    assert jax.eval_shape(lambda: GCN(5, 7).init_with_output(jax.random.key(0), x)[0]).shape == (2, 16, 12, 5)
    assert jax.eval_shape(lambda: BoundaryRefinement().init_with_output(jax.random.key(0), x)[0]).shape == x.shape
    unit = ResidualUnit(6, strides=2)
    assert jax.eval_shape(lambda: unit.init_with_output(jax.random.key(0), x)[0]).shape == (2, 8, 6, 6)
    assert [gcn_kernel(15, s) for s in (64, 15, 8, 4, 1)] == [15, 15, 7, 3, 1]
    with pytest.raises(ValueError, match="odd"):
        GCN(2, 4).init(jax.random.key(0), x)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_gcn_receptive_field_is_k_by_k(k):
    """One output pixel of a 1-channel GCN (one conv per path) depends on exactly the k x k input window
    around it: its gradient is a_i b_j + c_i d_j over the window (products of random nonzero weights, nonzero
    with probability 1) and exactly 0 outside."""
    n, centre = 21, (10, 9)
    x = jax.random.normal(jax.random.key(1), (1, n, n, 1))
    net = GCN(1, k)
    params = net.init(jax.random.key(2), x)
    grad = jax.grad(lambda x: net.apply(params, x)[0, centre[0], centre[1], 0])(x)[0, ..., 0]
    window = np.zeros((n, n), bool)
    h = k // 2
    window[centre[0] - h:centre[0] + h + 1, centre[1] - h:centre[1] + h + 1] = True
    np.testing.assert_array_equal(np.abs(np.asarray(grad)) > 0, window)


def test_boundary_refinement_is_a_residual():
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 4))
    params = BoundaryRefinement().init(jax.random.key(1), x)
    zeroed = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if "Conv_1" in jax.tree_util.keystr(path) else v, params)
    np.testing.assert_array_equal(BoundaryRefinement().apply(zeroed, x), x)
    assert not np.allclose(BoundaryRefinement().apply(params, x), x)


@pytest.mark.parametrize("view, landmark", [(True, True), (True, False), (False, True)])
def test_mgcn_heads(view, landmark):
    x = jnp.zeros((2, 32, 32, 1))
    net = MGCN(n_views=11, n_landmarks=5, channels=(4, 8, 8), decoder_features=4, kernel=5,
               view_head=view, landmark_head=landmark)
    (logits, heatmaps), _ = jax.eval_shape(lambda: net.init_with_output(jax.random.key(0), x))
    assert (logits.shape if view else logits) == ((2, 11) if view else None)
    assert (heatmaps.shape if landmark else heatmaps) == ((2, 32, 32, 5) if landmark else None)
    with pytest.raises(ValueError, match="divisible"):
        net.init(jax.random.key(0), jnp.zeros((2, 30, 32, 1)))
