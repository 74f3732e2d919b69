"""Sliding-window inference: exact on pointwise networks, full coverage, one compiled shape, bad inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax.errors import InputError
from kfjax.nn.sliding_window import blending_weights, sliding_window, window_starts


def _pointwise(x):
    """A network without spatial context: any blend of its window outputs is the direct output."""
    return jnp.concatenate([2.0 * x + 1.0, jnp.tanh(x)], axis=-1)


@pytest.mark.parametrize("shape,patch", [((2, 37, 29, 1), (16, 16)), ((1, 19, 12, 23, 1), (8, 8, 8)),
                                         ((1, 5, 40, 1), (16, 16))])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_pointwise_network_is_reproduced_exactly(shape, patch, mode):
    """Blending divides a weighted sum of identical values by the sum of the weights: equal to the value up to
    float32 rounding of a few additions (relative 1e-6 here, far below any model's own error)."""
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    calls = []

    def predict(windows):
        calls.append(windows.shape)
        return jax.jit(_pointwise)(windows)

    got = sliding_window(x, patch, predict, overlap=0.5, mode=mode, batch_size=3)
    np.testing.assert_allclose(got, np.asarray(_pointwise(x)), rtol=1e-6, atol=1e-6)
    assert len(set(calls)) == 1 and calls[0] == (3, *patch, 1)  # one compiled shape, last batch padded


@pytest.mark.parametrize("size,patch,overlap", [(100, 32, 0.25), (64, 64, 0.5), (65, 64, 0.5), (10, 3, 0.9),
                                                (7, 16, 0.0)])
def test_windows_cover_every_voxel_with_the_requested_step(size, patch, overlap):
    starts = window_starts(size, patch, overlap)
    covered = np.zeros(max(size, patch), bool)
    for s in starts:
        covered[s:s + patch] = True
    assert covered[:size].all()
    assert starts[0] == 0 and starts[-1] == max(size - patch, 0)
    step = max(int(patch * (1 - overlap)), 1)
    assert all(b - a <= step for a, b in zip(starts, starts[1:]))


def test_gaussian_weights_peak_in_the_centre_and_stay_positive():
    w = blending_weights((9, 8), "gaussian")
    assert w.max() == pytest.approx(1.0) and w.min() > 0
    assert w[4, 3] > w[0, 3] and w[4, 3] > w[4, 0]
    np.testing.assert_allclose(w, w[::-1, ::-1])  # symmetric about the window centre


def test_a_conv_network_agrees_with_whole_image_inference_away_from_window_borders():
    """A 3x3 conv (receptive radius 1) sees zero padding at a window's border that the whole image does not
    have, except where the window border is the image border. Windows of 12 at step 6 over 24 px start at 0,
    6, 12: a pixel is exact when no window covering it has it on an inner border, i.e. all but 6, 11, 12, 17."""
    kernel = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 1, 2))

    def conv(x):
        return jax.lax.conv_general_dilated(jnp.asarray(x), kernel, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    x = np.random.default_rng(1).normal(size=(1, 24, 24, 1)).astype(np.float32)
    whole = np.asarray(conv(x))
    one = sliding_window(x, (24, 24), conv, overlap=0.5, mode="constant", batch_size=1)
    np.testing.assert_allclose(one, whole, rtol=1e-5, atol=1e-5)
    tiled = sliding_window(x, (12, 12), conv, overlap=0.5, mode="gaussian", batch_size=2)
    seams = [6, 11, 12, 17]
    exact = np.setdiff1d(np.arange(24), seams)
    np.testing.assert_allclose(tiled[0][np.ix_(exact, exact)], whole[0][np.ix_(exact, exact)], rtol=1e-5, atol=1e-5)
    assert np.abs(tiled[0, seams] - whole[0, seams]).max() > 1e-3  # the seams do differ: the check can fail


def test_bad_inputs_are_one_line_errors():
    x = np.zeros((1, 16, 16, 1), np.float32)
    with pytest.raises(InputError, match="do not match"):
        sliding_window(x, (8, 8, 8), _pointwise)
    with pytest.raises(InputError, match="overlap"):
        sliding_window(x, (8, 8), _pointwise, overlap=1.0)
    with pytest.raises(InputError, match="NaN"):
        sliding_window(np.full_like(x, np.nan), (8, 8), _pointwise)
    with pytest.raises(InputError, match="blending mode"):
        sliding_window(x, (8, 8), _pointwise, mode="cosine")
    with pytest.raises(InputError, match="must keep"):
        sliding_window(x, (8, 8), lambda w: w[:, ::2])
