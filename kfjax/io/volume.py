"""The in-memory image volume that every kfjax reader returns and every writer takes.

A :class:`Volume` is a numpy array plus the affine that places it in the world:

* ``array`` has the axes in the file's voxel order ``(i, j, k[, t...])`` -- for NIfTI that is
  the on-disk order, for DICOM it is ``(column, row, slice)`` (see :mod:`kfjax.io.dicom`).
* ``affine`` is a 4x4 float64 matrix mapping voxel indices ``(i, j, k, 1)`` to RAS+ world
  coordinates in millimetres (x grows towards the patient's Right, y towards Anterior, z
  towards Superior), the NIfTI / nibabel convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kfjax.errors import InputError

__all__ = ["Volume", "check_finite"]


@dataclass(frozen=True)
class Volume:
    """An image volume with its voxel-to-world geometry.

    Attributes:
        array: numpy array, float32 unless the reader was asked for another dtype; shape
            ``(I, J, K)`` for a 3-D volume (``(I, J, K, T)`` for a 4-D series), axes in the
            file's voxel order. Values are in the file's units (Hounsfield units for CT DICOM).
        affine: ``(4, 4)`` float64 matrix, voxel index ``(i, j, k, 1)`` -> RAS world position
            in mm. ``affine[:3, :3]`` holds the axis directions scaled by the voxel sizes,
            ``affine[:3, 3]`` is the world position of the centre of voxel ``(0, 0, 0)``.
        header: the nibabel header the volume was read with (kept so that a save writes the
            same sform/qform codes, units and intent), or ``None`` when there is none
            (DICOM input, arrays made in memory).
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    header: Any = None

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise InputError(
                f"volume affine has shape {affine.shape}, expected (4, 4); "
                "pass the 4x4 voxel-to-world matrix"
            )
        if not np.all(np.isfinite(affine)):
            raise InputError("volume affine contains NaN or Inf; pass a finite 4x4 voxel-to-world matrix")
        if array.ndim < 1:
            raise InputError("volume array is a scalar; pass an array with at least one axis")
        # frozen dataclass: assign the normalised values through object.__setattr__
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of ``array`` (voxels per axis)."""
        return tuple(self.array.shape)

    @property
    def ndim(self) -> int:
        """Number of array axes (3 for a plain volume, 4 for a time/channel series)."""
        return self.array.ndim

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along the array axes i, j, k in mm: the column norms of ``affine[:3, :3]``."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return tuple(float(n) for n in norms)

    def with_array(self, array: np.ndarray) -> "Volume":
        """Return a copy with ``array`` replaced, same affine and header (e.g. after a filter)."""
        return Volume(array=array, affine=self.affine, header=self.header)

    def __repr__(self) -> str:
        spacing = ", ".join(f"{s:.4g}" for s in self.spacing)
        return f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing=({spacing}) mm)"


def check_finite(array: np.ndarray, what: str) -> None:
    """Raise :class:`InputError` if ``array`` holds NaN or Inf.

    Readers do not reject non-finite values (some masks use NaN for "outside"); callers that
    cannot handle them call this with ``what`` naming the input, e.g. ``"'ct.nii.gz'"``.
    """
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.inexact):
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    n_nan = int(np.isnan(array).sum())
    n_inf = int(array.size - finite.sum() - n_nan)
    raise InputError(
        f"{what} contains {n_nan} NaN and {n_inf} Inf value(s) out of {array.size}; "
        "replace them (e.g. with numpy.nan_to_num) or mask them out before use"
    )
