"""2D/3D registration benchmark cases (POINT², methods.md §10): X-ray views of a CT at known poses.

    subject = chest_subject()                                   # the chest-ct source (or phantom_subject())
    cases = make_cases(subject, "test", 20, seed=0)             # CaseConfig() defaults: 128², views 0° and 90°
    res = register(subject.volume, subject.affine, cases.targets[k], cases.extrinsics, cases.camera,
                   cases.init_params[k], centre=subject.centre)              # kfjax.register.intensity
    kfjax.metrics.mtre(res.transform[None], cases.gt_transform[k:k + 1], subject.points)

**Poses** follow :mod:`kfjax.register.intensity`: the views' extrinsics ``E_v`` (world -> camera, fixed per
config) see the CT through a patient motion ``T`` (world -> world, ``T x = R(w)(x - c) + c + t`` about the CT
centre ``c``, :func:`kfjax.register.pose.transform_from_params`). Case i has a ground-truth pose ``T_gt``
(rotation-vector components uniform in ±``pose_rot_deg`` about the patient's left-right, anterior-posterior
and superior axes, translations uniform in ±``pose_trans_mm``; the ±20° about the superior axis stands for
the C-arm's LAO/RAO angle) and a start ``T_init = T_gt ∘ Δ``, with ``Δ`` drawn the same way from
``init_rot_deg`` / ``init_trans_mm`` (uniform per axis) about ``c`` in the CT's own axes. Since ``T_gt`` is
rigid, the initial mTRE is ``mean_x |Δ x - x|`` over the target points: its distribution depends on the
perturbation ranges and the points only.

**Calibration.** Target points (:func:`chest_subject`): 1,000 voxels drawn (fixed seed) from the bone labels
(vertebrae, ribs, sternum, clavicles, scapulae, humeri) of the CT, RMS 137 mm from ``c``. The talk's starts
had an mTRE of 20.4 mm (50th percentile) and 29.7 mm (95th). Uniform ±8° and ±16 mm per axis (methods.md's
±10° / ±20 mm, scaled by 0.8) give 20.7 / 28.2 mm (Monte Carlo, 40,000 draws; the rotations alone 14.3 mm and
the translations alone 15.8 mm median; normal laws matching the median give a 95th of 32.5 mm, uniform ones
fit both better). These are the defaults; the first 101 test cases of seed 0 have a median of 20.8 mm.

**Views** (:data:`PAIRS`): the source ``SOURCE_MM`` from ``c`` at angle θ in the axial plane (0° anterior:
an AP view; 90° the patient's right: lateral), sdd ``SDD_MM``, a ``detector_mm`` flat panel of size²
pixels (200 mm, a mobile C-arm's: 167 mm at the isocentre, so the chest is truncated and ribs and vertebrae
repeat across the field). "wide": 0° and 90°; "narrow": -20° and 20°.

**Targets** are what a C-arm would record, rendered at ``T_gt`` from :attr:`Subject.target_volume` (finer
than the registration volume, iodine contrast removed, water and bone channels) and, unlike the DRRs of
:attr:`Subject.volume`, through a realistic domain shift (each part can be switched off, :func:`no_shift`):

- a polychromatic 120 kVp spectrum (:func:`kfjax.physics.metal.polychromatic`, the shipped tables) on the
  water, bone and metal line integrals, where the DRR uses one energy (the one where water has
  ``MU_WATER_DRR``, 59.9 keV: :func:`reference_energy`);
- surgical tools in view (probability ``metal``): titanium screws and steel wires, solid cylinders fixed in
  the patient near bone (:data:`TOOLS`), with exact chord lengths (:func:`cylinder_chords`) averaged over
  ``METAL_SUPERSAMPLE``² rays per pixel; they are in the targets only, never in the CT used for DRRs;
- then :func:`kfjax.data.xray_decomposition.detector_image`: scatter haze, detector blur, Poisson noise,
  collimator blades and a display gamma, drawn per case from the config's ranges. Blur, noise, gamma and the
  scatter kernel use that module's ``DETECTOR_RANGES`` (a chest radiograph); scatter, blades and tools are
  set for intra-operative C-arm images of the trunk (more scatter, tighter collimation, tools in 80 % of cases).

A target is returned as ``TARGET_SCALE * detector image``: with every shift off it is the line integral of
the target volume, as a DRR is. Every case is drawn from its own streams ``(seed, split, index, part)``, so
splits never share a stream, a smaller count gives the first cases of a larger one, and switching a shift
off leaves the poses, starts and all other draws unchanged.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from kfjax.data.landmarks import SDD_MM, SOURCE_MM, patient_transforms
from kfjax.data.xray_decomposition import (
    BONE_PREFIXES,
    DETECTOR_RANGES,
    LUNG_PREFIXES,
    SOFT_CAP_HU,
    detector_image,
    label_ids,
    phantom_components,
    split_components,
)
from kfjax.errors import ConfigError, InputError
from kfjax.units import MU_WATER_DRR

__all__ = ["SPLITS", "PAIRS", "TOOLS", "TOOL_MATERIALS", "TARGET_SCALE", "METAL_SUPERSAMPLE", "CaseConfig",
           "Subject", "Cases", "no_shift", "reference_energy", "chest_subject", "head_subject", "phantom_subject",
           "SUBJECTS", "load_subject", "view_extrinsics",
           "camera", "draw_cases", "make_cases", "cylinder_chords", "initial_mtre"]

SPLITS = ("train", "val", "test")  # a case's random streams start (seed, SPLITS.index(split), index)
PAIRS = {"wide": (0.0, 90.0), "narrow": (-20.0, 20.0)}  # view angles, degrees (module doc)
TOOL_MATERIALS = ("Ti", "Fe")  # metals of the tools (kfjax.physics.metal tables; Fe stands for steel)
TOOLS = {
    "screw": dict(material="Ti", radius_mm=(2.0, 3.25), length_mm=(30.0, 50.0), cone_deg=30.0),
    "wire": dict(material="Fe", radius_mm=(0.5, 1.0), length_mm=(80.0, 200.0), cone_deg=180.0),
}
# a screw is centred on a bone anchor, its axis within cone_deg of the anterior-posterior axis (pedicle-screw
# like); a wire (K-wire, cable) starts at a bone anchor and runs in a uniformly random direction
METAL_REACH_MM = 100.0  # tools are anchored at bone voxels within this distance of the CT centre (in view)
METAL_SUPERSAMPLE = 4  # rays per pixel side for the tools' line integrals (a wire is thinner than a pixel)
TARGET_SCALE = 12.0  # line integral shown white before the gamma: above -log(1 / 5e4), the largest measurable
_POINT_SEED = 0  # stream of the subject's target points and anchors (fixed: the same for every case and split)
ANCHORS = 5000  # bone anchors kept per subject (and per user CT registered by POINT²)
BONE_HU = 250.0  # bone by threshold where a CT has no bone labels (head CT, a user's CT): cancellous and denser
BODY_HU = -400.0  # the head CT's body: the largest connected region above this (drops the head holder)
_CHUNK = 8  # poses per jitted render call (a fixed shape: one compile per stepping axis)
_PARTS = {"pose": 0, "start": 1, "detector": 2, "metal": 3, "noise": 4}  # a case's random streams; noise + view


# ------------------------------------------------------------------------------------------------ config
def _numbers(v, n, test) -> bool:
    """``v`` is a tuple of ``n`` (None: >= 1) ints/floats that pass ``test``."""
    return (isinstance(v, tuple) and (len(v) >= 1 if n is None else len(v) == n)
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and test(x) for x in v))


def _range(test=lambda x: x >= 0):
    return lambda v: _numbers(v, 2, test) and v[0] <= v[1]


_RULES = {  # field -> (test, what it must be)
    "size": (lambda v: isinstance(v, int) and 16 <= v <= 512, "an integer number of pixels in [16, 512]"),
    "detector_mm": (lambda v: v > 0, "a positive side in mm"),
    "views_deg": (lambda v: _numbers(v, None, np.isfinite), f"a tuple of view angles in degrees, e.g. {PAIRS}"),
    **{k: (lambda v: _numbers(v, 3, lambda x: 0 <= x <= 90), "3 half-widths in [0, 90] degrees (LR, AP, SI)")
       for k in ("pose_rot_deg", "init_rot_deg")},
    **{k: (lambda v: _numbers(v, 3, lambda x: x >= 0), "3 non-negative half-widths in mm (LR, AP, SI)")
       for k in ("pose_trans_mm", "init_trans_mm")},
    **{k: (_range(), "a (low, high) range with 0 <= low <= high") for k in ("scatter", "scatter_sigma", "blur")},
    "photons": (lambda v: _range()(v) and (v[0] > 0 or v[1] == 0), "(low, high) photons with 0 < low <= high, "
                "or (0, 0) for no noise"),
    "gamma": (_range(lambda x: x > 0), "a (low, high) range with 0 < low <= high"),
    "collimate": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "metal": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "blade": (lambda v: 0 <= v <= 0.5, "a fraction of the side in [0, 0.5]"),
    **{k: (lambda v: _range()(v) and all(isinstance(x, int) for x in v), "(min, max) integer counts, "
           "0 <= min <= max") for k in ("screws", "wires")},
}


@dataclasses.dataclass(frozen=True)
class CaseConfig:
    """How cases are drawn and rendered (module doc); ranges are (low, high), drawn uniformly per case."""

    size: int = 128  # detector pixels per side
    detector_mm: float = 200.0  # detector side, mm: a mobile C-arm's 20 cm panel, 167 mm at the isocentre
    views_deg: tuple = PAIRS["wide"]  # source angle of each view, degrees: 0 anterior (AP), 90 the patient's right
    pose_rot_deg: tuple = (5.0, 5.0, 20.0)  # ground truth: ± degrees of the rotation vector about LR, AP, SI
    pose_trans_mm: tuple = (20.0, 20.0, 20.0)  # ground truth: ± mm along LR, AP, SI
    init_rot_deg: tuple = (8.0, 8.0, 8.0)  # start perturbation: ± degrees per axis (calibrated, module doc)
    init_trans_mm: tuple = (16.0, 16.0, 16.0)  # start perturbation: ± mm per axis
    polychromatic: bool = True  # 120 kVp spectrum on water, bone and metal (False: one energy, as the DRR)
    scatter: tuple = (0.2, 1.0)  # scatter-to-primary ratio (the trunk on a C-arm with a grid)
    scatter_sigma: tuple = DETECTOR_RANGES["scatter_sigma"]  # scatter kernel σ, fraction of the detector side
    blur: tuple = DETECTOR_RANGES["blur"]  # detector blur σ, px
    photons: tuple = DETECTOR_RANGES["photons"]  # I0 per pixel, log-uniform; (0, 0): no noise
    gamma: tuple = DETECTOR_RANGES["gamma"]  # display exponent
    collimate: float = 0.7  # probability of collimator blades
    blade: float = 0.2  # each blade covers up to this fraction of the side
    metal: float = 0.8  # probability that a case has tools in view
    screws: tuple = (2, 6)  # number of screws in a case with tools
    wires: tuple = (0, 3)  # number of wires in a case with tools

    def __post_init__(self):
        for name, (test, want) in _RULES.items():
            value = getattr(self, name)
            try:
                good = bool(test(value))
            except TypeError:
                good = False
            if not good:
                raise ConfigError(f"CaseConfig.{name} must be {want}, got {value!r}")


def no_shift(config: CaseConfig = CaseConfig()) -> CaseConfig:
    """``config`` with the domain shift off: one energy, no tools, scatter, blur, noise, blades or gamma."""
    return dataclasses.replace(config, polychromatic=False, scatter=(0.0, 0.0), blur=(0.0, 0.0), photons=(0.0, 0.0),
                               gamma=(1.0, 1.0), collimate=0.0, metal=0.0)


@functools.cache
def reference_energy() -> float:
    """keV at which water has the DRR's attenuation ``MU_WATER_DRR`` in the shipped tables (59.9 keV)."""
    from kfjax.physics.metal import load_tables

    t = load_tables()
    return float(np.interp(MU_WATER_DRR, t["mu_water"][::-1], t["energies_kev"][::-1]))


