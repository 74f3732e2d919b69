"""``kfjax data simulate-metal``: the metal-artifact simulator on a user's CT slice(s), written for inspection.

    kfjax data simulate-metal --input ct.nii.gz --out DIR [--slice K[,K...]] [--mask-seed S | --mask FILE]
                              [--material Ti] [--geometry adn] [--pixel-size MM] [--noise-seed S] [--no-noise]

Input: a NIfTI volume (axial slices along the third axis; ``--slice`` picks them, default the middle one)
or an ``.npz`` with one array (or key ``hu``) of shape (H, W), (N, H, W) or (N, H, W, 1), in HU. Slices are
resampled (bilinear) to the geometry's image size. Metal: ``--mask FILE`` (same layouts, > 0.5 is metal) or
random implants placed inside the body (``--mask-seed``; :func:`kfjax.data.phantoms.random_metal` with its
centre on a pixel above -500 HU).

Output folder (written under a temporary name, renamed when complete): ``simulation.npz`` (every array of
:func:`kfjax.physics.metal.make_metal_simulator`, μ in 1/mm), NIfTI files of the images in HU
(``gt``, ``ma``, ``li``, ``poly``; pixel spacing = the geometry's), of the sinograms (views × bins × N) and of
the metal mask and trace, and ``simulation.json`` with the geometry, config, input and error numbers.
Images are in the simulation's (row, column) order: a NIfTI slice's axes (i, j) become (column, row).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np

from kfjax.errors import InputError

__all__ = ["add_simulate_metal_parser", "simulate_metal"]


def _read_array(path: Path, what: str, slices: str | None) -> np.ndarray:
    """(N, H, W) float32 from a NIfTI volume/slice or an npz."""
    if not path.is_file():
        raise InputError(f"{what} '{path}' does not exist; pass an existing .nii, .nii.gz or .npz file")
    name = path.name.lower()
    if name.endswith(".npz"):
        try:
            with np.load(path) as f:
                keys = list(f.files)
                key = "hu" if "hu" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise InputError(f"{what} '{path}' holds {keys}; store one array or name it 'hu'")
                a = np.asarray(f[key], dtype=np.float32)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"cannot read {what} '{path}' as npz ({type(exc).__name__}); check the file") from exc
        if a.ndim == 4 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise InputError(f"{what} '{path}' has shape {a.shape}; expected (H, W), (N, H, W) or (N, H, W, 1)")
        return a
    from kfjax.io.nifti import has_nifti_suffix, load_nifti

    if not has_nifti_suffix(path):
        raise InputError(f"{what} '{path}' is neither .nii/.nii.gz nor .npz; convert it to one of those")
    a = load_nifti(path).array
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise InputError(f"{what} '{path}' has shape {a.shape}; expected a 2-D slice or a 3-D volume")
    if slices is None:
        ks = [a.shape[2] // 2]
    else:
        try:
            ks = [int(k) for k in slices.split(",")]
        except ValueError:
            raise InputError(f"--slice must be integers separated by commas, got {slices!r}") from None
        bad = [k for k in ks if not 0 <= k < a.shape[2]]
        if bad:
            raise InputError(f"--slice {bad} outside the volume's {a.shape[2]} slices (0..{a.shape[2] - 1})")
    # (i, j) -> rows j, columns i: the usual axial display of a RAS-like volume
    return np.stack([a[:, :, k].T for k in ks]).astype(np.float32)


def _resize(a: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    from scipy import ndimage

    if a.shape[1:] == tuple(shape):
        return a
    zoom = (1.0, shape[0] / a.shape[1], shape[1] / a.shape[2])
    return ndimage.zoom(a, zoom, order=order, mode="nearest", grid_mode=True)


def _near_metal_rmse(image, gt, mask, band: int = 10) -> float:
    """RMSE (1/mm) over pixels within ``band`` pixels of the metal, metal excluded."""
    from scipy import ndimage

    m = mask > 0.5
    near = ndimage.binary_dilation(m, iterations=band) & ~m
    return float(np.sqrt(np.mean((image - gt)[near] ** 2))) if near.any() else float("nan")


def simulate_metal(args) -> dict:
    """Run the simulator as asked by the CLI ``args``; returns the summary written to ``simulation.json``."""
    import jax

    from kfjax.data.phantoms import random_metal
    from kfjax.io.nifti import save_nifti
    from kfjax.io.volume import Volume
    from kfjax.physics import metal as M
    from kfjax.physics.geometry import preset

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"output '{out}' exists and is not an empty folder; choose another --out or remove it")
    if not out.resolve().parent.is_dir():
        raise InputError(f"the folder '{out.resolve().parent}' does not exist; create it first")
    config = M.MetalConfig(material=args.material, noise=not args.no_noise, density=args.density)
    geometry = preset(args.geometry, pixel_size=args.pixel_size)
    shape = tuple(geometry.image_shape)

    hu = _read_array(Path(args.input), "input", args.slice)
    if not np.isfinite(hu).all():
        raise InputError(f"input '{args.input}' contains NaN or Inf; fill them (e.g. with -1000 HU) first")
    hu = _resize(hu, shape)
    if args.mask:
        metal = (_resize(_read_array(Path(args.mask), "mask", args.slice), shape) > 0.5).astype(np.float32)
        if metal.shape[0] == 1 and hu.shape[0] > 1:
            metal = np.repeat(metal, hu.shape[0], axis=0)
        if metal.shape != hu.shape:
            raise InputError(f"mask has {metal.shape[0]} slices, input {hu.shape[0]}; give one mask or one per slice")
    else:
        body = hu > -500
        empty = [i for i in range(hu.shape[0]) if not body[i].any()]
        if empty:
            raise InputError(f"input slice(s) {empty} have no pixel above -500 HU to put metal in; give --mask")
        rngs = [np.random.default_rng((args.mask_seed, i)) for i in range(hu.shape[0])]
        metal = np.stack([random_metal(r, shape[0], body=b) for r, b in zip(rngs, body)]).astype(np.float32)

    simulate = M.make_metal_simulator(geometry, config)
    result = simulate(hu[..., None], metal[..., None], jax.random.key(args.noise_seed))
    result = {k: np.asarray(v) for k, v in result.items()}

    gt = result["gt_image"][..., 0]
    errors = [
        {
            "case": i,
            "metal_pixels": int(metal[i].sum()),
            "rmse_near_metal_ma_hu": _near_metal_rmse(result["ma_image"][i, ..., 0], gt[i], metal[i]) / config.mu_water * 1000,
            "rmse_near_metal_li_hu": _near_metal_rmse(result["li_image"][i, ..., 0], gt[i], metal[i]) / config.mu_water * 1000,
        }
        for i in range(hu.shape[0])
    ]
    summary = {
        "input": str(args.input),
        "slices": args.slice,
        "mask": str(args.mask) if args.mask else f"random, seed {args.mask_seed}",
        "noise_seed": args.noise_seed,
        "geometry": {"preset": args.geometry, **dataclasses.asdict(geometry)},
        "config": dataclasses.asdict(config),
        "units": "npz images and sinogram inputs: mu in 1/mm; NIfTI images: HU; sinograms: line integrals",
        "errors": errors,
    }

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        np.savez_compressed(tmp / "simulation.npz", **result, hu=hu)
        px = geometry.pixel_size
        image_affine = np.diag([px, px, 1.0, 1.0])
        for name in ("gt", "ma", "li", "poly"):
            hu_img = M.mu_to_hu(result[f"{name}_image"][..., 0], config.mu_water)
            save_nifti(Volume(np.moveaxis(np.asarray(hu_img, np.float32), 0, -1), image_affine), tmp / f"{name}_hu.nii.gz")
        save_nifti(Volume(np.moveaxis(result["metal_mask"][..., 0], 0, -1).astype(np.uint8), image_affine), tmp / "metal_mask.nii.gz")
        for name in ("ma_sinogram", "li_sinogram", "gt_sinogram", "metal_trace"):
            a = np.moveaxis(result[name][..., 0], 0, -1)
            save_nifti(Volume(a.astype(np.uint8 if name == "metal_trace" else np.float32)), tmp / f"{name}.nii.gz")
        (tmp / "simulation.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def cmd_simulate_metal(args) -> int:
    from kfjax.cli import _setup_jax

    _setup_jax()
    summary = simulate_metal(args)
    for e in summary["errors"]:
        print(f"case {e['case']}: {e['metal_pixels']} metal pixels, RMSE within 10 px of metal "
              f"{e['rmse_near_metal_ma_hu']:.0f} HU (metal-affected) vs {e['rmse_near_metal_li_hu']:.0f} HU (LI)")
    print(f"wrote {args.out}")
    return 0


def add_simulate_metal_parser(dsub) -> None:
    """Add ``kfjax data simulate-metal`` to the ``kfjax data`` subparsers."""
    from kfjax.physics.geometry import PRESETS

    s = dsub.add_parser("simulate-metal", help="polychromatic metal-artifact simulation of CT slices (NIfTI/npz in, folder out)")
    s.add_argument("--input", required=True, help="CT in HU: .nii/.nii.gz volume or slice, or .npz (key 'hu')")
    s.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    s.add_argument("--slice", default=None, help="NIfTI: axial slice index or indices 'K,K,...' (default: middle)")
    s.add_argument("--mask", default=None, help="metal mask file (.nii/.nii.gz/.npz, > 0.5 = metal); default random")
    s.add_argument("--mask-seed", type=int, default=0, help="seed of the random metal masks (default 0)")
    s.add_argument("--material", default="Ti", choices=("Ti", "Fe", "Cu", "Au"), help="metal (default Ti)")
    s.add_argument("--density", type=float, default=None, help="metal density in g/cm3 (default: the table's)")
    s.add_argument("--geometry", default="adn", choices=PRESETS, help="fan-beam preset (default adn: 256², 320 views)")
    s.add_argument("--pixel-size", type=float, default=None, help="image pixel size in mm (default: the preset's)")
    s.add_argument("--noise-seed", type=int, default=0, help="seed of the Poisson noise (default 0)")
    s.add_argument("--no-noise", action="store_true", help="expected counts instead of Poisson noise")
    s.set_defaults(func=cmd_simulate_metal)
