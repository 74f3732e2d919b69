"""Metal-artifact-reduction data: CT slices x metal masks through the polychromatic simulator, cached.

The CNN-MAR / DuDoNet protocol (methods.md §0.3, §9) on data we have offline:
- slices: the real chest CT (`ct-slices`, split by slice position with gaps, `layout="blocks"`, or in blocks
  repeating along the scan, `layout="interleaved"`) or procedural CT anatomy
  (`kfjax.data.phantoms.ct_anatomy_2d`) when offline (the layout does not apply);
- masks: `kfjax.data.phantoms.metal_masks`: 90 training masks (each training slice gets `masks_per_slice` of
  them, drawn with the seed) and the 10 fixed test masks, every val/test slice with all 10, so results can be
  reported per size group (`METAL_TEST_GROUPS`, largest metal first);
- physics: `kfjax.physics.metal.make_metal_simulator` at a preset geometry (ADN's 256² by default). The pixel
  size is the slices' own (`kfjax.units.FOV_MM` / size, 360 mm / size, for the chest CT and the procedural
  slices) unless set, and the geometry (source distance 1075 pixels) scales with it.

`mar_data(split, ...)` returns host arrays (float32 unless stated):
    li_sinogram, gt_sinogram (B, V, D, 1)    LI-corrected and metal-free (monochromatic) line integrals
    metal_trace (B, V, D, 1) uint8           bins whose ray crosses metal
    ma_image, li_image, gt_image (B, H, W, 1) μ (1/mm): uncorrected FBP, FBP of LI, metal-free truth
    ref_sinogram (B, V, D, 1)                metal-free polychromatic, beam-hardening corrected, noise-free
    ref_image (B, H, W, 1)                   its FBP: the CNN-MAR reference reconstruction (μ, 1/mm)
    metal_mask (B, H, W, 1) uint8            metal pixels
    slice_index, mask_index, size_group (B,) int32   provenance; size_group -1 for training pairs
`training_slices` and `fresh_masks` serve training with a new metal mask, position and noise every step
(the simulator then runs inside the jitted step; `pair_arrays` names its outputs as above).
Sets are cached through `kfjax.data.cache` (`mar-ct`, `mar-phantom`, registered here), so `kfjax data fetch
mar-ct --param split=test` builds one ahead of training. Scoring maps μ to [0, 1] with
`kfjax.units.to_unit_range` (window [0, `kfjax.units.MU_RANGE`] 1/mm).
"""

from __future__ import annotations

import numpy as np

from kfjax.data import phantoms
from kfjax.data.cache import DerivedSet, build, register
from kfjax.data.ct import ct_slices
from kfjax.errors import InputError
from kfjax.units import FOV_MM

SPLITS = ("train", "val", "test")
ARRAYS = (
    "li_sinogram",
    "gt_sinogram",
    "metal_trace",
    "ma_image",
    "li_image",
    "gt_image",
    "metal_mask",
    "ref_sinogram",
    "ref_image",
    "slice_index",
    "mask_index",
    "size_group",
)
SIMULATED = ARRAYS[:9]  # what the simulator makes; the rest is provenance


