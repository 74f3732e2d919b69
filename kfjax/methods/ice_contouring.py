"""ICE auto-contouring with 2-D and 3-D knowledge (Liao et al., MICCAI 2018) on procedural ICE sweeps.

Data: `kfjax.data.ice` cases (a left atrium with appendage and four pulmonary veins, one catheter sweep of
`data.n_frames` fan frames with exact sensor poses); train, val and test take disjoint case indices. Three
pipelines (`model.pipeline`), all scored on the same frames:

- `2d`: a 2-D U-Net on each frame `(H, W, 1)` -> 7-class logits (`STRUCTURES`); cross-entropy + soft Dice over
  the pixels inside the fan.
- `3d`: the sweep's frames placed by their poses into a sparse volume (`place_frames`: intensity and coverage,
  `(D, H, W, 2)`) -> a 3-D U-Net predicting the full label volume (trained against the procedural anatomy: the
  "CT-like" 3-D knowledge); scored on each frame's plane through the nearest-voxel reslice of `reslice`.
- `2d3d`: the 2-D U-Net sees the frame plus the 3-D prior, the class probabilities of a trained `3d` run
  (`model.prior_workdir`) resliced onto the frame by the same operator: `(H, W, 1 + 7)`. The prior is computed
  once per case on the host when a split is built, and kept with it.

Rows: a frame for 2-D training, a sweep for 3-D training and for every evaluation. Metrics per sweep: Dice of
each structure (`dice_la_body` ... `dice_rspv`) over the frames where the prediction or the truth holds it,
and `dice`, the mean over frames of each frame's mean over those structures (NaN: left out).

Deviations from the paper: no CT-intensity completion and no adversarial term (the 3-D network predicts labels
only); it learns from the sparse ICE volumes of the training sweeps themselves, with the procedural label volume
as its "CT" knowledge, so a prior run with the same `data.seed` has seen the 2d3d training sweeps (not the val
or test ones); the prior is resliced nearest-voxel (the operator that made the frame labels), not trilinearly.

    kfjax train ice_contouring --workdir runs/ice2d
    kfjax train ice_contouring --workdir runs/ice3d --set model.pipeline=3d
    kfjax train ice_contouring --workdir runs/ice2d3d --set model.pipeline=2d3d model.prior_workdir=runs/ice3d
    kfjax infer ice_contouring --workdir runs/ice2d --input frame.png --out contours/   # a user's ICE frame (2d)
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from kfjax import losses
from kfjax.config import BaseConfig, BaseDataConfig, BaseModelConfig, OptimConfig, TrainConfig
from kfjax.data.ice import MIN_FIELD_MM, STRUCTURES, fan_mask, ice_case, place_frames, reslice
from kfjax.data.pipeline import ArrayDataset
from kfjax.errors import ConfigError, InputError, KfjaxError
from kfjax.methods.common.supervised import SupervisedMethod
from kfjax.methods.registry import from_workdir, register
from kfjax.nn.unet import UNet
from kfjax.train.loop import restore_for_eval
from kfjax.train.method import Inference
from kfjax.train.state import TrainState

PIPELINES = ("2d", "3d", "2d3d")
SPLIT_OFFSET = {"train": 0, "val": 100_000, "test": 200_000}  # first case index of each split (disjoint)
N_CLASSES = len(STRUCTURES)
OUTPUT_FILES = ("labels.png", "labels.nii.gz", "contours.png")


@dataclasses.dataclass(frozen=True)
class DataConfig(BaseDataConfig):
    seed: int = 0  # seeds the procedural cases (anatomy, sweep, speckle), apart from the run's seed
    n_train: int = 32  # training sweeps (case indices from 0)
    n_val: int = 8  # validation sweeps (case indices from 100000)
    n_test: int = 8  # test sweeps (case indices from 200000)
    shape: tuple[int, ...] = (32, 32, 32)  # volume grid (D, H, W) voxels; shape x spacing >= 112 mm per axis
    spacing: float = 4.0  # mm per voxel, isotropic (paper: about 2 mm on 64^3)
    n_frames: int = 24  # ICE frames per sweep
    sweep_deg: float = 90.0  # catheter rotation of one sweep (degrees)
    frame_shape: tuple[int, ...] = (64, 64)  # frame (H, W) pixels; 64 x 64 at depth 90 mm: ~2 mm pixels
    depth_mm: float = 90.0  # imaging depth (mm)
    batch_size: int = 8  # global batch: frames when training 2d/2d3d, sweeps when training 3d and in evaluation


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseModelConfig):
    pipeline: str = "2d"  # 2d (frames) | 3d (sparse volume -> label volume) | 2d3d (frames + resliced 3-D prior)
    channels: tuple[int, ...] = (16, 32, 64)  # U-Net features per level, finest first (2-D and 3-D alike)
    norm: str = "group"  # batch | group | instance | layer | none
    upsample: str = "nearest"  # nearest | linear | pixelshuffle (resize + conv)
    prior_workdir: str = ""  # 2d3d: workdir of a trained ice_contouring 3d run (same data.shape and spacing)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    dice_weight: float = 1.0  # weight of the batch soft Dice (all 7 classes) added to the cross-entropy


@dataclasses.dataclass(frozen=True)
class InferConfig:
    low: float = 0.5  # input intensity percentile mapped to 0
    high: float = 99.0  # input intensity percentile mapped to 1 (the simulated frames: 99th envelope percentile)


@dataclasses.dataclass(frozen=True)
class IceContouringConfig(BaseConfig):
    seed: int = 0  # seeds initialisation, data order and per-step keys
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=20)  # paper: Adam 2e-4
    train: TrainConfig = TrainConfig(steps=300, log_every=20, checkpoint_every=100)
    infer: InferConfig = InferConfig()  # `kfjax infer` (2d runs): the input's intensity percentiles


@dataclasses.dataclass(frozen=True)
class Contours:
    """What ``infer`` returns: the frame (H, W) as displayed, normalised to [0, 1], its labels (H, W) uint8
    (indices of ``STRUCTURES``) and the input's affine, for :meth:`write`."""

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray

    def write(self, folder: str | os.PathLike) -> list[Path]:
        """Write :data:`OUTPUT_FILES` into ``folder`` (created if missing), each under a temporary name then
        renamed: the labels as an 8-bit PNG (value = structure index) and as NIfTI with the input's affine and
        voxel layout, and a panel of the frame and its labels. Returns the paths written."""
        from PIL import Image

        from kfjax.io import Volume, save_nifti
        from kfjax.viz import image_panel

        folder = Path(folder)
        folder.mkdir(exist_ok=True)
        writers = {OUTPUT_FILES[0]: lambda tmp: Image.fromarray(self.labels).save(tmp, format="PNG"),
                   OUTPUT_FILES[1]: lambda tmp: save_nifti(Volume(self.labels.T.copy(), self.affine), tmp)}
        written = []
        for name, write in writers.items():
            path, tmp = folder / name, folder / f".tmp-{os.getpid()}-{name}"
            try:
                write(tmp)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(path)
        written.append(image_panel([[self.image, self.labels]], ["ICE frame", "labels: " + ", ".join(STRUCTURES[1:])],
                                   folder / OUTPUT_FILES[2], cmaps=["gray", "tab10"], vrange=[(0, 1), (0, 9)]))
        return written


