"""MR images simulated by spin-echo signal equations from tissue fractions or tissue labels.

Used by the ``mr-t1t2`` derived set (tissue fractions from the real MNI152 template, see
:func:`mr_t1t2`, registered here) and by :func:`kfjax.data.phantoms.brain_slice` (procedural labels).
The images are *simulated*: contrast comes from literature relaxation times, not from a scanner, and the
bias fields and noise are synthetic. They imitate tissue contrast, partial volume, intensity
inhomogeneity and the Rician noise floor; they do not imitate flow, susceptibility, motion, Gibbs
ringing, k-space sampling, coil combination or pathology.

Signal of one tissue: ``S = PD * (1 - exp(-TR/T1)) * exp(-TE/T2)`` (spin echo, TR >> TE); a voxel's
signal is the fraction-weighted sum over its tissues. Intensities are relative to pure water at full
relaxation (PD = 1), arbitrary units in [0, 1]. With these tables the spin-echo T1w GM/WM contrast is
small at 1.5 T (the higher PD of GM offsets its longer T1) and clear at 3 T (WM brighter); CSF contrast
is strong in every contrast at both fields.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from kfjax.data.cache import DerivedSet, build, register
from kfjax.data.ct import crop_affine
from kfjax.errors import InputError
from kfjax.io import Volume
from kfjax.io.orientation import to_display_slices

__all__ = ["TISSUES", "RELAXATION", "SEQUENCES", "CONTRASTS", "tissue_signal", "bias_field", "rician",
           "simulate", "render_labels", "mni_fractions", "build_mr_t1t2", "mr_t1t2", "mr_slices"]

#: tissue ids used by label maps (brain_slice) and fraction stacks
TISSUES = ("background", "csf", "gm", "wm", "fat", "skull")

# (T1 ms, T2 ms, PD relative to water) per tissue and field strength.
# GM, WM: Stanisz GJ et al., "T1, T2 relaxation and magnetization transfer in tissue at 3T",
#   Magn Reson Med 2005;54:507-512, Table 1 (1.5 T: WM 884/72, GM 1124/95; 3 T: WM 1084/69, GM 1820/99).
#   Wansapura JP et al., J Magn Reson Imaging 1999;9:531-538 report at 3 T a shorter GM/WM T1 (about
#   1330/830 ms) with T2 about 110/80 ms; we keep one source per field strength.
# CSF: close to free water at 37 C; T1 about 4000 ms, T2 about 2000 ms at both fields (rounded; reported
#   values span roughly 3500-4500 ms and 1500-2200 ms).
# Fat (subcutaneous): de Bazelaire CMJ et al., Radiology 2004;230:652-659 (1.5 T: 343/58; 3 T: 382/68).
# Skull (cortical bone): T2 under 1 ms, invisible at these echo times; near-zero signal by construction.
# PD (water content): CSF 1.0, GM about 0.80, WM about 0.69 (e.g. Neeb H et al., NeuroImage 2006;31:1156);
#   fat 0.9 and skull 0.05 are rough values for rendering only.
RELAXATION: dict[float, dict[str, tuple[float, float, float]]] = {
    1.5: {"csf": (4000.0, 2000.0, 1.00), "gm": (1124.0, 95.0, 0.80), "wm": (884.0, 72.0, 0.69),
          "fat": (343.0, 58.0, 0.90), "skull": (300.0, 1.0, 0.05)},
    3.0: {"csf": (4000.0, 2000.0, 1.00), "gm": (1820.0, 99.0, 0.80), "wm": (1084.0, 69.0, 0.69),
          "fat": (382.0, 68.0, 0.90), "skull": (300.0, 1.0, 0.05)},
}

#: spin-echo timings (TR ms, TE ms) of the three contrasts
SEQUENCES: dict[str, tuple[float, float]] = {"t1w": (500.0, 10.0), "t2w": (4000.0, 100.0), "pd": (4000.0, 10.0)}
CONTRASTS = tuple(SEQUENCES)


def _table(field_t: float) -> dict[str, tuple[float, float, float]]:
    if float(field_t) not in RELAXATION:
        raise InputError(f"no relaxation table for {field_t} T; choose one of {', '.join(map(str, RELAXATION))}")
    return RELAXATION[float(field_t)]


def tissue_signal(tissue: str, field_t: float, contrast: str) -> float:
    """Noise-free spin-echo signal of one tissue (0 for background), relative to water."""
    if contrast not in SEQUENCES:
        raise InputError(f"unknown MR contrast '{contrast}'; choose one of {', '.join(SEQUENCES)}")
    if tissue == "background":
        return 0.0
    t1, t2, pd = _table(field_t)[tissue]
    tr, te = SEQUENCES[contrast]
    return float(pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2))


def bias_field(rng: np.random.Generator, shape: tuple[int, ...], strength: float = 0.2, order: int = 2) -> np.ndarray:
    """Smooth multiplicative field ``exp(strength * f)``, f a random low-order cosine series with max |f| = 1.

    Shape ``shape`` (2-D or 3-D), float32, values in ``[exp(-strength), exp(strength)]``.
    """
    coeff = rng.standard_normal((order + 1,) * len(shape))
    coeff.flat[0] = 0.0  # no constant term: the field is centred around 1
    bases = [np.cos(np.pi * np.outer(np.arange(order + 1), np.linspace(0.0, 1.0, n))) for n in shape]
    f = coeff
    for b in bases:  # contract one coefficient axis at a time: f[a, b, c] -> f[x, y, z]
        f = np.tensordot(f, b, axes=([0], [0]))
    f = f / (np.abs(f).max() + 1e-12)
    return np.exp(strength * f).astype(np.float32)


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of ``signal`` plus complex Gaussian noise of std ``sigma`` per channel (Rician), float32."""
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32)


