"""Read DICOM image series as :class:`~kfjax.io.volume.Volume`, and pick a reader by path.

Array axis order of a DICOM volume (documented here once, used everywhere in kfjax):

* ``array[i, j, k]`` with ``i`` = column index inside a slice (DICOM ``Columns``), ``j`` = row
  index (DICOM ``Rows``), ``k`` = slice index sorted along the slice normal. The shape is
  ``(Columns, Rows, n_slices)``; a single file gives ``(Columns, Rows, 1)``. This is the
  NIfTI convention, so the 4x4 ``affine`` maps ``(i, j, k, 1)`` to RAS+ millimetres exactly
  as for a NIfTI volume and ``array[:, :, k].T`` is the slice as a viewer shows it.
* Values are ``stored * RescaleSlope + RescaleIntercept`` (Hounsfield units for CT).
  MONOCHROME1 only tells a viewer to show low values bright, so CT (and any data rescaled to
  HU) is never inverted; only projection radiographs (Modality CR, DX, MG, ...), which are
  display images, have MONOCHROME1 inverted so that larger means more attenuation (brighter).
* DICOM patient coordinates are LPS+; the affine is converted to RAS+ by negating x and y.

pydicom is an optional dependency (``pip install 'kfjax[dicom]'``) and is imported lazily.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from kfjax.errors import InputError
from kfjax.io.nifti import _ndim_error, _one_line, _squeeze_trailing, has_nifti_suffix, load_nifti, save_nifti
from kfjax.io.png import has_png_suffix, load_png
from kfjax.io.volume import Volume

__all__ = ["load_dicom_series", "load_volume", "save_volume", "SUPPORTED_FORMATS"]

#: Shown in the error for an unknown input format.
SUPPORTED_FORMATS = "NIfTI (.nii, .nii.gz), a DICOM file (.dcm), a folder of DICOM slices or a 2-D PNG image (.png)"

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_DCM_CONVERT = "convert it with dcm2niix and load the NIfTI file instead"
_FIX_TAG = "correct or remove the tag (e.g. with pydicom or dcmodify) or re-export the series"

#: Projection X-ray modalities: their pixels are display images, so MONOCHROME1 is inverted.
_RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "MG", "IO", "PX", "RG", "RF", "XA"})


def _import_pydicom() -> Any:
    """Import pydicom on first use; raise InputError telling how to install it if missing."""
    try:
        import pydicom
        import pydicom.errors  # noqa: F401  (InvalidDicomError)
    except ImportError as exc:
        raise InputError(
            "reading DICOM needs the optional package pydicom, which is not installed; "
            "run: pip install 'kfjax[dicom]'"
        ) from exc
    return pydicom


def _is_dicom_file(path: Path) -> bool:
    """True if ``path`` has the 'DICM' marker at byte 128 (DICOM Part 10 file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_datasets(path: Path, pydicom: Any) -> list[tuple[Path, Any]]:
    """Read ``path`` (a file, or every file directly inside a folder) -> [(file, dataset)].

    In a folder, files that are not DICOM or hold no image (DICOMDIR, reports) are skipped.
    """
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        single = False
    else:
        files, single = [path], True
    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
        except pydicom.errors.InvalidDicomError as exc:
            if single:
                raise InputError(f"cannot read '{f}': not a DICOM file ({_one_line(exc)}); pass a DICOM (.dcm) file or folder") from exc
            continue
        except Exception as exc:  # truncated or damaged file
            raise InputError(f"cannot read '{f}': damaged DICOM file ({type(exc).__name__}: {_one_line(exc)}); re-export the series") from exc
        if "PixelData" not in ds:
            if single:
                raise InputError(f"cannot read '{f}': the DICOM file holds no image (no PixelData); pass an image file")
            continue
        out.append((f, ds))
    if not out:
        raise InputError(
            f"no DICOM image files in '{path}' ({len(files)} file(s) skipped: not DICOM or without pixel data); "
            "pass the folder that directly holds the slice files"
        )
    return out


def _describe_series(uid: str, items: list[tuple[Path, Any]]) -> str:
    """Short text for one series in an error message: 'uid (CT 'desc', 40 slices)'."""
    ds = items[0][1]
    desc = str(ds.get("SeriesDescription", "") or "").strip()
    modality = str(ds.get("Modality", "") or "?")
    desc = f" '{desc}'" if desc else ""
    return f"{uid or '<no SeriesInstanceUID>'} ({modality}{desc}, {len(items)} slices)"


def _tag_error(f: Path, name: str, value: Any, expected: str) -> InputError:
    """One-line InputError for DICOM tag ``name`` of file ``f`` whose ``value`` is not ``expected``."""
    return InputError(f"cannot read '{f}': DICOM tag {name} holds {_one_line(repr(value))}, not {expected}; {_FIX_TAG}")


def _tag_number(f: Path, ds: Any, name: str, default: float, kind: type = int) -> Any:
    """Value of the single-valued numeric tag ``name`` as ``kind`` (int or float).

    ``default`` if the tag is absent or empty; InputError naming ``f`` and the tag if its
    text is not a number (e.g. NumberOfFrames ``"1A"``).
    """
    value: Any = "<unreadable>"
    try:
        value = ds.get(name, default)
        if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
            return default
        number = float(value)
        if kind is int and number != int(number):
            raise ValueError(f"{number} is not a whole number")
        return kind(number)
    except (TypeError, ValueError, OverflowError) as exc:
        expected = "an integer" if kind is int else "a number"
        raise _tag_error(f, name, value, expected) from exc


def _tag_floats(f: Path, ds: Any, name: str, size: int) -> np.ndarray:
    """Values of the decimal tag ``name`` as a float64 vector of shape ``(size,)``; InputError if malformed."""
    value: Any = "<unreadable>"
    try:
        value = ds.get(name)
        floats = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _tag_error(f, name, value, f"{size} numbers") from exc
    if floats.shape != (size,):
        raise _tag_error(f, name, value, f"{size} numbers")
    return floats


def _geometry(f: Path, ds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row_dir, col_dir, position) of one slice in LPS mm; raises InputError if tags are missing.

    ``row_dir`` is the direction in which the column index i grows, ``col_dir`` the direction
    in which the row index j grows (the two triplets of ImageOrientationPatient).
    """
    missing = [t for t in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing") if t not in ds]
    if missing:
        raise InputError(
            f"cannot place '{f}' in space: missing DICOM tag(s) {', '.join(missing)} "
            f"(not a cross-sectional image?); {_DCM_CONVERT}"
        )
    iop = _tag_floats(f, ds, "ImageOrientationPatient", 6)
    ipp = _tag_floats(f, ds, "ImagePositionPatient", 3)
    row_dir, col_dir = iop[:3], iop[3:]
    return row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir), ipp


def _is_display_monochrome1(ds: Any) -> bool:
    """True if ``ds`` is a MONOCHROME1 projection radiograph whose stored values are inverted.

    MONOCHROME1 is a display instruction (low values shown bright), not a change of units.
    Only a radiograph (Modality in ``_RADIOGRAPH_MODALITIES``: CR, DX, MG, ...) is a display
    image, inverted so that larger means more attenuation. CT, other modalities, and any
    data with ``RescaleType`` HU keep their values.
    """
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "").strip().upper() != "MONOCHROME1":
        return False
    modality = str(ds.get("Modality", "") or "").strip().upper()
    rescale_type = str(ds.get("RescaleType", "") or "").strip().upper()
    return modality in _RADIOGRAPH_MODALITIES and rescale_type != "HU"


def _invert_stored(f: Path, ds: Any, values: np.ndarray, itemsize: int) -> np.ndarray:
    """Invert stored values over the BitsStored range: ``lo + hi - v``; shape unchanged."""
    bits = _tag_number(f, ds, "BitsStored", itemsize * 8)
    if _tag_number(f, ds, "PixelRepresentation", 0) == 1:
        lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    else:
        lo, hi = 0.0, 2.0**bits - 1
    return lo + hi - values


def slice_values(f: Path, ds: Any) -> np.ndarray:
    """Pixel values of one slice as float64, shape ``(Columns, Rows)`` (axes i, j).

    Values are ``stored * RescaleSlope + RescaleIntercept`` (HU for CT). MONOCHROME1 is not
    inverted for CT or HU data (it only tells a viewer how to display them); a MONOCHROME1
    projection radiograph (Modality CR, DX, MG, ...) is a display image and is inverted on
    the stored values (``lo + hi - v`` over the BitsStored range) before the rescale, so that
    larger means more attenuation. Malformed numeric tags raise InputError naming the tag.
    """
    if _tag_number(f, ds, "NumberOfFrames", 1) > 1:
        raise InputError(f"cannot read '{f}': multi-frame (enhanced) DICOM is not supported; {_DCM_CONVERT}")
    if _tag_number(f, ds, "SamplesPerPixel", 1) != 1:
        raise InputError(f"cannot read '{f}': colour DICOM images are not supported; pass a greyscale series")
    try:
        raw = np.asarray(ds.pixel_array)
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise InputError(
            f"cannot decode the pixels of '{f}' (transfer syntax {syntax}: {type(exc).__name__}: {_one_line(exc)}); "
            f"install a decoder (pip install pylibjpeg pylibjpeg-libjpeg) or {_DCM_CONVERT}"
        ) from exc
    if raw.ndim != 2:
        raise InputError(f"cannot read '{f}': expected a 2-D slice, got pixel array of shape {raw.shape}; {_DCM_CONVERT}")
    values = raw.astype(np.float64)
    if _is_display_monochrome1(ds):
        values = _invert_stored(f, ds, values, raw.dtype.itemsize)
    slope = _tag_number(f, ds, "RescaleSlope", 1.0, float) or 1.0
    intercept = _tag_number(f, ds, "RescaleIntercept", 0.0, float)
    return (values * slope + intercept).T


def _series_volume(items: list[tuple[Path, Any]], dtype: Any) -> Volume:
    """Sort the slices of one series along their normal and stack them into a Volume."""
    geo = [_geometry(f, ds) for f, ds in items]
    row_dir, col_dir, _ = geo[0]
    for (f, _ds), (r, c, _p) in zip(items, geo):
        if not (np.allclose(r, row_dir, atol=1e-4) and np.allclose(c, col_dir, atol=1e-4)):
            raise InputError(f"slices of the series differ in orientation ('{f}'); the folder mixes scans, {_DCM_CONVERT}")
    normal = np.cross(row_dir, col_dir)
    order = np.argsort([float(np.dot(p, normal)) for _r, _c, p in geo], kind="stable")
    items = [items[i] for i in order]
    positions = np.stack([geo[i][2] for i in order])
    depth = positions @ normal

    n = len(items)
    if n > 1:
        steps = np.diff(depth)
        if np.min(steps) < 1e-3:
            k = int(np.argmin(steps))
            raise InputError(
                f"'{items[k][0].name}' and '{items[k + 1][0].name}' lie at the same slice position; "
                f"the series holds several phases or echoes, split them or {_DCM_CONVERT}"
            )
        spacing = (depth[-1] - depth[0]) / (n - 1)
        if np.max(np.abs(steps - spacing)) > max(0.01, 0.01 * spacing):
            raise InputError(
                f"slice spacing of the series varies from {steps.min():.4g} to {steps.max():.4g} mm "
                f"(missing slices?); re-export the complete series or {_DCM_CONVERT}"
            )
        # from first to last position: exact also for a gantry tilt (sheared affine)
        slice_vec = (positions[-1] - positions[0]) / (n - 1)
    else:
        f, ds = items[0]
        between = _tag_number(f, ds, "SpacingBetweenSlices", 0.0, float)
        thickness = between or _tag_number(f, ds, "SliceThickness", 0.0, float) or 1.0
        slice_vec = normal * abs(thickness)

    first = items[0][1]
    rows, cols = int(first.Rows), int(first.Columns)
    row_spacing, col_spacing = _tag_floats(items[0][0], first, "PixelSpacing", 2)  # between rows, between columns
    array = np.empty((cols, rows, n), dtype=dtype)
    for k, (f, ds) in enumerate(items):
        if int(ds.Rows) != rows or int(ds.Columns) != cols:
            raise InputError(f"'{f}' is {ds.Columns}x{ds.Rows} pixels but the series is {cols}x{rows}; the folder mixes scans, {_DCM_CONVERT}")
        array[:, :, k] = slice_values(f, ds)

    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # i: along a row, one column further
    lps[:3, 1] = col_dir * row_spacing  # j: down a column, one row further
    lps[:3, 2] = slice_vec
    lps[:3, 3] = positions[0]
    return Volume(array=array, affine=_LPS_TO_RAS @ lps, header=None)


def load_dicom_series(
    directory_or_file: str | os.PathLike,
    series_uid: str | None = None,
    dtype: Any = np.float32,
) -> Volume:
    """Read a DICOM series (a folder of slice files) or one DICOM file into a :class:`Volume`.

    Args:
        directory_or_file: a folder whose files (not sub-folders) are the slices of one series,
            non-DICOM files are skipped; or a single ``.dcm`` file, which gives one slice.
        series_uid: the SeriesInstanceUID to read when the folder holds several series.
        dtype: numpy dtype of ``Volume.array``.

    Returns:
        Volume with ``array`` of shape ``(Columns, Rows, n_slices)`` (axes i, j, k; see the
        module docstring) in rescaled units (HU for CT), ``affine`` voxel -> RAS+ mm with the
        slice step taken from the sorted ImagePositionPatient values (SliceThickness for a
        single slice), ``header`` None.

    Raises:
        InputError: pydicom missing, no DICOM images, several series without ``series_uid``,
            missing geometry tags, inconsistent or duplicate slices, undecodable pixels.
    """
    pydicom = _import_pydicom()
    path = Path(directory_or_file)
    if not path.exists():
        raise InputError(f"cannot read '{path}': no such file or folder; check the path")
    items = _read_datasets(path, pydicom)

    groups: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    for f, ds in items:
        groups[str(ds.get("SeriesInstanceUID", "") or "")].append((f, ds))
    listing = "; ".join(_describe_series(uid, groups[uid]) for uid in sorted(groups))
    if series_uid is not None:
        if series_uid not in groups:
            raise InputError(f"series '{series_uid}' is not in '{path}'; it holds: {listing}")
        chosen = groups[series_uid]
    elif len(groups) > 1:
        raise InputError(f"'{path}' holds {len(groups)} DICOM series: {listing}; pass series_uid=... to pick one")
    else:
        chosen = next(iter(groups.values()))
    return _series_volume(chosen, dtype)


def load_volume(path: str | os.PathLike, expect_ndim: int | None = None) -> Volume:
    """Read a volume, choosing the reader from the path.

    ``.nii``/``.nii.gz`` -> :func:`~kfjax.io.nifti.load_nifti`; ``.png`` -> :func:`~kfjax.io.png.load_png`
    (2-D, identity affine); a folder, a ``.dcm`` file or a file with the DICOM marker ->
    :func:`load_dicom_series`. ``expect_ndim`` is checked as in ``load_nifti`` (trailing axes of length 1
    are dropped first, so one DICOM slice passes as 2-D). Arrays are float32.

    Raises:
        InputError: missing path, unsupported format, or any reader error.
    """
    path = Path(path)
    if has_nifti_suffix(path):
        return load_nifti(path, expect_ndim=expect_ndim)
    if has_png_suffix(path):
        return load_png(path, expect_ndim=expect_ndim)
    if not path.exists():
        raise InputError(f"cannot read '{path}': no such file or folder; check the path")
    if path.is_dir() or path.suffix.lower() == ".dcm" or _is_dicom_file(path):
        volume = load_dicom_series(path)
    else:
        raise InputError(f"cannot read '{path}': unsupported format '{path.suffix or path.name}'; supported: {SUPPORTED_FORMATS}")
    if expect_ndim is not None:
        array = _squeeze_trailing(volume.array, expect_ndim)
        if array.ndim != expect_ndim:
            raise _ndim_error(path, tuple(array.shape), expect_ndim)
        volume = volume.with_array(array)
    return volume


def save_volume(volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``volume`` to ``path``; only NIfTI (``.nii``/``.nii.gz``) is written for now."""
    return save_nifti(volume, path)
