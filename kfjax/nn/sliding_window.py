"""Sliding-window inference: apply a network trained on patches to a larger image or volume.

Windows of the training patch size step over the input with a given overlap (the last window of each axis is
flush with the far edge, so every voxel is covered); batches of windows go through one compiled function (the
last batch is padded, so there is one compiled shape); the outputs are blended with Gaussian weights (centre
voxels count more than edge voxels, whose receptive field is cut by the window border) or uniform weights.
The window grid and the Gaussian (σ = patch / 8) follow MONAI's `sliding_window_inference`, whose users know
them.

    probs = sliding_window(volume[None, ..., None], (64, 64, 64), lambda x: model(x), overlap=0.5)
    # (1, D, H, W, 1) -> (1, D, H, W, C_out), numpy float32
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np
from tqdm import tqdm

from kfjax.errors import InputError

GAUSSIAN_SIGMA_SCALE = 0.125  # σ of the blending Gaussian as a fraction of the window side (MONAI's default)
WEIGHT_FLOOR = 1e-3  # smallest blending weight relative to the centre's, so every covered voxel has weight


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices of windows of `patch` along an axis of `size` (size >= patch), the last one flush with
    the end. The step is int(patch * (1 - overlap)), at least 1."""
    if size <= patch:
        return [0]
    step = max(int(patch * (1.0 - overlap)), 1)
    count = math.ceil((size - patch) / step) + 1
    return sorted({min(i * step, size - patch) for i in range(count)})


def blending_weights(patch: tuple[int, ...], mode: str) -> np.ndarray:
    """Per-voxel weights of one window, shape `patch`, maximum 1: "gaussian" or "constant"."""
    if mode == "constant":
        return np.ones(patch, np.float32)
    if mode != "gaussian":
        raise InputError(f"unknown blending mode '{mode}'; use 'gaussian' or 'constant'")
    weights = np.ones((), np.float64)
    for side in patch:
        x = np.arange(side, dtype=np.float64) - (side - 1) / 2.0
        sigma = GAUSSIAN_SIGMA_SCALE * side
        weights = np.multiply.outer(weights, np.exp(-0.5 * (x / sigma) ** 2))
    weights = weights / weights.max()
    return np.maximum(weights, WEIGHT_FLOOR).astype(np.float32)


def _check(inputs: np.ndarray, patch: tuple[int, ...], overlap: float, batch_size: int) -> None:
    if inputs.ndim != len(patch) + 2:
        raise InputError(f"inputs of shape {inputs.shape} do not match a {len(patch)}-D patch {patch};"
                         f" pass (B, *spatial, C) with {len(patch)} spatial axes")
    if any(p < 1 for p in patch):
        raise InputError(f"patch sides must be positive, got {patch}")
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if not np.all(np.isfinite(inputs)):
        raise InputError("the input holds NaN or infinite values; clean or mask them before inference")


def sliding_window(inputs, patch: tuple[int, ...], predict: Callable, overlap: float = 0.25,
                   mode: str = "gaussian", batch_size: int = 4, progress: bool = False,
                   pad_value: float = 0.0) -> np.ndarray:
    """Blend `predict` over windows of `patch` covering `inputs`.

    inputs: (B, *S, C) array. predict: (n, *patch, C) -> (n, *patch, C_out), e.g. a jitted model; called with
    n = batch_size every time. An axis shorter than its patch side is padded with `pad_value` and cropped back.
    Returns (B, *S, C_out) float32 (numpy).
    """
    x = np.asarray(inputs, np.float32)
    patch = tuple(int(p) for p in patch)
    _check(x, patch, overlap, batch_size)
    spatial = x.shape[1:-1]
    short = [max(p - s, 0) for s, p in zip(spatial, patch)]
    if any(short):
        x = np.pad(x, [(0, 0)] + [(0, d) for d in short] + [(0, 0)], constant_values=pad_value)
    grid = x.shape[1:-1]
    weights = blending_weights(patch, mode)[..., None]
    corners = [(b, *start) for b in range(x.shape[0])
               for start in itertools.product(*(window_starts(s, p, overlap) for s, p in zip(grid, patch)))]
    total = None
    norm = np.zeros((x.shape[0], *grid, 1), np.float32)
    for first in tqdm(range(0, len(corners), batch_size), desc="windows", unit="batch", disable=not progress):
        chunk = corners[first:first + batch_size]
        boxes = [(c[0], *(slice(s, s + p) for s, p in zip(c[1:], patch))) for c in chunk]
        windows = np.stack([x[box] for box in boxes])
        if len(chunk) < batch_size:  # one compiled shape: pad the last batch with copies of its first window
            windows = np.concatenate([windows, np.repeat(windows[:1], batch_size - len(chunk), axis=0)])
        out = np.asarray(predict(windows), np.float32)
        if out.shape[:-1] != windows.shape[:-1]:
            raise InputError(f"predict returned {out.shape} for windows {windows.shape}; it must keep the"
                             " batch and spatial shape (B, *patch, C_out)")
        if total is None:
            total = np.zeros((x.shape[0], *grid, out.shape[-1]), np.float32)
        for box, y in zip(boxes, out):
            total[box] += y * weights
            norm[box] += weights
    result = total / norm
    return result[(slice(None), *(slice(0, s) for s in spatial), slice(None))]
