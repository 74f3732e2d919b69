"""C-arm geometry and patient-pose JSON files of `kfjax register`: read, validate, convert (mm, degrees).

Geometry file: one entry per X-ray view, in the order the views are given; all views share one detector::

    {
      "sdd": 1020.0,                 source-to-detector distance, mm
      "pixel_spacing": 0.8,          detector pitch, mm: one number, or [dy, dx] (between rows, between columns)
      "detector": [H, W],            detector rows and columns, pixels: every X-ray has this size
      "views": [                     one of the three forms per view:
        {"extrinsic": [[r, r, r, t], [r, r, r, t], [r, r, r, t], [0, 0, 0, 1]]},
        {"diffdrr": {"rotation_deg": [3], "translation_mm": [3], "convention": "ZXY", "orientation": "AP"}},
        {"astra_cone_vec": [12]}
      ]
    }

- ``extrinsic``: 4x4 rigid map world -> camera (world = RAS mm through the CT's affine; camera frame of
  :mod:`kfjax.physics.carm`: origin at the source, +z towards the detector, +x along columns, +y along rows).
- ``diffdrr``: DiffDRR 0.6.1's pose ``drr(rot, xyz, parameterization="euler_angles", convention=...)`` of a
  CT read with ``center_volume=True`` (the isocentre is the CT's centre), angles in degrees as
  ``kfjax drr --pose``; ``convention`` (default "ZXY") and ``orientation`` ("AP", the default, or null) as
  DiffDRR's (:func:`kfjax.physics.carm.from_diffdrr`).
- ``astra_cone_vec``: one ASTRA ``cone_vec`` row (source, detector centre, column step, row step) in the
  ASTRA volume frame of :func:`kfjax.physics.carm.astra_from_world` (centred on the CT, mm, ASTRA x, y, z =
  voxel axes i, j, k). Its detector must be the shared one (sdd, pitch, no principal-point offset).

Pose file (``--init``, and ``pose.json`` written by `kfjax register`): the patient motion ``T`` (world ->
world) that the views see the CT through, ``E_v @ T`` (:mod:`kfjax.register.intensity`)::

    {"rotation_deg": [3], "translation_mm": [3]}      rotation vector (degrees) about the CT centre, then shift
    {"transform": 4x4}                                 T itself

``T x = R(w) (x - c) + c + t`` with ``c`` the CT centre (``"centre_mm"`` when the file gives it). A file
with both forms must be consistent; ``"similarity"``, ``"method"``, ``"checkpoint"`` and ``"refined"``
(written by `kfjax register`) are ignored. Every problem raises :class:`kfjax.errors.InputError` with a one-line message.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kfjax.errors import InputError
from kfjax.physics import carm, se3

__all__ = ["Geometry", "load_geometry", "check_images", "check_sees_volume", "load_pose", "pose_record",
           "params_to_transform", "transform_to_params", "RIGID_ATOL"]

RIGID_ATOL = 1e-3  # tolerance of an orthonormal rotation block (and of det = +1) in the files
_TOP_KEYS = ("sdd", "pixel_spacing", "detector", "views")
_VIEW_FORMS = ("extrinsic", "diffdrr", "astra_cone_vec")
_DIFFDRR_KEYS = ("rotation_deg", "translation_mm", "convention", "orientation")
_POSE_KEYS = ("rotation_deg", "translation_mm", "transform", "centre_mm", "similarity", "method", "checkpoint",
              "refined")


@dataclass(frozen=True)
class Geometry:
    """A loaded geometry file: the shared ``camera`` and ``extrinsics`` (V, 4, 4) float64 world -> camera
    (rotation blocks exactly orthonormal), ``forms`` (V,) the form each view was given in."""

    camera: carm.CArm
    extrinsics: np.ndarray
    forms: tuple[str, ...]


# ------------------------------------------------------------------------------------------------ helpers
def _read_json(path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cannot read {what} '{path}': no such file; check the path")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {what} '{path}' ({type(e).__name__}); check the file") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{what} '{path}' is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} '{path}' must hold a JSON object {{...}}, not {type(data).__name__}")
    return data


def _keys(obj: dict, allowed, required, where: str) -> None:
    unknown = [k for k in obj if k not in allowed]
    if unknown:
        raise InputError(f"{where}: unknown key '{unknown[0]}'; valid keys: {', '.join(allowed)}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise InputError(f"{where}: missing key '{missing[0]}' (required: {', '.join(required)})")


def _numbers(value, shape: tuple, where: str) -> np.ndarray:
    """``value`` as a float64 array of ``shape``; one-line InputError for wrong shapes, non-numbers, NaN/Inf."""
    def flat(v):
        if isinstance(v, list):
            return [x for item in v for x in flat(item)]
        return [v]

    items = flat(value)
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in items):
        raise InputError(f"{where} must hold numbers only, got {json.dumps(value)[:60]}")
    try:
        a = np.asarray(value, np.float64)
    except ValueError:  # ragged lists
        raise InputError(f"{where} must be {_shape_text(shape)}, got a ragged list") from None
    if a.shape != shape:
        raise InputError(f"{where} must be {_shape_text(shape)}, got shape {list(a.shape)}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{where} has a non-finite number (NaN or Infinity); give finite values")
    return a


def _shape_text(shape: tuple) -> str:
    return "a number" if shape == () else "a list of " + " x ".join(map(str, shape)) + " numbers"


def _rigid(m: np.ndarray, where: str) -> np.ndarray:
    """Check a 4x4 rigid matrix (rotation orthonormal within RIGID_ATOL, det +1, last row 0 0 0 1) and
    return it with the rotation block projected onto the nearest rotation."""
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise InputError(f"{where} is not rigid: its last row must be 0 0 0 1, got {m[3].tolist()}")
    if not bool(se3.is_rotation(m[:3, :3], RIGID_ATOL)):
        det = float(np.linalg.det(m[:3, :3]))
        raise InputError(f"{where} is not rigid: its 3x3 rotation block is not orthonormal with determinant +1 "
                         f"(within {RIGID_ATOL:g}; det {det:.4g}); give a rotation, no scaling, shear or mirror")
    u, _, vt = np.linalg.svd(m[:3, :3])
    out = m.copy()
    out[:3, :3] = u @ vt
    return out


# ------------------------------------------------------------------------------------------------ geometry
def load_geometry(path: str | os.PathLike, affine, shape) -> Geometry:
    """Read and validate the geometry file at ``path`` (schema in the module docstring) for a CT with voxel ->
    world ``affine`` (4, 4) mm and ``shape`` (X, Y, Z) (as loaded, before any downsampling)."""
    data = _read_json(path, "geometry")
    name = f"geometry '{Path(path).name}'"
    _keys(data, _TOP_KEYS, _TOP_KEYS, name)
    sdd = float(_numbers(data["sdd"], (), f"{name}: sdd"))
    spacing = data["pixel_spacing"]
    spacing = _numbers(spacing, (2,) if isinstance(spacing, list) else (), f"{name}: pixel_spacing")
    dy, dx = (float(spacing), float(spacing)) if spacing.ndim == 0 else (float(spacing[0]), float(spacing[1]))
    det = _numbers(data["detector"], (2,), f"{name}: detector")
    if sdd <= 0 or min(dy, dx) <= 0:
        raise InputError(f"{name}: sdd and pixel_spacing must be positive (mm), got {sdd:g} and {dy:g}, {dx:g}")
    if np.any(det < 1) or np.any(det != np.round(det)):
        raise InputError(f"{name}: detector must be [rows, columns], whole numbers >= 1, got {det.tolist()}")
    camera = carm.CArm(sdd, int(det[0]), int(det[1]), dx, dy)
    views = data["views"]
    if not isinstance(views, list) or not views:
        raise InputError(f"{name}: views must be a non-empty list, one entry per X-ray")
    affine = np.asarray(affine, np.float64)
    exts, forms = [], []
    for k, view in enumerate(views):
        where = f"{name}: views[{k}]"
        if not isinstance(view, dict) or len(view) != 1 or next(iter(view)) not in _VIEW_FORMS:
            keys = ", ".join(view) if isinstance(view, dict) else type(view).__name__
            raise InputError(f"{where} must be an object with exactly one of {', '.join(_VIEW_FORMS)} "
                             f"(got {keys or 'nothing'})")
        form, value = next(iter(view.items()))
        exts.append(_view_extrinsic(form, value, camera, affine, shape, f"{where}.{form}"))
        forms.append(form)
    return Geometry(camera, np.stack(exts), tuple(forms))


def _view_extrinsic(form: str, value, camera: carm.CArm, affine, shape, where: str) -> np.ndarray:
    """The (4, 4) world -> camera matrix of one view entry."""
    if form == "extrinsic":
        return _rigid(_numbers(value, (4, 4), where), where)
    if form == "diffdrr":
        if not isinstance(value, dict):
            raise InputError(f"{where} must be an object with keys {', '.join(_DIFFDRR_KEYS)}")
        _keys(value, _DIFFDRR_KEYS, _DIFFDRR_KEYS[:2], where)
        rot = _numbers(value["rotation_deg"], (3,), f"{where}.rotation_deg")
        xyz = _numbers(value["translation_mm"], (3,), f"{where}.translation_mm")
        convention, orientation = value.get("convention", "ZXY"), value.get("orientation", "AP")
        if not isinstance(convention, str):
            raise InputError(f"{where}.convention must be a string such as \"ZXY\"")
        try:
            m = carm.from_diffdrr(np.deg2rad(rot), xyz, convention.upper(), orientation,
                                  isocenter=carm.diffdrr_isocenter(affine, shape))
        except (ValueError, TypeError) as e:  # a bad convention or orientation
            raise InputError(f"{where}: {e}") from None
        return _rigid(np.asarray(m, np.float64), where)
    vec = _numbers(value, (12,), where)
    try:
        cam, m = carm.from_astra_cone_vec(vec, affine, shape, camera.height, camera.width)
    except ValueError as e:
        raise InputError(f"{where}: {e}") from None
    want = {"sdd": camera.sdd, "dx": camera.dx, "dy": camera.dy}
    for key, value in want.items():
        got = getattr(cam, key)
        if abs(got - value) > 1e-4 * value:
            raise InputError(f"{where} implies {key} {got:.6g} mm but the geometry's shared detector has "
                             f"{value:.6g} mm; all views share one detector")
    if max(abs(cam.x0), abs(cam.y0)) > 1e-3 * min(camera.dx, camera.dy):
        raise InputError(f"{where} has its detector centre off the principal ray by ({cam.x0:.4g}, {cam.y0:.4g}) "
                         "mm; only centred detectors are supported")
    return _rigid(np.asarray(m, np.float64), where)


def check_images(geometry: Geometry, names, sizes) -> None:
    """InputError unless there is one X-ray per view (``names`` (V,) for messages, ``sizes`` (V,) of
    (rows, columns)) and every X-ray has the geometry's detector size."""
    v = geometry.extrinsics.shape[0]
    if len(names) != v:
        raise InputError(f"{len(names)} X-ray(s) given (--xray) but the geometry has {v} view(s); "
                         "give one --xray per view, in the order of the geometry's views")
    sizes = [tuple(int(n) for n in s) for s in sizes]
    for k in range(1, len(sizes)):
        if sizes[k] != sizes[0]:
            raise InputError(f"X-ray sizes differ: '{names[0]}' is {sizes[0][0]}x{sizes[0][1]} but '{names[k]}' is "
                             f"{sizes[k][0]}x{sizes[k][1]} (rows x columns); all views share one detector")
    want = (geometry.camera.height, geometry.camera.width)
    if sizes and sizes[0] != want:
        raise InputError(f"X-ray '{names[0]}' is {sizes[0][0]}x{sizes[0][1]} pixels but the geometry's detector is "
                         f"{want[0]}x{want[1]} (rows x columns); fix \"detector\" or pass the matching images")


