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
