"""DI2IN-AN: DI2IN liver segmentation with an adversarial shape prior (Yang et al., MICCAI 2017).

Generator: the 3-D `kfjax.nn.DI2IN` (multi-level concatenation, deep supervision) and the DI2IN loss of
`kfjax.methods.di2in` (L_seg = BCE(fused) + eta x sum BCE(sides)). Critic: `kfjax.nn.ShapeCritic` on the
probability map (the paper's mask-only critic) or, with `model.condition=true`, on image + mask (ablation).

One jitted step does both updates. Before `adv.pretrain_steps` (read from the state's step counter inside
the step, so nothing recompiles) only the generator moves, on L_seg alone: the critic's parameters and
optimizer state are left exactly as they were. After it, on every `adv.d_every`-th step the critic takes
`adv.d_steps` Adam steps on 0.5 [BCE(D(y), real) + BCE(D(G(x)), fake)] (G(x) detached), and then the
generator takes one on L_seg + adv.weight x BCE(D(G(x)), real) against the updated critic. The generator runs
forward once per step: its backward pass is one VJP with the sum of both terms' cotangents.

Data: procedural liver-like organs (`kfjax.data.organs3d`), a fraction with a missing boundary (flag
"missing"), voxels of FIELD_MM / data.size mm. Metrics: Dice (also on the missing-boundary cases alone) and,
on the host, ASD and HD95 in mm (all cases, missing-boundary cases, the others).

    kfjax train di2in_an                                  # 24^3 (8 mm voxels), CPU scale
    kfjax train di2in_an --set adv.weight=0               # plain DI2IN on the same data
    kfjax infer di2in_an --workdir RUN --input ct.nii.gz --out liver.nii.gz
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kfjax import losses, metrics
from kfjax.config import BaseDataConfig, OptimConfig, TrainConfig
from kfjax.data.organs3d import hu_to_unit, organ_cases, resample_linear, spacing_mm
from kfjax.data.pipeline import ArrayDataset
from kfjax.errors import ConfigError, InputError
from kfjax.io import Volume, check_finite
from kfjax.methods.common.paired_gan import gan_discriminator_update
from kfjax.methods.di2in import DI2INConfig, DI2INMethod, InferConfig, LossConfig
from kfjax.methods.di2in import ModelConfig as DI2INModelConfig
from kfjax.methods.registry import register
from kfjax.nn.shape_critic import CRITIC_NORMS, ShapeCritic
from kfjax.nn.sliding_window import sliding_window
from kfjax.train.method import Inference, Variables
from kfjax.train.precision import apply_network
from kfjax.train.state import TrainState

CRITIC_MASKS = ("soft", "hard")  # what the critic is shown of a generated mask (ModelConfig.critic_mask)


@dataclasses.dataclass(frozen=True)
class DataConfig(BaseDataConfig):
    size: int = 24  # case side in voxels over the 192 mm field: 8 mm voxels at 24, the paper's 3 mm at 64
    n_train: int = 64  # training cases (a smaller set is a prefix of a larger one)
    n_val: int = 16  # validation cases (scored at the end of `kfjax train`)
    n_test: int = 32  # test cases (experiments/di2in_an)
    missing_fraction: float = 0.3  # fraction of cases whose organ touches a neighbour of exactly its HU
    seed: int = 0  # seeds the procedural cases; fixed across run seeds, so every run sees the same cases
    batch_size: int = 4  # global batch size (split over all devices)


@dataclasses.dataclass(frozen=True)
class ModelConfig(DI2INModelConfig):
    channels: tuple[int, ...] = (8, 16, 32, 64)  # generator features per level, finest first (paper: 32..512)
    critic_channels: tuple[int, ...] = (8, 16, 32, 64)  # critic features per stride-2 level (paper: 4-5 levels)
    critic_norm: str = "layer"  # layer | group | instance | none (no batch norm: real and fake are separate batches)
    condition: bool = False  # True: the critic sees image + mask (ablation); False: the mask alone (the paper)
    critic_mask: str = "soft"  # soft: the probability map (the paper) | hard: thresholded at 0.5, straight-through


@dataclasses.dataclass(frozen=True)
class AdversarialConfig:
    weight: float = 0.01  # lambda_adv: weight of BCE(D(G(x)), real) in the generator objective (0: plain DI2IN)
    pretrain_steps: int = 150  # first steps train the generator alone on L_seg; the critic starts after them
    d_steps: int = 1  # k_D: critic updates per adversarial step (each on the step's real and generated masks)
    d_every: int = 1  # the critic moves on every d_every-th adversarial step (k_D : k_G = d_steps : d_every)


@dataclasses.dataclass(frozen=True)
class DI2INANConfig(DI2INConfig):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    adv: AdversarialConfig = AdversarialConfig()
    optim: OptimConfig = OptimConfig(lr=2e-3, schedule="cosine", warmup_steps=20)  # both groups (optim_groups)
    train: TrainConfig = TrainConfig(steps=300, log_every=20, checkpoint_every=100)
    infer: InferConfig = InferConfig()


def _check(config: DI2INANConfig) -> None:
    d, m, a = config.data, config.model, config.adv
    multiple = 2 ** (len(m.channels) - 1)
    if d.size < 8 or d.size % multiple:
        raise ConfigError(f"data.size={d.size} must be at least 8 and divisible by {multiple} "
                          f"(2**(levels-1) of model.channels); e.g. data.size={max(multiple, 8) * 4}")
    if min(d.n_train, d.n_val, d.n_test) < 1:
        raise ConfigError("data.n_train, data.n_val and data.n_test must be at least 1")
    if not 0.0 <= d.missing_fraction <= 1.0:
        raise ConfigError(f"data.missing_fraction={d.missing_fraction} must be in [0, 1]")
    if m.critic_norm not in CRITIC_NORMS:
        raise ConfigError(f"model.critic_norm '{m.critic_norm}' is not one of {', '.join(CRITIC_NORMS)}")
    if m.critic_mask not in CRITIC_MASKS:
        raise ConfigError(f"model.critic_mask '{m.critic_mask}' is not one of {', '.join(CRITIC_MASKS)}")
    if not m.critic_channels:
        raise ConfigError("model.critic_channels needs at least one level, e.g. 8,16,32")
    if a.weight < 0 or a.pretrain_steps < 0 or a.d_steps < 1 or a.d_every < 1:
        raise ConfigError("adv.weight and adv.pretrain_steps must be >= 0, adv.d_steps and adv.d_every >= 1")
    if config.train.accumulate != 1:
        raise ConfigError("di2in_an updates the critic before the generator inside a step; train.accumulate "
                          "must be 1 (raise data.batch_size instead)")


@register("di2in_an")
class DI2INANMethod(DI2INMethod):
    Config = DI2INANConfig
    description = "DI2IN with an adversarial shape prior: 3-D liver-like organ segmentation"
    paper = "Yang et al., MICCAI 2017 (DI2IN-AN)"
    groups = ("generator", "discriminator")
    host_metric_names = ("asd", "hd95", "asd_missing", "asd_normal")
    inference = Inference(inputs=("volume",), help="organ mask of a CT volume in HU (trained on procedural organs: "
                                                   "a demonstration)")

    def __init__(self, config: DI2INANConfig):
        super(DI2INMethod, self).__init__(config)  # DI2IN's own checks are about its 2-D options
        _check(config)
        self._datasets: dict[str, ArrayDataset] = {}

    # ---------------------------------------------------------------- data
    @property
    def spacing(self) -> float:
        """Voxel size in mm of the cases."""
        return spacing_mm(self.config.data.size)

    def dataset(self, split: str) -> ArrayDataset:
        if split not in self._datasets:
            d = self.config.data
            count = {"train": d.n_train, "val": d.n_val, "test": d.n_test}[split]
            self._datasets[split] = ArrayDataset(**organ_cases(count, d.size, d.seed, split, d.missing_fraction))
        return self._datasets[split]

    def batch_spec(self, batch_size: int):
        shape = (batch_size, *(self.config.data.size,) * 3, 1)
        return {"image": jax.ShapeDtypeStruct(shape, jnp.float32), "label": jax.ShapeDtypeStruct(shape, jnp.float32)}

    def transform(self):
        return None

    # ---------------------------------------------------------------- networks
    def critic(self) -> nn.Module:
        m = self.config.model
        return ShapeCritic(tuple(m.critic_channels), m.critic_norm)

    def generated_mask(self, logits: jax.Array) -> jax.Array:
        """The mask the critic is shown for generator logits: the probability map, or (model.critic_mask=hard) the
        map thresholded at 0.5 with the probability's gradient (straight-through), so that the critic cannot
        tell generated from true masks by their softness and has to judge their shape."""
        p = jax.nn.sigmoid(logits)
        if self.config.model.critic_mask == "hard":
            return p + jax.lax.stop_gradient((p > 0.5).astype(p.dtype) - p)
        return p

    def critic_input(self, batch, mask: jax.Array) -> jax.Array:
        """What the critic judges: the mask `(B, *S, 1)`, or image and mask `(B, *S, 2)` with model.condition."""
        return jnp.concatenate([batch["image"], mask], axis=-1) if self.config.model.condition else mask

    def discriminate(self, params, x: jax.Array) -> jax.Array:
        """Critic logits `(B,)` of critic inputs."""
        return apply_network(self.critic(), {"params": params}, x, remat=self.config.model.remat == "full")

    def init_variables(self, key: jax.Array, batch) -> Variables:
        k_g, k_d = jax.random.split(key)
        variables = self.model.init(k_g, batch["image"], False)
        critic = self.critic().init(k_d, self.critic_input(batch, batch["label"]))["params"]
        stats = {"generator": variables["batch_stats"]} if "batch_stats" in variables else {}
        return Variables(params={"generator": variables["params"], "discriminator": critic}, batch_stats=stats)

    # ---------------------------------------------------------------- the step
    def _critic_updates(self, state: TrainState, real: jax.Array, fake: jax.Array):
        """`adv.d_steps` critic updates on detached fakes: (state, last critic loss)."""
        loss = jnp.zeros((), fake.dtype)
        for _ in range(self.config.adv.d_steps):
            loss, grads = gan_discriminator_update("vanilla", self.discriminate, state.params["discriminator"],
                                                   real, fake)
            state = state.apply_gradients({"discriminator": grads})
        return state, loss

    def train_step(self, state: TrainState, batch, key: jax.Array):
        adv = self.config.adv
        adversarial = state.step >= adv.pretrain_steps
        critic_moves = adversarial & ((state.step - adv.pretrain_steps) % adv.d_every == 0)

        def forward(params):
            variables = {**state.variables("generator"), "params": params}
            mutable = ["batch_stats"] if "generator" in state.batch_stats else []
            return self.apply(variables, batch, True, mutable=mutable)

        outputs, pullback, updates = jax.vjp(forward, state.params["generator"], has_aux=True)
        real = self.critic_input(batch, batch["label"])
        fake = self.critic_input(batch, jax.lax.stop_gradient(self.generated_mask(outputs[0])))
        state, d_loss = jax.lax.cond(critic_moves, self._critic_updates,
                                     lambda s, r, f: (s, jnp.zeros((), f.dtype)), state, real, fake)

        (seg, terms), seg_cot = jax.value_and_grad(self.loss, has_aux=True)(outputs, batch)
        critic = state.params["discriminator"]

        def fool(final):  # BCE(D(G(x)), real) with the critic as updated above
            shown = self.critic_input(batch, self.generated_mask(final))
            return losses.vanilla_gan_loss(self.discriminate(critic, shown), True)

        g_adv, adv_cot = jax.lax.cond(adversarial, jax.value_and_grad(fool),
                                      lambda f: (jnp.zeros((), f.dtype), jnp.zeros_like(f)), outputs[0])
        cotangent = (seg_cot[0] + adv.weight * adv_cot, seg_cot[1])  # adv_cot is exactly 0 in pre-training
        (grads,) = pullback(cotangent)
        stats = {"generator": updates["batch_stats"]} if "batch_stats" in updates else {}
        state = state.apply_gradients({"generator": grads}, batch_stats=stats)
        loss = seg + adv.weight * g_adv
        # how hard the prior pulls: |weighted adversarial cotangent| / |L_seg cotangent| on the fused logits
        pull = adv.weight * jnp.linalg.norm(adv_cot) / jnp.maximum(jnp.linalg.norm(seg_cot[0]), 1e-30)
        return state, {"loss": loss, "seg_loss": seg, "g_adv": g_adv, "d_loss": d_loss, "adv_pull": pull,
                       "adversarial": adversarial.astype(jnp.float32), **terms}

    # ---------------------------------------------------------------- outputs and scores
    def predict(self, state: TrainState, batch):
        final, _ = self.apply(state.variables("generator"), batch)
        return {"probability": jax.nn.sigmoid(final)}

    def eval_step(self, state: TrainState, batch):
        mask = (self.predict(state, batch)["probability"] > 0.5).astype(jnp.float32)
        dice = metrics.dice(mask, batch["label"])[:, 0]
        out = {"dice": dice}
        if "missing" in batch:
            out["dice_missing"] = jnp.where(batch["missing"] > 0.5, dice, jnp.nan)
        return out

    def host_metrics(self, batch, outputs):
        pred = outputs["probability"][..., 0] > 0.5
        label = batch["label"][..., 0] > 0.5
        asd = np.asarray([metrics.average_surface_distance(p, t, self.spacing) for p, t in zip(pred, label)])
        hd95 = np.asarray([metrics.hausdorff_distance_95(p, t, self.spacing) for p, t in zip(pred, label)])
        missing = np.asarray(batch.get("missing", np.zeros(len(asd)))) > 0.5
        return {"asd": asd, "hd95": hd95, "asd_missing": np.where(missing, asd, np.nan),
                "asd_normal": np.where(missing, np.nan, asd)}

    def infer(self, state: TrainState, inputs: dict[str, Volume], progress: bool = True) -> Volume:
        """Organ mask of a user's CT volume (HU), with the input's affine and header (uint8).

        The volume is resampled (trilinear) to the training voxel size FIELD_MM / data.size mm, scaled to
        [0, 1] through the HU window of the training cases, covered by sliding windows of the training size
        (`infer.overlap`, `infer.blend`, `infer.window_batch`), and the probability is resampled back to the
        input grid and thresholded at `infer.threshold`. Trained on procedural organs: a demonstration.
        """
        volume = inputs["volume"]
        array = np.asarray(volume.array, np.float32)
        if array.ndim == 4 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim == 4:
            raise InputError(f"expected one CT channel, got {array.shape[-1]} in an array of shape {array.shape}; "
                             "di2in_an takes a single 3-D CT volume")
        if array.ndim != 3:
            raise InputError(f"expected a 3-D CT volume, got a {array.ndim}-D array of shape {array.shape}; pass a "
                             "3-D NIfTI file or DICOM series (di2in_an does not segment 2-D images)")
        check_finite(array, "the input volume")
        size = self.config.data.size
        step = np.asarray(self.spacing) / np.asarray(volume.spacing[:3])  # input voxels per training voxel
        scaled = hu_to_unit(resample_linear(array, step))
        apply = jax.jit(lambda st, x: self.predict(st, {"image": x})["probability"])
        infer = self.config.infer
        probability = sliding_window(scaled[None, ..., None], (size,) * 3, lambda x: apply(state, x),
                                     overlap=infer.overlap, mode=infer.blend, batch_size=infer.window_batch,
                                     progress=progress)[0, ..., 0]
        probability = resample_linear(probability, 1.0 / step, array.shape)
        return Volume((probability >= infer.threshold).astype(np.uint8), volume.affine, volume.header)