# ------------------------------------------------------------------------------------------------ subject
@dataclasses.dataclass(frozen=True, eq=False)
class Subject:
    """One patient: the CT for DRRs, the volume the targets are rendered from, target points and anchors.

    volume: (X, Y, Z) float32 μ 1/mm, the CT that registration renders (DRRs); affine: (4, 4) index -> mm.
    target_volume: (X', Y', Z', 2) float32 μ 1/mm at the reference energy, water and bone channels (their sum
    is the patient's attenuation); target_affine: (4, 4). centre: (3,) mm, isocentre and rotation centre.
    points: (K, 3) mm, mTRE target points. anchors: (M, 3) mm, bone voxels where tools may be fixed.
    """

    name: str
    volume: np.ndarray
    affine: np.ndarray
    target_volume: np.ndarray
    target_affine: np.ndarray
    centre: np.ndarray
    points: np.ndarray
    anchors: np.ndarray


def _world(index, affine):
    return np.asarray(index, np.float64) @ np.asarray(affine, np.float64)[:3, :3].T + np.asarray(affine)[:3, 3]


def _points_and_anchors(bone_index, affine, centre, points: int):
    """(points (K, 3), anchors (M, 3)) world mm drawn from bone voxel indices (B, 3) with the fixed stream."""
    rng = np.random.default_rng(_POINT_SEED)
    if len(bone_index) < points:
        raise InputError(f"the subject has {len(bone_index)} bone voxels, fewer than the {points} points asked for")
    pts = _world(bone_index[rng.choice(len(bone_index), points, replace=False)], affine)
    near = _world(bone_index, affine)
    near = near[np.linalg.norm(near - centre, axis=1) <= METAL_REACH_MM]
    if len(near) == 0:
        raise InputError(f"no bone within {METAL_REACH_MM} mm of the centre to anchor tools to")
    return pts, near[rng.choice(len(near), min(ANCHORS, len(near)), replace=False)]


