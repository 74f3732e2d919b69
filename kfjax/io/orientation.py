"""Display orientation of axial slices, found from a volume's affine (never assumed).

Display order ``(D, H, W, ...)``: axis 0 runs inferior -> superior, rows anterior -> posterior (the top
row is anterior), columns from the patient's right to the patient's left (radiological view: the
patient's left is on the right of the image). ``slices[k]`` is the k-th axial slice from the feet.

    slices, display_affine = to_display_slices(volume)    # volume: kfjax.io.Volume
    array = from_display_slices(slices, volume.affine)     # == volume.array, exactly

Only axis permutations and flips are applied (no resampling): each array axis goes to the display axis
closest to its world direction (nibabel's ``io_orientation``), so oblique volumes are reoriented to the
nearest display order. Trailing axes beyond the third (channels, time) are kept as they are.
"""

from __future__ import annotations

import numpy as np

from kfjax.errors import InputError
from kfjax.io.volume import Volume

__all__ = ["DISPLAY_AXES", "ORIENTATION", "to_display_slices", "from_display_slices"]

#: axcodes of the display orientation: axis 0 -> Superior, rows -> Posterior, columns -> patient's Left
DISPLAY_AXES = ("S", "P", "L")
ORIENTATION = ("axis 0 inferior->superior, rows anterior->posterior (top = anterior), columns patient "
               "right->left (radiological view: the patient's left on the image right); found from the NIfTI affine")


def _orientations(affine: np.ndarray, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """nibabel orientations (3, 2) of the voxel axes of ``affine`` and of :data:`DISPLAY_AXES`."""
    import nibabel.orientations as ornt

    if ndim < 3:
        raise InputError(f"display slices need an array with at least 3 axes (I, J, K), got {ndim}")
    start = ornt.io_orientation(np.asarray(affine, np.float64))
    if np.isnan(start).any():
        raise InputError("the volume affine is singular (an axis has no direction); pass a valid voxel -> RAS affine")
    return start, ornt.axcodes2ornt(DISPLAY_AXES)


def to_display_slices(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Axial slices of ``volume`` in display order: ``(slices (D, H, W, ...), display affine (4, 4))``.

    The axes of ``volume.array`` ``(I, J, K, ...)`` are permuted and flipped as its affine (voxel -> RAS
    mm) says; the returned affine maps the display index ``(d, r, c)`` to the same RAS world mm, so
    world positions are unchanged. :func:`from_display_slices` undoes it.
    """
    import nibabel.orientations as ornt

    array, affine = np.asarray(volume.array), np.asarray(volume.affine, np.float64)
    start, display = _orientations(affine, array.ndim)
    transform = ornt.ornt_transform(start, display)
    out = np.ascontiguousarray(ornt.apply_orientation(array, transform))
    return out, affine @ ornt.inv_ornt_aff(transform, array.shape[:3])


def from_display_slices(slices: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_display_slices`: display-order ``slices (D, H, W, ...)`` -> the original array
    order ``(I, J, K, ...)`` of the volume whose affine (voxel -> RAS mm) is ``affine``.

    ``affine`` is the original volume's (``volume.affine``), not the display affine, which no longer
    says what the original axis order was.
    """
    import nibabel.orientations as ornt

    slices = np.asarray(slices)
    start, display = _orientations(affine, slices.ndim)
    return np.ascontiguousarray(ornt.apply_orientation(slices, ornt.ornt_transform(display, start)))