def check_sees_volume(camera: carm.CArm, extrinsics, affine, shape) -> None:
    """InputError unless every view has the CT's whole box (voxel indices -0.5 .. n - 0.5) in front of the
    source and the CT's centre projecting onto the detector."""
    a = np.asarray(affine, np.float64)
    idx = np.stack(np.meshgrid(*[[-0.5, n - 0.5] for n in shape[:3]], indexing="ij"), -1).reshape(-1, 3)
    corners = idx @ a[:3, :3].T + a[:3, 3]
    centre = a[:3, :3] @ ((np.asarray(shape[:3], np.float64) - 1) / 2) + a[:3, 3]
    for k, ext in enumerate(np.asarray(extrinsics, np.float64)):
        depth = corners @ ext[2, :3] + ext[2, 3]
        if np.any(depth <= 0):
            raise InputError(f"view {k + 1} does not see the CT: part of the volume is behind or beside the X-ray "
                             f"source ({int(np.sum(depth <= 0))} of 8 box corners); check the view's pose (mm, RAS "
                             "of the CT)")
        u, v = np.asarray(carm.project(carm.projection_matrix(camera, ext), centre[None]), np.float64)[0]
        if not (0 <= u <= camera.width and 0 <= v <= camera.height):
            raise InputError(f"view {k + 1} does not see the CT: its centre projects to pixel ({u:.0f}, {v:.0f}), "
                             f"off the {camera.height}x{camera.width} detector; check the view's pose (mm, RAS "
                             "of the CT)")


