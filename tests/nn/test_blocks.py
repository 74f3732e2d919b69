"""Shapes and exact behaviour of the shared blocks (2-D and 3-D)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax.linen as nn

from kfjax.nn import DI2IN, Norm, UNet, Upsample, max_pool, pixel_shuffle, upsample_nearest


def test_upsample_nearest_matches_numpy_repeat():
    x = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2)
    expected = x.repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_array_equal(upsample_nearest(jnp.asarray(x)), expected)


@pytest.mark.parametrize("dims", [2, 3])
def test_pixel_shuffle_places_channels_in_blocks(dims):
    """Channel c*f^d + offset goes to the spatial offset inside each f^d block (depth-to-space)."""
    f, out_channels = 2, 3
    spatial = (2,) * dims
    x = np.random.default_rng(0).standard_normal((1, *spatial, out_channels * f**dims)).astype(np.float32)
    y = np.asarray(pixel_shuffle(jnp.asarray(x), f))
    assert y.shape == (1, *(s * f for s in spatial), out_channels)
    for index in np.ndindex(*spatial):
        block = x[(0, *index)].reshape(*(f,) * dims, out_channels)
        window = tuple(slice(i * f, (i + 1) * f) for i in index)
        np.testing.assert_array_equal(y[(0, *window)], block)


@pytest.mark.parametrize("mode", ["nearest", "linear", "pixelshuffle"])
def test_upsample_modes_shape(mode):
    x = jnp.ones((2, 4, 6, 3))
    module = Upsample(5, mode)
    y = module.apply(module.init(jax.random.key(0), x), x)
    assert y.shape == (2, 8, 12, 5)


@pytest.mark.parametrize("kind", ["batch", "group", "instance", "layer", "none"])
def test_norms_normalise(kind):
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (4, 8, 8, 16))
    module = Norm(kind)
    variables = module.init(jax.random.key(1), x)
    y, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
    if kind != "none":
        assert abs(float(y.mean())) < 1e-3 and abs(float(y.std()) - 1.0) < 1e-2


def test_unet_and_di2in_2d_3d_shapes():
    for x in (jnp.zeros((2, 32, 32, 1)), jnp.zeros((1, 8, 8, 8, 2))):
        unet = UNet(out_channels=3, channels=(4, 8, 16))
        y = jax.eval_shape(lambda x: unet.apply(unet.init(jax.random.key(0), x), x), x)
        assert y.shape == (*x.shape[:-1], 3)
        di2in = DI2IN(out_channels=2, channels=(4, 8, 16))
        final, sides = jax.eval_shape(lambda x: di2in.apply(di2in.init(jax.random.key(0), x), x), x)
        assert final.shape == (*x.shape[:-1], 2) and len(sides) == 2
        assert all(s.shape == final.shape for s in sides)


@pytest.mark.parametrize("shape", [(2, 9, 6, 3), (2, 5, 8, 7, 2)])
def test_max_pool_matches_flax_values_and_gradient(shape):
    """Same values as Flax's window max pool (odd sizes drop the last row, as VALID pooling does) and the same
    gradient, ties included (after a ReLU most windows are all zeros: the first element takes it)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    dims = x.ndim - 2
    flax_pool = lambda v: nn.max_pool(v, (2,) * dims, strides=(2,) * dims)
    np.testing.assert_array_equal(jax.jit(max_pool)(x), flax_pool(x))
    weights = jnp.asarray(np.random.default_rng(1).standard_normal(flax_pool(x).shape), jnp.float32)
    grad = lambda pool, v: jax.jit(jax.grad(lambda u: jnp.sum(pool(u) * weights)))(v)
    for v in (x, jax.nn.relu(x - 1.0)):
        np.testing.assert_array_equal(grad(max_pool, v), grad(flax_pool, v))
