"""kfjax.units: HU <-> μ on numpy and jax, the two water values, the μ display mappings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax import units


def test_constants():
    assert units.MU_WATER_70KEV == 0.0192 and units.MU_WATER_DRR == 0.0206
    assert units.MU_RANGE == 0.05 and units.FOV_MM == 360.0 and units.METAL_THRESHOLD_HU == 2500.0


@pytest.mark.parametrize("mu_water", [units.MU_WATER_70KEV, units.MU_WATER_DRR])
def test_hu_mu_round_trip_numpy(mu_water):
    hu = np.array([-1000.0, -500.0, 0.0, 40.0, 1000.0, 3071.0])
    mu = units.hu_to_mu(hu, mu_water)
    assert isinstance(mu, np.ndarray) and mu.dtype == np.float64
    np.testing.assert_allclose(mu, mu_water * (1 + hu / 1000))
    assert mu[0] == 0.0 and mu[2] == pytest.approx(mu_water)
    np.testing.assert_allclose(units.mu_to_hu(mu, mu_water), hu, atol=1e-9)


@pytest.mark.parametrize("mu_water", [units.MU_WATER_70KEV, units.MU_WATER_DRR])
def test_hu_mu_round_trip_jax_and_jit(mu_water):
    hu = jnp.array([-1000.0, -200.0, 0.0, 700.0, 2500.0], jnp.float32)
    mu = jax.jit(lambda h: units.hu_to_mu(h, mu_water))(hu)
    assert isinstance(mu, jax.Array) and mu.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(mu), mu_water * (1 + np.asarray(hu) / 1000), rtol=1e-6)
    back = jax.jit(lambda m: units.mu_to_hu(m, mu_water))(mu)
    np.testing.assert_allclose(np.asarray(back), np.asarray(hu), atol=1e-3)
    grad = jax.grad(lambda h: units.hu_to_mu(h, mu_water).sum())(hu[1:])
    np.testing.assert_allclose(np.asarray(grad), mu_water / 1000, rtol=1e-6)


def test_hu_below_air_clips_to_zero_and_default_is_70kev():
    np.testing.assert_array_equal(units.hu_to_mu(np.array([-2048.0, -1500.0])), [0.0, 0.0])
    assert units.hu_to_mu(0.0) == pytest.approx(units.MU_WATER_70KEV)
    assert units.mu_to_hu(units.MU_WATER_70KEV) == pytest.approx(0.0)
    # the two water values are different quantities: 0 HU maps to different μ
    assert units.hu_to_mu(0.0, units.MU_WATER_DRR) != units.hu_to_mu(0.0)


def test_unit_range_and_signed_mappings():
    mu = np.array([-0.01, 0.0, 0.025, 0.05, 0.09], np.float32)
    np.testing.assert_allclose(units.to_unit_range(mu), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(units.to_signed(mu), [-1, -1, 0, 1, 1])
    assert units.to_signed(mu).dtype == np.float32
    np.testing.assert_allclose(units.to_unit(units.to_signed(mu)), units.to_unit_range(mu))
    x = jnp.linspace(-1.0, 1.0, 5)
    np.testing.assert_allclose(np.asarray(units.to_unit(x)), [0, 0.25, 0.5, 0.75, 1])
    assert float(units.to_unit_range(0.1)) == 1.0 and float(units.to_unit_range(-0.1)) == 0.0
    jitted = jax.jit(units.to_signed)(jnp.asarray(mu))
    np.testing.assert_allclose(np.asarray(jitted), [-1, -1, 0, 1, 1])