def segmentation_loss(logits, label, mask, dice_weight: float):
    """Cross-entropy (mean over `mask`) + `dice_weight` x soft Dice summed over the whole batch (MONAI's
    `batch=True`, so a structure absent from one image still counts where others hold it).

    logits `(B, ..., 7)`, label `(B, ...)` int, mask `(B, ...)` in {0, 1}. Returns (loss, {"ce", "dice"}).
    """
    ce = losses.softmax_cross_entropy(logits, label, reduction="none")
    ce = jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    probability = jax.nn.softmax(logits, axis=-1) * mask[..., None]
    onehot = jax.nn.one_hot(label, logits.shape[-1], dtype=probability.dtype) * mask[..., None]
    dice = losses.soft_dice_loss(probability.reshape(1, -1, logits.shape[-1]), onehot.reshape(1, -1, logits.shape[-1]))
    return ce + dice_weight * dice, {"ce": ce, "soft_dice": dice}


def on_frames(volume_labels, frame_index):
    """Labels `(B, D, H, W)` read at the frames' nearest voxels `frame_index (B, K, H, W)` (flat, -1 outside the
    grid: background) -> `(B, K, H, W)`: `reslice(order=0, fill=0)` of each volume, under jit."""
    flat = volume_labels.reshape(volume_labels.shape[0], -1)
    index = frame_index.reshape(frame_index.shape[0], -1)
    picked = jnp.take_along_axis(flat, jnp.maximum(index, 0), axis=1)
    return jnp.where(index >= 0, picked, 0).reshape(frame_index.shape)


