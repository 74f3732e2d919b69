"""Procedural phantoms: shapes, value ranges, determinism, the CNN-MAR-style metal mask protocol."""

import numpy as np
import pytest

from kfjax.data import mr, phantoms


def _rng(i=0):
    return np.random.default_rng(i)


@pytest.mark.parametrize("region", ["chest", "abdomen"])
def test_ct_anatomy_levels(region):
    hu, labels = phantoms.ct_anatomy_2d(_rng(3), 128, region)
    assert hu.shape == labels.shape == (128, 128, 1) and hu.dtype == np.float32 and labels.dtype == np.uint8
    assert hu.min() >= -1000.0 and 700.0 < hu.max() < 1700.0
    names = phantoms.ANATOMY_LABELS
    present = {names[i] for i in np.unique(labels)}
    assert {"air", "fat", "soft", "bone"} <= present
    assert ("lung" in present) == (region == "chest") and ("liver" in present) == (region == "abdomen")
    lab = labels[..., 0]
    median = lambda name: float(np.median(hu[..., 0][lab == names.index(name)]))
    assert median("air") < -950 and -130 < median("fat") < -70 and 20 < median("soft") < 70
    if region == "chest":
        assert -950 < median("lung") < -750
    else:
        assert 45 < median("liver") < 75
    assert hu[0, 0, 0] == -1000.0 and lab[0, 0] == 0, "corners are air"


def test_ct_anatomy_deterministic():
    a, la = phantoms.ct_anatomy_2d(_rng(7), 96)
    b, lb = phantoms.ct_anatomy_2d(_rng(7), 96)
    c, _ = phantoms.ct_anatomy_2d(_rng(8), 96)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="chest"):
        phantoms.ct_anatomy_2d(_rng(), 64, "head")


def test_metal_test_masks_protocol():
    masks = phantoms.metal_masks(416, "test")
    assert masks.shape == (10, 416, 416) and masks.dtype == bool
    areas = masks.sum(axis=(1, 2))
    assert np.all(np.diff(areas) < 0), "sorted largest first"
    assert 1500 < areas[0] <= 2100 and 8 <= areas[-1] <= 20
    np.testing.assert_array_equal(phantoms.METAL_TEST_GROUPS, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    # every group is smaller than the one before
    by_group = [areas[phantoms.METAL_TEST_GROUPS == g] for g in range(5)]
    assert all(by_group[g].min() > by_group[g + 1].max() for g in range(4))
    np.testing.assert_array_equal(masks, phantoms.metal_masks(416, "test")), "fixed on every call"


def test_metal_masks_scale_with_size():
    small = phantoms.metal_masks(104, "test").sum(axis=(1, 2))
    big = phantoms.metal_masks(416, "test").sum(axis=(1, 2))
    ratio = small[:6] / big[:6]
    assert np.all(np.abs(ratio - (104 / 416) ** 2) < 0.03)
    assert small.min() >= 1, "at least one pixel at any size"
    assert phantoms.metal_masks(32, "test").sum(axis=(1, 2)).min() >= 1


@pytest.mark.slow
def test_metal_train_masks():
    train = phantoms.metal_masks(256, "train")
    assert train.shape == (90, 256, 256)
    areas = train.sum(axis=(1, 2)) * (416 / 256) ** 2
    assert areas.min() >= 1 and areas.max() < 2600 and len(np.unique(areas)) > 60
    np.testing.assert_array_equal(train[:5], phantoms.metal_masks(256, "train")[:5])
    with pytest.raises(ValueError, match="train"):
        phantoms.metal_masks(64, "val")


@pytest.mark.parametrize("kind", phantoms.METAL_KINDS)
def test_random_metal_kinds(kind):
    m = phantoms.random_metal(_rng(1), 416, kind, area=500.0)
    assert m.shape == (416, 416) and 400 < m.sum() < 600
    rows, cols = np.nonzero(m)
    centre = np.array([rows.mean(), cols.mean()]) / 415 * 2 - 1
    assert np.hypot(*centre) < 0.6, "inside the body region"
    if kind == "rods":
        from scipy import ndimage

        assert ndimage.label(m)[1] == 2


def test_organ_phantom_3d():
    image, label = phantoms.organ_phantom_3d(_rng(), 24)
    assert image.shape == label.shape == (24, 24, 24, 1)
    assert 0 < label.mean() < 0.5 and set(np.unique(label)) == {0.0, 1.0}


def test_brain_slice_and_mr():
    labels = phantoms.brain_slice(_rng(2), 96)
    assert labels.shape == (96, 96, 1) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == set(range(len(mr.TISSUES)))
    assert labels[0, 0, 0] == 0 and labels[48, 48, 0] in (1, 2, 3)
    images, lab2 = phantoms.brain_mr(_rng(2), 96, field_t=3.0, contrasts=("t1w", "t2w"), noise=0.0, bias=0.0)
    np.testing.assert_array_equal(lab2, labels)
    assert images.shape == (96, 96, 2) and images.dtype == np.float32
    t1, t2 = images[..., 0], images[..., 1]
    wm, csf = labels[..., 0] == 3, labels[..., 0] == 1
    assert np.median(t1[wm]) > np.median(t1[csf]), "CSF dark on T1w"
    assert np.median(t2[csf]) > np.median(t2[wm]), "CSF bright on T2w"
    again, _ = phantoms.brain_mr(_rng(2), 96)
    assert np.array_equal(again, phantoms.brain_mr(_rng(2), 96)[0])


def test_spin_echo_signals():
    for field in (1.5, 3.0):
        s = {t: {c: mr.tissue_signal(t, field, c) for c in mr.CONTRASTS} for t in ("csf", "gm", "wm")}
        assert s["csf"]["t2w"] > s["gm"]["t2w"] > s["wm"]["t2w"]
        assert s["csf"]["t1w"] < min(s["gm"]["t1w"], s["wm"]["t1w"])
        assert s["gm"]["pd"] > s["wm"]["pd"]  # CSF on PDw depends on TR versus its long T1
    assert mr.tissue_signal("wm", 3.0, "t1w") > mr.tissue_signal("gm", 3.0, "t1w")
    tr, te = mr.SEQUENCES["t2w"]
    t1, t2, pd = mr.RELAXATION[1.5]["gm"]
    assert mr.tissue_signal("gm", 1.5, "t2w") == pytest.approx(pd * (1 - np.exp(-tr / t1)) * np.exp(-te / t2))
    from kfjax.errors import InputError

    with pytest.raises(InputError, match="1.5"):
        mr.tissue_signal("gm", 7.0, "t1w")


def test_bias_and_rician():
    f = mr.bias_field(_rng(), (16, 20, 12), 0.2)
    assert f.shape == (16, 20, 12) and f.min() >= np.exp(-0.2) - 1e-6 and f.max() <= np.exp(0.2) + 1e-6
    assert np.abs(np.diff(np.log(f), axis=0)).max() < 0.1, "smooth"
    noisy = mr.rician(_rng(), np.zeros((200, 200), np.float32), 0.1)
    # Rician noise floor on zero signal: Rayleigh mean sigma * sqrt(pi / 2)
    assert noisy.min() >= 0 and abs(noisy.mean() - 0.1 * np.sqrt(np.pi / 2)) < 0.005
