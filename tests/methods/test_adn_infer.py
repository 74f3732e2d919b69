"""`kfjax infer adn` on a user's NIfTI volume: image domain only; shape, affine and untouched parts kept."""

import nibabel as nib
import numpy as np
import pytest

from kfjax.cli import main
from kfjax.data.phantoms import ct_anatomy_2d

TINY = [
    "data.source=phantom",
    "data.geometry=adn_quarter",
    "data.n_phantoms=8",
    "data.masks_per_slice=2",
    "data.batch_size=4",
    "train.steps=2",
    "train.checkpoint_every=2",
    "model.base=8",
    "model.num_residual=1",
    "model.d_features=8",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer_adn")
    mp = pytest.MonkeyPatch()
    mp.setenv("KFJAX_DATA", str(root / "data"))
    workdir = root / "run"
    assert main(["train", "adn", "--workdir", str(workdir), "--no-progress", "--set", *TINY]) == 0
    yield root, workdir
    mp.undo()


def _volume(path, metal: bool):
    """Three 72 x 72 axial slices of 5 mm pixels (the model's grid is 64 x 5.6 mm: resampled)."""
    slices = [ct_anatomy_2d(np.random.default_rng(i), 72)[0][..., 0] for i in range(3)]
    array = np.stack(slices, axis=-1).astype(np.float32)  # (x, y, z)
    if metal:
        array[34:38, 30:34, 1] = 3000.0
    affine = np.diag([5.0, 5.0, 5.0, 1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return array, affine


def test_infer_adn_corrects_only_metal_slices(run):
    root, workdir = run
    array, affine = _volume(root / "ct.nii.gz", metal=True)
    out = root / "corrected.nii.gz"
    args = ["infer", "adn", "--checkpoint", str(workdir), "--input", str(root / "ct.nii.gz"), "--out", str(out),
            "--no-progress"]
    assert main(args) == 0
    result = nib.load(str(out))
    corrected = np.asarray(result.dataobj, np.float32)
    assert corrected.shape == array.shape and np.allclose(result.affine, affine)
    np.testing.assert_array_equal(corrected[..., 0], array[..., 0])  # slices without metal: untouched
    np.testing.assert_array_equal(corrected[..., 2], array[..., 2])
    metal = array[..., 1] >= 2500
    np.testing.assert_allclose(corrected[..., 1][metal], array[..., 1][metal], atol=1e-3)  # metal voxels kept
    assert np.all(np.isfinite(corrected))
    assert np.abs(corrected[..., 1][~metal] - array[..., 1][~metal]).max() > 1.0  # the network changed the slice


def test_infer_adn_without_metal_writes_nothing(run, capsys):
    root, workdir = run
    _volume(root / "clean.nii.gz", metal=False)
    out = root / "nothing.nii.gz"
    args = ["infer", "adn", "--workdir", str(workdir), "--input", str(root / "clean.nii.gz"), "--out", str(out),
            "--no-progress"]
    assert main(args) == 2 and not out.exists()
    assert "no metal found" in capsys.readouterr().err


def test_infer_adn_rejects_a_missing_input(run, capsys):
    root, workdir = run
    out = root / "never.nii.gz"
    args = ["infer", "adn", "--workdir", str(workdir), "--input", str(root / "missing.nii.gz"), "--out", str(out),
            "--no-progress"]
    assert main(args) == 2 and not out.exists()
    assert "missing.nii.gz" in capsys.readouterr().err
