"""Filtered backprojection for parallel and fan beam, and DuDoNet's Radon inversion layer.

Parallel beam: ramp-filter each view (`kfjax.physics.filters`), backproject with the projector's matched
adjoint, scale by π/n_views (180° data; 360° data counts every line twice and gets the same factor because
Δθ doubles). The Joseph adjoint spreads a bin over s²/Δu mm of image per view, hence the factor Δu/s².

Fan beam (flat or arc), by default: weighted fan-beam FBP (`fan_fbp`). Or, as DuDoNet's layer does:
rebin to parallel beam (θ = β - γ, t = D_so·sin γ, bilinear interpolation in
(β, γ) with Keys cubic interpolation, periodic in β), then parallel FBP over 360°. The rebinned geometry is `rebinned_geometry(fan)`.
Everything is differentiable: the rebinning by autodiff of a 16-tap gather, the filter by FFT, the
backprojection through its custom VJP (a forward projection).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kfjax.errors import ConfigError, InputError
from kfjax.physics.filters import ramp_filter
from kfjax.physics.geometry import FanBeam, ParallelBeam
from kfjax.physics.projector import at_least_float32, make_projector


def rebinned_geometry(fan: FanBeam, oversample: int = 2) -> ParallelBeam:
    """The 360° parallel geometry a fan sinogram is rebinned to: one parallel view per fan view, bins at the
    fan's central spacing projected to the isocentre divided by `oversample`, covering the outermost rays.

    Oversampling the detector by 2 lowered the rebinned FBP error of the 256² Shepp-Logan (fan-flat, 360
    views) from 0.131 to 0.124 relative L2; more did not help (`tests/physics/test_fbp.py` holds the bound).
    `fan_fbp` (no rebinning) reaches 0.107."""
    if not math.isclose(fan.angle_range, 2 * math.pi, rel_tol=1e-9):
        raise ConfigError("fan-beam FBP needs a full 360° scan (angle_range = 2π); short scans are not supported")
    if fan.detector == "arc":
        spacing = fan.source_distance * fan.det_spacing
    else:
        spacing = fan.det_spacing * fan.source_distance / fan.source_detector_distance
    t_max = fan.source_distance * float(np.max(np.abs(np.sin(fan.fan_angles()))))
    spacing = spacing / oversample
    half = math.floor(t_max / spacing)
    return ParallelBeam(
        n_views=fan.n_views,
        n_det=2 * half + 1,
        det_spacing=spacing,
        image_shape=fan.image_shape,
        pixel_size=fan.pixel_size,
        angle_range=2 * math.pi,
        start_angle=fan.start_angle,
    )


def rebin_fan_to_parallel(sinogram: jnp.ndarray, fan: FanBeam) -> jnp.ndarray:
    """`(B, n_views, n_det, C)` fan sinogram -> `(B, n_views, n_det', C)` on `rebinned_geometry(fan)`.

    Parallel rays outside the fan's bins get 0.
    """
    par = rebinned_geometry(fan)
    dtype = sinogram.dtype
    theta = jnp.asarray(par.angles(), dtype)[:, None]
    t = jnp.asarray(par.bins(), dtype)[None, :]
    gamma = jnp.arcsin(jnp.clip(t / fan.source_distance, -1, 1))
    beta = theta + gamma
    view = (beta - fan.start_angle) / (fan.angle_range / fan.n_views)
    if fan.detector == "arc":
        coord = gamma
    else:
        coord = fan.source_detector_distance * jnp.tan(gamma)
    bin_ = (coord - fan.det_offset) / fan.det_spacing + (fan.n_det - 1) / 2
    v0 = jnp.floor(view).astype(jnp.int32)
    b0 = jnp.floor(bin_).astype(jnp.int32)
    view_weights = _keys_weights(view - v0.astype(dtype))
    bin_weights = _keys_weights(bin_ - b0.astype(dtype))
    n_v, n_d = fan.n_views, fan.n_det
    total = 0
    for i, dv in enumerate(range(-1, 3)):
        vi = (v0 + dv) % n_v
        for j, db in enumerate(range(-1, 3)):
            bi = b0 + db
            weight = jnp.where((bi >= 0) & (bi < n_d), view_weights[i] * bin_weights[j], 0)
            total = total + sinogram[:, vi, jnp.clip(bi, 0, n_d - 1), :] * weight[None, :, :, None]
    return total


def _keys_weights(frac: jnp.ndarray, a: float = -0.5) -> list[jnp.ndarray]:
    """Keys (1981) cubic convolution weights of the taps at offsets -1, 0, 1, 2 for fractions `frac` in [0, 1)."""

    def near(x):  # |x| <= 1
        return (a + 2) * x**3 - (a + 3) * x**2 + 1

    def far(x):  # 1 < |x| < 2
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a

    return [far(1 + frac), near(frac), near(1 - frac), far(2 - frac)]


def fbp(sinogram: jnp.ndarray, geometry, filter: str = "ram-lak", fan_method: str = "direct") -> jnp.ndarray:
    """Filtered backprojection. `(B, n_views, n_det, C)` line integrals -> `(B, H, W, C)` μ (1/mm).

    `geometry`: `ParallelBeam` (180° or 360°) or `FanBeam` (360°, flat or arc). `filter`: ram-lak,
    shepp-logan, cosine, hann or hamming. `fan_method`: "direct" (weighted fan-beam FBP, the more accurate)
    or "rebin" (rebin to parallel beam, then parallel FBP: DuDoNet's Radon inversion layer). Computed in
    float32 (or float64) whatever the input's precision: a bfloat16/float16 sinogram is cast first.
    """
    sinogram = at_least_float32(sinogram)
    if sinogram.ndim != 4 or tuple(sinogram.shape[1:3]) != (
        geometry.n_views,
        geometry.n_det,
    ):
        raise InputError(
            f"sinogram must have shape (B, {geometry.n_views}, {geometry.n_det}, C) for this {geometry.kind} "
            f"geometry, got {tuple(sinogram.shape)}"
        )
    if isinstance(geometry, FanBeam):
        if fan_method == "direct":
            return fan_fbp(sinogram, geometry, filter)
        if fan_method != "rebin":
            raise ConfigError(f"fan_method must be 'direct' or 'rebin', got {fan_method!r}")
        parallel = rebinned_geometry(geometry)
        sinogram = rebin_fan_to_parallel(sinogram, geometry)
    else:
        parallel = geometry
    filtered = ramp_filter(sinogram, parallel.det_spacing, filter)
    _, adjoint = make_projector(parallel)
    scale = math.pi / parallel.n_views * parallel.det_spacing / parallel.pixel_size**2
    return adjoint(filtered) * scale


def fan_fbp(sinogram: jnp.ndarray, fan: FanBeam, filter: str = "ram-lak") -> jnp.ndarray:
    """Weighted fan-beam FBP (Kak & Slaney ch. 3.4) for the arc or flat detector over 360°.

    Arc: q = [p·D cos γ] * ½h(γ)(γ/sin γ)², f(x) = Δβ Σ_β q(β, γ(x)) / L², L = source-to-pixel distance.
    Flat (virtual detector through the centre, s = t·D_so/D_sd): q = [p·D/√(D² + s²)] * ½h(s),
    f(x) = Δβ Σ_β q(β, s(x)) / U², U = (D + x·r)/D. Pixel-driven, linear interpolation in the detector; the
    loop over views is rematerialised in the backward pass, so its memory stays O(image + sinogram).
    """
    if not math.isclose(fan.angle_range, 2 * math.pi, rel_tol=1e-9):
        raise ConfigError("fan-beam FBP needs a full 360° scan (angle_range = 2π); short scans are not supported")
    dtype = sinogram.dtype
    d = fan.source_distance
    if fan.detector == "arc":
        gamma = jnp.asarray(fan.bins(), dtype)
        weighted = sinogram * (d * jnp.cos(gamma))[None, None, :, None]
        spacing, offset = fan.det_spacing, fan.det_offset
        filtered = 0.5 * ramp_filter(weighted, spacing, filter, arc=True)
    else:
        scale = d / fan.source_detector_distance  # detector -> virtual detector through the centre
        virtual = jnp.asarray(fan.bins(), dtype) * scale
        weighted = sinogram * (d / jnp.sqrt(d**2 + virtual**2))[None, None, :, None]
        spacing, offset = fan.det_spacing * scale, fan.det_offset * scale
        filtered = 0.5 * ramp_filter(weighted, spacing, filter)
    h, w = fan.image_shape
    s = fan.pixel_size
    x = ((jnp.arange(w, dtype=dtype) - (w - 1) / 2) * s)[None, :]
    y = (((h - 1) / 2 - jnp.arange(h, dtype=dtype)) * s)[:, None]
    n_det = fan.n_det
    b, c = filtered.shape[0], filtered.shape[-1]
    values = jnp.moveaxis(filtered, 0, -2).reshape(fan.n_views, n_det, b * c)

    @jax.checkpoint
    def view(total, inputs):
        beta, q = inputs
        along_u = x * jnp.cos(beta) + y * jnp.sin(beta)
        depth = d - x * jnp.sin(beta) + y * jnp.cos(beta)  # distance from the source along the central ray
        if fan.detector == "arc":
            coord, weight = jnp.arctan2(along_u, depth), 1.0 / (along_u**2 + depth**2)
        else:
            coord, weight = d * along_u / depth, (d / depth) ** 2
        position = (coord - offset) / spacing + (n_det - 1) / 2
        low = jnp.floor(position).astype(jnp.int32)
        frac = position - low.astype(dtype)
        v0 = jnp.where(((low >= 0) & (low < n_det))[..., None], q[jnp.clip(low, 0, n_det - 1)], 0)
        v1 = jnp.where(((low >= -1) & (low < n_det - 1))[..., None], q[jnp.clip(low + 1, 0, n_det - 1)], 0)
        return total + (weight * (1 - frac))[..., None] * v0 + (weight * frac)[..., None] * v1, None

    angles = jnp.asarray(fan.angles(), dtype)
    total, _ = jax.lax.scan(view, jnp.zeros((h, w, b * c), dtype), (angles, values))
    image = total * (fan.angle_range / fan.n_views)
    return jnp.moveaxis(image.reshape(h, w, b, c), 2, 0)


class RadonInversion(nn.Module):
    """DuDoNet's Radon inversion layer: fan→parallel rebinning, ramp filter, backprojection.

    `(B, n_views, n_det, C)` sinogram -> `(B, H, W, C)` image; no parameters, differentiable, gradients
    through the matched projector.
    """

    geometry: FanBeam | ParallelBeam
    filter: str = "ram-lak"

    @nn.compact
    def __call__(self, sinogram: jnp.ndarray) -> jnp.ndarray:
        return fbp(sinogram, self.geometry, self.filter, fan_method="rebin")

