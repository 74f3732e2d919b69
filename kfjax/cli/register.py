"""`kfjax register CT --xray AP.dcm --xray LAT.dcm --geometry carm.json`: rigid 2D/3D registration of a CT.

Finds the patient motion ``T`` (4x4 world -> world, mm; see :mod:`kfjax.register.intensity`) under which the
CT's DRRs match the X-ray views, whose C-arm geometry at ``T = I`` is in the geometry file
(:mod:`kfjax.register.geometry_file`, which also documents the pose files of ``--init`` and ``pose.json``).

- CT: NIfTI file or DICOM series folder in HU, turned into attenuation with
  :func:`kfjax.physics.drr.hu_to_mu` and block-averaged to voxels of about ``--voxel`` mm.
- X-rays: PNG, one DICOM image or a NIfTI file holding one slice, (rows, columns) as a viewer shows them
  (DICOM MONOCHROME1 radiographs are inverted by :mod:`kfjax.io.dicom`, so that brighter means more
  attenuation). ``--xray-kind line_integral`` (default) uses the image as it is: brighter = more attenuation,
  as radiographs are displayed (bone bright) and as DRRs are. ``intensity`` (raw detector data: brighter =
  more photons) takes the line integral ``p = -log(I / I0)``, ``I0`` the 99.5th percentile of the image and
  ``I`` clipped to ``[1e-4 I0, I0]``; the similarities ignore the constant ``log I0`` adds.
- The views are registered on a detector of at most ``--work-size`` pixels per side (same field of view),
  coarse to fine over ``--levels``; one progress line per level goes to stderr.
- Output (``--out DIR``, default ``register_out``): ``pose.json`` and ``overlay<k>_<name>.png`` per view (the
  X-ray as a line integral in gray, the edges of the DRR at the found pose in green). Everything is written
  into a temporary folder first and moved into place once complete.

Estimators (``--method``, the dict ``ESTIMATORS``) take the prepared :class:`Problem` and return the pose:

- ``intensity`` (default): intensity-based registration from ``--init``.
- ``point2``: POINT² (:mod:`kfjax.methods.point2`) with the trained run in ``--checkpoint DIR``: one forward
  pass from ``--init`` (points of interest drawn from the CT's bone, tracked in every view, triangulated,
  Kabsch); the X-rays are resampled so that a pixel covers as much anatomy as in training. ``--refine`` then
  runs the intensity registration from that pose (the paper's POINT² + optimisation). The network learned
  one subject's anatomy and the benchmark's C-arm; on another patient or anatomy, check the overlays.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kfjax.errors import InputError
from kfjax.runtime import setup_jax

DEFAULT_LEVELS = "0.25:150:4,0.5:100:1.5,1:40:0.5"  # as experiments/registration_opt (chest CT, 128² detector)
I0_PERCENTILE = 99.5  # I0 of -log(I / I0): a high percentile of the image (unattenuated beam where there is air)
OVERLAY_MAX = 512  # overlays are rendered on a detector of at most this many pixels per side


@dataclass(frozen=True)
class Problem:
    """A registration problem ready for an estimator (float32/float64 host arrays).

    mu: (X, Y, Z) attenuation 1/mm, block-averaged; affine: (4, 4) its voxel -> world mm.
    targets: (V, h, w) line integrals at ``camera`` (the working detector); images: (V, H, W) at full size.
    camera: the working :class:`kfjax.physics.carm.CArm`; full_camera: the geometry's detector.
    extrinsics: (V, 4, 4) world -> camera at T = I. centre: (3,) mm, the CT centre (centre of rotation).
    init: (6,) start parameters (rotation vector rad, translation mm).
    """

    mu: np.ndarray
    affine: np.ndarray
    targets: np.ndarray
    images: np.ndarray
    camera: object
    full_camera: object
    extrinsics: np.ndarray
    centre: np.ndarray
    init: np.ndarray


def _intensity(problem: Problem, args) -> np.ndarray:
    """Intensity-based registration (:func:`kfjax.register.intensity.register`) from ``problem.init``, one call
    per level so that each level reports a progress line. Returns params (6,) rad/mm."""
    import jax

    from kfjax.register import intensity as ri

    levels = _levels(args.levels)
    params = problem.init
    for k, lv in enumerate(levels):
        t0 = time.perf_counter()
        res = ri.register(problem.mu, problem.affine, problem.targets, problem.extrinsics, problem.camera, params,
                          similarity=args.similarity, levels=(lv,), centre=problem.centre)
        params, sim = np.asarray(jax.device_get(res.params), np.float64), float(res.similarity)
        cam = problem.camera.scaled(lv.scale)
        print(f"level {k + 1}/{len(levels)}: {cam.height}x{cam.width} detector, {lv.steps} steps, "
              f"similarity {sim:.4f} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    return params


def _point2(problem: Problem, args) -> np.ndarray:
    """POINT² (:meth:`kfjax.methods.point2.Point2Method.estimate`) with the trained run in ``--checkpoint``: one
    forward pass from ``problem.init`` on a detector resampled to the training pixel size; with ``--refine``,
    intensity registration from its pose (POINT² + optimisation). Returns params (6,) rad/mm."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from kfjax.methods import registry
    from kfjax.register.pose import params_from_transform, resize_images, transform_from_params
    from kfjax.train.loop import restore_for_eval

    if not args.checkpoint:
        raise InputError("--method point2 needs --checkpoint DIR, the folder of a `kfjax train point2` run")
    t0 = time.perf_counter()
    method = registry.from_workdir("point2", args.checkpoint)
    state = restore_for_eval(method, args.checkpoint)
    full = problem.full_camera
    scene = method.scene_for(problem.mu, problem.affine, problem.centre, full, problem.extrinsics)
    xrays = resize_images(jnp.asarray(problem.images, jnp.float32), scene.camera.height, scene.camera.width)
    centre = jnp.asarray(problem.centre, jnp.float32)
    init = transform_from_params(jnp.asarray(problem.init, jnp.float32), centre)
    out = method.estimate(state, scene, xrays, init)
    params = np.asarray(jax.device_get(params_from_transform(out["transform"], centre)), np.float64)
    tracked = int(np.sum(np.asarray(out["valid"])))
    print(f"point2: {tracked} points of interest tracked in {len(problem.extrinsics)} views on a "
          f"{scene.camera.height}x{scene.camera.width} detector ({time.perf_counter() - t0:.1f} s)",
          file=sys.stderr, flush=True)
    if tracked < 3:
        print("point2: fewer than 3 points of interest in view; the start pose is kept", file=sys.stderr, flush=True)
    return _intensity(dataclasses.replace(problem, init=params), args) if args.refine else params


