"""X-ray decomposition data: DRRs of the segmented chest CT split exactly into bone, lung and soft tissue.

A DRR is a line integral, and the renderer is linear: split the attenuation voxel by voxel into component
volumes, ``mu = sum_k mu_k``, render each with the same renderer, and the component DRRs add up to the DRR
of the whole CT, ``p = sum_k p_k``, to float rounding. These are free, perfectly paired targets that do
not exist for real radiographs. The components (:data:`COMPONENTS`, line integrals, dimensionless):

- ``bone``: the excess attenuation of the labelled bones over soft tissue, ``mu - min(mu, mu(40 HU))``
  inside the labels of :data:`BONE_PREFIXES` (vertebrae, ribs, sternum, clavicles, scapulae, humeri);
- ``lung``: the attenuation inside the lung lobes (``lung_*`` labels);
- ``soft``: everything else, including the ``min(mu, mu(40 HU))`` that stays in each bone voxel, so the soft
  image has no holes where bones were (like the soft-tissue image of dual-energy subtraction).

The X-ray decomposition method's "soft tissue" target is lung + soft (everything but bone). Before the
split, voxels outside the body (the CT table) become air and non-bone voxels are capped at
:data:`SOFT_CAP_HU` (the scan is contrast enhanced, a radiograph has no iodine); costal cartilage is soft.

Every image is a new pose and a new "subject" (only one CT exists), drawn from ``(seed, split, index)`` by
:func:`draw_samples` (:data:`POSE_RANGES`, :data:`ANATOMY_RANGES`): a PA or AP view, a rotation and
translation of the patient, an anisotropic scaling, a smooth random 3-D deformation (cubic upsampling of
random control-point displacements) and a breathing-like lung density factor. Both views are shown as a
chest radiograph is read: superior up, the patient's left on the image's right. The camera is that of the
landmark DRRs (:func:`kfjax.data.landmarks.camera`: source 850 mm from the CT centre, 1020 mm from a 400 mm
detector of size² pixels, 64² by default); slices are block-averaged in-plane (:func:`block_factor`) and
rendered by Joseph's method (:mod:`kfjax.physics.drr`). :func:`detector_image`
turns a line integral into a radiograph-like image whose truth is known: beam hardening, scatter haze,
detector blur, Poisson noise, collimation and a display gamma (:data:`DETECTOR_RANGES`).

:func:`decomposition_set` renders a split from the real CT (cached as the derived set
``xray-decomposition``) or from a procedural chest phantom (``source="phantom"``, no data needed).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from kfjax.data.cache import DerivedSet, build, register
from kfjax.data.landmarks import LINE_INTEGRAL_SCALE, SOURCE_MM, camera, patient_transforms
from kfjax.data.pipeline import ArrayDataset
from kfjax.errors import InputError
from kfjax.units import MU_WATER_DRR, hu_to_mu

__all__ = ["COMPONENTS", "BONE_PREFIXES", "LUNG_PREFIXES", "LINE_INTEGRAL_SCALE", "SPLIT_SIZES", "SOURCES",
           "POSE_RANGES", "ANATOMY_RANGES", "DETECTOR_RANGES", "label_ids", "split_components", "block_factor",
           "chest_components", "phantom_components", "draw_samples", "view_extrinsic", "render_samples",
           "detector_image", "decomposition_set"]

COMPONENTS = ("bone", "lung", "soft")
BONE_PREFIXES = ("vertebrae_", "rib_", "sternum", "clavicula_", "scapula_", "humerus_")
LUNG_PREFIXES = ("lung_",)
SOFT_FILL_HU = 40.0  # a bone voxel keeps min(its mu, mu(40 HU)) in the soft component, the rest is bone
SOFT_CAP_HU = 100.0  # non-bone voxels above this (iodine contrast, unlabelled dense voxels) are set to it
SPLIT_SIZES = {"train": 400, "val": 100, "test": 100}  # default images per split
SOURCES = ("ct", "phantom")
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}  # part of each image's random stream: splits never share one

POSE_RANGES = dict(pa=0.5, rot_deg=(5.0, 5.0, 8.0), trans_mm=(15.0, 30.0, 20.0), scale=0.08)
# pa: probability of a PA view (else AP); rot_deg: uniform ± degrees about the world left-right,
# anterior-posterior and superior axes; trans_mm: uniform ± mm along them; scale: uniform ± relative size per axis
ANATOMY_RANGES = dict(deform_mm=6.0, control=4, lung_density=(0.8, 1.2))
# deform_mm: standard deviation of the control-point displacements (clipped at 2 of them); control: control
# points per axis; lung_density: uniform factor on the lung attenuation (inspiration < 1 < expiration)
DETECTOR_RANGES = dict(hardening=(0.05, 0.2), scatter=(0.05, 0.3), scatter_sigma=(0.08, 0.2), blur=(0.3, 1.0),
                       photons=(2e3, 5e4), gamma=(0.8, 1.25), collimate=0.5, blade=0.12)
# hardening: h of p -> log(1 + h p) / h; scatter: scatter-to-primary ratio; scatter_sigma: scatter kernel σ as a
# fraction of the detector side; blur: detector σ, px; photons: I0 per pixel (log-uniform); gamma: display
# exponent; collimate: probability of a collimator window; blade: each blade covers up to this side fraction
_CROP_MARGIN = 3  # voxels of air kept around the body when a component volume is cropped


# ---------------------------------------------------------------------------------- component volumes
def label_ids(names, prefixes) -> list[int]:
    """Label ids whose structure name starts with one of ``prefixes``."""
    return [i for i, name in enumerate(names) if name.startswith(tuple(prefixes))]


def split_components(mu, bone, lung) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bone, lung, soft) attenuation volumes (same shape as ``mu``, 1/mm) that sum to ``mu`` exactly.

    mu: attenuation 1/mm; bone, lung: disjoint boolean masks of the same shape.
    """
    fill = np.minimum(mu, np.float32(hu_to_mu(SOFT_FILL_HU, MU_WATER_DRR)))
    bone_part = np.where(bone, mu - fill, 0.0).astype(np.float32)
    lung_part = np.where(lung & ~bone, mu, 0.0).astype(np.float32)
    return bone_part, lung_part, (mu - bone_part - lung_part).astype(np.float32)


