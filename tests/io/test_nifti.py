"""Tests of kfjax.io.nifti: round trips, atomic saves and one-line errors for bad files."""

import os

import nibabel as nib
import numpy as np
import pytest

from kfjax.errors import InputError
from kfjax.io import Volume, load_nifti, load_volume, save_nifti, save_volume
from kfjax.io.nifti import check_finite


def _rotation(axis, degrees):
    """3x3 rotation matrix about unit ``axis`` by ``degrees`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    a = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _oblique_affine():
    """Rotated (not axis-aligned), shear-free affine with anisotropic voxels (0.8, 0.9, 2.5) mm."""
    affine = np.eye(4)
    affine[:3, :3] = _rotation([0.3, -0.5, 0.8], 23.0) @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [-91.25, 12.5, 40.125]
    return affine


def _write_nifti(path, array, affine=None, sform_code=4, qform_code=1):
    """Write ``array`` with nibabel directly and return the path."""
    img = nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine)
    img.set_sform(img.affine, code=sform_code)
    img.set_qform(img.affine, code=qform_code)
    nib.save(img, str(path))
    return path


def _assert_one_line_naming(exc_info, name):
    msg = str(exc_info.value)
    assert "\n" not in msg
    assert name in msg


@pytest.fixture
def random_volume():
    rng = np.random.default_rng(0)
    return rng.normal(size=(7, 9, 5)).astype(np.float32)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_round_trip_oblique_affine(tmp_path, random_volume, suffix):
    affine = _oblique_affine()
    src = _write_nifti(tmp_path / f"src{suffix}", random_volume, affine, sform_code=4, qform_code=1)
    vol = load_nifti(src, expect_ndim=3)
    assert vol.array.dtype == np.float32 and vol.shape == (7, 9, 5) and vol.ndim == 3
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    np.testing.assert_allclose(vol.spacing, (0.8, 0.9, 2.5), atol=1e-6)

    out = save_nifti(vol, tmp_path / f"out{suffix}")
    back = load_nifti(out)
    np.testing.assert_array_equal(back.array, random_volume)
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    assert int(back.header["sform_code"]) == 4
    assert int(back.header["qform_code"]) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_save_without_header_uses_scanner_code(tmp_path, random_volume):
    affine = _oblique_affine()
    save_volume(Volume(random_volume, affine), tmp_path / "new.nii.gz")
    back = load_volume(tmp_path / "new.nii.gz", expect_ndim=3)
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    assert int(back.header["sform_code"]) == 1
    np.testing.assert_array_equal(back.array, random_volume)


def test_save_bool_mask_and_overwrite(tmp_path):
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[1:3, 1:3, 1:3] = True
    path = tmp_path / "mask.nii"
    save_nifti(Volume(mask), path)
    save_nifti(Volume(mask), path)  # replacing an existing file works
    back = load_nifti(path, dtype=np.uint8)
    np.testing.assert_array_equal(back.array, mask.astype(np.uint8))


def test_scaling_applied_and_trailing_singleton_squeezed(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4, 1)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(2.0, -10.0)
    nib.save(img, str(tmp_path / "s.nii"))
    vol = load_nifti(tmp_path / "s.nii", expect_ndim=3)
    assert vol.shape == (2, 3, 4)
    np.testing.assert_allclose(vol.array, data[..., 0] * 2.0 - 10.0)


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as exc:
        load_nifti(tmp_path / "nothere.nii.gz")
    _assert_one_line_naming(exc, "nothere.nii.gz")
    assert "no such file" in str(exc.value)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(np.random.default_rng(1).bytes(2000))
    with pytest.raises(InputError) as exc:
        load_nifti(path)
    _assert_one_line_naming(exc, "x.nii.gz")
    assert "gzip" in str(exc.value)


def test_gzip_of_garbage(tmp_path):
    import gzip

    path = tmp_path / "g.nii.gz"
    path.write_bytes(gzip.compress(b"not an image " * 40))
    with pytest.raises(InputError) as exc:
        load_nifti(path)
    _assert_one_line_naming(exc, "g.nii.gz")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_file(tmp_path, random_volume, suffix):
    full = _write_nifti(tmp_path / f"full{suffix}", random_volume)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as exc:
        load_nifti(cut)
    _assert_one_line_naming(exc, f"cut{suffix}")
    assert "truncated" in str(exc.value)


def test_text_file_renamed_nii(tmp_path):
    path = tmp_path / "notes.nii"
    path.write_text("patient list\n" * 50)
    with pytest.raises(InputError) as exc:
        load_nifti(path)
    _assert_one_line_naming(exc, "notes.nii")
    assert "not a NIfTI" in str(exc.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.nii"
    path.write_bytes(b"")
    with pytest.raises(InputError) as exc:
        load_nifti(path)
    _assert_one_line_naming(exc, "empty.nii")


def test_4d_where_3d_expected(tmp_path):
    path = _write_nifti(tmp_path / "bold.nii.gz", np.zeros((4, 5, 6, 3), dtype=np.float32))
    with pytest.raises(InputError) as exc:
        load_nifti(path, expect_ndim=3)
    _assert_one_line_naming(exc, "bold.nii.gz")
    msg = str(exc.value)
    assert "(4, 5, 6, 3)" in msg and "fslroi" in msg
    assert load_nifti(path).shape == (4, 5, 6, 3)  # fine without expect_ndim


def test_save_into_missing_directory(tmp_path, random_volume):
    target = tmp_path / "missing" / "out.nii.gz"
    with pytest.raises(InputError) as exc:
        save_nifti(Volume(random_volume), target)
    _assert_one_line_naming(exc, "out.nii.gz")
    assert not target.exists() and not target.parent.exists()


def test_save_bad_suffix(tmp_path, random_volume):
    with pytest.raises(InputError) as exc:
        save_nifti(Volume(random_volume), tmp_path / "out.png")
    _assert_one_line_naming(exc, "out.png")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_no_temp_file(tmp_path, random_volume, monkeypatch):
    target = tmp_path / "out.nii.gz"

    def broken_save(img, filename, *args, **kwargs):
        with open(filename, "wb") as f:  # a half-written temp file
            f.write(b"\x1f\x8bpartial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(InputError) as exc:
        save_nifti(Volume(random_volume), target)
    _assert_one_line_naming(exc, "out.nii.gz")
    assert "No space left" in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_previous_file(tmp_path, random_volume, monkeypatch):
    target = tmp_path / "keep.nii"
    save_nifti(Volume(random_volume), target)
    before = target.read_bytes()

    def broken_save(img, filename, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(InputError):
        save_nifti(Volume(random_volume * 2), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.nii"]


def test_nan_loads_but_check_finite_rejects(tmp_path):
    data = np.ones((3, 3, 3), dtype=np.float32)
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.inf
    vol = load_nifti(_write_nifti(tmp_path / "nan.nii", data))
    assert np.isnan(vol.array[0, 0, 0])
    with pytest.raises(InputError) as exc:
        check_finite(vol.array, "'nan.nii'")
    _assert_one_line_naming(exc, "nan.nii")
    assert "1 NaN and 1 Inf" in str(exc.value)
    check_finite(np.zeros(3), "zeros")
    check_finite(np.arange(3), "integers")


def test_volume_validation():
    with pytest.raises(InputError):
        Volume(np.zeros((2, 2, 2)), np.eye(3))
    vol = Volume(np.zeros((2, 3, 4)), np.diag([2.0, 3.0, 4.0, 1.0]))
    assert vol.spacing == (2.0, 3.0, 4.0)
    assert vol.affine.dtype == np.float64
    with pytest.raises(AttributeError):
        vol.array = np.zeros(1)


def test_load_volume_unsupported_and_missing(tmp_path):
    path = tmp_path / "image.tif"
    path.write_bytes(b"II*\x00")
    with pytest.raises(InputError) as exc:
        load_volume(path)
    _assert_one_line_naming(exc, "image.tif")
    assert ".nii.gz" in str(exc.value) and ".png" in str(exc.value)
    with pytest.raises(InputError) as exc:
        load_volume(tmp_path / "nowhere")
    _assert_one_line_naming(exc, "nowhere")
    assert os.path.exists(path)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_nifti_is_rejected(tmp_path, dtype):
    data = (np.arange(24).reshape(2, 3, 4) * (1 + 2j)).astype(dtype)
    path = _write_nifti(tmp_path / "cplx.nii.gz", data)
    assert nib.load(str(path)).get_data_dtype() == dtype, "nibabel wrote complex voxels"
    with pytest.raises(InputError) as exc:
        load_nifti(path)
    _assert_one_line_naming(exc, "cplx.nii.gz")
    msg = str(exc.value)
    assert "complex values" in msg and np.dtype(dtype).name in msg and "magnitude" in msg
    with pytest.raises(InputError, match="complex values"):
        load_volume(path, expect_ndim=3)


def _write_coded(path, array, affine, sform_code, qform_code):
    """Write ``array`` with ``affine`` in the sform and qform slots that have a non-zero code."""
    img = nib.Nifti1Image(np.asarray(array), None)
    img.header.set_qform(affine if qform_code else None, code=qform_code)
    img.header.set_sform(affine if sform_code else None, code=sform_code)
    nib.save(nib.Nifti1Image(img.dataobj, None, header=img.header), str(path))
    return path


@pytest.mark.parametrize(
    "sform_code, qform_code",
    [(0, 1), (0, 2), (2, 0), (4, 0), (4, 1), (1, 1)],
    ids=["qform-only", "qform-only-aligned", "sform-only", "sform-only-mni", "both", "both-scanner"],
)
def test_save_keeps_sform_and_qform_codes(tmp_path, random_volume, sform_code, qform_code):
    affine = _oblique_affine()
    src = _write_coded(tmp_path / "src.nii.gz", random_volume, affine, sform_code, qform_code)
    vol = load_nifti(src)
    assert (int(vol.header["sform_code"]), int(vol.header["qform_code"])) == (sform_code, qform_code)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
    back = load_nifti(save_nifti(vol, tmp_path / "out.nii.gz"))
    assert (int(back.header["sform_code"]), int(back.header["qform_code"])) == (sform_code, qform_code)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(back.array, random_volume)
    again = load_nifti(save_nifti(back, tmp_path / "again.nii"))  # stable over a second round trip
    assert (int(again.header["sform_code"]), int(again.header["qform_code"])) == (sform_code, qform_code)


def test_save_without_header_sets_both_codes_scanner(tmp_path, random_volume):
    back = load_nifti(save_nifti(Volume(random_volume, _oblique_affine()), tmp_path / "new.nii"))
    assert (int(back.header["sform_code"]), int(back.header["qform_code"])) == (1, 1)
    np.testing.assert_allclose(back.affine, _oblique_affine(), atol=1e-6)


def test_save_qform_only_header_with_sheared_affine_keeps_affine(tmp_path, random_volume):
    # the qform cannot hold a shear: the sform is then also written, with the qform's code
    vol = load_nifti(_write_coded(tmp_path / "q.nii", random_volume, _oblique_affine(), 0, 1))
    sheared = vol.affine.copy()
    sheared[0, 2] += 0.7
    back = load_nifti(save_nifti(Volume(vol.array, sheared, vol.header), tmp_path / "s.nii"))
    np.testing.assert_allclose(back.affine, sheared, atol=1e-6)
    assert (int(back.header["sform_code"]), int(back.header["qform_code"])) == (1, 1)