def _subject_from_ct(name, hu, affine, bone, lung, target_downsample, volume_downsample, points) -> Subject:
    """A :class:`Subject` of a CT in HU (X, Y, Z) with its bone and lung masks: the DRR volume (``drr.hu_to_mu``,
    block-averaged ``volume_downsample``), the target volume (non-bone voxels capped at ``SOFT_CAP_HU``, split
    into water and bone by :func:`kfjax.data.xray_decomposition.split_components`, block-averaged
    ``target_downsample``), the CT's centre, ``points`` target points and the anchors from the bone voxels."""
    from kfjax.physics.drr import hu_to_mu
    from kfjax.register.pose import downsample_volume, volume_centre

    volume, vol_affine = downsample_volume(np.asarray(hu_to_mu(hu)), affine, volume_downsample)
    capped = np.where(bone, hu, np.minimum(hu, SOFT_CAP_HU))
    b, lu, soft = split_components(np.asarray(hu_to_mu(capped)), bone, lung)
    water, t_affine = downsample_volume(lu + soft, affine, target_downsample)
    bone_mu, _ = downsample_volume(b, affine, target_downsample)
    centre = volume_centre(affine, hu.shape)
    pts, anchors = _points_and_anchors(np.argwhere(bone), affine, centre, points)
    return Subject(name, volume, vol_affine, np.stack([water, bone_mu], -1), t_affine, centre, pts, anchors)


