"""Landmark detection by heatmap regression on a DI2IN (the "I2I" baseline of the SAC and MTL tables).

The network (`kfjax.nn.DI2IN`, deep supervision) regresses one Gaussian heatmap per landmark (peak 1,
`loss.sigma` px; `kfjax.nn.heatmaps.gaussian_heatmaps`). Loss: `loss.heatmap_weight` x (MSE of the fused
output + `loss.side_weight` x MSE of every side output) + `loss.coord_weight` x L1 (px) between the
`soft_argmax(fused / loss.temperature)` coordinates and the visible landmarks (lambda_c = 1 by default: with
0.01 the sparse heatmap MSE dominated and 150 steps on procedural 32² images reached ~4 px mean error
against ~0.4 px with 1; measured on this CPU, seed 0). Prediction: the hard argmax
of each fused heatmap refined by the centroid of the positive heatmap within `loss.sigma` x 3 px of it (a
local soft-argmax). Metrics per image: `error_mm` (mean over the visible landmarks) and `error_mm_lmk{k}`
(NaN where landmark k is not visible, so the engine leaves it out).

Data: `data.source=drr` (AP DRRs of the real chest CT at random poses with projected landmarks,
`kfjax.data.landmarks.drr_landmarks`; `data.hard_test=true` scores the hard "OB"-like test set) or
`procedural` (a bright shape per landmark over smooth noise, no data needed).

    kfjax train landmark_i2i                                          # 64² DRRs, 600 steps on a CPU
    kfjax train landmark_i2i --set data.source=procedural data.size=32
    kfjax infer landmark_i2i --workdir RUN --input xray.png --out landmarks.json
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kfjax import losses, metrics
from kfjax.config import BaseConfig, BaseDataConfig, BaseModelConfig, OptimConfig, TrainConfig
from kfjax.data.landmarks import LANDMARK_NAMES, PROCEDURAL_NAMES, drr_landmarks, procedural_landmarks
from kfjax.data.pipeline import ArrayDataset
from kfjax.errors import ConfigError
from kfjax.methods.common.landmarks import LandmarkInferConfig, LandmarkResult, infer_landmarks
from kfjax.methods.common.supervised import SupervisedMethod
from kfjax.methods.registry import register
from kfjax.nn.di2in import DI2IN
from kfjax.nn.heatmaps import gaussian_heatmaps, hard_argmax, soft_argmax
from kfjax.train.method import Inference
from kfjax.train.state import TrainState

SPLITS = ("train", "val", "test")
SOURCES = ("drr", "procedural")
WINDOW_SIGMAS = 3.0  # the local soft-argmax averages the heatmap within this many sigma of the argmax


@dataclasses.dataclass(frozen=True)
class DataConfig(BaseDataConfig):
    source: str = "drr"  # drr (real chest CT DRRs) | procedural (shapes over noise, no data needed)
    size: int = 64  # image side in pixels (divisible by 2**(len(model.channels) - 1))
    hard_test: bool = False  # drr: the test split is the hard set (large poses, collimation, metal, noise)
    n_landmarks: int = 3  # procedural: landmarks per image (1-6); drr always has 6
    n_train: int = 400  # procedural: training images (drr: 400 rendered poses)
    n_val: int = 100  # procedural: validation and test images each (drr: 100)
    batch_size: int = 8  # global batch size (split over all devices)


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseModelConfig):
    channels: tuple[int, ...] = (16, 32, 64)  # DI2IN features per level, finest first
    norm: str = "batch"  # batch | group | instance | layer | none
    upsample: str = "nearest"  # nearest | linear | pixelshuffle


@dataclasses.dataclass(frozen=True)
class LossConfig:
    sigma: float = 2.0  # Gaussian target standard deviation, pixels
    heatmap_weight: float = 100.0  # weight of the heatmap MSE (a mean over all pixels: small per pixel)
    side_weight: float = 0.5  # weight of each deep-supervision side output's MSE, relative to the fused one
    coord_weight: float = 1.0  # lambda_c: weight of the L1 coordinate loss (pixels) of visible landmarks
    temperature: float = 0.05  # soft-argmax temperature of the coordinate loss (heatmap units; peak 1)


@dataclasses.dataclass(frozen=True)
class LandmarkI2IConfig(BaseConfig):
    seed: int = 0  # seeds initialisation, data order and per-step keys (the data are the same for every seed)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig(lr=2e-3, schedule="cosine", warmup_steps=20)
    train: TrainConfig = TrainConfig(steps=600, log_every=20, checkpoint_every=200)
    infer: LandmarkInferConfig = LandmarkInferConfig()  # `kfjax infer`: intensity percentiles, inversion


def landmark_scores(pred, target, visible, spacing):
    """Per image `error_mm` (mean over visible landmarks, NaN if none) and `error_mm_lmk{k}` (NaN where
    invisible). pred, target: (B, K, 2) px; visible (B, K); spacing (B, 2) mm per px."""
    err = metrics.landmark_errors(pred, target, spacing)
    seen = visible > 0
    count = jnp.sum(seen, -1)
    mean = jnp.sum(jnp.where(seen, err, 0.0), -1) / jnp.maximum(count, 1)
    scores = {"error_mm": jnp.where(count > 0, mean, jnp.nan)}
    for k in range(err.shape[-1]):
        scores[f"error_mm_lmk{k + 1}"] = jnp.where(seen[:, k], err[:, k], jnp.nan)
    return scores


def refine_argmax(heatmaps, radius: float):
    """Hard argmax of each channel refined by the centroid of the positive heatmap within ``radius`` px
    (Chebyshev) of it. heatmaps (B, H, W, K) -> (B, K, 2) (row, col)."""
    peak = hard_argmax(heatmaps)  # (B, K, 2)
    h, w = heatmaps.shape[1:3]
    rows = jnp.arange(h, dtype=heatmaps.dtype)[None, :, None, None]
    cols = jnp.arange(w, dtype=heatmaps.dtype)[None, None, :, None]
    near = (jnp.abs(rows - peak[:, None, None, :, 0]) <= radius) & (jnp.abs(cols - peak[:, None, None, :, 1]) <= radius)
    weight = jnp.where(near, jnp.maximum(heatmaps, 0.0), 0.0)
    total = jnp.sum(weight, (1, 2))
    r = jnp.sum(weight * rows, (1, 2)) / jnp.maximum(total, 1e-12)
    c = jnp.sum(weight * cols, (1, 2)) / jnp.maximum(total, 1e-12)
    refined = jnp.stack([r, c], -1)
    return jnp.where((total > 0)[..., None], refined, peak)


@register("landmark_i2i")
class LandmarkI2IMethod(SupervisedMethod):
    Config = LandmarkI2IConfig
    description = "landmark heatmap regression on a DI2IN (Gaussian targets, soft-argmax coordinate loss)"
    paper = "I2I baseline of Xu et al., MICCAI 2017 (SAC) and Xu et al., MICCAI 2018 (MTL)"
    inference = Inference(inputs=("volume",), output="landmarks",
                          help="landmarks of a 2-D image (PNG, DICOM slice, 1-slice NIfTI) as JSON + overlay PNG")

    def __init__(self, config: LandmarkI2IConfig):
        super().__init__(config)
        d, m, lo = config.data, config.model, config.loss
        if d.source not in SOURCES:
            raise ConfigError(f"data.source '{d.source}' is not one of {', '.join(SOURCES)}")
        multiple = 2 ** (len(m.channels) - 1)
        if d.size < 16 or d.size % multiple:
            raise ConfigError(f"data.size {d.size} must be >= 16 and divisible by {multiple} "
                              f"(2**(levels-1) for model.channels={list(m.channels)})")
        if d.source == "drr" and d.size > 256:
            raise ConfigError(f"data.size {d.size}: DRRs are rendered up to 256²")
        if d.source == "procedural" and not 1 <= d.n_landmarks <= len(PROCEDURAL_NAMES):
            raise ConfigError(f"data.n_landmarks must be 1-{len(PROCEDURAL_NAMES)}, got {d.n_landmarks}")
        if d.hard_test and d.source != "drr":
            raise ConfigError("data.hard_test needs data.source=drr (the hard set is of DRRs)")
        if lo.sigma <= 0 or lo.temperature <= 0:
            raise ConfigError("loss.sigma and loss.temperature must be positive")
        if min(lo.heatmap_weight, lo.side_weight, lo.coord_weight) < 0:
            raise ConfigError("loss weights must be >= 0")
        self._datasets: dict[str, ArrayDataset] = {}

    @property
    def landmark_names(self) -> tuple[str, ...]:
        d = self.config.data
        return LANDMARK_NAMES if d.source == "drr" else PROCEDURAL_NAMES[: d.n_landmarks]

    def network(self) -> DI2IN:
        m = self.config.model
        return DI2IN(out_channels=len(self.landmark_names), channels=tuple(m.channels), norm=m.norm,
                     upsample=m.upsample, remat=m.remat == "blocks")

    def network_inputs(self, batch) -> tuple:
        return (batch["image"],)

    def dataset(self, split: str) -> ArrayDataset:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if split not in self._datasets:
            d = self.config.data
            if d.source == "drr":
                full = drr_landmarks(split, size=d.size, hard=d.hard_test and split == "test")
            else:
                count = d.n_train if split == "train" else d.n_val
                full = procedural_landmarks(count, size=d.size, k=d.n_landmarks, seed=SPLITS.index(split))
            keys = ("image", "landmarks", "visible", "spacing")
            self._datasets[split] = ArrayDataset(**{k: full.arrays[k] for k in keys})
        return self._datasets[split]

    def batch_spec(self, batch_size: int):
        s, k = self.config.data.size, len(self.landmark_names)
        f32 = jnp.float32
        return {"image": jax.ShapeDtypeStruct((batch_size, s, s, 1), f32),
                "landmarks": jax.ShapeDtypeStruct((batch_size, k, 2), f32),
                "visible": jax.ShapeDtypeStruct((batch_size, k), f32),
                "spacing": jax.ShapeDtypeStruct((batch_size, 2), f32)}

    def targets(self, batch):
        """Gaussian heatmaps (B, H, W, K) of the batch's landmarks (peak 1, `loss.sigma` px)."""
        s = self.config.data.size
        return gaussian_heatmaps(batch["landmarks"], (s, s), self.config.loss.sigma)

    def loss(self, outputs, batch):
        dtype = jnp.promote_types(outputs[0].dtype, jnp.float32)  # losses in float32 (float64 when x64)
        final, sides = outputs[0].astype(dtype), [x.astype(dtype) for x in outputs[1]]
        lo = self.config.loss
        target = self.targets(batch).astype(dtype)
        fused = losses.heatmap_loss(final, target)
        side = sum(losses.heatmap_loss(x, target) for x in sides)
        coords = soft_argmax(final, lo.temperature)
        mask = jnp.broadcast_to(batch["visible"][..., None], coords.shape)
        coord = losses.l1_loss(coords, batch["landmarks"], mask=mask)
        loss = lo.heatmap_weight * (fused + lo.side_weight * side) + lo.coord_weight * coord
        return loss, {"mse_fused": fused, "mse_sides": side, "coord_l1_px": coord}

    def predict(self, state: TrainState, batch):
        final, _ = self.apply(state.variables("model"), batch)
        final = final.astype(jnp.promote_types(final.dtype, jnp.float32))
        return {"landmarks": refine_argmax(final, WINDOW_SIGMAS * self.config.loss.sigma), "heatmaps": final}

    def eval_step(self, state: TrainState, batch):
        pred = self.predict(state, batch)["landmarks"]
        return landmark_scores(pred, batch["landmarks"], batch["visible"], batch["spacing"])

    def infer(self, state: TrainState, inputs, progress: bool = True) -> LandmarkResult:
        """Landmarks of a user's 2-D image (`kfjax.methods.common.landmarks.infer_landmarks`)."""
        predict = jax.jit(lambda x: self.predict(state, {"image": x})["landmarks"])
        return infer_landmarks(inputs["volume"], predict, self.config.data.size, self.landmark_names,
                               self.config.infer)