def simulate(fractions: dict[str, np.ndarray], field_t: float = 1.5, seed: int = 0, noise: float = 0.02,
             bias: float = 0.2, contrasts=CONTRASTS, location: float = 0.0) -> dict[str, np.ndarray]:
    """T1w/T2w/PD images from tissue fractions (partial-volume mixing), with bias field and Rician noise.

    Args:
        fractions: tissue name -> fraction map, all of one shape (2-D or 3-D), summing to <= 1.
        field_t: 1.5 or 3.0 tesla. seed: seeds the bias field (different per contrast) and the noise.
        noise: Rician sigma as a fraction of the brightest tissue signal of each contrast (0: none).
        bias: strength of the multiplicative bias field (0: none).
        location: strength of a smooth field per (contrast, tissue) that scales that tissue's signal by
            ``[exp(-location), exp(location)]`` depending on position (0: none). It differs between
            contrasts and tissues, so one contrast is a function of another only locally, not over the
            whole image: a synthesis network needs to know where a voxel is (LSDN's premise).
    Returns:
        contrast -> float32 image of the fractions' shape, arbitrary units (water = 1).
    """
    shape = next(iter(fractions.values())).shape
    out = {}
    for i, contrast in enumerate(contrasts):
        levels = {t: tissue_signal(t, field_t, contrast) for t in fractions}
        image = np.zeros(shape, np.float32)
        for j, (t, f) in enumerate(fractions.items()):
            if levels[t]:
                level = np.float32(levels[t])
                if location:
                    level = level * bias_field(np.random.default_rng((seed, i, 3, j)), shape, location)
                image += level * f.astype(np.float32)
        if bias:
            image *= bias_field(np.random.default_rng((seed, i, 1)), shape, bias)
        if noise:
            image = rician(np.random.default_rng((seed, i, 2)), image, noise * max(levels.values()))
        out[contrast] = image
    return out


def render_labels(labels: np.ndarray, field_t: float = 1.5, contrast: str = "t1w") -> np.ndarray:
    """Noise-free image of a tissue label map (ids index :data:`TISSUES`), same shape, float32."""
    lut = np.array([tissue_signal(t, field_t, contrast) for t in TISSUES], np.float32)
    return lut[labels]


def mni_fractions(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, close_mm: float = 4.0, rim_mm: float = 1.5):
    """CSF fraction and brain region from the MNI152 T1 and GM/WM probability maps (1 mm voxels).

    The template ships no brain mask. The brain region is GM + WM > 0.5, closed by ``close_mm`` (bridges the
    sulci), holes filled (ventricles; in 3-D and per axial slice), then dilated by ``rim_mm`` for the outer
    CSF layer; rim voxels that are bright on T1 (> 150 of 255) with little GM/WM (< 0.2) are left out
    (scalp fat, marrow). Inside the region CSF = 1 - GM - WM; outside it is 0.

    Returns ``(csf, region)``: float32 fractions and a bool mask, shape of the inputs.
    """
    tissue = gm + wm
    core = tissue > 0.5
    grown = ndimage.distance_transform_edt(~core) <= close_mm
    closed = ndimage.distance_transform_edt(grown) > close_mm
    closed |= core
    filled = ndimage.binary_fill_holes(closed)
    filled |= np.stack([ndimage.binary_fill_holes(filled[:, :, k]) for k in range(filled.shape[2])], axis=2)
    rim = (ndimage.distance_transform_edt(~filled) <= rim_mm) & ~filled
    region = filled | (rim & ~((t1 > 150) & (tissue < 0.2)))
    csf = np.where(region, np.clip(1.0 - tissue, 0.0, 1.0), 0.0).astype(np.float32)
    return csf, region


