"""The CT derived sets ``ct-slices`` and ``chest-ct-structures``: builders, registration, entry points.

:func:`ct_slices` and :func:`chest_ct_structures` (also reachable as ``kfjax.data.derived.*``) read the
cache of :mod:`kfjax.data.cache`; the builders here run only when it is stale. Arrays are in the display
orientation of :mod:`kfjax.io.orientation` (:data:`ORIENTATION`), found from the NIfTI affine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from kfjax.data.cache import DerivedSet, build, register
from kfjax.errors import InputError
from kfjax.io.orientation import ORIENTATION, to_display_slices
from kfjax.units import FOV_MM, MU_WATER_70KEV, hu_to_mu

__all__ = ["ORIENTATION", "GROUPS", "crop_affine", "ct_slices", "chest_ct_structures", "build_ct_slices",
           "build_structures", "group_lut"]

#: grouped labels of chest-ct-structures: group id = index; a structure joins the first group one of
#: whose name prefixes starts its name; names matching none go to "other"
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("background", ()),
    ("bone", ("vertebrae_", "rib_", "sternum", "clavicula", "scapula", "humerus", "hip_", "femur", "sacrum",
              "skull", "carpal")),
    ("lung", ("lung_",)),
    ("heart", ("heart", "atrial_appendage")),
    ("vessel", ("aorta", "pulmonary_", "brachiocephalic", "subclavian", "common_carotid", "superior_vena",
                "inferior_vena", "portal_vein", "iliac_")),
    ("liver", ("liver",)),
    ("kidney", ("kidney_",)),
    ("spleen", ("spleen",)),
    ("airway", ("trachea",)),
    ("digestive", ("esophagus", "stomach", "duodenum", "small_bowel", "colon", "gallbladder", "pancreas")),
    ("muscle", ("gluteus", "autochthon", "iliopsoas")),
    ("other", ()),
)


def crop_affine(affine: np.ndarray, start, step=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Affine of a grid whose index ``n`` sits at old index ``start + n * step`` (a crop and/or resample)."""
    m = np.eye(4)
    m[:3, :3] = np.diag(np.asarray(step, np.float64))
    m[:3, 3] = start
    return np.asarray(affine, np.float64) @ m


def _disk(radius: int) -> np.ndarray:
    """In-plane disk structuring element of shape ``(1, 2r+1, 2r+1)`` (acts per slice on a volume)."""
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y <= radius * radius)[None]


def body_mask(hu: np.ndarray) -> np.ndarray:
    """Body of a CT volume ``(D, H, W)`` HU: > -400 HU, opened, largest 3-D component, holes filled per slice."""
    body = ndimage.binary_opening(hu > -400.0, structure=_disk(2))
    labels, n = ndimage.label(body)
    if n == 0:
        return body
    sizes = ndimage.sum_labels(body, labels, index=np.arange(1, n + 1))
    body = labels == (1 + int(np.argmax(sizes)))
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


def inpaint_soft_tissue(hu: np.ndarray, invalid: np.ndarray, soft=(-100.0, 200.0), blur: float = 1.5) -> np.ndarray:
    """Fill ``invalid`` pixels of each slice ``(D, H, W)`` with the nearest soft tissue (HU in ``soft``), smoothed."""
    out = hu.copy()
    for k in np.flatnonzero(invalid.any(axis=(1, 2))):
        rows, cols = np.nonzero(invalid[k])
        pad = 16  # enough surrounding tissue to draw from
        box = (slice(max(rows.min() - pad, 0), rows.max() + 1 + pad), slice(max(cols.min() - pad, 0), cols.max() + 1 + pad))
        sl, bad = hu[k][box], invalid[k][box]
        source = ~bad & (sl >= soft[0]) & (sl <= soft[1])
        if not source.any():
            out[k][box][bad] = 40.0
            continue
        idx = ndimage.distance_transform_edt(~source, return_distances=False, return_indices=True)
        filled = ndimage.gaussian_filter(sl[tuple(idx)], blur)
        out[k][box] = np.where(bad, filled, sl)
    return out


def split_positions(n: int, fractions, gap: int) -> dict[str, np.ndarray]:
    """Contiguous train/val/test blocks of ``n`` positions (in that order) with ``gap`` unused between blocks."""
    if len(fractions) != 3 or min(fractions) <= 0:
        raise InputError(f"split fractions must be 3 positive numbers (train, val, test), got {list(fractions)}")
    usable = n - 2 * gap
    f = np.asarray(fractions, np.float64) / np.sum(fractions)
    counts = np.floor(f * usable).astype(int)
    counts[0] += usable - counts.sum()
    if usable < 3 or counts.min() < 1:
        raise InputError(f"{n} slices cannot be split {list(fractions)} with a gap of {gap}; lower the gap")
    starts = np.cumsum([0, counts[0] + gap, counts[1] + gap])
    return {s: np.arange(a, a + c) for s, a, c in zip(("train", "val", "test"), starts, counts)}


