"""Landmark inference on a user's 2-D image, shared by every landmark method (`kfjax infer NAME`).

A method that declares ``Inference(output="landmarks")`` adds ``infer: LandmarkInferConfig =
LandmarkInferConfig()`` to its config and implements ``infer`` in one line:

    def infer(self, state, inputs, progress=True):
        return infer_landmarks(inputs["volume"], lambda x: self.predict(state, {"image": x})["landmarks"],
                               self.config.data.size, self.landmark_names, self.config.infer)

:func:`infer_landmarks` takes the 2-D image out of the Volume (a PNG, one DICOM slice or a NIfTI with one
slice), scales its intensities to [0, 1] (``infer.low``/``infer.high`` percentiles, optionally inverted),
pads it to a square and resamples it
to the training grid (:class:`GridMap`), runs the model and maps the (row, col) coordinates back to the
input's pixels and, through its affine, to world mm. :func:`write_landmarks` writes the JSON and an
overlay PNG next to it (``landmarks.json`` -> ``landmarks.png``), each under a temporary name, then renamed.

Display convention (:mod:`kfjax.io.dicom`): a 2-D array ``a[i, j]`` of a Volume is shown as ``a.T``, so the
image row is the voxel index ``j`` and the column is ``i``; :func:`kfjax.io.png.load_png` stores PNGs so.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kfjax.errors import InputError
from kfjax.io import Volume

__all__ = ["GridMap", "LandmarkInferConfig", "LandmarkResult", "display_image", "normalise", "infer_landmarks",
           "write_landmarks", "overlay_path"]

PERCENTILES = (0.5, 99.5)  # default intensity percentiles mapped to 0 and 1 before the model sees an image


@dataclasses.dataclass(frozen=True)
class LandmarkInferConfig:
    """The `infer` section of a landmark method (`kfjax infer NAME --set infer.invert=true`)."""

    low: float = PERCENTILES[0]  # intensity percentile of the input mapped to 0
    high: float = PERCENTILES[1]  # intensity percentile of the input mapped to 1
    invert: bool = False  # flip intensities (1 - x) for images where dense tissue is dark (a negative display)


def display_image(volume: Volume) -> np.ndarray:
    """The image (H, W) float32 of a 2-D Volume as shown (array.T); trailing axes of length 1 are dropped.

    Raises InputError for anything that is not one 2-D image.
    """
    array = np.asarray(volume.array)
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2 or min(array.shape) < 2:
        raise InputError(f"landmark inference needs one 2-D image, got an array of shape {volume.array.shape}; "
                         "pass a PNG, a single DICOM slice or a NIfTI file holding one slice")
    image = array.T.astype(np.float32)
    if not np.all(np.isfinite(image)):
        raise InputError("the input image contains NaN or Inf; pass an image with finite values")
    return image


def normalise(image: np.ndarray, percentiles=PERCENTILES, invert: bool = False) -> np.ndarray:
    """Intensities scaled so the ``percentiles`` map to 0 and 1, clipped to [0, 1] (float32); 1 - x if
    ``invert``. InputError for percentiles outside 0..100 or not increasing."""
    lo, hi = (float(p) for p in percentiles)
    if not 0.0 <= lo < hi <= 100.0:
        raise InputError(f"intensity percentiles must satisfy 0 <= low < high <= 100, got {lo}, {hi}; "
                         "set infer.low and infer.high")
    low, high = np.percentile(image, [lo, hi])
    out = np.clip((image - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    return (1.0 - out if invert else out).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class GridMap:
    """An (H, W) image zero-padded to a centred square of side max(H, W), resampled to ``size`` x ``size``.

    Pixel centres map as in ``skimage.transform.resize``: training coordinate q is input coordinate
    ``(q + 0.5) * scale - 0.5 - pad`` per axis, ``scale = max(H, W) / size``.
    """

    shape: tuple[int, int]  # input (H, W)
    size: int  # training grid side

    @property
    def side(self) -> int:
        return max(self.shape)

    @property
    def pad(self) -> np.ndarray:
        """Rows and columns (top, left) added before the image."""
        return (self.side - np.asarray(self.shape)) // 2

    @property
    def scale(self) -> float:
        return self.side / self.size

    def to_training(self, image: np.ndarray) -> np.ndarray:
        """Image (H, W) -> (size, size) float32 (antialiased when shrinking)."""
        from skimage.transform import resize

        if image.shape != self.shape:
            raise InputError(f"image shape {image.shape} is not the grid map's {self.shape}")
        (top, left), (h, w) = self.pad, self.shape
        square = np.zeros((self.side, self.side), np.float32)
        square[top : top + h, left : left + w] = image
        out = resize(square, (self.size, self.size), order=1, anti_aliasing=self.scale > 1, preserve_range=True)
        return out.astype(np.float32)

    def to_input(self, coords) -> np.ndarray:
        """(..., 2) training (row, col) -> input (row, col) pixels (float64)."""
        return (np.asarray(coords, np.float64) + 0.5) * self.scale - 0.5 - self.pad

    def to_grid(self, coords) -> np.ndarray:
        """(..., 2) input (row, col) -> training (row, col) pixels (inverse of :meth:`to_input`)."""
        return (np.asarray(coords, np.float64) + 0.5 + self.pad) / self.scale - 0.5


@dataclasses.dataclass(frozen=True)
class LandmarkResult:
    """What a landmark method's ``infer`` returns; :func:`write_landmarks` writes it."""

    names: tuple[str, ...]  # one per landmark
    pixel: np.ndarray  # (K, 2) (row, col) in the input image as displayed
    world: np.ndarray  # (K, 3) RAS mm through the input's affine
    image: np.ndarray  # (H, W) the input image as displayed (for the overlay)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # method-specific JSON values (a view class)

    @property
    def voxel(self) -> np.ndarray:
        """(K, 3) voxel indices (i, j, k) = (col, row, 0)."""
        return np.stack([self.pixel[:, 1], self.pixel[:, 0], np.zeros(len(self.pixel))], -1)


