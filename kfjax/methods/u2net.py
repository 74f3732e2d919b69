"""U²-Net (Huang et al., MICCAI 2019): one 3-D U-Net for several segmentation domains with separable adapters.

Network: `kfjax.nn.u2net.U2Net` (modes independent | shared | universal; domain-specific parameters stacked
over the domains and picked by the domain index, which is data, so ONE compiled step serves every domain).
Data: `kfjax.data.domains` (real chest-CT organs, real MNI152 tissue classes on simulated T1w+T2w, and
procedural organ, anisotropic prostate-like and small hippocampus-like domains), one domain per step in
round robin. Loss: Lovász-softmax + focal (γ = 2) on the domain's classes. Metrics: mean foreground Dice per
example, `dice` over all rows and `dice_<domain>` (NaN on the other domains' rows).

Add-domain training (`train.add_domain=WORKDIR` of a run on all domains but the last): the shared weights
and the old domains' parameters are frozen (their updates are zeroed after the optimiser), only the last
domain's rows of the stacked parameters train, on that domain's data; old outputs stay bitwise the same.

    kfjax train u2net                                                  # 5 domains, universal, 16^3 patches
    kfjax train u2net --set model.mode=independent
    kfjax train u2net --workdir runs/u2net6 --set "data.domains=ct_organs,brain_tissue,organ_phantom,\
prostate_like,hippocampus_like,organ_lowcontrast" train.add_domain=runs/u2net
    kfjax infer u2net --workdir runs/u2net --input ct.nii.gz --out labels.nii.gz --set infer.domain=ct_organs
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import ndimage

from kfjax.config import BaseConfig, BaseDataConfig, BaseModelConfig, OptimConfig, TrainConfig
from kfjax.data.domains import DEFAULT_DOMAINS, MAX_CHANNELS, check_domains, multi_domain_dataset, normalise
from kfjax.data.pipeline import ArrayDataset, EpochSampler, RoundRobinSampler
from kfjax.errors import ConfigError, InputError
from kfjax.io import Volume
from kfjax.io.orientation import from_display_slices, to_display_slices
from kfjax.methods.common.lovasz import focal_loss, lovasz_softmax
from kfjax.methods.common.supervised import SupervisedMethod
from kfjax.methods.registry import register
from kfjax.nn.sliding_window import sliding_window
from kfjax.nn.u2net import MODES, U2Net, is_domain_specific
from kfjax.train.method import Inference, Variables
from kfjax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class DataConfig(BaseDataConfig):
    domains: tuple[str, ...] = DEFAULT_DOMAINS  # domains in index order (kfjax.data.domains.DOMAINS); add-domain adds the last
    size: int = 16  # cubic patch side in voxels (divisible by 2**(levels - 1)); paper: 40-192 per axis
    n_train: int = 48  # training patches per domain
    n_val: int = 8  # validation (and test) patches per domain
    batch_size: int = 2  # global batch, all rows from one domain (paper: 2; hippocampus 9, prostate 4)


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseModelConfig):
    mode: str = "universal"  # independent (N stacked networks) | shared (one network, per-domain I/O) | universal
    channels: tuple[int, ...] = (16, 32, 64)  # features per level, finest first (paper: 16 .. 256/512)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    lovasz_weight: float = 1.0  # weight of the Lovász-softmax loss (mean over the present classes)
    focal_weight: float = 1.0  # weight of the focal loss
    focal_gamma: float = 2.0  # focusing exponent γ of the focal loss (paper: 2)


@dataclasses.dataclass(frozen=True)
class U2NetTrainConfig(TrainConfig):
    add_domain: str = ""  # workdir of a run on data.domains minus the last: train only the last domain's parameters


@dataclasses.dataclass(frozen=True)
class InferConfig:
    domain: str = ""  # the domain (name from data.domains) whose layers segment the input; required
    overlap: float = 0.5  # overlap of neighbouring windows of the training patch size, in [0, 1)
    blend: str = "gaussian"  # gaussian | constant weighting of overlapping window outputs
    window_batch: int = 2  # windows per network call


@dataclasses.dataclass(frozen=True)
class U2NetConfig(BaseConfig):
    seed: int = 0  # seeds initialisation, patches, data order and per-step keys
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig(lr=2e-3, schedule="cosine")  # paper: Adam 3e-4, weight decay 5e-4
    train: U2NetTrainConfig = U2NetTrainConfig(steps=300, log_every=20, checkpoint_every=100)
    infer: InferConfig = InferConfig()


def freeze_all_but(domain: int) -> optax.GradientTransformation:
    """Zero every update except the `domain` row of the stacked domain-specific parameters."""

    def mask(path, u):
        if not is_domain_specific(path):
            return jnp.zeros_like(u)
        keep = (jnp.arange(u.shape[0]) == domain).reshape((-1,) + (1,) * (u.ndim - 1))
        return jnp.where(keep, u, jnp.zeros_like(u))

    def update(updates, state, params=None):
        return jax.tree_util.tree_map_with_path(mask, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


@register("u2net")
class U2NetMethod(SupervisedMethod):
    Config = U2NetConfig
    description = "universal 3-D U-Net with separable domain adapters: one network, several segmentation domains"
    paper = "Huang et al., MICCAI 2019"
    inference = Inference(inputs=("volume",), help="label map of one domain (--set infer.domain=NAME); a demonstration")

    def __init__(self, config: U2NetConfig):
        super().__init__(config)
        self.domains = check_domains(config.data.domains)
        m, d = config.model, config.data
        if m.mode not in MODES:
            raise ConfigError(f"model.mode '{m.mode}' is not one of {', '.join(MODES)}")
        if not m.channels or d.size % 2 ** (len(m.channels) - 1):
            raise ConfigError(f"data.size={d.size} must divide by 2**{len(m.channels) - 1} for {len(m.channels)} levels")
        if m.remat == "blocks":
            raise ConfigError("u2net supports model.remat=none or full (the whole network), not blocks")
        if config.train.add_domain and len(self.domains) < 2:
            raise ConfigError("train.add_domain needs at least two data.domains: the trained ones and the new last one")
        self._datasets: dict[str, ArrayDataset] = {}

    # ---------------------------------------------------------------- network and data
    def network(self) -> U2Net:
        m = self.config.model
        return U2Net(tuple(x.in_channels for x in self.domains), tuple(x.n_classes for x in self.domains),
                     tuple(m.channels), m.mode)

    def network_inputs(self, batch) -> tuple:
        return batch["image"], batch["domain"][0]  # a training batch holds one domain (the sampler's promise)

    def dataset(self, split: str) -> ArrayDataset:
        if split not in self._datasets:
            d = self.config.data
            only = len(self.domains) - 1 if self.config.train.add_domain and split == "train" else None
            n = d.n_train if split == "train" else d.n_val
            self._datasets[split] = multi_domain_dataset(d.domains, split, n, d.size, self.config.seed, only)
        return self._datasets[split]

    def sampler(self, dataset, batch_size: int):
        if self.config.train.add_domain:
            return EpochSampler(len(dataset), batch_size, self.config.seed)
        return RoundRobinSampler(dataset.arrays["domain"], batch_size, self.config.seed)

    def batch_spec(self, batch_size: int):
        s = self.config.data.size
        return {"image": jax.ShapeDtypeStruct((batch_size, s, s, s, MAX_CHANNELS), jnp.float32),
                "label": jax.ShapeDtypeStruct((batch_size, s, s, s), jnp.int32),
                "domain": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

    # ---------------------------------------------------------------- add-domain training
    @functools.cached_property
    def new_domain(self) -> int | None:
        return len(self.domains) - 1 if self.config.train.add_domain else None

    def optimizers(self):
        tx = super().optimizers()
        if self.new_domain is not None:
            tx["model"] = optax.chain(tx["model"], freeze_all_but(self.new_domain))
        return tx

    def init_variables(self, key: jax.Array, batch) -> Variables:
        fresh = super().init_variables(key, batch)
        if self.new_domain is None:
            return fresh
        base = self._base_params()
        old = self.new_domain

        def merge(path, new, trained):
            trained = jnp.asarray(trained)
            if is_domain_specific(path):  # the old rows; a head may have grown classes the old domains mask
                return new.at[(slice(0, old), *(slice(0, n) for n in trained.shape[1:]))].set(trained)
            if trained.shape != new.shape:
                raise ConfigError(f"train.add_domain: shared parameter {jax.tree_util.keystr(path)} has shape "
                                  f"{trained.shape} in the base run, {new.shape} here; use the same model settings")
            return trained

        params = jax.tree_util.tree_map_with_path(merge, fresh.params["model"], base)
        return Variables(params={"model": params}, batch_stats=fresh.batch_stats)

    def _base_params(self):
        """The parameters of the `train.add_domain` run, restored on the host (outside any trace)."""
        from kfjax.methods import registry
        from kfjax.train.loop import restore_for_eval

        path = self.config.train.add_domain
        base = registry.from_workdir(self.name, path)
        c, b = self.config, base.config
        if tuple(b.data.domains) != tuple(c.data.domains[:-1]):
            raise ConfigError(f"train.add_domain run '{path}' has domains {','.join(b.data.domains)}; this run needs "
                              f"exactly {','.join(c.data.domains[:-1])} plus the new last one")
        if (b.model.mode, tuple(b.model.channels), b.data.size) != (c.model.mode, tuple(c.model.channels), c.data.size):
            raise ConfigError(f"train.add_domain run '{path}' has another model.mode, model.channels or data.size; "
                              "use the same settings")
        with jax.ensure_compile_time_eval():
            state = restore_for_eval(base, path)
        return jax.tree.map(np.asarray, state.params["model"])

    # ---------------------------------------------------------------- loss and metrics
    def class_mask(self, domain: jax.Array) -> jax.Array:
        """(B, K) bool: the classes each row's domain has."""
        counts = jnp.asarray([x.n_classes for x in self.domains], jnp.int32)
        return jnp.arange(max(x.n_classes for x in self.domains)) < jnp.take(counts, domain)[:, None]

    def loss(self, outputs, batch):
        cfg = self.config.loss
        lovasz = lovasz_softmax(outputs, batch["label"], self.class_mask(batch["domain"])).mean()
        focal = focal_loss(outputs, batch["label"], cfg.focal_gamma).mean()
        return cfg.lovasz_weight * lovasz + cfg.focal_weight * focal, {"lovasz": lovasz, "focal": focal}

    def logits(self, state: TrainState, batch) -> jax.Array:
        """Logits `(B, *S, K)` of rows that may come from different domains (each row with its own layers)."""
        variables = state.variables("model")

        def one(row):  # a scalar domain per call: plain convolutions (vmap would make them grouped, slow on CPU)
            image, domain = row
            return self.apply(variables, {"image": image[None], "domain": domain[None]})[0]

        return jax.lax.map(one, (batch["image"], batch["domain"]))

    def predict(self, state: TrainState, batch):
        return {"labels": jnp.argmax(self.logits(state, batch), axis=-1).astype(jnp.int32)}

    def eval_step(self, state: TrainState, batch):
        pred, label, domain = self.predict(state, batch)["labels"], batch["label"], batch["domain"]
        mask = self.class_mask(domain)[:, 1:]  # foreground classes of each row's domain
        axes = tuple(range(1, label.ndim))
        classes = jnp.arange(1, mask.shape[1] + 1)
        p = pred[..., None] == classes
        t = label[..., None] == classes
        inter = (p & t).sum(axes)
        total = p.sum(axes) + t.sum(axes)
        scored = mask & (total > 0)  # a class absent from both prediction and label is left out
        dice = jnp.where(scored, 2.0 * inter / jnp.maximum(total, 1), 0.0).sum(-1) / scored.sum(-1)
        dice = jnp.where(scored.sum(-1) > 0, dice, jnp.nan)
        out = {"dice": dice}
        for k, d in enumerate(self.domains):
            out[f"dice_{d.name}"] = jnp.where(domain == k, dice, jnp.nan)
        return out

    # ---------------------------------------------------------------- a user's volume
    def infer(self, state: TrainState, inputs: dict[str, Volume], progress: bool = True) -> Volume:
        """Label map (uint8 class ids of `infer.domain`) of a user's volume, with its affine and header.

        The volume (a 4-D file holds the modalities on its last axis) is put in display orientation,
        normalised like the domain's training data, resampled to the domain's spacing, segmented over
        sliding windows of the training patch and resampled back (class probabilities, linear) to its grid.
        """
        names = [d.name for d in self.domains]
        name = self.config.infer.domain
        if name not in names:
            raise ConfigError(f"set --set infer.domain=NAME with NAME one of {', '.join(names)}"
                              + (f" ('{name}' is not one)" if name else ""))
        domain, index = self.domains[names.index(name)], names.index(name)
        volume = inputs["volume"]
        array = np.asarray(volume.array, np.float32)
        if array.ndim < 3 or min(array.shape[:3]) < 2:
            raise InputError(f"input of shape {array.shape} is 2-D; u2net segments 3-D volumes (a NIfTI/DICOM series)")
        channels = 1 if array.ndim == 3 else int(np.prod(array.shape[3:]))
        if channels != domain.in_channels:
            raise InputError(f"domain {name} takes {domain.in_channels} modalities, the input has {channels}; pass a "
                             f"{'4-D file with the modalities on its last axis' if domain.in_channels > 1 else '3-D volume'}")
        slices, display_affine = to_display_slices(Volume(array.reshape(*array.shape[:3], channels), volume.affine))
        spacing = np.linalg.norm(display_affine[:3, :3], axis=0)
        grid = tuple(max(int(round(n * s / t)), 1) for n, s, t in zip(slices.shape[:3], spacing, domain.spacing_mm))
        image = _resample(normalise(domain.kind, slices), grid)
        image = np.pad(image, [(0, 0)] * 3 + [(0, MAX_CHANNELS - channels)])
        apply = jax.jit(lambda st, x: jax.nn.softmax(
            self.apply(st.variables("model"), {"image": x, "domain": jnp.full((x.shape[0],), index, jnp.int32)}), -1))
        infer = self.config.infer
        prob = sliding_window(image[None], (self.config.data.size,) * 3, lambda x: apply(state, x),
                              overlap=infer.overlap, mode=infer.blend, batch_size=infer.window_batch, progress=progress)
        labels = np.argmax(_resample(prob[0], slices.shape[:3]), axis=-1).astype(np.uint8)
        return Volume(from_display_slices(labels, volume.affine), volume.affine, volume.header)


def _resample(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear resampling of `(D, H, W, C)` to `(*shape, C)`, voxel centres aligned (edges clamp)."""
    if tuple(x.shape[:3]) == tuple(shape):
        return x.astype(np.float32)
    axes = [(np.arange(m) + 0.5) * n / m - 0.5 for n, m in zip(x.shape[:3], shape)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    return np.stack([ndimage.map_coordinates(x[..., c], coords, order=1, mode="nearest")
                     for c in range(x.shape[-1])], -1).astype(np.float32)
