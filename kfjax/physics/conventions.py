"""Converters between kfjax geometries and the conventions of ASTRA and scikit-image.

ASTRA (2-D `parallel_vec` / `fanflat_vec`, volume window centred on the origin, lengths in mm here):
its pixel (row, col) has its centre at x = (col - (W-1)/2)·s, y = ((H-1)/2 - row)·s, the same as kfjax, so a
kfjax view maps to one row of vectors: parallel (ray, detector centre, bin step) = (r(θ), off·u(θ), Δ·u(θ));
fan-flat (source, detector centre, bin step) = (-D_so·r(β), D_od·r(β) + off·u(β), Δ·u(β)), where
u(θ) = (cos θ, sin θ) and r(θ) = (-sin θ, cos θ). ASTRA has no arc (equiangular) 2-D detector.

scikit-image `radon(image, theta)` (theta in degrees) rotates about pixel N//2 and puts the detector
centre at bin n//2; kfjax rotates about (N-1)/2. For odd N the two agree exactly with θ_kfjax = radians(theta),
detector spacing = pixel size and the same bin order (`from_skimage`); for even N pad the image with one
row at the bottom and one column at the right first (the rotation centre then coincides).
"""

from __future__ import annotations

import math

import numpy as np

from kfjax.errors import ConfigError
from kfjax.physics.geometry import FanBeam, ParallelBeam


def _directions(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u = np.stack([np.cos(angles), np.sin(angles)], -1)
    r = np.stack([-np.sin(angles), np.cos(angles)], -1)
    return u, r


def astra_volume_window(geometry) -> tuple[float, float, float, float]:
    """(min_x, max_x, min_y, max_y) in mm for `astra.create_vol_geom(H, W, *window)`."""
    h, w = geometry.image_shape
    s = geometry.pixel_size
    return (-w * s / 2, w * s / 2, -h * s / 2, h * s / 2)


def to_astra_vectors(geometry) -> tuple[str, np.ndarray]:
    """`("parallel_vec" | "fanflat_vec", vectors (n_views, 6))` for `astra.create_proj_geom(kind, n_det, v)`."""
    u, r = _directions(geometry.angles())
    if isinstance(geometry, ParallelBeam):
        vectors = np.concatenate([r, geometry.det_offset * u, geometry.det_spacing * u], axis=1)
        return "parallel_vec", vectors
    if geometry.detector != "flat":
        raise ConfigError("ASTRA has no 2-D arc (equiangular) detector; only flat fan-beam geometries convert")
    source = -geometry.source_distance * r
    centre = geometry.detector_distance * r + geometry.det_offset * u
    return "fanflat_vec", np.concatenate([source, centre, geometry.det_spacing * u], axis=1)


def _uniform_angles(angles: np.ndarray) -> tuple[float, float]:
    """(start, range) of uniformly spaced angles; raises if they are not uniform."""
    unwrapped = np.unwrap(angles)
    steps = np.diff(unwrapped)
    if len(angles) > 1 and not np.allclose(steps, steps[0], rtol=1e-6, atol=1e-9):
        raise ConfigError("these ASTRA vectors do not have uniformly spaced angles; kfjax geometries need them")
    step = steps[0] if len(angles) > 1 else math.pi
    return float(unwrapped[0]), float(step * len(angles))


def from_astra_vectors(
    kind: str,
    vectors: np.ndarray,
    n_det: int,
    image_shape: tuple[int, int],
    pixel_size: float = 1.0,
):
    """The kfjax geometry of ASTRA `parallel_vec` or `fanflat_vec` vectors (uniform angles, no detector tilt)."""
    vectors = np.asarray(vectors, np.float64)
    step = vectors[:, 4:6]
    spacing = np.linalg.norm(step, axis=1)
    angles = np.arctan2(step[:, 1], step[:, 0])
    start, span = _uniform_angles(angles)
    u, r = _directions(angles)
    if kind == "parallel_vec":
        ray = vectors[:, 0:2] / np.linalg.norm(vectors[:, 0:2], axis=1, keepdims=True)
        if not np.allclose(np.abs(np.sum(ray * r, axis=1)), 1, atol=1e-6):
            raise ConfigError("parallel_vec rays are not perpendicular to the detector; kfjax cannot represent it")
        offset = np.sum(vectors[:, 2:4] * u, axis=1)
        return ParallelBeam(
            n_views=len(vectors),
            n_det=n_det,
            det_spacing=float(spacing[0]),
            image_shape=tuple(image_shape),
            pixel_size=pixel_size,
            angle_range=span,
            start_angle=start,
            det_offset=float(offset[0]),
        )
    if kind == "fanflat_vec":
        source_distance = -np.sum(vectors[:, 0:2] * r, axis=1)
        detector_distance = np.sum(vectors[:, 2:4] * r, axis=1)
        offset = np.sum(vectors[:, 2:4] * u, axis=1)
        return FanBeam(
            n_views=len(vectors),
            n_det=n_det,
            source_distance=float(source_distance[0]),
            detector_distance=float(detector_distance[0]),
            det_spacing=float(spacing[0]),
            detector="flat",
            image_shape=tuple(image_shape),
            pixel_size=pixel_size,
            angle_range=span,
            start_angle=start,
            det_offset=float(offset[0]),
        )
    raise ConfigError(f"unsupported ASTRA geometry {kind!r}; use parallel_vec or fanflat_vec")


def from_skimage(theta_degrees, image_size: int, circle: bool = True, pixel_size: float = 1.0) -> ParallelBeam:
    """The kfjax geometry equal to `skimage.transform.radon(image, theta, circle=circle)` for an odd-sized
    square image; the sinogram is the transpose of skimage's `(n_det, n_views)` output."""
    if image_size % 2 == 0:
        raise ConfigError(
            "scikit-image rotates about pixel N//2, kfjax about (N-1)/2: pad an even-sized image with one row "
            "at the bottom and one column at the right, then use the odd size"
        )
    theta = np.radians(np.asarray(theta_degrees, np.float64))
    start, span = _uniform_angles(theta)
    n_det = image_size if circle else math.ceil(math.sqrt(2) * image_size)
    if n_det % 2 == 0:
        raise ConfigError(
            f"for circle=False scikit-image pads a {image_size}² image to an even {n_det} bins whose centre is "
            "half a bin off kfjax's; use circle=True or another odd image size"
        )
    return ParallelBeam(
        n_views=len(theta),
        n_det=n_det,
        det_spacing=pixel_size,
        image_shape=(image_size, image_size),
        pixel_size=pixel_size,
        angle_range=span,
        start_angle=start,
    )


def to_skimage_theta(geometry: ParallelBeam) -> np.ndarray:
    """View angles in degrees for `skimage.transform.radon/iradon`."""
    if not isinstance(geometry, ParallelBeam):
        raise ConfigError("scikit-image only has parallel-beam projections")
    return np.degrees(geometry.angles())
