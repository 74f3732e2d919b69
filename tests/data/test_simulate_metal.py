"""``kfjax data simulate-metal``: one-line errors with exit code 2, and a complete output folder."""

import json

import nibabel as nib
import numpy as np
import pytest

from kfjax.cli import main
from kfjax.data.metal_phantoms import anatomy_slice, metal_mask, metal_masks


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["data", "simulate-metal", "--input", str(tmp_path / "none.npz"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, hu=np.zeros((2, 3, 4, 5)))
    assert main(["data", "simulate-metal", "--input", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "shape" in capsys.readouterr().err
    two = tmp_path / "two.npz"
    np.savez(two, a=np.zeros((8, 8)), b=np.zeros((8, 8)))
    assert main(["data", "simulate-metal", "--input", str(two), "--out", str(tmp_path / "o")]) == 2
    assert "'hu'" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["data", "simulate-metal", "--input", str(bad), "--out", str(tmp_path / "full")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_phantoms_are_seeded():
    a, b = anatomy_slice(np.random.default_rng(1), 64), anatomy_slice(np.random.default_rng(1), 64)
    assert np.array_equal(a, b) and a.min() == -1000 and a.max() >= 700
    m = metal_mask(np.random.default_rng(2), 64, kind="rods")
    assert set(np.unique(m)) <= {0.0, 1.0} and m.sum() > 0
    ms = metal_masks(0, 5, 64)
    assert ms.shape == (5, 64, 64, 1) and (np.diff(ms.sum(axis=(1, 2, 3))) >= 0).all()


@pytest.mark.slow
def test_simulate_metal_writes_an_inspectable_set(tmp_path, capsys):
    src = tmp_path / "slice.npz"
    np.savez(src, hu=anatomy_slice(np.random.default_rng(0), 200))
    out = tmp_path / "sim"
    assert main(["data", "simulate-metal", "--input", str(src), "--out", str(out), "--material", "Fe"]) == 0
    assert "RMSE within 10 px of metal" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"simulation.npz", "simulation.json", "gt_hu.nii.gz", "ma_hu.nii.gz", "li_hu.nii.gz",
            "ma_sinogram.nii.gz", "metal_trace.nii.gz", "metal_mask.nii.gz"} <= names
    assert nib.load(out / "ma_hu.nii.gz").shape == (256, 256, 1)
    assert nib.load(out / "ma_sinogram.nii.gz").shape == (320, 197, 1)
    summary = json.loads((out / "simulation.json").read_text())
    e = summary["errors"][0]
    assert e["metal_pixels"] > 0 and e["rmse_near_metal_ma_hu"] > e["rmse_near_metal_li_hu"]
    with np.load(out / "simulation.npz") as f:
        assert f["gt_image"].shape == (1, 256, 256, 1)