def _crop(volume, affine):
    """``volume`` (D, H, W, C) cropped in-plane to its non-zero voxels plus a margin, and the new affine."""
    from kfjax.data.ct import crop_affine

    occupied = np.any(volume != 0, axis=(0, 3))
    rows, cols = np.flatnonzero(occupied.any(1)), np.flatnonzero(occupied.any(0))
    r0, c0 = max(rows[0] - _CROP_MARGIN, 0), max(cols[0] - _CROP_MARGIN, 0)
    r1, c1 = rows[-1] + _CROP_MARGIN + 1, cols[-1] + _CROP_MARGIN + 1
    return np.ascontiguousarray(volume[:, r0:r1, c0:c1]), crop_affine(affine, (0.0, r0, c0))


def block_factor(size: int) -> int:
    """In-plane block averaging of the 512² CT slices for a ``size``² detector: 8, 4 (up to 96²) or 2."""
    return 8 if size <= 48 else 4 if size <= 96 else 2


@functools.lru_cache(maxsize=2)
def chest_components(factor: int):
    """The prepared chest CT split into :data:`COMPONENTS`: volume (D, H, W, 3) float32 1/mm (slices
    block-averaged ``factor`` x ``factor`` in-plane, cropped to the body), affine (4, 4) index -> RAS mm,
    centre (3,) mm (the centre of the full CT)."""
    from kfjax.data.ct import body_mask, chest_ct_structures, crop_affine

    d = chest_ct_structures()
    hu, labels, names = d["ct"], d["labels"], d["structures"]
    bone = np.isin(labels, label_ids(names, BONE_PREFIXES))
    lung = np.isin(labels, label_ids(names, LUNG_PREFIXES))
    hu = np.where(body_mask(hu), hu, -1000.0)
    hu = np.where(bone, hu, np.minimum(hu, SOFT_CAP_HU)).astype(np.float32)
    n, h, w = hu.shape
    h, w = h - h % factor, w - w % factor
    parts = split_components(hu_to_mu(hu, MU_WATER_DRR).astype(np.float32), bone, lung)
    blocks = [p[:, :h, :w].reshape(n, h // factor, factor, w // factor, factor).mean((2, 4), dtype=np.float64)
              for p in parts]
    affine = crop_affine(d["affine"], (0.0, (factor - 1) / 2, (factor - 1) / 2), (1.0, factor, factor))
    centre = (np.asarray(d["affine"], np.float64) @ np.r_[(np.asarray(d["ct"].shape) - 1) / 2.0, 1.0])[:3]
    volume, affine = _crop(np.stack(blocks, -1).astype(np.float32), affine)
    return volume, affine, centre


@functools.lru_cache(maxsize=1)
def phantom_components(spacing: float = 6.0):
    """A procedural chest in the CT's orientation, split into :data:`COMPONENTS` (no data needed).

    Body (elliptic cylinder, 40 HU), two lungs (-820 HU) around a heart, a spine of vertebral bodies
    (400 HU), 10 rib pairs sloping down anteriorly (700 HU), a sternum and two clavicles; evaluated on a grid
    twice as fine, then block-averaged. Returns volume (56, 40, 56, 3) float32 1/mm, affine (4, 4), centre (3,).
    """
    shape, sub = np.array([56, 40, 56]), 2
    d, r, c = np.meshgrid(*[(np.arange(n * sub) + 0.5) / sub - 0.5 for n in shape], indexing="ij")
    half = (shape - 1) / 2.0
    x, y, z = -spacing * (c - half[2]), -spacing * (r - half[1]), spacing * (d - half[0])  # RAS mm
    body = (x / 150) ** 2 + (y / 105) ** 2 <= 1
    heart = ((x + 30) / 60) ** 2 + ((y - 25) / 50) ** 2 + ((z + 40) / 55) ** 2 <= 1
    lung = ((np.abs(x) - 70) / 55) ** 2 + ((y + 5) / 75) ** 2 + ((z - 20) / 120) ** 2 <= 1
    spine = (x**2 + (y + 65) ** 2 <= 20**2) & (np.mod(z + 165, 30) < 24)
    ring = np.abs(np.sqrt((x / 130) ** 2 + ((y + 5) / 92) ** 2) - 1) < 0.06
    ribs = np.zeros_like(body)
    for z0 in np.arange(-110, 150, 26):
        ribs |= ring & (np.abs(z - (z0 - 0.3 * (y + 97))) < 5) & ~((y > 50) & (np.abs(x) < 45))
    sternum = (np.abs(x) < 15) & (np.abs(y - 95) < 7) & (z > -40) & (z < 110)
    t = np.clip((np.abs(x) - 20) / 110, 0, 1)  # along each clavicle, sternum end to shoulder
    clavicles = (np.abs(x) > 20) & ((y - (85 - 45 * t)) ** 2 + (z - (140 + 10 * t)) ** 2 < 7**2)
    bone = body & (spine | ribs | sternum | clavicles)
    lung &= body & ~heart & ~bone
    hu = np.where(body, 40.0, -1000.0)
    hu = np.where(lung, -820.0, np.where(bone, np.where(spine, 400.0, 700.0), hu)).astype(np.float32)
    parts = split_components(hu_to_mu(hu, MU_WATER_DRR).astype(np.float32), bone, lung)
    (nd, nr, nc), f = shape, sub
    volume = np.stack([p.reshape(nd, f, nr, f, nc, f).mean((1, 3, 5)) for p in parts], -1)
    affine = np.array([[0.0, 0.0, -spacing, spacing * half[2]], [0.0, -spacing, 0.0, spacing * half[1]],
                       [spacing, 0.0, 0.0, -spacing * half[0]], [0.0, 0.0, 0.0, 1.0]])
    return volume.astype(np.float32), affine, np.zeros(3)


# ------------------------------------------------------------------------------------ poses and anatomy
def draw_samples(split: str, count: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Pose, anatomy and detector settings of images ``0 .. count-1`` of a split; image i is drawn from the
    stream ``(seed, split, i)`` alone, so a smaller count gives the first images of a larger one.

    Returns pa (N,) bool; rotvec (N, 3) rad; trans (N, 3) mm; scale (N, 3); control (N, G, G, G, 3) mm;
    lung_density (N,); the :data:`DETECTOR_RANGES` keys (N,) and window (N, 4) int (top, bottom, left,
    right) px.
    """
    p, a, det = POSE_RANGES, ANATOMY_RANGES, DETECTOR_RANGES
    rows = []
    for i in range(count):
        rng = np.random.default_rng((seed, _SPLIT_CODES[split], i))
        g, sd = a["control"], a["deform_mm"]
        row = {"pa": rng.random() < p["pa"], "rotvec": np.deg2rad(rng.uniform(-1, 1, 3) * p["rot_deg"]),
               "trans": rng.uniform(-1, 1, 3) * p["trans_mm"], "scale": 1 + rng.uniform(-p["scale"], p["scale"], 3),
               "control": np.clip(rng.normal(0, sd, (g, g, g, 3)), -2 * sd, 2 * sd),
               "lung_density": rng.uniform(*a["lung_density"])}
        for key in ("hardening", "scatter", "scatter_sigma", "blur", "gamma"):
            row[key] = rng.uniform(*det[key])
        row["photons"] = np.exp(rng.uniform(*np.log(det["photons"])))
        cut = np.floor(rng.uniform(0, det["blade"], 4) * size).astype(int) * (rng.random() < det["collimate"])
        row["window"] = np.array([cut[0], size - cut[1], cut[2], size - cut[3]])
        rows.append(row)
    return {k: np.stack([row[k] for row in rows]) for k in rows[0]}


def view_extrinsic(centre, pa: bool) -> np.ndarray:
    """(4, 4) world -> camera: source SOURCE_MM anterior (AP) or posterior (PA) of ``centre`` mm, superior up."""
    from kfjax.physics import carm

    centre = np.asarray(centre, np.float64)
    source = centre + np.array([0.0, -SOURCE_MM if pa else SOURCE_MM, 0.0])
    return np.asarray(carm.look_at(source, centre), np.float64)


def _warp(volume, field):
    """Trilinear samples (D, H, W, C) of ``volume`` (D, H, W, C) at index + ``field`` (D, H, W, 3) voxels,
    zero outside: every channel with the same weights, so the warp is linear and keeps the components' sum."""
    import jax.numpy as jnp

    shape = volume.shape[:3]
    padded = jnp.pad(volume, ((1, 2), (1, 2), (1, 2), (0, 0)))  # clipped coordinates read zeros
    s1, s2 = padded.shape[1], padded.shape[2]
    flat = padded.reshape(-1, volume.shape[-1])
    grid = jnp.stack(jnp.meshgrid(*[jnp.arange(n, dtype=field.dtype) for n in shape], indexing="ij"), -1)
    p = jnp.clip(grid + field, -1.0, jnp.asarray(shape, field.dtype))
    i = jnp.floor(p).astype(jnp.int32)
    w = p - i.astype(p.dtype)  # weights from the integer index
    base = ((i[..., 0] + 1) * s1 + (i[..., 1] + 1)) * s2 + (i[..., 2] + 1)
    out = 0.0
    for dd in (0, 1):
        for dr in (0, 1):
            for dc in (0, 1):
                weight = ((w[..., 0] if dd else 1 - w[..., 0]) * (w[..., 1] if dr else 1 - w[..., 1])
                          * (w[..., 2] if dc else 1 - w[..., 2]))
                out = out + weight[..., None] * flat[base + (dd * s1 + dr) * s2 + dc]
    return out


@functools.lru_cache(maxsize=8)
def _renderer(size: int, axis: int, combine: bool):
    """jit(volume, spacing, affine, extrinsic, control mm, weights (C,)) -> (size, size, C or 1)."""
    import jax
    import jax.numpy as jnp

    from kfjax.physics import drr

    render = drr.make_renderer(camera(size), axis=axis)

    def one(volume, spacing, affine, extrinsic, control, weights):
        field = jax.image.resize(control, volume.shape[:3] + (3,), "cubic") / spacing
        moved = _warp(volume, field) * weights
        if combine:
            moved = jnp.sum(moved, -1, keepdims=True)
        return render(moved, affine, extrinsic[None])[0]

    return jax.jit(one)


def render_samples(volume, affine, centre, size: int, samples, combine: bool = False) -> np.ndarray:
    """Line integrals (N, size, size, C) of the component ``volume`` (D, H, W, C) 1/mm, one image per row of
    ``samples`` (:func:`draw_samples`): deformed, lung channel (index 1, if C > 1) scaled by
    ``lung_density``, the patient moved, seen in its view. ``combine``: (N, size, size, 1), the DRR of the
    summed channels (the total), for checking that the components add up."""
    import jax.numpy as jnp

    from kfjax.physics import drr

    volume = jnp.asarray(volume, jnp.float32)
    affine = np.asarray(affine, np.float64)
    spacing = jnp.asarray(np.linalg.norm(affine[:3, :3], axis=0), jnp.float32)
    affines = patient_transforms(samples["rotvec"], samples["trans"], samples["scale"], centre) @ affine
    extrinsics = [view_extrinsic(centre, bool(pa)) for pa in samples["pa"]]
    axes = {int(drr.principal_axis(camera(size), e, a)) for e, a in zip(extrinsics, affines)}
    if len(axes) != 1:
        raise InputError("poses step along different volume axes; keep rotations below about 40 degrees")
    one = _renderer(int(size), axes.pop(), bool(combine))
    out = []
    for k in range(len(affines)):
        weights = np.ones(volume.shape[-1], np.float32)
        if volume.shape[-1] > 1:
            weights[1] = samples["lung_density"][k]
        image = np.asarray(one(volume, spacing, affines[k].astype(np.float32), extrinsics[k].astype(np.float32),
                               samples["control"][k].astype(np.float32), weights))
        out.append(image[:, ::-1] if samples["pa"][k] else image)  # PA: the patient's left to the right too
    return np.stack(out).astype(np.float32)


# ------------------------------------------------------------------------------------------- detector
def detector_image(p, settings, rng=None, scale: float = LINE_INTEGRAL_SCALE) -> np.ndarray:
    """Radiograph-like image (H, W) float32 in [0, 1] (bright = attenuating) of line integrals ``p`` (H, W).

    ``settings``: one row of :func:`draw_samples` (or a dict) with hardening h, scatter s, scatter_sigma,
    blur, photons, gamma and window (top, bottom, left, right). Steps: beam hardening q = log(1 + h p) / h
    (q = p for h = 0); primary exp(-q), zero outside the collimator window; plus scatter haze s times the
    primary blurred with σ = scatter_sigma x side; detector blur σ = blur px; Poisson noise of I0 = photons
    (0: none; counts floored at 1); measured -log; image = clip(measured / scale, 0, 1) ** gamma, ``scale``
    the line integral shown white (default LINE_INTEGRAL_SCALE). With h = s = blur = photons = 0, gamma = 1 and
    a full window it is clip(p / scale, 0, 1).
    """
    p = np.asarray(p, np.float64)
    h = float(settings["hardening"])
    q = np.log1p(h * p) / h if h > 0 else p
    top, bottom, left, right = (int(v) for v in settings["window"])
    window = np.zeros(p.shape)
    window[top:bottom, left:right] = 1.0
    primary = np.exp(-q) * window
    signal = primary
    if settings["scatter"] > 0:
        sigma = float(settings["scatter_sigma"]) * max(p.shape)
        signal = signal + float(settings["scatter"]) * ndimage.gaussian_filter(primary, sigma, mode="nearest")
    if settings["blur"] > 0:
        signal = ndimage.gaussian_filter(signal, float(settings["blur"]), mode="nearest")
    photons = float(settings["photons"])
    if photons > 0:
        rng = rng if rng is not None else np.random.default_rng(0)
        signal = np.maximum(rng.poisson(photons * signal), 1) / photons
    measured = -np.log(np.maximum(signal, 1e-9))
    return (np.clip(measured / scale, 0.0, 1.0) ** float(settings["gamma"])).astype(np.float32)


# ------------------------------------------------------------------------------------------ the data set
def _render_set(volume, affine, centre, split: str, size: int, count: int, seed: int):
    """Arrays and meta of one split (see :func:`decomposition_set`)."""
    samples = draw_samples(split, count, size, seed)
    components = render_samples(volume, affine, centre, size, samples)
    total = components.sum(-1)
    detector = np.stack([detector_image(total[i], {k: v[i] for k, v in samples.items()},
                                        np.random.default_rng((seed, _SPLIT_CODES[split], i, 1)))
                         for i in range(count)])
    arrays = {"drr": (total / LINE_INTEGRAL_SCALE)[..., None].astype(np.float32), "detector": detector[..., None],
              "components": components, **{k: v for k, v in samples.items() if k != "control"}}
    meta = {"components": list(COMPONENTS), "bone_prefixes": list(BONE_PREFIXES), "pose": POSE_RANGES,
            "anatomy": ANATOMY_RANGES, "detector": DETECTOR_RANGES, "line_integral_scale": LINE_INTEGRAL_SCALE,
            "max_total": float(total.max())}
    return arrays, meta


def _build(split: str, size: int, count: int, seed: int):
    volume, affine, centre = chest_components(block_factor(size))
    return _render_set(volume, affine, centre, split, size, count, seed)


register(DerivedSet(
    "xray-decomposition", ("chest-ct",),
    "PA/AP DRRs (size²) of the chest CT at random poses and anatomy, split exactly into bone, lung and soft "
    "line integrals, with the clean DRR and a detector-model radiograph (line integral / 6, [0, 1])",
    {"split": "train", "size": 64, "count": SPLIT_SIZES["train"], "seed": 0}, _build, version=1,
))


def decomposition_set(split: str, size: int = 64, source: str = "ct", count: int | None = None,
                      seed: int = 0) -> ArrayDataset:
    """Decomposition images of a split (module doc): ``source="ct"`` renders the real chest CT (cached),
    ``"phantom"`` the procedural chest (rendered on each call; fast). ``count`` defaults to
    :data:`SPLIT_SIZES`.

    Returns an ArrayDataset: drr (N, size, size, 1) float32, the DRR's line integral / LINE_INTEGRAL_SCALE;
    detector (N, size, size, 1) float32 in [0, 1], the :func:`detector_image` of the same DRR; components
    (N, size, size, 3) float32 line integrals of :data:`COMPONENTS` (their sum is the DRR); and the settings
    of :func:`draw_samples` except the control points.
    """
    if split not in SPLIT_SIZES:
        raise InputError(f"split must be one of {', '.join(SPLIT_SIZES)}, got {split!r}")
    if source not in SOURCES:
        raise InputError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if not isinstance(size, (int, np.integer)) or not 16 <= size <= 256:
        raise InputError(f"detector size must be an integer between 16 and 256 pixels, got {size!r}")
    count = SPLIT_SIZES[split] if count is None else count
    if not isinstance(count, (int, np.integer)) or count < 1:
        raise InputError(f"count must be a positive number of images, got {count!r}")
    if source == "phantom":
        arrays, _ = _render_set(*phantom_components(), split, int(size), int(count), int(seed))
    else:
        arrays, _ = build("xray-decomposition", split=split, size=int(size), count=int(count), seed=int(seed))
    return ArrayDataset(**arrays)
