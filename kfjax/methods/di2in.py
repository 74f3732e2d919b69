"""DI2IN organ segmentation (Yang et al., MICCAI 2017) on procedural organ phantoms.

The network is `kfjax.nn.DI2IN` (2-D or 3-D encoder-decoder, multi-level concatenation, deep
supervision); the loss is BCE on the fused output plus `side_weight` x BCE on every side output
(optionally + soft Dice). Metrics: Dice and average symmetric surface distance (pixels = mm here,
spacing 1) of the thresholded fused output. The adversarial shape prior (DI2IN-AN) comes later.

    kfjax train di2in                                   # 2-D, 64x64
    kfjax train di2in --set data.spatial_dims=3 data.size=32
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from kfjax import losses, metrics
from kfjax.config import BaseConfig, BaseDataConfig, BaseModelConfig, OptimConfig, TrainConfig
from kfjax.data.augment import make_transform
from kfjax.data.phantoms import organ_dataset
from kfjax.data.pipeline import ArrayDataset
from kfjax.errors import ConfigError, InputError
from kfjax.io import Volume
from kfjax.methods.common.supervised import SupervisedMethod
from kfjax.methods.registry import register
from kfjax.nn.di2in import DI2IN
from kfjax.nn.sliding_window import sliding_window
from kfjax.train.method import Inference
from kfjax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class DataConfig(BaseDataConfig):
    spatial_dims: int = 2  # 2 for images (B, H, W, 1), 3 for volumes (B, D, H, W, 1)
    size: int = 64  # phantom side length in pixels/voxels (divisible by 2**(levels-1))
    n_train: int = 512  # training phantoms (seeds disjoint from val/test)
    n_val: int = 64  # validation phantoms
    noise: float = 0.05  # Gaussian noise sigma on the [0, 1] intensity scale
    batch_size: int = 8  # global batch size (split over all devices)
    augment: bool = False  # random flips, small affine and intensity changes of training images (2-D only)


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseModelConfig):
    channels: tuple[int, ...] = (16, 32, 64, 128)  # features per level, finest first (paper: 32..512)
    norm: str = "batch"  # batch | group | instance | layer | none
    upsample: str = "nearest"  # nearest | linear | pixelshuffle (resize + conv; never ConvTranspose)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    side_weight: float = 1.0  # eta: weight of each deep-supervision BCE term
    dice_weight: float = 0.0  # weight of an extra soft Dice term on the fused output


@dataclasses.dataclass(frozen=True)
class InferConfig:
    threshold: float = 0.5  # probability at and above which a voxel is in the mask (`kfjax infer di2in`)
    overlap: float = 0.5  # 3-D: overlap of neighbouring windows of the training size, in [0, 1)
    blend: str = "gaussian"  # 3-D: gaussian | constant weighting of overlapping window outputs
    window_batch: int = 2  # 3-D: windows per network call


@dataclasses.dataclass(frozen=True)
class DI2INConfig(BaseConfig):
    seed: int = 0  # seeds initialisation, data order and per-step keys
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig(lr=2e-3, schedule="cosine", warmup_steps=20)
    train: TrainConfig = TrainConfig(steps=300, log_every=20, checkpoint_every=100)
    infer: InferConfig = InferConfig()


@register("di2in")
class DI2INMethod(SupervisedMethod):
    Config = DI2INConfig
    description = "deep image-to-image network with deep supervision: organ segmentation, 2-D/3-D"
    paper = "Yang et al., MICCAI 2017"
    host_metric_names = ("asd",)
    inference = Inference(inputs=("volume",), help="organ mask of a volume (trained on phantoms: a demonstration)")

    def __init__(self, config: DI2INConfig):
        super().__init__(config)
        if config.data.augment and config.data.spatial_dims != 2:
            raise ConfigError("data.augment works on 2-D images; set data.spatial_dims=2 or data.augment=false")
        self._datasets: dict[str, ArrayDataset] = {}

    def network(self) -> DI2IN:
        m = self.config.model
        return DI2IN(out_channels=1, channels=tuple(m.channels), norm=m.norm, upsample=m.upsample,
                     remat=m.remat == "blocks")

    def network_inputs(self, batch) -> tuple:
        return (batch["image"],)

    def dataset(self, split: str) -> ArrayDataset:
        if split not in self._datasets:
            d = self.config.data
            count = d.n_train if split == "train" else d.n_val
            image, label = organ_dataset(count, d.size, d.spatial_dims, self.config.seed, split, d.noise)
            self._datasets[split] = ArrayDataset(image=image, label=label)
        return self._datasets[split]

    def batch_spec(self, batch_size: int):
        d = self.config.data
        shape = (batch_size, *(d.size,) * d.spatial_dims, 1)
        return {"image": jax.ShapeDtypeStruct(shape, jnp.float32), "label": jax.ShapeDtypeStruct(shape, jnp.float32)}

    def transform(self):
        """Flips, a small affine and intensity changes per (seed, step) when `data.augment` is on."""
        if not self.config.data.augment:
            return None
        return make_transform(self.config.seed, ("image",), ("label",), stream=jax.process_index())

    def loss(self, outputs, batch):
        final, sides = outputs
        label = batch["label"]
        fused = losses.bce_with_logits(final, label)
        side = sum(losses.bce_with_logits(s, label) for s in sides)
        loss = fused + self.config.loss.side_weight * side
        if self.config.loss.dice_weight:
            loss += self.config.loss.dice_weight * losses.soft_dice_loss(final, label, sigmoid=True)
        return loss, {"bce_fused": fused, "bce_sides": side}

    def predict(self, state: TrainState, batch):
        final, _ = self.apply(state.variables("model"), batch)
        return {"probability": jax.nn.sigmoid(final)}

    def eval_step(self, state: TrainState, batch):
        probability = self.predict(state, batch)["probability"]
        mask = (probability > 0.5).astype(jnp.float32)
        return {"dice": metrics.dice(mask, batch["label"])[:, 0]}

    def infer(self, state: TrainState, inputs: dict[str, Volume], progress: bool = True) -> Volume:
        """Organ mask of a user's volume: 2-D models run slice by slice along the last array axis, 3-D models
        over sliding windows of the training size (`infer.overlap`, `infer.blend`, `infer.window_batch`).

        Intensities are min-max scaled to [0, 1] like the phantoms; the models are trained on phantoms,
        so this shows the inference path, not a clinical segmenter. Returns a uint8 mask Volume with the
        input's affine and header.
        """
        volume = inputs["volume"]
        dims = self.config.data.spatial_dims
        array = volume.array
        if array.ndim != 3:
            raise InputError(f"expected a 3-D volume, got shape {array.shape}; pass a single 3-D NIfTI or DICOM series")
        low, high = np.percentile(array, [0.5, 99.5])
        scaled = np.clip((array - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)
        apply = jax.jit(lambda st, x: self.predict(st, {"image": x})["probability"])
        if dims == 3:
            infer = self.config.infer
            probability = sliding_window(scaled[None, ..., None], (self.config.data.size,) * 3,
                                         lambda x: apply(state, x), overlap=infer.overlap, mode=infer.blend,
                                         batch_size=infer.window_batch, progress=progress)
        else:
            probability = self._slices(apply, state, np.moveaxis(scaled, -1, 0)[..., None], progress)
        mask = probability >= self.config.infer.threshold
        mask = np.moveaxis(mask[..., 0], 0, -1) if dims == 2 else mask[0, ..., 0]
        return Volume(mask.astype(np.uint8), volume.affine, volume.header)

    def _slices(self, apply, state: TrainState, inputs: np.ndarray, progress: bool) -> np.ndarray:
        """2-D model on every slice: (n, X, Y, 1) -> (n, X, Y, 1) probabilities, padded to the network's
        multiple and to whole batches (one compiled shape), then cropped back."""
        multiple = 2 ** (len(self.config.model.channels) - 1)
        count, spatial = len(inputs), inputs.shape[1:-1]
        inputs = np.pad(inputs, [(0, 0)] + [(0, (-s) % multiple) for s in spatial] + [(0, 0)], mode="edge")
        chunk = self.config.data.batch_size
        inputs = np.pad(inputs, [(0, (-count) % chunk)] + [(0, 0)] * (inputs.ndim - 1))
        outputs = [np.asarray(apply(state, inputs[i : i + chunk]))
                   for i in tqdm(range(0, len(inputs), chunk), desc="infer", disable=not progress)]
        return np.concatenate(outputs)[(slice(0, count), *(slice(0, s) for s in spatial))]

    def host_metrics(self, batch, outputs):
        pred = outputs["probability"][..., 0] > 0.5
        label = batch["label"][..., 0] > 0.5
        asd = [metrics.average_surface_distance(p, t) for p, t in zip(pred, label)]
        return {"asd": np.asarray(asd)}