def infer_landmarks(volume: Volume, predict: Callable[[np.ndarray], Any], size: int, names: tuple[str, ...],
                    settings: LandmarkInferConfig | None = None,
                    extra: dict[str, Any] | None = None) -> LandmarkResult:
    """Landmarks of a user's 2-D image.

    predict: (1, size, size, 1) float32 image in [0, 1] -> (1, K, 2) (row, col) on the training grid.
    settings: the method's `infer` section (default :class:`LandmarkInferConfig`); extra: JSON values to
    add to the output (a predicted view class). Returns a :class:`LandmarkResult` in the input's pixels and
    world mm.
    """
    settings = settings or LandmarkInferConfig()
    image = display_image(volume)
    grid = GridMap(image.shape, int(size))
    x = grid.to_training(normalise(image, (settings.low, settings.high), settings.invert))[None, ..., None]
    coords = np.asarray(predict(x), np.float64)
    if coords.shape != (1, len(names), 2):
        raise ValueError(f"predict returned {coords.shape}, expected (1, {len(names)}, 2)")
    pixel = grid.to_input(coords[0])
    voxel = np.stack([pixel[:, 1], pixel[:, 0], np.zeros(len(pixel)), np.ones(len(pixel))], -1)
    world = (voxel @ np.asarray(volume.affine, np.float64).T)[:, :3]
    return LandmarkResult(tuple(names), pixel, world, image, dict(extra or {}))


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def overlay_path(out: str | os.PathLike) -> Path:
    """The overlay PNG written next to the JSON ``out`` (same name, .png)."""
    return Path(out).with_suffix(".png")


def write_landmarks(result: LandmarkResult, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out`` (.json: names, pixel (row, col), voxel, world mm, image shape, extra) and the overlay
    PNG next to it; both atomically. Returns (json path, png path)."""
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise InputError(f"landmarks are written as JSON; --out '{out}' must end in .json")
    record = {
        "names": list(result.names),
        "pixel_row_col": np.round(result.pixel, 3).tolist(),
        "voxel_ijk": np.round(result.voxel, 3).tolist(),
        "world_mm": np.round(result.world, 3).tolist(),
        "image_shape": list(result.image.shape),
        "convention": "pixel (row, col) of the image as displayed (array.T), pixel centres at integers; "
                      "voxel (i, j, k) = (col, row, 0); world = affine @ voxel, RAS mm",
        **result.extra,
    }
    png = overlay_path(out)
    _atomic(out, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    _atomic(png, lambda tmp: _overlay(result, tmp))
    return out, png


def _overlay(result: LandmarkResult, path: Path) -> None:
    """The image with a numbered marker per landmark and a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = result.image.shape
    fig, ax = plt.subplots(figsize=(6, 6 * h / w + 0.6))
    low, high = np.percentile(result.image, PERCENTILES)
    ax.imshow(result.image, cmap="gray", vmin=low, vmax=high if high > low else low + 1)
    colours = plt.get_cmap("tab10")
    for k, (name, (r, c)) in enumerate(zip(result.names, result.pixel)):
        ax.plot(c, r, "+", color=colours(k % 10), ms=12, mew=2, label=f"{k}: {name}")
        ax.annotate(str(k), (c, r), xytext=(4, 4), textcoords="offset points", color=colours(k % 10))
    ax.legend(loc="lower right", fontsize=7, framealpha=0.6)
    ax.set_axis_off()
    fig.savefig(path, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
