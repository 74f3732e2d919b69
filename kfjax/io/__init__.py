"""Reading and writing medical image volumes (NIfTI, DICOM) as :class:`Volume` objects.

Every reader returns a :class:`Volume` (array in voxel order i, j, k; 4x4 voxel -> RAS+ mm
affine) and raises :class:`kfjax.errors.InputError` with a one-line message for bad input.
"""

from kfjax.io.dicom import load_dicom_series, load_volume, save_volume
from kfjax.io.nifti import check_finite, load_nifti, save_nifti
from kfjax.io.volume import Volume

__all__ = [
    "Volume",
    "check_finite",
    "load_dicom_series",
    "load_nifti",
    "load_volume",
    "save_nifti",
    "save_volume",
]
