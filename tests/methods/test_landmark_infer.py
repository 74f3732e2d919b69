"""Landmark inference on a user's 2-D image: the grid map to the training size and back, pixel and world
coordinates through the affine, the JSON and overlay files, and `kfjax infer landmark_i2i` end to end."""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from kfjax.cli import main
from kfjax.errors import InputError
from kfjax.io import Volume
from kfjax.methods.common.landmarks import (GridMap, LandmarkResult, display_image, infer_landmarks, normalise,
                                            write_landmarks)


# ------------------------------------------------------------------------------------------ grid map
@pytest.mark.parametrize("shape", [(50, 70), (70, 50), (32, 32), (20, 24)])
def test_grid_map_round_trip_and_corners(shape):
    grid = GridMap(shape, 32)
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.5, np.asarray(shape) - 0.5, (10, 2))
    # two affine maps of float64 numbers < 100: roundoff ~1e-13
    np.testing.assert_allclose(grid.to_input(grid.to_grid(points)), points, atol=1e-9)
    # the outer corners of the padded square are the outer corners of the training grid
    corner = grid.to_grid(-0.5 - grid.pad)
    np.testing.assert_allclose(corner, [-0.5, -0.5], atol=1e-12)


@pytest.mark.parametrize("shape", [(50, 70), (70, 50), (100, 30), (40, 40)])
def test_a_blob_keeps_its_place_through_the_resampling(shape):
    """A Gaussian blob (σ = 3 input px, >= 3σ from the border) resampled to 32² (a symmetric Gaussian
    anti-alias filter, then linear interpolation) has its centroid where `to_grid` maps its centre: the
    symmetric kernels keep a blob's centroid, sampling moves it by well under 0.05 training px, and a
    half-pixel convention error would move it by 0.5 (1 - 32 / side) >= 0.27 training px here."""
    grid = GridMap(shape, 32)
    centre = np.asarray(shape) * np.array([0.4, 0.6])
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    blob = np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * 3.0**2)).astype(np.float32)
    small = grid.to_training(blob)
    r, c = np.mgrid[:32, :32]
    centroid = np.array([np.sum(small * r), np.sum(small * c)]) / small.sum()
    np.testing.assert_allclose(centroid, grid.to_grid(centre), atol=0.05)


def test_display_image_and_errors():
    v = Volume(np.arange(12, dtype=np.float32).reshape(4, 3, 1), np.eye(4))  # (W, H, 1): one slice
    np.testing.assert_array_equal(display_image(v), np.arange(12).reshape(4, 3).T)
    with pytest.raises(InputError, match="one 2-D image"):
        display_image(Volume(np.zeros((4, 3, 2), np.float32)))
    with pytest.raises(InputError, match="NaN"):
        display_image(Volume(np.full((4, 3), np.nan, np.float32)))
    ramp = np.linspace(-5, 5, 1000).reshape(20, 50)
    scaled = normalise(ramp)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    np.testing.assert_allclose(normalise(ramp, invert=True), 1.0 - scaled, atol=6e-8)  # one float32 rounding at 1
    with pytest.raises(InputError, match="percentiles"):
        normalise(ramp, (60.0, 40.0))


