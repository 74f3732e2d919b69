"""Polychromatic metal-artifact simulation (the CNN-MAR pipeline of DuDoNet, DuDoNet++, ADN, InDuDoNet).

    simulate = make_metal_simulator(preset("adn"), MetalConfig(material="Ti"))
    out = simulate(hu, metal, key)   # hu (B, H, W, 1) HU, metal (B, H, W, 1) in [0, 1], one jax key

Steps (methods.md §0.3; every μ in 1/mm, every length in mm, energies in keV):

1. HU -> μ at the reference energy (70 keV): μ = μ_w·(1 + HU/1000), HU clipped below at -1000
   (:func:`kfjax.units.hu_to_mu`, μ_w = :data:`kfjax.units.MU_WATER_70KEV` = 0.0192 /mm).
2. Water/bone split by thresholds (HU 100 and 1500 in μ terms): below -> water, above -> bone, in between
   bone fraction w = (μ - t_w)/(t_b - t_w), bone part w·μ, water part (1 - w)·μ.
3. Metal: a mask (fraction of each pixel that is metal), μ_metal(70 keV) from the tables (Ti, Fe, Cu, Au,
   density configurable). By default metal replaces the tissue under it (MIRACLE-Center release); ADN's helper
   leaves the tissue (``replace_tissue=False``).
4. Monochromatic projections of water, bone and metal; the metal trace is the set of bins with P_metal > 0;
   bins on the trace boundary along the detector axis get P_metal/4 (partial-volume edge effect).
5. Polychromatic: p_E = Σ_m μ_m(E)/μ_m(70)·P_m for E = 20..120 keV, p = -log(Σ_E S(E) exp(-p_E)), ΣS = 1.
6. Noise: λ = round(N0·exp(-p)) + scatter; counts ~ Poisson(λ), 0 -> 1; p = -log(counts/N0).
7. Water beam-hardening correction: cubic (no constant) fitted on water 0..500 mm, applied to every sinogram.
8. Linear interpolation (LI) across the metal trace per view along the detector axis; FBP of each sinogram;
   optionally NMAR (LI of the sinogram normalised by the projection of a tissue-class prior).

The spectrum and attenuation tables are read from ``kfjax/physics/data/xray_tables.npz`` (written by
``tools/make_xray_tables.py``, provenance in the .json beside it); kfjax needs no X-ray library at run time.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from kfjax.errors import ConfigError, InputError
from kfjax.units import MU_WATER_70KEV, hu_to_mu, mu_to_hu  # hu_to_mu, mu_to_hu re-exported (__all__)

__all__ = [
    "MATERIALS",
    "MetalConfig",
    "add_noise",
    "apply_bhc",
    "attenuation_ratios",
    "bhc_coefficients",
    "decompose",
    "hu_to_mu",
    "interpolate_trace",
    "load_tables",
    "make_metal_simulator",
    "metal_trace",
    "mu_to_hu",
    "nmar_prior",
    "nmar_sinogram",
    "polychromatic",
]

MATERIALS = ("Ti", "Fe", "Cu", "Au")
TABLE_PATH = Path(__file__).resolve().parent / "data" / "xray_tables.npz"


@dataclasses.dataclass(frozen=True)
class MetalConfig:
    """Settings of the metal-artifact simulator (defaults: CNN-MAR / DuDoNet)."""

    material: str = "Ti"  # metal: "Ti", "Fe", "Cu" or "Au"
    density: float | None = None  # metal density in g/cm³; None = the table's (Ti 4.5, Fe 7.8, Cu 8.9, Au 19.3)
    n0: float = 2e7  # incident photons per detector bin
    scatter: float = 20.0  # scatter photons added to the expected counts of every bin
    noise: bool = True  # Poisson noise on the metal sinogram (off: expected counts)
    replace_tissue: bool = True  # metal pixels replace water/bone (MIRACLE release); False = ADN helper
    partial_volume: bool = True  # trace-boundary bins get P_metal/4
    bhc: bool = True  # water beam-hardening correction of every polychromatic sinogram
    pixel_size: float | None = None  # mm; None keeps the geometry's, else the geometry is scaled to it
    mu_water: float = MU_WATER_70KEV  # μ of water at the reference energy (1/mm), for HU <-> μ
    energy: float = 70.0  # reference (monochromatic) energy in keV
    water_hu: float = 100.0  # HU at and below which a pixel is all water
    bone_hu: float = 1500.0  # HU at and above which a pixel is all bone
    bhc_thickness: float = 500.0  # largest water thickness of the beam-hardening fit (mm)
    bhc_step: float = 0.5  # water thickness step of the fit (mm)
    filter: str = "ram-lak"  # FBP filter
    nmar: bool = False  # also return the NMAR baseline (one more projection and FBP per case)

    def __post_init__(self):
        if self.material not in MATERIALS:
            raise ConfigError(f"MetalConfig.material must be one of {', '.join(MATERIALS)}, got {self.material!r}")
        if self.density is not None and not self.density > 0:
            raise ConfigError(f"MetalConfig.density must be > 0 g/cm³ (or None for the table's), got {self.density}")
        if not self.n0 > 0 or self.scatter < 0:
            raise ConfigError(f"MetalConfig needs n0 > 0 and scatter >= 0, got n0={self.n0}, scatter={self.scatter}")
        if not self.bone_hu > self.water_hu:
            raise ConfigError(f"MetalConfig.bone_hu ({self.bone_hu}) must exceed water_hu ({self.water_hu})")


@functools.cache
def load_tables(path: str | None = None) -> dict[str, np.ndarray]:
    """The shipped tables: ``energies_kev`` (E,), ``spectrum`` (E,) summing to 1, ``mu_<name>`` (E,) in 1/mm."""
    with np.load(path or TABLE_PATH) as f:
        return {k: f[k] for k in f.files}


def _table_density(name: str) -> float:
    t = load_tables()
    names = [str(n) for n in t["density_names"]]
    return float(t["densities_g_cm3"][names.index(name)])


def _mu_at(name: str, energy: float) -> float:
    """μ of table material ``name`` at ``energy`` keV (linear interpolation), 1/mm, table density."""
    t = load_tables()
    return float(np.interp(energy, t["energies_kev"], t[f"mu_{name}"]))


def metal_mu(config: MetalConfig) -> float:
    """μ of the configured metal at the reference energy, 1/mm."""
    scale = 1.0 if config.density is None else config.density / _table_density(config.material)
    return _mu_at(config.material, config.energy) * scale


def attenuation_ratios(material: str = "Ti", energy: float = 70.0) -> np.ndarray:
    """μ_m(E)/μ_m(energy) for m = water, bone, ``material``: shape (n_energies, 3), float64."""
    t = load_tables()
    return np.stack([t[f"mu_{m}"] / _mu_at(m, energy) for m in ("water", "bone", material)], axis=-1)


def _poly_water(p_mono: np.ndarray, energy: float) -> np.ndarray:
    """Polychromatic projection of water with monochromatic projection ``p_mono`` (any shape), float64."""
    t = load_tables()
    r = t["mu_water"] / _mu_at("water", energy)
    return -np.log(np.exp(-np.multiply.outer(p_mono, r)) @ t["spectrum"])


def bhc_coefficients(config: MetalConfig = MetalConfig()) -> np.ndarray:
    """(c1, c2, c3) with p_mono ≈ c1 q + c2 q² + c3 q³ for q the polychromatic projection of water.

    Least squares on water thicknesses 0..``bhc_thickness`` mm in ``bhc_step`` mm steps (methods.md §0.3 step 7).
    """
    thickness = np.arange(0.0, config.bhc_thickness + config.bhc_step / 2, config.bhc_step)
    p_mono = _mu_at("water", config.energy) * thickness
    q = _poly_water(p_mono, config.energy)
    design = np.stack([q, q**2, q**3], axis=-1)
    return np.linalg.lstsq(design, p_mono, rcond=None)[0]


def decompose(mu: jnp.ndarray, config: MetalConfig = MetalConfig()) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Split μ (1/mm, any shape) into (water, bone) images with water + bone = μ (methods.md §0.3 step 2)."""
    t_w = hu_to_mu(config.water_hu, config.mu_water)
    t_b = hu_to_mu(config.bone_hu, config.mu_water)
    fraction = jnp.clip((mu - t_w) / (t_b - t_w), 0.0, 1.0)
    bone = fraction * mu
    return mu - bone, bone


