"""Segmentation domains of different modality count, class count, spacing and object size, for U²-Net.

Every domain yields cubic patches `(n, S, S, S, C_d)` float32 with integer labels `(n, S, S, S)`; the
multi-domain set pads the channels to `MAX_CHANNELS` (zeros) and adds the domain index, so every batch has
one shape and one compiled step serves all domains.

| domain | channels | classes | spacing mm | what is real |
|---|---|---|---|---|
| ct_organs | 1 (CT) | background, lung, heart, liver | 4, 4, 4 | real chest CT and its real organ labels |
| brain_tissue | 2 (T1w, T2w) | background, csf, gm, wm | 2, 2, 2 | real MNI152 tissue classes; simulated MR images |
| organ_phantom | 1 | background, organ | 1.5 | procedural 3-D organ (simulated) |
| prostate_like | 2 (T2-, ADC-like) | background, peripheral, central | 4.5, 1.5, 1.5 | procedural, thick slices (simulated) |
| hippocampus_like | 1 | background, head, body | 1, 1, 1 | procedural small curved structure (simulated) |
| organ_lowcontrast | 1 | background, organ | 1.5 | procedural organ, blurred low-contrast boundary (simulated) |

The real volumes are single subjects: ONE chest CT and ONE brain template cannot test generalisation across
patients. Their train and test patches come from disjoint axial slabs (`test_slices`: test and validation
patches lie wholly inside that slab, training patches wholly outside it); validation and test are different
patches of the same held-out slab. Procedural domains draw train/val/test from disjoint seeds. Patches are
centred on a random foreground voxel half of the time (the paper forces foreground into a third of each batch).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage

from kfjax.data.cache import DerivedSet, build, register
from kfjax.data.pipeline import ArrayDataset
from kfjax.data.phantoms import organ_phantom_3d
from kfjax.errors import ConfigError

MAX_CHANNELS = 2  # input channels of every batch (domains with fewer are zero-padded)
CT_SPACING_MM = 4.0  # isotropic grid of the ct_organs domain
CT_CLASSES = ("background", "lung", "heart", "liver")  # chest-ct-structures groups kept, in class order
HU_LOW, HU_HIGH = -1000.0, 1000.0  # CT window mapped to [0, 1]
MR_DOWNSAMPLE = 2  # brain_tissue: block average of the 1 mm template
MR_SCALE_PERCENTILE = 99.5  # MR channel / this percentile of its foreground -> about [0, 1]
ANISOTROPY = 3  # prostate_like: fine slices averaged into one thick slice
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class Domain:
    """One segmentation domain."""

    name: str
    in_channels: int  # image channels (modalities)
    classes: tuple[str, ...]  # class names, background first
    spacing_mm: tuple[float, float, float]  # voxel size (D, H, W)
    kind: str  # intensity normalisation at inference: ct (HU window) | mr (foreground percentile) | minmax
    source: str  # what is real and what is simulated

    @property
    def n_classes(self) -> int:
        return len(self.classes)


DOMAINS: dict[str, Domain] = {d.name: d for d in (
    Domain("ct_organs", 1, CT_CLASSES, (CT_SPACING_MM,) * 3, "ct", "real chest CT with its real organ labels"),
    Domain("brain_tissue", 2, ("background", "csf", "gm", "wm"), (2.0, 2.0, 2.0), "mr",
           "real MNI152 tissue classes; T1w/T2w simulated from them"),
    Domain("organ_phantom", 1, ("background", "organ"), (1.5, 1.5, 1.5), "minmax", "procedural 3-D organ"),
    Domain("prostate_like", 2, ("background", "peripheral", "central"), (1.5 * ANISOTROPY, 1.5, 1.5), "minmax",
           "procedural two-zone gland, thick slices, T2- and ADC-like channels"),
    Domain("hippocampus_like", 1, ("background", "head", "body"), (1.0, 1.0, 1.0), "minmax",
           "procedural small curved tube in MR-like texture"),
    Domain("organ_lowcontrast", 1, ("background", "organ"), (1.5, 1.5, 1.5), "minmax",
           "procedural organ with a blurred, noisy boundary"),
)}
DEFAULT_DOMAINS = ("ct_organs", "brain_tissue", "organ_phantom", "prostate_like", "hippocampus_like")
NEW_DOMAIN = "organ_lowcontrast"  # the domain added to a trained 5-domain model in the experiment

# axial slab [start, stop) as fractions of the slices that holds the test and validation patches
TEST_SLAB = {"ct_organs": (0.25, 0.48), "brain_tissue": (0.40, 0.65)}


def check_domains(names) -> tuple[Domain, ...]:
    """The Domain of each name; a ConfigError naming the valid ones for an unknown or repeated name."""
    names = tuple(names)
    unknown = [n for n in names if n not in DOMAINS]
    if unknown or not names:
        raise ConfigError(f"unknown domain '{unknown[0] if unknown else ''}'; choose from {', '.join(DOMAINS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"data.domains lists a domain twice: {','.join(names)}")
    return tuple(DOMAINS[n] for n in names)


# ---------------------------------------------------------------- intensity normalisation (training and inference)


def normalise(kind: str, image: np.ndarray) -> np.ndarray:
    """Intensities `(..., C)` of a whole volume -> the network's scale, per channel, float32."""
    image = np.asarray(image, np.float32)
    if kind == "ct":
        return np.clip((image - HU_LOW) / (HU_HIGH - HU_LOW), 0.0, 1.0)
    out = np.empty_like(image)
    for c in range(image.shape[-1]):
        x = image[..., c]
        if kind == "mr":
            fg = x[x > 0.05 * x.max()] if x.max() > 0 else x.ravel()
            out[..., c] = np.clip(x / max(float(np.percentile(fg, MR_SCALE_PERCENTILE)), 1e-6), 0.0, 1.5)
        else:
            low, high = np.percentile(x, [0.5, 99.5])
            out[..., c] = np.clip((x - low) / max(high - low, 1e-6), 0.0, 1.0)
    return out


