"""MR contrast synthesis of a user's volume, slice by slice, shared by pix2pix, the self-inverse network and LSDN.

`synthesize_volume(volume, translate, pixel_mm, ...)`:
1. the volume (3-D, one contrast, magnitude >= 0) is put in display order (axial slices, see
   `kfjax.io.orientation`) and divided by its `kfjax.data.synthesis.intensity_scale`, clipped to [0, 1];
2. each slice is resampled (linear) to the training pixel size `pixel_mm` and zero-padded to a multiple of
   `multiple` pixels; the network sees `2 u - 1` and the atlas coordinates (MNI mm / 100) of the resampled
   pixels, computed through the volume's affine;
3. `translate(images (B, H, W, 1), coords (B, H, W, 3)) -> (B, H, W, 1)` in [-1, 1] runs on batches of
   slices (progress bar); the result is mapped to [0, 1], multiplied by the *input's* scale (so the output
   has the input's intensity range; the target contrast's own scale is unknown for a user's scan), cropped,
   resampled back and returned with the input's affine and header.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from kfjax.data.synthesis import ATLAS_SCALE_MM, intensity_scale
from kfjax.errors import InputError
from kfjax.io import Volume
from kfjax.io.orientation import from_display_slices, to_display_slices

__all__ = ["synthesis_slices_of", "synthesize_volume"]


def _check(volume: Volume) -> np.ndarray:
    array = np.asarray(volume.array, np.float32)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        what = "a 2-D image" if array.ndim == 2 else f"shape {array.shape}"
        raise InputError(f"expected a 3-D MR volume of one contrast, got {what}; pass one NIfTI file or DICOM "
                         "series (split a multi-contrast 4-D file into one file per contrast)")
    if array.min() < 0:
        raise InputError(f"the volume has negative intensities (min {array.min():.3g}); synthesis expects an MR "
                         "magnitude image (>= 0), not a CT or a phase image")
    return array


def synthesis_slices_of(volume: Volume, pixel_mm: float, multiple: int):
    """Network inputs for a user's volume: `(images (D, H, W, 1) in [-1, 1], coords (D, H, W, 3), context)`.

    `context` holds what `synthesize_volume` needs to put the outputs back (scale, shapes, display affine).
    """
    array = _check(volume)
    display, affine = to_display_slices(Volume(array, volume.affine, volume.header))
    scale = intensity_scale(display)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)  # (slice, row, column) mm
    zoom = spacing[1:] / pixel_mm
    shape = tuple(max(int(round(n * z)), 1) for n, z in zip(display.shape[1:], zoom))
    padded = tuple(-(-n // multiple) * multiple for n in shape)
    unit = np.clip(display / scale, 0.0, 1.0)
    images = np.zeros((len(display), *padded, 1), np.float32)
    for k, image in enumerate(unit):
        images[k, : shape[0], : shape[1], 0] = 2.0 * _zoom_to(image, shape) - 1.0
    # original (fractional) index of each resampled pixel centre: scipy's zoom with grid_mode=True
    rows = (np.arange(padded[0]) + 0.5) * display.shape[1] / shape[0] - 0.5
    cols = (np.arange(padded[1]) + 0.5) * display.shape[2] / shape[1] - 0.5
    index = np.stack(np.meshgrid(np.arange(len(display)), rows, cols, indexing="ij"), axis=-1)
    coords = ((index @ affine[:3, :3].T + affine[:3, 3]) / ATLAS_SCALE_MM).astype(np.float32)
    context = {"scale": scale, "shape": shape, "display_shape": display.shape, "affine": volume.affine,
               "header": volume.header}
    return images, coords, context


def _zoom_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Linear resampling of a 2-D image to `shape` (pixel areas aligned: scipy zoom with grid_mode)."""
    if tuple(image.shape) == tuple(shape):
        return image.astype(np.float32)
    factors = [s / n for s, n in zip(shape, image.shape)]
    out = ndimage.zoom(image.astype(np.float32), factors, order=1, mode="nearest", grid_mode=True)
    return out[: shape[0], : shape[1]]


def synthesize_volume(
    volume: Volume,
    translate: Callable[[np.ndarray, np.ndarray], np.ndarray],
    pixel_mm: float,
    multiple: int = 16,
    batch_size: int = 4,
    progress: bool = True,
    check: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> Volume:
    """The synthesized contrast of `volume` (3-D, one MR contrast), same shape, affine and header; see the
    module docstring. `pixel_mm`: the training pixel size; `multiple`: pad slices to a multiple of this;
    `check(images, coords)`: called on the network inputs before any batch runs (raise to refuse the volume)."""
    images, coords, ctx = synthesis_slices_of(volume, pixel_mm, multiple)
    if check is not None:
        check(images, coords)
    out = np.zeros(images.shape, np.float32)
    starts = range(0, len(images), batch_size)
    for i in tqdm(starts, desc="synthesize", unit="batch", disable=not progress):
        j = min(i + batch_size, len(images))
        chunk, where = images[i:j], coords[i:j]
        if len(chunk) < batch_size:  # one compiled shape: pad the last batch by repeating its first slice
            fill = batch_size - len(chunk)
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], fill, 0)])
            where = np.concatenate([where, np.repeat(where[:1], fill, 0)])
        out[i:j] = np.asarray(translate(chunk, where), np.float32)[: j - i]
    h, w = ctx["shape"]
    unit = np.clip((out[:, :h, :w, 0] + 1.0) * 0.5, 0.0, 1.0)
    display_shape = ctx["display_shape"]
    result = np.stack([_zoom_to(image, display_shape[1:]) for image in unit]) * np.float32(ctx["scale"])
    return Volume(from_display_slices(result.astype(np.float32), ctx["affine"]), ctx["affine"], ctx["header"])
