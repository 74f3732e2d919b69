"""Procedural left atrium with pulmonary veins, and ICE-like fan images sliced at catheter poses (methods.md §4).

World coordinates are mm along the array axes: voxel ``(d, h, w)`` of a volume with isotropic `spacing` sits
at ``(d, h, w) * spacing``; axis 0 runs inferior -> superior, axis 1 anterior -> posterior, axis 2 from the
patient's right to the patient's left (the display orientation of :mod:`kfjax.data.derived`).

Anatomy (:func:`left_atrium`): labels `STRUCTURES` (0 background, 1 LA body, 2 LAA, 3-6 the four pulmonary
veins). The LA body is an ellipsoid (about 42 x 36 x 56 mm, S x P x L) with a random low-order deformation
(:class:`kfjax.data.organs3d._Shape`); the LAA is a curved, tapering, lobulated finger leaving the LA
anterior-superior-left and curling down; each vein is a tapering tube (radius 5-7.5 mm, 18-30 mm long) leaving
posteriorly, the left pair to the left, the right pair to the right, the superior pair up, the inferior down,
with a side branch in `BRANCH_PROBABILITY` of them. Tubes are chains of balls painted only over background, so
each starts at the LA wall and touches the LA body (a stray voxel cut off at an ostium joins the LA body). A
right atrium (blood, label 0) lies right-anterior of the LA across a one-voxel septum; the catheter tip sits
inside it, at least `CLEARANCE_MM` from every labelled voxel, its axis roughly superior (the catheter comes up
the inferior vena cava). Tissue classes `TISSUES`
(blood, a one-voxel wall rim around all blood, surrounding tissue with a smooth fat/soft-tissue texture) give a
CT-like volume (contrast-enhanced blood, `CT_WINDOW_HU` scaled to [0, 1]) and an echogenicity volume.

Imaging (:func:`catheter_sweep`, :func:`ice_frames`): a side-looking phased array, so the image plane holds
the catheter axis (the image's lateral axis, columns) and the beam direction (depth, rows; apex at the top
centre). Rotating the catheter turns the plane about its axis: a sweep of `n_frames` planes over `sweep_deg`
around the direction of the LA, clockwise seen from the handle, with per-frame jitter of the plane (1.5 deg) and
tip (0.7 mm). The poses are exact (the position sensor). A pose is the plane-to-world matrix: plane point
``(x lateral, y depth, 0)`` mm, apex at the origin, maps to world mm. A B-mode frame: echogenicity resliced on
the plane, near-field clutter and catheter ring-down at the apex, an imperfect depth gain, speckle and log
compression (the helpers of :mod:`kfjax.data.ultrasound`), zero outside the 90-degree sector. Pixels are
square (:func:`pixel_spacing`), so in a square frame the sector is as wide as the frame and the rows below
`depth_mm` stay empty (about 1 mm pixels at 128 x 128 and the default 90 mm depth).

It does not imitate: real cardiac anatomy or motion (no mitral valve, ridges, ostial funnels or beating),
beam physics (refraction, shadowing, side lobes, angle-dependent specular echoes, depth-dependent lateral
resolution; speckle lives on the Cartesian pixel grid), sensor error, or the paper's 150 patients.

    case = ice_case(seed=0)                  # anatomy, poses (K, 4, 4), image / label (K, H, W)
    sparse, observed = place_frames(case["image"], case["poses"], (64,) * 3, 2.0, case["pixel_mm"], case["fan"])
"""

from __future__ import annotations

from math import comb
from typing import Any

import numpy as np
from scipy import ndimage

from kfjax.data.organs3d import _rotation, _Shape, _smooth
from kfjax.data.ultrasound import DYNAMIC_RANGE_DB, _speckle
from kfjax.errors import InputError

__all__ = ["STRUCTURES", "TISSUES", "catheter_sweep", "fan_mask", "ice_case", "ice_frames", "left_atrium",
           "pixel_spacing", "place_frames", "plane_points", "reslice"]