def build_mr_t1t2(field, noise, bias, seed, margin, location):
    """Arrays and meta of ``mr-t1t2`` (see :func:`mr_t1t2`)."""
    _table(field)
    data = _load_mni152()
    gm, wm, t1 = data["gm"].array, data["wm"].array, data["t1"].array
    over = np.maximum(gm + wm, 1.0)  # probabilities that sum past 1 are scaled back
    gm, wm = gm / over, wm / over
    csf, region = mni_fractions(t1, gm, wm)
    gm, wm = gm * region, wm * region  # background = everything outside the brain region
    stack, affine = to_display_slices(Volume(np.stack([csf, gm, wm], axis=-1), data["t1"].affine))
    inside = stack.sum(-1) > 0
    lo = np.maximum(np.argwhere(inside).min(0) - margin, 0)
    hi = np.minimum(np.argwhere(inside).max(0) + 1 + margin, inside.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    stack = np.ascontiguousarray(stack[box])
    fractions = {t: stack[..., i] for i, t in enumerate(("csf", "gm", "wm"))}
    images = simulate(fractions, field, seed, noise, bias, location=location)
    table = _table(field)
    meta = {
        "simulated": "simulated from a real template (MNI152 2009a T1 + GM/WM maps); not acquired MR",
        "field_t": float(field), "location": float(location), "sequences": {k: list(v) for k, v in SEQUENCES.items()},
        "relaxation_ms": {t: list(table[t]) for t in ("csf", "gm", "wm")},
        "tissues": ["background", "csf", "gm", "wm"], "crop_start": [int(v) for v in lo],
    }
    arrays = {**images, "fractions": stack.astype(np.float16), "affine": crop_affine(affine, lo)}
    return arrays, meta


def _load_mni152():
    from kfjax.data.sources import load

    return load("mni152")


register(DerivedSet(
    "mr-t1t2", ("mni152",),
    "T1w/T2w/PD spin-echo images simulated from the real MNI152 template's tissue maps (GM/WM/CSF), "
    "1.5 T or 3 T, bias fields, location-dependent tissue contrast and Rician noise, 1 mm",
    {"field": 3.0, "noise": 0.02, "bias": 0.2, "seed": 0, "margin": 4, "location": 0.15},
    build_mr_t1t2, version=2,
))


def mr_t1t2(field: float = 3.0, noise: float = 0.02, bias: float = 0.2, seed: int = 0, margin: int = 4,
            location: float = 0.15) -> dict[str, Any]:
    """T1w, T2w and PD images simulated from a real template (MNI152 2009a) at ``field`` tesla (cached).

    Simulated, not acquired: tissue fractions GM/WM from the template, CSF derived (see
    :func:`mni_fractions`), spin-echo signal with literature T1/T2/PD
    (:data:`RELAXATION`), a different smooth bias field per contrast, a location-dependent contrast of
    strength ``location`` per contrast and tissue (see :func:`simulate`) and Rician noise of std ``noise``
    times the brightest tissue, all from ``seed``. The volume is cropped to the brain region
    plus ``margin`` voxels; background (skull, scalp) has no signal (skull-stripped simulation).

    Returns a dict:
        t1w, t2w, pd (D, H, W) float32, arbitrary units (water = 1), 1 mm voxels, display orientation
        (axial slices are ``[k]``); fractions (D, H, W, 4) float32 background/csf/gm/wm summing to 1;
        labels (D, H, W) uint8 argmax of fractions; affine (4, 4) index -> RAS (MNI) mm; meta.
    """
    arrays, meta = build("mr-t1t2", field=field, noise=noise, bias=bias, seed=seed, margin=margin, location=location)
    tissue = arrays["fractions"].astype(np.float32)
    fractions = np.concatenate([np.clip(1.0 - tissue.sum(-1, keepdims=True), 0.0, 1.0), tissue], axis=-1)
    return {**{c: arrays[c] for c in CONTRASTS}, "fractions": fractions,
            "labels": np.argmax(fractions, axis=-1).astype(np.uint8), "affine": arrays["affine"], "meta": meta}


def mr_slices(data: dict[str, Any], keys=("t1w", "t2w"), min_brain: float = 0.25):
    """2-D axial slices of :func:`mr_t1t2` output whose brain area is >= ``min_brain`` of the largest one.

    Returns ``images (N, H, W, len(keys))`` float32, ``labels (N, H, W, 1)`` uint8 and the slice indices ``(N,)``.
    """
    area = (data["labels"] > 0).sum(axis=(1, 2))
    index = np.flatnonzero(area >= min_brain * area.max())
    images = np.stack([data[k][index] for k in keys], axis=-1)
    return images, data["labels"][index][..., None], index