# ------------------------------------------------------------------------------------------------ pose
def params_to_transform(params, centre) -> np.ndarray:
    """Pose parameters (6,) = (rotation vector rad, translation mm) -> (4, 4) float64 ``x -> R (x - c) + c + t``."""
    from scipy.spatial.transform import Rotation

    p, c = np.asarray(params, np.float64), np.asarray(centre, np.float64)
    r = Rotation.from_rotvec(p[:3]).as_matrix()
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, p[3:] + c - r @ c
    return m


def transform_to_params(m, centre) -> np.ndarray:
    """Inverse of :func:`params_to_transform` for a rigid (4, 4): (6,) float64 (rad, mm)."""
    from scipy.spatial.transform import Rotation

    m, c = np.asarray(m, np.float64), np.asarray(centre, np.float64)
    w = Rotation.from_matrix(m[:3, :3]).as_rotvec()
    return np.concatenate([w, m[:3, 3] - c + m[:3, :3] @ c])


def load_pose(path: str | os.PathLike, centre) -> np.ndarray:
    """Read a pose file (module docstring) -> parameters (6,) float64 (rotation vector rad, translation mm)
    about ``centre`` (3,) mm, the CT centre."""
    data = _read_json(path, "pose")
    name = f"pose '{Path(path).name}'"
    _keys(data, _POSE_KEYS, (), name)
    has_params = "rotation_deg" in data or "translation_mm" in data
    if not has_params and "transform" not in data:
        raise InputError(f"{name}: give \"rotation_deg\" and \"translation_mm\", or \"transform\" (4x4)")
    c = np.asarray(centre, np.float64)
    if "centre_mm" in data:
        c = _numbers(data["centre_mm"], (3,), f"{name}: centre_mm")
    params = None
    if has_params:
        _keys(data, _POSE_KEYS, ("rotation_deg", "translation_mm"), name)
        w = np.deg2rad(_numbers(data["rotation_deg"], (3,), f"{name}: rotation_deg"))
        params = np.concatenate([w, _numbers(data["translation_mm"], (3,), f"{name}: translation_mm")])
    m = params_to_transform(params, c) if params is not None else None
    if "transform" in data:
        t = _rigid(_numbers(data["transform"], (4, 4), f"{name}: transform"), f"{name}: transform")
        if m is not None and not np.allclose(t, m, atol=1e-3):
            raise InputError(f"{name}: \"transform\" and \"rotation_deg\"/\"translation_mm\" disagree; "
                             "give one of them")
        m = t
    return transform_to_params(m, centre)


def pose_record(params, centre, **extra) -> dict:
    """The pose-file object of parameters (6,) (rad, mm) about ``centre`` (3,) mm: rotation_deg,
    translation_mm, transform (4x4), centre_mm, then ``extra`` entries."""
    p = np.asarray(params, np.float64)
    return {"rotation_deg": np.rad2deg(p[:3]).tolist(), "translation_mm": p[3:].tolist(),
            "transform": params_to_transform(p, centre).tolist(),
            "centre_mm": np.asarray(centre, np.float64).tolist(), **extra}