#: --method name -> estimator(problem, args) -> params (6,) rad/mm
ESTIMATORS = {"intensity": _intensity, "point2": _point2}


def add_parser(sub) -> None:
    p = sub.add_parser("register", help="rigid 2D/3D registration of a CT to X-ray views (pose JSON + overlays)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("volume", help="CT in HU: NIfTI file or DICOM series folder")
    p.add_argument("--xray", action="append", required=True, metavar="FILE",
                   help="an X-ray view (PNG, DICOM image, 2-D NIfTI); once per view, in the geometry's order")
    p.add_argument("--geometry", required=True, help="C-arm geometry JSON (one entry per view)")
    p.add_argument("--init", help="start pose JSON: {\"rotation_deg\": [3], \"translation_mm\": [3]} or "
                                  "{\"transform\": 4x4}; default identity")
    p.add_argument("--method", choices=sorted(ESTIMATORS), default="intensity", help="pose estimator")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="--method point2: the folder of a `kfjax train point2` run (its config.json and checkpoints)")
    p.add_argument("--refine", action="store_true",
                   help="--method point2: then intensity registration from its pose (POINT² + optimisation)")
    p.add_argument("--similarity", choices=["gc", "ncc"], default="gc",
                   help="gradient correlation (default) or normalised cross-correlation")
    p.add_argument("--xray-kind", choices=["line_integral", "intensity"], default="line_integral",
                   help="line_integral (default): brighter = more attenuation (a radiograph as displayed, bone "
                        "bright; a DRR), used as it is; intensity: raw detector data, brighter = more photons, "
                        "p = -log(I/I0)")
    p.add_argument("--levels", default=DEFAULT_LEVELS,
                   help=f"SCALE:STEPS:STEP_MM,... coarse to fine (detector scale, Adam steps, step); "
                        f"default {DEFAULT_LEVELS}")
    p.add_argument("--work-size", type=int, default=128,
                   help="register on a detector of at most this many pixels per side (default 128)")
    p.add_argument("--voxel", type=float, default=2.5,
                   help="block-average the CT to voxels of about this size, mm (0: keep it; default 2.5)")
    p.add_argument("--out", default="register_out", help="output folder (default register_out)")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------ inputs
