"""LSDN: location-sensitive deep network for MR contrast synthesis (Van Nguyen, Zhou, Vemulapalli, MICCAI 2015).

Voxel-wise regression of the target contrast from a 3x3(x3) source patch and the voxel's atlas coordinate,
fully convolutional (`kfjax.nn.lsdn.LSDN`): the first hidden layer multiplies a feature unit and a spatial
unit (`model.variant=lsdn`); `cdn` feeds features and coordinates concatenated to the same MLP, `blind`
sees no coordinates. With `model.match_params=true` (default) cdn and blind get the first width whose
parameter count is closest to LSDN's (`kfjax.nn.lsdn.matched_width`); `param_counts()` reports them.
ShrinkConnect (`shrink_connect`) compresses a trained first layer post hoc (`kfjax.nn.shrink_connect`).
The layers after the first use ReLU by default (`model.activation`; the paper's sigmoid trains far slower
at CPU scale: 13 vs 20 dB test PSNR after 600 steps, measured once here).

Data: `kfjax.data.synthesis` (source t1w -> target t2w by default), pairs *simulated* from the real MNI152
template (one subject: train and test are different axial slabs of it, not different patients). Images are
in [-1, 1] (each contrast divided by its 99.5th foreground percentile, clipped to [0, 1], mapped by 2u-1);
atlas coordinates are MNI mm / 100. `model.spatial_dims=2` trains on batches of axial slices; `=3` on
random windows of `data.patch_depth` consecutive slices that lie inside one training slab, the loss on the
slices whose 3x3x3 patch stays inside the window. Loss: MSE over all voxels of the slices
(`loss.region=all`, the default: background included, so whole-slice inference is defined) or inside the
brain (`loss.region=brain`, the paper's). Adam 1e-3. Scores: PSNR (data range 1 on [0, 1]) and SSIM inside
the brain mask, per test slice (`kfjax.methods.common.gan.translation_scores`).

    kfjax train lsdn --workdir runs/lsdn                             # LSDN, t1w -> t2w, 2-D
    kfjax train lsdn --workdir runs/cdn --set model.variant=cdn      # the concatenation baseline
    kfjax train lsdn --set model.spatial_dims=3 data.patch_depth=4   # 3x3x3 patches
    kfjax infer lsdn --workdir runs/lsdn --input t1.nii.gz --out t2.nii.gz [--set infer.shrink_units=16]

Inference (2-D runs; a 3-D run refuses): slice by slice through
`kfjax.methods.common.synthesis.synthesize_volume` (intensity normalisation as in training, inverted on
the output, which gets the *input's* intensity scale; resampling to the training pixel size). The input
must already be in MNI152 space (affine registration, e.g. ANTs `antsRegistrationSyNQuick.sh -t a` or FSL
`flirt -ref MNI152_T1_1mm_brain`): the spatial units read atlas coordinates from its affine, so a volume
with less than `infer.min_inside` (90 %) of its foreground inside the training data's atlas box (plus
`infer.atlas_margin_mm`) is refused with an InputError (exit 2). The check catches volumes far from the atlas
(scanner coordinates with another origin, a wrong affine); it cannot tell an unregistered head that happens
to lie near MNI's origin, so register first in any case.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from kfjax import losses
from kfjax.config import BaseConfig, BaseModelConfig, OptimConfig, TrainConfig
from kfjax.data.pipeline import ArrayDataset
from kfjax.data.synthesis import ATLAS_SCALE_MM, SynthesisDataConfig, check_contrasts, synthesis_grid
from kfjax.data.synthesis import synthesis_slices, synthesis_volume
from kfjax.errors import ConfigError, InputError
from kfjax.methods.common.gan import translation_scores
from kfjax.methods.common.supervised import SupervisedMethod
from kfjax.methods.registry import register
from kfjax.nn.lsdn import LSDN, check_network, compress, matched_width, multiplies, param_count
from kfjax.nn.shrink_connect import SparseFit, simultaneous_omp
from kfjax.train.method import Inference
from kfjax.train.state import TrainState

REGIONS = ("all", "brain")
FOREGROUND_UNIT = 0.05  # a voxel of a user's volume above this (in [0, 1] after normalisation) is foreground


@dataclasses.dataclass(frozen=True)
class DataConfig(SynthesisDataConfig):
    patch_depth: int = 4  # spatial_dims=3: slices per training window (all inside one training slab)
    batch_size: int = 4  # global batch: slices (2-D) or windows (3-D)


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseModelConfig):
    variant: str = "lsdn"  # lsdn (feature x spatial units) | cdn (features and coordinates concatenated) | blind
    spatial_dims: int = 2  # 2: axial slices | 3: windows of slices with 3x3x3 patches
    hidden: tuple[int, ...] = (64, 32)  # LSDN widths: the first (product) layer, then the 1x1 layers
    kernel: int = 3  # source patch side (3: 3x3 or 3x3x3)
    activation: str = "relu"  # after the first layer: relu | tanh | sigmoid (paper's; 13 vs relu's 20 dB at 600 steps)
    match_params: bool = True  # cdn/blind: first width chosen so the parameter count matches LSDN(hidden)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    region: str = "all"  # MSE over all voxels of the slices (all) or inside the brain mask only (brain)


@dataclasses.dataclass(frozen=True)
class InferConfig:
    batch_size: int = 8  # slices per network call
    min_inside: float = 0.9  # refuse a volume with less than this fraction of its foreground in the atlas box
    atlas_margin_mm: float = 20.0  # the atlas box: the training brain's extent plus this margin on every side
    shrink_units: int = 0  # > 0: apply ShrinkConnect with this many first-layer units (fitted on training data)
    shrink_voxels: int = 65536  # training voxels the ShrinkConnect fit uses


@dataclasses.dataclass(frozen=True)
class LSDNConfig(BaseConfig):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig(lr=1e-3)  # Adam 1e-3
    train: TrainConfig = TrainConfig(steps=4000, log_every=100, checkpoint_every=1000)  # ~2-3 min on 2 cores
    infer: InferConfig = InferConfig()


@register("lsdn")
class LSDNMethod(SupervisedMethod):
    Config = LSDNConfig
    description = "location-sensitive deep network for MR contrast synthesis (+ CDN, location-blind, ShrinkConnect)"
    paper = "Van Nguyen, Zhou, Vemulapalli, MICCAI 2015"
    inference = Inference(inputs=("volume",), help="MR contrast synthesis (t1w -> t2w) of a volume in MNI152 space")

    def __init__(self, config: LSDNConfig):
        super().__init__(config)
        m, d = config.model, config.data
        check_network(m.variant, tuple(m.hidden), m.spatial_dims, m.kernel, m.activation)
        check_contrasts(d.source, d.target)
        synthesis_grid(d.downsample)
        if config.loss.region not in REGIONS:
            raise ConfigError(f"loss.region '{config.loss.region}' is not one of {', '.join(REGIONS)}")
        if m.spatial_dims == 3 and d.patch_depth < m.kernel:
            raise ConfigError(f"data.patch_depth={d.patch_depth} is smaller than model.kernel={m.kernel}; "
                              f"use at least {m.kernel + 1} slices per window")
        self._datasets: dict[str, ArrayDataset] = {}

    # ---------------------------------------------------------------- network
    @property
    def widths(self) -> tuple[int, ...]:
        """Hidden widths of this variant (matched to LSDN(model.hidden)'s parameter count when asked)."""
        m = self.config.model
        if m.variant == "lsdn" or not m.match_params:
            return tuple(m.hidden)
        return matched_width(tuple(m.hidden), m.variant, m.spatial_dims, m.kernel)

    def network(self, widths: tuple[int, ...] | None = None) -> LSDN:
        m = self.config.model
        return LSDN(tuple(widths or self.widths), m.variant, m.spatial_dims, m.kernel, m.activation)

    def network_inputs(self, batch) -> tuple:
        return batch["source"], batch["coords"]

    def param_counts(self) -> dict[str, int]:
        """Parameters of this network and of LSDN(model.hidden) (the reference of the matching)."""
        m = self.config.model
        return {"params": param_count(self.widths, m.variant, m.spatial_dims, m.kernel),
                "lsdn_params": param_count(tuple(m.hidden), "lsdn", m.spatial_dims, m.kernel)}

    def multiplies(self, widths: tuple[int, ...] | None = None) -> dict[str, int]:
        m = self.config.model
        return multiplies(tuple(widths or self.widths), m.variant, m.spatial_dims, m.kernel)

    # ---------------------------------------------------------------- data
    @functools.cached_property
    def volume(self) -> dict:
        """The simulated subject (`kfjax.data.synthesis.synthesis_volume`)."""
        return synthesis_volume(self.config.data)

    def dataset(self, split: str) -> ArrayDataset:
        if split not in self._datasets:
            slices = synthesis_slices(split, self.config.data, self.volume)
            if self.config.model.spatial_dims == 2:
                self._datasets[split] = slices
            elif split == "train":
                self._datasets[split] = self._train_windows(slices)
            else:
                self._datasets[split] = self._eval_windows(slices)
        return self._datasets[split]

    def _train_windows(self, slices: ArrayDataset) -> ArrayDataset:
        """Every window of `data.patch_depth` consecutive training slices inside one run of training slices."""
        depth, index = self.config.data.patch_depth, slices.arrays["slice_index"]
        runs = np.split(np.arange(len(index)), np.flatnonzero(np.diff(index) != 1) + 1)
        starts = [r[0] + i for r in runs for i in range(len(r) - depth + 1)]
        if not starts:
            longest = max(len(r) for r in runs)
            raise ConfigError(f"data.patch_depth={depth} is longer than every training slab ({longest} slices); "
                              f"use at most {longest}")
        rows = np.asarray(starts)[:, None] + np.arange(depth)
        return ArrayDataset(**{k: slices.arrays[k][rows] for k in ("source", "target", "mask", "coords")},
                            slice_index=index[rows[:, 0]])

    def _eval_windows(self, slices: ArrayDataset) -> ArrayDataset:
        """Per held-out slice: the source and coordinates of it and its neighbours (the patch depth), and its
        own target and mask (the source of the neighbours is an input, not a held-out target)."""
        v, d, r = self.volume, self.config.data, self.config.model.kernel // 2
        index = slices.arrays["slice_index"]
        rows = np.clip(index[:, None] + np.arange(-r, r + 1), 0, len(v["split"]) - 1)
        source = (2.0 * v[d.source][rows] - 1.0)[..., None].astype(np.float32)
        return ArrayDataset(source=source, coords=v["coords"][rows], target=slices.arrays["target"],
                            mask=slices.arrays["mask"], slice_index=index)

    def batch_spec(self, batch_size: int):
        h, w = synthesis_grid(self.config.data.downsample)
        grid = (h, w) if self.config.model.spatial_dims == 2 else (self.config.data.patch_depth, h, w)
        image = jax.ShapeDtypeStruct((batch_size, *grid, 1), jnp.float32)
        return {"source": image, "target": image, "mask": image,
                "coords": jax.ShapeDtypeStruct((batch_size, *grid, 3), jnp.float32)}

    # ---------------------------------------------------------------- training and scores
    def loss_weight(self, batch) -> jax.Array:
        """Per-voxel loss weight: the region (all or brain) and, in 3-D, the slices whose patch is inside."""
        weight = batch["mask"] if self.config.loss.region == "brain" else jnp.ones_like(batch["target"])
        if self.config.model.spatial_dims == 3:
            r, depth = self.config.model.kernel // 2, weight.shape[1]
            inner = ((jnp.arange(depth) >= r) & (jnp.arange(depth) < depth - r)).astype(weight.dtype)
            weight = weight * inner[None, :, None, None, None]
        return weight

    def loss(self, outputs, batch):
        return losses.l2_loss(outputs, batch["target"], mask=self.loss_weight(batch)), {}

    def _slices(self, state: TrainState, batch) -> jax.Array:
        """Predicted slices `(B, H, W, 1)` in [-1, 1] of an eval batch (3-D: the centre of each window)."""
        out = self.apply(state.variables("model"), batch)
        return out if self.config.model.spatial_dims == 2 else out[:, self.config.model.kernel // 2]

    def predict(self, state: TrainState, batch):
        return {"image": self._slices(state, batch)}

    def eval_step(self, state: TrainState, batch):
        return translation_scores(self._slices(state, batch), batch["target"], batch["mask"])

    # ---------------------------------------------------------------- ShrinkConnect
    def first_responses(self, params, batch) -> np.ndarray:
        """First-layer responses `(N, n1)` float64 of the loss-weighted voxels of a batch (host)."""
        net = self.network()
        h = jax.jit(lambda p, x, s: net.apply({"params": p}, x, s, method=LSDN.first_layer))(
            params, batch["source"], batch["coords"])
        keep = np.asarray(self.loss_weight(batch))[..., 0] > 0
        return np.asarray(h, np.float64)[keep]

    def shrink_connect(self, state: TrainState, units: int, voxels: int = 65536, seed: int = 0):
        """(compressed network, its parameters, the SparseFit): ShrinkConnect of the first layer with `units`
        units, fitted by simultaneous OMP on `voxels` random loss-region voxels of the training data."""
        params = state.params["model"]
        if not 1 <= units <= self.widths[0]:
            raise ConfigError(f"ShrinkConnect keeps 1..{self.widths[0]} first-layer units, not {units}")
        train = self.dataset("train")
        h = self.first_responses(params, train[np.arange(len(train))])
        rows = np.random.default_rng(seed).permutation(len(h))[:voxels]
        fit: SparseFit = simultaneous_omp(h[rows], units)
        widths = (units, *self.widths[1:])
        small = compress(jax.device_get(params), fit.support, fit.coef, fit.offset, self.config.model.variant)
        return self.network(widths), small, fit

    # ---------------------------------------------------------------- a user's volume
    def atlas_box(self) -> np.ndarray:
        """`(2, 3)` low/high atlas coordinates of the training brain voxels, widened by `infer.atlas_margin_mm`."""
        v = self.volume
        brain = v["mask"] & (v["split"] == "train")[:, None, None]
        c = v["coords"][brain]
        margin = self.config.infer.atlas_margin_mm / ATLAS_SCALE_MM
        return np.stack([c.min(axis=0) - margin, c.max(axis=0) + margin])

    def infer(self, state: TrainState, inputs, progress: bool = True):
        """The target contrast of a volume in MNI152 space (`kfjax infer lsdn`); see the module docstring."""
        from kfjax.methods.common.synthesis import synthesize_volume

        cfg = self.config
        if cfg.model.spatial_dims != 2:
            raise InputError("this run is a 3-D LSDN (model.spatial_dims=3), which `kfjax infer` does not apply; "
                             "train a 2-D run (the default) and infer with it")
        volume, d, box = inputs["volume"], cfg.data.downsample, self.atlas_box()
        if cfg.infer.shrink_units > 0:
            net, params, _ = self.shrink_connect(state, cfg.infer.shrink_units, cfg.infer.shrink_voxels)
        else:
            net, params = self.model, state.params["model"]
        apply = jax.jit(lambda p, x, s: net.apply({"params": p}, x, s))
        in_atlas = lambda images, coords: check_atlas_space(images, coords, box, cfg.infer.min_inside)  # noqa: E731
        return synthesize_volume(volume, lambda x, s: apply(params, x, s), float(d), 1, cfg.infer.batch_size, progress,
                                 check=in_atlas)


def check_atlas_space(images: np.ndarray, coords: np.ndarray, box: np.ndarray, min_inside: float) -> float:
    """Fraction of foreground voxels (`images` in [-1, 1] above FOREGROUND_UNIT after mapping to [0, 1]) whose
    atlas `coords` lie inside `box (2, 3)`; an InputError when it is below `min_inside`."""
    fg = (np.asarray(images)[..., 0] + 1.0) * 0.5 > FOREGROUND_UNIT
    if not fg.any():
        raise InputError("the volume has no foreground above 5 % of its intensity scale; give an MR image")
    c = np.asarray(coords)[fg]
    inside = float(np.mean(np.all((c >= box[0]) & (c <= box[1]), axis=-1)))
    if inside < min_inside:
        lo, hi = box * ATLAS_SCALE_MM
        span = ", ".join(f"{a} {x:.0f}..{y:.0f}" for a, x, y in zip("xyz", lo, hi))
        raise InputError(f"the volume does not look registered to MNI152: {inside:.0%} of its foreground lies in the "
                         f"atlas box of the training data ({span} mm), needed {min_inside:.0%}; register it to "
                         "MNI152 first (affine, e.g. ANTs antsRegistrationSyNQuick.sh -t a or FSL flirt)")
    return inside
