"""3-D convolution as 2-D convolutions over depth taps equals lax's 3-D convolution (float64), with gradients."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax.nn import conv3d
from kfjax.nn.conv3d import Conv, conv_general_dilated

DN = ("NDHWC", "DHWIO", "NDHWC")


@pytest.fixture(autouse=True)
def depth_taps_at_every_size(monkeypatch):
    """The small inputs here take the 2-D paths (by default they start at MIN_STACKED_MACS / MIN_DEPTH_TAP_MACS)."""
    monkeypatch.setattr(conv3d, "MIN_DEPTH_TAP_MACS", 0)
    monkeypatch.setattr(conv3d, "MIN_STACKED_MACS", 0)


def _conv_ranks(fn, *args) -> list[int]:
    """Number of spatial dimensions of every convolution in fn's jaxpr."""
    eqns = jax.make_jaxpr(fn)(*args).eqns
    return [e.invars[0].aval.ndim - 2 for e in eqns if e.primitive.name == "conv_general_dilated"]


@pytest.mark.parametrize("kernel,strides,padding,groups", [
    ((3, 3, 3), (1, 1, 1), "SAME", 1), ((3, 3, 3), (2, 2, 2), "SAME", 1), ((1, 1, 1), (1, 1, 1), "VALID", 1),
    ((3, 1, 3), (2, 1, 1), [(1, 1), (0, 0), (2, 0)], 1), ((3, 3, 3), (1, 1, 1), "SAME", 4),
    ((2, 3, 3), (1, 2, 2), [(2, 0), (1, 1), (0, 1)], 1)])
def test_equals_lax_3d_convolution_and_its_gradients(kernel, strides, padding, groups):
    """Same products, summed in another order: in float64 the two agree to ~1e-14 relative."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(2, 7, 6, 5, 4)))
        w = jnp.asarray(rng.normal(size=(*kernel, 4 // groups, 8)))

        def ours(x, w):
            return conv_general_dilated(x, w, strides, padding, dimension_numbers=DN, feature_group_count=groups)

        def ref(x, w):
            return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN,
                                                feature_group_count=groups)

        np.testing.assert_allclose(jax.jit(ours)(x, w), ref(x, w), rtol=1e-12, atol=1e-12)
        cot = jnp.asarray(rng.normal(size=ref(x, w).shape))
        g_ours = jax.jit(jax.grad(lambda x, w: jnp.sum(ours(x, w) * cot), argnums=(0, 1)))(x, w)
        g_ref = jax.grad(lambda x, w: jnp.sum(ref(x, w) * cot), argnums=(0, 1))(x, w)
        for a, b in zip(g_ours, g_ref):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_flax_conv_keeps_its_parameters_and_2d_inputs_pass_through():
    x = jnp.ones((1, 8, 8, 8, 2))
    plain, fast = nn.Conv(3, (3, 3, 3)), Conv(3, (3, 3, 3))
    params = plain.init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(fast.init(jax.random.PRNGKey(0), x))
    np.testing.assert_allclose(fast.apply(params, x), plain.apply(params, x), rtol=1e-5, atol=1e-5)
    x2 = jnp.ones((1, 8, 8, 2))
    k2 = jnp.ones((3, 3, 2, 3))
    np.testing.assert_array_equal(conv_general_dilated(x2, k2, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")),
                                  jax.lax.conv_general_dilated(x2, k2, (1, 1), "SAME",
                                                               dimension_numbers=("NHWC", "HWIO", "NHWC")))


def test_small_convolutions_stay_3d_and_large_ones_become_2d(monkeypatch):
    """Large ones: one 2-D convolution (taps stacked on the outputs) at depth stride 1, one per tap otherwise."""
    monkeypatch.setattr(conv3d, "MIN_DEPTH_TAP_MACS", 10**6)
    monkeypatch.setattr(conv3d, "MIN_STACKED_MACS", 10**6)
    w = jnp.ones((3, 3, 3, 4, 4))

    def conv(x, strides=(1, 1, 1), groups=1):
        return conv_general_dilated(x, w[..., :4 // groups, :], strides, "SAME", dimension_numbers=DN,
                                    feature_group_count=groups)

    small = jnp.ones((1, 8, 8, 8, 4))  # 512 voxels x 432 MACs = 2.2e5 multiply-adds
    large = jnp.ones((1, 16, 16, 16, 4))  # 4096 x 432 = 1.8e6
    assert _conv_ranks(conv, small) == [3]
    assert _conv_ranks(conv, large) == [2]
    assert _conv_ranks(lambda x: conv(jnp.tile(x, (1, 2, 1, 1, 1)), strides=(2, 1, 1)), large) == [2, 2, 2]
    assert _conv_ranks(lambda x: conv(jnp.tile(x, (1, 2, 1, 1, 1)), groups=2), large) == [2, 2, 2]


def test_dilated_height_and_width_equal_lax():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        x, w = jnp.asarray(rng.normal(size=(1, 6, 9, 9, 3))), jnp.asarray(rng.normal(size=(3, 3, 3, 3, 5)))
        kwargs = dict(rhs_dilation=(1, 2, 2), dimension_numbers=DN)
        np.testing.assert_allclose(jax.jit(lambda x, w: conv_general_dilated(x, w, (1, 1, 1), "SAME", **kwargs))(x, w),
                                   jax.lax.conv_general_dilated(x, w, (1, 1, 1), "SAME", **kwargs), rtol=1e-12,
                                   atol=1e-12)
        assert _conv_ranks(lambda x: conv_general_dilated(x, w, (1, 1, 1), "SAME", **kwargs), x) == [2]


def test_second_order_gradient_through_the_hand_written_tap_sum_gradient_equals_lax():
    """The stacked form's tap sum has its gradient written by hand; that gradient is itself differentiable."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        x, w = jnp.asarray(rng.normal(size=(1, 5, 6, 6, 2))), jnp.asarray(rng.normal(size=(3, 3, 3, 2, 3)))

        def grad_norm(conv):
            def loss(x, w):
                return jnp.sum(jnp.tanh(conv(x, w, (1, 1, 1), "SAME", dimension_numbers=DN)))
            return lambda x, w: jnp.sum(jax.grad(loss, argnums=1)(x, w) ** 2)

        ours = jax.jit(jax.grad(grad_norm(conv_general_dilated), argnums=(0, 1)))(x, w)
        ref = jax.grad(grad_norm(jax.lax.conv_general_dilated), argnums=(0, 1))(x, w)
        assert _conv_ranks(lambda x: conv_general_dilated(x, w, (1, 1, 1), "SAME", dimension_numbers=DN), x) == [2]
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
