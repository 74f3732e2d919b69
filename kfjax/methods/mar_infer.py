"""Metal artifact reduction of a user's CT volume, slice by slice, with a trained MAR network.

    corrected = correct_volume(volume, correct_slices, geometry, metal_threshold=2500)

1. Reorient to display order (axial slices; rows anterior->posterior) through the NIfTI affine.
2. Resample each slice to the training pixel size and centre it on the training grid (pad with air; a field
   of view larger than the grid is cropped, with a notice: the outside keeps its original values).
3. Metal = HU >= `metal_threshold`. No metal anywhere: an InputError, nothing is written.
4. `correct_slices(hu (B, N, N, 1), metal (B, N, N, 1)) -> HU (B, N, N, 1)` for the slices with metal, in
   batches with a progress bar; metal pixels keep their original values.
5. Resample back onto the input grid; slices without metal and pixels outside the grid are unchanged.
The result has the input's shape, affine and header.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from kfjax.data.ct import to_display
from kfjax.errors import InputError
from kfjax.io import Volume


def _fit(image: np.ndarray, size: int, fill: float) -> tuple[np.ndarray, tuple[slice, slice], tuple[slice, slice]]:
    """Centre `image (h, w)` on a size x size grid: (grid, slices into the grid, slices into the image)."""
    grid = np.full((size, size), fill, np.float32)
    target, source = [], []
    for n in image.shape:
        if n <= size:
            start = (size - n) // 2
            target.append(slice(start, start + n))
            source.append(slice(0, n))
        else:
            start = (n - size) // 2
            target.append(slice(0, size))
            source.append(slice(start, start + size))
    grid[target[0], target[1]] = image[source[0], source[1]]
    return grid, tuple(target), tuple(source)


def correct_volume(
    volume: Volume,
    correct_slices: Callable[[np.ndarray, np.ndarray], np.ndarray],
    size: int,
    pixel_mm: float,
    metal_threshold: float = 2500.0,
    batch_size: int = 4,
    progress: bool = True,
    notice: Callable[[str], None] = print,
) -> Volume:
    """Apply `correct_slices` to the metal slices of `volume` (HU); see the module docstring."""
    array = np.asarray(volume.array, np.float32)
    if array.ndim != 3:
        raise InputError(f"expected a 3-D CT volume in HU, got shape {array.shape}; pass one NIfTI or DICOM series")
    index = np.arange(array.size).reshape(array.shape)
    display, display_affine = to_display(array, volume.affine)
    where, _ = to_display(index, volume.affine)  # display position -> flat index in the input array
    spacing = np.linalg.norm(display_affine[:3, :3], axis=0)[1:]  # (row, column) mm
    metal_slices = [k for k in range(display.shape[0]) if np.any(display[k] >= metal_threshold)]
    if not metal_slices:
        raise InputError(
            f"no metal found: no voxel >= {metal_threshold:g} HU (max {float(array.max()):.0f}); nothing written. "
            "Lower --metal-threshold if the metal is dimmer"
        )
    zoom = spacing / pixel_mm
    fov = np.asarray(display.shape[1:]) * spacing
    if np.any(fov > size * pixel_mm + 1e-6):
        notice(
            f"the slices span {fov[0]:.0f} x {fov[1]:.0f} mm, the network's grid {size * pixel_mm:.0f} mm: "
            "the centre is corrected, the outside keeps its values"
        )
    output = display.copy()
    batches = [metal_slices[i : i + batch_size] for i in range(0, len(metal_slices), batch_size)]
    for batch in tqdm(batches, desc="correct", unit="batch", disable=not progress):
        grids, places = [], []
        for k in batch:
            resampled = ndimage.zoom(display[k], zoom, order=1, mode="nearest")
            grid, target, source = _fit(resampled, size, -1000.0)
            grids.append(grid)
            places.append((resampled.shape, target, source))
        hu = np.stack(grids)[..., None]
        metal = (hu >= metal_threshold).astype(np.float32)
        count = len(batch)
        pad = batch_size - count  # one compiled shape
        corrected = np.asarray(
            correct_slices(
                np.concatenate([hu, hu[:1].repeat(pad, 0)]), np.concatenate([metal, metal[:1].repeat(pad, 0)])
            )
        )[:count, ..., 0]
        corrected = np.where(metal[..., 0] > 0, hu[..., 0], corrected)
        for k, image, (shape, target, source) in zip(batch, corrected, places):
            resampled = np.array(ndimage.zoom(display[k], zoom, order=1, mode="nearest"))
            resampled[source[0], source[1]] = image[target[0], target[1]]
            back = _zoom_to(resampled, display.shape[1:])
            inside = _zoom_to(_mask_of(shape, source), display.shape[1:]) > 0.5
            keep = ~inside | (display[k] >= metal_threshold)  # outside the grid, and the metal itself
            output[k] = np.where(keep, display[k], back)
    result = np.empty(array.size, np.float32)
    result[where.ravel()] = output.ravel()
    return Volume(result.reshape(array.shape), volume.affine, volume.header)


def _mask_of(shape: tuple[int, int], source: tuple[slice, slice]) -> np.ndarray:
    mask = np.zeros(shape, np.float32)
    mask[source[0], source[1]] = 1.0
    return mask


def _zoom_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample `image` to exactly `shape` (bilinear)."""
    factors = np.asarray(shape) / np.asarray(image.shape)
    out = ndimage.zoom(image, factors, order=1, mode="nearest")
    if out.shape != tuple(shape):  # zoom rounds; pad or crop the last row/column
        fixed = np.empty(shape, out.dtype)
        h, w = min(shape[0], out.shape[0]), min(shape[1], out.shape[1])
        fixed[:h, :w] = out[:h, :w]
        fixed[h:, :] = fixed[h - 1 : h, :]
        fixed[:, w:] = fixed[:, w - 1 : w]
        out = fixed
    return out
