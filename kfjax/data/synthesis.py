"""Paired MR contrast synthesis data (T1w <-> T2w <-> PD) from ``mr-t1t2``: a volume, 2-D slices, atlas coordinates.

The pairs are *simulated* (spin-echo equations on the real MNI152 template's tissue maps, see
:mod:`kfjax.data.mr`); the relation between two contrasts is made location dependent on purpose (the
``location`` field of ``mr-t1t2``), so that knowing where a voxel is helps. No real paired T1/T2 data is
available offline: every table built on this says the pairs are simulated.

- **Grid.** The 1 mm display-oriented volume is padded to a multiple of ``PAD_MULTIPLE`` mm in every axis
  and block-averaged by ``downsample`` (2: 2 mm voxels, slices 96 x 80; 4: 4 mm, 48 x 40).
- **Intensities.** Each contrast is divided by :func:`intensity_scale` (the 99.5th percentile of its
  foreground) and clipped to [0, 1]; networks see ``2 u - 1`` in [-1, 1] (back with
  :func:`kfjax.units.to_unit`). The same scale
  function is applied to a user's volume at inference, and the output is multiplied back by the input's
  scale (:func:`kfjax.methods.common.synthesis`).
- **Atlas coordinates.** ``coords (..., 3)`` = world (MNI RAS) mm of each voxel centre / ``ATLAS_SCALE_MM``,
  about [-1, 1] over the brain; from the affine, so any volume in MNI space gets the same coordinates.
- **Splits.** Whole axial slabs, never neighbouring slices: the slices with enough brain are cut into
  ``N_SLABS`` contiguous slabs; ``TEST_SLABS`` are test, ``VAL_SLABS`` validation, the rest training, and
  one slice on each side of a held-out slab is dropped (``"gap"``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from kfjax.config import BaseDataConfig
from kfjax.data.ct import crop_affine
from kfjax.data.mr import CONTRASTS, mr_t1t2
from kfjax.data.pipeline import ArrayDataset
from kfjax.errors import ConfigError, InputError

__all__ = ["ATLAS_SCALE_MM", "PAD_MULTIPLE", "N_SLABS", "TEST_SLABS", "VAL_SLABS", "SynthesisDataConfig",
           "synthesis_grid", "intensity_scale", "atlas_coords", "slab_splits", "synthesis_volume", "synthesis_slices",
           "check_contrasts"]

ATLAS_SCALE_MM = 100.0  # atlas coordinates = MNI mm / this (about [-1, 1] over the brain)
PAD_MULTIPLE = 32  # pad the 1 mm volume to a multiple of this, so downsample 2 leaves sides divisible by 16
N_SLABS = 10  # contiguous axial slabs the brain slices are cut into
TEST_SLABS = (2, 5, 8)  # slab numbers held out for testing (inferior -> superior)
VAL_SLABS = (6,)  # slab numbers held out for validation
FOREGROUND = 0.05  # a voxel above this fraction of the image maximum counts as foreground for the scale
SCALE_PERCENTILE = 99.5  # percentile of the foreground that maps to 1
MIN_BRAIN = 0.25  # a slice is used when its brain area is >= this fraction of the largest one
MNI_BRAIN_SHAPE = (160, 190, 153)  # the 1 mm mr-t1t2 volume (display order, cropped to the brain + 4 mm)


@dataclasses.dataclass(frozen=True)
class SynthesisDataConfig(BaseDataConfig):
    source: str = "t1w"  # input contrast: t1w | t2w | pd
    target: str = "t2w"  # output contrast: t1w | t2w | pd
    downsample: int = 2  # block-average the 1 mm volume by this factor (2: 2 mm, 96 x 80 slices)
    field: float = 3.0  # tesla of the simulation (1.5 | 3.0)
    noise: float = 0.02  # Rician noise of the simulation (fraction of the brightest tissue)
    bias: float = 0.2  # strength of the per-contrast bias field
    location: float = 0.15  # strength of the location-dependent tissue contrast (0: a global mapping)
    data_seed: int = 0  # seed of the simulation (bias fields, contrast fields, noise), apart from the run seed
    batch_size: int = 8  # global batch


def check_contrasts(source: str, target: str) -> None:
    """ConfigError unless `source` and `target` are two different known contrasts."""
    for name, value in (("source", source), ("target", target)):
        if value not in CONTRASTS:
            raise ConfigError(f"unknown data.{name} '{value}'; choose one of {', '.join(CONTRASTS)}")
    if source == target:
        raise ConfigError(f"data.source and data.target are both '{source}'; choose two different contrasts")


def intensity_scale(image: np.ndarray) -> float:
    """The value that maps to 1: the 99.5th percentile of voxels above 5 % of the maximum (> 0).

    Raises InputError for an image with no positive voxel (nothing to normalise).
    """
    image = np.asarray(image, np.float32)
    top = float(image.max()) if image.size else 0.0
    if not np.isfinite(top) or top <= 0.0:
        raise InputError("the image has no positive intensity; give an MR magnitude image (values >= 0)")
    return float(np.percentile(image[image > FOREGROUND * top], SCALE_PERCENTILE))


def atlas_coords(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Atlas coordinates `(D, H, W, 3)` float32 of the voxel centres of a grid: world mm / ATLAS_SCALE_MM."""
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    world = index @ np.asarray(affine, np.float64)[:3, :3].T + np.asarray(affine, np.float64)[:3, 3]
    return (world / ATLAS_SCALE_MM).astype(np.float32)


