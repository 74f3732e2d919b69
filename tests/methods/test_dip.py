"""Deep image prior: fits an image, batches with vmap like single runs, and the sinogram term runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax import metrics
from kfjax.errors import ConfigError
from kfjax.methods.dip import DIPConfig, make_fit

TINY = DIPConfig(channels=8, scales=2, skip_channels=2, input_depth=4, iterations=400)


def _images(n=2, size=16):
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = [0.2 + 0.6 * ((yy - 0.5) ** 2 + (xx - c) ** 2 < 0.08) for c in (0.4, 0.6)[:n]]
    return np.stack(base)[..., None].astype(np.float32)


def test_fits_an_image():
    target = _images()
    weight = np.ones_like(target)
    fit = make_fit(TINY, (16, 16))
    keys = jax.random.split(jax.random.key(0), 2)
    out = fit(target, weight, keys)
    assert out["image"].shape == (2, 16, 16, 1) and out["loss"].shape == (2,)
    assert out["image"].dtype == np.float32
    assert float(jnp.max(out["loss"])) < 0.01 * float(np.var(target))
    assert float(jnp.min(metrics.psnr(out["image"], target, 1.0))) > 30.0


@pytest.mark.slow
def test_vmap_matches_single_runs(monkeypatch):
    """Row 1 of a batched (vmap) fit equals a fit of that row alone, in float64.

    Both fits compute the same function of row 1; they differ only in the order of floating-point sums of
    the convolutions XLA compiles for 2 or for 1 image. 400 Adam steps amplify that round-off: in float32
    the images differed by up to 6e-4 on an Intel CPU (1e4 float32 round-offs, u32 = 6e-8) and by 2e-7 on
    AMD. The growth belongs to the optimisation (small differences grow in proportion to their start), not
    to the precision, so in float64 (u64 = 1.1e-16) it leaves <= ~1e-12 (measured on AMD: 4e-16). atol 1e-9
    keeps a factor 1000 for a CPU with faster growth; a real coupling of the rows (a shared key, statistics
    over the batch) changes the images by >= 1e-3. flax creates float32 parameters whatever the input, so
    the network's init casts them to float64 here: every operation of the fit then runs in float64.
    """
    from kfjax.methods import dip

    inits = []

    class SkipNet64(dip.SkipNet):
        def init(self, *args, **kwargs):
            inits.append(1)
            return jax.tree.map(lambda x: x.astype(jnp.float64), super().init(*args, **kwargs))

    monkeypatch.setattr(dip, "SkipNet", SkipNet64)
    with jax.enable_x64(True):
        target = _images().astype(np.float64)
        weight = np.ones_like(target)
        keys = jax.random.split(jax.random.key(0), 2)
        batched = make_fit(TINY, (16, 16))(target, weight, keys)
        single = make_fit(TINY, (16, 16))(target[1:], weight[1:], keys[1:])
    assert inits and batched["image"].dtype == np.float64
    np.testing.assert_allclose(single["image"][0], batched["image"][1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(single["loss"][0], batched["loss"][1], rtol=1e-9)


def test_weight_excludes_pixels():
    """Pixels with weight 0 do not enter the data term: a corrupted patch there leaves the loss unchanged."""
    target = _images(1)
    weight = np.ones_like(target)
    weight[:, 4:8, 4:8] = 0
    corrupt = target.copy()
    corrupt[:, 4:8, 4:8] = 5.0
    cfg = DIPConfig(channels=8, scales=2, skip_channels=2, input_depth=4, iterations=5)
    key = jax.random.key(1)
    a = make_fit(cfg, (16, 16))(target, weight, key)
    b = make_fit(cfg, (16, 16))(corrupt, weight, key)
    np.testing.assert_allclose(a["image"], b["image"], atol=1e-6)


@pytest.mark.slow
def test_sinogram_term_fits_through_the_projector():
    from kfjax.physics.geometry import preset
    from kfjax.physics.projector import make_projector

    fan = preset("adn_quarter")
    project, _ = make_projector(fan)
    image = np.zeros((1, 64, 64, 1), np.float32)
    image[:, 20:44, 16:48] = 0.5
    scale = 64 * fan.pixel_size
    sino = np.asarray(project(jnp.asarray(image))) / scale
    cfg = DIPConfig(channels=8, scales=2, skip_channels=2, input_depth=4, iterations=300)
    out = make_fit(cfg, (64, 64), lambda u: project(u) / scale)(sino, np.ones_like(sino), jax.random.key(0))
    assert float(out["loss"][0]) < 0.02 * float(np.mean(sino**2))  # measured 0.011
    assert float(metrics.psnr(out["image"], image, 1.0)[0]) > 20.0  # measured 23.0 dB


def test_mar_geometry_of_a_downsampled_image_keeps_the_rays():
    """Block-averaging 64^2 -> 16^2 must not move the source: the projections still match (to 3%)."""
    from kfjax.data.unpaired import downsample
    from kfjax.methods.dip import mar_geometry
    from kfjax.physics.geometry import preset
    from kfjax.physics.projector import make_projector

    image = np.zeros((1, 64, 64, 1), np.float32)
    image[:, 16:48, 20:44] = 0.02
    full = make_projector(mar_geometry(preset("adn_quarter"), 1.4, 1))[0](jnp.asarray(image))
    small = make_projector(mar_geometry(preset("adn_quarter"), 1.4, 4))[0](jnp.asarray(downsample(image, 4)))
    assert float(jnp.abs(small - full).mean() / jnp.abs(full).mean()) < 0.03


def test_mar_dip_uses_the_data_geometry(tmp_path, monkeypatch):
    """Both data terms on MAR pairs simulated at adn_quarter: the sinogram term projects with that preset."""
    from kfjax.data.mar import mar_data
    from kfjax.methods.dip import mar_dip

    monkeypatch.setenv("KFJAX_DATA", str(tmp_path))
    arrays = mar_data("test", "phantom", geometry="adn_quarter", n_phantoms=5, slice_step=1)
    pairs = {k: (v[:2] if getattr(v, "ndim", 0) else v) for k, v in arrays.items()}
    cfg = DIPConfig(channels=8, scales=2, skip_channels=2, input_depth=4, iterations=3)
    for term in ("image", "sinogram"):
        out = mar_dip(cfg, pairs, term, batch_size=2, geometry="adn_quarter")
        assert out.shape == (2, 64, 64, 1) and np.all(np.isfinite(out))
    with pytest.raises(ConfigError, match="preset the data were simulated with"):
        mar_dip(cfg, pairs, "sinogram", batch_size=2, geometry="adn")  # 320 views: not these data's sinograms
