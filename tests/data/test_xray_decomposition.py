"""X-ray decomposition data: the component DRRs add up to the DRR of the whole volume, every image is a pure
function of (seed, split, index), both views show the patient's left on the image's right, the detector model
reduces to line integral / 6 with its effects off, shapes, bad arguments.

The procedural phantom needs no data; tests of the real chest CT are marked `data`.
"""

import numpy as np
import pytest

from kfjax.data import xray_decomposition as X
from kfjax.errors import InputError

F32_EPS = float(np.finfo(np.float32).eps)


def _still(n: int, pa) -> dict:
    """Samples of ``n`` images in the reference pose: no motion, scaling, deformation or breathing."""
    return {"pa": np.asarray(pa, bool), "rotvec": np.zeros((n, 3)), "trans": np.zeros((n, 3)),
            "scale": np.ones((n, 3)), "control": np.zeros((n, 4, 4, 4, 3)), "lung_density": np.ones(n)}


# ------------------------------------------------------------------------------------------ components
def test_split_components_partition_the_attenuation():
    rng = np.random.default_rng(0)
    mu = X.hu_to_mu(rng.uniform(-1000, 1500, (6, 7, 8)), X.MU_WATER_DRR).astype(np.float32)
    bone = rng.random(mu.shape) < 0.3
    lung = (rng.random(mu.shape) < 0.3) & ~bone
    parts = X.split_components(mu, bone, lung)
    np.testing.assert_allclose(sum(parts), mu, rtol=2 * F32_EPS, atol=0)  # two float32 roundings
    assert all(np.all(p >= 0) for p in parts)
    assert np.all(parts[0][~bone] == 0) and np.all(parts[1][~lung] == 0)
    fill = X.hu_to_mu(X.SOFT_FILL_HU, X.MU_WATER_DRR)
    assert np.all(parts[2][bone] <= fill * (1 + F32_EPS)), "a bone voxel leaves at most soft tissue behind"


def test_component_drrs_add_up_to_the_total_drr():
    """Rendering each component and summing equals rendering the summed (deformed, breathing) volume.

    Both use the same warp weights, ray taps and slice weights; only the order of the additions differs
    (3 channel sums after ~60 slice steps vs. one): a few float32 roundings of the largest line integral,
    bounded by 64 eps x max."""
    volume, affine, centre = X.phantom_components()
    samples = X.draw_samples("train", 3, 32, seed=0)
    parts = X.render_samples(volume, affine, centre, 32, samples)
    total = X.render_samples(volume, affine, centre, 32, samples, combine=True)
    assert parts.shape == (3, 32, 32, 3) and total.shape == (3, 32, 32, 1)
    assert total.max() > 3.0 and np.all(parts.reshape(-1, 3).max(0) > 0.2), "every component shows"
    np.testing.assert_allclose(parts.sum(-1), total[..., 0], rtol=0, atol=64 * F32_EPS * float(total.max()))


def test_breathing_scales_only_the_lung_component():
    volume, affine, centre = X.phantom_components()
    samples = _still(2, [False, False])
    samples["lung_density"] = np.array([1.0, 1.25])
    parts = X.render_samples(volume, affine, centre, 32, samples)
    np.testing.assert_allclose(parts[1, ..., 1], 1.25 * parts[0, ..., 1], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(parts[1, ..., [0, 2]], parts[0, ..., [0, 2]])


def test_both_views_show_the_patients_left_on_the_image_right():
    """A bead 60 mm to the patient's left (world -x, RAS) lands right of centre in the AP and the PA view,
    at mirrored-then-flipped places that agree to the magnification difference (< 1.5 px at 32²)."""
    volume, affine, centre = X.phantom_components()
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape[:3]], indexing="ij"), -1)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    bead = np.exp(-np.sum((world - [-60.0, 0.0, 0.0]) ** 2, -1) / (2 * 10.0**2)).astype(np.float32)
    images = X.render_samples(bead[..., None], affine, centre, 32, _still(2, [False, True]))[..., 0]
    cols = [float(np.sum(im.sum(0) * np.arange(32)) / im.sum()) for im in images]
    assert min(cols) > 15.5 + 3, cols
    assert abs(cols[0] - cols[1]) < 1.5


# ------------------------------------------------------------------------------------------ sampling
def test_samples_are_a_pure_function_of_seed_split_and_index():
    a = X.draw_samples("train", 4, 32, seed=0)
    b = X.draw_samples("train", 2, 32, seed=0)
    for key in a:
        np.testing.assert_array_equal(a[key][:2], b[key])  # a smaller count is a prefix
    other_seed, other_split = X.draw_samples("train", 4, 32, seed=1), X.draw_samples("val", 4, 32, seed=0)
    assert not np.array_equal(a["rotvec"], other_seed["rotvec"])
    assert not np.array_equal(a["rotvec"], other_split["rotvec"])
    p = X.POSE_RANGES
    assert np.all(np.abs(np.rad2deg(a["rotvec"])) <= p["rot_deg"]) and np.all(np.abs(a["trans"]) <= p["trans_mm"])
    assert np.all(np.abs(a["control"]) <= 2 * X.ANATOMY_RANGES["deform_mm"])
    w = a["window"]
    assert np.all((w[:, 0] < w[:, 1]) & (w[:, 2] < w[:, 3])) and w.min() >= 0 and w.max() <= 32