LAYOUTS = ("blocks", "interleaved")


def interleaved_positions(n: int, fractions, gap: int = 1, period: int = 24) -> dict[str, np.ndarray]:
    """Train/val/test positions that repeat every ``period`` positions: a train block, ``gap`` unused, a val
    block, ``gap`` unused, a test block, ``gap`` unused; so every split spans the whole scan (no anatomy shift
    between them) and no two splits touch. With the defaults, 15/3/3 of every 24 slices of 2.5 mm."""
    one = split_positions(period - gap, fractions, gap)
    out = {}
    for split, positions in one.items():
        repeated = np.concatenate([positions + start for start in range(0, n, period)])
        out[split] = repeated[repeated < n]
    return out


def build_ct_slices(size, inpaint, gap, fractions, saturation_hu, dilate_mm):
    """Arrays and meta of ``ct-slices`` (see :func:`ct_slices`)."""
    from skimage.transform import resize

    if not 16 <= size <= 2048:
        raise InputError(f"ct-slices size must be between 16 and 2048 pixels, got {size} (256 and 416 are usual)")
    if gap < 0:
        raise InputError(f"the gap between splits must be >= 0 slices, got {gap}")
    hu, affine = to_display_slices(_load_chest_ct()["ct"])
    hu = np.maximum(hu.astype(np.float32), -1000.0)  # -2048 outside the scan circle, and HU < -1000 -> air
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    radius = max(1, int(round(dilate_mm / spacing[1])))
    invalid = ndimage.binary_dilation(hu >= saturation_hu, structure=_disk(radius))
    body = body_mask(hu)
    if inpaint:
        hu = inpaint_soft_tissue(hu, invalid)
    d, h, w = hu.shape
    out_shape = (d, size, size)
    hu_r = resize(hu, out_shape, order=1, anti_aliasing=size < h, preserve_range=True).astype(np.float32)
    body_r = resize(body.astype(np.float32), out_shape, order=1, anti_aliasing=False) >= 0.5
    invalid_r = resize(invalid.astype(np.float32), out_shape, order=1, anti_aliasing=False) > 0.0
    step = (1.0, h / size, w / size)
    new_affine = crop_affine(affine, (0.0, (step[1] - 1) / 2, (step[2] - 1) / 2), step)
    splits = split_positions(d, fractions, gap)
    pixel = [float(v) for v in np.linalg.norm(new_affine[:3, :3], axis=0)]
    arrays = {"hu": hu_r, "body": body_r, "invalid": invalid_r, "affine": new_affine,
              **{f"split_{k}": v for k, v in splits.items()}}
    meta = {"pixel_mm": pixel[1:], "slice_mm": pixel[0], "fov_mm": [float(h * spacing[1]), float(w * spacing[2])],
            "orientation": ORIENTATION, "invalid_pixels": int(invalid_r.sum()), "inpainted": bool(inpaint),
            "splits": {k: [int(v[0]), int(v[-1]) + 1] for k, v in splits.items()}}
    return arrays, meta


def _load_chest_ct():
    from kfjax.data.sources import load

    return load("chest-ct")


def group_lut(names: list[str]) -> np.ndarray:
    """Lookup table ``structure label -> group id`` (index into :data:`GROUPS`), shape ``(len(names),)``."""
    lut = np.full(len(names), len(GROUPS) - 1, np.uint8)
    lut[0] = 0
    for label, name in enumerate(names[1:], start=1):
        for g, (_, prefixes) in enumerate(GROUPS):
            if any(name.startswith(p) for p in prefixes):
                lut[label] = g
                break
    return lut


def build_structures():
    """Arrays and meta of ``chest-ct-structures`` (see :func:`chest_ct_structures`)."""
    data = _load_chest_ct()
    names = data["structures"]
    labels, affine = to_display_slices(data["mask"])
    groups = group_lut(names)[labels]
    present = [i for i in np.unique(labels) if names[i].startswith("vertebrae_")]
    centres = ndimage.center_of_mass(np.ones(labels.shape, np.float32), labels, present)
    ras = [(affine @ np.array([*c, 1.0]))[:3] for c in centres]
    order = np.argsort([-p[2] for p in ras], kind="stable")  # superior first
    landmarks = np.array([ras[i] for i in order], np.float64).reshape(-1, 3)
    lm_names = [names[present[i]].removeprefix("vertebrae_") for i in order]
    arrays = {"groups": groups, "labels": labels, "landmarks_ras": landmarks, "affine": affine}
    counts = np.bincount(groups.ravel(), minlength=len(GROUPS))
    meta = {"group_names": [g for g, _ in GROUPS], "group_voxels": [int(c) for c in counts],
            "landmark_names": lm_names, "structures": names, "orientation": ORIENTATION,
            "spacing_mm": [float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)]}
    return arrays, meta


