"""CycleGAN (Zhu et al., ICCV 2017): a general unpaired translator between domains A and B.

Generators G_AB, G_BA (`kfjax.nn.ResnetGenerator`, ResNet-9 by default) and PatchGAN discriminators D_A,
D_B (70x70). Losses: LSGAN, cycle consistency x `cycle_weight` (10) in both directions, optional identity
term x `identity_weight * cycle_weight` (CycleGAN's 0.5 when enabled). D_A and D_B see generated images
through image pools of 50 (CycleGAN's history buffer), kept in the train state and updated with the step
key. Adam 2e-4, beta = (0.5, 0.999). One jitted step updates the "generator" and "discriminator" groups:
both losses use the discriminators as they were at the start of the step.

Data come from a recipe in `kfjax.data.unpaired` (default "mar": metal-affected -> artifact-free CT, the
ADN paper's CycleGAN baseline; "mr": T1w -> T2w; "xray": clean DRRs -> detector-model radiographs of the
chest CT, the translator `xray_decomposition` trains through with `data.translator_workdir`; "invert": a toy).
Evaluation: PSNR/SSIM of G_AB(a) against the paired truth b on [0, 1] (data_range 1) over the recipe's mask
(outside the metal for MAR; every pixel for xray, b being the detector rendering of the DRR a).

    kfjax train cyclegan --set data.recipe=invert data.size=32 train.steps=500
    kfjax train cyclegan --set data.source=ct data.geometry=adn_half model.features=32
    kfjax train cyclegan --set data.recipe=xray data.source=ct data.size=64 model.features=16 model.n_blocks=3
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kfjax import losses
from kfjax.config import BaseConfig, BaseModelConfig, OptimConfig, TrainConfig
from kfjax.data.unpaired import UnpairedDataConfig
from kfjax.methods.common.gan import UnpairedMethod, discriminator_update, translation_scores
from kfjax.methods.registry import register
from kfjax.nn.gan import PatchDiscriminator, ResnetGenerator, pool_init, pool_query
from kfjax.train.method import Variables
from kfjax.train.precision import apply_network
from kfjax.train.state import TrainState
from kfjax.units import to_unit

__all__ = ["CycleGANConfig", "CycleGANMethod"]


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseModelConfig):
    features: int = 64  # generator base channels (ngf)
    n_blocks: int = 9  # generator residual blocks (9: resnet_9blocks)
    d_features: int = 64  # discriminator base channels (ndf)
    d_layers: int = 3  # discriminator stride-2 layers (3: 70x70 PatchGAN)
    norm: str = "instance"  # instance | batch | layer | none


@dataclasses.dataclass(frozen=True)
class LossConfig:
    cycle_weight: float = 10.0  # lambda of both cycle-consistency L1 terms
    identity_weight: float = 0.0  # identity L1 weight relative to cycle_weight (CycleGAN uses 0.5 when on)
    pool_size: int = 50  # history buffer of generated images shown to each discriminator (0: none)


@dataclasses.dataclass(frozen=True)
class CycleGANConfig(BaseConfig):
    seed: int = 0  # seeds initialisation, the A/B split of the data, data order and per-step keys
    data: UnpairedDataConfig = UnpairedDataConfig(batch_size=2)
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig(lr=2e-4, b1=0.5, b2=0.999)
    train: TrainConfig = TrainConfig(steps=2000, log_every=50, checkpoint_every=500)


@register("cyclegan")
class CycleGANMethod(UnpairedMethod):
    Config = CycleGANConfig
    description = "unpaired image translation A<->B (ResNet generators, PatchGAN, LSGAN, cycle loss, image pool)"
    paper = "Zhu et al., ICCV 2017"
    groups = ("generator", "discriminator")

    def __init__(self, config: CycleGANConfig):
        super().__init__(config)
        m = config.model
        self.generator = ResnetGenerator(1, m.features, m.n_blocks, m.norm, remat=m.remat == "blocks")
        self.discriminator = PatchDiscriminator(m.d_features, m.d_layers, m.norm)

    def init_variables(self, key: jax.Array, batch) -> Variables:
        ks = jax.random.split(key, 4)
        a = batch["a"]
        gen = {"ab": self.generator.init(ks[0], a)["params"], "ba": self.generator.init(ks[1], a)["params"]}
        dis = {"a": self.discriminator.init(ks[2], a)["params"], "b": self.discriminator.init(ks[3], a)["params"]}
        size = self.config.loss.pool_size
        pools = {"pool_a": pool_init(size, a.shape[1:], a.dtype), "pool_b": pool_init(size, a.shape[1:], a.dtype)}
        return Variables(params={"generator": gen, "discriminator": dis}, extra=pools)

    def _g(self, params, x):
        return apply_network(self.generator, {"params": params}, x, remat=self.config.model.remat == "full")

    def _d(self, params, x):
        return apply_network(self.discriminator, {"params": params}, x, remat=self.config.model.remat == "full")

    def _generator_loss(self, gen, dis, batch):
        cfg = self.config.loss
        a, b = batch["a"], batch["b"]
        fake_b, fake_a = self._g(gen["ab"], a), self._g(gen["ba"], b)
        adv_ab = losses.lsgan_loss(self._d(dis["b"], fake_b), True)
        adv_ba = losses.lsgan_loss(self._d(dis["a"], fake_a), True)
        cycle_a = losses.l1_loss(self._g(gen["ba"], fake_b), a)
        cycle_b = losses.l1_loss(self._g(gen["ab"], fake_a), b)
        loss = adv_ab + adv_ba + cfg.cycle_weight * (cycle_a + cycle_b)
        logs = {"g_adv_ab": adv_ab, "g_adv_ba": adv_ba, "cycle_a": cycle_a, "cycle_b": cycle_b}
        if cfg.identity_weight:
            idt = losses.l1_loss(self._g(gen["ab"], b), b) + losses.l1_loss(self._g(gen["ba"], a), a)
            loss = loss + cfg.identity_weight * cfg.cycle_weight * idt
            logs["identity"] = idt
        return loss, (fake_a, fake_b, logs)

    def train_step(self, state: TrainState, batch, key):
        gen, dis = state.params["generator"], state.params["discriminator"]
        (g_loss, (fake_a, fake_b, logs)), g_grads = jax.value_and_grad(self._generator_loss, has_aux=True)(
            gen, dis, batch)
        key_a, key_b = jax.random.split(key)
        shown_a, pool_a = pool_query(state.extra["pool_a"], jax.lax.stop_gradient(fake_a), key_a)
        shown_b, pool_b = pool_query(state.extra["pool_b"], jax.lax.stop_gradient(fake_b), key_b)
        d_a, grads_a = discriminator_update(self._d, dis["a"], batch["a"], shown_a)
        d_b, grads_b = discriminator_update(self._d, dis["b"], batch["b"], shown_b)
        state = state.apply_gradients({"generator": g_grads, "discriminator": {"a": grads_a, "b": grads_b}},
                                      extra={"pool_a": pool_a, "pool_b": pool_b})
        d_loss = d_a + d_b
        return state, {"loss": g_loss, "g_loss": g_loss, "d_loss": d_loss, "d_a": d_a, "d_b": d_b, **logs}

    def predict(self, state: TrainState, batch):
        """{"translated": G_AB(a) in [-1, 1], "unit": the same mapped to [0, 1]} `(B, H, W, 1)`."""
        out = self._g(state.params["generator"]["ab"], batch["a"])
        return {"translated": out, "unit": jnp.clip(to_unit(out), 0.0, 1.0)}

    def eval_step(self, state: TrainState, batch):
        return translation_scores(self.predict(state, batch)["translated"], batch["b"], batch["mask"])