def frame_scores(pred, label, fan) -> dict[str, jax.Array]:
    """Dice per sweep from frame labels `pred, label (B, K, H, W)` int over the pixels of `fan (B, H, W)`.

    A structure absent from both prediction and truth of a frame is left out of that frame: `dice_<name>` is
    its mean over the frames that hold it, `dice` the mean over frames of each frame's mean over the scored
    structures; NaN where nothing is scored (the engine then leaves the sweep out of that mean).
    """
    classes = jnp.arange(1, N_CLASSES)
    inside = (fan > 0.5)[:, None, :, :, None]
    p = (pred[..., None] == classes) & inside
    t = (label[..., None] == classes) & inside
    inter = jnp.sum(p & t, axis=(2, 3)).astype(jnp.float32)
    total = (jnp.sum(p, axis=(2, 3)) + jnp.sum(t, axis=(2, 3))).astype(jnp.float32)
    scored = total > 0  # (B, K, 6)
    dice = jnp.where(scored, 2.0 * inter / jnp.maximum(total, 1.0), 0.0)

    def mean(values, weights, axis):
        count = jnp.sum(weights, axis=axis)
        return jnp.where(count > 0, jnp.sum(values * weights, axis=axis) / jnp.maximum(count, 1), jnp.nan)

    per_frame = mean(dice, scored, axis=-1)  # (B, K)
    framed = jnp.isfinite(per_frame)
    out = {"dice": mean(jnp.where(framed, per_frame, 0.0), framed, axis=1)}
    for c, name in enumerate(STRUCTURES[1:]):
        out[f"dice_{name}"] = mean(dice[..., c], scored[..., c], axis=1)
    return out


