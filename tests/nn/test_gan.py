"""GAN blocks: PatchGAN receptive field and output size, ResNet generator shapes, ADN and skip nets, image pool."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax.nn.adn import ADNNet
from kfjax.nn.gan import PatchDiscriminator, ResnetGenerator, pool_init, pool_query
from kfjax.nn.skip import SkipNet


@pytest.mark.parametrize("n_layers,size,out", [(3, 256, 30), (2, 64, 14)])
def test_patch_discriminator_output_size(n_layers, size, out):
    d = PatchDiscriminator(features=4, n_layers=n_layers)
    y, _ = d.init_with_output(jax.random.key(0), jnp.zeros((1, size, size, 1)))
    assert y.shape == (1, out, out, 1)


def test_patch_discriminator_receptive_field_is_70():
    """The gradient of one output logit touches exactly a 70x70 input window (3 layers)."""
    d = PatchDiscriminator(features=4, n_layers=3, norm="none")
    x = jnp.zeros((1, 128, 128, 1))
    params = d.init(jax.random.key(0), x)
    g = jax.grad(lambda x: d.apply(params, x)[0, 7, 7, 0])(x + 0.1)[0, ..., 0]
    rows, cols = np.nonzero(np.asarray(g))
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


def test_generators_keep_shape_and_range():
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
    g = ResnetGenerator(out_channels=1, features=4, n_blocks=2)
    y, _ = g.init_with_output(jax.random.key(0), x)
    assert y.shape == x.shape and float(jnp.abs(y).max()) <= 1.0
    net = ADNNet(base=4, num_residual=1)
    out, variables = net.init_with_output(jax.random.key(0), x, x)
    assert set(out) == {"ll", "lh", "hl", "hh", "hlh"} and all(v.shape == x.shape for v in out.values())
    reduced = net.apply(variables, x, method=ADNNet.reduce)
    np.testing.assert_allclose(reduced, out["lh"], atol=1e-6)
    assert {"fuse0", "fuse1", "fuse2"} <= set(variables["params"]["decoder_art"])  # artifact pyramid
    assert not any(k.startswith("fuse") for k in variables["params"]["decoder"])
    z = SkipNet(1, (4, 4), (4, 4), (2, 2)).init_with_output(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))[0]
    assert z.shape == (1, 16, 16, 1) and 0 < float(z.min()) and float(z.max()) < 1


def test_image_pool_fills_then_swaps():
    pool = pool_init(4, (2, 2, 1))
    for i in range(2):  # filling: every fake is returned and stored
        out, pool = pool_query(pool, jnp.full((2, 2, 2, 1), float(i)), jax.random.key(i))
        np.testing.assert_array_equal(out, i)
    assert int(pool["count"]) == 4
    np.testing.assert_array_equal(np.sort(pool["images"][:, 0, 0, 0]), [0, 0, 1, 1])
    returned = []
    for i in range(2, 40):  # full: each output is the new fake or an older stored image
        out, pool = pool_query(pool, jnp.full((2, 2, 2, 1), float(i)), jax.random.key(i))
        vals = np.asarray(out[:, 0, 0, 0])
        assert np.all(vals <= i)
        returned += list(vals)
    old = np.mean(np.asarray(returned) < np.repeat(np.arange(2, 40), 2))
    assert 0.3 < old < 0.7  # about half come from the history
    same, _ = pool_query(pool_init(0, (2, 2, 1)), jnp.ones((3, 2, 2, 1)), jax.random.key(0))
    np.testing.assert_array_equal(same, 1.0)