def metal_trace(p_metal: jnp.ndarray, partial_volume: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Trace (P > 0, bool) of a metal sinogram ``(B, V, D, 1)`` and the sinogram with edge bins divided by 4.

    Edge bins: the trace minus its erosion by a 3-bin segment along the detector axis (outside counts as
    trace, as MATLAB's ``imerode`` pads).
    """
    trace = p_metal > 0
    if not partial_volume:
        return trace, p_metal
    pad = ((0, 0), (0, 0), (1, 1), (0, 0))
    padded = jnp.pad(trace, pad, constant_values=True)
    eroded = trace & padded[:, :, :-2] & padded[:, :, 2:]
    edge = trace & ~eroded
    return trace, jnp.where(edge, p_metal / 4.0, p_metal)


def polychromatic(projections: jnp.ndarray, ratios: jnp.ndarray, spectrum: jnp.ndarray) -> jnp.ndarray:
    """-log Σ_E S(E) exp(-Σ_m ratios[E, m]·P_m).

    projections: ``(..., M)`` monochromatic line integrals at the reference energy, one per material;
    ratios: ``(n_E, M)``; spectrum: ``(n_E,)`` summing to 1. Returns ``(...)``. Energies are summed with
    ``lax.scan`` (memory O(sinogram)) as a running log-sum-exp, so exp never underflows (e.g. behind centimetres of gold).
    """
    ratios = jnp.asarray(ratios, projections.dtype)
    spectrum = jnp.asarray(spectrum, projections.dtype)

    def step(carry, inputs):  # running log-sum-exp: a = max_E(-p_E) so far, total = Σ S exp(-p_E - a)
        a, total = carry
        s, r = inputs
        x = -(projections @ r)
        a_new = jnp.maximum(a, x)
        return (a_new, total * jnp.exp(a - a_new) + s * jnp.exp(x - a_new)), None

    start = (jnp.full(projections.shape[:-1], -jnp.inf, projections.dtype), jnp.zeros(projections.shape[:-1], projections.dtype))
    (a, total), _ = jax.lax.scan(step, start, (spectrum, ratios))
    return -(a + jnp.log(total))


POISSON_LIMIT = 1e4  # above this mean count the sampler uses the normal approximation (see add_noise)


def add_noise(p: jnp.ndarray, key: jax.Array | None, n0: float, scatter: float) -> jnp.ndarray:
    """Poisson noise on line integrals: λ = round(n0·e^{-p}) + scatter, counts ~ Poisson(λ) (0 -> 1).

    Returns -log(counts / n0), same shape and dtype as ``p``. ``key=None`` gives the expected counts.
    Counts with λ > ``POISSON_LIMIT`` are drawn as round(λ + √λ·z), z ~ N(0, 1): JAX's float32 Poisson
    sampler is wrongly dispersed at CT count levels (var/λ between 0.85 and 1.14 at λ ≈ 7e6 across keys,
    measured with jax 0.10.2), while the normal approximation's error there (skewness 1/√λ <= 0.01) is nil.
    """
    lam = jnp.round(n0 * jnp.exp(-p)) + scatter
    if key is None:
        counts = lam
    else:
        k_small, k_large = jax.random.split(key)
        small = jax.random.poisson(k_small, jnp.minimum(lam, POISSON_LIMIT), dtype=jnp.int32).astype(p.dtype)
        large = jnp.round(lam + jnp.sqrt(lam) * jax.random.normal(k_large, lam.shape, p.dtype))
        counts = jnp.where(lam > POISSON_LIMIT, large, small)
    return -jnp.log(jnp.maximum(counts, 1.0) / n0)


def apply_bhc(p: jnp.ndarray, coefficients) -> jnp.ndarray:
    """c1 p + c2 p² + c3 p³ (water beam-hardening correction)."""
    c1, c2, c3 = (float(c) for c in coefficients)
    return p * (c1 + p * (c2 + p * c3))


def interpolate_trace(sinogram: jnp.ndarray, trace: jnp.ndarray) -> jnp.ndarray:
    """Linear interpolation across the trace, per view along the detector axis (the LI baseline).

    sinogram ``(B, V, D, C)``, trace ``(B, V, D, C)`` bool. Each trace bin gets the straight line between the
    nearest non-trace bins left and right in its view; at the detector ends the nearest value is held; a view
    that is all trace is left as it is. Gathers only; jit/vmap/grad-safe.
    """
    n = sinogram.shape[2]
    index = jnp.arange(n, dtype=jnp.int32)[None, None, :, None]
    left = jax.lax.cummax(jnp.where(trace, -1, index), axis=2)
    right = jax.lax.cummin(jnp.where(trace, n, index), axis=2, reverse=True)
    has_left, has_right = left >= 0, right < n
    v_left = jnp.take_along_axis(sinogram, jnp.clip(left, 0, n - 1), axis=2)
    v_right = jnp.take_along_axis(sinogram, jnp.clip(right, 0, n - 1), axis=2)
    span = jnp.maximum(right - left, 1).astype(sinogram.dtype)
    w = (index - left).astype(sinogram.dtype) / span
    both = v_left + w * (v_right - v_left)
    filled = jnp.where(has_left & has_right, both, jnp.where(has_left, v_left, jnp.where(has_right, v_right, sinogram)))
    return jnp.where(trace, filled, sinogram)


def nmar_prior(image: jnp.ndarray, metal: jnp.ndarray, mu_water: float = MU_WATER_70KEV, air_hu: float = -700.0,
               bone_hu: float = 500.0) -> jnp.ndarray:
    """NMAR prior (Meyer et al. 2010) from an LI image ``(B, H, W, 1)`` μ in 1/mm: air 0, soft tissue μ_water, bone kept.

    Classes by thresholds on the image smoothed by a 3×3 box: below ``air_hu`` air, above ``bone_hu`` bone
    (its LI values kept), in between water; metal pixels become water.
    """
    smooth = jax.lax.reduce_window(jnp.pad(image, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge"), 0.0, jax.lax.add,
                                   (1, 3, 3, 1), (1, 1, 1, 1), "VALID") / 9.0
    air, bone = hu_to_mu(air_hu, mu_water), hu_to_mu(bone_hu, mu_water)
    prior = jnp.where(smooth < air, 0.0, jnp.where(smooth > bone, image, mu_water))
    return jnp.where(metal > 0, mu_water, prior)


def nmar_sinogram(sinogram: jnp.ndarray, trace: jnp.ndarray, prior_sinogram: jnp.ndarray, eps: float = 0.01) -> jnp.ndarray:
    """Normalised metal-artifact reduction: LI of ``sinogram / prior`` across the trace, times ``prior`` again.

    All ``(B, V, D, C)``; ``eps`` (line-integral units) keeps the ratio finite on rays through air.
    """
    denominator = jnp.maximum(prior_sinogram, 0.0) + eps
    return interpolate_trace(sinogram / denominator, trace) * denominator


def scale_geometry(geometry, pixel_size: float):
    """``geometry`` with its pixel size set to ``pixel_size`` mm and every other length scaled alike.

    The papers give geometries in pixels (source distance 1075 px), so a new pixel size scales the whole
    system; an arc detector's angular bin spacing is unchanged, a flat or parallel detector's mm spacing scales.
    """
    k = float(pixel_size) / geometry.pixel_size
    changes = {"pixel_size": float(pixel_size)}
    if hasattr(geometry, "source_distance"):
        changes.update(source_distance=geometry.source_distance * k, detector_distance=geometry.detector_distance * k)
    if getattr(geometry, "detector", "flat") != "arc":
        changes.update(det_spacing=geometry.det_spacing * k, det_offset=geometry.det_offset * k)
    return dataclasses.replace(geometry, **changes)


def _project_materials(forward, water, bone, metal, mu_metal: float, geometry, replace_tissue: bool):
    """Monochromatic sinograms ``(B, V, D, 1)`` of the materials (steps 3-4): one projector call for all.

    Returns ``(p_water, p_bone, ma_water, ma_bone, p_metal)``: metal-free water and bone, the water and bone
    seen with metal present (the tissue under the metal removed when ``replace_tissue``) and the metal.
    """
    b = water.shape[0]
    images = [water, bone]
    if replace_tissue:
        images += [water * (1.0 - metal), bone * (1.0 - metal)]
    images.append(metal * mu_metal)
    sino = forward(jnp.concatenate(images, axis=0)).reshape(len(images), b, geometry.n_views, geometry.n_det, 1)
    p_water, p_bone, p_metal = sino[0], sino[1], sino[-1]
    ma_water, ma_bone = (sino[2], sino[3]) if replace_tissue else (p_water, p_bone)
    return p_water, p_bone, ma_water, ma_bone, p_metal


def _measure(ma_parts, gt_parts, key, ratios, spectrum, coefficients, config: MetalConfig):
    """Metal-affected and metal-free measured sinograms (steps 5-7): polychromatic, noise (metal-affected
    only), beam-hardening correction. ``ma_parts`` = (water, bone, metal), ``gt_parts`` = (water, bone)."""
    ma_water, ma_bone, p_metal = ma_parts
    p_water, p_bone = gt_parts
    b = p_water.shape[0]
    stacked = jnp.stack(
        [jnp.concatenate([ma_water, p_water]), jnp.concatenate([ma_bone, p_bone]),
         jnp.concatenate([p_metal, jnp.zeros_like(p_metal)])],
        axis=-1,
    )
    poly = polychromatic(stacked, ratios, spectrum)
    ma, gt = poly[:b], poly[b:]
    ma = add_noise(ma, key if config.noise else None, config.n0, config.scatter)
    if config.bhc:
        ma, gt = apply_bhc(ma, coefficients), apply_bhc(gt, coefficients)
    return ma, gt


def _nmar_outputs(forward, fbp, geometry, li_image, metal, ma, trace, config: MetalConfig) -> dict:
    """``nmar_sinogram`` and ``nmar_image`` (step 8's NMAR baseline, the LI image as prior source)."""
    prior = nmar_prior(li_image, metal, config.mu_water)
    sinogram = nmar_sinogram(ma, trace, forward(prior))
    return {"nmar_sinogram": sinogram, "nmar_image": fbp(sinogram, geometry, filter=config.filter)}


def _check_inputs(hu, metal, key, shape: tuple[int, int], config: MetalConfig):
    """``(hu, metal, key)`` as float32 jax arrays and a key; InputError for wrong shapes or a missing key."""
    hu = jnp.asarray(hu, jnp.float32)
    metal = jnp.asarray(metal, jnp.float32)
    if hu.ndim != 4 or tuple(hu.shape[1:]) != (*shape, 1):
        raise InputError(f"hu must have shape (B, {shape[0]}, {shape[1]}, 1) for this geometry, got {tuple(hu.shape)}")
    if metal.shape != hu.shape:
        raise InputError(f"metal must have the shape of hu {tuple(hu.shape)}, got {tuple(metal.shape)}")
    if config.noise and key is None:
        raise InputError("noise is on: pass a jax PRNG key (jax.random.key(seed)), or set MetalConfig(noise=False)")
    return hu, metal, jax.random.key(0) if key is None else key


def make_metal_simulator(geometry, config: MetalConfig = MetalConfig()):
    """A jitted ``simulate(hu, metal, key) -> dict`` for ``geometry`` (ParallelBeam or FanBeam).

    Args of ``simulate``:
        hu: ``(B, H, W, 1)`` CT in HU, (H, W) = ``geometry.image_shape``.
        metal: ``(B, H, W, 1)`` metal fraction of each pixel in [0, 1] (a binary mask works), paired with ``hu``.
        key: a jax PRNG key for the Poisson noise (ignored when ``config.noise`` is False).

    Returns a dict of float32 arrays (images ``(B, H, W, 1)`` μ in 1/mm, sinograms ``(B, V, D, 1)``):
        ``gt_image`` μ at the reference energy (no metal); ``ma_image``, ``li_image``, ``poly_image`` FBP of
        the metal-affected, LI-corrected and metal-free polychromatic sinograms; ``ma_sinogram``,
        ``li_sinogram``, ``gt_sinogram`` (metal-free, polychromatic, beam-hardening corrected, noise-free),
        ``mono_sinogram`` (metal-free, monochromatic); ``metal_mask`` (metal > 0, 0/1), ``metal_trace`` (0/1);
        with ``config.nmar`` also ``nmar_sinogram`` and ``nmar_image`` (NMAR with the LI image as prior source).
    """
    from kfjax.physics.fbp import fbp
    from kfjax.physics.projector import make_projector

    if config.pixel_size is not None:
        geometry = scale_geometry(geometry, config.pixel_size)
    ratios = attenuation_ratios(config.material, config.energy).astype(np.float32)
    spectrum = load_tables()["spectrum"].astype(np.float32)
    coefficients = bhc_coefficients(config)
    mu_metal = metal_mu(config)
    shape = tuple(geometry.image_shape)

    def core(hu, metal, key):
        forward, _ = make_projector(geometry)
        water, bone = decompose(hu_to_mu(hu, config.mu_water), config)
        metal = jnp.clip(metal, 0.0, 1.0)
        p_water, p_bone, ma_water, ma_bone, p_metal = _project_materials(
            forward, water, bone, metal, mu_metal, geometry, config.replace_tissue)
        trace, p_metal = metal_trace(p_metal, config.partial_volume)
        ma, gt = _measure((ma_water, ma_bone, p_metal), (p_water, p_bone), key, ratios, spectrum, coefficients, config)
        li = interpolate_trace(ma, trace)
        # one FBP per sinogram (not one of the three stacked): inside a caller's jit, XLA drops the ones whose
        # images the caller does not use (fresh-mask training needs one or two of them)
        ma_image, li_image, poly_image = (fbp(s, geometry, filter=config.filter) for s in (ma, li, gt))
        extra = _nmar_outputs(forward, fbp, geometry, li_image, metal, ma, trace, config) if config.nmar else {}
        return extra | {
            "gt_image": water + bone,
            "ma_image": ma_image,
            "li_image": li_image,
            "poly_image": poly_image,
            "ma_sinogram": ma,
            "li_sinogram": li,
            "gt_sinogram": gt,
            "mono_sinogram": p_water + p_bone,
            "metal_mask": (metal > 0).astype(hu.dtype),
            "metal_trace": trace.astype(hu.dtype),
        }

    jitted = jax.jit(core)

    def simulate(hu, metal, key=None):
        return jitted(*_check_inputs(hu, metal, key, shape, config))

    simulate.geometry = geometry
    simulate.config = config
    return simulate
