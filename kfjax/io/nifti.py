"""Read and write NIfTI-1/2 volumes (``.nii``, ``.nii.gz``) as :class:`~kfjax.io.volume.Volume`.

* :func:`load_nifti` reads the whole voxel array at load time, so a truncated or corrupt file
  fails here with an :class:`~kfjax.errors.InputError` naming the file instead of failing
  later inside a training loop.
* :func:`save_nifti` writes to a temporary file in the target folder and renames it into
  place, so an interrupted save never leaves a half-written volume behind.

NaN/Inf voxels are not an error at load; callers that cannot handle them use
:func:`check_finite`.
"""

from __future__ import annotations

import gzip
import os
import uuid
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError, SpatialImage

from kfjax.errors import InputError
from kfjax.io.volume import Volume, check_finite

__all__ = ["load_nifti", "save_nifti", "check_finite", "NIFTI_SUFFIXES"]

#: File name endings :func:`save_nifti` writes and :func:`kfjax.io.load_volume` reads as NIfTI.
NIFTI_SUFFIXES = (".nii", ".nii.gz")

_GZIP_MAGIC = b"\x1f\x8b"
_FIX = "re-export or re-download the volume as NIfTI (.nii or .nii.gz)"


def _one_line(text: object) -> str:
    """Collapse an exception text to a single line for an error message."""
    return " ".join(str(text).split())


def has_nifti_suffix(path: str | os.PathLike) -> bool:
    """True if the file name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _check_readable_file(path: Path) -> None:
    """Raise InputError if ``path`` is missing, a folder, empty or a mislabelled gzip file."""
    if not path.exists():
        raise InputError(f"cannot read '{path}': no such file; check the path and the working directory")
    if path.is_dir():
        raise InputError(f"cannot read '{path}': it is a folder, not a NIfTI file; pass a .nii or .nii.gz file")
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as exc:
        raise InputError(f"cannot read '{path}': {_one_line(exc.strerror or exc)}; check the file permissions") from exc
    if not head:
        raise InputError(f"cannot read '{path}': the file is empty (0 bytes); {_FIX}")
    if str(path).lower().endswith(".gz") and head != _GZIP_MAGIC:
        raise InputError(f"cannot read '{path}': not a gzip file (corrupt or truncated?); {_FIX}")


def _read_error(path: Path, exc: Exception) -> InputError:
    """Turn a nibabel / gzip / OS exception raised while reading ``path`` into a one-line InputError."""
    text = _one_line(exc)
    if isinstance(exc, gzip.BadGzipFile) or "not a gzip file" in text.lower():
        reason = "not a gzip file (corrupt or truncated?)"
    elif isinstance(exc, (EOFError, zlib.error)):
        reason = f"the compressed data is cut short or corrupt ({text}); the file is probably truncated"
    elif isinstance(exc, ImageFileError):
        reason = f"not a NIfTI file, or its header is damaged or truncated ({text})"
    elif isinstance(exc, HeaderDataError):
        reason = f"invalid NIfTI header ({text})"
    elif isinstance(exc, OSError) and ("Expected" in text or "mmap" in text):
        reason = f"the file holds less voxel data than its header says ({text}); the file is probably truncated"
    elif isinstance(exc, (TypeError, ValueError)) and "dtype" in text.lower():
        reason = f"unsupported voxel data type ({text})"
    else:
        reason = f"{type(exc).__name__}: {text}"
    return InputError(f"cannot read '{path}': {reason}; {_FIX}")


def _squeeze_trailing(array: np.ndarray, min_ndim: int) -> np.ndarray:
    """Drop trailing axes of length 1 while the array has more than ``min_ndim`` axes."""
    while array.ndim > min_ndim and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def _ndim_error(path: Path, shape: tuple[int, ...], expect_ndim: int) -> InputError:
    """One-line InputError for a volume with the wrong number of axes, with a fix."""
    ndim = len(shape)
    what = f"'{path}' has {ndim}-D shape {shape} but a {expect_ndim}-D volume is expected"
    if ndim == 4 and expect_ndim == 3:
        fix = f"take one volume, e.g. 'fslroi {path.name} one.nii.gz 0 1', or average over time with 'fslmaths {path.name} -Tmean mean.nii.gz'"
    elif ndim > expect_ndim:
        fix = f"select or combine the extra axes so that {expect_ndim} remain before loading"
    else:
        fix = f"save it with {expect_ndim} axes (add trailing axes of length 1)"
    return InputError(f"{what}; {fix}")


def _check_real(path: Path, img: SpatialImage) -> None:
    """Raise InputError if the voxels of ``img`` are complex (a cast would keep only the real part)."""
    data_dtype = np.dtype(img.get_data_dtype())
    if data_dtype.kind == "c":
        raise InputError(
            f"cannot read '{path}': the file holds complex values ({data_dtype}) but kfjax needs real voxels; "
            "save the magnitude (np.abs) or the real part as a float NIfTI and load that file"
        )


def load_nifti(
    path: str | os.PathLike,
    expect_ndim: int | None = None,
    dtype: np.dtype | type = np.float32,
) -> Volume:
    """Read a NIfTI file into a :class:`Volume`.

    Args:
        path: ``.nii`` or ``.nii.gz`` file (any format nibabel reads with a NIfTI-like header
            also works).
        expect_ndim: if given, the number of axes the caller needs (e.g. 3). Trailing axes of
            length 1 are dropped first, so ``(X, Y, Z, 1)`` passes as 3-D; any other mismatch
            raises :class:`InputError` with the shape and how to fix it.
        dtype: numpy dtype of ``Volume.array``; the file's scl_slope/scl_inter are applied.

    Returns:
        Volume with ``array`` of shape ``(I, J, K[, ...])`` in the file's voxel order, ``affine``
        the file's best voxel->RAS mm affine (sform if set, else qform) and ``header`` a copy of
        the NIfTI header. Trailing length-1 axes beyond the third are dropped.

    Raises:
        InputError: missing, empty, corrupt or truncated file, not NIfTI, complex-valued voxels,
            wrong dimensionality.
    """
    path = Path(path)
    _check_readable_file(path)
    try:
        img = nib.load(str(path), mmap=False)
        _check_real(path, img)
        # read every voxel now, so a truncated file fails here and not later
        array = np.asarray(img.dataobj, dtype=dtype)
        affine = np.asarray(img.affine, dtype=np.float64)
        header = img.header.copy()
    except InputError:
        raise
    except Exception as exc:  # nibabel, gzip, zlib and OS errors all mean the same to the user
        raise _read_error(path, exc) from exc

    array = _squeeze_trailing(array, 3)
    if expect_ndim is not None:
        array = _squeeze_trailing(array, expect_ndim)
        if array.ndim != expect_ndim:
            raise _ndim_error(path, tuple(array.shape), expect_ndim)
    if array.ndim < 1:
        raise InputError(f"cannot read '{path}': the image has no voxel axes; {_FIX}")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"cannot read '{path}': the voxel-to-world affine is missing or not finite; {_FIX}")
    return Volume(array=array, affine=affine, header=header)


def _array_for_nifti(array: np.ndarray) -> np.ndarray:
    """Cast types NIfTI cannot store (bool, float16, 64-bit ints) to ones it can."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype in (np.int64, np.uint64):
        info = np.iinfo(np.int32)
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            return array.astype(np.int32)
        return array.astype(np.float64)
    return array