def _slices(source: str, size: int, split: str, n_phantoms: int, seed: int,
            layout: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(hu (N, size, size, 1), slice ids (N,), pixel size mm) of one split."""
    if source == "ct":
        data = ct_slices(size=size, layout=layout)
        ids = np.asarray(data["splits"][split], np.int32)
        return data["hu"][ids].astype(np.float32), ids, float(data["pixel_mm"])
    count = n_phantoms if split == "train" else max(1, n_phantoms // 5)
    split_id = SPLITS.index(split)
    hu = [phantoms.ct_anatomy_2d(np.random.default_rng((seed, split_id, i)), size)[0] for i in range(count)]
    return np.stack(hu).astype(np.float32), np.arange(count, dtype=np.int32), FOV_MM / size


def pair_arrays(simulated: dict) -> dict:
    """The simulator's outputs (`kfjax.physics.metal.make_metal_simulator`) under this module's names."""
    names = {"gt_sinogram": "mono_sinogram", "ref_sinogram": "gt_sinogram", "ref_image": "poly_image"}
    return {k: simulated[names.get(k, k)] for k in SIMULATED}


def training_slices(source: str, geometry: str, n_phantoms: int = 64, seed: int = 0,
                    layout: str = "blocks") -> dict[str, np.ndarray]:
    """The training split's slices for fresh-mask training: hu (N, H, W, 1) float32 HU at the preset's size,
    slice_index (N,) int32, pixel_mm (float32, the slices' own)."""
    from kfjax.physics.geometry import preset

    hu, ids, pixel = _slices(source, preset(geometry).image_shape[0], "train", n_phantoms, seed, layout)
    return {"hu": hu, "slice_index": ids.astype(np.int32), "pixel_mm": np.float32(pixel)}


def fresh_masks(slice_index: np.ndarray, step: int, seed: int, size: int) -> np.ndarray:
    """One new metal mask per row `(B, size, size, 1)` float32 (`kfjax.data.phantoms.fresh_metal`), drawn from
    (seed, step, slice): the same step of a rerun (or of any process that loads the row) gets the same masks."""
    rows = [phantoms.fresh_metal(np.random.default_rng((seed, 11, step, int(i))), size) for i in slice_index]
    return np.stack(rows)[..., None].astype(np.float32)


def _pairs(split: str, n_slices: int, masks_per_slice: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(slice positions, mask ids) of every pair of the split."""
    if split == "train":
        rng = np.random.default_rng((seed, 7))
        masks = np.stack([rng.choice(90, masks_per_slice, replace=False) for _ in range(n_slices)])
        return np.repeat(np.arange(n_slices), masks_per_slice), masks.reshape(-1)
    return np.repeat(np.arange(n_slices), 10), np.tile(np.arange(10), n_slices)


def _build(
    source: str,
    split: str,
    geometry: str,
    material: str,
    masks_per_slice: int,
    pixel_size: float,
    n_phantoms: int,
    seed: int,
    slice_step: int,
    layout: str,
    batch: int = 8,
):
    import jax

    from kfjax.physics.geometry import preset
    from kfjax.physics.metal import MetalConfig, make_metal_simulator

    if split not in SPLITS:
        raise InputError(f"MAR split must be one of {', '.join(SPLITS)}, got {split!r}")
    fan = preset(geometry)
    size = fan.image_shape[0]
    hu, ids, slice_pixel = _slices(source, size, split, n_phantoms, seed, layout)
    hu, ids = hu[::slice_step], ids[::slice_step]
    pixel = pixel_size if pixel_size > 0 else slice_pixel
    simulate = make_metal_simulator(fan, MetalConfig(material=material, pixel_size=pixel))
    masks = phantoms.metal_masks(size, "train" if split == "train" else "test").astype(np.float32)
    positions, mask_ids = _pairs(split, len(ids), masks_per_slice, seed)
    keep = {k: [] for k in SIMULATED}
    key = jax.random.key(seed * 1000 + SPLITS.index(split))
    for start in range(0, len(positions), batch):
        sel = slice(start, start + batch)
        n = len(positions[sel])
        pad = batch - n  # one compiled shape: pad the last batch with repeats
        pos = np.concatenate([positions[sel], np.repeat(positions[sel][-1:], pad)])
        mid = np.concatenate([mask_ids[sel], np.repeat(mask_ids[sel][-1:], pad)])
        out = simulate(hu[pos], masks[mid][..., None], jax.random.fold_in(key, start))
        for k, value in pair_arrays(out).items():
            keep[k].append(np.asarray(value)[:n])
    arrays = {k: np.concatenate(v) for k, v in keep.items()}
    for k in ("metal_trace", "metal_mask"):
        arrays[k] = (arrays[k] > 0.5).astype(np.uint8)
    arrays["slice_index"] = ids[positions].astype(np.int32)
    arrays["mask_index"] = mask_ids.astype(np.int32)
    groups = phantoms.METAL_TEST_GROUPS[mask_ids] if split != "train" else np.full(len(mask_ids), -1)
    arrays["size_group"] = np.asarray(groups, np.int32)
    meta = {"pixel_mm": pixel, "n_pairs": len(positions), "geometry": geometry, "material": material}
    return arrays, meta


def _build_ct(split, geometry, material, masks_per_slice, pixel_size, seed, slice_step, layout):
    return _build("ct", split, geometry, material, masks_per_slice, pixel_size, 0, seed, slice_step, layout)


def _build_phantom(split, geometry, material, masks_per_slice, pixel_size, n_phantoms, seed, slice_step, layout):
    return _build("phantom", split, geometry, material, masks_per_slice, pixel_size, n_phantoms, seed, slice_step,
                  layout)


# slice_step: use every k-th slice of the split (quick runs); masks_per_slice: training pairs per slice;
# layout: how the chest CT's slices are split (kfjax.data.ct.LAYOUTS)
_COMMON = {
    "split": "train",
    "geometry": "adn",
    "material": "Ti",
    "masks_per_slice": 4,
    "pixel_size": 0.0,
    "seed": 0,
    "slice_step": 1,
    "layout": "blocks",
}
register(
    DerivedSet(
        "mar-ct",
        ("chest-ct",),
        "metal-artifact pairs from the real chest CT slices x CNN-MAR-style masks through the polychromatic "
        "simulator: LI/GT sinograms, metal trace, uncorrected/LI/GT images (μ, 1/mm), metal mask",
        dict(_COMMON),
        _build_ct,
        version=3,
    )
)
register(
    DerivedSet(
        "mar-phantom",
        (),
        "metal-artifact pairs from procedural CT anatomy (no files) x CNN-MAR-style masks; same arrays as mar-ct",
        dict(_COMMON, n_phantoms=64),
        _build_phantom,
        version=3,
    )
)


def mar_data(split: str, source: str = "ct", **params) -> dict[str, np.ndarray]:
    """The arrays of one split (see the module docstring); `source` "ct" (real chest CT) or "phantom"."""
    if source not in ("ct", "phantom"):
        raise InputError(f"MAR data source must be 'ct' or 'phantom', got {source!r}")
    arrays, meta = build(f"mar-{source}", split=split, **params)
    arrays = dict(arrays)
    arrays["pixel_mm"] = np.float32(meta["pixel_mm"])
    return arrays
