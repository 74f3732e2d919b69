"""Metal artifact reduction, shared by DuDoNet, ADN, CycleGAN and deep image prior: scores and the
correction of a user's CT volume.

Scores: PSNR (dB) and SSIM (7x7 uniform window) on images mapped to [0, 1] (data range 1), over the pixels
outside the metal, per example; `by_size_group` adds one entry per metal size group (g0 = largest metal ...
g4 = smallest), NaN for the other groups so that the exact means leave them out.

Correction (`correct_volume`): the user's HU volume is reoriented to axial display slices through its
affine, the slices that hold metal (HU >= `metal_threshold`) are resampled to the network's grid, corrected
by the method's `correct(hu, metal) -> hu` in batches with a progress bar, and resampled back; slices
without metal, the metal itself and pixels outside the grid keep their values. Shape, affine and header
are the input's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from kfjax import metrics
from kfjax.errors import InputError
from kfjax.io import Volume
from kfjax.io.orientation import from_display_slices, to_display_slices
from kfjax.units import METAL_THRESHOLD_HU

N_SIZE_GROUPS = 5  # metal size groups of the CNN-MAR test masks (g0 = largest)
AIR_HU = -1000.0  # what the network's grid is padded with outside the user's field of view


@dataclasses.dataclass(frozen=True)
class MARInferConfig:
    """Settings of `kfjax infer` for a metal artifact reduction method (`--set infer.KEY=VALUE`)."""

    metal_threshold: float = METAL_THRESHOLD_HU  # HU at and above which a voxel is metal


def unit_scores(pred: jax.Array, target: jax.Array, metal: jax.Array) -> dict[str, jax.Array]:
    """PSNR and SSIM of `(B, H, W, 1)` images in [0, 1] outside `metal` (1 = metal): `{name: (B,)}`."""
    keep = 1.0 - metal
    return {"psnr": metrics.psnr(pred, target, 1.0, mask=keep), "ssim": metrics.ssim(pred, target, 1.0, mask=keep)}


def by_size_group(values: dict[str, jax.Array], group: jax.Array, prefix: str = "") -> dict[str, jax.Array]:
    """`{f"{prefix}{name}_g{g}": values where group == g else NaN}` for every metal size group g."""
    return {f"{prefix}{name}_g{g}": jnp.where(group == g, v, jnp.nan)
            for g in range(N_SIZE_GROUPS) for name, v in values.items()}


def _metal_slices(display: np.ndarray, threshold: float, volume_max: float) -> list[int]:
    slices = [k for k in range(display.shape[0]) if np.any(display[k] >= threshold)]
    if not slices:
        raise InputError(f"no metal found: no voxel >= {threshold:g} HU (max {volume_max:.0f}); nothing written. "
                         "Lower the metal threshold (--set infer.metal_threshold=...) if the metal is dimmer")
    return slices


def _fit(image: np.ndarray, size: int, fill: float) -> tuple[np.ndarray, tuple[slice, slice], tuple[slice, slice]]:
    """Centre `image (h, w)` on a size x size grid: (grid, slices into the grid, slices into the image)."""
    grid = np.full((size, size), fill, np.float32)
    target, source = [], []
    for n in image.shape:
        start = abs(size - n) // 2
        if n <= size:
            target.append(slice(start, start + n))
            source.append(slice(0, n))
        else:
            target.append(slice(0, size))
            source.append(slice(start, start + size))
    grid[target[0], target[1]] = image[source[0], source[1]]
    return grid, tuple(target), tuple(source)


def _zoom_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample `image` to exactly `shape` (bilinear; zoom's rounding is fixed by repeating the edge)."""
    out = ndimage.zoom(image, np.asarray(shape) / np.asarray(image.shape), order=1, mode="nearest")
    if out.shape != tuple(shape):
        fixed = np.empty(shape, out.dtype)
        h, w = min(shape[0], out.shape[0]), min(shape[1], out.shape[1])
        fixed[:h, :w] = out[:h, :w]
        fixed[h:, :] = fixed[h - 1 : h, :]
        fixed[:, w:] = fixed[:, w - 1 : w]
        out = fixed
    return out


def _correct_batch(correct, slices: np.ndarray, zoom: np.ndarray, size: int, threshold: float, batch_size: int):
    """Corrected display slices `(n, h, w)` of the metal slices `slices (n, h, w)`, in one compiled shape."""
    resampled = [ndimage.zoom(s, zoom, order=1, mode="nearest") for s in slices]
    fitted = [_fit(r, size, AIR_HU) for r in resampled]
    hu = np.stack([f[0] for f in fitted])[..., None]
    metal = (hu >= threshold).astype(np.float32)
    pad = batch_size - len(slices)
    out = np.asarray(correct(np.concatenate([hu, hu[:1].repeat(pad, 0)]),
                             np.concatenate([metal, metal[:1].repeat(pad, 0)])))[: len(slices), ..., 0]
    out = np.where(metal[..., 0] > 0, hu[..., 0], out)
    result = []
    for original, image, big, (_, target, source) in zip(slices, out, resampled, fitted):
        big = np.array(big)
        big[source[0], source[1]] = image[target[0], target[1]]
        inside = np.zeros(big.shape, np.float32)
        inside[source[0], source[1]] = 1.0
        inside = _zoom_to(inside, original.shape) > 0.5
        keep = ~inside | (original >= threshold)  # outside the grid, and the metal itself
        result.append(np.where(keep, original, _zoom_to(big, original.shape)))
    return np.stack(result)


def correct_volume(
    volume: Volume,
    correct: Callable[[np.ndarray, np.ndarray], np.ndarray],
    size: int,
    pixel_mm: float,
    metal_threshold: float = METAL_THRESHOLD_HU,
    batch_size: int = 4,
    progress: bool = True,
    notice: Callable[[str], None] = print,
) -> Volume:
    """Apply `correct(hu (B, size, size, 1), metal (B, size, size, 1)) -> hu` to the metal slices of
    `volume` (HU, 3-D) on a `size` x `size` grid of `pixel_mm` pixels; see the module docstring."""
    array = np.asarray(volume.array, np.float32)
    if array.ndim != 3:
        raise InputError(f"expected a 3-D CT volume in HU, got shape {array.shape}; pass one NIfTI or DICOM series")
    display, display_affine = to_display_slices(Volume(array, volume.affine, volume.header))
    spacing = np.linalg.norm(display_affine[:3, :3], axis=0)[1:]  # (row, column) mm
    chosen = _metal_slices(display, metal_threshold, float(array.max()))
    fov = np.asarray(display.shape[1:]) * spacing
    if np.any(fov > size * pixel_mm + 1e-6):
        notice(f"the slices span {fov[0]:.0f} x {fov[1]:.0f} mm, the network's grid {size * pixel_mm:.0f} mm: "
               "the centre is corrected, the outside keeps its values")
    output = display.copy()
    batches = [chosen[i : i + batch_size] for i in range(0, len(chosen), batch_size)]
    for batch in tqdm(batches, desc="correct", unit="batch", disable=not progress):
        output[batch] = _correct_batch(correct, display[batch], spacing / pixel_mm, size, metal_threshold, batch_size)
    return Volume(from_display_slices(output, volume.affine), volume.affine, volume.header)
