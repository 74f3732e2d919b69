"""Procedural 3-D "liver-like" organs for DI2IN-AN, some with a missing boundary, and the real chest CT's liver.

Every case is a cube of `size`^3 voxels covering a fixed field of `FIELD_MM` (192 mm, the paper's 64 voxels
at 3 mm), so the voxel spacing is `FIELD_MM / size` mm (3 mm at 64^3, 6 mm at 32^3) and surface distances
in mm keep their meaning across sizes. Intensities are built in HU and scaled to [0, 1] through the
soft-tissue window `HU_WINDOW`, the same scaling `kfjax infer di2in_an` applies to a user's CT.

A case (:func:`organ_case`): fat background (-120..-60 HU) inside an elliptic body, air outside; the organ
is a mean shape (an ellipsoid thicker on one side, like the liver's right lobe) times a low-order
deformation of its radius (all monomials of degree 1..3 of the direction, i.e. spherical harmonics up to
l = 3), randomly scaled, rotated and shifted; 2-3 neighbouring organs (ellipsoids) touch it with a contrast
of `MIN_CONTRAST_HU`..60 HU; organ HU varies from case to case (40..140, contrast phases); a smooth
texture field over all soft organs, a smooth bias, partial-volume blur and Gaussian noise (8..20 HU).

Missing boundary: in a documented fraction of cases (`missing_fraction`, chosen per case index by a
golden-ratio sequence, so any prefix of a split holds that fraction up to one case) one neighbour touching
the organ has exactly the organ's HU: that side of the organ has no image boundary and only a shape prior
can place it. The flag `missing` says which cases these are.

It imitates none of real CT's texture, anatomy or noise spectrum: it makes the shape prior's job
measurable. The real case (:func:`real_liver_case`) is the chest CT's liver label (one patient, the
inferior part of the liver cut by the scan's field), resampled to the same spacing and cached.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from kfjax.data.cache import DerivedSet, build, register
from kfjax.errors import InputError

__all__ = ["FIELD_MM", "HU_WINDOW", "MIN_CONTACT", "MIN_CONTRAST_HU", "PARTS", "hu_to_unit", "is_missing", "organ_case",
           "organ_cases", "real_liver_case", "resample_linear", "spacing_mm"]

FIELD_MM = 192.0  # side of every procedural case in mm: 64 voxels at the paper's 3 mm
HU_WINDOW = (-200.0, 300.0)  # HU mapped to 0 and 1 (clipped): soft-tissue window
MIN_CONTRAST_HU = 25.0  # smallest |HU difference| between the organ and a neighbour with a visible boundary
MAX_CONTRAST_HU = 60.0  # largest such difference
MIN_CONTACT = 0.05  # the look-alike of a missing-boundary case covers at least this fraction of the organ's rim
PARTS = ("air", "fat", "organ", "neighbour")  # `parts` ids 0, 1, 2 and 3 + k for neighbour k
GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0  # spacing of the low-discrepancy sequence that picks missing-boundary cases
SPLITS = {"train": 0, "val": 1, "test": 2}


def spacing_mm(size: int) -> float:
    """Isotropic voxel size in mm of a `size`^3 case: FIELD_MM / size."""
    return FIELD_MM / size


def hu_to_unit(hu: np.ndarray) -> np.ndarray:
    """HU -> [0, 1] through HU_WINDOW (clipped), float32."""
    low, high = HU_WINDOW
    return np.clip((np.asarray(hu, np.float32) - low) / (high - low), 0.0, 1.0).astype(np.float32)


def resample_linear(array: np.ndarray, step, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Trilinear resampling that keeps voxel 0 in place: output voxel j samples input position j * step.

    `step` (per axis, or one number): input voxels per output voxel (new spacing / old spacing). `shape`
    defaults to every output voxel inside the input: floor((n - 1) / step) + 1. Edges repeat outward.
    """
    array = np.asarray(array, np.float32)
    step = np.broadcast_to(np.asarray(step, np.float64), (array.ndim,))
    if shape is None:
        shape = tuple(int(n) for n in np.floor((np.asarray(array.shape) - 1) / step + 1e-9) + 1)
    return ndimage.affine_transform(array, step, output_shape=shape, order=1, mode="nearest")


def is_missing(index: int, fraction: float) -> bool:
    """Whether case `index` of a split has a missing boundary: frac(index * GOLDEN) < fraction."""
    return bool((index * GOLDEN) % 1.0 < fraction)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation (3, 3) by at most `max_deg` degrees about a random axis (Rodrigues)."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _monomials(u: np.ndarray):
    """The monomials of degree 1..3 of unit directions `u (3, ...)`, one at a time (19 of them; together they
    span the spherical harmonics l = 1..3)."""
    x, y, z = u
    yield from (x, y, z, x * x, y * y, z * z, x * y, y * z, x * z)
    yield from (x**3, y**3, z**3, x * x * y, x * x * z, y * y * x, y * y * z, z * z * x, z * z * y, x * y * z)


