"""Read a PNG image as a 2-D :class:`~kfjax.io.volume.Volume` (for landmark inference on a user's image).

Grayscale PNGs of 8 or 16 bits keep their stored values (0..255 or 0..65535); palette images are expanded;
RGB(A) images become luminance ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601; alpha ignored). A PNG holds no
geometry, so the affine is the identity: 1 mm per pixel, voxel (i, j) = (column, row) at world (x, y) =
(i, j) mm. The array follows the DICOM convention of :mod:`kfjax.io.dicom`: ``array[i, j]`` with ``i`` the
column and ``j`` the row, shape (W, H), so ``array.T`` is the image as a viewer shows it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kfjax.errors import InputError
from kfjax.io.volume import Volume

__all__ = ["load_png", "has_png_suffix", "LUMA_WEIGHTS"]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luminance of R, G, B


def has_png_suffix(path: str | os.PathLike) -> bool:
    """True for a name ending in .png (any case)."""
    return Path(path).suffix.lower() == ".png"


def load_png(path: str | os.PathLike, expect_ndim: int | None = None) -> Volume:
    """The PNG at ``path`` as a float32 Volume of shape (W, H) with the identity affine (see module doc).

    ``expect_ndim`` 2 passes; 3 gives (W, H, 1). Raises InputError (one line) for a missing, corrupt,
    animated (several frames) or otherwise unreadable file.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"cannot read '{path}': no such file; check the path")
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                raise InputError(f"cannot read '{path}': it is {img.format or 'not an image'}, not PNG; "
                                 "save it as PNG or pass DICOM/NIfTI")
            if getattr(img, "n_frames", 1) > 1:
                raise InputError(f"cannot read '{path}': an animated PNG with {img.n_frames} frames; "
                                 "pass a single 2-D image")
            img.load()
            array = _pixels(img)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"cannot read '{path}': damaged or unsupported PNG ({message}); re-export the image") from exc
    volume = Volume(np.ascontiguousarray(array.T), np.eye(4))
    if expect_ndim == 3:
        return volume.with_array(volume.array[..., None])
    if expect_ndim not in (None, 2):
        raise InputError(f"'{path}' is a 2-D image; it cannot be read as {expect_ndim}-D")
    return volume


def _pixels(img) -> np.ndarray:
    """(H, W) float32 gray values of an opened PIL image."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
        return np.asarray(img, dtype=np.float32)
    if mode in ("LA", "La"):
        return np.asarray(img.getchannel("L"), dtype=np.float32)
    if mode in ("1",):
        return np.asarray(img, dtype=np.float32)
    if mode in ("RGB", "RGBA", "RGBa", "RGBX"):
        rgb = np.asarray(img.convert("RGB") if mode != "RGB" else img, dtype=np.float32)
        return rgb @ np.asarray(LUMA_WEIGHTS, np.float32)
    raise InputError(f"PNG colour mode {mode} is not supported; save the image as grayscale or RGB PNG")