def test_infer_landmarks_maps_pixels_and_world_through_the_affine():
    """A predictor that returns the training-grid image of known input pixels gives those pixels back, and
    world = affine @ (col, row, 0, 1)."""
    affine = np.array([[0.5, 0, 0, -20.0], [0, -0.7, 0, 30.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
    volume = Volume(np.random.default_rng(0).normal(size=(60, 40)).astype(np.float32), affine)  # W 60, H 40
    truth = np.array([[3.0, 7.5], [35.2, 58.9]])
    grid = GridMap((40, 60), 32)
    result = infer_landmarks(volume, lambda x: grid.to_grid(truth)[None], 32, ("a", "b"), extra={"view": 3})
    np.testing.assert_allclose(result.pixel, truth, atol=1e-9)
    world = (affine @ np.c_[truth[:, 1], truth[:, 0], np.zeros(2), np.ones(2)].T).T[:, :3]
    np.testing.assert_allclose(result.world, world, atol=1e-9)
    assert result.image.shape == (40, 60) and result.extra == {"view": 3}


def test_write_landmarks_json_and_overlay(tmp_path):
    result = LandmarkResult(("a", "b"), np.array([[1.0, 2.0], [3.0, 4.0]]), np.zeros((2, 3)),
                            np.random.default_rng(0).random((20, 30)), {"view": "liver"})
    out = tmp_path / "lm.json"
    paths = write_landmarks(result, out)
    record = json.loads(out.read_text())
    assert record["names"] == ["a", "b"] and record["pixel_row_col"] == [[1.0, 2.0], [3.0, 4.0]]
    assert record["voxel_ijk"] == [[2.0, 1.0, 0.0], [4.0, 3.0, 0.0]] and record["image_shape"] == [20, 30]
    assert record["view"] == "liver" and paths[1] == tmp_path / "lm.png"
    assert Image.open(paths[1]).format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm.json", "lm.png"]  # no temporary files left
    with pytest.raises(InputError, match="json"):
        write_landmarks(result, tmp_path / "lm.nii.gz")


# ------------------------------------------------------------------------------------------ the CLI
RUN = ["data.source=procedural", "data.size=32", "data.n_train=8", "data.n_val=4", "data.batch_size=4",
       "model.channels=8,16", "train.steps=2", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer_landmarks")
    workdir = root / "run"
    assert main(["train", "landmark_i2i", "--workdir", str(workdir), "--no-progress", "--set", *RUN]) == 0
    image = (np.random.default_rng(0).random((45, 60)) * 65535).astype(np.uint16)
    Image.fromarray(image).save(root / "xray.png")
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    affine[:3, 3] = (-10.0, 4.0, 7.0)
    nib.save(nib.Nifti1Image(image.T[..., None].astype(np.float32), affine), str(root / "slice.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), affine), str(root / "volume.nii.gz"))
    return root, workdir, affine


def _infer(run, source, out):
    root, workdir, _ = run
    return main(["infer", "landmark_i2i", "--workdir", str(workdir), "--input", str(root / source),
                 "--out", str(root / out), "--no-progress"])


def test_cli_png_and_nifti_give_the_same_pixels_and_their_own_world(run):
    root, _, affine = run
    assert _infer(run, "xray.png", "png.json") == 0 and _infer(run, "slice.nii.gz", "nii.json") == 0
    png, nii = (json.loads((root / f"{n}.json").read_text()) for n in ("png", "nii"))
    assert png["names"] == ["disk", "ring", "plus"] and png["image_shape"] == [45, 60]
    assert (root / "png.png").is_file() and (root / "nii.png").is_file()
    np.testing.assert_allclose(png["pixel_row_col"], nii["pixel_row_col"], atol=1e-3)  # same image, same model
    pixel = np.asarray(png["pixel_row_col"])
    np.testing.assert_allclose(png["world_mm"], np.c_[pixel[:, 1], pixel[:, 0], np.zeros(3)], atol=2e-3)
    voxel = np.c_[pixel[:, 1], pixel[:, 0], np.zeros(3), np.ones(3)]
    np.testing.assert_allclose(nii["world_mm"], (affine @ voxel.T).T[:, :3], atol=5e-3)  # JSON rounds to 1e-3


def test_cli_refuses_a_3d_volume_and_a_nifti_output(run, capsys):
    root = run[0]
    assert _infer(run, "volume.nii.gz", "vol.json") == 2
    err = capsys.readouterr().err
    assert "one 2-D image" in err and len(err.strip().splitlines()) == 1 and not (root / "vol.json").exists()
    assert _infer(run, "xray.png", "out.nii.gz") == 2
    assert "must end in .json" in capsys.readouterr().err
