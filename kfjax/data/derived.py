"""Derived datasets: deterministic arrays computed from the real sources, cached with a manifest.

Each derived set is built by a function of its sources and parameters only. The result is cached in
``$KFJAX_DATA/derived/<name>/<key>.npz`` next to ``<key>.json``, a manifest holding the parameters, the
sha256 of every input file (from the source registry, which :func:`kfjax.data.sources.fetch` verifies),
the builder version and the sha256 of the ``.npz``. A set is rebuilt when any of these differ or the
cached file is missing or corrupt. Files are written to a temporary name and renamed; the manifest is
renamed last, so a killed build leaves nothing that would be read as valid.

Sets: ``ct-slices`` (:func:`ct_slices`), ``chest-ct-structures`` (:func:`chest_ct_structures`) and
``mr-t1t2`` (:func:`mr_t1t2`, MR images simulated from a real template).

All arrays are in display orientation, found from the NIfTI affine (not assumed): axis 0 runs inferior ->
superior, rows (axis 1) anterior -> posterior, columns (axis 2) from the patient's right to the patient's
left (radiological convention: the patient's left is on the right of the image). ``affine`` maps the array
index ``(d, r, c)`` to RAS world mm.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kfjax.data import ct as _ct
from kfjax.data import mr as _mr
from kfjax.data import sources
from kfjax.errors import DataError, InputError

__all__ = ["DerivedSet", "DERIVED", "register", "get_derived", "build", "derived_dir", "cached_builds",
           "ct_slices", "chest_ct_structures", "mr_t1t2", "mr_slices"]


@dataclass(frozen=True)
class DerivedSet:
    """One derived dataset.

    Attributes:
        name: name used by ``kfjax data`` and :func:`build`.
        sources: names of the sources it is computed from.
        description: one line: what it is, shapes and units.
        defaults: parameter name -> default value (JSON types); the only parameters accepted.
        builder: ``builder(**params) -> (arrays, meta)``, arrays a dict of numpy arrays, meta JSON-able.
        version: bumped when the builder's output changes; part of the cache key.
        compress: store the ``.npz`` compressed (label maps) or not (float images, fast to load).
    """

    name: str
    sources: tuple[str, ...]
    description: str
    defaults: dict[str, Any] = field(hash=False)
    builder: Callable[..., tuple[dict[str, np.ndarray], dict]] = field(hash=False)
    version: int = 1
    compress: bool = False


DERIVED: dict[str, DerivedSet] = {}


def register(ds: DerivedSet) -> DerivedSet:
    """Add ``ds`` to :data:`DERIVED` (modules defining sets call this at import)."""
    DERIVED[ds.name] = ds
    return ds


def get_derived(name: str) -> DerivedSet:
    """The registered set ``name``; DataError with close matches if there is none."""
    if name in DERIVED:
        return DERIVED[name]
    close = difflib.get_close_matches(name, list(DERIVED) + list(sources.SOURCES), n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise DataError(f"unknown derived dataset '{name}'; {hint}derived sets: {', '.join(DERIVED)}")


def derived_dir() -> Path:
    """Folder of the derived caches: ``$KFJAX_DATA/derived``."""
    return sources.data_dir() / "derived"


def _input_hashes(names: tuple[str, ...]) -> dict[str, str]:
    """``"source/file" -> sha256`` of every input file, from the source registry."""
    return {f"{n}/{Path(p).name}": sha for n in names for p, sha in sources.get_source(n).files.items()}


def _resolve(ds: DerivedSet, params: dict[str, Any]) -> dict[str, Any]:
    """Defaults updated by ``params``; InputError naming the valid keys for an unknown one."""
    unknown = sorted(set(params) - set(ds.defaults))
    if unknown:
        raise InputError(f"'{ds.name}' has no parameter {', '.join(unknown)}; valid: {', '.join(ds.defaults)}")
    out = dict(ds.defaults)
    for k, v in params.items():
        default = ds.defaults[k]
        try:
            if isinstance(default, (list, tuple)):
                v = [float(x) for x in v]
            elif isinstance(default, bool):
                if not isinstance(v, (bool, int, np.bool_)):
                    raise ValueError(v)
                v = bool(v)
            elif isinstance(default, (int, float)):
                if isinstance(default, int) and float(v) != int(float(v)):
                    raise ValueError(v)
                v = type(default)(float(v))
        except (TypeError, ValueError):
            raise InputError(f"'{ds.name}' parameter {k}={v!r} is not like its default {default!r}") from None
        out[k] = v
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_cached(data: Path, manifest: Path, expect: dict) -> tuple[dict, dict] | None:
    """The cached (arrays, meta) if manifest and file match ``expect``, else None (and stale files removed)."""
    try:
        info = json.loads(manifest.read_text())
        if any(info.get(k) != v for k, v in expect.items()) or _sha256(data) != info["sha256"]:
            raise ValueError("stale or corrupt")
        with np.load(data, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return arrays, info["meta"]
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        data.unlink(missing_ok=True)
        manifest.unlink(missing_ok=True)
        return None


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary name in the same folder, then rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build(name: str, **params) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and meta of derived set ``name`` with ``params``, from the cache or built and cached.

    Raises:
        DataError: unknown set, data folder not writable, a source cannot be fetched. InputError: bad parameter.
    """
    ds = get_derived(name)
    params = _resolve(ds, params)
    expect = {"name": ds.name, "version": ds.version, "params": params, "inputs": _input_hashes(ds.sources)}
    key = hashlib.sha256(json.dumps(expect, sort_keys=True).encode()).hexdigest()[:16]
    sources._writable_root()
    folder = derived_dir() / ds.name
    folder.mkdir(parents=True, exist_ok=True)
    data, manifest = folder / f"{key}.npz", folder / f"{key}.json"
    if data.is_file() and manifest.is_file():
        cached = _read_cached(data, manifest, expect)
        if cached is not None:
            return cached
    arrays, meta = ds.builder(**params)
    save = np.savez_compressed if ds.compress else np.savez

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: savez would add ".npz" to a temporary path
            save(f, **arrays)

    _write_atomic(data, write)
    info = dict(expect, sha256=_sha256(data), meta=meta)
    _write_atomic(manifest, lambda tmp: tmp.write_text(json.dumps(info, indent=1)))
    return arrays, meta