@functools.lru_cache(maxsize=2)
def chest_subject(target_downsample=(2, 2, 1), volume_downsample=(4, 4, 1), points: int = 1000) -> Subject:
    """The ``chest-ct`` source (512x512x133, 0.703x0.703x2.5 mm) as a :class:`Subject`.

    DRR volume: ``drr.hu_to_mu`` of the CT as it is (contrast, table), block-averaged ``volume_downsample``
    (as experiments/registration_opt). Target volume: non-bone voxels capped at ``SOFT_CAP_HU`` (no iodine
    in a radiograph), split into water (lung + soft tissue) and bone (the excess over 40 HU inside the bone
    labels, :func:`kfjax.data.xray_decomposition.split_components`), block-averaged ``target_downsample``.
    Points: ``points`` random voxels of the bone labels; anchors: bone voxels within METAL_REACH_MM of the centre.
    """
    from kfjax.data.sources import load

    d = load("chest-ct")
    hu = np.asarray(d["ct"].array, np.float32)
    affine = np.asarray(d["ct"].affine, np.float64)
    labels = np.asarray(d["mask"].array)
    bone = np.isin(labels, label_ids(d["structures"], BONE_PREFIXES))
    lung = np.isin(labels, label_ids(d["structures"], LUNG_PREFIXES))
    return _subject_from_ct("chest-ct", hu, affine, bone, lung, target_downsample, volume_downsample, points)


