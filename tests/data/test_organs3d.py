"""Procedural 3-D organs: a missing boundary means a same-HU neighbour touches the organ; splits, cache, errors."""

import numpy as np
import pytest
from scipy import ndimage

from kfjax.data.organs3d import (FIELD_MM, MIN_CONTACT, MIN_CONTRAST_HU, hu_to_unit, is_missing, organ_case,
                                 organ_cases, real_liver_case, resample_linear, spacing_mm)
from kfjax.errors import InputError


def _touching_parts(case):
    """Part ids (>= 3, neighbours) with a voxel face-adjacent to the organ."""
    organ = case["parts"] == 2
    rim = ndimage.binary_dilation(organ) & ~organ
    return sorted(int(p) for p in np.unique(case["parts"][rim]) if p >= 3)


def _contact_step(case, part):
    """|mean image of `part`'s voxels touching the organ - mean of the organ's voxels touching `part`| ([0, 1])."""
    organ, other = case["label"], case["parts"] == part
    a = other & ndimage.binary_dilation(organ)
    b = organ & ndimage.binary_dilation(other)
    return abs(float(case["image"][a].mean() - case["image"][b].mean()))


def test_missing_boundary_means_a_same_intensity_neighbour_touches_the_organ():
    steps = {"missing": [], "normal": []}
    for index in range(6):
        missing = organ_case(np.random.default_rng((7, index)), 24, missing=True)
        normal = organ_case(np.random.default_rng((7, index)), 24, missing=False)
        assert missing["missing"] and not normal["missing"]
        for case in (missing, normal):
            np.testing.assert_array_equal(case["label"], case["parts"] == 2)
            assert case["label"].sum() > 100
        organ = missing["label"]
        rim = ndimage.binary_dilation(organ) & ~organ
        same = [p for p in _touching_parts(missing) if missing["part_hu"][p] == missing["part_hu"][2]]
        assert same, "a missing-boundary case needs a touching neighbour of exactly the organ's HU"
        assert (rim & (missing["parts"] == same[0])).sum() >= MIN_CONTACT * rim.sum()
        touching = _touching_parts(normal)
        assert touching, "normal cases have touching neighbours too, with a visible boundary"
        assert all(abs(normal["part_hu"][p] - normal["part_hu"][2]) >= MIN_CONTRAST_HU for p in touching)
        steps["missing"].append(_contact_step(missing, same[0]))
        steps["normal"] += [_contact_step(normal, p) for p in touching]
    # in the image (texture, bias, blur, noise on top): no step across the look-alike's contact, on average far
    # below the step across a visible boundary (>= 25 HU, i.e. >= 0.05 on the [0, 1] window before blur)
    assert np.mean(steps["missing"]) < 0.5 * np.mean(steps["normal"]), steps


def test_cases_are_deterministic_prefixes_with_the_documented_fraction():
    small = organ_cases(4, 16, 3, "train", 0.3)
    large = organ_cases(10, 16, 3, "train", 0.3)
    assert large["image"].shape == (10, 16, 16, 16, 1) and large["image"].dtype == np.float32
    assert large["label"].dtype == np.float32 and set(np.unique(large["label"])) == {0.0, 1.0}
    for key in ("image", "label", "missing"):
        np.testing.assert_array_equal(small[key], large[key][:4])
    again = organ_cases(10, 16, 3, "train", 0.3)  # from the cache
    np.testing.assert_array_equal(again["image"], large["image"])
    expected = [is_missing(i, 0.3) for i in range(10)]
    np.testing.assert_array_equal(large["missing"], np.asarray(expected, np.float32))
    assert abs(large["missing"].sum() - 3) <= 1
    test = organ_cases(4, 16, 3, "test", 0.3)
    assert not np.array_equal(test["image"], small["image"])
    assert 0.0 <= large["image"].min() and large["image"].max() <= 1.0
    assert organ_cases(3, 16, 3, "val", 0.0)["missing"].sum() == 0
    assert organ_cases(3, 16, 3, "val", 1.0)["missing"].sum() == 3


def test_spacing_and_window():
    assert spacing_mm(64) == 3.0 and spacing_mm(32) == FIELD_MM / 32
    np.testing.assert_allclose(hu_to_unit(np.array([-1000.0, -200.0, 50.0, 300.0, 2000.0])), [0, 0, 0.5, 1, 1])


def test_resample_linear_keeps_voxel_zero_and_is_exact_on_ramps():
    ramp = np.arange(9, dtype=np.float32)[:, None, None] * np.ones((1, 4, 5), np.float32)
    np.testing.assert_array_equal(resample_linear(ramp, 1.0), ramp)
    half = resample_linear(ramp, (0.5, 1.0, 1.0))
    assert half.shape == (17, 4, 5)
    np.testing.assert_allclose(half[:, 0, 0], np.arange(17) * 0.5, atol=1e-5)
    coarse = resample_linear(ramp, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(coarse[:, 1, 1], [0, 2, 4, 6, 8], atol=1e-5)


@pytest.mark.parametrize("call, words", [
    (lambda: organ_cases(2, 16, 0, "training", 0.3), "unknown split"),
    (lambda: organ_cases(2, 16, 0, "train", 1.5), "missing_fraction"),
    (lambda: organ_cases(0, 16, 0, "train", 0.3), "at least one"),
    (lambda: organ_case(np.random.default_rng(0), 4), "at least 8"),
    (lambda: real_liver_case(0.0), "positive"),
])
def test_bad_inputs_are_input_errors(call, words):
    with pytest.raises(InputError, match=words):
        call()


@pytest.mark.data
def test_real_liver_case_is_resampled_to_the_requested_spacing():
    case = real_liver_case(6.0)
    image, label = case["image"], case["label"]
    assert image.shape == label.shape and image.ndim == 3 and label.dtype == bool
    np.testing.assert_allclose(np.linalg.norm(case["affine"][:3, :3], axis=0), 6.0, rtol=1e-6)
    # the liver of the 2.5 x 0.7 x 0.7 mm scan holds ~827,000 voxels (~1.0 litre); at 6 mm about 1/216 mm^3 of that
    litres = label.sum() * 6.0**3 / 1e6
    assert 0.7 < litres < 1.4, litres
    assert 0.45 < np.median(image[label]) < 0.6  # liver ~ 73 HU on the -200..300 window