@register("ice_contouring")
class IceContouringMethod(SupervisedMethod):
    Config = IceContouringConfig
    description = "ICE contouring of the LA and pulmonary veins: 2-D, 3-D (sparse sweep volume) and 3-D prior + 2-D"
    paper = "Liao et al., MICCAI 2018"
    inference = Inference(inputs=("volume",), output="images",
                          help="structure labels of one 2-D ICE frame (2d runs), into a folder")

    def __init__(self, config: IceContouringConfig):
        super().__init__(config)
        d, m = config.data, config.model
        if m.pipeline not in PIPELINES:
            raise ConfigError(f"model.pipeline '{m.pipeline}' is not one of {', '.join(PIPELINES)}; choose one")
        if len(d.shape) != 3 or len(d.frame_shape) != 2:
            raise ConfigError(f"data.shape needs 3 sizes (D,H,W) and data.frame_shape 2 (H,W), got {d.shape} and "
                              f"{d.frame_shape}")
        if min(d.shape) * d.spacing < MIN_FIELD_MM:
            raise ConfigError(f"the volume field {min(d.shape) * d.spacing:g} mm (data.shape x data.spacing) is below "
                              f"{MIN_FIELD_MM:g} mm; raise data.shape or data.spacing")
        multiple = 2 ** (len(m.channels) - 1)
        if any(n % multiple for n in (*d.shape, *d.frame_shape)) or min(d.frame_shape) < 16:
            raise ConfigError(f"data.shape {d.shape} and data.frame_shape {d.frame_shape} (at least 16) must divide "
                              f"by 2**{len(m.channels) - 1} for {len(m.channels)} U-Net levels")
        self._prior = self._check_prior() if m.pipeline == "2d3d" else None
        self._prior_fn = None
        self._cases: dict[str, dict[str, np.ndarray]] = {}
        self._datasets: dict[str, ArrayDataset] = {}

    def _check_prior(self) -> "IceContouringMethod":
        """The `3d` method of `model.prior_workdir`, after checking it fits this run (its weights load later)."""
        workdir = self.config.model.prior_workdir
        if not workdir:
            raise ConfigError("model.pipeline=2d3d needs model.prior_workdir: the workdir of a trained "
                              "ice_contouring run with model.pipeline=3d (train one first)")
        if not (Path(workdir) / "config.json").is_file():
            raise ConfigError(f"model.prior_workdir '{workdir}' holds no config.json; point it at the workdir of "
                              "a trained `kfjax train ice_contouring --set model.pipeline=3d` run")
        try:
            prior = from_workdir(self.name, workdir)
        except KfjaxError as e:
            raise ConfigError(f"model.prior_workdir '{workdir}' is not an ice_contouring run: {e}") from None
        p, d = prior.config, self.config.data
        if p.model.pipeline != "3d":
            raise ConfigError(f"model.prior_workdir '{workdir}' is a '{p.model.pipeline}' run; the prior must come "
                              "from an ice_contouring run with model.pipeline=3d")
        if tuple(p.data.shape) != tuple(d.shape) or p.data.spacing != d.spacing:
            raise ConfigError(f"the prior run has volumes {p.data.shape} at {p.data.spacing} mm, this run "
                              f"{d.shape} at {d.spacing} mm; set data.shape and data.spacing like the prior's")
        return prior

    # ---------------------------------------------------------------- network
    @property
    def in_channels(self) -> int:
        """Input channels: 1 (frame), 2 (sparse volume + coverage) or 1 + 7 (frame + resliced 3-D prior)."""
        return {"2d": 1, "3d": 2, "2d3d": 1 + N_CLASSES}[self.config.model.pipeline]

    def network(self) -> UNet:
        m = self.config.model
        return UNet(out_channels=N_CLASSES, channels=tuple(m.channels), norm=m.norm, upsample=m.upsample,
                    remat=m.remat == "blocks")

    def network_inputs(self, batch) -> tuple:
        return (batch["volume"] if self.config.model.pipeline == "3d" else batch["image"],)

    def volume_probabilities(self, state: TrainState, volume):
        """3d: class probabilities `(B, D, H, W, 7)` of sparse volumes `(B, D, H, W, 2)`."""
        return jax.nn.softmax(self.apply(state.variables("model"), {"volume": volume}), axis=-1)

    # ---------------------------------------------------------------- data
    def _case_arrays(self, split: str) -> dict[str, np.ndarray]:
        """Stacked cases of a split: image, label `(N, K, H, W)`, fan `(N, H, W)`, volume `(N, D, H, W, 2)`,
        labels3d `(N, D, H, W)`, frame_index `(N, K, H, W)` (flat nearest voxel of each pixel, -1 outside)."""
        if split not in SPLIT_OFFSET:
            raise InputError(f"unknown split '{split}'; use one of {', '.join(SPLIT_OFFSET)}")
        if split not in self._cases:
            d = self.config.data
            count = {"train": d.n_train, "val": d.n_val, "test": d.n_test}[split]
            if count < 1:
                raise ConfigError(f"data.n_{split} is {count}; the {split} split needs at least one sweep")
            shape, spacing = tuple(d.shape), float(d.spacing)
            flat = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
            rows = []
            for i in range(count):
                case = ice_case(d.seed, SPLIT_OFFSET[split] + i, shape, spacing, d.n_frames, d.sweep_deg,
                                tuple(d.frame_shape), d.depth_mm)
                args = (case["poses"], tuple(d.frame_shape), case["pixel_mm"], spacing)
                volume, covered = place_frames(case["image"], case["poses"], shape, spacing, case["pixel_mm"],
                                               case["fan"])
                rows.append({"image": case["image"], "label": case["label"].astype(np.int32),
                             "fan": case["fan"].astype(np.float32),
                             "volume": np.stack([volume, covered.astype(np.float32)], axis=-1),
                             "labels3d": case["anatomy"]["labels"].astype(np.int32),
                             "frame_index": reslice(flat, *args, order=0, fill=-1)})
            self._cases[split] = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        return self._cases[split]

    def prior(self, volume: np.ndarray, frame_index: np.ndarray) -> np.ndarray:
        """2d3d: the 3-D prior on the frames, `(N, K, H, W, 7)` float32 from sparse volumes `(N, D, H, W, 2)`:
        the prior run's probabilities read at each pixel's nearest voxel (`frame_index`), 0 outside the grid."""
        if self._prior_fn is None:  # restored and compiled once, for every split
            state = restore_for_eval(self._prior, self.config.model.prior_workdir)
            self._prior_fn = functools.partial(jax.jit(self._prior.volume_probabilities), state)
        probabilities = self._prior_fn
        out = []
        for v, index in zip(volume, frame_index):  # one sweep per call: a single compiled shape
            p = np.asarray(probabilities(v[None]))[0].reshape(-1, N_CLASSES)
            out.append(np.where(index[..., None] >= 0, p[np.maximum(index, 0)], 0.0).astype(np.float32))
        return np.stack(out)

    def dataset(self, split: str) -> ArrayDataset:
        if split not in self._datasets:
            c, pipeline = self._case_arrays(split), self.config.model.pipeline
            frames = c["image"][..., None]
            if pipeline == "2d3d":
                frames = np.concatenate([frames, self.prior(c["volume"], c["frame_index"])], axis=-1)
            n, k = c["label"].shape[:2]
            if split == "train" and pipeline == "3d":
                data = ArrayDataset(volume=c["volume"], label=c["labels3d"])
            elif split == "train":
                fan = np.broadcast_to(c["fan"][:, None], c["label"].shape)
                data = ArrayDataset(image=frames.reshape(n * k, *frames.shape[2:]),
                                    label=c["label"].reshape(n * k, *c["label"].shape[2:]),
                                    fan=np.ascontiguousarray(fan.reshape(n * k, *fan.shape[2:])))
            elif pipeline == "3d":
                data = ArrayDataset(volume=c["volume"], label=c["labels3d"], frame_index=c["frame_index"],
                                    frame_label=c["label"], fan=c["fan"])
            else:
                data = ArrayDataset(frames=frames, frame_label=c["label"], fan=c["fan"])
            self._datasets[split] = data
        return self._datasets[split]

    def batch_spec(self, batch_size: int):
        d = self.config.data
        if self.config.model.pipeline == "3d":
            return {"volume": jax.ShapeDtypeStruct((batch_size, *d.shape, 2), jnp.float32),
                    "label": jax.ShapeDtypeStruct((batch_size, *d.shape), jnp.int32)}
        frame = (batch_size, *d.frame_shape)
        return {"image": jax.ShapeDtypeStruct((*frame, self.in_channels), jnp.float32),
                "label": jax.ShapeDtypeStruct(frame, jnp.int32), "fan": jax.ShapeDtypeStruct(frame, jnp.float32)}

    # ---------------------------------------------------------------- steps
    def loss(self, outputs, batch):
        mask = jnp.ones(batch["label"].shape, outputs.dtype) if "fan" not in batch else batch["fan"]
        return segmentation_loss(outputs, batch["label"], mask, self.config.loss.dice_weight)

    def volume_labels(self, state: TrainState, batch):
        """3d: predicted label volumes `(B, D, H, W)` int32 of a batch of sweeps."""
        return jnp.argmax(self.apply(state.variables("model"), batch), axis=-1).astype(jnp.int32)

    def predict(self, state: TrainState, batch):
        """Frame labels `(B, K, H, W)` int32 of a batch of sweeps (evaluation rows), for every pipeline;
        background (0) outside the fan `batch["fan"] (B, H, W)`, where nothing is imaged."""
        if self.config.model.pipeline == "3d":
            labels = on_frames(self.volume_labels(state, batch), batch["frame_index"])
        else:
            frames = batch["frames"]
            logits = self.apply(state.variables("model"), {"image": frames.reshape(-1, *frames.shape[2:])})
            labels = jnp.argmax(logits, axis=-1).astype(jnp.int32).reshape(frames.shape[:-1])
        return {"labels": jnp.where(batch["fan"][:, None] > 0.5, labels, 0)}

    def eval_step(self, state: TrainState, batch):
        return frame_scores(self.predict(state, batch)["labels"], batch["frame_label"], batch["fan"])

    def infer(self, state: TrainState, inputs, progress: bool = True) -> Contours:
        """Contour a user's ICE frame (PNG, one DICOM image, a NIfTI holding one slice) with a 2d run.

        The frame is scaled so the `infer.low`/`infer.high` percentiles map to 0 and 1, zero-padded to a square
        and resampled to `data.frame_shape`; the labels are predicted inside the training fan and resampled back
        (nearest) to the input's pixels. The frame should be a sector image with its apex at the top centre, as
        the training frames (`kfjax.data.ice.fan_mask`)."""
        from skimage.transform import resize

        from kfjax.methods.common.landmarks import GridMap, display_image, normalise

        if self.config.model.pipeline != "2d":
            raise ConfigError(f"kfjax infer ice_contouring contours single frames with a 2d run; this run is "
                              f"'{self.config.model.pipeline}', which needs a tracked sweep (frames with poses)")
        h, w = self.config.data.frame_shape
        if h != w:
            raise ConfigError(f"kfjax infer needs a run with square frames, this one has data.frame_shape {h}x{w}")
        volume = inputs["volume"]
        image = normalise(display_image(volume), (self.config.infer.low, self.config.infer.high))
        grid = GridMap(image.shape, h)
        fan = fan_mask((h, w), self.config.data.depth_mm)[0].astype(np.float32)
        predict = jax.jit(lambda x, f: self.predict(state, {"frames": x, "fan": f})["labels"])
        labels = np.asarray(predict(grid.to_training(image)[None, None, ..., None], fan[None]))[0, 0]
        square = resize(labels, (grid.side, grid.side), order=0, preserve_range=True, anti_aliasing=False)
        (top, left), (rows, cols) = grid.pad, grid.shape
        out = np.ascontiguousarray(square[top:top + rows, left:left + cols]).astype(np.uint8)
        return Contours(image, out, np.asarray(volume.affine, np.float64))
