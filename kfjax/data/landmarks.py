"""Landmark data sets: DRRs of the real chest CT with projected anatomical landmarks, and procedural images.

:func:`drr_landmarks` renders anterior-posterior (AP) digitally reconstructed radiographs of the real
``chest-ct`` source (block-averaged, Joseph's method, :mod:`kfjax.physics.drr`) at random patient poses
and projects the 3-D landmarks of :data:`LANDMARK_NAMES` through the same camera
(:func:`kfjax.physics.carm.project`), so the truth is exact. Only one CT exists: train, val and test differ
in pose, patient size (a random anisotropic scaling about the volume centre, 0.92-1.08 per axis) and
corruption, never in patient. The "hard" val/test sets (like the talk's "OB" set) have larger pose changes,
a collimated (partial) field of view, a metal-like occluder and stronger noise. The arrays are cached as
the derived set ``drr-landmarks`` (:mod:`kfjax.data.cache`), so a second call is instant.

:func:`procedural_landmarks` draws simple images (a distinct bright shape per landmark over smooth noise)
that need no data, for fast unit tests of every landmark method.

Coordinates follow :mod:`kfjax.nn.heatmaps`: (row, col) pixels, pixel centres at integers.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from kfjax.data.cache import DerivedSet, build, register
from kfjax.data.pipeline import ArrayDataset
from kfjax.errors import InputError

__all__ = ["LANDMARK_NAMES", "PROCEDURAL_NAMES", "LINE_INTEGRAL_SCALE", "SPLIT_SIZES", "drr_landmarks",
           "procedural_landmarks", "camera", "ap_extrinsic", "patient_transforms", "render_poses", "project_points"]

#: landmark names, and how each 3-D point is found in the label map: (structure, rule), rule "centroid"
#: (of the whole label), "top" / "bottom" (centroid of its 2 most superior / inferior axial slices)
_LANDMARK_RULES = (
    ("T2", "vertebrae_T2", "centroid"),
    ("T7", "vertebrae_T7", "centroid"),
    ("T12", "vertebrae_T12", "centroid"),
    ("carina", "trachea", "bottom"),  # the trachea label ends at its bifurcation
    ("aortic_arch", "aorta", "top"),  # apex of the arch
    ("liver_dome", "liver", "top"),  # dome of the right hemidiaphragm
)
LANDMARK_NAMES: tuple[str, ...] = tuple(name for name, _, _ in _LANDMARK_RULES)
#: names of the procedural landmarks: landmark j is the centre of a shape of this kind
PROCEDURAL_NAMES: tuple[str, ...] = ("disk", "ring", "plus", "square", "diamond", "hollow_square")

SDD_MM, SOURCE_MM, DETECTOR_MM = 1020.0, 850.0, 400.0  # source-detector, source-isocentre distances; detector side
LINE_INTEGRAL_SCALE = 6.0  # image = line integral / this: the AP chest's largest line integral is about 6
SPLIT_SIZES = {"train": 400, "val": 100, "test": 100}  # images per split (the hard val/test sets: same)
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}  # part of every split's random stream: poses disjoint by seed
_SLICE_COUNT = 2  # axial slices averaged by the "top" / "bottom" rules

#: pose, anatomy and corruption ranges: normal (train/val/test) and hard (val/test "OB"-like)
_SETTINGS = {
    False: dict(rot_deg=(6.0, 6.0, 8.0), trans_mm=(15.0, 30.0, 15.0), scale=0.08, photons=2e4,
                collimate=0.0, metal=0.0),
    True: dict(rot_deg=(15.0, 15.0, 25.0), trans_mm=(50.0, 60.0, 50.0), scale=0.08, photons=2e3,
               collimate=0.7, metal=0.7),
}
# rot_deg: uniform ± degrees about the world x (left-right), y (anterior-posterior), z (superior) axes
# trans_mm: uniform ± mm along world x, y, z; scale: uniform ± relative size per axis; photons: I0 per pixel
# (Poisson); collimate / metal: probability of a collimated window / a metal occluder per image
_COLLIMATE_MAX = 0.3  # each collimator blade covers up to this fraction of the image side
_METAL_LINE_INTEGRAL = (2.0, 4.0)  # extra line integral inside the occluder (about 4-8 mm of steel)
_METAL_RADIUS = (0.04, 0.12)  # occluder semi-axes as fractions of the image side


# ------------------------------------------------------------------------------------------ geometry
def camera(size: int):
    """The C-arm of a ``size`` x ``size`` DRR: sdd 1020 mm, 400 mm detector (333 mm at the isocentre)."""
    from kfjax.physics.carm import CArm

    return CArm(sdd=SDD_MM, height=size, width=size, dx=DETECTOR_MM / size, dy=DETECTOR_MM / size)


def ap_extrinsic(centre) -> np.ndarray:
    """(4, 4) world -> camera of the AP view: source SOURCE_MM anterior of ``centre`` (3,) mm, superior up."""
    from kfjax.physics import carm

    centre = np.asarray(centre, np.float64)
    return np.asarray(carm.look_at(centre + np.array([0.0, SOURCE_MM, 0.0]), centre), np.float64)


def patient_transforms(rotvec, trans, scale, centre) -> np.ndarray:
    """World -> world maps (N, 4, 4) of the moved patient: ``x' = R S (x - c) + c + t``.

    rotvec (N, 3) rad, trans (N, 3) mm, scale (N, 3) per world axis, centre (3,) mm.
    """
    from scipy.spatial.transform import Rotation

    r = Rotation.from_rotvec(np.asarray(rotvec, np.float64).reshape(-1, 3)).as_matrix()  # float64 on the host
    rs = r * np.asarray(scale, np.float64)[:, None, :]
    c = np.asarray(centre, np.float64)
    m = np.tile(np.eye(4), (len(rs), 1, 1))
    m[:, :3, :3] = rs
    m[:, :3, 3] = c - rs @ c + np.asarray(trans, np.float64)
    return m


def render_poses(mu, affine, transforms, size: int, centre) -> np.ndarray:
    """Line integrals (N, size, size) of attenuation ``mu`` (X, Y, Z) 1/mm with voxel->world ``affine``,
    the patient moved by ``transforms`` (N, 4, 4), seen by the AP camera about ``centre``."""
    import jax

    from kfjax.physics import drr

    cam, ext = camera(size), ap_extrinsic(centre)
    affines = np.asarray(transforms, np.float64) @ np.asarray(affine, np.float64)
    axes = np.array([drr.principal_axis(cam, ext, a) for a in affines])
    axis = int(axes[0])
    if np.any(axes != axis):
        raise InputError("poses step along different volume axes; keep rotations below about 40 degrees")
    render = drr.make_renderer(cam, axis=axis)
    one = jax.jit(jax.vmap(lambda a: render(mu, a, ext[None])[0]))
    chunk = 32
    out = [np.asarray(one(affines[i : i + chunk].astype(np.float32))) for i in range(0, len(affines), chunk)]
    return np.concatenate(out).astype(np.float32)


def project_points(points, transforms, size: int, centre) -> np.ndarray:
    """(row, col) pixels (N, K, 2) of world points (K, 3) mm moved by ``transforms`` (N, 4, 4), AP camera."""
    from kfjax.physics import carm

    pts = np.asarray(points, np.float64)
    moved = np.einsum("nij,kj->nki", np.asarray(transforms, np.float64)[:, :3, :3], pts)
    moved += np.asarray(transforms, np.float64)[:, None, :3, 3]
    p = np.asarray(carm.projection_matrix(camera(size), np.asarray(ap_extrinsic(centre), np.float64)))
    uv = np.asarray(carm.project(p, moved), np.float64)  # (u, v) = (col + 0.5, row + 0.5)
    return np.stack([uv[..., 1] - 0.5, uv[..., 0] - 0.5], -1)


# -------------------------------------------------------------------------------------- the CT volume
def _block_factor(size: int) -> int:
    """In-plane block-averaging factor of the 512² CT slices: 4 (2.8 mm) up to 96² DRRs, else 2 (1.4 mm)."""
    return 4 if size <= 96 else 2


@functools.lru_cache(maxsize=2)
def _volume(factor: int):
    """(mu (D, H/f, W/f) 1/mm, affine, centre (3,) mm, landmarks (K, 3) world mm) of the chest CT."""
    from kfjax.data.ct import chest_ct_structures
    from kfjax.physics.drr import hu_to_mu

    d = chest_ct_structures()
    hu, affine, labels, names = d["ct"], np.asarray(d["affine"], np.float64), d["labels"], d["structures"]
    n, h, w = hu.shape
    block = hu[:, : h - h % factor, : w - w % factor].reshape(n, h // factor, factor, w // factor, factor)
    mu = np.asarray(hu_to_mu(block.mean((2, 4), dtype=np.float64)), np.float32)
    step = np.eye(4)
    step[1, 1] = step[2, 2] = factor
    step[1:3, 3] = (factor - 1) / 2.0
    centre = (affine @ np.r_[(np.asarray(hu.shape) - 1) / 2.0, 1.0])[:3]
    points = []
    for _, structure, rule in _LANDMARK_RULES:
        mask = labels == names.index(structure)
        slices = np.flatnonzero(mask.any(axis=(1, 2)))  # axis 0 runs inferior -> superior
        if rule == "top":
            mask[: slices[-1] - _SLICE_COUNT + 1] = False
        elif rule == "bottom":
            mask[slices[0] + _SLICE_COUNT :] = False
        index = ndimage.center_of_mass(mask)
        points.append((affine @ np.r_[index, 1.0])[:3])
    return mu, affine @ step, centre, np.asarray(points, np.float64)


# ------------------------------------------------------------------------------------------ corruption
def _metal(rng, size: int, landmarks) -> np.ndarray:
    """Extra line integral (size, size) of one elliptical metal-like occluder, on a landmark half the time."""
    radius = rng.uniform(*_METAL_RADIUS, 2) * size
    centre = landmarks[rng.integers(len(landmarks))] if rng.random() < 0.5 else rng.uniform(0, size - 1, 2)
    angle = rng.uniform(0, np.pi)
    r, c = np.mgrid[:size, :size].astype(np.float64)
    dr, dc = r - centre[0], c - centre[1]
    a = (dr * np.cos(angle) + dc * np.sin(angle)) / radius[0]
    b = (-dr * np.sin(angle) + dc * np.cos(angle)) / radius[1]
    return (a * a + b * b <= 1.0) * rng.uniform(*_METAL_LINE_INTEGRAL)


def _window(rng, size: int) -> np.ndarray:
    """(top, bottom, left, right) open collimator window in pixels (exclusive ends)."""
    cut = np.floor(rng.uniform(0, _COLLIMATE_MAX, 4) * size).astype(int)
    return np.array([cut[0], size - cut[1], cut[2], size - cut[3]])


def _build(split: str, size: int, hard: bool, seed: int):
    """Arrays and meta of ``drr-landmarks`` (see :func:`drr_landmarks`)."""
    s = _SETTINGS[hard]
    mu, affine, centre, points = _volume(_block_factor(size))
    n = SPLIT_SIZES[split]
    rng = np.random.default_rng((seed, _SPLIT_CODES[split], int(hard)))
    rotvec = np.deg2rad(rng.uniform(-1, 1, (n, 3)) * s["rot_deg"])
    trans = rng.uniform(-1, 1, (n, 3)) * s["trans_mm"]
    scale = 1.0 + rng.uniform(-s["scale"], s["scale"], (n, 3))
    transforms = patient_transforms(rotvec, trans, scale, centre)
    clean = render_poses(mu, affine, transforms, size, centre)
    landmarks = project_points(points, transforms, size, centre)
    visible = np.all((landmarks >= -0.5) & (landmarks <= size - 0.5), -1)
    images = np.empty((n, size, size), np.float32)
    windows = np.tile([0, size, 0, size], (n, 1))
    for i in range(n):
        p = clean[i].astype(np.float64)
        if rng.random() < s["metal"]:
            p = p + _metal(rng, size, landmarks[i])
        counts = np.maximum(rng.poisson(s["photons"] * np.exp(-p)), 1)
        p = -np.log(counts / s["photons"])
        if rng.random() < s["collimate"]:
            windows[i] = _window(rng, size)
            t, b, l, r = windows[i]
            blank = np.ones((size, size), bool)
            blank[t:b, l:r] = False
            p[blank] = 0.0
        images[i] = p / LINE_INTEGRAL_SCALE
    rows, cols = landmarks[..., 0], landmarks[..., 1]
    t, b, l, r = (windows[:, None, j] for j in range(4))
    visible &= (rows >= t - 0.5) & (rows <= b - 0.5) & (cols >= l - 0.5) & (cols <= r - 0.5)
    iso_mm = DETECTOR_MM / size * SOURCE_MM / SDD_MM
    arrays = {"image": images[..., None], "landmarks": landmarks.astype(np.float32),
              "visible": visible.astype(np.float32), "spacing": np.full((n, 2), iso_mm, np.float32),
              "rotvec": rotvec.astype(np.float32), "trans": trans.astype(np.float32),
              "scale": scale.astype(np.float32), "window": windows.astype(np.int32)}
    meta = {"names": list(LANDMARK_NAMES), "landmarks_world_mm": points.tolist(), "centre_mm": centre.tolist(),
            "settings": s, "line_integral_scale": LINE_INTEGRAL_SCALE, "visible_fraction": float(visible.mean())}
    return arrays, meta


register(DerivedSet(
    "drr-landmarks", ("chest-ct",),
    "AP DRRs (size², line integral / 6) of the chest CT at random poses with 6 projected landmarks (row, col px), "
    "visibility and mm per pixel at the isocentre; hard=true: larger poses, collimation, metal, stronger noise",
    {"split": "train", "size": 64, "hard": False, "seed": 0}, _build, version=1,
))


def drr_landmarks(split: str, size: int = 64, hard: bool = False, seed: int = 0) -> ArrayDataset:
    """AP DRRs of the real chest CT with the :data:`LANDMARK_NAMES` landmarks (cached; see module doc).

    Poses: the patient rotates about the CT centre (train/val/test: uniform ±6°, ±6°, ±8° about the
    left-right, anterior-posterior and superior axes; hard: ±15°, ±15°, ±25°), translates (±15, ±30, ±15 mm;
    hard ±50, ±60, ±50 mm) and is scaled 0.92-1.08 per axis; Poisson noise of 2e4 photons per pixel (hard:
    2e3). Hard images also get, each with probability 0.7, a collimator window (every side closed by up to
    30 % of the image, outside set to 0) and an elliptical metal-like occluder (extra line integral 2-4) placed
    on a landmark half the time. The split's random stream is ``(seed, split, hard)``: poses are disjoint.

    Returns an ArrayDataset: image (N, size, size, 1) float32 line integrals / :data:`LINE_INTEGRAL_SCALE`
    (roughly [0, 1]; metal can exceed 1); landmarks (N, K, 2) float32 (row, col) px; visible (N, K) float32
    (1 inside the image and the collimator window); spacing (N, 2) float32 mm per pixel at the isocentre;
    and the pose rotvec (N, 3) rad, trans (N, 3) mm, scale (N, 3), window (N, 4) (top, bottom, left, right).
    N is :data:`SPLIT_SIZES`[split].
    """
    if split not in SPLIT_SIZES:
        raise InputError(f"split must be one of {', '.join(SPLIT_SIZES)}, got {split!r}")
    if hard and split == "train":
        raise InputError("the hard (OB-like) set exists for val and test only; use hard=False for train")
    if not isinstance(size, (int, np.integer)) or not 16 <= size <= 256:
        raise InputError(f"DRR size must be an integer between 16 and 256 pixels, got {size!r}")
    arrays, _ = build("drr-landmarks", split=split, size=int(size), hard=bool(hard), seed=int(seed))
    return ArrayDataset(**arrays)


# ------------------------------------------------------------------------------------------ procedural
def _shape(name: str, dr, dc, radius: float) -> np.ndarray:
    """Anti-aliased (about one pixel) coverage in [0, 1] of shape ``name`` centred at offsets (dr, dc)."""
    dist = np.sqrt(dr * dr + dc * dc)
    chebyshev = np.maximum(np.abs(dr), np.abs(dc))
    if name == "disk":
        inside = radius - dist
    elif name == "ring":
        inside = 1.2 - np.abs(dist - radius)
    elif name == "plus":
        inside = np.maximum(np.minimum(radius - np.abs(dr), 1.2 - np.abs(dc)),
                            np.minimum(radius - np.abs(dc), 1.2 - np.abs(dr)))
    elif name == "square":
        inside = radius - chebyshev
    elif name == "diamond":
        inside = radius - (np.abs(dr) + np.abs(dc))
    elif name == "hollow_square":
        inside = 1.2 - np.abs(chebyshev - radius)
    else:
        raise InputError(f"unknown procedural shape {name!r}; shapes: {', '.join(PROCEDURAL_NAMES)}")
    return np.clip(inside + 0.5, 0.0, 1.0)


_SHAPE_LEVELS = (0.95, 0.1)  # brightness of shape 0 and the step down per shape index: a second cue to identity
_PACKING_TRIES = 2000  # rejection-sampling draws per image before giving up on fitting k shapes


def _centres(rng, k: int, size: int, radius: float) -> np.ndarray:
    """(k, 2) continuous centres >= radius + 2 px inside the image and >= 2 radius + 2 px apart."""
    margin = radius + 2
    pts: list[np.ndarray] = []
    for _ in range(_PACKING_TRIES):
        p = rng.uniform(margin, size - 1 - margin, 2)
        if all(np.linalg.norm(p - q) >= 2 * radius + 2 for q in pts):
            pts.append(p)
            if len(pts) == k:
                return np.asarray(pts)
        elif rng.random() < 0.02:  # a crowded start: begin again
            pts = []
    raise InputError(f"{k} procedural shapes of radius {radius:g} px do not fit a {size}² image; "
                     "use a larger size or fewer landmarks")


def procedural_landmarks(n: int, size: int = 32, k: int = 2, seed: int = 0) -> ArrayDataset:
    """Procedural landmark images: landmark j is the centre of a bright shape :data:`PROCEDURAL_NAMES`[j]
    (disk, ring, plus, square, diamond, hollow square) of brightness 0.95 - 0.1 j over smooth noise (about
    0.2 ± 0.1) plus white noise (σ 0.02); shape and brightness both tell the landmarks apart. No data needed.

    Centres are continuous, at least 2 radii + 2 px from each other and radius + 2 px from the border;
    radius max(2, size/10) px. Returns an ArrayDataset with image (n, size, size, 1) float32 in about [0, 1],
    landmarks (n, k, 2) float32 (row, col) px, visible (n, k) ones, spacing (n, 2) ones (1 mm per pixel).
    """
    if not 1 <= k <= len(PROCEDURAL_NAMES):
        raise InputError(f"procedural landmarks support k = 1..{len(PROCEDURAL_NAMES)} distinct shapes, got k={k}")
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise InputError(f"procedural image size must be an integer >= 16 pixels, got {size!r}")
    if n < 1:
        raise InputError(f"procedural_landmarks needs n >= 1 images, got {n}")
    rng = np.random.default_rng((seed, 1234))
    radius = max(2.0, size / 10)
    rr, cc = np.mgrid[:size, :size].astype(np.float64)
    images = np.empty((n, size, size, 1), np.float32)
    landmarks = np.empty((n, k, 2), np.float32)
    top, step = _SHAPE_LEVELS
    for i in range(n):
        pts = _centres(rng, k, size, radius)
        background = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), size / 8)
        image = 0.2 + 0.1 * background / max(background.std(), 1e-6)
        for j, p in enumerate(pts):
            image = np.maximum(image, (top - step * j) * _shape(PROCEDURAL_NAMES[j], rr - p[0], cc - p[1], radius))
        images[i, ..., 0] = image + rng.normal(0, 0.02, (size, size))
        landmarks[i] = pts
    return ArrayDataset(image=images, landmarks=landmarks, visible=np.ones((n, k), np.float32),
                        spacing=np.ones((n, 2), np.float32))