def _xform_codes(volume: Volume) -> tuple[int, int]:
    """(sform_code, qform_code) to write: the header's own, or (1, 1) = scanner without any code."""
    header = volume.header
    if isinstance(header, nib.Nifti1Header):  # Nifti2Header is a subclass
        sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
        if sform_code or qform_code:
            return sform_code, qform_code
    # without any code the affine would not be used on reading: call it scanner space
    return 1, 1


def _build_image(volume: Volume) -> nib.Nifti1Image:
    """Make a Nifti1Image (Nifti2Image for a NIfTI-2 header) from ``volume``, keeping its header.

    The sform/qform codes are the header's (see :func:`_xform_codes`): a qform-only input
    stays qform-only, sform-only stays sform-only. Only if the qform alone cannot hold the
    affine (shear) is the sform also set, with the qform's code, so no geometry is lost.
    """
    array = _array_for_nifti(volume.array)
    header = volume.header.copy() if isinstance(volume.header, nib.Nifti1Header) else None
    sform_code, qform_code = _xform_codes(volume)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = image_class(array, volume.affine, header=header)
    img.set_data_dtype(array.dtype)
    # the qform holds the shear-free part of the affine, the sform the affine exactly
    img.set_qform(volume.affine, code=qform_code)
    if sform_code == 0 and not np.allclose(img.get_qform(), volume.affine, atol=1e-5):
        sform_code = qform_code
    img.set_sform(volume.affine, code=sform_code)
    return img


def save_nifti(volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``volume`` to ``path`` (``.nii`` or ``.nii.gz``) atomically.

    The array is stored in its own dtype (bool as uint8, float16 as float32), the affine in
    the sform (exactly, shear included) and the qform (rotation part). The header's
    sform_code and qform_code are kept as they are (a qform-only file stays qform-only,
    unless a sheared affine needs the sform); a volume without a NIfTI header, or whose
    header sets neither code, gets both codes ``scanner`` (1). The file is first written
    to a hidden temporary file in the same folder and then renamed over ``path``; on failure
    the temporary file is removed and ``path`` is left as it was.

    Returns:
        The path written.

    Raises:
        InputError: bad file name ending, missing output folder, or the write failed.
    """
    path = Path(path)
    if not isinstance(volume, Volume):
        raise InputError(f"save_nifti needs a kfjax.io.Volume, got {type(volume).__name__}; wrap arrays with Volume(array, affine)")
    if not has_nifti_suffix(path):
        raise InputError(f"cannot save '{path}': the name must end in .nii or .nii.gz; rename the output file")
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"cannot save '{path}': the folder '{parent}' does not exist; create it first (mkdir -p)")
    if path.is_dir():
        raise InputError(f"cannot save '{path}': a folder with that name exists; choose another file name")

    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    tmp = parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}"
    try:
        img = _build_image(volume)
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    except Exception as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, InputError):
            raise
        if isinstance(exc, OSError):
            reason = _one_line(exc.strerror or exc)
            fix = "check free disk space and write permission, or choose another folder"
        else:
            reason = f"{type(exc).__name__}: {_one_line(exc)}"
            fix = "check the volume's array dtype and affine"
        raise InputError(f"cannot save '{path}': {reason}; {fix}") from exc
    return path
