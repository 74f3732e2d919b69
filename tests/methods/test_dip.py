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


def test_fits_an_image_and_vmap_matches_single_runs():
    target = _images()
    weight = np.ones_like(target)
    fit = make_fit(TINY, (16, 16))
    keys = jax.random.split(jax.random.key(0), 2)
    out = fit(target, weight, keys)
    assert out["image"].shape == (2, 16, 16, 1) and out["loss"].shape == (2,)
    assert float(jnp.max(out["loss"])) < 0.01 * float(np.var(target))
    assert float(jnp.min(metrics.psnr(out["image"], target, 1.0))) > 30.0
    single = make_fit(TINY, (16, 16))(target[1:], weight[1:], keys[1:])
    np.testing.assert_allclose(single["image"][0], out["image"][1], atol=1e-4)


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