def test_phantom_set_is_deterministic_with_the_documented_arrays():
    one = X.decomposition_set("val", size=32, source="phantom", count=3, seed=0).arrays
    again = X.decomposition_set("val", size=32, source="phantom", count=3, seed=0).arrays
    for key in one:
        np.testing.assert_array_equal(one[key], again[key])
    other = X.decomposition_set("val", size=32, source="phantom", count=3, seed=1).arrays
    assert not np.array_equal(one["drr"], other["drr"]) and not np.array_equal(one["detector"], other["detector"])
    assert one["drr"].shape == one["detector"].shape == (3, 32, 32, 1) and one["components"].shape == (3, 32, 32, 3)
    assert all(one[k].dtype == np.float32 for k in ("drr", "detector", "components"))
    np.testing.assert_allclose(one["drr"][..., 0] * X.LINE_INTEGRAL_SCALE, one["components"].sum(-1), rtol=1e-6)
    assert 0.0 <= one["detector"].min() and one["detector"].max() <= 1.0


# ------------------------------------------------------------------------------------------ detector
NEUTRAL = {"hardening": 0.0, "scatter": 0.0, "scatter_sigma": 0.1, "blur": 0.0, "photons": 0.0, "gamma": 1.0,
           "window": (0, 24, 0, 20)}


def test_detector_with_its_effects_off_is_the_normalised_line_integral():
    p = np.random.default_rng(0).uniform(0, 7, (24, 20))
    np.testing.assert_allclose(X.detector_image(p, NEUTRAL), np.clip(p / X.LINE_INTEGRAL_SCALE, 0, 1), rtol=1e-6)


def test_detector_effects():
    p = np.tile(np.linspace(0.5, 5.0, 20), (24, 1))
    hard = X.detector_image(p, dict(NEUTRAL, hardening=0.2))
    assert np.all(np.diff(hard, axis=1) > 0) and np.all(hard[:, 1:] < p[:, 1:] / X.LINE_INTEGRAL_SCALE)
    collimated = X.detector_image(p, dict(NEUTRAL, window=(4, 24, 0, 20)))
    assert np.all(collimated[:4] == 1.0), "no primary beyond the blades: white, as unexposed film"
    hazy = X.detector_image(p, dict(NEUTRAL, scatter=0.3))
    assert np.all(hazy < X.detector_image(p, NEUTRAL)), "scatter adds signal: less apparent attenuation"
    noisy = dict(NEUTRAL, photons=1e3)
    a = X.detector_image(p, noisy, np.random.default_rng(3))
    np.testing.assert_array_equal(a, X.detector_image(p, noisy, np.random.default_rng(3)))
    assert 0.0 < np.std(a - X.detector_image(p, NEUTRAL)) < 0.2


# ------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize("kwargs", [dict(split="training"), dict(split="val", source="mri"), dict(split="val", size=8),
                                    dict(split="val", size=64.0), dict(split="val", count=0)])
def test_bad_arguments_raise_input_error(kwargs):
    with pytest.raises(InputError):
        X.decomposition_set(**kwargs)


# ------------------------------------------------------------------------------------------ real data
@pytest.mark.data
def test_real_labels_volume_and_set():
    from kfjax.data.ct import chest_ct_structures

    names = chest_ct_structures()["structures"]
    for prefix in X.BONE_PREFIXES + X.LUNG_PREFIXES:
        assert X.label_ids(names, [prefix]), f"no structure starts with {prefix}"
    volume, affine, centre = X.chest_components(8)
    assert volume.shape[0] == 133 and volume.shape[-1] == 3 and np.all(volume >= 0)
    d = X.decomposition_set("val", size=32, count=4).arrays
    assert d["components"].shape == (4, 32, 32, 3) and d["drr"].shape == (4, 32, 32, 1)
    parts = d["components"]
    np.testing.assert_allclose(d["drr"][..., 0] * X.LINE_INTEGRAL_SCALE, parts.sum(-1), rtol=1e-6)
    assert 3.5 < parts.sum(-1).max() < 8.0, "the thickest chest path is about 5-6 line integrals"
    spine = parts[:, :, 13:19, 0].mean()  # bone is brightest along the spine, in the middle columns
    assert spine > 2 * parts[..., 0].mean()
    again = X.decomposition_set("val", size=32, count=4).arrays  # from the cache
    np.testing.assert_array_equal(again["components"], parts)