# ---------------------------------------------------------------- the sets and their entry points

register(DerivedSet(
    "ct-slices", ("chest-ct",),
    f"axial chest-ct slices resampled to size^2 over the {FOV_MM:.0f} mm FOV: HU, μ at 70 keV (1/mm), body and "
    "invalid (contrast saturation) masks, train/val/test by slice position",
    {"size": 256, "inpaint": True, "gap": 4, "fractions": [0.7, 0.15, 0.15], "saturation_hu": 3000.0,
     "dilate_mm": 2.0},
    build_ct_slices, version=1,
))
register(DerivedSet(
    "chest-ct-structures", ("chest-ct",),
    "chest-ct label map grouped (bone, lung, heart, vessel, liver, kidney, spleen, ...), vertebra centroids "
    "as landmarks in RAS mm",
    {}, build_structures, version=1, compress=True,
))


def ct_slices(size: int = 256, inpaint: bool = True, gap: int = 4, fractions=(0.7, 0.15, 0.15),
              saturation_hu: float = 3000.0, dilate_mm: float = 2.0, layout: str = "blocks") -> dict[str, Any]:
    """All 133 axial slices of chest-ct on a ``size`` x ``size`` grid over the full 360 mm FOV (cached).

    HU below -1000 (and the -2048 outside the scan circle) become -1000. ``invalid`` marks the contrast
    saturation (HU >= ``saturation_hu``: about 6,200 voxels along the injection path, right subclavian and
    brachiocephalic veins and the superior vena cava, with real streaks) dilated by ``dilate_mm`` in-plane:
    exclude these pixels before simulating metal. With ``inpaint=True`` (default) they are also replaced by
    the nearest soft tissue (-100..200 HU), smoothed, so the returned HU no longer hold the saturation;
    ``invalid`` still says where it was.

    Returns a dict:
        hu (N, size, size, 1) float32 HU; mu (N, size, size, 1) float32 μ at 70 keV in 1/mm
        (:func:`kfjax.units.hu_to_mu` with :data:`kfjax.units.MU_WATER_70KEV`); body, invalid
        (N, size, size, 1) bool; affine (4, 4) index (d, r, c) -> RAS mm; pixel_mm (float,
        :data:`kfjax.units.FOV_MM` / size mm); slice_mm (2.5); splits: train/val/test -> slice indices,
        contiguous blocks inferior -> superior in that order with ``gap`` slices unused between blocks
        (``layout="blocks"``), or blocks repeating along the scan (``layout="interleaved"``, see
        :func:`interleaved_positions`; ``gap`` does not apply); meta (dict). Orientation: see
        :data:`kfjax.io.orientation.ORIENTATION`.
    """
    arrays, meta = build("ct-slices", size=size, inpaint=inpaint, gap=gap, fractions=list(fractions),
                         saturation_hu=saturation_hu, dilate_mm=dilate_mm)
    if layout not in LAYOUTS:
        raise InputError(f"slice split layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    splits = {s: arrays[f"split_{s}"] for s in ("train", "val", "test")}
    if layout == "interleaved":
        splits = interleaved_positions(len(arrays["hu"]), fractions)
    hu = arrays["hu"][..., None]
    return {"hu": hu, "mu": hu_to_mu(hu, MU_WATER_70KEV).astype(np.float32), "body": arrays["body"][..., None],
            "invalid": arrays["invalid"][..., None], "affine": arrays["affine"], "pixel_mm": meta["pixel_mm"][0],
            "slice_mm": meta["slice_mm"], "splits": splits,
            "meta": meta}


def chest_ct_structures() -> dict[str, Any]:
    """chest-ct with grouped labels and vertebra landmarks, in display orientation (groups cached).

    Returns a dict:
        ct (D, H, W) float32 HU (133, 512, 512; -2048 outside the scan circle set to -1000);
        labels (D, H, W) uint8, the 89 original structure labels (ids up to 118, ``structures[id]``);
        groups (D, H, W) uint8, index into ``group_names`` (background, bone, lung, heart, vessel, liver,
        kidney, spleen, airway, digestive, muscle, other); landmarks_ras (n, 3) float64 vertebra centroids
        in RAS world mm, superior first, named by ``landmark_names`` (e.g. "C5" ... "L3");
        affine (4, 4) index (d, r, c) -> RAS mm; spacing_mm (3,); meta.
    """
    arrays, meta = build("chest-ct-structures")
    hu, _ = to_display_slices(_load_chest_ct()["ct"])
    return {"ct": np.maximum(hu, -1000.0).astype(np.float32), **arrays, "group_names": meta["group_names"],
            "structures": meta["structures"], "landmark_names": meta["landmark_names"],
            "spacing_mm": meta["spacing_mm"], "meta": meta}
