"""Ellipse phantoms with exact line integrals: the reference the projectors are tested against.

An ellipse is `(value, a, b, x0, y0, phi)`: attenuation added inside (1/mm), semi-axes a (along angle phi)
and b (mm), centre (x0, y0) in mm, rotation phi in radians, in the world frame of
`kfjax.physics.geometry` (x right, y up). The line integral of one ellipse along the parallel ray (θ, t) is
2·value·a·b·sqrt(α² - τ²)/α² for |τ| < α, with α² = a²cos²(θ-phi) + b²sin²(θ-phi) and
τ = t - (x0 cos θ + y0 sin θ) (Kak & Slaney, ch. 3). Fan rays are parallel rays with θ = β - γ,
t = source_distance·sin γ.
"""

from __future__ import annotations

import math

import numpy as np

from kfjax.physics.geometry import FanBeam, ParallelBeam

# The modified Shepp-Logan phantom (Toft 1996) in units of the half-width: value, a, b, x0, y0, phi (degrees).
MODIFIED_SHEPP_LOGAN = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
)


def shepp_logan_ellipses(half_width_mm: float, scale: float = 1.0) -> list[tuple[float, ...]]:
    """The modified Shepp-Logan ellipses scaled to a half-width in mm, values multiplied by `scale` (1/mm)."""
    return [
        (
            v * scale,
            a * half_width_mm,
            b * half_width_mm,
            x * half_width_mm,
            y * half_width_mm,
            math.radians(p),
        )
        for v, a, b, x, y, p in MODIFIED_SHEPP_LOGAN
    ]


def rasterize(ellipses, image_shape: tuple[int, int], pixel_size: float, supersample: int = 8) -> np.ndarray:
    """Pixel-averaged image `(H, W)` float64 of the ellipses (each pixel sampled on a supersample² grid)."""
    h, w = image_shape
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    cols = (np.arange(w)[None, :, None] + offsets[None, None, :] - (w - 1) / 2) * pixel_size
    rows = (np.arange(h)[:, None, None] + offsets[None, None, :] - (h - 1) / 2) * pixel_size
    x = cols[:, :, None, :]  # (1, W, 1, S)
    y = -rows[:, :, :, None]  # (H, 1, S, 1)
    image = np.zeros((h, w, supersample, supersample))
    for value, a, b, x0, y0, phi in ellipses:
        dx, dy = x - x0, y - y0
        u = dx * math.cos(phi) + dy * math.sin(phi)
        v = -dx * math.sin(phi) + dy * math.cos(phi)
        image += value * ((u / a) ** 2 + (v / b) ** 2 <= 1.0)
    return image.mean(axis=(2, 3))


def parallel_line_integrals(ellipses, theta: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Exact integrals along parallel rays (θ, t), arrays broadcast together; float64."""
    theta, t = np.broadcast_arrays(np.asarray(theta, np.float64), np.asarray(t, np.float64))
    total = np.zeros(theta.shape)
    for value, a, b, x0, y0, phi in ellipses:
        alpha2 = (a * np.cos(theta - phi)) ** 2 + (b * np.sin(theta - phi)) ** 2
        tau = t - (x0 * np.cos(theta) + y0 * np.sin(theta))
        inside = tau**2 < alpha2
        total += np.where(
            inside,
            2 * value * a * b * np.sqrt(np.maximum(alpha2 - tau**2, 0)) / alpha2,
            0,
        )
    return total


def sinogram(ellipses, geometry) -> np.ndarray:
    """Exact sinogram `(n_views, n_det)` float64 of the ellipses for a `ParallelBeam` or `FanBeam`."""
    angles = geometry.angles()[:, None]
    if isinstance(geometry, ParallelBeam):
        return parallel_line_integrals(ellipses, angles, geometry.bins()[None, :])
    assert isinstance(geometry, FanBeam)
    gamma = geometry.fan_angles()[None, :]
    return parallel_line_integrals(ellipses, angles - gamma, geometry.source_distance * np.sin(gamma))