class _Shape:
    """A star-shaped solid: centre c, rotation R, radius r(u) = ellipsoid(a)(u) (1 + taper u_2) (1 + sum c_k m_k(u))."""

    def __init__(self, centre, rotation, radii, taper=0.0, coefficients=None):
        self.centre = np.asarray(centre, np.float64)
        self.rotation, self.radii, self.taper = rotation, np.asarray(radii, np.float64), taper
        self.coefficients = np.zeros(19) if coefficients is None else coefficients

    def radius(self, u: np.ndarray) -> np.ndarray:
        """Radius along unit directions `u (3, ...)` in the shape's own frame."""
        ellipsoid = 1.0 / np.sqrt(sum((u[i] / self.radii[i]) ** 2 for i in range(3)))
        deform = 1.0
        if np.any(self.coefficients):
            deform = 1.0 + sum(c * m for c, m in zip(self.coefficients, _monomials(u)))
        return ellipsoid * (1.0 + self.taper * u[2]) * np.maximum(deform, 0.3)

    def radius_world(self, direction: np.ndarray) -> float:
        """Radius along a world direction `(3,)` (unit)."""
        return float(self.radius((self.rotation.T @ direction)[:, None])[0])

    def mask(self, grid: np.ndarray) -> np.ndarray:
        """bool `(S, S, S)` of the solid on a grid `(3, S, S, S)` of normalised coordinates."""
        offset = grid - self.centre.astype(grid.dtype)[:, None, None, None]
        local = np.tensordot(self.rotation.T.astype(grid.dtype), offset, axes=1)
        rho = np.sqrt((local**2).sum(0))
        u = local / np.maximum(rho, 1e-9)
        return rho < self.radius(u)


