"""Rays of a 2-D geometry as lines in pixel-index space, shared by the projector and its adjoint.

Every ray is stored as `(major, a, b, w)`:
- `major` = 1 when the ray is closer to the image x-axis (it is marched column by column), 0 when it is
  closer to y (marched row by row);
- along its major axis k (column index, or row index) the ray sits at minor coordinate `a + b·k` (row index,
  or column index), in pixel units, pixel centres at integers;
- `w` = path length (mm) inside one major step, pixel_size / |direction component along the major axis|.

Joseph's method integrates by stepping over the major axis and interpolating linearly between the two
nearest pixels of the minor axis; the adjoint visits, for each pixel, the few rays that pass within one
pixel of it. See `kfjax.physics.geometry` for the world conventions.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from kfjax.physics.geometry import ParallelBeam


def ray_table(geometry, dtype) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """`(major, a, b, w)`, each `(n_views, n_det)`, built inside the caller's trace (no large constants)."""
    h, w_ = geometry.image_shape
    s = geometry.pixel_size
    theta = jnp.asarray(geometry.angles(), dtype)[:, None]
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    if isinstance(geometry, ParallelBeam):
        t = jnp.asarray(geometry.bins(), dtype)[None, :]
        px, py = t * cos, t * sin  # a point of the ray (mm)
        dx, dy = -sin + 0 * t, cos + 0 * t  # direction r(θ)
    else:
        gamma = jnp.asarray(geometry.fan_angles(), dtype)[None, :]
        cg, sg = jnp.cos(gamma), jnp.sin(gamma)
        px, py = (
            geometry.source_distance * sin + 0 * gamma,
            -geometry.source_distance * cos + 0 * gamma,
        )
        dx = cg * -sin + sg * cos
        dy = cg * cos + sg * sin
    # to index space: column c = x/s + (W-1)/2, row r = (H-1)/2 - y/s; direction (dc, dr) = (dx, -dy)
    pc, pr = px / s + (w_ - 1) / 2, (h - 1) / 2 - py / s
    dc, dr = dx, -dy
    major = jnp.abs(dc) >= jnp.abs(dr)
    along = jnp.where(major, dc, dr)  # component along the major axis
    across = jnp.where(major, dr, dc)
    b = across / along
    a = jnp.where(major, pr - pc * b, pc - pr * b)
    length = s / jnp.abs(along)
    return major, a, b, length


def pixel_to_bin(geometry, x, y, cos, sin):
    """Continuous detector index d* of the ray through world points (x, y) (mm) at views (cos θ, sin θ)."""
    centre = (geometry.n_det - 1) / 2
    if isinstance(geometry, ParallelBeam):
        t = x * cos + y * sin
        return (t - geometry.det_offset) / geometry.det_spacing + centre
    along_u = x * cos + y * sin
    along_r = -x * sin + y * cos
    tan_gamma = along_u / (geometry.source_distance + along_r)
    if geometry.detector == "flat":
        coord = geometry.source_detector_distance * tan_gamma
    else:
        coord = jnp.arctan(tan_gamma)
    return (coord - geometry.det_offset) / geometry.det_spacing + centre


def bin_reach(geometry) -> float:
    """Half-width (in bins) of the detector interval whose rays can pass within one pixel of a pixel centre."""
    s = geometry.pixel_size
    if isinstance(geometry, ParallelBeam):
        return s / geometry.det_spacing
    nearest = geometry.source_distance - geometry.fov_radius()  # closest approach of the image to the source
    angle = math.asin(min(1.0, s / nearest))
    if geometry.detector == "arc":
        return angle / geometry.det_spacing
    gamma_max = float(np.max(np.abs(geometry.fan_angles()))) + angle
    return angle * geometry.source_detector_distance / math.cos(gamma_max) ** 2 / geometry.det_spacing


def adjoint_taps(geometry) -> int:
    """Number of detector bins the adjoint visits per pixel and view."""
    return max(1, math.ceil(2 * bin_reach(geometry) * (1 + 1e-6)))


def fan_reach(geometry) -> float:
    """Half-width (in bins) of the adjoint's window for a fan beam: `bin_reach`, or for a flat detector the
    exact widest footprint over all pixels and views plus a round-off margin, whichever is smaller.

    A column-marched ray touches pixel (x, y) when it crosses the segment x, y ± s, a row-marched one when it
    crosses x ± s, y; the bins of those rays lie between the bins of the four end points. On a flat detector
    the end points p ± δ land `D_sd·s·n / (D·(D ± δr)) / det_spacing` bins from p, with D = D_so - x·sin β +
    y·cos β the depth of p along the central ray, δr that of δ (-s·sin β along x, s·cos β along y), and
    n = |cos β·D_so + y| (δ along x) or |sin β·D_so - x| (δ along y). For a fixed row n is fixed and D is
    linear in x, so the widest pixel of the row is at its left or right end; likewise for a column: the
    maximum over the image is on its four edges. The margin (2e-3 bins) covers float32 round-off of the
    pixel-to-bin map.
    """
    reach = bin_reach(geometry)
    if geometry.detector != "flat":
        return reach
    h, w = geometry.image_shape
    s = geometry.pixel_size
    so = geometry.source_distance
    x = (np.arange(w) - (w - 1) / 2) * s
    y = ((h - 1) / 2 - np.arange(h)) * s
    cos, sin = np.cos(geometry.angles())[:, None], np.sin(geometry.angles())[:, None]
    widest = 0.0
    # rows: δ along x; ends are the first and last column
    for xe in (x[0], x[-1]):
        depth = so - xe * sin + y[None, :] * cos
        gap = depth - s * np.abs(sin)
        if np.any(gap <= 0):
            return reach
        widest = max(widest, float(np.max(np.abs(cos * so + y[None, :]) / (depth * gap))))
    # columns: δ along y; ends are the first and last row
    for ye in (y[0], y[-1]):
        depth = so - x[None, :] * sin + ye * cos
        gap = depth - s * np.abs(cos)
        if np.any(gap <= 0):
            return reach
        widest = max(widest, float(np.max(np.abs(sin * so - x[None, :]) / (depth * gap))))
    exact = geometry.source_detector_distance * s * widest / geometry.det_spacing
    return min(reach, exact + 2e-3)
