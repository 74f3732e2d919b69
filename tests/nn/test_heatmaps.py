"""Gaussian landmark heatmaps and soft-argmax against numpy definitions, in float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax.errors import InputError
from kfjax.nn.heatmaps import gaussian_heatmaps, hard_argmax, soft_argmax


def _numpy_gaussians(landmarks, shape, sigma):
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    out = np.zeros((landmarks.shape[0],) + tuple(shape) + (landmarks.shape[1],))
    for b in range(landmarks.shape[0]):
        for k in range(landmarks.shape[1]):
            d2 = sum((g - landmarks[b, k, i]) ** 2 for i, g in enumerate(grids))
            out[b, ..., k] = np.exp(-d2 / (2 * sigma**2))
    return out


@pytest.mark.parametrize("shape", [(20, 17), (9, 8, 7)])
def test_gaussians_match_the_definition_and_peak_at_the_landmark(shape):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        lm = rng.uniform(2, np.array(shape) - 3, size=(2, 3, len(shape)))
        got = np.asarray(jax.jit(gaussian_heatmaps, static_argnums=(1, 2))(jnp.asarray(lm), shape, 2.0))
        np.testing.assert_allclose(got, _numpy_gaussians(lm, shape, 2.0), rtol=1e-12, atol=1e-15)
        ints = np.round(lm)
        peak = np.asarray(hard_argmax(gaussian_heatmaps(jnp.asarray(ints), shape, 2.0)))
        np.testing.assert_array_equal(peak, ints)


def test_soft_argmax_is_the_expected_coordinate():
    """A softmax over log-Gaussians is a discrete Gaussian; its mean is the landmark up to the truncation at
    the border, which is exp(-d²/2σ²) ~ 1e-9 for a landmark d = 6.5σ from every edge."""
    with jax.enable_x64(True):
        shape, sigma = (40, 36), 2.0
        lm = jnp.asarray([[[20.3, 17.6], [15.25, 18.0]]])
        logits = jnp.log(gaussian_heatmaps(lm, shape, sigma))
        got = jax.jit(soft_argmax)(logits)
        np.testing.assert_allclose(np.asarray(got), np.asarray(lm), atol=1e-6)
        grad = jax.grad(lambda x: soft_argmax(x).sum())(logits)
        assert np.all(np.isfinite(np.asarray(grad)))


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(InputError, match="landmarks must be"):
        gaussian_heatmaps(jnp.zeros((2, 3)), (8, 8))
    with pytest.raises(InputError, match="sigma"):
        gaussian_heatmaps(jnp.zeros((1, 1, 2)), (8, 8), sigma=0.0)
    with pytest.raises(InputError, match="soft_argmax expects"):
        soft_argmax(jnp.zeros((8, 8, 2)))
