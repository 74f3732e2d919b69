"""Procedural CT slices and metal masks for the metal-artifact simulator (methods.md §0.3, "no DeepLesion").

`anatomy_slice` is a random-ellipse body in HU (air -1000, fat -100, soft tissue 40, liver 60, cortical bone
700-1500 HU, bone rings); `metal_mask` is a random implant: a disk, an ellipse or a pair of rods, with an
area of 10-2000 pixels at 416² (scaled with the image area). Seeded, numpy only, no files. They exercise the
simulator and MAR models; they are not anatomy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["anatomy_slice", "metal_mask", "metal_masks"]


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) in [-1, 1] (pixel centres), each (size, size); y grows downwards like the row index."""
    c = (np.arange(size) + 0.5) / size * 2 - 1
    return np.meshgrid(c, c, indexing="ij")


def _ellipse(y, x, cy, cx, ry, rx, angle=0.0) -> np.ndarray:
    ca, sa = np.cos(angle), np.sin(angle)
    u = (x - cx) * ca + (y - cy) * sa
    v = -(x - cx) * sa + (y - cy) * ca
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def anatomy_slice(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A random body-like slice in HU, shape (size, size), float32."""
    y, x = _coords(size)
    hu = np.full((size, size), -1000.0, np.float32)
    ry, rx = rng.uniform(0.55, 0.7), rng.uniform(0.75, 0.9)
    body = _ellipse(y, x, 0.0, 0.0, ry, rx)
    hu[body] = -100.0  # fat
    inner = _ellipse(y, x, 0.0, 0.0, ry - 0.06, rx - 0.06)
    hu[inner] = 40.0  # soft tissue
    for side in (-1, 1):  # two lungs or kidneys-like organs of low or soft density
        cx = side * rng.uniform(0.3, 0.45)
        organ = _ellipse(y, x, rng.uniform(-0.15, 0.05), cx, rng.uniform(0.2, 0.35), rng.uniform(0.15, 0.25), rng.uniform(-0.4, 0.4))
        hu[organ & inner] = rng.choice([-800.0, 30.0])
    liver = _ellipse(y, x, rng.uniform(0.0, 0.2), rng.uniform(-0.3, 0.3), rng.uniform(0.1, 0.2), rng.uniform(0.15, 0.25), rng.uniform(0, np.pi))
    hu[liver & inner] = 60.0
    # spine: a vertebral body ring of cortical bone around cancellous bone, near the back
    cy = ry - rng.uniform(0.2, 0.28)
    r = rng.uniform(0.07, 0.1)
    hu[_ellipse(y, x, cy, 0.0, r, r * 1.2)] = rng.uniform(700, 1500)
    hu[_ellipse(y, x, cy, 0.0, r * 0.7, r * 0.85)] = rng.uniform(200, 350)
    # a few small bones (ribs) near the body outline
    for _ in range(rng.integers(2, 6)):
        a = rng.uniform(0, 2 * np.pi)
        cy_, cx_ = 0.85 * ry * np.sin(a), 0.85 * rx * np.cos(a)
        hu[_ellipse(y, x, cy_, cx_, 0.025, 0.045, a)] = rng.uniform(700, 1500)
    return hu


def metal_mask(rng: np.random.Generator, size: int = 256, kind: str | None = None, body: np.ndarray | None = None) -> np.ndarray:
    """A random binary metal mask (size, size) float32: ``kind`` "disk", "ellipse" or "rods" (random if None).

    Area 10-2000 pixels at 416² (log-uniform), scaled by (size/416)². If ``body`` (bool, (size, size)) is
    given, the metal is placed where it is True.
    """
    y, x = _coords(size)
    kind = kind or rng.choice(["disk", "ellipse", "rods"])
    area = np.exp(rng.uniform(np.log(10), np.log(2000))) * (size / 416) ** 2
    r = np.sqrt(max(area, 4.0) / np.pi) / size * 2  # equivalent radius in [-1, 1] units
    for _ in range(100):
        cy, cx = rng.uniform(-0.4, 0.4, 2)
        if body is None or body[int((cy + 1) / 2 * size), int((cx + 1) / 2 * size)]:
            break
    if kind == "disk":
        m = _ellipse(y, x, cy, cx, r, r)
    elif kind == "ellipse":
        e = rng.uniform(1.5, 3.0)
        m = _ellipse(y, x, cy, cx, r * np.sqrt(e), r / np.sqrt(e), rng.uniform(0, np.pi))
    elif kind == "rods":  # two parallel screws, like a spinal fixation
        a = rng.uniform(0, np.pi)
        gap = rng.uniform(0.1, 0.25)
        dy, dx = gap / 2 * np.cos(a), gap / 2 * np.sin(a)
        m = _ellipse(y, x, cy + dy, cx - dx, r * 1.6, r / 2, a) | _ellipse(y, x, cy - dy, cx + dx, r * 1.6, r / 2, a)
    else:
        raise ValueError(f"metal_mask kind must be 'disk', 'ellipse' or 'rods', got {kind!r}")
    return m.astype(np.float32)


def metal_masks(seed: int, count: int, size: int = 256) -> np.ndarray:
    """``count`` seeded masks (count, size, size, 1), sorted by area (the 5-size-group test protocol)."""
    masks = [metal_mask(np.random.default_rng((seed, i)), size) for i in range(count)]
    masks.sort(key=lambda m: m.sum())
    return np.stack(masks)[..., None]
