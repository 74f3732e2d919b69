"""`kfjax infer dudonet` on a user's NIfTI volume: shape, affine and untouched parts kept; clear errors."""

import nibabel as nib
import numpy as np
import pytest

from kfjax.cli import main
from kfjax.data.phantoms import ct_anatomy_2d

TINY = [
    "data.source=phantom",
    "data.geometry=adn_quarter",
    "data.n_phantoms=6",
    "data.masks_per_slice=1",
    "data.batch_size=4",
    "train.steps=2",
    "train.checkpoint_every=2",
    "model.se_channels=[8,16]",
    "model.ie_channels=[8,16]",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    mp = pytest.MonkeyPatch()
    mp.setenv("KFJAX_DATA", str(root / "data"))
    workdir = root / "run"
    assert main(["train", "dudonet", "--workdir", str(workdir), "--no-progress", "--set", *TINY]) == 0
    yield root, workdir
    mp.undo()


def _volume(path, metal: bool):
    """Three 80 x 72 axial slices of 4.5 mm pixels (larger FOV than the 64 x 5.6 mm grid... of similar size)."""
    slices = [ct_anatomy_2d(np.random.default_rng(i), 80)[0][:, 4:76, 0] for i in range(3)]
    array = np.stack(slices, axis=-1).astype(np.float32)  # (x, y, z)
    if metal:
        array[38:42, 30:34, 1] = 3000.0
    affine = np.diag([4.5, 4.5, 5.0, 1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return array, affine


def test_infer_corrects_only_metal_slices(run):
    root, workdir = run
    array, affine = _volume(root / "ct.nii.gz", metal=True)
    out = root / "corrected.nii.gz"
    code = main(
        [
            "infer",
            "dudonet",
            "--checkpoint",
            str(workdir),
            "--input",
            str(root / "ct.nii.gz"),
            "--out",
            str(out),
            "--no-progress",
            "--metal-threshold",
            "2500",
        ]
    )
    assert code == 0
    result = nib.load(str(out))
    corrected = np.asarray(result.dataobj, np.float32)
    assert corrected.shape == array.shape and np.allclose(result.affine, affine)
    np.testing.assert_array_equal(corrected[..., 0], array[..., 0])  # no metal: untouched
    np.testing.assert_array_equal(corrected[..., 2], array[..., 2])
    metal = array[..., 1] >= 2500
    np.testing.assert_allclose(corrected[..., 1][metal], array[..., 1][metal], atol=1e-3)  # metal kept
    assert np.all(np.isfinite(corrected))


def test_infer_without_metal_writes_nothing(run, capsys):
    root, workdir = run
    _volume(root / "clean.nii.gz", metal=False)
    out = root / "nothing.nii.gz"
    code = main(
        [
            "infer",
            "dudonet",
            "--workdir",
            str(workdir),
            "--input",
            str(root / "clean.nii.gz"),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 2 and not out.exists()
    assert "no metal found" in capsys.readouterr().err
