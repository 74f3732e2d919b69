"""Procedural phantoms: seeded, fast, no files. The embedded default data of kfjax.

`organ_phantom` imitates one abdominal organ (a liver-like blob) inside a body outline in a
normalised CT-like intensity scale, with neighbouring structures of similar intensity that touch it,
blurred boundaries and noise; the task is to segment the organ. It does not imitate real anatomy,
HU statistics, texture, partial-volume geometry or scanner noise spectra: it exercises models,
training and metrics, not clinical claims.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _grid(shape: tuple[int, ...]) -> np.ndarray:
    """Normalised coordinates in [-1, 1], shape `(len(shape), *shape)`."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Zero-mean random field with unit peak magnitude, correlated over `scale` of the image size."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=scale * min(shape))
    return field / (np.abs(field).max() + 1e-8)


def _blob(rng, grid, centre, radii, roughness) -> np.ndarray:
    """Random rotated ellipse/ellipsoid with a smoothly deformed boundary: bool mask."""
    dims = grid.shape[0]
    q, _ = np.linalg.qr(rng.standard_normal((dims, dims)))
    offset = grid - np.asarray(centre, np.float32).reshape((dims,) + (1,) * dims)
    local = np.tensordot(q.T.astype(np.float32), offset, axes=1)
    radius2 = sum((local[i] / radii[i]) ** 2 for i in range(dims))
    wobble = roughness * _smooth_field(rng, grid.shape[1:], 0.12)
    return radius2 + wobble < 1.0


def organ_phantom(
    rng: np.random.Generator, size: int = 64, spatial_dims: int = 2, noise: float = 0.05, blur: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """One image and its organ mask.

    Returns `image (*S, 1)` float32 (background 0, soft tissue about 0.35, organ about 0.55-0.7) and
    `label (*S, 1)` float32 in {0, 1}, S = (size,) * spatial_dims.
    """
    shape = (size,) * spatial_dims
    grid = _grid(shape)
    body_radii = rng.uniform(0.8, 0.95, spatial_dims)
    body = _blob(rng, grid, np.zeros(spatial_dims), body_radii, 0.1)
    image = np.where(body, rng.uniform(0.3, 0.4), 0.0).astype(np.float32)

    organ_centre = rng.uniform(-0.25, 0.25, spatial_dims)
    organ = _blob(rng, grid, organ_centre, rng.uniform(0.25, 0.45, spatial_dims), rng.uniform(0.4, 0.9)) & body
    organ_level = rng.uniform(0.55, 0.7)
    # neighbours: similar intensity, placed next to the organ so boundaries are partly ambiguous
    for _ in range(rng.integers(1, 4)):
        direction = rng.standard_normal(spatial_dims)
        direction /= np.linalg.norm(direction)
        centre = organ_centre + direction * rng.uniform(0.35, 0.6)
        neighbour = _blob(rng, grid, centre, rng.uniform(0.12, 0.25, spatial_dims), 0.3) & body & ~organ
        image[neighbour] = organ_level + rng.choice([-1, 1]) * rng.uniform(0.06, 0.15)
    image[organ] = organ_level
    # vessels/texture inside the organ, a smooth bias field, blur and noise
    image += 0.04 * _smooth_field(rng, shape, 0.03) * organ
    image *= 1.0 + 0.1 * _smooth_field(rng, shape, 0.3)
    image = ndimage.gaussian_filter(image, blur)
    image += noise * rng.standard_normal(shape).astype(np.float32)
    return image[..., None].astype(np.float32), organ[..., None].astype(np.float32)


def organ_dataset(
    count: int, size: int, spatial_dims: int, seed: int, split: str, noise: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """`count` phantoms `(N, *S, 1)` images and labels; sample i of a split depends only on (seed, split, i)."""
    split_id = {"train": 0, "val": 1, "test": 2}[split]
    images, labels = zip(
        *(organ_phantom(np.random.default_rng((seed, split_id, i)), size, spatial_dims, noise) for i in range(count))
    )
    return np.stack(images), np.stack(labels)
