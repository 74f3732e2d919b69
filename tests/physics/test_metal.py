"""Metal-artifact simulator: tables, beam-hardening correction, Poisson noise, LI, the jitted batched pipeline."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from kfjax.data.phantoms import ct_anatomy_2d
from kfjax.errors import ConfigError, InputError
from kfjax.physics import metal as M
from kfjax.physics.geometry import FanBeam


def small_fan(size=64, pixel=5.0, views=120):
    """Arc-detector fan beam over a size² image of `pixel` mm, source 4 image widths away."""
    sod = 4.0 * size * pixel
    half = math.asin(size * math.sqrt(2) / 2 * pixel / sod)
    step = 2 * half / (size + 1)
    n_det = 2 * math.ceil(half / step) + 3
    return FanBeam(n_views=views, n_det=n_det, source_distance=sod, detector_distance=sod, det_spacing=step,
                   detector="arc", image_shape=(size, size), pixel_size=pixel)


def radius(size):
    yy, xx = np.mgrid[:size, :size]
    return np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2)


def test_tables_are_sane():
    t = M.load_tables()
    e = t["energies_kev"]
    assert e[0] == 20 and e[-1] == 120 and len(e) == 101
    assert t["spectrum"].sum() == pytest.approx(1.0, abs=1e-9) and (t["spectrum"] >= 0).all()
    mean_energy = (e * t["spectrum"]).sum()
    assert 50 < mean_energy < 75, "a filtered 120 kVp spectrum has a mean energy of about 60 keV"
    assert M._mu_at("water", 70.0) == pytest.approx(0.0192, rel=0.03)  # NIST XCOM: 0.01929/mm
    for m in ("water", "bone", *M.MATERIALS):
        assert (t[f"mu_{m}"] > 0).all()
    # monotone decrease away from K edges; gold has its K edge at 80.7 keV inside the range
    assert (np.diff(t["mu_water"]) < 0).all() and (np.diff(t["mu_Ti"]) < 0).all()
    k = np.searchsorted(e, 80.7)
    assert t["mu_Au"][k] > 3 * t["mu_Au"][k - 1]
    assert M.metal_mu(M.MetalConfig(material="Fe")) > M.metal_mu(M.MetalConfig(material="Ti"))
    half = M.metal_mu(M.MetalConfig(material="Au", density=19.3 / 2))
    assert half == pytest.approx(M.metal_mu(M.MetalConfig(material="Au")) / 2)
    ratios = M.attenuation_ratios("Cu")
    assert ratios.shape == (101, 3) and np.allclose(ratios[50], 1.0)


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="material"):
        M.MetalConfig(material="Pb")
    with pytest.raises(ConfigError, match="density"):
        M.MetalConfig(density=0.0)


def test_decompose_and_hu():
    hu = jnp.array([-1200.0, 0.0, 100.0, 800.0, 1500.0, 3000.0])
    mu = M.hu_to_mu(hu)
    water, bone = M.decompose(mu)
    assert np.allclose(water + bone, mu)
    assert np.allclose(bone[:3], 0) and np.allclose(water[4:], 0)
    assert float(mu[0]) == 0.0 and float(mu[1]) == pytest.approx(0.0192)
    assert np.allclose(M.mu_to_hu(mu[1:]), hu[1:], atol=1e-3)


def test_polychromatic_matches_direct_sum_and_survives_gold():
    t = M.load_tables()
    ratios = M.attenuation_ratios("Au")
    p = np.random.default_rng(0).uniform(0, 6, (3, 5, 3))
    direct = -np.log(np.exp(-p @ ratios.T) @ t["spectrum"])
    got = M.polychromatic(jnp.asarray(p, jnp.float32), ratios, t["spectrum"])
    assert np.allclose(got, direct, rtol=1e-5, atol=1e-5)
    deep = M.polychromatic(jnp.array([[0.0, 0.0, 300.0]]), ratios, t["spectrum"])
    assert np.isfinite(deep).all() and float(deep[0]) > 100


def test_bhc_fit_inverts_water():
    cfg = M.MetalConfig()
    c = M.bhc_coefficients(cfg)
    p_mono = M._mu_at("water", 70.0) * np.linspace(0, 500, 41)
    q = M._poly_water(p_mono, 70.0)
    assert np.abs(np.asarray(M.apply_bhc(q, c)) - p_mono).max() < 0.01


def test_interpolate_trace():
    s = jnp.asarray(np.arange(10.0)[None, None, :, None] ** 2, jnp.float32)
    trace = np.zeros((1, 1, 10, 1), bool)
    trace[0, 0, [0, 3, 4, 5, 9], 0] = True
    out = np.asarray(M.interpolate_trace(s, jnp.asarray(trace)))[0, 0, :, 0]
    assert np.allclose(out, [1, 1, 4, 12, 20, 28, 36, 49, 64, 64])
    full = M.interpolate_trace(s, jnp.ones_like(trace))
    assert np.array_equal(full, s), "an all-trace view is left as it is"


def test_metal_trace_edges():
    p = jnp.zeros((1, 1, 10, 1)).at[0, 0, 2:7, 0].set(1.0).at[0, 0, 9, 0].set(1.0)
    trace, edged = M.metal_trace(p)
    assert np.array_equal(np.asarray(trace)[0, 0, :, 0], [0, 0, 1, 1, 1, 1, 1, 0, 0, 1])
    assert np.allclose(np.asarray(edged)[0, 0, :, 0], [0, 0, 0.25, 1, 1, 1, 0.25, 0, 0, 0.25])


@pytest.mark.parametrize("p", [1.0, 6.0, 12.0])  # λ ≈ 7.4e6, 5e4 (normal approximation), 143 (Poisson)
def test_noise_variance_matches_poisson(p):
    n0, scatter = 2e7, 20.0
    x = jnp.full((400, 500), p, jnp.float32)
    noisy = np.asarray(M.add_noise(x, jax.random.key(1), n0, scatter), np.float64)
    lam = round(n0 * math.exp(-p)) + scatter
    mean = -math.log(lam / n0) + 1 / (2 * lam)  # second-order delta method
    assert noisy.mean() == pytest.approx(mean, abs=3 * math.sqrt(1 / lam / noisy.size) + 1e-6)
    # delta method: var(-log(N/n0)) ≈ var(N)/λ² = 1/λ; 200,000 samples give a 0.3 % standard error
    assert noisy.var() == pytest.approx(1 / lam, rel=0.03)


@pytest.fixture(scope="module")
def water_cylinder():
    g = small_fan(views=360)  # fewer views add their own (view-aliasing) cupping of about 1 % at 64²
    r = radius(64)
    hu = np.where(r < 28, 0.0, -1000.0).astype(np.float32)[None, ..., None]  # 280 mm water
    return g, hu, r


def cupping(image, r):
    return (image[(r > 20) & (r < 24)].mean() - image[r < 5].mean()) / 0.0192


def test_bhc_leaves_water_cylinder_flat(water_cylinder):
    g, hu, r = water_cylinder
    empty = np.zeros_like(hu)
    flat = M.make_metal_simulator(g, M.MetalConfig(noise=False))(hu, empty)
    raw = M.make_metal_simulator(g, M.MetalConfig(noise=False, bhc=False))(hu, empty)
    corrected = cupping(np.asarray(flat["poly_image"])[0, ..., 0], r)
    uncorrected = cupping(np.asarray(raw["poly_image"])[0, ..., 0], r)
    assert abs(corrected) < 0.01, f"cupping {corrected:.2%} of mu_water after correction"
    assert uncorrected > 0.015, f"the uncorrected water image should cup (got {uncorrected:.2%})"
    centre = np.asarray(flat["poly_image"])[0, ..., 0][r < 10].mean()
    assert centre == pytest.approx(0.0192, rel=0.02)


@pytest.fixture(scope="module")
def metal_case():
    g = small_fan(pixel=4.0)
    hu = np.stack([ct_anatomy_2d(np.random.default_rng(seed), 64)[0] for seed in (3, 4)])
    yy, xx = np.mgrid[:64, :64]
    pair = (np.hypot(yy - 30, xx - 22) < 2.5) | (np.hypot(yy - 30, xx - 42) < 2.5)  # two 20 mm Fe rods
    one = ((yy - 36) / 2.0) ** 2 + ((xx - 30) / 4.0) ** 2 < 1  # one 16 x 32 mm implant
    metal = np.stack([pair, one]).astype(np.float32)[..., None]
    sim = M.make_metal_simulator(g, M.MetalConfig(material="Fe"))
    return sim, hu, metal


def test_metal_error_is_much_larger_than_li_near_metal(metal_case):
    sim, hu, metal = metal_case
    out = {k: np.asarray(v) for k, v in sim(hu, metal, jax.random.key(0)).items()}
    for i in range(hu.shape[0]):
        m = metal[i, ..., 0] > 0
        near = ndimage.binary_dilation(m, iterations=8) & ~ndimage.binary_dilation(m, iterations=1)

        def rmse(name, ref, i=i, near=near):
            return np.sqrt(np.mean((out[name][i, ..., 0] - out[ref][i, ..., 0])[near] ** 2))

        # against the 70 keV truth (FBP blur and noise are in both errors) and against the metal-free
        # polychromatic reconstruction (only what the metal adds)
        for ref, factor in (("gt_image", 2.5), ("poly_image", 4.0)):
            ma, li = rmse("ma_image", ref), rmse("li_image", ref)
            assert ma > factor * li, f"case {i}: RMSE near metal vs {ref} {ma:.4g} (metal) vs {li:.4g} (LI) 1/mm"
    trace = out["metal_trace"]
    assert trace.sum() > 0 and np.array_equal(np.unique(trace), [0, 1])
    assert np.allclose(out["li_sinogram"][trace == 0], out["ma_sinogram"][trace == 0])
    assert np.array_equal(out["metal_mask"], metal)


def test_jitted_batch_is_deterministic_and_matches_single_cases(metal_case):
    sim, hu, metal = metal_case
    key = jax.random.key(7)
    a, b = sim(hu, metal, key), sim(hu, metal, key)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = sim(hu, metal, jax.random.key(8))
    assert not np.array_equal(a["ma_sinogram"], c["ma_sinogram"])
    quiet = M.make_metal_simulator(sim.geometry, M.MetalConfig(material="Fe", noise=False))
    both = quiet(hu, metal)
    one = quiet(hu[1:], metal[1:])
    for k in ("ma_sinogram", "li_image", "gt_sinogram", "metal_trace"):
        assert both[k].shape[0] == 2
        assert np.allclose(both[k][1:], one[k], rtol=1e-4, atol=1e-5), k


def test_nmar_runs_and_keeps_bins_off_the_trace(metal_case):
    sim, hu, metal = metal_case
    nmar = M.make_metal_simulator(sim.geometry, M.MetalConfig(material="Fe", noise=False, nmar=True))
    out = {k: np.asarray(v) for k, v in nmar(hu[:1], metal[:1]).items()}
    assert out["nmar_image"].shape == out["li_image"].shape and np.isfinite(out["nmar_image"]).all()
    off = out["metal_trace"] == 0
    assert np.allclose(out["nmar_sinogram"][off], out["ma_sinogram"][off], rtol=1e-5, atol=1e-5)
    assert not np.allclose(out["nmar_sinogram"], out["li_sinogram"])


def test_simulate_rejects_bad_input(metal_case):
    sim, hu, metal = metal_case
    with pytest.raises(InputError, match="shape"):
        sim(hu[:, :32], metal[:, :32], jax.random.key(0))
    with pytest.raises(InputError, match="key"):
        sim(hu, metal)
