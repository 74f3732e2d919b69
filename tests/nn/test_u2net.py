"""U2Net: shapes in every mode (2-D and 3-D), class masking, padded channels ignored, the depthwise sum equals
a grouped convolution, one compilation for every domain, and the parameter counts per mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax.nn.u2net import MASKED_LOGIT, MODES, U2Net, _depthwise, count_table, param_counts, param_shapes

IN, CLASSES = (1, 2, 1), (4, 3, 2)
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def _net(mode, channels=(4, 8, 16)):
    return U2Net(IN, CLASSES, channels, mode)


@pytest.mark.parametrize("mode,dims", [(m, 3) for m in MODES] + [("universal", 2)])
def test_shapes_and_class_mask(mode, dims):
    side = 32 if dims == 2 else 16
    x = jax.random.normal(jax.random.key(0), (2, *(side,) * dims, 2))
    net = _net(mode)
    params = jax.jit(net.init)(jax.random.key(1), x, jnp.int32(0))
    apply = jax.jit(net.apply)
    for domain in range(3):
        out = apply(params, x, jnp.int32(domain))
        assert out.shape == (2, *(side,) * dims, 4)
        k = CLASSES[domain]
        assert np.all(np.asarray(out[..., k:]) == MASKED_LOGIT)
        assert np.all(np.abs(np.asarray(out[..., :k])) < 1e3)


def test_padded_channels_of_a_one_channel_domain_are_ignored():
    x = jax.random.normal(jax.random.key(0), (1, 16, 16, 16, 2))
    net = _net("universal")
    params = jax.jit(net.init)(jax.random.key(1), x, jnp.int32(0))
    apply = jax.jit(net.apply)
    other = x.at[..., 1].set(123.0)
    np.testing.assert_array_equal(apply(params, x, jnp.int32(0)), apply(params, other, jnp.int32(0)))
    assert not np.array_equal(apply(params, x, jnp.int32(1)), apply(params, other, jnp.int32(1)))


@pytest.mark.parametrize("dims", [2, 3])
def test_depthwise_sum_equals_a_grouped_convolution(dims):
    """A sum of n = 3**d products differs between orders by at most n eps times the sum of |terms|, which is
    at most n max|x| max|w|."""
    x = jax.random.normal(jax.random.key(0), (2, *(7,) * dims, 5))
    kernel = jax.random.normal(jax.random.key(1), (*(3,) * dims, 1, 5))
    spec = ("NHWC", "HWIO", "NHWC") if dims == 2 else ("NDHWC", "DHWIO", "NDHWC")
    ref = jax.lax.conv_general_dilated(x, kernel, (1,) * dims, "SAME", dimension_numbers=spec, feature_group_count=5)
    bound = 3**dims * FLOAT32_EPS * float(jnp.abs(x).max() * jnp.abs(kernel).max()) * 3**dims
    np.testing.assert_allclose(jax.jit(_depthwise)(x, kernel), ref, atol=bound, rtol=0)


def test_one_compilation_serves_every_domain():
    x = jnp.zeros((1, 16, 16, 16, 2))
    net = _net("universal")
    params = jax.jit(net.init)(jax.random.key(1), x, jnp.int32(0))
    traces = []

    def apply(p, x, d):
        traces.append(1)
        return net.apply(p, x, d)

    fn = jax.jit(apply)
    outs = [fn(params, x + 1.0, jnp.int32(d)) for d in range(3)]
    assert len(traces) == 1 and fn._cache_size() == 1
    assert not np.array_equal(outs[0], outs[2])  # the index really selects other layers


def test_parameter_counts_per_mode_at_realistic_widths():
    """At the paper's widths (base 16, five levels) a domain's own parameters in universal mode are ~1 % of
    one full network (the paper: about 1 %); independent pays 100 % per domain, shared only its I/O layers."""
    ins, classes, widths = (1, 2, 1, 2, 1), (4, 4, 2, 3, 3), (16, 32, 64, 128, 256)
    counts = {m: param_counts(ins, classes, widths, m) for m in MODES}
    assert counts["independent"]["per_domain_pct"] == pytest.approx(100.0, abs=0.1)
    assert 0.3 < counts["universal"]["per_domain_pct"] < 3.0
    assert counts["shared"]["per_domain_pct"] < counts["universal"]["per_domain_pct"]
    assert counts["universal"]["total"] < counts["shared"]["total"] < counts["independent"]["total"]
    table = count_table(ins, classes, widths)
    assert all(m in table for m in MODES)


def test_shared_mode_per_domain_parameters_are_the_io_layers():
    """Hand count for channels (8, 16, 32): input 3x3x3 conv (27 * 2 * 8) + its norm (2 * 8); output 1x1x1 head
    (8 * 4 + 4) and the level-1 deep-supervision head (16 * 4 + 4)."""
    counts = param_counts((1, 2), (4, 2), (8, 16, 32), "shared")
    assert counts["per_domain"] == 27 * 2 * 8 + 2 * 8 + (8 * 4 + 4) + (16 * 4 + 4)
    shapes = param_shapes(U2Net((1, 2), (4, 2), (8, 16, 32), "shared"))
    assert shapes["input_conv"]["domain_kernel"].shape == (2, 3, 3, 3, 2, 8)
