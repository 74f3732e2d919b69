"""Procedural phantoms: seeded, fast, no files. The embedded default data of kfjax.

Every generator takes a ``numpy.random.Generator`` (or is fixed, like :func:`metal_masks`) and returns
numpy arrays; the same generator state gives the same arrays. 2-D images are in the display orientation
of :mod:`kfjax.io.orientation` (rows anterior -> posterior, columns patient right -> left).

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


def organ_phantom_3d(rng: np.random.Generator, size: int = 32, noise: float = 0.05, blur: float = 1.0):
    """A 3-D organ phantom: :func:`organ_phantom` with ``spatial_dims=3`` (smoothly deformed ellipsoids).

    Returns ``image (size, size, size, 1)`` and ``label (size, size, size, 1)`` float32. Imitates a
    blob-shaped organ with touching look-alike neighbours; not real organ shapes or topology.
    """
    return organ_phantom(rng, size, 3, noise, blur)


# ---------------------------------------------------------------- 2-D CT anatomy

#: label ids of :func:`ct_anatomy_2d`
ANATOMY_LABELS = ("air", "fat", "soft", "lung", "blood", "liver", "organ", "bone")


def _ellipse(grid, centre, radii, angle: float = 0.0, wobble=None) -> np.ndarray:
    """Bool mask of a rotated ellipse on a 2-D normalised ``grid (2, H, W)`` (rows y, columns x)."""
    y, x = grid[0] - centre[0], grid[1] - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    r2 = (u / radii[1]) ** 2 + (v / radii[0]) ** 2
    return r2 + (0.0 if wobble is None else wobble) < 1.0


def _bone(grid, centre, radii, angle, shell: float) -> tuple[np.ndarray, np.ndarray]:
    """A bone: (whole mask, cortical shell mask) with shell thickness ``shell`` (normalised units)."""
    outer = _ellipse(grid, centre, radii, angle)
    inner = _ellipse(grid, centre, (max(radii[0] - shell, 1e-3), max(radii[1] - shell, 1e-3)), angle)
    return outer, outer & ~inner


def ct_anatomy_2d(rng: np.random.Generator, size: int = 256, region: str | None = None):
    """A random axial CT-like slice in HU with its tissue labels.

    Body ellipse with a subcutaneous fat rim (-100 HU) around soft tissue (40 HU); ``region`` "chest"
    (lungs about -850 HU with vessel dots, heart and aorta 40 HU, ribs, sternum) or "abdomen" (liver 60 HU,
    spleen and kidneys 30-50 HU, bowel gas); a vertebra with spinous process, trabecular bone 200-350 HU
    inside a cortical shell of 700-1500 HU; air -1000 HU; smooth texture, noise and a slight blur.
    Imitates the HU levels and layout CNN-MAR-style metal simulation needs (methods.md §0.3); does not
    imitate real organ shapes, CT noise texture, reconstruction kernels or partial-volume statistics.

    Returns ``hu (size, size, 1)`` float32 and ``labels (size, size, 1)`` uint8 indexing
    :data:`ANATOMY_LABELS`.
    """
    region = region or ("chest" if rng.random() < 0.5 else "abdomen")
    if region not in ("chest", "abdomen"):
        raise ValueError(f"region must be 'chest' or 'abdomen', got {region!r}")
    g = _grid((size, size))
    labels = np.zeros((size, size), np.uint8)
    hu = np.full((size, size), -1000.0, np.float32)

    def paint(mask, label, value):
        labels[mask] = label
        hu[mask] = value

    cy, ry, rx = rng.uniform(-0.02, 0.05), rng.uniform(0.52, 0.62), rng.uniform(0.78, 0.9)
    body = _ellipse(g, (cy, 0.0), (ry, rx), rng.uniform(-0.04, 0.04), 0.08 * _smooth_field(rng, (size, size), 0.15))
    fat = rng.uniform(0.03, 0.07)
    inner = _ellipse(g, (cy, 0.0), (ry - fat, rx - fat * 1.3), 0.0, 0.1 * _smooth_field(rng, (size, size), 0.1)) & body
    paint(body, 1, -100.0 + rng.uniform(-10, 10))
    paint(inner, 2, 40.0 + rng.uniform(-5, 10))
    spine_y = cy + 0.55 * ry
    if region == "chest":
        for side in (-1, 1):
            lung = _ellipse(g, (cy - 0.05, side * 0.38 * rx), (0.62 * ry, 0.36 * rx), side * rng.uniform(0.0, 0.2),
                            0.15 * _smooth_field(rng, (size, size), 0.1)) & inner
            paint(lung, 3, -850.0 + rng.uniform(-40, 40))
            dots = lung & (_smooth_field(rng, (size, size), 0.004) > 0.55)
            paint(dots, 4, 0.0)
        paint(_ellipse(g, (cy - 0.12 * ry, 0.12 * rx), (0.38 * ry, 0.24 * rx), rng.uniform(-0.6, -0.2)) & inner, 4, 40.0)
        paint(_ellipse(g, (spine_y - 0.22 * ry, 0.07), (0.05, 0.05)), 4, 40.0)
        bones = [((cy - 0.9 * (ry - fat), 0.0), (0.03, 0.07), 0.0)] + _ribs(rng, cy, ry - fat, rx - fat, (-55, 65))
    else:
        paint(_ellipse(g, (cy - 0.05, -0.4 * rx), (0.55 * ry, 0.42 * rx), rng.uniform(-0.3, 0.3),
                       0.2 * _smooth_field(rng, (size, size), 0.12)) & inner, 5, 60.0 + rng.uniform(-5, 5))
        paint(_ellipse(g, (cy + 0.25 * ry, 0.55 * rx), (0.25 * ry, 0.16 * rx), rng.uniform(-0.5, 0.5)) & inner, 6,
              45.0 + rng.uniform(-5, 5))
        for side in (-1, 1):
            paint(_ellipse(g, (spine_y - 0.05, side * 0.3 * rx), (0.14 * ry, 0.09 * rx), side * 0.4) & inner, 6,
                  30.0 + rng.uniform(-5, 10))
        for _ in range(rng.integers(2, 6)):
            c = (cy + rng.uniform(-0.5, 0.1) * ry, rng.uniform(-0.1, 0.5) * rx)
            paint(_ellipse(g, c, rng.uniform(0.02, 0.06, 2)) & inner, 0, -1000.0)
        bones = _ribs(rng, cy, ry - fat, rx - fat, (-35, 40))
    bones += [((spine_y, 0.0), (0.09, 0.1), 0.0), ((spine_y + 0.13, 0.0), (0.07, 0.025), 0.0)]  # vertebra
    for centre, radii, angle in bones:
        whole, shell = _bone(g, centre, radii, angle, 0.018)
        paint(whole & body, 7, rng.uniform(200.0, 350.0))
        paint(shell & body, 7, rng.uniform(700.0, 1500.0))
    soft = (labels != 0) & (labels != 3)
    hu += (10.0 * _smooth_field(rng, (size, size), 0.02) * soft).astype(np.float32)
    hu = ndimage.gaussian_filter(hu, 0.6) + rng.normal(0.0, 6.0, hu.shape).astype(np.float32) * (labels != 0)
    return np.maximum(hu, -1000.0)[..., None].astype(np.float32), labels[..., None]


def _ribs(rng, cy, ry, rx, arc_deg):
    """(centre, radii, angle) of rib cross-sections just inside the ellipse (cy, ry, rx), both sides.

    ``arc_deg``: range of the ellipse angle t (0 = lateral, +90 = posterior); ribs lie tangentially.
    """
    ribs = []
    for t in np.deg2rad(np.linspace(arc_deg[0], arc_deg[1], rng.integers(4, 7))):
        for side in (-1, 1):
            centre = (cy + 0.92 * ry * np.sin(t), side * 0.92 * rx * np.cos(t))
            angle = np.arctan2(ry * np.cos(t), -side * rx * np.sin(t))
            ribs.append((centre, (0.022, 0.045), float(angle)))
    return ribs


# ---------------------------------------------------------------- metal masks

#: metal mask shapes of :func:`random_metal`
METAL_KINDS = ("disk", "ellipse", "rods")
#: size group of each of the 10 test masks of :func:`metal_masks` (0 = the two largest ... 4 = the two smallest)
METAL_TEST_GROUPS = np.repeat(np.arange(5), 2)
_METAL_SEED = 20190616  # fixed: the CNN-MAR-style mask set is the same everywhere
_TEST_AREAS = np.geomspace(2000.0, 12.0, 10)  # target areas in pixels at 416 x 416, largest first
#: area range (pixels at 416 x 416) of :func:`fresh_metal`: the test masks' range, the top widened by a quarter
FRESH_METAL_AREAS = (12.0, 2500.0)


#: centre draws :func:`random_metal` tries before it falls back to a random body pixel
_BODY_TRIES = 100


def _centre_pixel(centre, size: int) -> tuple[int, int]:
    """(row, column) of the pixel nearest to a normalised (y, x) point of :func:`_grid`."""
    row, col = np.clip(np.round((np.asarray(centre) + 1) / 2 * (size - 1)), 0, size - 1).astype(int)
    return int(row), int(col)


def random_metal(
    rng: np.random.Generator,
    size: int = 416,
    kind: str | None = None,
    area: float | None = None,
    body: np.ndarray | None = None,
):
    """One random metal mask: a disk, an ellipse or a pair of parallel rods (e.g. spinal fixation).

    ``area`` is the target area in pixels *at 416 x 416* (default log-uniform in [10, 2000]); at another
    ``size`` the area scales by (size/416)^2, and at least one pixel is set. Centres lie within 45 % of
    the half field of view, where the body is. Imitates the binary masks of the CNN-MAR set (implants
    of varied size and shape); does not imitate real implant geometry or partial-volume edges.

    ``body``: optional bool ``(size, size)``, True inside the patient. The centre (the midpoint of the
    rods) is then drawn again, up to 100 times, until its pixel is inside the body; if no draw lands
    there, the centre is a pixel of ``body`` chosen by ``rng``. The shape itself may reach past the body
    outline. The same ``rng`` state gives the same mask; with ``body=None`` (the default) the draws, and
    so the masks, are those of a call without it (as :func:`metal_masks` uses).

    Returns a bool mask ``(size, size)``. Raises ValueError for an unknown ``kind`` or a ``body`` of
    another shape or without any True pixel.
    """
    kind = kind or METAL_KINDS[int(rng.integers(len(METAL_KINDS)))]
    if kind not in METAL_KINDS:
        raise ValueError(f"metal kind must be one of {METAL_KINDS}, got {kind!r}")
    if body is not None:
        body = np.asarray(body, bool)
        if body.shape != (size, size):
            raise ValueError(f"body must have shape {(size, size)}, got {body.shape}")
        if not body.any():
            raise ValueError("body has no True pixel: there is nowhere to place the metal")
    area = float(area if area is not None else np.exp(rng.uniform(np.log(10.0), np.log(2000.0))))
    g = _grid((size, size))
    for _ in range(1 if body is None else _BODY_TRIES):
        r_c, phi = 0.45 * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
        centre = (r_c * np.sin(phi), r_c * np.cos(phi))
        if body is None or body[_centre_pixel(centre, size)]:
            break
    else:  # no draw inside the body: a body pixel chosen by rng
        rows, cols = np.nonzero(body)
        k = int(rng.integers(len(rows)))
        centre = (float(g[0, rows[k], cols[k]]), float(g[1, rows[k], cols[k]]))
    unit = (2.0 / 416.0) ** 2  # one pixel at 416^2 in normalised units (the grid spans 2)
    angle = rng.uniform(0, np.pi)
    if kind == "disk":
        r = np.sqrt(area * unit / np.pi)
        mask = _ellipse(g, centre, (r, r))
    elif kind == "ellipse":
        aspect = rng.uniform(1.5, 4.0)
        b = np.sqrt(area * unit / (np.pi * aspect))
        mask = _ellipse(g, centre, (b, aspect * b), angle)
    else:
        aspect = rng.uniform(4.0, 8.0)
        b = np.sqrt(area / 2 * unit / (np.pi * aspect))
        gap = rng.uniform(3.0, 6.0) * b
        normal = np.array([np.cos(angle), -np.sin(angle)])  # (y, x) direction across the rods
        mask = np.zeros((size, size), bool)
        for side in (-1, 1):
            c = (centre[0] + side * gap * normal[0], centre[1] + side * gap * normal[1])
            mask |= _ellipse(g, c, (b, aspect * b), angle)
    if not mask.any():
        mask[_centre_pixel(centre, size)] = True
    return mask


def metal_masks(size: int = 416, split: str = "test") -> np.ndarray:
    """The fixed CNN-MAR-style metal mask set: 90 train masks or 10 test masks, identical on every call.

    Test masks have target areas from 2000 down to 12 pixels at 416^2 (geometric steps, scaled by
    (size/416)^2), sorted largest first; :data:`METAL_TEST_GROUPS` puts them in 5 size groups of 2, as in
    the DuDoNet/CNN-MAR test protocol (methods.md §0.3). Train masks have random shapes and areas
    (log-uniform 10-2000 pixels at 416^2). Synthetic stand-ins for ``CT_Samples.mat``, not those masks.

    Returns bool ``(N, size, size)``, N = 90 (train) or 10 (test).
    """
    if split == "test":
        rngs = [np.random.default_rng((_METAL_SEED, 1, i)) for i in range(10)]
        kinds = ["rods", "ellipse", "disk", "rods", "ellipse", "disk", "ellipse", "disk", "ellipse", "disk"]
        return np.stack([random_metal(r, size, k, a) for r, k, a in zip(rngs, kinds, _TEST_AREAS)])
    if split == "train":
        return np.stack([random_metal(np.random.default_rng((_METAL_SEED, 0, i)), size) for i in range(90)])
    raise ValueError(f"metal mask split must be 'train' or 'test', got {split!r}")


def fresh_metal(rng: np.random.Generator, size: int) -> np.ndarray:
    """A training mask drawn afresh (any kind), area log-uniform over :data:`FRESH_METAL_AREAS` at 416²
    (scaled to ``size``), so training sees every test size, the largest included. Bool ``(size, size)``."""
    low, high = np.log(FRESH_METAL_AREAS)
    return random_metal(rng, size, area=float(np.exp(rng.uniform(low, high))))


# ---------------------------------------------------------------- brain slices

def brain_slice(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """A random axial brain tissue label slice, ids indexing :data:`kfjax.data.mr.TISSUES`.

    Head ellipse with scalp fat, skull, a CSF layer, a folded cortex (GM) over white matter, two lateral
    ventricles (CSF) with deep grey nuclei beside them, and the interhemispheric fissure. Imitates the
    layout and tissue classes of a mid-ventricular slice for T1<->T2 synthesis tests; does not imitate
    real gyral patterns, anatomy below the ventricles, vessels or lesions. Render it with
    :func:`kfjax.data.mr.render_labels` or :func:`brain_mr`.

    Returns ``labels (size, size, 1)`` uint8 (0 background, 1 CSF, 2 GM, 3 WM, 4 fat, 5 skull).
    """
    g = _grid((size, size))
    ry, rx = rng.uniform(0.82, 0.92), rng.uniform(0.68, 0.78)
    wob = 0.04 * _smooth_field(rng, (size, size), 0.15)
    labels = np.zeros((size, size), np.uint8)
    layers = [(0.0, 4), (rng.uniform(0.04, 0.06), 5), (rng.uniform(0.1, 0.13), 1), (rng.uniform(0.14, 0.16), 2)]
    for depth, tissue in layers:  # scalp fat, skull, CSF, cortex: nested shells
        labels[_ellipse(g, (0.0, 0.0), (ry - depth, rx - depth), 0.0, wob)] = tissue
    folds = _smooth_field(rng, (size, size), 0.03)
    folds /= folds.std() + 1e-8  # unit variance: gyri and sulci everywhere along the cortex
    depth_gm = rng.uniform(0.22, 0.26)
    wm = _ellipse(g, (0.0, 0.0), (ry - depth_gm, rx - depth_gm), 0.0, wob - 0.1 * folds)
    labels[wm & (labels == 2)] = 3
    sulci = (np.abs(folds) < 0.15) & (labels == 2)  # zero crossings: thin winding sulci
    labels[sulci] = 1
    fissure = (np.abs(g[1]) < 0.012 + 0.01 * rng.random()) & (np.abs(g[0]) > 0.3) & np.isin(labels, (2, 3))
    labels[fissure] = 1
    for side in (-1, 1):
        labels[_ellipse(g, (0.05, side * 0.14), (0.1, 0.07), side * 0.3) & (labels == 3)] = 2  # deep nuclei
        vent = _ellipse(g, (-0.08, side * 0.08), (rng.uniform(0.18, 0.26), rng.uniform(0.03, 0.05)), side * 0.25)
        labels[vent & np.isin(labels, (2, 3))] = 1
    return labels[..., None]


def brain_mr(rng: np.random.Generator, size: int = 128, field_t: float = 3.0, contrasts=("t1w", "t2w"),
             noise: float = 0.02, bias: float = 0.2):
    """A :func:`brain_slice` rendered as spin-echo MR images (partial volume from a 0.7-pixel blur).

    Returns ``images (size, size, len(contrasts))`` float32 (water = 1; bias and Rician noise from ``rng``)
    and ``labels (size, size, 1)`` uint8. Same signal model as the ``mr-t1t2`` derived set.
    """
    from kfjax.data.mr import TISSUES, simulate

    labels = brain_slice(rng, size)
    fractions = {t: ndimage.gaussian_filter((labels[..., 0] == i).astype(np.float32), 0.7)
                 for i, t in enumerate(TISSUES) if i > 0}
    images = simulate(fractions, field_t, int(rng.integers(2**31)), noise, bias, contrasts)
    return np.stack([images[c] for c in contrasts], axis=-1), labels
