"""``kfjax data simulate-metal``: one-line errors with exit code 2, and a complete output folder."""

import json

import nibabel as nib
import numpy as np
import pytest

from kfjax.cli import main
from kfjax.data.phantoms import ct_anatomy_2d, random_metal


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


def test_random_metal_in_body_is_seeded_and_inside():
    """The simulator's random implants: centre on a body pixel, same rng state -> same mask."""
    hu, _ = ct_anatomy_2d(np.random.default_rng(1), 64)
    body = hu[..., 0] > -500
    for seed in range(20):
        m = random_metal(np.random.default_rng(seed), 64, body=body)
        assert np.array_equal(m, random_metal(np.random.default_rng(seed), 64, body=body))
        assert m.dtype == bool and m.any()
        # the bounding-box centre of a disk or ellipse is its centre; rods: the midpoint of the pair
        rows, cols = np.nonzero(m)
        centre = (round((rows.min() + rows.max()) / 2), round((cols.min() + cols.max()) / 2))
        assert body[centre], f"seed {seed}: metal centre {centre} outside the body"
    # a body the 45 % disk of centres misses: the fallback is a body pixel
    corner = np.zeros((64, 64), bool)
    corner[:4, :4] = True
    m = random_metal(np.random.default_rng(0), 64, "disk", area=10.0, body=corner)
    assert (m & corner).any() and np.array_equal(m, random_metal(np.random.default_rng(0), 64, "disk", 10.0, corner))
    with pytest.raises(ValueError, match="no True pixel"):
        random_metal(np.random.default_rng(0), 64, body=np.zeros((64, 64), bool))
    with pytest.raises(ValueError, match="shape"):
        random_metal(np.random.default_rng(0), 64, body=body[:32])


def test_all_air_slice_needs_a_mask(tmp_path, capsys):
    air = tmp_path / "air.npz"
    np.savez(air, hu=np.full((32, 32), -1000.0))
    assert main(["data", "simulate-metal", "--input", str(air), "--out", str(tmp_path / "o")]) == 2
    assert "--mask" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_simulate_metal_writes_an_inspectable_set(tmp_path, capsys):
    src = tmp_path / "slice.npz"
    np.savez(src, hu=ct_anatomy_2d(np.random.default_rng(0), 200)[0][..., 0])
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


def test_nifti_slices_are_read_through_the_affine(tmp_path):
    """The same anatomy stored in two voxel orders (RAS and a flipped, permuted one) gives the same slices."""
    from kfjax.data.simulate_metal import _read_array
    from kfjax.io import Volume
    from kfjax.io.nifti import save_nifti

    hu = np.random.default_rng(0).normal(0, 100, (6, 5, 4)).astype(np.float32)  # (i, j, k) along R, A, S
    save_nifti(Volume(hu, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "ras.nii.gz")
    other = np.transpose(hu[::-1], (2, 0, 1))  # (k, i', j) with i' running to the left
    affine = np.array([[0.0, -1.0, 0.0, 5.0], [0.0, 0.0, 1.0, 0.0], [2.0, 0.0, 0.0, 0.0], [0, 0, 0, 1.0]])
    save_nifti(Volume(other, affine), tmp_path / "other.nii.gz")
    a = _read_array(tmp_path / "ras.nii.gz", "input", [0, 3])
    b = _read_array(tmp_path / "other.nii.gz", "input", [0, 3])
    assert a.shape == (2, 5, 6) and np.array_equal(a, b)
    np.testing.assert_array_equal(a[1], hu[::-1, ::-1, 3].T)  # rows anterior->posterior, columns right->left
