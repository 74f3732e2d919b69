"""Tests of kfjax.io.dicom on a synthetic CT series and on pydicom's bundled CT_small.dcm."""

import sys

import numpy as np
import pytest

from kfjax.errors import InputError
from kfjax.io import load_dicom_series, load_volume

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ROWS, COLS = 4, 5
ROW_SPACING, COL_SPACING = 0.8, 0.6  # PixelSpacing = [between rows, between columns]
SLICE_STEP = 2.5
ORIGIN_LPS = np.array([-100.0, -120.0, 30.0])


def _write(ds, path):
    """Write a DICOM Part 10 file with pydicom 3 or 2.x."""
    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.4
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(path, ds, write_like_original=False)


def _raw_slice(k):
    """Stored pixel values of slice k, shape (ROWS, COLS), distinct per pixel and slice."""
    return (500 + 100 * k + np.arange(ROWS * COLS).reshape(ROWS, COLS)).astype(np.uint16)


def _slice_dataset(path, k, series_uid, photometric="MONOCHROME2", iop=(1, 0, 0, 0, 1, 0), modality="CT", **tags):
    """Minimal CT slice k of a series (``modality`` and any ``tags`` overridden); slices are SLICE_STEP mm apart."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = "synthetic"
    ds.InstanceNumber = k + 1
    row_dir, col_dir = np.array(iop[:3], float), np.array(iop[3:], float)
    normal = np.cross(row_dir, col_dir)
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.ImagePositionPatient = [float(v) for v in ORIGIN_LPS + k * SLICE_STEP * normal]
    ds.PixelSpacing = [ROW_SPACING, COL_SPACING]
    ds.SliceThickness = SLICE_STEP
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1024
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = ROWS, COLS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.PixelData = _raw_slice(k).tobytes()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def _write_series(folder, n=4, series_uid=None, order=(2, 0, 3, 1), prefix="im", **kwargs):
    """Write n slices in shuffled file order (file names do not follow the slice order)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    for idx, k in enumerate(order[:n]):
        path = folder / f"{prefix}{idx:03d}.dcm"
        _write(_slice_dataset(path, k, series_uid, **kwargs), path)
    return series_uid


def _oblique_iop():
    """Row/column directions rotated 30 degrees about z and 20 degrees about x (orthonormal)."""
    a, b = np.deg2rad(30), np.deg2rad(20)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rot = rx @ rz
    return tuple(rot[:, 0]) + tuple(rot[:, 1])


def test_series_sort_hu_spacing_and_affine(tmp_path):
    _write_series(tmp_path / "ct")
    (tmp_path / "ct" / "README.txt").write_text("not a dicom file")
    vol = load_dicom_series(tmp_path / "ct")
    assert vol.shape == (COLS, ROWS, 4) and vol.array.dtype == np.float32
    for k in range(4):  # slices sorted, axes (column, row), HU = 2 * stored - 1024
        np.testing.assert_array_equal(vol.array[:, :, k], (_raw_slice(k).astype(float) * 2 - 1024).T)
    np.testing.assert_allclose(vol.spacing, (COL_SPACING, ROW_SPACING, SLICE_STEP), atol=1e-6)
    # voxel (0, 0, 0) is the first slice's ImagePositionPatient, LPS -> RAS negates x and y
    expected = ORIGIN_LPS * [-1, -1, 1]
    np.testing.assert_allclose(vol.affine @ [0, 0, 0, 1], [*expected, 1], atol=1e-6)
    np.testing.assert_allclose(vol.affine @ [1, 0, 0, 1], [*(expected + [-COL_SPACING, 0, 0]), 1], atol=1e-6)
    np.testing.assert_allclose(vol.affine @ [0, 1, 0, 1], [*(expected + [0, -ROW_SPACING, 0]), 1], atol=1e-6)
    np.testing.assert_allclose(vol.affine @ [0, 0, 3, 1], [*(expected + [0, 0, 3 * SLICE_STEP]), 1], atol=1e-6)
    assert vol.header is None


def test_oblique_series_affine(tmp_path):
    iop = _oblique_iop()
    _write_series(tmp_path / "obl", iop=iop)
    vol = load_dicom_series(tmp_path / "obl")
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row_dir, col_dir)
    flip = np.array([-1, -1, 1])
    for i, j, k in [(0, 0, 0), (4, 3, 3), (2, 1, 2)]:
        lps = ORIGIN_LPS + i * COL_SPACING * row_dir + j * ROW_SPACING * col_dir + k * SLICE_STEP * normal
        np.testing.assert_allclose(vol.affine @ [i, j, k, 1], [*(lps * flip), 1], atol=1e-5)
    np.testing.assert_allclose(vol.spacing, (COL_SPACING, ROW_SPACING, SLICE_STEP), atol=1e-5)
    np.testing.assert_array_equal(vol.array[:, :, 0], (_raw_slice(0).astype(float) * 2 - 1024).T)


def test_monochrome1_is_inverted(tmp_path):
    # a radiograph (display image) is inverted; CT is not, see test_monochrome1_ct_is_hu
    _write_series(tmp_path / "m1", n=2, order=(1, 0), photometric="MONOCHROME1", modality="DX")
    vol = load_dicom_series(tmp_path / "m1")
    for k in range(2):
        inverted = 65535.0 - _raw_slice(k).astype(float)
        np.testing.assert_array_equal(vol.array[:, :, k], (inverted * 2 - 1024).T)