STRUCTURES = ("background", "la_body", "laa", "lipv", "lspv", "ripv", "rspv")  # label id = index
TISSUES = ("surrounding", "wall", "blood")  # `tissue` ids = index
MIN_FIELD_MM = 112.0  # smallest field (shape * spacing) per axis that holds the LA, veins and catheter
CLEARANCE_MM = 8.0  # least distance from the catheter tip to any labelled voxel
BRANCH_PROBABILITY = 0.4  # chance that a vein has a side branch
FAN_HALF_ANGLE = np.deg2rad(45.0)  # sector half opening (radians)
DEPTH_MM = 90.0  # default imaging depth
CT_WINDOW_HU = (-200.0, 600.0)  # HU mapped to 0 and 1 (clipped) in `ct`
ECHO = (0.05, 1.0, 0.001)  # mean echogenicity (relative backscattered power) of each of TISSUES
JITTER_DEG, JITTER_MM = 1.5, 0.7  # per-frame plane tilt (uniform, at most) and tip displacement (sigma)
_ANATOMY, _SWEEP, _FRAMES = 0, 1, 2  # random sub-streams of (seed, index)
# vein -> (ostium direction, course direction) in world (superior, posterior, left) components
_VEINS = {"lipv": ((-0.45, 0.6, 0.65), (-0.3, 0.45, 0.85)), "lspv": ((0.55, 0.55, 0.65), (0.35, 0.4, 0.85)),
          "ripv": ((-0.45, 0.55, -0.7), (-0.3, 0.45, -0.85)), "rspv": ((0.55, 0.5, -0.65), (0.35, 0.4, -0.85))}


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _check_grid(shape, spacing, min_field_mm: float = 0.0) -> tuple[tuple[int, int, int], float]:
    if np.ndim(shape) != 1 or len(shape) != 3 or not all(isinstance(n, (int, np.integer)) and n > 0 for n in shape):
        raise InputError(f"shape must be three positive integers (D, H, W) in voxels, got {shape!r}")
    if not np.isscalar(spacing) or not np.isfinite(spacing) or spacing <= 0:
        raise InputError(f"spacing must be one positive number (mm per voxel, isotropic), got {spacing!r}")
    field = min(shape) * float(spacing)
    if field < min_field_mm:
        raise InputError(f"the field is {field:g} mm along its shortest axis (shape {tuple(shape)} x {spacing} mm); "
                         f"the atrium, veins and catheter need at least {min_field_mm:g} mm: raise shape or spacing")
    return tuple(int(n) for n in shape), float(spacing)


def _check_frame(frame_shape, depth_mm: float | None = None) -> tuple[int, int]:
    if np.ndim(frame_shape) != 1 or len(frame_shape) != 2 or \
            not all(isinstance(n, (int, np.integer)) and n >= 16 for n in frame_shape):
        raise InputError(f"frame_shape must be two integers (H, W) of at least 16 pixels, got {frame_shape!r}")
    if depth_mm is not None and (not np.isscalar(depth_mm) or not np.isfinite(depth_mm) or depth_mm <= 0):
        raise InputError(f"depth_mm must be a positive imaging depth in mm, got {depth_mm!r}")
    return int(frame_shape[0]), int(frame_shape[1])


def _check_poses(poses) -> np.ndarray:
    """`poses` as float64 `(4, 4)` or `(K, 4, 4)`, after checking that each is a rigid transform."""
    poses = np.asarray(poses, np.float64)
    if poses.ndim not in (2, 3) or poses.shape[-2:] != (4, 4) or not np.all(np.isfinite(poses)):
        raise InputError(f"poses must be finite 4x4 plane-to-world matrices, (4, 4) or (K, 4, 4), got {poses.shape}")
    rot = poses[..., :3, :3]
    rigid = np.allclose(np.swapaxes(rot, -1, -2) @ rot, np.eye(3), atol=1e-5) and np.all(np.linalg.det(rot) > 0)
    if not rigid or not np.allclose(poses[..., 3, :], [0.0, 0.0, 0.0, 1.0]):
        raise InputError("poses must be rigid: a rotation in [:3, :3] (orthonormal, det +1), translation in mm in "
                         "[:3, 3] and last row (0, 0, 0, 1); build them with catheter_sweep")
    return poses