@functools.lru_cache(maxsize=2)
def head_subject(volume_downsample=(2, 2, 1), points: int = 1000) -> Subject:
    """The ``head-ct`` source (256x256x108, 0.957x0.957x1.5 mm, skull base to vertex, teeth with fillings) as a
    :class:`Subject`: a second anatomy, with no labels.

    Only the head is kept: voxels outside the largest connected region above ``BODY_HU`` (the scanner's head
    holder) become air (-1000 HU). Bone is ``BONE_HU`` and above inside the head (skull, mandible, cervical
    vertebrae, dental fillings). DRR volume: ``drr.hu_to_mu`` block-averaged ``volume_downsample`` (1.9 mm in
    plane). Target volume on the CT's grid: water (everything but the bone's excess over the soft-tissue fill)
    and bone (:func:`kfjax.data.xray_decomposition.split_components`), non-bone voxels capped at
    ``SOFT_CAP_HU``. Points: ``points`` random bone voxels; anchors: bone voxels within METAL_REACH_MM of the centre.
    """
    from scipy import ndimage

    from kfjax.data.sources import load

    ct = load("head-ct")
    hu, affine = np.asarray(ct.array, np.float32), np.asarray(ct.affine, np.float64)
    regions, _ = ndimage.label(hu > BODY_HU)
    head = regions == np.argmax(np.bincount(regions.ravel())[1:]) + 1
    hu = np.where(head, hu, np.float32(-1000.0))
    bone = head & (hu >= BONE_HU)
    return _subject_from_ct("head-ct", hu, affine, bone, np.zeros_like(bone), (1, 1, 1), volume_downsample, points)


@functools.lru_cache(maxsize=2)
def phantom_subject(points: int = 200) -> Subject:
    """The procedural chest of :func:`kfjax.data.xray_decomposition.phantom_components` (56x40x56 voxels of
    6 mm, no data needed) as a :class:`Subject`: the DRR volume is the target volume's sum on the same grid."""
    parts, affine, _ = phantom_components()
    target = np.stack([parts[..., 1] + parts[..., 2], parts[..., 0]], -1).astype(np.float32)
    centre = _world((np.asarray(parts.shape[:3]) - 1) / 2.0, affine)
    pts, anchors = _points_and_anchors(np.argwhere(parts[..., 0] > 0), affine, centre, points)
    return Subject("phantom", target.sum(-1), affine, target, affine, centre, pts, anchors)


SUBJECTS = {"chest": chest_subject, "head": head_subject, "phantom": phantom_subject}  # name -> loader


def load_subject(name: str) -> Subject:
    """The registration subject called ``name`` (a key of :data:`SUBJECTS`), built once per process."""
    if name not in SUBJECTS:
        raise ConfigError(f"unknown registration subject '{name}'; choose one of {', '.join(SUBJECTS)}")
    return SUBJECTS[name]()


# ------------------------------------------------------------------------------------------------ geometry
def camera(config: CaseConfig = CaseConfig()):
    """The C-arm (:class:`kfjax.physics.carm.CArm`) of ``config``: sdd SDD_MM, size² pixels over detector_mm."""
    from kfjax.physics.carm import CArm

    pitch = config.detector_mm / config.size
    return CArm(sdd=SDD_MM, height=config.size, width=config.size, dx=pitch, dy=pitch)


def view_extrinsics(centre, views_deg) -> np.ndarray:
    """(V, 4, 4) world -> camera: source SOURCE_MM from ``centre`` (3,) mm at each angle (degrees, 0 anterior,
    90 the patient's right, RAS), aimed at ``centre``, superior up."""
    from kfjax.physics import carm

    theta = np.deg2rad(np.asarray(views_deg, np.float64))
    sources = np.asarray(centre, np.float64) + SOURCE_MM * np.stack([np.sin(theta), np.cos(theta), 0 * theta], -1)
    return np.stack([np.asarray(carm.look_at(s, centre), np.float64) for s in sources])


# ------------------------------------------------------------------------------------------------ drawing
def _uniform(rng, half_widths):
    return rng.uniform(-1.0, 1.0, 3) * np.asarray(half_widths, np.float64)


def _direction(rng, cone_deg: float):
    """Unit vector (3,) uniform within ``cone_deg`` of the anterior-posterior axis (either sense)."""
    cos_t = rng.uniform(np.cos(np.deg2rad(cone_deg)), 1.0)
    phi = rng.uniform(0.0, 2 * np.pi)
    sin_t = np.sqrt(1.0 - cos_t**2)
    return np.array([sin_t * np.cos(phi), cos_t, sin_t * np.sin(phi)]) * rng.choice([-1.0, 1.0])


def _tools(rng, anchors, config: CaseConfig) -> np.ndarray:
    """(screws_max + wires_max, 8) tools: end a (3,) mm, end b (3,) mm, radius mm, material index (-1 none)."""
    out = np.zeros((config.screws[1] + config.wires[1], 8))
    out[:, 7] = -1.0
    if rng.random() >= config.metal:
        return out
    row = 0
    for kind, (low, high) in (("screw", config.screws), ("wire", config.wires)):
        spec = TOOLS[kind]
        for _ in range(rng.integers(low, high + 1)):
            anchor = anchors[rng.integers(len(anchors))]
            axis = _direction(rng, spec["cone_deg"]) * rng.uniform(*spec["length_mm"])
            a = anchor - axis / 2 if kind == "screw" else anchor
            out[row] = [*a, *(a + axis), rng.uniform(*spec["radius_mm"]), TOOL_MATERIALS.index(spec["material"])]
            row += 1
    return out