def _levels(text: str):
    from kfjax.register.intensity import Level

    levels = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            scale, steps, lr = float(parts[0]), int(parts[1]), float(parts[2])
            if len(parts) != 3:
                raise ValueError
        except (ValueError, IndexError):
            raise InputError(f"--levels item '{item}' is not SCALE:STEPS:STEP_MM (e.g. {DEFAULT_LEVELS})") from None
        if not (0 < scale <= 1 and steps >= 1 and lr > 0):
            raise InputError(f"--levels item '{item}': need 0 < SCALE <= 1, STEPS >= 1 and STEP_MM > 0")
        levels.append(Level(scale, steps, lr))
    return tuple(levels)


def read_xray(path: str) -> np.ndarray:
    """The 2-D radiograph at ``path`` as float64 (rows, columns), as a viewer shows it."""
    from kfjax.io import load_volume
    from kfjax.io.dicom import slice_values

    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".dcm":  # radiographs carry no slice geometry: read the one image
        try:
            import pydicom
        except ImportError:
            raise InputError("reading DICOM needs pydicom: pip install 'kfjax[dicom]'") from None
        try:
            ds = pydicom.dcmread(str(p))
        except Exception as e:  # pydicom raises several kinds for a damaged file
            raise InputError(f"cannot read '{p}' as DICOM ({type(e).__name__}); check the file") from None
        image = slice_values(p, ds).T
    else:
        vol = load_volume(p, expect_ndim=2)
        image = np.asarray(vol.array).T
    image = np.asarray(image, np.float64)
    if image.ndim != 2 or min(image.shape) < 3:
        raise InputError(f"X-ray '{path}' has shape {image.shape}; pass one 2-D image of at least 3x3 pixels")
    if not np.all(np.isfinite(image)):
        raise InputError(f"X-ray '{path}' contains NaN or Inf; pass an image with finite values")
    return image


def line_integral(image: np.ndarray, kind: str, name: str) -> np.ndarray:
    """(H, W) float32 line integrals of an X-ray of ``kind`` "intensity" (p = -log(I / I0), I0 the
    I0_PERCENTILE-th percentile, I clipped to [1e-4 I0, I0]) or "line_integral" (unchanged)."""
    if kind == "line_integral":
        return image.astype(np.float32)
    i0 = float(np.percentile(image, I0_PERCENTILE))
    if not i0 > 0:
        raise InputError(f"X-ray '{name}' has no positive intensities (I0 = {i0:g}); if it holds line integrals "
                         "pass --xray-kind line_integral")
    return (-np.log(np.clip(image, 1e-4 * i0, i0) / i0)).astype(np.float32)


def _output_folder(text: str) -> Path:
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out '{out}' is a file; give a folder (created if missing)")
    if not out.parent.is_dir():
        raise InputError(f"folder '{out.parent}' of --out does not exist; create it first")
    return out


def _prepare(args) -> Problem:
    """Load and check every input (nothing is written), returning the registration problem."""
    import jax.numpy as jnp

    from kfjax.io import check_finite, load_volume
    from kfjax.physics import drr
    from kfjax.register import geometry_file as gf
    from kfjax.register.pose import downsample_volume, resize_images, volume_centre

    if args.work_size < 3:
        raise InputError(f"--work-size must be at least 3 pixels, got {args.work_size}")
    if not (args.voxel >= 0 and np.isfinite(args.voxel)):
        raise InputError(f"--voxel must be 0 (keep) or a positive size in mm, got {args.voxel}")
    _levels(args.levels)
    vol = load_volume(args.volume, expect_ndim=3)
    check_finite(vol.array, f"CT '{args.volume}'")
    hu, affine = np.asarray(vol.array, np.float32), np.asarray(vol.affine, np.float64)
    images = [read_xray(x) for x in args.xray]
    geometry = gf.load_geometry(args.geometry, affine, hu.shape)
    gf.check_images(geometry, args.xray, [im.shape for im in images])
    gf.check_sees_volume(geometry.camera, geometry.extrinsics, affine, hu.shape)
    centre = volume_centre(affine, hu.shape)
    init = np.zeros(6) if args.init is None else gf.load_pose(args.init, centre)

    mu = np.asarray(drr.hu_to_mu(hu))
    if args.voxel > 0:
        factors = [min(n, max(1, round(args.voxel / s))) for n, s in zip(hu.shape, vol.spacing)]
        if max(factors) > 1:
            mu, affine = downsample_volume(mu, affine, factors)
    cam = geometry.camera
    factor = min(1.0, args.work_size / max(cam.height, cam.width))
    work = cam.scaled(factor) if factor < 1 else cam
    p = np.stack([line_integral(im, args.xray_kind, x) for im, x in zip(images, args.xray)])
    targets = np.asarray(resize_images(jnp.asarray(p), work.height, work.width), np.float32)
    return Problem(mu, affine, targets, p, work, cam, geometry.extrinsics, centre, init)


