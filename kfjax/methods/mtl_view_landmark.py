"""Multitask view classification + landmark detection on simulated abdominal ultrasound (MGCN_R; Xu et al.,
MICCAI 2018, "Less is more"; methods.md §3).

One network (`kfjax.nn.gcn.MGCN`): a shared ResNet-style encoder, a view head (11 classes) and a landmark
decoder of GCN + boundary-refinement blocks giving `L` heatmaps `(B, H, W, L)`. Loss:

    CE(view) + λ_h MSE(heatmaps, Gaussians) + λ_c |soft_argmax(heatmaps / T) - p|_1 + λ_adv LSGAN(D(x ⊕ Ĥ) -> real)

where the heatmap, coordinate and adversarial terms see only the true view's landmark channels (the
per-sample `landmark_mask`; the heatmaps go to the discriminator multiplied by it), so an unsupervised
channel gets no gradient from them. The conditional discriminator (`kfjax.nn.PatchDiscriminator`, groups
"model" and "discriminator", one jitted step) judges image ⊕ masked heatmaps, real = the Gaussian targets.
`model.variant`: "mtl" (both heads), "view_only" (the STL classifier) or "landmark_only" (SFCN: the
landmark branch alone), all on the same encoder; `model.gcn=false` puts plain 3x3 convolutions in the decoder.

Scores per test image: `view_accuracy` (0/1), `landmark_mm` (mean error of the true view's landmarks, mm),
`length_mm` (mean |error| of the true view's length measurements, mm) and one `length_mm/NAME` per measurement;
NaN (left out of the mean) where the view has none. Data: `kfjax.data.ultrasound` (procedural, simulated).

    kfjax train mtl_view_landmark                                    # MTL, 64x64, CPU scale
    kfjax train mtl_view_landmark --set model.variant=view_only      # single-task baselines
    kfjax train mtl_view_landmark --set data.size=256 model.kernel=15 model.channels=64,128,256,512 \\
        data.n_train=20000 train.steps=20000 optim.lr=1e-4           # paper scale (GPU)
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from kfjax import losses, metrics
from kfjax.config import BaseConfig, BaseDataConfig, BaseModelConfig, OptimConfig, TrainConfig
from kfjax.data.pipeline import ArrayDataset
from kfjax.data.ultrasound import CHANNELS, MEASUREMENTS, VIEWS, measurement_pairs, ultrasound_views
from kfjax.errors import ConfigError
from kfjax.methods.common.gan import discriminator_update
from kfjax.methods.registry import register
from kfjax.nn.gan import PatchDiscriminator
from kfjax.nn.gcn import MGCN
from kfjax.nn.heatmaps import gaussian_heatmaps, soft_argmax
from kfjax.train.method import Method, Variables
from kfjax.train.precision import apply_network
from kfjax.train.state import TrainState

VARIANTS = ("mtl", "view_only", "landmark_only")


@dataclasses.dataclass(frozen=True)
class DataConfig(BaseDataConfig):
    size: int = 64  # image side in pixels (divisible by 2**(levels - 1); the paper's 256)
    n_train: int = 1100  # simulated training images (views balanced)
    n_val: int = 220  # simulated validation / test images each
    data_seed: int = 0  # seeds the simulation (apart from `seed`, so every run of a table sees the same images)
    batch_size: int = 8  # global batch size


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseModelConfig):
    variant: str = "mtl"  # mtl | view_only | landmark_only (SFCN)
    channels: tuple[int, ...] = (8, 16, 32, 64)  # encoder features per level, finest first
    decoder_features: int = 16  # channels of the GCN / boundary-refinement decoder
    kernel: int = 7  # GCN kernel k at 64² (the paper's ~15 at 256²), capped per scale by the map size
    gcn: bool = True  # false: plain 3x3 convolutions instead of GCN blocks (ablation)
    norm: str = "none"  # encoder normalisation: none | group | layer (per-image group norm learned slower here)
    d_features: int = 16  # discriminator base channels
    d_layers: int = 2  # discriminator stride-2 layers


@dataclasses.dataclass(frozen=True)
class LossConfig:
    view_weight: float = 1.0  # weight of the view cross-entropy
    heatmap_weight: float = 100.0  # λ_h: masked MSE against Gaussian targets of peak 1
    coord_weight: float = 0.01  # λ_c per pixel: masked L1 of soft-argmax coordinates
    adv_weight: float = 0.01  # λ_adv: generator's LSGAN term of the conditional discriminator (0: off)
    sigma: float = 2.0  # Gaussian target sigma in pixels
    temperature: float = 0.05  # soft-argmax reads softmax(heatmaps / temperature)


@dataclasses.dataclass(frozen=True)
class MTLConfig(BaseConfig):
    seed: int = 0  # seeds initialisation, data order and per-step keys
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=20)
    train: TrainConfig = TrainConfig(steps=400, log_every=50, checkpoint_every=400)


def landmark_scores(pred, target, mask, spacing) -> dict[str, jax.Array]:
    """Per-example errors in mm of the supervised landmarks (mask 1) and of the length measurements.

    pred, target: `(B, L, 2)` (row, col) pixels; mask `(B, L)`; spacing `(B, 2)` mm per pixel. Returns
    `landmark_mm`, `length_mm` and `length_mm/NAME` per measurement, each `(B,)`, NaN where nothing is supervised.
    """
    mask = jnp.asarray(mask, jnp.float32)
    err = metrics.landmark_errors(pred, target, spacing)  # (B, L) mm
    count = jnp.sum(mask, axis=1)
    out = {"landmark_mm": jnp.where(count > 0, jnp.sum(err * mask, axis=1) / jnp.maximum(count, 1.0), jnp.nan)}
    pairs = measurement_pairs()
    s = jnp.asarray(spacing, jnp.float32)[:, None, :]
    length = lambda p: jnp.sqrt(jnp.sum(((p[:, pairs[:, 0]] - p[:, pairs[:, 1]]) * s) ** 2, axis=-1))  # noqa: E731
    diff = jnp.abs(length(jnp.asarray(pred, jnp.float32)) - length(jnp.asarray(target, jnp.float32)))  # (B, P)
    both = mask[:, pairs[:, 0]] * mask[:, pairs[:, 1]]
    n = jnp.sum(both, axis=1)
    out["length_mm"] = jnp.where(n > 0, jnp.sum(diff * both, axis=1) / jnp.maximum(n, 1.0), jnp.nan)
    for p, (name, _, _) in enumerate(MEASUREMENTS):
        out[f"length_mm/{name.replace(' ', '_')}"] = jnp.where(both[:, p] > 0, diff[:, p], jnp.nan)
    return out


@register("mtl_view_landmark")
class MTLViewLandmarkMethod(Method):
    Config = MTLConfig
    description = "multitask view classification + GCN landmark heatmaps on simulated abdominal ultrasound (MGCN_R)"
    paper = "Xu et al., MICCAI 2018"
    groups = ("model", "discriminator")

    def __init__(self, config: MTLConfig):
        super().__init__(config)
        m, d, loss = config.model, config.data, config.loss
        if m.norm not in ("none", "group", "layer"):
            raise ConfigError(f"model.norm '{m.norm}' is not one of none, group, layer")
        if m.variant not in VARIANTS:
            raise ConfigError(f"model.variant '{m.variant}' is not one of {', '.join(VARIANTS)}")
        if not m.channels or min(m.channels) < 1 or m.kernel < 1 or m.kernel % 2 == 0:
            raise ConfigError("model.channels needs positive entries and model.kernel a positive odd size, "
                              f"got {m.channels} and {m.kernel}")
        multiple = 2 ** (len(m.channels) - 1)
        if d.size < 32 or d.size % multiple:
            raise ConfigError(f"data.size {d.size} must be at least 32 and divisible by {multiple} "
                              "(2**(levels - 1)); change data.size or model.channels")
        weights = {f: getattr(loss, f) for f in ("view_weight", "heatmap_weight", "coord_weight", "adv_weight")}
        for name, value in {**weights, "sigma": loss.sigma, "temperature": loss.temperature}.items():
            if not math.isfinite(value) or value < 0 or (name in ("sigma", "temperature") and value == 0):
                raise ConfigError(f"loss.{name} must be a finite number >= 0 (sigma, temperature > 0), got {value}")
        self.network = MGCN(len(VIEWS), len(CHANNELS), tuple(m.channels), m.decoder_features, m.kernel, m.gcn,
                            view_head=m.variant != "landmark_only", landmark_head=m.variant != "view_only",
                            norm=m.norm)
        self.discriminator = PatchDiscriminator(m.d_features, m.d_layers, "instance")
        self._datasets: dict[str, ArrayDataset] = {}

    # ---------------------------------------------------------------- data
    def dataset(self, split: str) -> ArrayDataset:
        if split not in self._datasets:
            d = self.config.data
            self._datasets[split] = ultrasound_views(split, d.n_train if split == "train" else d.n_val, d.size,
                                                     d.data_seed)
        return self._datasets[split]

    def batch_spec(self, batch_size: int):
        s, L = self.config.data.size, len(CHANNELS)
        return {"image": jax.ShapeDtypeStruct((batch_size, s, s, 1), jnp.float32),
                "view": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
                "landmarks": jax.ShapeDtypeStruct((batch_size, L, 2), jnp.float32),
                "landmark_mask": jax.ShapeDtypeStruct((batch_size, L), jnp.float32)}

    # ---------------------------------------------------------------- networks
    @property
    def adversarial(self) -> bool:
        """Whether the conditional discriminator trains (a landmark head and λ_adv > 0)."""
        return self.config.model.variant != "view_only" and self.config.loss.adv_weight > 0

    def init_variables(self, key: jax.Array, batch) -> Variables:
        k_net, k_dis = jax.random.split(key)
        image = batch["image"]
        pair = jnp.zeros((*image.shape[:-1], 1 + len(CHANNELS)), image.dtype)
        return Variables(params={"model": self.network.init(k_net, image)["params"],
                                 "discriminator": self.discriminator.init(k_dis, pair)["params"]})

    def parameter_count(self) -> int:
        """Parameters of the network (group "model") of this variant; the discriminator is not counted."""
        s = self.config.data.size
        shapes = jax.eval_shape(self.network.init, jax.random.key(0), jnp.zeros((1, s, s, 1)))
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))

    def apply(self, params, image):
        """(view logits (B, 11) | None, heatmaps (B, H, W, L) | None) in the step's compute dtype."""
        return apply_network(self.network, {"params": params}, image, remat=self.config.model.remat == "full")

    def _d(self, params, pair):
        return apply_network(self.discriminator, {"params": params}, pair)

    # ---------------------------------------------------------------- losses
    def targets(self, batch) -> jax.Array:
        """Gaussian heatmaps of the true landmarks, `(B, H, W, L)`, zero on unsupervised channels."""
        s = self.config.data.size
        mask = batch["landmark_mask"][:, None, None, :]
        return gaussian_heatmaps(batch["landmarks"], (s, s), self.config.loss.sigma) * mask

    def coordinates(self, heatmaps: jax.Array) -> jax.Array:
        """Landmarks read from heatmaps: soft-argmax of heatmaps / temperature, `(B, L, 2)` pixels."""
        return soft_argmax(heatmaps / self.config.loss.temperature)

    def landmark_loss(self, heatmaps, batch, dis_params) -> tuple[jax.Array, dict[str, jax.Array]]:
        """λ_h MSE + λ_c L1 + λ_adv GAN on the true view's channels only (masked): the landmark branch's loss."""
        cfg = self.config.loss
        mask = batch["landmark_mask"]
        target = self.targets(batch)
        heat = losses.heatmap_loss(heatmaps, target, mask=mask[:, None, None, :])
        l1 = jnp.sum(jnp.abs(self.coordinates(heatmaps) - batch["landmarks"]), axis=-1)  # (B, L) pixels
        coord = jnp.sum(l1 * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        total = cfg.heatmap_weight * heat + cfg.coord_weight * coord
        terms = {"heatmap_mse": heat, "coord_l1_px": coord}
        if self.adversarial:
            fake = jnp.concatenate([batch["image"], heatmaps * mask[:, None, None, :]], axis=-1)
            adv = losses.lsgan_loss(self._d(dis_params, fake), True)
            total = total + cfg.adv_weight * adv
            terms["g_adv"] = adv
        return total, terms

    def _objective(self, params, dis_params, batch):
        logits, heatmaps = self.apply(params, batch["image"])
        loss, terms = jnp.zeros((), jnp.float32), {}
        if logits is not None:
            ce = losses.softmax_cross_entropy(logits, batch["view"])
            loss, terms = loss + self.config.loss.view_weight * ce, {"view_ce": ce}
        if heatmaps is not None:
            landmark, more = self.landmark_loss(heatmaps, batch, dis_params)
            loss, terms = loss + landmark, {**terms, **more}
        return loss, (heatmaps, {"loss": loss, **terms})

    def train_step(self, state: TrainState, batch, key: jax.Array):
        params, dis = state.params["model"], state.params["discriminator"]
        grads, (heatmaps, logs) = jax.grad(self._objective, has_aux=True)(params, dis, batch)
        d_grads = jax.tree.map(jnp.zeros_like, dis)
        if self.adversarial:
            mask = batch["landmark_mask"][:, None, None, :]
            real = jnp.concatenate([batch["image"], self.targets(batch)], axis=-1)
            fake = jnp.concatenate([batch["image"], heatmaps * mask], axis=-1)
            logs["d_loss"], d_grads = discriminator_update(self._d, dis, real, fake)
        return state.apply_gradients({"model": grads, "discriminator": d_grads}), logs

    # ---------------------------------------------------------------- outputs and scores
    def predict(self, state: TrainState, batch):
        """{"view_probs": (B, 11), "view": (B,) int32, "heatmaps": (B, H, W, L), "landmarks": (B, L, 2)} (those
        of the variant's heads)."""
        logits, heatmaps = self.apply(state.params["model"], batch["image"])
        out = {}
        if logits is not None:
            out |= {"view_probs": jax.nn.softmax(logits), "view": jnp.argmax(logits, axis=-1).astype(jnp.int32)}
        if heatmaps is not None:
            out |= {"heatmaps": heatmaps, "landmarks": self.coordinates(heatmaps)}
        return out

    def eval_step(self, state: TrainState, batch):
        out = self.predict(state, batch)
        scores = {}
        if "view" in out:
            scores["view_accuracy"] = (out["view"] == batch["view"]).astype(jnp.float32)
        if "landmarks" in out:
            scores |= landmark_scores(out["landmarks"], batch["landmarks"], batch["landmark_mask"], batch["spacing"])
        return scores