# ---------------------------------------------------------------- anatomy

def _bezier(control, step_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Points `(n, 3)` mm about `step_mm` apart on the Bezier curve of `control (m, 3)`, and their t `(n,)`."""
    control = np.asarray(control, np.float64)
    length = np.linalg.norm(np.diff(control, axis=0), axis=1).sum()  # the control polygon bounds the arc length
    t = np.linspace(0.0, 1.0, max(int(np.ceil(length / step_mm)) + 1, 2))
    m = len(control) - 1
    basis = np.stack([comb(m, k) * t**k * (1.0 - t) ** (m - k) for k in range(m + 1)], axis=1)
    return basis @ control, t


def _paint(labels: np.ndarray, spacing: float, centres, radii, value: int) -> None:
    """Set the voxels of `labels` that are still 0 and lie within `radii[i]` mm of `centres[i]` (mm) to `value`."""
    shape = np.asarray(labels.shape)
    for c, r in zip(centres, radii):
        lo = np.maximum(np.floor((c - r) / spacing).astype(int), 0)
        hi = np.minimum(np.ceil((c + r) / spacing).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        axes = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        d2 = sum((ax * spacing - c[i]) ** 2 for i, ax in enumerate(axes))
        box = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        box[(d2 < r * r) & (box == 0)] = value


def _vein(rng, labels, spacing, body: _Shape, name: str) -> None:
    """Paint vein `name` (and, with BRANCH_PROBABILITY, a side branch) leaving the LA body."""
    ostium, course = (_rotation(rng, deg) @ _unit(v) for v, deg in zip(_VEINS[name], (8.0, 12.0)))
    radius, length = rng.uniform(5.0, 7.5), rng.uniform(18.0, 30.0)
    surface = body.centre + body.radius_world(ostium) * ostium
    bend = surface + 0.4 * length * ostium
    points, t = _bezier([body.centre + 0.6 * (surface - body.centre), bend, bend + 0.6 * length * course])
    value = STRUCTURES.index(name)
    _paint(labels, spacing, points, radius * (1.0 - 0.3 * t), value)
    if rng.uniform() < BRANCH_PROBABILITY:
        k = int(np.clip(rng.uniform(0.55, 0.8) * len(t), 1, len(t) - 2))
        tangent = _unit(points[k + 1] - points[k - 1])
        side = _unit(np.cross(tangent, rng.standard_normal(3)))
        angle = np.deg2rad(rng.uniform(30.0, 50.0))
        branch, s = _bezier([points[k], points[k] + rng.uniform(10.0, 16.0) *
                             (np.cos(angle) * tangent + np.sin(angle) * side)])
        _paint(labels, spacing, branch, 0.6 * radius * (1.0 - 0.3 * t[k]) * (1.0 - 0.2 * s), value)


def _appendage(rng, labels, spacing, body: _Shape) -> None:
    """Paint the LAA: a cubic Bezier finger, anterior-superior-left, curling down, tapering and lobulated."""
    ostium = _rotation(rng, 8.0) @ _unit((0.35, -0.55, 0.75))
    forward, down = (_rotation(rng, 15.0) @ _unit(v) for v in ((-0.3, -0.8, 0.5), (-0.8, -0.3, 0.3)))
    surface = body.centre + body.radius_world(ostium) * ostium
    p1 = surface + rng.uniform(8.0, 12.0) * ostium
    p2 = p1 + rng.uniform(12.0, 18.0) * forward
    points, t = _bezier([body.centre + 0.6 * (surface - body.centre), p1, p2, p2 + rng.uniform(8.0, 14.0) * down])
    lobes = 1.0 + 0.12 * np.sin(2 * np.pi * rng.uniform(2.0, 3.5) * t + rng.uniform(0, 2 * np.pi))
    _paint(labels, spacing, points, rng.uniform(6.5, 9.0) * (1.0 - 0.65 * t) * lobes, STRUCTURES.index("laa"))


def left_atrium(seed: int = 0, index: int = 0, shape=(64, 64, 64), spacing: float = 2.0) -> dict[str, Any]:
    """One procedural left atrium, from (seed, index) only.

    Returns a dict: labels (D, H, W) uint8 (`STRUCTURES`); tissue (D, H, W) uint8 (`TISSUES`); ct (D, H, W)
    float32 in [0, 1] (HU through `CT_WINDOW_HU`); echo (D, H, W) float32, echogenicity; spacing (mm);
    centre (3,) mm, the LA body's centre; catheter (3,) mm, the tip; catheter_axis (3,), unit, towards the tip.
    """
    shape, spacing = _check_grid(shape, spacing, MIN_FIELD_MM)
    rng = np.random.default_rng((seed, index, _ANATOMY))
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) * spacing for n in shape), indexing="ij"))
    centre = (np.asarray(shape) - 1) * spacing / 2 + rng.uniform(-4.0, 4.0, 3)
    radii = np.array([21.0, 18.0, 28.0]) * rng.uniform(0.9, 1.1) * rng.uniform(0.92, 1.08, 3)
    body = _Shape(centre, _rotation(rng, 10.0), radii, coefficients=rng.normal(0.0, 0.04, 19))
    labels = body.mask(grid).astype(np.uint8)
    _appendage(rng, labels, spacing, body)
    for name in _VEINS:
        _vein(rng, labels, spacing, body, name)
    for value in range(2, len(STRUCTURES)):  # keep each structure's largest face-connected piece; the rest
        pieces, count = ndimage.label(labels == value)  # (single voxels cut off at an ostium) joins the LA body
        if count > 1:
            labels[(pieces > 0) & (pieces != 1 + np.argmax(np.bincount(pieces.ravel())[1:]))] = 1
    # the catheter: right-anterior of the LA, in the right atrium, axis about superior
    phi = np.deg2rad(rng.uniform(20.0, 45.0))
    away = _unit((rng.uniform(-0.15, 0.15), -np.sin(phi), -np.cos(phi)))
    tip = centre + (body.radius_world(away) + rng.uniform(12.0, 20.0)) * away
    clearance = ndimage.distance_transform_edt(labels == 0, sampling=spacing)
    for _ in range(20):  # push the tip away from the LA until it clears every labelled voxel
        voxel = tuple(np.clip(np.rint(tip / spacing).astype(int), 0, np.asarray(shape) - 1))
        if clearance[voxel] >= CLEARANCE_MM:
            break
        tip = tip + spacing * away
    if np.any(tip < 0) or np.any(tip > (np.asarray(shape) - 1) * spacing) or clearance[voxel] < CLEARANCE_MM:
        raise RuntimeError(f"catheter tip outside the field or inside the atrium; report seed {(seed, index)}")
    axis = _rotation(rng, 20.0) @ np.array([1.0, 0.0, 0.0])
    atrium = _Shape(tip + 6.0 * away, _rotation(rng, 15.0), np.array([26.0, 20.0, 20.0]) * rng.uniform(0.9, 1.1))
    blood = labels > 0
    right_atrium = atrium.mask(grid) & ~ndimage.binary_dilation(blood, np.ones((3, 3, 3), bool))
    blood |= right_atrium
    wall = ndimage.binary_dilation(blood) & ~blood
    tissue = np.where(blood, 2, np.where(wall, 1, 0)).astype(np.uint8)
    texture = _smooth(rng, max(shape), 4.0)[: shape[0], : shape[1], : shape[2]]  # fat (-1) .. soft tissue (+1)
    hu = np.where(blood, rng.uniform(250.0, 450.0), np.where(wall, rng.uniform(60.0, 110.0), -30.0 + 70.0 * texture))
    hu = ndimage.gaussian_filter(hu, 0.6) + rng.uniform(10.0, 25.0) * rng.standard_normal(shape)
    low, high = CT_WINDOW_HU
    echo = np.where(tissue == 0, ECHO[0] * (1.0 + 0.6 * texture), np.asarray(ECHO, np.float32)[tissue])
    return {"labels": labels, "tissue": tissue, "ct": np.clip((hu - low) / (high - low), 0, 1).astype(np.float32),
            "echo": echo.astype(np.float32), "spacing": spacing, "centre": centre, "catheter": tip,
            "catheter_axis": axis}


# ---------------------------------------------------------------- planes

def pixel_spacing(frame_shape, depth_mm: float = DEPTH_MM) -> float:
    """mm per pixel (isotropic) of a `frame_shape (H, W)` image whose sector reaches `depth_mm`: the larger of
    depth / (H - 1) and the sector's width 2 depth sin(FAN_HALF_ANGLE) / (W - 1)."""
    h, w = _check_frame(frame_shape, depth_mm)
    return float(max(depth_mm / (h - 1), 2.0 * depth_mm * np.sin(FAN_HALF_ANGLE) / (w - 1)))


def _plane_xy(frame_shape, pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Lateral x `(W,)` and depth y `(H,)` in mm of the pixel columns and rows (apex at row 0, centre column)."""
    h, w = frame_shape
    return (np.arange(w) - (w - 1) / 2.0) * pixel_mm, np.arange(h) * pixel_mm


def fan_mask(frame_shape, depth_mm: float = DEPTH_MM) -> tuple[np.ndarray, np.ndarray]:
    """The sector `(H, W)` bool (range <= depth_mm, |angle| <= FAN_HALF_ANGLE) and the range `(H, W)` mm."""
    x, y = _plane_xy(_check_frame(frame_shape, depth_mm), pixel_spacing(frame_shape, depth_mm))
    r = np.hypot(x[None, :], y[:, None])
    return (r <= depth_mm) & (np.abs(np.arctan2(x[None, :], y[:, None])) <= FAN_HALF_ANGLE), r


def plane_points(poses, frame_shape, pixel_mm: float) -> np.ndarray:
    """World mm `(..., H, W, 3)` of every pixel of frames at `poses (..., 4, 4)`: pose @ (x, y, 0, 1)."""
    poses = _check_poses(poses)
    if not np.isscalar(pixel_mm) or not pixel_mm > 0:
        raise InputError(f"pixel_mm must be a positive pixel size in mm, got {pixel_mm!r}")
    x, y = _plane_xy(_check_frame(frame_shape), pixel_mm)
    lateral, depth = poses[..., None, None, :3, 0], poses[..., None, None, :3, 1]
    return x[:, None] * lateral + y[:, None, None] * depth + poses[..., None, None, :3, 3]


def _nearest_voxel(points: np.ndarray, spacing: float, shape) -> tuple[np.ndarray, np.ndarray]:
    """Nearest voxel index `(..., 3)` (clipped into the grid) of world points `(..., 3)` mm, and whether it was
    inside the grid `(...)`. The one rounding rule of `reslice` (order 0) and `place_frames`."""
    index = np.rint(points / spacing).astype(np.int64)
    inside = np.all((index >= 0) & (index < np.asarray(shape)), axis=-1)
    return np.clip(index, 0, np.asarray(shape) - 1), inside


def reslice(volume, poses, frame_shape, pixel_mm: float, spacing: float, order: int = 0, fill=0.0) -> np.ndarray:
    """Sample `volume (D, H, W)` (voxels `spacing` mm apart) on the frame planes `poses (4, 4)` or `(K, 4, 4)`:
    `(H, W)` or `(K, H, W)` for a `frame_shape (H, W)` grid of `pixel_mm` pixels.

    order 0: nearest voxel, the volume's dtype (labels); order 1: trilinear, float32 (intensities). Points
    outside the grid get `fill`, or the nearest edge value if `fill` is None.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InputError(f"reslice needs a volume (D, H, W), got shape {volume.shape}")
    _check_grid(volume.shape, spacing)
    points = plane_points(poses, frame_shape, pixel_mm)
    if order == 0:
        index, inside = _nearest_voxel(points, spacing, volume.shape)
        out = volume[index[..., 0], index[..., 1], index[..., 2]]
        return out if fill is None else np.where(inside, out, np.asarray(fill, volume.dtype))
    if order == 1:
        mode, cval = ("nearest", 0.0) if fill is None else ("constant", float(fill))
        return ndimage.map_coordinates(volume.astype(np.float32), np.moveaxis(points / spacing, -1, 0), order=1,
                                       mode=mode, cval=cval)
    raise InputError(f"order must be 0 (nearest, labels) or 1 (trilinear, intensities), got {order!r}")


def place_frames(frames, poses, shape, spacing: float, pixel_mm: float, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """The sparse volume of frames `(K, H, W)` at `poses (K, 4, 4)`: each pixel (where `mask`, `(H, W)` or
    `(K, H, W)` bool, default all) is written into its nearest voxel of a `shape (D, H, W)` grid of `spacing`
    mm, averaged where several land. Returns volume `(D, H, W)` float32 (0 where empty) and coverage bool."""
    shape, spacing = _check_grid(shape, spacing)
    frames, poses = np.asarray(frames, np.float32), _check_poses(poses)
    if frames.ndim != 3 or poses.ndim != 3 or len(frames) != len(poses):
        raise InputError(f"need frames (K, H, W) and poses (K, 4, 4) with the same K, got {frames.shape} and "
                         f"{poses.shape}")
    mask = np.ones(frames.shape, bool) if mask is None else np.asarray(mask, bool)
    if mask.shape not in (frames.shape, frames.shape[1:]):
        raise InputError(f"mask must be (H, W) or (K, H, W) like the frames {frames.shape}, got {mask.shape}")
    index, inside = _nearest_voxel(plane_points(poses, frames.shape[1:], pixel_mm), spacing, shape)
    keep = inside & np.broadcast_to(mask, frames.shape)
    flat = np.ravel_multi_index(tuple(index[keep].T), shape)
    total = np.bincount(flat, weights=frames[keep], minlength=int(np.prod(shape)))
    count = np.bincount(flat, minlength=int(np.prod(shape)))
    volume = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    return volume.reshape(shape).astype(np.float32), (count > 0).reshape(shape)


# ---------------------------------------------------------------- catheter sweep and B-mode frames

def catheter_sweep(anatomy: dict, n_frames: int = 24, sweep_deg: float = 90.0, seed: int = 0, index: int = 0,
                   jitter: bool = True) -> np.ndarray:
    """Poses `(K, 4, 4)` (plane-to-world, mm) of one clockwise catheter rotation in `n_frames` steps over
    `sweep_deg` degrees, centred (+- 8 deg at random) on the LA: plane columns along the catheter axis, rows
    along the beam, apex at the tip; with `jitter` each plane is tilted (JITTER_DEG) and moved (JITTER_MM)."""
    if not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise InputError(f"n_frames must be a positive integer, got {n_frames!r}")
    if not 0.0 < sweep_deg <= 360.0:
        raise InputError(f"sweep_deg must be in (0, 360] degrees, got {sweep_deg!r}")
    rng = np.random.default_rng((seed, index, _SWEEP))
    axis, tip = anatomy["catheter_axis"], anatomy["catheter"]
    view = anatomy["centre"] - tip
    beam0 = _unit(view - (view @ axis) * axis)
    side = np.cross(axis, beam0)  # right-hand turn about the axis: clockwise seen from the handle (behind the tip)
    start = np.deg2rad(-sweep_deg / 2.0 + rng.normal(0.0, 8.0))
    poses = np.tile(np.eye(4), (n_frames, 1, 1))
    for k, theta in enumerate(start + np.deg2rad(sweep_deg) * np.arange(n_frames) / max(n_frames - 1, 1)):
        beam = np.cos(theta) * beam0 + np.sin(theta) * side
        rotation, position = np.stack([axis, beam, np.cross(axis, beam)], axis=1), tip
        if jitter:
            rotation, position = _rotation(rng, JITTER_DEG) @ rotation, tip + rng.normal(0.0, JITTER_MM, 3)
        poses[k, :3, :3], poses[k, :3, 3] = rotation, position
    return poses


def _b_mode(rng: np.random.Generator, echo: np.ndarray, r_mm: np.ndarray, fan: np.ndarray, depth_mm: float):
    """One frame `(H, W)` in [0, 1] from the echogenicity on its plane `(H, W)`, range `(H, W)` mm and sector."""
    ring = rng.uniform(2.5, 4.0)  # catheter ring-down period (mm)
    clutter = rng.uniform(0.3, 1.0) * (np.exp(-r_mm / 1.5) +
                                       sum(0.4**k * np.exp(-(((r_mm - k * ring) / 0.8) ** 2)) for k in (1, 2, 3)))
    gain = np.exp(rng.uniform(-1.2, 0.2) * r_mm / depth_mm)  # attenuation left over by the time-gain compensation
    h, w = echo.shape
    envelope = np.sqrt(np.maximum((echo + clutter) * gain, 1e-6)) * _speckle(rng, max(h, w))[:h, :w]
    db = 20.0 * np.log10(np.maximum(envelope, 1e-6) / np.percentile(envelope[fan], 99.0))
    return (np.clip(1.0 + db / DYNAMIC_RANGE_DB, 0.0, 1.0) * fan).astype(np.float32)


def ice_frames(anatomy: dict, poses, frame_shape=(128, 128), depth_mm: float = DEPTH_MM, seed: int = 0,
               index: int = 0) -> dict[str, Any]:
    """ICE-like frames of `anatomy` at `poses (K, 4, 4)`.

    Returns image `(K, H, W)` float32 in [0, 1] (0 outside the sector), label `(K, H, W)` uint8 (the labels
    resliced, nearest voxel, 0 outside the sector), fan `(H, W)` bool, poses `(K, 4, 4)`, pixel_mm. Frame k's
    speckle and gain depend only on (seed, index, k).
    """
    poses = _check_poses(poses).reshape(-1, 4, 4)
    pixel_mm = pixel_spacing(frame_shape, depth_mm)
    fan, r_mm = fan_mask(frame_shape, depth_mm)
    spacing = anatomy["spacing"]
    label = reslice(anatomy["labels"], poses, frame_shape, pixel_mm, spacing, order=0, fill=0) * fan
    echo = reslice(anatomy["echo"], poses, frame_shape, pixel_mm, spacing, order=1, fill=None)
    image = np.stack([_b_mode(np.random.default_rng((seed, index, _FRAMES, k)), echo[k], r_mm, fan, depth_mm)
                      for k in range(len(poses))])
    return {"image": image, "label": label.astype(np.uint8), "fan": fan, "poses": poses, "pixel_mm": pixel_mm}


def ice_case(seed: int = 0, index: int = 0, shape=(64, 64, 64), spacing: float = 2.0, n_frames: int = 24,
             sweep_deg: float = 90.0, frame_shape=(128, 128), depth_mm: float = DEPTH_MM) -> dict[str, Any]:
    """Anatomy (:func:`left_atrium`, under "anatomy"), one sweep and its frames (:func:`ice_frames`' keys)."""
    anatomy = left_atrium(seed, index, shape, spacing)
    poses = catheter_sweep(anatomy, n_frames, sweep_deg, seed, index)
    return {"anatomy": anatomy, **ice_frames(anatomy, poses, frame_shape, depth_mm, seed, index)}