# ------------------------------------------------------------------------------------------------ outputs
def overlay(image: np.ndarray, drr_image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: ``image`` (H, W) in gray (1st-99th percentile) with the Sobel edges of ``drr_image``
    (H, W) in green, opacity 0.85 x edge strength relative to its 99th percentile."""
    from kfjax.register.similarity import sobel

    lo, hi = np.percentile(image, [1, 99])
    gray = np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)
    gx, gy = (np.pad(np.asarray(g, np.float64), 1, mode="edge") for g in sobel(np.asarray(drr_image, np.float64)))
    mag = np.hypot(gx, gy)
    alpha = np.clip(mag / max(float(np.percentile(mag, 99)), 1e-12), 0, 1)
    alpha = 0.85 * np.where(alpha < 0.15, 0.0, alpha)[..., None]
    rgb = gray[..., None] * (1 - alpha) + alpha * np.array([0.1, 1.0, 0.2])
    return (255 * rgb + 0.5).astype(np.uint8)


def _safe_name(path: str) -> str:
    name = Path(path).name
    for suffix in (".gz", ".nii", ".dcm", ".png"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name) or "view"


def _write_outputs(out: Path, record: dict, overlays: list[tuple[str, np.ndarray]]) -> list[Path]:
    """pose.json and the overlay PNGs written into a temporary folder, then moved into ``out``."""
    import json

    from PIL import Image

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        tmp.mkdir()
        (tmp / "pose.json").write_text(json.dumps(record, indent=1) + "\n")
        for name, rgb in overlays:
            Image.fromarray(rgb, "RGB").save(tmp / name, format="PNG")
        names = sorted(f.name for f in tmp.iterdir())
        if out.is_dir():
            for name in names:
                os.replace(tmp / name, out / name)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return [out / n for n in names]


def run(args) -> int:
    setup_jax()
    import jax.numpy as jnp

    from kfjax.physics import drr
    from kfjax.register import geometry_file as gf
    from kfjax.register.pose import resize_images
    from kfjax.register.similarity import SIMILARITY_FUNCTIONS

    out = _output_folder(args.out)
    if args.method != "point2" and (args.checkpoint or args.refine):
        raise InputError("--checkpoint and --refine belong to --method point2; drop them or add --method point2")
    problem = _prepare(args)
    params = ESTIMATORS[args.method](problem, args)
    transform = gf.params_to_transform(params, problem.centre)

    # per-view similarity at the working detector, overlays on a detector of at most OVERLAY_MAX pixels
    ext = problem.extrinsics @ transform
    drrs = np.asarray(drr.make_renderer(problem.camera)(problem.mu, problem.affine, ext))
    per_view = [float(SIMILARITY_FUNCTIONS[args.similarity](drrs[k], problem.targets[k])) for k in range(len(ext))]
    full = problem.full_camera
    factor = min(1.0, OVERLAY_MAX / max(full.height, full.width))
    cam = full.scaled(factor) if factor < 1 else full
    shown = np.asarray(drr.make_renderer(cam)(problem.mu, problem.affine, ext))
    xrays = np.asarray(resize_images(jnp.asarray(problem.images), cam.height, cam.width))
    overlays = [(f"overlay{k + 1}_{_safe_name(x)}.png", overlay(xrays[k], shown[k])) for k, x in enumerate(args.xray)]
    sim = float(np.mean(per_view))
    learned = {"checkpoint": str(args.checkpoint), "refined": bool(args.refine)} if args.method == "point2" else {}
    record = gf.pose_record(params, problem.centre, similarity={"name": args.similarity, "mean": sim,
                                                               "per_view": per_view}, method=args.method, **learned)
    written = _write_outputs(out, record, overlays)

    c = problem.centre
    print(f"pose (patient motion about the CT centre {c[0]:.1f} {c[1]:.1f} {c[2]:.1f} mm):")
    print("  rotation vector " + " ".join(f"{v:9.3f}" for v in record["rotation_deg"]) + " deg")
    print("  translation     " + " ".join(f"{v:9.3f}" for v in record["translation_mm"]) + " mm")
    print("  transform (world -> world, mm):")
    for row in transform:
        print("    " + " ".join(f"{v:10.5f}" for v in row))
    print(f"similarity ({args.similarity}): {sim:.4f} mean over {len(per_view)} view(s); per view "
          + ", ".join(f"{s:.4f}" for s in per_view))
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