def slab_splits(brain_area: np.ndarray) -> np.ndarray:
    """Split name per slice (`"train"`, `"val"`, `"test"`, `"gap"` or `"none"`) from its brain area `(D,)`."""
    split = np.full(len(brain_area), "none", dtype=object)
    used = np.flatnonzero(brain_area >= MIN_BRAIN * brain_area.max())
    slabs = np.array_split(used, N_SLABS)
    for k, rows in enumerate(slabs):
        split[rows] = "test" if k in TEST_SLABS else "val" if k in VAL_SLABS else "train"
    for k, rows in enumerate(slabs):  # one slice of margin inside the training slabs next to a held-out one
        if k in TEST_SLABS + VAL_SLABS:
            for edge in (rows[0] - 1, rows[-1] + 1):
                if 0 <= edge < len(split) and split[edge] == "train":
                    split[edge] = "gap"
    return split.astype(str)


def synthesis_grid(downsample: int) -> tuple[int, int]:
    """(H, W) of the axial slices at `downsample` (mm per voxel), without loading data: (96, 80) at 2."""
    if downsample not in (1, 2, 4, 8):
        raise ConfigError(f"data.downsample={downsample} is not one of 1, 2, 4, 8")
    return tuple(-(-n // PAD_MULTIPLE) * PAD_MULTIPLE // downsample for n in MNI_BRAIN_SHAPE[1:])


def _pad_and_downsample(volume: np.ndarray, factor: int) -> np.ndarray:
    """(D, H, W) 1 mm -> padded to PAD_MULTIPLE (zeros at the far end) and block-averaged by `factor`."""
    pad = [(0, -n % PAD_MULTIPLE) for n in volume.shape]
    v = np.pad(volume.astype(np.float32), pad)
    d, h, w = (n // factor for n in v.shape)
    return v.reshape(d, factor, h, factor, w, factor).mean(axis=(1, 3, 5)).astype(np.float32)


def synthesis_volume(cfg: Any) -> dict[str, Any]:
    """The whole simulated subject on the synthesis grid.

    Returns: one `(D, H, W)` float32 image in [0, 1] per contrast (t1w, t2w, pd), `mask (D, H, W)` bool
    (brain), `coords (D, H, W, 3)` atlas coordinates, `affine (4, 4)` index -> MNI mm, `split (D,)` slab
    split names, `scale {contrast: float}` (the intensity_scale each contrast was divided by), `meta`.
    """
    synthesis_grid(cfg.downsample)
    data = mr_t1t2(field=cfg.field, noise=cfg.noise, bias=cfg.bias, seed=cfg.data_seed, location=cfg.location)
    f = cfg.downsample
    brain = _pad_and_downsample((data["labels"] > 0).astype(np.float32), f) >= 0.5
    out: dict[str, Any] = {"mask": brain, "scale": {}}
    for c in CONTRASTS:
        image = _pad_and_downsample(data[c], f)
        out["scale"][c] = intensity_scale(image)
        out[c] = np.clip(image / out["scale"][c], 0.0, 1.0).astype(np.float32)
    out["affine"] = crop_affine(data["affine"], (f / 2 - 0.5,) * 3, (f,) * 3)
    out["coords"] = atlas_coords(out["affine"], brain.shape)
    out["split"] = slab_splits(brain.sum(axis=(1, 2)).astype(np.float64))
    out["meta"] = data["meta"]
    if brain.shape[1:] != synthesis_grid(f):
        raise ConfigError(f"the simulated volume's slices are {brain.shape[1:]}, not {synthesis_grid(f)}: "
                          "MNI_BRAIN_SHAPE is out of date with mr-t1t2")
    return out


def synthesis_slices(split: str, cfg: Any, volume: dict[str, Any] | None = None) -> ArrayDataset:
    """Axial slices of one split: `source`, `target` `(N, H, W, 1)` in [-1, 1], `mask (N, H, W, 1)` float32
    (1 = brain, the scored region), `coords (N, H, W, 3)` and `slice_index (N,)` int32 (slice on the grid)."""
    check_contrasts(cfg.source, cfg.target)
    if split not in ("train", "val", "test"):
        raise ConfigError(f"unknown split '{split}'; choose train, val or test")
    v = synthesis_volume(cfg) if volume is None else volume
    rows = np.flatnonzero(v["split"] == split)
    return ArrayDataset(
        source=(2.0 * v[cfg.source][rows] - 1.0)[..., None].astype(np.float32),
        target=(2.0 * v[cfg.target][rows] - 1.0)[..., None].astype(np.float32),
        mask=v["mask"][rows][..., None].astype(np.float32),
        coords=v["coords"][rows],
        slice_index=rows.astype(np.int32),
    )