# ---------------------------------------------------------------- real volumes


def build_ct_grid(spacing_mm):
    """Arrays of `u2net-ct`: the chest CT (HU) smoothed and resampled to `spacing_mm`, labels by nearest."""
    from kfjax.data.ct import chest_ct_structures

    data = chest_ct_structures()
    factors = np.asarray(data["spacing_mm"], np.float64) / spacing_mm
    smooth = ndimage.gaussian_filter(data["ct"], sigma=np.maximum(0.5 / factors - 0.5, 0.0))
    ct = ndimage.zoom(smooth, factors, order=1).astype(np.float32)
    lut = np.zeros(len(data["group_names"]), np.uint8)
    for k, name in enumerate(CT_CLASSES[1:], start=1):
        lut[data["group_names"].index(name)] = k
    labels = ndimage.zoom(lut[data["groups"]], factors, order=0)
    return {"ct": ct, "labels": labels}, {"spacing_mm": float(spacing_mm), "classes": list(CT_CLASSES)}


register(DerivedSet(
    "u2net-ct", ("chest-ct",),
    "chest-ct HU and background/lung/heart/liver labels on an isotropic grid (U²-Net's ct_organs domain)",
    {"spacing_mm": CT_SPACING_MM}, build_ct_grid, version=1, compress=True,
))


