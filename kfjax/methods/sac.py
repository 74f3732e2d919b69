"""Landmark detection as image partitioning: supervised action map (SAM) and classifier (SAC).

Xu, Huang, Park, Chen, Xu, Yang, Liu, Zhou, "Supervised Action Classifier: Approaching Landmark Detection as
Image Partitioning", MICCAI 2017. A deep-Q agent learns by trial and error which way to step towards a
landmark; when the landmark is known the optimal step is known in closed form
(`kfjax.methods.common.actions.optimal_action_map`: 4 sectors meeting at the landmark), so it is *supervised*:

- `model.variant=sam`: a DI2IN predicts the action map `(B, H, W, K, 4)` of all K landmarks in one pass
  (pixel-wise softmax CE, deep supervision; optionally down-weighting pixels within `loss.diagonal_band` px
  of a sector boundary, where the label flips); the landmark is the greedy walk on the argmax map until it
  oscillates, averaged over `walk.starts`² starts (no further network calls).
- `model.variant=sac`: a small CNN classifies a `model.patch`² patch centred at the agent into 4 actions per
  landmark (K heads). Each step draws `loss.samples` positions per image from the step key (a fraction
  `loss.near_fraction` Gaussian around a landmark, the rest uniform) and cuts the patches inside the jitted
  step; inference walks greedily with the classifier as the policy.

Data: `data.source=drr` (DRRs of the real chest CT at random poses, projected label centroids as landmarks;
`data.hard_test=true` scores the hard set) or `procedural`; `kfjax.data.landmarks`. Metrics per image: landmark
error in mm (mean over visible landmarks and per landmark, NaN where invisible) and the fraction of correct
actions (SAM: every pixel; SAC: a `walk.eval_grid`² grid of positions).

    kfjax train sac                                   # SAM on 64² DRRs
    kfjax train sac --set model.variant=sac           # the patch classifier
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kfjax import losses, metrics
from kfjax.config import BaseConfig, BaseDataConfig, BaseModelConfig, OptimConfig, TrainConfig
from kfjax.data.landmarks import LANDMARK_NAMES, PROCEDURAL_NAMES, drr_landmarks, procedural_landmarks
from kfjax.data.pipeline import ArrayDataset
from kfjax.errors import ConfigError
from kfjax.methods.common.actions import (boundary_distance, greedy_walk, optimal_action_map, optimal_actions,
                                          start_grid, walk_on_map)
from kfjax.methods.common.landmarks import LandmarkInferConfig, LandmarkResult, infer_landmarks
from kfjax.methods.common.supervised import SupervisedMethod
from kfjax.methods.registry import register
from kfjax.nn.blocks import ConvNormAct
from kfjax.nn.di2in import DI2IN
from kfjax.train.method import Inference, Variables
from kfjax.train.state import TrainState

VARIANTS = ("sam", "sac")
SOURCES = ("drr", "procedural")
N_ACTIONS = 4  # +row, -row, +col, -col (`action_steps(2)`)
PROCEDURAL_K = 2  # default landmarks per procedural image
SPLITS = ("train", "val", "test")  # procedural data seed = the split's index (data do not depend on `seed`)
ARRAYS = ("image", "landmarks", "visible", "spacing")  # what the steps read of a data set


@dataclasses.dataclass(frozen=True)
class DataConfig(BaseDataConfig):
    source: str = "drr"  # drr (chest-CT DRRs, real anatomy) | procedural (synthetic images)
    size: int = 64  # image side in pixels (divisible by 2**(len(model.channels)-1) for SAM)
    landmarks: int = 0  # K landmarks per image (0: the source's own: drr 6, procedural 2; drr must keep 6)
    hard_test: bool = False  # score the hard ("OB") test set: large pose changes, partial view, occluders
    n_train: int = 256  # procedural: training images (drr: fixed by the data set)
    n_val: int = 32  # procedural: validation/test images
    batch_size: int = 8  # global batch (images)


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseModelConfig):
    variant: str = "sam"  # sam (action map from a DI2IN) | sac (patch classifier walked greedily)
    channels: tuple[int, ...] = (16, 32, 64, 64)  # features per level (SAM: DI2IN levels; SAC: stride-2 conv stages)
    # SAM needs a receptive field of about the image: on 32² procedural images 2 levels plateaued at 70 %
    # correct actions, 4 levels reached 93 % in 150 steps (measured once here)
    norm: str = "batch"  # batch | group | instance | layer | none
    patch: int = 32  # SAC: patch side in pixels, centred at the agent (zero outside the image)
    hidden: int = 64  # SAC: width of the dense layer before the K x 4 logits


@dataclasses.dataclass(frozen=True)
class LossConfig:
    side_weight: float = 0.5  # SAM: weight of each deep-supervision CE term
    diagonal_band: float = 0.0  # SAM: pixels within this many px of a sector boundary get diagonal_weight
    diagonal_weight: float = 0.3  # SAM: CE weight inside the band (ambiguous labels)
    samples: int = 32  # SAC: agent positions drawn per image and step
    near_fraction: float = 0.5  # SAC: share of positions drawn around a landmark (the rest uniform)
    near_sigma: float = 6.0  # SAC: spread (px) of the positions drawn around a landmark


@dataclasses.dataclass(frozen=True)
class WalkConfig:
    starts: int = 2  # starts per axis: a starts x starts grid (1: the image centre); estimates are averaged
    max_steps: int = 0  # walk length limit (0: 3 x (H + W))
    eval_grid: int = 8  # SAC: positions per axis where the classifier's action accuracy is scored


@dataclasses.dataclass(frozen=True)
class SACConfig(BaseConfig):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    walk: WalkConfig = WalkConfig()
    optim: OptimConfig = OptimConfig(lr=2e-3, schedule="cosine", warmup_steps=20)  # paper: Adam 1e-4 (longer runs)
    train: TrainConfig = TrainConfig(steps=300, log_every=20, checkpoint_every=100)
    infer: LandmarkInferConfig = LandmarkInferConfig()  # `kfjax infer sac`: intensity scaling of the input


class PatchClassifier(nn.Module):
    """Patch `(N, P, P, C)` -> logits `(N, K * 4)`: stride-2 ConvNormAct stages, flatten, two dense layers."""

    outputs: int
    channels: tuple[int, ...] = (16, 32, 64)
    hidden: int = 64
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = ConvNormAct(self.channels[0], norm=self.norm)(x, train)
        for features in self.channels[1:]:
            x = ConvNormAct(features, strides=2, norm=self.norm)(x, train)
            x = ConvNormAct(features, norm=self.norm)(x, train)
        x = x.reshape(x.shape[0], -1)  # flatten, not pool: where the landmark lies in the patch is the answer
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.outputs)(x)


def cut_patches(images: jax.Array, owner: jax.Array, positions: jax.Array, size: int) -> jax.Array:
    """Patches `(N, size, size, C)` of `images (B, H, W, C)` centred at `positions (N, 2)` int (row, col) of
    image `owner (N,)`; pixel (size // 2, size // 2) of a patch is the position, zeros outside the image."""
    before = size // 2
    padded = jnp.pad(images, ((0, 0), (before, size - before), (before, size - before), (0, 0)))

    def one(b, p):
        return jax.lax.dynamic_slice(padded[b], (p[0], p[1], jnp.zeros_like(p[0])), (size, size, images.shape[-1]))

    return jax.vmap(one)(owner, positions.astype(jnp.int32))


@register("sac")
class SACMethod(SupervisedMethod):
    Config = SACConfig
    description = "landmarks by supervised action map (SAM, a DI2IN) or patch classifier (SAC) and a greedy walk"
    paper = "Xu et al., MICCAI 2017"
    inference = Inference(inputs=("volume",), output="landmarks",
                          help="landmarks of a 2-D image as JSON (pixels and world mm) + overlay PNG")

    def __init__(self, config: SACConfig):
        super().__init__(config)
        d, m, w, lo = config.data, config.model, config.walk, config.loss
        if m.variant not in VARIANTS:
            raise ConfigError(f"model.variant '{m.variant}' is not one of {', '.join(VARIANTS)}")
        if d.source not in SOURCES:
            raise ConfigError(f"data.source '{d.source}' is not one of {', '.join(SOURCES)}")
        multiple = 2 ** (len(m.channels) - 1)
        if m.variant == "sam" and d.size % multiple:
            raise ConfigError(f"data.size={d.size} must be divisible by {multiple} for model.channels={m.channels}")
        if d.source == "drr" and d.landmarks not in (0, len(LANDMARK_NAMES)):
            raise ConfigError(f"the DRR set has {len(LANDMARK_NAMES)} landmarks; set data.landmarks=0 (all of them)")
        if d.source == "procedural" and d.landmarks > len(PROCEDURAL_NAMES):
            raise ConfigError(f"procedural images hold at most {len(PROCEDURAL_NAMES)} landmarks, not {d.landmarks}")
        if d.landmarks < 0 or w.starts < 1 or w.max_steps < 0 or w.eval_grid < 1 or m.patch < 4 or lo.samples < 1:
            raise ConfigError("walk.starts, walk.eval_grid and loss.samples must be >= 1, model.patch >= 4, "
                              "data.landmarks and walk.max_steps >= 0 (0: automatic)")
        if not 0.0 <= lo.near_fraction <= 1.0 or lo.near_sigma <= 0 or lo.diagonal_band < 0:
            raise ConfigError("loss.near_fraction must be in [0, 1], loss.near_sigma > 0, loss.diagonal_band >= 0")
        self._datasets: dict[str, ArrayDataset] = {}

    @property
    def sam(self) -> bool:
        return self.config.model.variant == "sam"

    @property
    def k(self) -> int:
        """Landmarks per image."""
        d = self.config.data
        return d.landmarks or (len(LANDMARK_NAMES) if d.source == "drr" else PROCEDURAL_K)

    @property
    def landmark_names(self) -> tuple[str, ...]:
        return LANDMARK_NAMES if self.config.data.source == "drr" else PROCEDURAL_NAMES[: self.k]

    # ---------------------------------------------------------------- network and data
    def network(self) -> nn.Module:
        m, k = self.config.model, self.k
        if self.sam:
            return DI2IN(out_channels=N_ACTIONS * k, channels=tuple(m.channels), norm=m.norm,
                         remat=m.remat == "blocks")
        return PatchClassifier(N_ACTIONS * k, tuple(m.channels), m.hidden, m.norm)

    def network_inputs(self, batch) -> tuple:
        return (batch["image"],) if self.sam else (batch["patches"],)

    def dataset(self, split: str) -> ArrayDataset:
        """The split's images; the same for every `seed` (so seeds and methods see the same test images)."""
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if split not in self._datasets:
            d = self.config.data
            if d.source == "drr":
                ds = drr_landmarks(split, size=d.size, hard=d.hard_test and split == "test", seed=0)
            else:
                count = d.n_train if split == "train" else d.n_val
                ds = procedural_landmarks(count, size=d.size, k=self.k, seed=SPLITS.index(split))
            self._datasets[split] = ArrayDataset(**{name: ds.arrays[name] for name in ARRAYS})
        return self._datasets[split]

    def batch_spec(self, batch_size: int):
        s, k = self.config.data.size, self.k
        f32 = jnp.float32
        return {"image": jax.ShapeDtypeStruct((batch_size, s, s, 1), f32),
                "landmarks": jax.ShapeDtypeStruct((batch_size, k, 2), f32),
                "visible": jax.ShapeDtypeStruct((batch_size, k), f32),
                "spacing": jax.ShapeDtypeStruct((batch_size, 2), f32)}

    # ---------------------------------------------------------------- training
    def init_variables(self, key: jax.Array, batch) -> Variables:
        if not self.sam:
            p = self.config.model.patch
            batch = {"patches": jnp.zeros((batch["image"].shape[0], p, p, 1), jnp.float32)}
        return super().init_variables(key, batch)

    def action_targets(self, batch) -> tuple[jax.Array, jax.Array]:
        """SAM labels `(B, H, W, K)` int32 and CE weights `(B, H, W, K)` (visibility x diagonal band)."""
        lm = batch["landmarks"]
        b, k, _ = lm.shape
        shape = batch["image"].shape[1:3]
        labels = jnp.moveaxis(optimal_action_map(lm.reshape(b * k, 2), shape).reshape(b, k, *shape), 1, -1)
        weight = jnp.broadcast_to(batch["visible"][:, None, None, :], labels.shape)
        lo = self.config.loss
        if lo.diagonal_band > 0:
            near = jnp.moveaxis(boundary_distance(lm.reshape(b * k, 2), shape).reshape(b, k, *shape), 1, -1)
            weight = weight * jnp.where(near < lo.diagonal_band, lo.diagonal_weight, 1.0)
        return labels, weight

    def sample_patches(self, batch, key: jax.Array) -> dict[str, jax.Array]:
        """SAC training samples: `patches (B*n, P, P, 1)`, `labels (B*n, K)` int32, `weight (B*n, K)` and the
        `positions (B*n, 2)` int32 they were cut at (row-major: image b's samples are rows b*n .. b*n + n - 1)."""
        lo, s = self.config.loss, self.config.data.size
        lm, visible = batch["landmarks"], batch["visible"]
        b, k, _ = lm.shape
        n = lo.samples
        k_uniform, k_which, k_offset, k_near = jax.random.split(key, 4)
        uniform = jax.random.randint(k_uniform, (b, n, 2), 0, s)
        which = jax.random.randint(k_which, (b, n), 0, k)
        centre = jnp.take_along_axis(lm, which[..., None], axis=1)  # (B, n, 2)
        around = jnp.round(centre + lo.near_sigma * jax.random.normal(k_offset, (b, n, 2))).astype(jnp.int32)
        near = jax.random.bernoulli(k_near, lo.near_fraction, (b, n))
        positions = jnp.clip(jnp.where(near[..., None], around, uniform), 0, s - 1).reshape(b * n, 2)
        owner = jnp.repeat(jnp.arange(b), n)
        labels = optimal_actions(lm[owner], jnp.broadcast_to(positions[:, None], (b * n, k, 2)))
        patches = cut_patches(batch["image"], owner, positions, self.config.model.patch)
        return {"patches": patches, "labels": labels, "weight": visible[owner], "positions": positions}

    def train_step(self, state: TrainState, batch, key: jax.Array):
        if not self.sam:
            batch = {**batch, **self.sample_patches(batch, key)}
        return super().train_step(state, batch, key)

    def _split_logits(self, logits: jax.Array) -> jax.Array:
        return logits.reshape(*logits.shape[:-1], self.k, N_ACTIONS)

    def _weighted_ce(self, logits, labels, weight) -> jax.Array:
        ce = losses.softmax_cross_entropy(self._split_logits(logits), labels, reduction="none")
        return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)

    def loss(self, outputs, batch):
        if not self.sam:
            ce = self._weighted_ce(outputs, batch["labels"], batch["weight"])
            return ce, {"ce": ce}
        final, sides = outputs
        labels, weight = self.action_targets(batch)
        fused = self._weighted_ce(final, labels, weight)
        side = sum(self._weighted_ce(x, labels, weight) for x in sides)
        return fused + self.config.loss.side_weight * side, {"ce_fused": fused, "ce_sides": side}

    # ---------------------------------------------------------------- inference
    @property
    def max_steps(self) -> int:
        return self.config.walk.max_steps or 3 * 2 * self.config.data.size

    def _starts(self, batch_size: int) -> jax.Array:
        grid = start_grid(self.config.data.size, self.config.walk.starts)
        return jnp.broadcast_to(jnp.asarray(grid), (batch_size, *grid.shape))

    def action_logits(self, state: TrainState, batch) -> jax.Array:
        """SAM: the predicted action map logits `(B, H, W, K, 4)`."""
        final, _ = self.apply(state.variables("model"), batch)
        return self._split_logits(final)

    def _policy(self, state: TrainState, image: jax.Array, owner: jax.Array, landmark: jax.Array):
        """SAC policy of walkers on `image (B, H, W, 1)`: positions `(N, 2)` -> argmax action of head `landmark`."""
        variables = state.variables("model")
        p = self.config.model.patch

        def policy(positions):
            logits = self._split_logits(self.apply(variables, {"patches": cut_patches(image, owner, positions, p)}))
            return jnp.argmax(logits[jnp.arange(len(owner)), landmark], axis=-1)

        return policy

    def predict(self, state: TrainState, batch):
        image = batch["image"]
        b, s, k = image.shape[0], self.config.data.size, self.k
        starts = self._starts(b)  # (B, n, 2)
        n = starts.shape[1]
        if self.sam:
            amap = jnp.argmax(self.action_logits(state, batch), axis=-1)  # (B, H, W, K)
            per_landmark = jnp.moveaxis(amap, -1, 1).reshape(b * k, s, s)
            est = walk_on_map(per_landmark, jnp.repeat(starts, k, axis=0), self.max_steps)
            return {"landmarks": est.reshape(b, k, 2), "action_map": amap}
        owner = jnp.repeat(jnp.arange(b), k * n)
        landmark = jnp.tile(jnp.repeat(jnp.arange(k), n), b)
        walkers = jnp.repeat(starts, k, axis=0).reshape(b * k * n, 2)
        est = greedy_walk(self._policy(state, image, owner, landmark), walkers, (s, s), self.max_steps)
        return {"landmarks": est.reshape(b, k, n, 2).mean(axis=2)}

    def infer(self, state: TrainState, inputs, progress: bool = True) -> LandmarkResult:
        """Landmarks of a user's 2-D image (`kfjax infer sac`), via `kfjax.methods.common.landmarks`."""
        return infer_landmarks(inputs["volume"], lambda x: self.predict(state, {"image": x})["landmarks"],
                               self.config.data.size, self.landmark_names, self.config.infer)

    def action_accuracy(self, state: TrainState, batch, outputs) -> jax.Array:
        """Fraction of correct actions per image `(B,)` over visible landmarks (NaN if none is visible)."""
        lm, visible = batch["landmarks"], batch["visible"]
        b, k, _ = lm.shape
        if self.sam:
            labels, _ = self.action_targets(batch)
            correct = (outputs["action_map"] == labels).astype(jnp.float32).mean(axis=(1, 2))  # (B, K)
        else:
            grid = start_grid(self.config.data.size, self.config.walk.eval_grid)
            g = len(grid)
            owner = jnp.repeat(jnp.arange(b), g)
            positions = jnp.tile(jnp.asarray(grid), (b, 1))
            patches = cut_patches(batch["image"], owner, positions, self.config.model.patch)
            logits = self._split_logits(self.apply(state.variables("model"), {"patches": patches}))
            labels = optimal_actions(lm[owner], jnp.broadcast_to(positions[:, None], (b * g, k, 2)))
            correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32).reshape(b, g, k).mean(axis=1)
        return jnp.sum(correct * visible, -1) / jnp.where(jnp.sum(visible, -1) > 0, jnp.sum(visible, -1), jnp.nan)

    def eval_step(self, state: TrainState, batch):
        outputs = self.predict(state, batch)
        return {**landmark_scores(outputs["landmarks"], batch),
                "action_acc": self.action_accuracy(state, batch, outputs)}


def landmark_scores(pred: jax.Array, batch) -> dict[str, jax.Array]:
    """Per image: `error_mm` (mean over visible landmarks) and `error_mm_lmk{k}` (NaN where invisible)."""
    err = metrics.landmark_errors(pred, batch["landmarks"], batch["spacing"])  # (B, K) mm
    visible = batch["visible"] > 0
    masked = jnp.where(visible, err, jnp.nan)
    count = jnp.sum(visible, axis=-1)
    scores = {"error_mm": jnp.where(count > 0, jnp.sum(jnp.where(visible, err, 0.0), -1) / jnp.maximum(count, 1),
                                    jnp.nan)}
    for i in range(err.shape[1]):
        scores[f"error_mm_lmk{i + 1}"] = masked[:, i]
    return scores
