"""Paired MR synthesis data: slab splits, atlas coordinates, intensity scale, location-dependent contrast."""

import numpy as np
import pytest

from kfjax.data import mr, synthesis
from kfjax.data.synthesis import SynthesisDataConfig, atlas_coords, intensity_scale, slab_splits, synthesis_grid
from kfjax.errors import ConfigError, InputError


def test_slab_splits_hold_out_whole_slabs_with_a_gap():
    area = np.r_[np.zeros(5), np.linspace(10, 100, 30), np.linspace(100, 10, 30), np.zeros(5)]
    split = slab_splits(area)
    assert set(split[area < 0.25 * area.max()]) == {"none"}
    used = np.flatnonzero(split != "none")
    for name in ("test", "val"):  # held-out slices come in contiguous runs (whole slabs)
        rows = np.flatnonzero(split == name)
        runs = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
        assert len(runs) == {"test": len(synthesis.TEST_SLABS), "val": len(synthesis.VAL_SLABS)}[name]
    # no training slice touches a held-out one: a gap slice (or another held-out slab) always sits between
    for a, b in zip(used[:-1], used[1:]):
        pair = {split[a], split[b]}
        assert not ("train" in pair and pair & {"test", "val"}), (a, b, pair)
    assert (split == "gap").sum() > 0 and (split == "train").sum() > (split == "test").sum()


def test_atlas_coords_follow_the_affine():
    affine = np.array([[0, 0, -2, 70], [0, -2, 0, 80], [2, 0, 0, -60], [0, 0, 0, 1]], np.float64)
    coords = atlas_coords(affine, (3, 4, 5))
    assert coords.shape == (3, 4, 5, 3) and coords.dtype == np.float32
    for index in [(0, 0, 0), (2, 3, 4), (1, 2, 3)]:
        world = affine @ np.r_[index, 1.0]
        np.testing.assert_allclose(coords[index], world[:3] / synthesis.ATLAS_SCALE_MM, rtol=1e-6)


def test_intensity_scale_is_a_foreground_percentile_and_refuses_empty_images():
    image = np.zeros((10, 10, 10), np.float32)
    image[2:8, 2:8, 2:8] = np.linspace(1.0, 2.0, 216).reshape(6, 6, 6)
    assert intensity_scale(image) == pytest.approx(np.percentile(image[image > 0], synthesis.SCALE_PERCENTILE))
    for bad in (np.zeros((4, 4, 4)), -np.ones((4, 4, 4)), np.full((4, 4, 4), np.nan)):
        with pytest.raises(InputError, match="no positive intensity"):
            intensity_scale(bad)


def test_grid_and_bad_settings():
    assert synthesis_grid(2) == (96, 80) and synthesis_grid(4) == (48, 40)
    with pytest.raises(ConfigError, match="downsample=3"):
        synthesis_grid(3)
    with pytest.raises(ConfigError, match="unknown data.source 't3w'"):
        synthesis.check_contrasts("t3w", "t2w")
    with pytest.raises(ConfigError, match="both 't1w'"):
        synthesis.check_contrasts("t1w", "t1w")
    with pytest.raises(ConfigError, match="unknown split"):
        synthesis.synthesis_slices("training", SynthesisDataConfig())


def test_location_field_makes_the_contrast_mapping_position_dependent():
    """One pure tissue everywhere, no noise, no bias: without the location field every contrast is a
    constant (a global mapping T1 -> T2 exists); with it each contrast varies within its
    [exp(-location), exp(location)] band, and the T2/T1 ratio varies over space (no global mapping)."""
    frac = {"wm": np.ones((12, 12, 12), np.float32)}
    flat = mr.simulate(frac, 3.0, seed=1, noise=0.0, bias=0.0, contrasts=("t1w", "t2w"))
    assert np.ptp(flat["t1w"]) == 0 and np.ptp(flat["t2w"]) == 0
    loc = 0.15
    shaped = mr.simulate(frac, 3.0, seed=1, noise=0.0, bias=0.0, contrasts=("t1w", "t2w"), location=loc)
    for c in ("t1w", "t2w"):
        rel = shaped[c] / flat[c]
        assert rel.min() >= np.exp(-loc) * (1 - 1e-6) and rel.max() <= np.exp(loc) * (1 + 1e-6)
    ratio = shaped["t2w"] / shaped["t1w"]
    assert np.ptp(ratio) / ratio.mean() > 0.05  # the T1 -> T2 mapping differs between places


@pytest.mark.data
def test_synthesis_volume_and_slices():
    cfg = SynthesisDataConfig()
    v = synthesis.synthesis_volume(cfg)
    assert v["t1w"].shape == v["mask"].shape == v["coords"].shape[:3] and v["t1w"].shape[1:] == synthesis_grid(2)
    assert v["meta"]["location"] == cfg.location and "simulated" in v["meta"]["simulated"]
    for c in mr.CONTRASTS:
        assert 0.0 <= v[c].min() and v[c].max() == 1.0 and v["scale"][c] > 0
    # the grid's affine is the 1 mm one at 2 mm steps: the coordinates of the brain span about +-0.8
    assert np.all(np.abs(v["coords"][v["mask"]]) < 1.2)
    train = synthesis.synthesis_slices("train", cfg, v)
    test = synthesis.synthesis_slices("test", cfg, v)
    assert not set(train.arrays["slice_index"]) & set(test.arrays["slice_index"])
    batch = test[np.arange(2)]
    assert batch["source"].shape == (2, 96, 80, 1) and batch["coords"].shape == (2, 96, 80, 3)
    assert batch["source"].min() >= -1.0 and batch["target"].max() <= 1.0 and set(np.unique(batch["mask"])) <= {0, 1}


@pytest.mark.data
def test_unpaired_mr_recipe_shows_no_pair():
    from kfjax.data.unpaired import UnpairedDataConfig, unpaired_dataset

    cfg = UnpairedDataConfig(recipe="mr", downsample=4, flip=False)
    train = unpaired_dataset("mr", "train", cfg, seed=0)
    assert not set(train.a_id) & set(train.b_id), "A and B come from different slices"
    test = unpaired_dataset("mr", "test", cfg, seed=0)[np.arange(3)]
    assert test["a"].shape == (3, 48, 40, 1) and test["mask"].shape == (3, 48, 40, 1)
