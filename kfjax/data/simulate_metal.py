"""The metal-artifact simulator on a user's CT slice(s), written to a folder for inspection.

    simulate_metal("ct.nii.gz", "DIR", slices=[40, 41], material="Fe")   # returns the summary dict

(the command line is ``kfjax data simulate-metal``, :mod:`kfjax.cli.data`).

Input: a NIfTI volume, read as axial slices in display orientation through its affine
(:func:`kfjax.io.orientation.to_display_slices`: slice 0 is the most inferior; ``slices`` picks them,
default the middle one) or an ``.npz`` with one array (or key ``hu``) of shape (H, W), (N, H, W) or (N, H, W, 1), in HU. Slices are
resampled (bilinear) to the geometry's image size. Metal: ``mask`` (a file with the same layouts, > 0.5 is
metal) or random implants placed inside the body (``mask_seed``; :func:`kfjax.data.phantoms.random_metal`
with its centre on a pixel above ``BODY_HU`` = -500 HU).

Output folder (written under a temporary name, renamed when complete): ``simulation.npz`` (every array of
:func:`kfjax.physics.metal.make_metal_simulator`, μ in 1/mm), NIfTI files of the images in HU
(``gt``, ``ma``, ``li``, ``poly``; pixel spacing = the geometry's), of the sinograms (views × bins × N) and of
the metal mask and trace, and ``simulation.json`` with the geometry, config, input and error numbers.
The image NIfTI files hold the slices as (row, column, slice) with an affine that says what the axes are
(rows anterior->posterior, columns the patient's right->left, the geometry's pixel size, slices 1 mm apart,
inferior->superior), so a viewer shows them upright.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kfjax import units
from kfjax.errors import InputError

__all__ = ["BODY_HU", "simulate_metal"]

#: CT number, HU, above which a pixel counts as body (where random implants are placed).
BODY_HU = -500.0


def _slice_indices(slices: str | Sequence[int] | None, depth: int) -> list[int]:
    """Axial slice indices from ``"K,K,..."`` or a sequence of ints (default: the middle slice)."""
    if slices is None:
        return [depth // 2]
    try:
        ks = [int(k) for k in (slices.split(",") if isinstance(slices, str) else slices)]
    except (TypeError, ValueError):
        raise InputError(f"--slice must be integers separated by commas, got {slices!r}") from None
    bad = [k for k in ks if not 0 <= k < depth]
    if bad or not ks:
        raise InputError(f"--slice {bad} outside the volume's {depth} slices (0..{depth - 1})")
    return ks


def _read_array(path: Path, what: str, slices: str | Sequence[int] | None) -> np.ndarray:
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
    from kfjax.io.orientation import to_display_slices

    if not has_nifti_suffix(path):
        raise InputError(f"{what} '{path}' is neither .nii/.nii.gz nor .npz; convert it to one of those")
    volume = load_nifti(path)
    if volume.array.ndim == 2:
        volume = dataclasses.replace(volume, array=volume.array[:, :, None])
    if volume.array.ndim != 3:
        raise InputError(f"{what} '{path}' has shape {volume.array.shape}; expected a 2-D slice or a 3-D volume")
    display, _ = to_display_slices(volume)
    return display[_slice_indices(slices, display.shape[0])].astype(np.float32)


def _image_volume(slices: np.ndarray, pixel_mm: float):
    """A Volume `(H, W, N)` of display-order slices `(N, H, W)`: row -> posterior, column -> the patient's
    left (`pixel_mm` each), slice -> superior (1 mm), as RAS world axes."""
    from kfjax.io.volume import Volume

    affine = np.array([[0.0, -pixel_mm, 0.0, 0.0], [-pixel_mm, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0, 0, 0, 1.0]])
    return Volume(np.moveaxis(slices, 0, -1), affine)


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


def simulate_metal(
    input_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    slices: str | Sequence[int] | None = None,
    mask: str | os.PathLike | None = None,
    mask_seed: int = 0,
    material: str = "Ti",
    density: float | None = None,
    geometry: str = "adn",
    pixel_size: float | None = None,
    noise_seed: int = 0,
    noise: bool = True,
) -> dict:
    """Simulate metal artifacts on the CT slice(s) of ``input_path`` and write the set to the folder ``out``.

    Args:
        input_path: CT in HU: a ``.nii``/``.nii.gz`` volume or slice, or an ``.npz`` (one array or key ``hu``).
        out: output folder; must not exist or be empty. Written under a temporary name, then renamed.
        slices: NIfTI axial slice indices (a sequence or ``"K,K,..."``); default the middle slice.
        mask: metal mask file (same layouts, > 0.5 = metal); default random implants inside the body.
        mask_seed: seed of the random implants (case ``i`` uses ``(mask_seed, i)``).
        material: "Ti", "Fe", "Cu" or "Au". density: g/cm³ (None: the table's).
        geometry: fan-beam preset name (:data:`kfjax.physics.geometry.PRESETS`). pixel_size: mm (None: the preset's).
        noise_seed: seed of the Poisson noise. noise: False for expected counts.

    Returns:
        The summary written to ``simulation.json`` (input, geometry, config, per-case errors near the metal in HU).

    Raises:
        InputError: missing/unreadable input or mask, wrong shapes, NaN/Inf, no body to put metal in, or an
        ``out`` that is not an empty folder or whose parent does not exist.
    """
    import jax

    from kfjax.physics import metal as M
    from kfjax.physics.geometry import preset

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"output '{out}' exists and is not an empty folder; choose another --out or remove it")
    if not out.resolve().parent.is_dir():
        raise InputError(f"the folder '{out.resolve().parent}' does not exist; create it first")
    config = M.MetalConfig(material=material, noise=noise, density=density)
    geometry_name, geometry = geometry, preset(geometry, pixel_size=pixel_size)
    hu, metal = _inputs(Path(input_path), mask, slices, mask_seed, tuple(geometry.image_shape))
    simulate = M.make_metal_simulator(geometry, config)
    result = {k: np.asarray(v) for k, v in simulate(hu[..., None], metal[..., None], jax.random.key(noise_seed)).items()}
    summary = {
        "input": str(input_path),
        "slices": slices if slices is None or isinstance(slices, str) else [int(k) for k in slices],
        "mask": str(mask) if mask is not None else f"random, seed {mask_seed}",
        "noise_seed": noise_seed,
        "geometry": {"preset": geometry_name, **dataclasses.asdict(geometry)},
        "config": dataclasses.asdict(config),
        "units": "npz images and sinogram inputs: mu in 1/mm; NIfTI images: HU; sinograms: line integrals",
        "errors": _errors(result, metal, config.mu_water),
    }
    _write(out, result, hu, summary, geometry.pixel_size, config.mu_water)
    return summary


def _inputs(path: Path, mask, slices, mask_seed: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(HU (N, H, W), metal (N, H, W) float 0/1) on the geometry's grid: the mask file's or random implants."""
    from kfjax.data.phantoms import random_metal

    hu = _read_array(path, "input", slices)
    if not np.isfinite(hu).all():
        raise InputError(f"input '{path}' contains NaN or Inf; fill them (e.g. with -1000 HU) first")
    hu = _resize(hu, shape)
    if mask is not None:
        metal = (_resize(_read_array(Path(mask), "mask", slices), shape) > 0.5).astype(np.float32)
        if metal.shape[0] == 1 and hu.shape[0] > 1:
            metal = np.repeat(metal, hu.shape[0], axis=0)
        if metal.shape != hu.shape:
            raise InputError(f"mask has {metal.shape[0]} slices, input {hu.shape[0]}; give one mask or one per slice")
        return hu, metal
    body = hu > BODY_HU
    empty = [i for i in range(hu.shape[0]) if not body[i].any()]
    if empty:
        raise InputError(f"input slice(s) {empty} have no pixel above {BODY_HU:g} HU to put metal in; give --mask")
    rngs = [np.random.default_rng((mask_seed, i)) for i in range(hu.shape[0])]
    return hu, np.stack([random_metal(r, shape[0], body=b) for r, b in zip(rngs, body)]).astype(np.float32)


def _errors(result: dict, metal: np.ndarray, mu_water: float) -> list[dict]:
    """Per case: metal pixels and the RMSE (HU) near the metal of the metal-affected and LI images."""
    gt = result["gt_image"][..., 0]
    return [
        {
            "case": i,
            "metal_pixels": int(metal[i].sum()),
            "rmse_near_metal_ma_hu": _near_metal_rmse(result["ma_image"][i, ..., 0], gt[i], metal[i]) / mu_water * 1000,
            "rmse_near_metal_li_hu": _near_metal_rmse(result["li_image"][i, ..., 0], gt[i], metal[i]) / mu_water * 1000,
        }
        for i in range(len(metal))
    ]


def _write(out: Path, result: dict, hu: np.ndarray, summary: dict, pixel_mm: float, mu_water: float) -> None:
    """The output folder (see the module docstring), written under a temporary name and renamed."""
    from kfjax.io.nifti import save_nifti
    from kfjax.io.volume import Volume

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        np.savez_compressed(tmp / "simulation.npz", **result, hu=hu)
        for name in ("gt", "ma", "li", "poly"):
            hu_img = units.mu_to_hu(result[f"{name}_image"][..., 0], mu_water)
            save_nifti(_image_volume(np.asarray(hu_img, np.float32), pixel_mm), tmp / f"{name}_hu.nii.gz")
        save_nifti(_image_volume(result["metal_mask"][..., 0].astype(np.uint8), pixel_mm), tmp / "metal_mask.nii.gz")
        for name in ("ma_sinogram", "li_sinogram", "gt_sinogram", "metal_trace"):
            a = np.moveaxis(result[name][..., 0], 0, -1)
            save_nifti(Volume(a.astype(np.uint8 if name == "metal_trace" else np.float32)), tmp / f"{name}.nii.gz")
        (tmp / "simulation.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