@pytest.mark.parametrize(
    "modality, tags",
    [("CT", {}), ("CT", {"RescaleType": "HU"}), ("XA", {"RescaleType": "HU"})],  # XA: C-arm cone-beam CT
)
def test_monochrome1_ct_is_hu(tmp_path, modality, tags):
    # MONOCHROME1 is a display instruction only: HU = stored * slope + intercept, no inversion
    tags = {"RescaleSlope": 0.5, "RescaleIntercept": -1000, **tags}
    _write_series(tmp_path / "ct1", n=2, order=(1, 0), photometric="MONOCHROME1", modality=modality, **tags)
    vol = load_dicom_series(tmp_path / "ct1")
    for k in range(2):
        np.testing.assert_array_equal(vol.array[:, :, k], (_raw_slice(k).astype(float) * 0.5 - 1000).T)
    assert vol.array[0, 0, 0] == 500 * 0.5 - 1000  # stored 500 -> -750 HU


def _write_with_raw_tag(path, keyword, vr, text):
    """Write one CT slice whose tag ``keyword`` holds ``text`` as written, valid or not."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = _slice_dataset(path, 0, generate_uid())
    value = text.encode("ascii") + (b" " if len(text) % 2 else b"")
    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    _write(ds, path)
    return path


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize(
    "keyword, vr, text",
    [("NumberOfFrames", "IS", "1A"), ("RescaleSlope", "DS", "2,5"), ("ImagePositionPatient", "DS", "1\\x\\3")],
)
def test_malformed_numeric_tag(tmp_path, keyword, vr, text):
    path = _write_with_raw_tag(tmp_path / "bad_tag.dcm", keyword, vr, text)
    assert pydicom.dcmread(path).get(keyword) is not None, "the malformed tag is in the file"
    with pytest.raises(InputError) as exc:
        load_dicom_series(path)
    msg = str(exc.value)
    assert "\n" not in msg and "bad_tag.dcm" in msg and keyword in msg
    assert "correct or remove the tag" in msg
    if keyword == "NumberOfFrames":
        assert "'1A'" in msg and "not an integer" in msg
    with pytest.raises(InputError, match=keyword):
        load_volume(tmp_path)  # the folder reader gives the same message


def test_two_series_need_a_choice(tmp_path):
    uid_a = _write_series(tmp_path / "mix", n=2, order=(0, 1), prefix="a")
    uid_b = _write_series(tmp_path / "mix", n=3, order=(2, 0, 1), prefix="b")
    with pytest.raises(InputError) as exc:
        load_dicom_series(tmp_path / "mix")
    msg = str(exc.value)
    assert "\n" not in msg and "mix" in msg
    assert uid_a in msg and uid_b in msg and "series_uid" in msg
    assert load_dicom_series(tmp_path / "mix", series_uid=uid_b).shape == (COLS, ROWS, 3)
    with pytest.raises(InputError, match="not in"):
        load_dicom_series(tmp_path / "mix", series_uid="1.2.3")


def test_duplicate_and_missing_slices(tmp_path):
    uid = _write_series(tmp_path / "dup", n=2, order=(0, 1))
    _write_series(tmp_path / "dup", n=1, order=(1,), series_uid=uid, prefix="again")
    with pytest.raises(InputError, match="same slice position"):
        load_dicom_series(tmp_path / "dup")
    _write_series(tmp_path / "gap", n=3, order=(0, 1, 3))
    with pytest.raises(InputError, match="missing slices"):
        load_dicom_series(tmp_path / "gap")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError) as exc:
        load_dicom_series(tmp_path)
    assert "no DICOM image files" in str(exc.value)
    fake = tmp_path / "fake.dcm"
    fake.write_text("not dicom")
    with pytest.raises(InputError) as exc:
        load_dicom_series(fake)
    assert "fake.dcm" in str(exc.value) and "\n" not in str(exc.value)


def test_missing_pydicom_message(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # makes `import pydicom` raise ImportError
    with pytest.raises(InputError) as exc:
        load_dicom_series(tmp_path)
    assert "pip install 'kfjax[dicom]'" in str(exc.value)


def test_load_volume_dispatches_to_dicom(tmp_path):
    _write_series(tmp_path / "ct")
    assert load_volume(tmp_path / "ct", expect_ndim=3).shape == (COLS, ROWS, 4)
    single = sorted((tmp_path / "ct").iterdir())[0]
    assert load_volume(single).shape == (COLS, ROWS, 1)
    assert load_volume(single, expect_ndim=2).shape == (COLS, ROWS)
    with pytest.raises(InputError, match="4-D volume is expected"):
        load_volume(tmp_path / "ct", expect_ndim=4)


def test_ct_small_from_pydicom():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    vol = load_dicom_series(path)
    assert vol.shape == (128, 128, 1)
    assert -1100 < vol.array.min() < vol.array.max() < 3000
    spacing = [float(v) for v in ds.PixelSpacing]
    np.testing.assert_allclose(vol.spacing[:2], (spacing[1], spacing[0]), atol=1e-6)
    np.testing.assert_allclose(vol.spacing[2], float(ds.SliceThickness), atol=1e-6)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(vol.affine[:3, 3], ipp * [-1, -1, 1], atol=1e-5)
    expected = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(vol.array[:, :, 0], expected.T)
