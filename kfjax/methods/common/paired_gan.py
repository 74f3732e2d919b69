"""The paired conditional GAN shared by pix2pix and the self-inverse network: one definition of the step.

Generator: `kfjax.nn.UNet` (`model.channels`, one entry per level; resize+conv upsampling, skip connections)
with a tanh on its output, `(B, H, W, 1) -> (B, H, W, 1)` in [-1, 1]. Discriminator: the conditional PatchGAN
(`kfjax.nn.PatchDiscriminator`, `model.d_layers`: 2 by default, the paper's 3 = 70x70) on
`concat(input, output)`, 2 channels.
Losses (pix2pix): generator `GAN(D(x, G(x)) -> real) + l1_weight |G(x) - y|_1`, discriminator
`0.5 (GAN(D(x, y) -> real) + GAN(D(x, G(x)) -> fake))` with `loss.gan` "vanilla" (BCE on logits, the
reference code's) or "lsgan"; no image pool (pool_size 0). Both groups move in ONE jitted step; both losses
use the discriminator as it was at the start of the step.

Norm: "instance" by default. The reference uses batch norm with batch size 1 in training mode at training
and test time, which is instance normalisation; "group" and "none" are also accepted, "batch" is not.

A subclass decides which (input, output) pairs a step trains on (`training_pairs`: pix2pix the configured
direction, the self-inverse network a random swap per sample) and whether one discriminator or one per
direction judges them (`direction_discriminators`). Scores: L1, PSNR and SSIM on [0, 1] in the brain mask.
Inference runs `kfjax.methods.common.synthesis.synthesize_volume` (see `infer_volume`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from kfjax import losses, metrics
from kfjax.config import BaseConfig, BaseModelConfig, OptimConfig, TrainConfig
from kfjax.data.mr import CONTRASTS
from kfjax.data.synthesis import SynthesisDataConfig, check_contrasts, synthesis_grid, synthesis_slices
from kfjax.errors import ConfigError
from kfjax.io import Volume
from kfjax.methods.common.gan import discriminator_update, translation_scores
from kfjax.methods.common.synthesis import synthesize_volume
from kfjax.nn.gan import PatchDiscriminator
from kfjax.nn.unet import UNet
from kfjax.train.method import Method, Variables
from kfjax.train.precision import apply_network
from kfjax.train.state import TrainState
from kfjax.units import to_unit

__all__ = ["GAN_LOSSES", "GENERATOR_NORMS", "InferConfig", "LossConfig", "ModelConfig", "PairedGANConfig",
           "PairedGANMethod",
           "check_direction", "cycle_error", "direction_name", "gan_generator_loss", "gan_discriminator_update",
           "infer_volume", "paired_scores"]

GAN_LOSSES = ("vanilla", "lsgan")
GENERATOR_NORMS = ("instance", "group", "none")


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseModelConfig):
    channels: tuple[int, ...] = (16, 32, 64, 128)  # U-Net features per level (paper: 64,128,256,512,512)
    norm: str = "instance"  # generator norm: instance (= pix2pix's batch norm at batch 1) | group | none
    d_features: int = 16  # discriminator base channels (ndf; paper: 64)
    d_layers: int = 2  # discriminator stride-2 layers (2: 34x34 patches; the paper's 3: 70x70)
    d_norm: str = "instance"  # discriminator norm: instance | group | layer | none


@dataclasses.dataclass(frozen=True)
class LossConfig:
    gan: str = "vanilla"  # vanilla (BCE on logits, the reference code's) | lsgan
    l1_weight: float = 100.0  # lambda_L1 of |G(x) - y|_1


@dataclasses.dataclass(frozen=True)
class InferConfig:
    """Settings of `kfjax infer` for contrast synthesis (`--set infer.KEY=VALUE`)."""

    direction: str = ""  # SOURCE_to_TARGET, e.g. t1w_to_t2w ("": the data.source -> data.target of training)


@dataclasses.dataclass(frozen=True)
class PairedGANConfig(BaseConfig):
    """The settings of a paired GAN (pix2pix, self_inverse) at CPU scale; paper scale in their docstrings."""

    seed: int = 0  # seeds initialisation, data order and per-step keys (the swaps of the self-inverse network)
    data: SynthesisDataConfig = SynthesisDataConfig(batch_size=4)
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig(lr=1e-3, b1=0.5, b2=0.999)  # CPU scale; the paper's lr is 2e-4
    train: TrainConfig = TrainConfig(steps=400, log_every=50, checkpoint_every=400)
    infer: InferConfig = InferConfig()


def direction_name(source: str, target: str) -> str:
    """`"t1w_to_t2w"`: the name of a translation direction."""
    return f"{source}_to_{target}"


def check_direction(direction: str, allowed: tuple[str, ...], what: str) -> str:
    """`direction` if it is one of `allowed` ("" means the first), else a ConfigError naming the choices."""
    if direction == "":
        return allowed[0]
    if direction not in allowed:
        known = {direction_name(a, b) for a in CONTRASTS for b in CONTRASTS if a != b}
        why = f"is not {what}" if direction in known else f"is not SOURCE_to_TARGET of {', '.join(CONTRASTS)}"
        raise ConfigError(f"infer.direction '{direction}' {why}; choose {' or '.join(allowed)}")
    return direction


def gan_generator_loss(kind: str, logits: jax.Array) -> jax.Array:
    """The generator's GAN term: the discriminator's output on a fake pushed towards "real"."""
    return losses.vanilla_gan_loss(logits, True) if kind == "vanilla" else losses.lsgan_loss(logits, True)


def gan_discriminator_update(kind: str, apply_d: Callable, params, real: jax.Array, fake: jax.Array):
    """(loss, gradient) of a discriminator `apply_d(params, x)`: 0.5 (GAN(D(real), 1) + GAN(D(fake), 0)).

    "lsgan" is `kfjax.methods.common.gan.discriminator_update`; "vanilla" the same with BCE on logits.
    `fake` is detached.
    """
    if kind == "lsgan":
        return discriminator_update(apply_d, params, real, fake)
    fake = jax.lax.stop_gradient(fake)

    def loss(p):
        real_term = losses.vanilla_gan_loss(apply_d(p, real), True)
        return 0.5 * (real_term + losses.vanilla_gan_loss(apply_d(p, fake), False))

    return jax.value_and_grad(loss)(params)


def paired_scores(pred: jax.Array, target: jax.Array, mask: jax.Array, suffix: str = "") -> dict[str, jax.Array]:
    """L1, PSNR (dB) and SSIM of [-1, 1] images on [0, 1] in `mask` (1 = scored), `{name + suffix: (B,)}`.

    The prediction is clipped to [0, 1] as for PSNR/SSIM (`translation_scores`), so L1 is in units of the
    [0, 1] intensity range (the papers' L1).
    """
    unit = jnp.clip(to_unit(pred), 0.0, 1.0)
    scores = {"l1": metrics.mae(unit, to_unit(target), mask=mask), **translation_scores(pred, target, mask)}
    return {name + suffix: value for name, value in scores.items()}


def cycle_error(f: Callable, x: jax.Array, mask: jax.Array) -> jax.Array:
    """|f(f(x)) - x| on [0, 1] in `mask` (1 = scored) per image `(B,)`: 0 for a self-inverse f."""
    back = jnp.clip(to_unit(f(f(x))), 0.0, 1.0)
    return metrics.mae(back, to_unit(x), mask=mask)


def infer_volume(volume: Volume, generator: Callable, params, downsample: int, multiple: int, batch_size: int,
                 progress: bool) -> Volume:
    """`generator(params, images (B, H, W, 1) in [-1, 1]) -> (B, H, W, 1)` applied slice by slice to a volume.

    `synthesize_volume` divides the volume by its intensity scale (99.5th percentile of the foreground),
    resamples to the training pixel size (`downsample` mm), and multiplies the output back by the input's
    scale, with the input's affine. Atlas coordinates are not used by these generators.
    """
    translate = jax.jit(generator)
    return synthesize_volume(volume, lambda images, coords: translate(params, images), float(downsample), multiple,
                             batch_size, progress)


class PairedGANMethod(Method):
    """pix2pix-style conditional GAN on the paired synthesis slices (`kfjax.data.synthesis`).

    The config has `data` (a `SynthesisDataConfig`), `model` (a `ModelConfig`), `loss` (a `LossConfig`).
    """

    groups = ("generator", "discriminator")

    def __init__(self, config):
        super().__init__(config)
        m, loss = config.model, config.loss
        check_contrasts(config.data.source, config.data.target)
        if loss.gan not in GAN_LOSSES:
            raise ConfigError(f"unknown loss.gan '{loss.gan}'; choose one of {', '.join(GAN_LOSSES)}")
        if m.norm not in GENERATOR_NORMS:
            raise ConfigError(f"model.norm '{m.norm}' is not one of {', '.join(GENERATOR_NORMS)} (batch norm at "
                              "pix2pix's batch size 1 is instance norm: use instance)")
        if m.d_norm not in ("instance", "group", "layer", "none"):
            raise ConfigError(f"model.d_norm '{m.d_norm}' is not one of instance, group, layer, none")
        if not m.channels or m.d_layers < 1:
            raise ConfigError("model.channels needs at least one level and model.d_layers at least 1")
        h, w = synthesis_grid(config.data.downsample)
        if h % self.multiple() or w % self.multiple():
            raise ConfigError(f"slices of {h}x{w} do not divide by 2**{len(m.channels) - 1}; use fewer "
                              "model.channels levels or a smaller data.downsample")
        self.generator = UNet(out_channels=1, channels=tuple(m.channels), norm=m.norm, remat=m.remat == "blocks")
        self.discriminator = PatchDiscriminator(m.d_features, m.d_layers, m.d_norm)
        self._datasets: dict[str, object] = {}

    # ---------------------------------------------------------------- what a subclass decides
    def direction_discriminators(self) -> bool:
        """True: one discriminator per direction ("ab" judges source -> target pairs, "ba" the swapped)."""
        return False

    def training_pairs(self, batch, key: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(input, output, swapped (B,) bool) of a step (its key and number): here source -> target, unswapped."""
        return batch["source"], batch["target"], jnp.zeros(batch["source"].shape[0], bool)

    # ---------------------------------------------------------------- data
    def dataset(self, split: str):
        if split not in self._datasets:
            self._datasets[split] = synthesis_slices(split, self.config.data)
        return self._datasets[split]

    def batch_spec(self, batch_size: int):
        image = jax.ShapeDtypeStruct((batch_size, *synthesis_grid(self.config.data.downsample), 1), jnp.float32)
        return {"source": image, "target": image}

    def multiple(self) -> int:
        """Slice sides must divide by this (the U-Net's downsampling)."""
        return 2 ** (len(self.config.model.channels) - 1)

    # ---------------------------------------------------------------- networks
    def init_variables(self, key: jax.Array, batch) -> Variables:
        k_g, k_ab, k_ba = jax.random.split(key, 3)
        x = batch["source"]
        pair = jnp.concatenate([x, x], axis=-1)
        names = ("ab", "ba") if self.direction_discriminators() else ("ab",)
        dis = {n: self.discriminator.init(k, pair)["params"] for n, k in zip(names, (k_ab, k_ba))}
        return Variables(params={"generator": self.generator.init(k_g, x)["params"], "discriminator": dis})

    def translate(self, params, x: jax.Array) -> jax.Array:
        """G(x) = tanh(U-Net(x)), `(B, H, W, 1)` in [-1, 1]."""
        remat = self.config.model.remat == "full"
        return jnp.tanh(apply_network(self.generator, {"params": params}, x, remat=remat))

    def _d(self, params, pair):
        return apply_network(self.discriminator, {"params": params}, pair, remat=self.config.model.remat == "full")

    def discriminate(self, dis, pair: jax.Array, swapped: jax.Array) -> jax.Array:
        """Logit map of the (input, output) pairs `(B, H, W, 2)`: D_ab, or D_ba where `swapped` with two Ds."""
        if "ba" not in dis:
            return self._d(dis["ab"], pair)
        return jnp.where(swapped[:, None, None, None], self._d(dis["ba"], pair), self._d(dis["ab"], pair))

    # ---------------------------------------------------------------- the step
    def _generator_loss(self, gen, dis, x, y, swapped):
        cfg = self.config.loss
        fake = self.translate(gen, x)
        adv = gan_generator_loss(cfg.gan, self.discriminate(dis, jnp.concatenate([x, fake], -1), swapped))
        l1 = losses.l1_loss(fake, y)
        return adv + cfg.l1_weight * l1, (fake, {"g_adv": adv, "l1": l1})

    def train_step(self, state: TrainState, batch, key):
        gen, dis = state.params["generator"], state.params["discriminator"]
        x, y, swapped = self.training_pairs(batch, key, state.step)
        (g_loss, (fake, logs)), g_grads = jax.value_and_grad(self._generator_loss, has_aux=True)(
            gen, dis, x, y, swapped)
        d_loss, d_grads = gan_discriminator_update(
            self.config.loss.gan, lambda p, pair: self.discriminate(p, pair, swapped), dis,
            jnp.concatenate([x, y], -1), jnp.concatenate([x, fake], -1))
        state = state.apply_gradients({"generator": g_grads, "discriminator": d_grads})
        return state, {"loss": g_loss, "g_loss": g_loss, "d_loss": d_loss, "swapped": swapped.mean(), **logs}

    # ---------------------------------------------------------------- outputs
    def predict(self, state: TrainState, batch):
        """{"translated": G(source) in [-1, 1], "unit": the same on [0, 1]}, `(B, H, W, 1)`."""
        out = self.translate(state.params["generator"], batch["source"])
        return {"translated": out, "unit": jnp.clip(to_unit(out), 0.0, 1.0)}

    def eval_step(self, state: TrainState, batch):
        return paired_scores(self.predict(state, batch)["translated"], batch["target"], batch["mask"])

    def synthesize(self, state: TrainState, volume: Volume, progress: bool) -> Volume:
        """G applied to a user's volume slice by slice (see `infer_volume`)."""
        d = self.config.data
        return infer_volume(volume, self.translate, state.params["generator"], d.downsample, self.multiple(),
                            d.batch_size, progress)
