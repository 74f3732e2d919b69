"""X-ray image decomposition: bone and soft-tissue line integrals of a chest radiograph, learned from DRRs.

The supervised decomposition of Li et al. (MICCAI 2019, DecGAN) and Li et al. (IEEE TMI 2020): DRRs of a
segmented CT split exactly into component line integrals (`kfjax.data.xray_decomposition`), so every
training image has perfect targets. A 2-D U-Net (`kfjax.nn.UNet`; instance norm, LeakyReLU 0.2, nearest
upsampling + conv) maps the input image to two channels, the bone and the soft-tissue (lung + the rest)
line integrals; its outputs are in units of LINE_INTEGRAL_SCALE (6), like its input. Its output layer
starts at zero, so the untrained network is the "no suppression" baseline (bone 0).

Input (`data.domain`): `drr`, the clean DRR's line integral / 6; or `detector`, the detector-model
radiograph of the same DRR (beam hardening, scatter, blur, noise, collimation, gamma), whose targets are
still the clean components. Unpaired adaptation (`data.translator_workdir`): a trained `cyclegan` run on
the `xray` recipe (`kfjax.data.unpaired`: DRRs -> detector images, same `data.size` and `data.source`)
translates the training DRRs once, when the split is built; the network trains on G_AB(DRR) with the exact
DRR components as targets, while val/test keep the untranslated images of `data.domain`.

Loss: L1 of each component (line-integral units), summed, plus `loss.log_weight` x L1 between the
Laplacian-of-Gaussian filtered components (σ `loss.log_sigma` px; the TMI 2020 LoG domain; off by default).
Bone-suppressed image: exp(-(total - bone)) with total = input x 6. Metrics per image: `l1_bone`, `l1_soft`
(line integrals) and PSNR/SSIM (range 1) of the bone, soft-tissue and bone-suppressed images as line
integral / 6, the log image a radiograph is read as. In the detector domain the bone-suppressed image keeps
the detector's response, so `*_soft` is the fair score there. Bone is a small signal (mean ~0.05 of 6 on the
CT): the zero-bone baseline already scores ~40 dB `psnr_bone` at 64². `kfjax infer` writes bone, soft-tissue
and bone-suppressed 16-bit PNGs and a side-by-side panel to a folder.

    kfjax train xray_decomposition                                   # 64² DRRs of the real chest CT
    kfjax train xray_decomposition --set data.domain=detector        # radiograph-like inputs
    kfjax train xray_decomposition --set loss.log_weight=1           # + the LoG-domain loss
    kfjax train xray_decomposition --set data.source=phantom data.size=32   # no data needed
    kfjax train cyclegan --workdir runs/gan --set data.recipe=xray data.source=ct data.size=64 model.features=16
    kfjax train xray_decomposition --set data.translator_workdir=runs/gan data.domain=detector  # adapted
    kfjax infer xray_decomposition --workdir RUN --input cxr.png --out decomposed/
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from kfjax import losses, metrics
from kfjax.config import BaseConfig, BaseDataConfig, BaseModelConfig, OptimConfig, TrainConfig
from kfjax.data.pipeline import ArrayDataset
from kfjax.data.unpaired import xray_signed
from kfjax.data.xray_decomposition import LINE_INTEGRAL_SCALE, SOURCES, decomposition_set
from kfjax.errors import ConfigError, InputError, KfjaxError
from kfjax.methods.common.landmarks import GridMap, display_image, normalise
from kfjax.methods.common.supervised import SupervisedMethod
from kfjax.methods.registry import from_workdir, register
from kfjax.nn.unet import UNet
from kfjax.train.loop import restore_for_eval
from kfjax.train.method import Inference
from kfjax.train.state import TrainState

__all__ = ["XrayDecompositionConfig", "XrayDecompositionMethod", "Decomposition", "log_kernel", "log_filter"]

SPLITS = ("train", "val", "test")
DOMAINS = ("drr", "detector")
OUTPUT_FILES = ("bone.png", "soft_tissue.png", "bone_suppressed.png", "decomposition.png")
TYPICAL_TOP = {"drr": 0.89, "detector": 0.79}  # mean 99.5th percentile of 64² training images (ct, seed 0)
TRANSLATE_BATCH = 16  # training DRRs per jitted call of the translator (the last call zero-padded to it)


@dataclasses.dataclass(frozen=True)
class DataConfig(BaseDataConfig):
    source: str = "ct"  # ct (DRRs of the real chest CT, cached) | phantom (procedural chest, no data needed)
    domain: str = "drr"  # network input: drr (clean DRR / 6) | detector (the detector-model radiograph)
    size: int = 64  # detector side in pixels, 16-256 (divisible by 2**(len(model.channels) - 1))
    n_train: int = 400  # training images (poses and anatomy drawn per image)
    n_val: int = 100  # validation and test images each
    batch_size: int = 8  # global batch size (split over all devices)
    translator_workdir: str = ""  # a cyclegan run (data.recipe=xray): train on its G_AB(DRR); "" = no adaptation


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseModelConfig):
    channels: tuple[int, ...] = (16, 32, 64, 128)  # U-Net features per level, finest first (paper: 64..512)
    norm: str = "instance"  # batch | group | instance | layer | none
    act: str = "leaky_relu"  # relu | leaky_relu (slope 0.2) | gelu | silu
    upsample: str = "nearest"  # nearest | linear | pixelshuffle (resize + conv; never ConvTranspose)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    log_weight: float = 0.0  # weight of the L1 between LoG-filtered predicted and true components (0: off)
    log_sigma: float = 1.0  # standard deviation of the LoG's Gaussian, pixels


@dataclasses.dataclass(frozen=True)
class InferConfig:
    low: float = 0.5  # intensity percentile of the input mapped to 0
    high: float = 99.5  # intensity percentile of the input mapped to `top`
    top: float = 0.0  # line integral / 6 the `high` percentile maps to; 0: the training domain's (TYPICAL_TOP)
    invert: bool = False  # flip intensities first, for images where bone is dark (a negative display)


@dataclasses.dataclass(frozen=True)
class XrayDecompositionConfig(BaseConfig):
    seed: int = 0  # seeds initialisation, data order and per-step keys (the data are the same for every seed)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig(lr=2e-3, schedule="cosine", warmup_steps=20)
    train: TrainConfig = TrainConfig(steps=600, log_every=20, checkpoint_every=200)
    infer: InferConfig = InferConfig()  # `kfjax infer`: intensity percentiles, their level, inversion


def log_kernel(sigma: float) -> np.ndarray:
    """Scale-normalised Laplacian of Gaussian ``sigma² ∇²G`` (2r+1, 2r+1), r = ceil(3 sigma), made zero-sum
    so a constant image has no response."""
    r = int(np.ceil(3 * sigma))
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    q = (x * x + y * y) / (2 * sigma**2)
    kernel = (q - 1) / (np.pi * sigma**2) * np.exp(-q)
    return kernel - kernel.mean()


def log_filter(images, sigma: float):
    """Each channel of ``images`` (B, H, W, C) convolved with :func:`log_kernel` (edges replicated)."""
    kernel = log_kernel(sigma)
    r, c = kernel.shape[0] // 2, images.shape[-1]
    padded = jnp.pad(images, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    weights = jnp.asarray(np.tile(kernel[:, :, None, None], (1, 1, 1, c)), images.dtype)
    return jax.lax.conv_general_dilated(padded, weights, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=c, precision=jax.lax.Precision.HIGHEST)


@dataclasses.dataclass(frozen=True)
class Decomposition:
    """What ``infer`` returns: images (H, W) float32 of the input as displayed; :meth:`write` saves them."""

    image: np.ndarray  # the input, normalised to line integral / LINE_INTEGRAL_SCALE
    bone: np.ndarray  # bone line integral
    soft: np.ndarray  # soft-tissue (lung + rest) line integral
    suppressed: np.ndarray  # total - bone: the line integral of the bone-suppressed image exp(-(total - bone))

    def write(self, folder: str | os.PathLike) -> list[Path]:
        """Write :data:`OUTPUT_FILES` into ``folder`` (created if missing), each under a temporary name then
        renamed: 16-bit PNGs of bone, soft tissue and bone-suppressed, value = clip(line integral / 6, 0, 1)
        x 65535 (bright = attenuating), and a side-by-side panel. Returns the paths written."""
        from PIL import Image

        from kfjax.viz import image_panel

        folder = Path(folder)
        folder.mkdir(exist_ok=True)
        written = []
        for name, values in zip(OUTPUT_FILES, (self.bone, self.soft, self.suppressed)):
            path, tmp = folder / name, folder / f".{name}.tmp-{os.getpid()}.png"
            pixels = np.round(np.clip(values / LINE_INTEGRAL_SCALE, 0.0, 1.0) * 65535).astype(np.uint16)
            try:
                Image.fromarray(pixels).save(tmp, format="PNG")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(path)
        scaled = [self.image, *(v / LINE_INTEGRAL_SCALE for v in (self.bone, self.soft, self.suppressed))]
        written.append(image_panel([scaled], ["input", "bone", "soft tissue", "bone suppressed"],
                                   folder / OUTPUT_FILES[3]))
        return written


@register("xray_decomposition")
class XrayDecompositionMethod(SupervisedMethod):
    Config = XrayDecompositionConfig
    description = "chest X-ray bone / soft-tissue decomposition learned from exact DRR components (U-Net, L1)"
    paper = "Li et al., MICCAI 2019 (DecGAN); Li et al., IEEE TMI 2020"
    inference = Inference(inputs=("volume",), output="images",
                          help="bone, soft-tissue and bone-suppressed images of a 2-D radiograph, into a folder")

    def __init__(self, config: XrayDecompositionConfig):
        super().__init__(config)
        d, m, lo, inf = config.data, config.model, config.loss, config.infer
        if d.source not in SOURCES:
            raise ConfigError(f"data.source '{d.source}' is not one of {', '.join(SOURCES)}")
        if d.domain not in DOMAINS:
            raise ConfigError(f"data.domain '{d.domain}' is not one of {', '.join(DOMAINS)}")
        multiple = 2 ** (len(m.channels) - 1)
        if not 16 <= d.size <= 256 or d.size % multiple:
            raise ConfigError(f"data.size {d.size} must be 16-256 and divisible by {multiple} "
                              f"(2**(levels-1) for model.channels={list(m.channels)})")
        if d.n_train < 1 or d.n_val < 1:
            raise ConfigError("data.n_train and data.n_val must be at least 1")
        if lo.log_weight < 0 or lo.log_sigma <= 0 or 2 * np.ceil(3 * lo.log_sigma) + 1 > d.size:
            raise ConfigError(f"loss.log_weight must be >= 0 and loss.log_sigma > 0 with a kernel (6 sigma + 1 px) "
                              f"inside the {d.size}² image; got {lo.log_weight}, {lo.log_sigma}")
        if inf.top < 0:
            raise ConfigError(f"infer.top must be a normalised line integral > 0 (or 0: automatic), got {inf.top}")
        self._translator = self._check_translator() if d.translator_workdir else None
        self._datasets: dict[str, ArrayDataset] = {}

    def _check_translator(self):
        """The cyclegan method of `data.translator_workdir`, after checking it fits this run (weights load later)."""
        d = self.config.data
        workdir, hint = d.translator_workdir, "train one with `kfjax train cyclegan --set data.recipe=xray ...`"
        if not (Path(workdir) / "config.json").is_file():
            raise ConfigError(f"data.translator_workdir '{workdir}' holds no config.json; point it at the workdir of "
                              f"a trained cyclegan run ({hint})")
        try:
            translator = from_workdir("cyclegan", workdir)
        except KfjaxError as e:
            raise ConfigError(f"data.translator_workdir '{workdir}' is not a cyclegan run: {e}") from None
        t = translator.config.data
        if (t.recipe, t.source, t.size) != ("xray", d.source, d.size):
            raise ConfigError(f"data.translator_workdir '{workdir}' translates recipe '{t.recipe}' ({t.source}) at "
                              f"{t.size}², this run needs recipe 'xray' ({d.source}) at {d.size}²; {hint}")
        return translator

    def translate(self, drr: np.ndarray) -> np.ndarray:
        """Detector-like images (N, H, W, 1) in [0, 1] of DRRs (N, H, W, 1), line integral / 6: G_AB of the cyclegan
        run in `data.translator_workdir`, restored here, in jitted batches of TRANSLATE_BATCH."""
        state = restore_for_eval(self._translator, self.config.data.translator_workdir)
        predict = functools.partial(jax.jit(self._translator.predict), state)
        out = []
        for start in range(0, len(drr), TRANSLATE_BATCH):
            chunk = xray_signed(drr[start : start + TRANSLATE_BATCH])
            padded = np.pad(chunk, ((0, TRANSLATE_BATCH - len(chunk)), (0, 0), (0, 0), (0, 0)))  # one compiled shape
            out.append(np.asarray(predict({"a": padded})["unit"], np.float32)[: len(chunk)])
        return np.concatenate(out)

    def network(self) -> UNet:
        m = self.config.model
        return UNet(out_channels=2, channels=tuple(m.channels), norm=m.norm, act=m.act, upsample=m.upsample,
                    zero_output=True, remat=m.remat == "blocks")  # starts at zero bone: no suppression

    def network_inputs(self, batch) -> tuple:
        return (batch["image"],)

    def dataset(self, split: str) -> ArrayDataset:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if split not in self._datasets:
            d = self.config.data
            full = decomposition_set(split, d.size, d.source, d.n_train if split == "train" else d.n_val).arrays
            parts = full["components"]  # bone, lung, soft
            target = np.stack([parts[..., 0], parts[..., 1] + parts[..., 2]], -1)
            adapted = split == "train" and self._translator is not None
            image = self.translate(full["drr"]) if adapted else full[d.domain]
            self._datasets[split] = ArrayDataset(image=image, target=target.astype(np.float32))
        return self._datasets[split]

    def batch_spec(self, batch_size: int):
        s = self.config.data.size
        return {"image": jax.ShapeDtypeStruct((batch_size, s, s, 1), jnp.float32),
                "target": jax.ShapeDtypeStruct((batch_size, s, s, 2), jnp.float32)}

    def loss(self, outputs, batch):
        dtype = jnp.promote_types(outputs.dtype, jnp.float32)  # float32 (float64 under x64)
        pred, target = outputs.astype(dtype) * LINE_INTEGRAL_SCALE, batch["target"].astype(dtype)
        bone = losses.l1_loss(pred[..., :1], target[..., :1])
        soft = losses.l1_loss(pred[..., 1:], target[..., 1:])
        terms = {"l1_bone": bone, "l1_soft": soft}
        loss = bone + soft
        lo = self.config.loss
        if lo.log_weight > 0:
            terms["log_l1"] = losses.l1_loss(log_filter(pred, lo.log_sigma), log_filter(target, lo.log_sigma))
            loss = loss + lo.log_weight * terms["log_l1"]
        return loss, terms

    def predict(self, state: TrainState, batch):
        """bone, soft (B, H, W, 1) line integrals; suppressed (B, H, W, 1) intensity exp(-(total - bone)),
        total = image x LINE_INTEGRAL_SCALE."""
        out = self.apply(state.variables("model"), batch)
        out = out.astype(jnp.promote_types(out.dtype, jnp.float32)) * LINE_INTEGRAL_SCALE
        bone, total = out[..., :1], batch["image"].astype(out.dtype) * LINE_INTEGRAL_SCALE
        return {"bone": bone, "soft": out[..., 1:], "suppressed": jnp.exp(-(total - bone))}

    def eval_step(self, state: TrainState, batch):
        pred = self.predict(state, batch)
        dtype = pred["bone"].dtype
        bone, soft = pred["bone"] / LINE_INTEGRAL_SCALE, pred["soft"] / LINE_INTEGRAL_SCALE
        target = batch["target"].astype(dtype) / LINE_INTEGRAL_SCALE
        images = {"bone": (bone, target[..., :1]), "soft": (soft, target[..., 1:]),
                  "suppressed": (batch["image"].astype(dtype) - bone, target[..., 1:])}  # log of exp(-(p - bone))
        scores = {f"l1_{k}": metrics.mae(images[k][0], images[k][1]) * LINE_INTEGRAL_SCALE for k in ("bone", "soft")}
        for name, (x, y) in images.items():
            scores[f"psnr_{name}"] = metrics.psnr(x, y, 1.0)
            scores[f"ssim_{name}"] = metrics.ssim(x, y, 1.0)
        return scores

    def infer(self, state: TrainState, inputs, progress: bool = True) -> Decomposition:
        """Decompose a user's 2-D radiograph (PNG, one DICOM image, a NIfTI with one slice).

        Intensities are scaled so the `infer.low`/`infer.high` percentiles map to 0 and `infer.top` (the
        network's line integral / 6 units; 0: :data:`TYPICAL_TOP` of the training domain), the image is
        padded to a square and resampled to the training size, and the predicted components are resampled
        back to the input's pixels. Returns a :class:`Decomposition` (line integrals at the input's pixels).
        """
        volume = inputs["volume"]
        shape = np.shape(volume.array)
        while len(shape) > 2 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != 2 or min(shape) < 2:
            raise InputError(f"xray_decomposition needs one 2-D radiograph, got an array of shape "
                             f"{np.shape(volume.array)}; pass a PNG, a single DICOM image or a NIfTI file "
                             "holding one slice")
        s, size = self.config.infer, self.config.data.size
        trained_on = "detector" if self._translator is not None else self.config.data.domain  # translated: like it
        top = s.top or TYPICAL_TOP[trained_on]
        image = normalise(display_image(volume), (s.low, s.high), s.invert) * np.float32(top)
        grid = GridMap(image.shape, size)
        predict = jax.jit(lambda x: self.predict(state, {"image": x}))
        out = predict(grid.to_training(image)[None, ..., None])
        bone, soft = (_to_input(grid, np.asarray(out[k][0, ..., 0], np.float32)) for k in ("bone", "soft"))
        return Decomposition(image, bone, soft, image * LINE_INTEGRAL_SCALE - bone)


def _to_input(grid: GridMap, image: np.ndarray) -> np.ndarray:
    """A training-grid image (size, size) resampled to the padded square and cropped to the input (H, W)."""
    from skimage.transform import resize

    square = resize(image, (grid.side, grid.side), order=1, preserve_range=True)
    (top, left), (h, w) = grid.pad, grid.shape
    return np.ascontiguousarray(square[top : top + h, left : left + w], np.float32)