def _smooth(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean random field `(S, S, S)` with unit peak, correlated over `sigma` voxels."""
    field = ndimage.gaussian_filter(rng.standard_normal((size,) * 3, np.float32), sigma, truncate=3.0)
    return (field / (np.abs(field).max() + 1e-12)).astype(np.float32)


def organ_case(rng: np.random.Generator, size: int = 32, missing: bool = False) -> dict[str, Any]:
    """One procedural case.

    Returns a dict: image (S, S, S) float32 in [0, 1] (`hu_to_unit` of the noisy HU); label (S, S, S) bool,
    the organ; parts (S, S, S) uint8 (`PARTS`: 0 air, 1 fat, 2 organ, 3 + k neighbour k); part_hu (n_parts,)
    float32, the base HU of every part id (before texture, bias, blur and noise); missing (bool): one
    neighbour touching the organ has exactly the organ's HU.
    """
    if size < 8:
        raise InputError(f"organ cases need at least 8 voxels per side, got {size}")
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"))
    body = _Shape(rng.uniform(-0.05, 0.05, 3), _rotation(rng, 10), rng.uniform([1.0, 0.95, 1.15], [1.2, 1.1, 1.35]))
    organ = _Shape(rng.uniform(-0.15, 0.15, 3), _rotation(rng, 20),
                   np.array([0.5, 0.6, 0.7]) * rng.uniform(0.85, 1.1), taper=0.25,
                   coefficients=rng.normal(0.0, 0.08, 19))
    organ_mask = organ.mask(grid)
    rim = ndimage.binary_dilation(organ_mask) & ~organ_mask  # voxels face-adjacent to the organ
    organ_hu = rng.uniform(40.0, 140.0)
    part_hu = [-1000.0, rng.uniform(-120.0, -60.0), organ_hu]
    parts = np.where(body.mask(grid), 1, 0).astype(np.uint8)
    parts[organ_mask] = 2
    count = int(rng.integers(2, 4))
    placed = 0
    for _ in range(40):  # draws of a direction and a shape until `count` neighbours touch the organ
        if placed == count:
            break
        same = missing and placed == 0  # the first neighbour placed of a missing case is the look-alike
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        radii = rng.uniform(0.35, 0.5, 3) if same else rng.uniform(0.22, 0.4, 3)
        shape = _Shape(np.zeros(3), _rotation(rng, 90), radii)
        reach = shape.radius_world(-direction)
        shape.centre = organ.centre + direction * (organ.radius_world(direction) + reach * rng.uniform(0.55, 0.8))
        neighbour = shape.mask(grid) & (parts == 1)  # inside the body, over fat only: earlier parts are kept
        contact = (rim & neighbour).sum()
        if neighbour.sum() < 8 or contact == 0 or (same and contact < MIN_CONTACT * rim.sum()):
            continue  # outside the field or not in contact (the look-alike: too small a contact): draw another
        contrast = 0.0 if same else rng.choice([-1.0, 1.0]) * rng.uniform(MIN_CONTRAST_HU, MAX_CONTRAST_HU)
        parts[neighbour] = 3 + placed
        part_hu.append(organ_hu + contrast)
        placed += 1
    if missing and placed == 0:
        raise RuntimeError("could not place a touching neighbour; report this seed")  # never seen in practice
    part_hu = np.asarray(part_hu, np.float32)
    hu = part_hu[parts]
    soft = parts >= 2
    hu = hu + 12.0 * _smooth(rng, size, 0.06 * size) * soft  # texture (vessels) of every soft organ alike
    hu = hu + 10.0 * _smooth(rng, size, 0.3 * size) * (parts > 0)  # smooth bias over the body
    hu = ndimage.gaussian_filter(hu, 0.6)  # partial volume
    hu = hu + rng.uniform(8.0, 20.0) * rng.standard_normal(hu.shape)
    return {"image": hu_to_unit(hu), "label": parts == 2, "parts": parts, "part_hu": part_hu,
            "missing": bool(missing)}


def _build_cases(count: int, size: int, seed: int, split: str, missing_fraction: float):
    """Arrays and meta of ``organs3d`` (see :func:`organ_cases`)."""
    cases = [organ_case(np.random.default_rng((seed, SPLITS[split], i)), size, is_missing(i, missing_fraction))
             for i in range(count)]
    arrays = {"image": np.stack([c["image"] for c in cases]), "label": np.stack([c["label"] for c in cases]),
              "missing": np.asarray([c["missing"] for c in cases])}
    return arrays, {"spacing_mm": spacing_mm(size), "missing_cases": int(arrays["missing"].sum())}


register(DerivedSet(
    "organs3d", (),
    "procedural 3-D liver-like organs with touching neighbours, a fraction with a missing boundary: image in "
    "[0, 1] (HU window -200..300), organ label, missing flag; FIELD_MM / size mm voxels",
    {"count": 16, "size": 32, "seed": 0, "split": "train", "missing_fraction": 0.3}, _build_cases, version=1,
))


def organ_cases(count: int, size: int, seed: int, split: str, missing_fraction: float) -> dict[str, np.ndarray]:
    """`count` cases of a split (cached): image, label `(N, S, S, S, 1)` float32, missing `(N,)` float32 (1 = flag).

    Case i depends only on (seed, split, i), and whether it is a missing-boundary case only on (i, fraction),
    so a smaller training set is a prefix of a larger one.
    """
    if split not in SPLITS:
        raise InputError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    if not 0.0 <= missing_fraction <= 1.0:
        raise InputError(f"missing_fraction must be in [0, 1], got {missing_fraction}")
    if count < 1:
        raise InputError(f"need at least one case, got {count}")
    arrays, _ = build("organs3d", count=count, size=size, seed=seed, split=split,
                      missing_fraction=float(missing_fraction))
    return {"image": arrays["image"][..., None].astype(np.float32),
            "label": arrays["label"][..., None].astype(np.float32),
            "missing": arrays["missing"].astype(np.float32)}


# ---------------------------------------------------------------- the real chest CT's liver

def _build_real_liver(spacing_mm: float):
    """Arrays and meta of ``chest-ct-liver``: the chest CT and its liver label resampled to `spacing_mm`."""
    from kfjax.data.ct import chest_ct_structures

    d = chest_ct_structures()
    step = spacing_mm / np.asarray(d["spacing_mm"], np.float64)  # input voxels per output voxel, per axis
    hu = resample_linear(d["ct"], step)
    liver = d["groups"] == d["group_names"].index("liver")
    label = resample_linear(liver.astype(np.float32), step) >= 0.5
    affine = d["affine"].copy()
    affine[:3, :3] = affine[:3, :3] * step  # voxel (0, 0, 0) stays where it was; columns scaled to the new size
    meta = {"spacing_mm": [spacing_mm] * 3, "shape": list(hu.shape), "liver_voxels": int(label.sum())}
    return {"hu": hu, "label": label.astype(np.uint8), "affine": affine}, meta


register(DerivedSet(
    "chest-ct-liver", ("chest-ct",),
    "chest-ct (HU) and its liver label resampled to an isotropic spacing in mm (linear; label at 0.5): the "
    "real held-out case of di2in_an",
    {"spacing_mm": 3.0}, _build_real_liver, version=1, compress=True,
))


def real_liver_case(spacing: float = 3.0) -> dict[str, Any]:
    """The real chest CT's liver at `spacing` mm isotropic (cached): image (D, H, W) float32 in [0, 1]
    (`hu_to_unit`), label (D, H, W) bool, hu, affine (4, 4) index -> RAS mm, spacing_mm.

    One patient; the scan ends inside the liver (its inferior part is missing), so this is a held-out test
    of a model trained on procedural organs, not a measure of generalisation across patients.
    """
    if not spacing > 0:
        raise InputError(f"spacing must be positive (mm), got {spacing}")
    arrays, meta = build("chest-ct-liver", spacing_mm=float(spacing))
    return {"image": hu_to_unit(arrays["hu"]), "label": arrays["label"].astype(bool), "hu": arrays["hu"],
            "affine": arrays["affine"], "spacing_mm": float(spacing)}