def cached_builds(name: str) -> list[dict]:
    """Manifests of the cached builds of ``name`` (parameters and meta), newest first."""
    folder = derived_dir() / get_derived(name).name
    found = []
    for m in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            found.append(json.loads(m.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return found


# ---------------------------------------------------------------- the sets

register(DerivedSet(
    "ct-slices", ("chest-ct",),
    "axial chest-ct slices resampled to size^2 over the 360 mm FOV: HU, μ at 70 keV (1/mm), body and "
    "invalid (contrast saturation) masks, train/val/test by slice position",
    {"size": 256, "inpaint": True, "gap": 4, "fractions": [0.7, 0.15, 0.15], "saturation_hu": 3000.0,
     "dilate_mm": 2.0},
    _ct.build_ct_slices, version=1,
))
register(DerivedSet(
    "chest-ct-structures", ("chest-ct",),
    "chest-ct label map grouped (bone, lung, heart, vessel, liver, kidney, spleen, ...), vertebra centroids "
    "as landmarks in RAS mm",
    {}, _ct.build_structures, version=1, compress=True,
))
register(DerivedSet(
    "mr-t1t2", ("mni152",),
    "T1w/T2w/PD spin-echo images simulated from the real MNI152 template's tissue maps (GM/WM/CSF), "
    "1.5 T or 3 T, bias fields and Rician noise, 1 mm",
    {"field": 3.0, "noise": 0.02, "bias": 0.2, "seed": 0, "margin": 4},
    _mr.build_mr_t1t2, version=1,
))


def ct_slices(size: int = 256, inpaint: bool = True, gap: int = 4, fractions=(0.7, 0.15, 0.15),
              saturation_hu: float = 3000.0, dilate_mm: float = 2.0) -> dict[str, Any]:
    """All 133 axial slices of chest-ct on a ``size`` x ``size`` grid over the full 360 mm FOV (cached).

    HU below -1000 (and the -2048 outside the scan circle) become -1000. ``invalid`` marks the contrast
    saturation (HU >= ``saturation_hu``: about 6,200 voxels along the injection path, right subclavian and
    brachiocephalic veins and the superior vena cava, with real streaks) dilated by ``dilate_mm`` in-plane: exclude these pixels before simulating metal. With ``inpaint=True``
    (default) they are also replaced by the nearest soft tissue (-100..200 HU), smoothed, so the
    returned HU no longer hold the saturation; ``invalid`` still says where it was.

    Returns a dict:
        hu (N, size, size, 1) float32 HU; mu (N, size, size, 1) float32 μ at 70 keV in 1/mm
        (0.0192 * (1 + HU/1000)); body, invalid (N, size, size, 1) bool; affine (4, 4) index (d, r, c) ->
        RAS mm; pixel_mm (float, 360/size mm); slice_mm (2.5); splits: train/val/test -> slice indices,
        contiguous blocks inferior -> superior in that order with ``gap`` slices unused between blocks;
        meta (dict). Orientation: see :data:`kfjax.data.ct.ORIENTATION`.
    """
    arrays, meta = build("ct-slices", size=size, inpaint=inpaint, gap=gap, fractions=list(fractions),
                         saturation_hu=saturation_hu, dilate_mm=dilate_mm)
    hu = arrays["hu"][..., None]
    return {"hu": hu, "mu": _ct.hu_to_mu(hu), "body": arrays["body"][..., None],
            "invalid": arrays["invalid"][..., None], "affine": arrays["affine"], "pixel_mm": meta["pixel_mm"][0],
            "slice_mm": meta["slice_mm"], "splits": {s: arrays[f"split_{s}"] for s in ("train", "val", "test")},
            "meta": meta}


def chest_ct_structures() -> dict[str, Any]:
    """chest-ct with grouped labels and vertebra landmarks, in display orientation (groups cached).

    Returns a dict:
        ct (D, H, W) float32 HU (133, 512, 512; -2048 outside the scan circle set to -1000);
        labels (D, H, W) uint8, the 89 original structure labels (ids up to 118, ``structures[id]``);
        groups (D, H, W) uint8, index into ``group_names`` (background, bone, lung, heart, vessel, liver,
        kidney, spleen, airway, digestive, muscle, other); landmarks_ras (n, 3) float64 vertebra centroids
        in RAS world mm, superior first, named by ``landmark_names`` (e.g. "C5" ... "L3");
        affine (4, 4) index (d, r, c) -> RAS mm; spacing_mm (3,); meta.
    """
    arrays, meta = build("chest-ct-structures")
    ct = _ct._load_chest_ct()["ct"]
    hu, _ = _ct.to_display(ct.array, ct.affine)
    return {"ct": np.maximum(hu, -1000.0).astype(np.float32), **arrays, "group_names": meta["group_names"],
            "structures": meta["structures"], "landmark_names": meta["landmark_names"],
            "spacing_mm": meta["spacing_mm"], "meta": meta}


def mr_t1t2(field: float = 3.0, noise: float = 0.02, bias: float = 0.2, seed: int = 0, margin: int = 4) -> dict[str, Any]:
    """T1w, T2w and PD images simulated from a real template (MNI152 2009a) at ``field`` tesla (cached).

    Simulated, not acquired: tissue fractions GM/WM from the template, CSF derived (see
    :func:`kfjax.data.mr.mni_fractions`), spin-echo signal with literature T1/T2/PD
    (:data:`kfjax.data.mr.RELAXATION`), a different smooth bias field per contrast and Rician noise of
    std ``noise`` times the brightest tissue, all from ``seed``. The volume is cropped to the brain region
    plus ``margin`` voxels; background (skull, scalp) has no signal (skull-stripped simulation).

    Returns a dict:
        t1w, t2w, pd (D, H, W) float32, arbitrary units (water = 1), 1 mm voxels, display orientation
        (axial slices are ``[k]``); fractions (D, H, W, 4) float32 background/csf/gm/wm summing to 1;
        labels (D, H, W) uint8 argmax of fractions; affine (4, 4) index -> RAS (MNI) mm; meta.
    """
    arrays, meta = build("mr-t1t2", field=field, noise=noise, bias=bias, seed=seed, margin=margin)
    tissue = arrays["fractions"].astype(np.float32)
    fractions = np.concatenate([np.clip(1.0 - tissue.sum(-1, keepdims=True), 0.0, 1.0), tissue], axis=-1)
    return {**{c: arrays[c] for c in _mr.CONTRASTS}, "fractions": fractions,
            "labels": np.argmax(fractions, axis=-1).astype(np.uint8), "affine": arrays["affine"], "meta": meta}


def mr_slices(data: dict[str, Any], keys=("t1w", "t2w"), min_brain: float = 0.25):
    """2-D axial slices of :func:`mr_t1t2` output whose brain area is >= ``min_brain`` of the largest one.

    Returns ``images (N, H, W, len(keys))`` float32, ``labels (N, H, W, 1)`` uint8 and the slice indices ``(N,)``.
    """
    area = (data["labels"] > 0).sum(axis=(1, 2))
    index = np.flatnonzero(area >= min_brain * area.max())
    images = np.stack([data[k][index] for k in keys], axis=-1)
    return images, data["labels"][index][..., None], index


# ---------------------------------------------------------------- kfjax data info / preview

def describe(name: str) -> list[str]:
    """Lines for ``kfjax data info NAME`` of a derived set: what, sources, parameters, cached builds."""
    ds = get_derived(name)
    lines = [f"name         {ds.name} (derived)", f"what         {ds.description}",
             f"from         {', '.join(ds.sources)} (kfjax data fetch {' '.join(ds.sources)})",
             f"parameters   {json.dumps(ds.defaults)} (defaults; --param KEY=VALUE to change)",
             f"cache        {derived_dir() / ds.name}"]
    builds = cached_builds(name)
    if not builds:
        lines.append(f"cached       none yet: kfjax data fetch {ds.name} (or preview) builds it")
    for info in builds:
        meta = {k: v for k, v in info["meta"].items() if k not in ("structures", "orientation")}
        lines.append(f"cached       params {json.dumps(info['params'])} version {info['version']} sha256 {info['sha256'][:12]}...")
        lines.append(f"  meta       {json.dumps(meta)}")
    if ds.name == "mr-t1t2":
        lines.append("note         simulated from a real template: contrast from literature T1/T2/PD, not acquired MR")
    else:
        lines.append(f"orientation  {_ct.ORIENTATION}")
    return lines


def _window(**kw):
    return dict(cmap="gray", vmin=-1000, vmax=1000, **kw)


def preview_panels(name: str, params: dict[str, Any] | None = None) -> list[tuple]:
    """``(title, image (H, W), imshow keywords[, points (n, 2) as x, y])`` for the contact sheet of a derived set."""
    ds = get_derived(name)
    params = params or {}
    if ds.name == "ct-slices":
        d = ct_slices(**params)
        hu, panels = d["hu"][..., 0], []
        for split, idx in d["splits"].items():
            k = int(idx[len(idx) // 2])
            panels.append((f"{split} slice {k} (HU)", hu[k], _window()))
        k = int(np.argmax(d["invalid"].sum(axis=(1, 2, 3))))
        inv = np.ma.masked_equal(d["invalid"][k, ..., 0].astype(np.float32), 0)
        panels.append((f"slice {k}: invalid (red)", hu[k], _window(), None, (inv, dict(cmap="autumn", alpha=0.8))))
        panels.append((f"slice {k}: μ 70 keV (1/mm)", d["mu"][k, ..., 0], dict(cmap="gray", vmin=0, vmax=0.03)))
        panels.append((f"slice {k}: body", d["body"][k, ..., 0], dict(cmap="gray", vmin=0, vmax=1)))
        return panels
    if ds.name == "chest-ct-structures":
        d = chest_ct_structures()
        ct, groups = d["ct"], d["groups"]
        aspect = d["spacing_mm"][0] / d["spacing_mm"][1]
        lab = dict(cmap="tab20", vmin=0, vmax=20, alpha=0.6, interpolation="nearest")
        panels = []
        for k in (int(0.45 * len(ct)), int(0.75 * len(ct))):
            panels.append((f"axial {k}: groups", ct[k], _window(), None, (np.ma.masked_equal(groups[k], 0), lab)))
        r = ct.shape[1] // 2
        panels.append((f"coronal row {r}: groups", ct[:, r], _window(origin="lower", aspect=aspect), None,
                       (np.ma.masked_equal(groups[:, r], 0), dict(lab, origin="lower", aspect=aspect))))
        idx = (np.linalg.inv(d["affine"]) @ np.c_[d["landmarks_ras"], np.ones(len(d["landmarks_ras"]))].T)[:3].T
        c = int(np.median(idx[:, 2])) if len(idx) else ct.shape[2] // 2
        panels.append((f"sagittal col {c}: vertebra centroids", ct[:, :, c], _window(origin="lower", aspect=aspect),
                       idx[:, [1, 0]]))
        return panels
    d = mr_t1t2(**params)
    k = int(np.argmax((d["labels"] > 0).sum(axis=(1, 2))))
    field = d["meta"]["field_t"]
    panels = [(f"{c.upper()} {field} T axial {k} (simulated)", d[c][k], dict(cmap="gray", vmin=0, vmax=float(np.percentile(d[c], 99.9))))
              for c in _mr.CONTRASTS]
    panels.append((f"tissue labels axial {k}", d["labels"][k], dict(cmap="viridis", vmin=0, vmax=3, interpolation="nearest")))
    r = d["t1w"].shape[1] // 2
    for c in ("t1w", "t2w"):
        panels.append((f"{c.upper()} coronal (simulated)", d[c][:, r], dict(cmap="gray", vmin=0, origin="lower",
                                                                             vmax=float(np.percentile(d[c], 99.9)))))
    return panels


# sets defined in their own modules register themselves on import
from kfjax.data import mar as _mar  # noqa: E402, F401