@functools.lru_cache(maxsize=2)
def _real_volume(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(image (D, H, W, C) normalised float32, labels (D, H, W) uint8) of a real domain (kept in memory)."""
    if name == "ct_organs":
        arrays, _ = build("u2net-ct", spacing_mm=CT_SPACING_MM)
        return normalise("ct", arrays["ct"][..., None]), arrays["labels"]
    from kfjax.data.mr import mr_t1t2

    data = mr_t1t2()
    f = MR_DOWNSAMPLE
    crop = tuple(slice(0, n - n % f) for n in data["labels"].shape)

    def down(v):
        d, h, w = (s.stop // f for s in crop)
        return v[crop].reshape(d, f, h, f, w, f, *v.shape[3:]).mean(axis=(1, 3, 5))

    image = np.stack([down(data["t1w"]), down(data["t2w"])], axis=-1)
    return normalise("mr", image), np.argmax(down(data["fractions"]), axis=-1).astype(np.uint8)


def slab_patches(name: str, split: str, n: int, size: int, seed: int):
    """Patches of a real domain's volume: image `(n, S, S, S, C)`, labels `(n, S, S, S)` and the corners
    `(n, 3)` (slice, row, column) where each patch starts; test/val inside `TEST_SLAB`, train outside."""
    image, labels = _real_volume(name)
    depth = labels.shape[0]
    lo, hi = (int(round(f * depth)) for f in TEST_SLAB[name])
    ranges = [(lo, hi)] if split != "train" else [(0, lo), (hi, depth)]
    ranges = [(a, b) for a, b in ranges if b - a >= size]
    if not ranges or min(labels.shape[1:]) < size:
        raise ConfigError(f"data.size={size} does not fit the {split} slab of domain {name} "
                          f"(slices {lo}-{hi} of {depth}, {labels.shape[1]}x{labels.shape[2]}); lower data.size")
    rng = np.random.default_rng((seed, SPLIT_IDS[split], 7))
    images, targets, corners = [], [], []
    for _ in range(n):
        a, b = ranges[rng.integers(len(ranges))]
        limits = [(a, b - size), (0, labels.shape[1] - size), (0, labels.shape[2] - size)]
        fg = np.argwhere(labels[a:b] > 0)
        if len(fg) and rng.random() < 0.5:
            centre = fg[rng.integers(len(fg))] + (a, 0, 0)
            start = [int(np.clip(c - size // 2, l0, l1)) for c, (l0, l1) in zip(centre, limits)]
        else:
            start = [int(rng.integers(l0, l1 + 1)) for l0, l1 in limits]
        box = tuple(slice(s, s + size) for s in start)
        images.append(image[box])
        targets.append(labels[box])
        corners.append(start)
    return np.stack(images).astype(np.float32), np.stack(targets).astype(np.uint8), np.asarray(corners)


# ---------------------------------------------------------------- procedural domains


def _grid(shape) -> np.ndarray:
    """Voxel-centre coordinates `(3, *shape)` centred on the patch, in voxels."""
    return np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) - (s - 1) / 2 for s in shape], indexing="ij"))


def _field(rng, shape, sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return f / (np.abs(f).max() + 1e-8)


def _ellipsoid(rng, grid, centre, radii, wobble: float) -> np.ndarray:
    """Randomly rotated ellipsoid with a smoothly perturbed boundary: bool `grid.shape[1:]`."""
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    local = np.tensordot(q.T.astype(np.float32), grid - np.asarray(centre, np.float32)[:, None, None, None], 1)
    r2 = sum((local[i] / radii[i]) ** 2 for i in range(3))
    return r2 + wobble * _field(rng, grid.shape[1:], 2.0) < 1.0


def _prostate(rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-zone gland rendered on fine isotropic slices, ANISOTROPY of them averaged into one thick slice."""
    fine = (size * ANISOTROPY, size, size)
    grid = _grid(fine)
    centre = rng.uniform(-0.15, 0.15, 3) * np.asarray(fine)
    radius = size * rng.uniform(0.28, 0.38)
    gland = _ellipsoid(rng, grid, centre, radius * rng.uniform(0.85, 1.15, 3), 0.3)
    central = _ellipsoid(rng, grid, centre + rng.uniform(-0.1, 0.1, 3) * radius, radius * rng.uniform(0.6, 0.75, 3),
                         0.2) & gland
    label = np.where(central, 2, np.where(gland, 1, 0))
    levels = {"t2": (0.35, 0.8, 0.5), "adc": (0.6, 0.75, 0.45)}  # background, peripheral, central
    channels = []
    for k, (bg, pz, cg) in enumerate(levels.values()):
        x = np.choose(label, (bg, pz, cg)).astype(np.float32)
        x += 0.06 * _field(rng, fine, 1.5) + 0.04 * rng.standard_normal(fine).astype(np.float32)
        x *= 1.0 + 0.15 * _field(rng, fine, 6.0)
        channels.append(x.reshape(size, ANISOTROPY, size, size).mean(1))
    thick = label.reshape(size, ANISOTROPY, size, size)
    votes = np.stack([(thick == c).sum(1) for c in range(3)])
    return np.stack(channels, -1), np.argmax(votes, 0).astype(np.uint8)


def _hippocampus(rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A curved tube of radius 1-2 voxels along a circular arc: the first 40 % (thicker) is the head."""
    shape = (size,) * 3
    grid = _grid(shape).reshape(3, -1).T
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    bend = size * rng.uniform(0.3, 0.45)
    t = np.linspace(0.0, rng.uniform(0.6, 1.0) * np.pi, 48)
    line = np.stack([bend * np.cos(t), bend * np.sin(t), np.zeros_like(t)], -1) - [bend * 0.5, bend * 0.4, 0.0]
    line = line @ q.T + rng.uniform(-1.5, 1.5, 3)
    radius = np.where(t < 0.4 * t[-1], rng.uniform(1.6, 2.2), rng.uniform(1.0, 1.4))
    dist = np.linalg.norm(grid[:, None, :] - line[None], axis=-1) - radius[None]
    nearest = np.argmin(dist, axis=1)
    inside = dist.min(axis=1) < 0.0
    label = np.where(inside, np.where(t[nearest] < 0.4 * t[-1], 1, 2), 0).reshape(shape).astype(np.uint8)
    image = 0.45 + 0.1 * _field(rng, shape, 2.0)
    pocket = (np.min(np.abs(dist), axis=1).reshape(shape) < 1.0) & (label == 0) & (_field(rng, shape, 1.5) > 0.2)
    image = np.where(label > 0, rng.uniform(0.6, 0.7), np.where(pocket, 0.15, image))
    image = ndimage.gaussian_filter(image.astype(np.float32), 0.6) + 0.05 * rng.standard_normal(shape)
    return image[..., None].astype(np.float32), label


def _procedural(name: str, rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    if name == "organ_phantom":
        image, label = organ_phantom_3d(rng, size, noise=0.05, blur=1.0)
    elif name == "organ_lowcontrast":
        image, label = organ_phantom_3d(rng, size, noise=0.12, blur=2.0)
    elif name == "prostate_like":
        return _prostate(rng, size)
    else:
        return _hippocampus(rng, size)
    return image, label[..., 0].astype(np.uint8)


# ---------------------------------------------------------------- the data sets


def domain_patches(name: str, split: str, n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` patches of one domain: image `(n, S, S, S, C_d)` float32 (normalised), labels `(n, S, S, S)` uint8."""
    check_domains([name])
    if split not in SPLIT_IDS:
        raise ConfigError(f"unknown split '{split}'; choose train, val or test")
    if name in TEST_SLAB:
        return slab_patches(name, split, n, size, seed)[:2]
    pairs = [_procedural(name, np.random.default_rng((seed, SPLIT_IDS[split], i)), size) for i in range(n)]
    return np.stack([p[0] for p in pairs]).astype(np.float32), np.stack([p[1] for p in pairs])


def multi_domain_dataset(names, split: str, n: int, size: int, seed: int, only: int | None = None) -> ArrayDataset:
    """`n` patches of each domain: image `(N, S, S, S, MAX_CHANNELS)` float32 (zero-padded channels), label
    `(N, S, S, S)` int32, domain `(N,)` int32 (the index into `names`). `only`: just that domain's rows."""
    domains = check_domains(names)
    images, labels, ids = [], [], []
    for k, d in enumerate(domains):
        if only is not None and k != only:
            continue
        image, label = domain_patches(d.name, split, n, size, seed)
        images.append(np.pad(image, [(0, 0)] * 4 + [(0, MAX_CHANNELS - image.shape[-1])]))
        labels.append(label.astype(np.int32))
        ids.append(np.full(len(label), k, np.int32))
    return ArrayDataset(image=np.concatenate(images), label=np.concatenate(labels), domain=np.concatenate(ids))
