"""`kfjax drr`: renders a small CT to PNG / .npy and gives one-line errors (exit 2) for bad input."""

import nibabel as nib
import numpy as np
import pytest

from kfjax.cli import main


@pytest.fixture()
def ct(tmp_path):
    hu = np.full((24, 20, 16), -1000.0, np.float32)
    hu[6:18, 5:15, 4:12] = 200.0
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    return path


def _run(*argv):
    return main(["drr", *map(str, argv)])


def test_renders_png_and_npy(ct, tmp_path, capsys):
    out = tmp_path / "drr.npy"
    assert _run(ct, "--size", 32, 32, "--spacing", 4, "--out", out) == 0
    img = np.load(out)
    assert img.shape == (32, 32) and img.max() > 0.1 and img.min() >= 0
    # the box is 10 voxels * 2 mm deep along the AP axis at 0.0206 * 1.2 /mm: about 0.49 at the centre
    assert img.max() == pytest.approx(20 * 0.0206 * 1.2, rel=0.05)
    assert _run(ct, "--size", 16, 24, "--pose", 90, 0, 0, 0, 850, 0, "--intensity", "--out", tmp_path / "a.png") == 0
    assert (tmp_path / "a.png").stat().st_size > 0
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (("--pose", 0, 0, "x", 0, 850, 0), "--pose needs 6 numbers"),
        (("--pose", 0, 0, 0, 0, -850, 0), "behind the source"),
        (("--pose", 0, 0, 0, 0, 5, 0), "inside the volume"),
        (("--pose", 0, 0, 0, 2000, 850, 0), "does not project onto the detector"),
        (("--convention", "ZXZ"), "--convention"),
        (("--out", "drr.jpg"), "must end in .png or .npy"),
    ],
)
def test_bad_input_is_one_line(ct, tmp_path, capsys, args, message):
    argv = [ct, *args] if "--out" in args else [ct, *args, "--out", tmp_path / "x.png"]
    assert _run(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_non_3d_input_and_non_rigid_extrinsic(tmp_path, ct, capsys):
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2, 3), np.float32), np.eye(4)), flat)
    assert _run(flat, "--out", tmp_path / "x.png") == 2
    assert "3" in capsys.readouterr().err
    ext = tmp_path / "e.txt"
    np.savetxt(ext, np.diag([1.0, 2.0, 1.0, 1.0]))
    assert _run(ct, "--extrinsic", ext, "--out", tmp_path / "x.png") == 2
    assert "orthonormal" in capsys.readouterr().err