def _split_code(split: str) -> int:
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return SPLITS.index(split)


def draw_cases(subject: Subject, split: str, count: int, seed: int = 0,
               config: CaseConfig = CaseConfig()) -> dict[str, np.ndarray]:
    """Everything random about cases ``0 .. count-1`` of a split, without rendering.

    Returns gt_params, perturbation (N, 6): rotation vector rad, translation mm; gt_transform, init_transform
    (N, 4, 4) world -> world; init_params (N, 6) (about ``subject.centre``); init_mtre (N,) mm; tools (N, T, 8)
    (:func:`_tools`); scatter, scatter_sigma, blur, photons, gamma (N,); window (N, 4) int px (top, bottom,
    left, right).
    """
    code = _split_code(split)
    if not isinstance(count, (int, np.integer)) or count < 1:
        raise InputError(f"count must be a positive number of cases, got {count!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(config, CaseConfig):
        raise ConfigError(f"config must be a CaseConfig, not {type(config).__name__}")
    rows = []
    for i in range(int(count)):
        stream = {k: np.random.default_rng((int(seed), code, i, v)) for k, v in _PARTS.items() if k != "noise"}
        pose, start, det = stream["pose"], stream["start"], stream["detector"]
        row = {"gt_params": np.r_[np.deg2rad(_uniform(pose, config.pose_rot_deg)),
                                  _uniform(pose, config.pose_trans_mm)],
               "perturbation": np.r_[np.deg2rad(_uniform(start, config.init_rot_deg)),
                                     _uniform(start, config.init_trans_mm)],
               "tools": _tools(stream["metal"], subject.anchors, config)}
        for key in ("scatter", "scatter_sigma", "blur", "gamma"):
            row[key] = det.uniform(*getattr(config, key))
        lo, hi = np.log(np.maximum(config.photons, 1.0))
        row["photons"] = np.exp(lo + det.random() * (hi - lo)) if config.photons[1] > 0 else 0.0  # one draw either way
        n = config.size
        cut = np.floor(det.uniform(0, config.blade, 4) * n).astype(int) * (det.random() < config.collimate)
        row["window"] = np.array([cut[0], n - cut[1], cut[2], n - cut[3]])
        rows.append(row)
    out = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    c = subject.centre
    ones = np.ones((count, 3))
    out["gt_transform"] = patient_transforms(out["gt_params"][:, :3], out["gt_params"][:, 3:], ones, c)
    delta = patient_transforms(out["perturbation"][:, :3], out["perturbation"][:, 3:], ones, c)
    out["init_transform"] = out["gt_transform"] @ delta
    out["init_params"] = _params(out["init_transform"], c)
    out["init_mtre"] = initial_mtre(out["perturbation"], subject.points, c)
    return out


def _params(transforms, centre) -> np.ndarray:
    """Host float64 inverse of :func:`kfjax.register.pose.transform_from_params`: (N, 4, 4) -> (N, 6)."""
    from scipy.spatial.transform import Rotation

    r = transforms[:, :3, :3]
    t = transforms[:, :3, 3] - centre + r @ centre
    return np.concatenate([Rotation.from_matrix(r).as_rotvec(), t], 1)


def initial_mtre(perturbation, points, centre) -> np.ndarray:
    """mTRE (N,) mm of starts ``T_gt ∘ Δ``: ``mean_x |Δ x - x|`` for perturbations (N, 6) (rotation vector rad,
    translation mm, about ``centre`` (3,) mm) over ``points`` (K, 3) mm; independent of ``T_gt``."""
    from scipy.spatial.transform import Rotation

    p = np.asarray(perturbation, np.float64).reshape(-1, 6)
    x = np.asarray(points, np.float64) - np.asarray(centre, np.float64)
    r = Rotation.from_rotvec(p[:, :3]).as_matrix()
    moved = np.einsum("nij,kj->nki", r, x) - x[None] + p[:, None, 3:]
    return np.linalg.norm(moved, axis=-1).mean(-1)


# ------------------------------------------------------------------------------------------------ metal
def cylinder_chords(source, targets, a, b, radius):
    """Lengths (R, T) mm of the segments source -> targets (R, 3) inside solid cylinders with axis a -> b
    (T, 3) mm and ``radius`` (T,) mm (jax, jittable; a cylinder of length or radius 0 gives 0).

    Per ray x(α) = s + α d, α in [0, 1]: the α interval within ``radius`` of the axis line (centred on the
    closest approach, computed as a vector difference so float32 keeps ~1e-4 mm), cut by the two end planes.
    """
    import jax.numpy as jnp

    tiny = 1e-20
    s, q = jnp.asarray(source), jnp.asarray(targets)
    d = q - s  # (R, 3)
    axis = jnp.asarray(b) - jnp.asarray(a)  # (T, 3)
    length = jnp.sqrt(jnp.sum(axis * axis, -1))
    u = axis / jnp.maximum(length, tiny)[:, None]
    w = s - jnp.asarray(a)  # (T, 3)
    du = d @ u.T  # (R, T)
    wu = jnp.sum(w * u, -1)  # (T,)
    d_perp = d[:, None, :] - du[..., None] * u[None]  # (R, T, 3)
    w_perp = w - wu[:, None] * u  # (T, 3)
    aa = jnp.maximum(jnp.sum(d_perp * d_perp, -1), tiny)
    centre = -jnp.sum(w_perp[None] * d_perp, -1) / aa  # α of the closest approach to the axis line
    closest = w_perp[None] + centre[..., None] * d_perp
    half = jnp.sqrt(jnp.maximum(jnp.asarray(radius)[None] ** 2 - jnp.sum(closest * closest, -1), 0.0) / aa)
    du_safe = jnp.where(jnp.abs(du) < tiny, tiny, du)
    e0, e1 = -wu / du_safe, (length - wu) / du_safe  # α at the two end planes
    lo = jnp.maximum(jnp.maximum(centre - half, jnp.minimum(e0, e1)), 0.0)
    hi = jnp.minimum(jnp.minimum(centre + half, jnp.maximum(e0, e1)), 1.0)
    return jnp.maximum(hi - lo, 0.0) * jnp.sqrt(jnp.sum(d * d, -1))[:, None]


@functools.lru_cache(maxsize=8)
def _metal_renderer(cam, supersample: int):
    """jit(extrinsics (B, 4, 4), tools (B, T, 8), mu (M,)) -> (B, H, W, M) line integrals of each metal,
    the mean over supersample² rays per pixel; ``lax.map`` over B bounds the memory."""
    import jax
    import jax.numpy as jnp

    from kfjax.physics import carm

    fine = cam.scaled(supersample)

    def one(xs, mu):
        ext, tools = xs
        pix = carm.pixel_positions(fine, ext).reshape(-1, 3)
        chords = cylinder_chords(carm.source_position(ext), pix, tools[:, :3], tools[:, 3:6], tools[:, 6])
        per_metal = (tools[:, 7:8] == jnp.arange(mu.shape[0], dtype=tools.dtype)) * mu  # (T, M), -1 matches none
        p = (chords @ per_metal).reshape(cam.height, supersample, cam.width, supersample, -1)
        return p.mean((1, 3))

    return jax.jit(lambda exts, tools, mu: jax.lax.map(lambda xs: one(xs, mu), (exts, tools)))


# ------------------------------------------------------------------------------------------------ render
def _render(volume, affine, extrinsics, cam) -> np.ndarray:
    """Joseph DRRs (P, H, W, C) of ``volume`` (X, Y, Z, C) for concrete extrinsics (P, 4, 4): grouped by
    stepping axis, ``_CHUNK`` poses per jitted call (the last chunk padded), so each axis compiles once."""
    import jax.numpy as jnp

    from kfjax.physics import drr

    vol, aff = jnp.asarray(volume, jnp.float32), jnp.asarray(affine, jnp.float32)
    axes = drr.principal_axis(cam, extrinsics, affine)
    out = np.zeros((len(extrinsics), cam.height, cam.width, volume.shape[-1]), np.float32)
    for axis in np.unique(axes):
        render = drr.make_renderer(cam, axis=int(axis))
        index = np.flatnonzero(axes == axis)
        for s in range(0, len(index), _CHUNK):
            part = index[s:s + _CHUNK]
            poses = extrinsics[np.pad(part, (0, _CHUNK - len(part)), mode="edge")].astype(np.float32)
            out[part] = np.asarray(render(vol, aff, poses))[: len(part)]
    return out


def _materials():
    """(ratios (E, 2 + M) of μ(E) / μ(E_ref) for water, bone and TOOL_MATERIALS, spectrum (E,), μ_ref (M,))."""
    from kfjax.physics.metal import MetalConfig, attenuation_ratios, load_tables, metal_mu

    e = reference_energy()
    cols = [attenuation_ratios(TOOL_MATERIALS[0], e)[:, :2]] + [attenuation_ratios(m, e)[:, 2:] for m in TOOL_MATERIALS]
    mu = np.array([metal_mu(MetalConfig(material=m, energy=e)) for m in TOOL_MATERIALS])
    return np.concatenate(cols, 1), load_tables()["spectrum"], mu


_DETECTOR_KEYS = ("scatter", "scatter_sigma", "blur", "photons", "gamma", "window")  # detector_image settings


@dataclasses.dataclass(frozen=True, eq=False)
class Cases:
    """Rendered cases (:func:`make_cases`); N cases, V views, (H, W) = (size, size).

    camera: the shared :class:`kfjax.physics.carm.CArm`; extrinsics (V, 4, 4) world -> camera at the reference
    pose; gt_extrinsics (N, V, 4, 4) = extrinsics @ gt_transform, the views as they saw the CT; targets
    (N, V, H, W) float32, the simulated X-rays as line integrals (module doc); metal (N, V, H, W) float32, the
    tools' line integral at the reference energy (0: no tool). The rest as :func:`draw_cases` returns them;
    detector: its per-case detector settings (each (N,), window (N, 4)).
    """

    split: str
    seed: int
    config: CaseConfig
    camera: object
    extrinsics: np.ndarray
    gt_extrinsics: np.ndarray
    targets: np.ndarray
    metal: np.ndarray
    gt_params: np.ndarray
    gt_transform: np.ndarray
    perturbation: np.ndarray
    init_params: np.ndarray
    init_transform: np.ndarray
    init_mtre: np.ndarray
    tools: np.ndarray
    detector: dict

    def __len__(self) -> int:
        return len(self.targets)


def make_cases(subject: Subject, split: str, count: int, seed: int = 0, config: CaseConfig = CaseConfig()) -> Cases:
    """Draw (:func:`draw_cases`) and render ``count`` cases of ``split`` (module doc)."""
    import jax.numpy as jnp

    from kfjax.physics.metal import polychromatic

    draws = draw_cases(subject, split, count, seed, config)
    cam = camera(config)
    ext = view_extrinsics(subject.centre, config.views_deg)
    v = len(ext)
    gt_ext = ext[None] @ draws["gt_transform"][:, None]  # (N, V, 4, 4)
    flat = gt_ext.reshape(-1, 4, 4)
    tissue = _render(subject.target_volume, subject.target_affine, flat, cam)  # (N V, H, W, 2)
    ratios, spectrum, mu_metal = _materials()
    tools = np.repeat(draws["tools"], v, axis=0).astype(np.float32)
    metals = np.zeros(tissue.shape[:-1] + (len(TOOL_MATERIALS),), np.float32)
    if np.any(tools[..., 6] > 0):
        metals = np.asarray(_metal_renderer(cam, METAL_SUPERSAMPLE)(
            jnp.asarray(flat, jnp.float32), jnp.asarray(tools), jnp.asarray(mu_metal, jnp.float32)))
    channels = np.concatenate([tissue, metals], -1)
    if config.polychromatic:
        p = np.asarray(polychromatic(jnp.asarray(channels), jnp.asarray(ratios, jnp.float32), spectrum))
    else:
        p = channels.sum(-1)
    code = _split_code(split)
    targets = np.empty(p.shape, np.float32)
    for k in range(len(flat)):
        n, view = divmod(k, v)
        settings = {"hardening": 0.0, **{key: draws[key][n] for key in _DETECTOR_KEYS}}
        rng = np.random.default_rng((int(seed), code, n, _PARTS["noise"] + view))
        targets[k] = TARGET_SCALE * detector_image(p[k], settings, rng, scale=TARGET_SCALE)
    hw = (cam.height, cam.width)
    rest = {k: draws[k] for k in ("gt_params", "gt_transform", "perturbation", "init_params", "init_transform",
                                  "init_mtre", "tools")}
    return Cases(split, int(seed), config, cam, ext, gt_ext, targets.reshape((count, v) + hw),
                 metals.sum(-1).reshape((count, v) + hw), **rest,
                 detector={k: draws[k] for k in _DETECTOR_KEYS})
