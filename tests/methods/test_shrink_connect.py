"""ShrinkConnect: simultaneous OMP picks what it should, its fit is the least-squares one, the folded network
equals the original when every unit is kept and the head of the reconstructed responses otherwise, and the
multiplications drop as counted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax.nn.lsdn import LSDN, compress, multiplies
from kfjax.nn.shrink_connect import simultaneous_omp

HIDDEN = (12, 6)
U64 = np.finfo(np.float64).eps


def test_somp_first_pick_is_the_largest_normalised_correlation():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(200, 9)) @ rng.normal(size=(9, 9)) + rng.normal(size=9)
    d = h - h.mean(axis=0)
    brute = np.argmax(np.linalg.norm(d.T @ d, axis=1) / np.linalg.norm(d, axis=0))
    assert simultaneous_omp(h, 1).support[0] == brute


def test_somp_recovers_a_low_rank_set_and_skips_constants():
    """Ten responses that are (affine) combinations of three: three units reproduce all of them (relative error
    at round-off: lstsq of well-conditioned 500 x 3 columns, ~1e-15; 1e-10 is slack); two cannot. A constant
    unit carries no information beyond the intercept and is never chosen."""
    rng = np.random.default_rng(1)
    base = rng.uniform(size=(500, 3))
    mix = rng.normal(size=(3, 10))
    h = base @ mix + rng.normal(size=10)
    h[:, 4] = 0.7  # a constant unit
    fit3, fit2 = simultaneous_omp(h, 3), simultaneous_omp(h, 2)
    assert fit3.relative_error < 1e-10 and fit2.relative_error > 1e-3
    assert 4 not in fit3.support and len(set(fit3.support.tolist())) == 3
    np.testing.assert_allclose(h[:, fit3.support] @ fit3.coef + fit3.offset, h, atol=1e-10)


def _net_and_batch(variant: str):
    net = LSDN(HIDDEN, variant, activation="relu")
    rng = np.random.default_rng(2)
    image = rng.uniform(-1, 1, (3, 16, 14, 1))
    gy, gx = np.meshgrid(np.linspace(-0.8, 0.8, 16), np.linspace(-0.6, 0.6, 14), indexing="ij")
    coords = np.broadcast_to(np.stack([gy, gx, 0.3 * gy * gx], axis=-1), (3, 16, 14, 3)).copy()
    params = net.init(jax.random.key(3), image.astype(np.float32), coords.astype(np.float32))["params"]
    params = jax.tree.map(lambda x: x.astype(np.float64), params)
    h = np.asarray(net.apply({"params": params}, image, coords, method=LSDN.first_layer)).reshape(-1, HIDDEN[0])
    return net, params, image, coords, h


@pytest.mark.parametrize("variant", ["lsdn", "cdn", "blind"])
def test_keeping_every_unit_is_exact(variant):
    """With all 12 units the fit is H = H I + 0: lstsq on a full-rank 672 x 12 matrix returns the identity to
    ~cond * u. The test asserts cond < 1e5, so the coefficients are off by < 1e5 * 1.1e-16 ~ 1e-11, and the
    outputs (|W| ~ 1, 12 + 6 terms per voxel) by < 1e-9."""
    with jax.enable_x64(True):
        net, params, image, coords, h = _net_and_batch(variant)
        assert np.linalg.cond(h - h.mean(axis=0)) < 1e5
        fit = simultaneous_omp(h, HIDDEN[0])
        assert sorted(fit.support.tolist()) == list(range(HIDDEN[0])) and fit.relative_error < 1e-12
        small = compress(params, fit.support, fit.coef, fit.offset, variant)
        a = np.asarray(net.apply({"params": params}, image, coords))
        b = np.asarray(LSDN(HIDDEN, variant, activation="relu").apply({"params": small}, image, coords))
    assert a.dtype == np.float64
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-9)


@pytest.mark.parametrize("variant", ["lsdn", "blind"])
def test_k_units_give_the_least_squares_fit_and_fewer_multiplies(variant):
    """With k = 4 units: the coefficients are numpy lstsq's on [H_S, 1] (an independent solve; both are
    backward stable, so they agree to ~cond * u); the compressed network equals the head applied to the
    reconstructed responses H_S coef + offset (folding is exact algebra: only round-off); the reported error is
    the residual of that fit; the multiplications drop as counted."""
    k = 4
    with jax.enable_x64(True):
        net, params, image, coords, h = _net_and_batch(variant)
        fit = simultaneous_omp(h, k)
        s = fit.support
        design = np.concatenate([h[:, s], np.ones((len(h), 1))], axis=1)
        solution = np.linalg.lstsq(design, h, rcond=None)[0]
        cond = np.linalg.cond(design)
        np.testing.assert_allclose(fit.coef, solution[:k], atol=cond * 1e3 * U64)
        np.testing.assert_allclose(fit.offset, solution[k], atol=cond * 1e3 * U64)
        recon = design @ solution
        error = np.linalg.norm(h - recon) / np.linalg.norm(h - h.mean(axis=0))
        assert fit.relative_error == pytest.approx(error, rel=1e-9) and 0 < fit.relative_error < 1
        small = compress(params, s, fit.coef, fit.offset, variant)
        compressed = LSDN((k, *HIDDEN[1:]), variant, activation="relu")
        out = np.asarray(compressed.apply({"params": small}, image, coords))
        head = np.asarray(net.apply({"params": params}, jnp.asarray(recon.reshape(*image.shape[:-1], -1)),
                                    method=LSDN.head))
    np.testing.assert_allclose(out, head, rtol=0, atol=1e-10)
    before, after = multiplies(HIDDEN, variant), multiplies((k, *HIDDEN[1:]), variant)
    per_unit = {"lsdn": 9 + 3 + 1, "blind": 9}[variant]
    assert before["first_layer"] - after["first_layer"] == (HIDDEN[0] - k) * per_unit
    assert before["total"] - after["total"] == (HIDDEN[0] - k) * (per_unit + HIDDEN[1])
