"""ADN: artifact disentanglement network for unsupervised metal artifact reduction (Liao et al., TMI 2020).

Unpaired artifact-affected images x^a ("low", batch key `a`) and artifact-free images y ("high", key `b`)
in [-1, 1]. `kfjax.nn.ADNNet` generates ll (recon of x^a), lh (artifact-reduced x^a), hl (y with x^a's
artifacts), hh (recon of y) and hlh (hl reduced again). Generator loss with the official weights
(config/adn.yaml):

    20 |ll - x^a| + 20 |hh - y| + 20 |hlh - y| + 20 |(x^a - lh) - (hl - y)|      (L1 means)
    + 1 LSGAN(D_l(lh) -> real) + 1 LSGAN(D_h(hl) -> real)

D_l judges lh against real artifact-free images y; D_h judges hl against real x^a (the code's names). Each
discriminator's loss is 0.5 (MSE(D(real), 1) + MSE(D(fake), 0)). The discriminators are 2-layer PatchGANs
(ndf 64, instance norm). Adam 1e-4, beta = (0.5, 0.999), L2 weight decay 1e-4 (PyTorch Adam's, added to the
gradient). One jitted step updates the groups "generator", "d_low", "d_high"; both losses use the
discriminators as they were at the start of the step. Set a weight to 0 for the paper's ablations
(`loss.rec=0 loss.art=0 loss.self_reduction=0` is "adversarial only"); `loss.paired` > 0 adds the supervised
|lh - y| term (only meaningful on paired data). Metrics: PSNR/SSIM of lh against the truth on [0, 1]
outside the metal.

    kfjax train adn                                                 # procedural phantoms, 256^2
    kfjax train adn --set data.source=ct data.geometry=adn_half model.base=32   # real CT, simulated at 128²
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kfjax import losses
from kfjax.config import BaseConfig, BaseModelConfig, OptimConfig, TrainConfig
from kfjax.data.unpaired import UnpairedDataConfig
from kfjax.errors import InputError
from kfjax.methods.common.gan import UnpairedMethod, discriminator_update, translation_scores
from kfjax.methods.common.mar import MARInferConfig, correct_volume
from kfjax.methods.registry import register
from kfjax.nn.adn import ADNNet
from kfjax.nn.gan import PatchDiscriminator
from kfjax.train.method import Inference, Variables
from kfjax.train.precision import apply_network
from kfjax.train.state import TrainState
from kfjax.units import hu_to_mu, mu_to_hu, to_signed, to_unit, MU_RANGE

__all__ = ["ADNConfig", "ADNMethod"]


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseModelConfig):
    base: int = 64  # encoder/decoder base channels
    num_down: int = 2  # stride-2 encoder layers (= upsampling decoder layers)
    num_residual: int = 4  # residual blocks in every encoder and decoder
    num_sides: int = 3  # artifact-pyramid levels fused by the artifact decoder
    d_features: int = 64  # discriminator base channels (ndf)
    d_layers: int = 2  # discriminator stride-2 layers (ADN: 2)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    rec: float = 20.0  # weight of |ll - x^a| and of |hh - y| (reconstruction)
    art: float = 20.0  # weight of the artifact consistency |(x^a - lh) - (hl - y)|
    self_reduction: float = 20.0  # weight of |hlh - y|
    adv: float = 1.0  # weight of each of the two LSGAN generator terms
    paired: float = 0.0  # weight of |lh - y| (ADN's "lh"; 0 for unpaired training)


@dataclasses.dataclass(frozen=True)
class ADNConfig(BaseConfig):
    seed: int = 0  # seeds initialisation, the A/B split of the training slices, data order and step keys
    data: UnpairedDataConfig = UnpairedDataConfig(batch_size=2)
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig(lr=1e-4, b1=0.5, b2=0.999, weight_decay=1e-4)
    train: TrainConfig = TrainConfig(steps=2000, log_every=50, checkpoint_every=500)
    infer: MARInferConfig = MARInferConfig()


@register("adn")
class ADNMethod(UnpairedMethod):
    Config = ADNConfig
    description = "artifact disentanglement network: unsupervised metal artifact reduction from unpaired CT"
    paper = "Liao et al., IEEE TMI 2020"
    groups = ("generator", "d_low", "d_high")
    inference = Inference(inputs=("volume",), help="image-domain metal artifact reduction of a CT volume in HU")

    def __init__(self, config: ADNConfig):
        super().__init__(config)
        m = config.model
        self.model = ADNNet(1, m.base, m.num_down, m.num_residual, m.num_sides, remat=m.remat == "blocks")
        self.discriminator = PatchDiscriminator(m.d_features, m.d_layers, "instance")

    def init_variables(self, key: jax.Array, batch) -> Variables:
        k_g, k_l, k_h = jax.random.split(key, 3)
        a, b = batch["a"], batch["b"]
        return Variables(params={"generator": self.model.init(k_g, a, b)["params"],
                                 "d_low": self.discriminator.init(k_l, a)["params"],
                                 "d_high": self.discriminator.init(k_h, a)["params"]})

    def _d(self, params, x):
        return apply_network(self.discriminator, {"params": params}, x, remat=self.config.model.remat == "full")

    def generate(self, params, low: jax.Array, high: jax.Array) -> dict[str, jax.Array]:
        """{ll, lh, hl, hh, hlh}, each `(B, H, W, 1)` in [-1, 1]."""
        return apply_network(self.model, {"params": params}, low, high, remat=self.config.model.remat == "full")

    def _generator_loss(self, gen, d_low, d_high, batch):
        w = self.config.loss
        low, high = batch["a"], batch["b"]
        out = self.generate(gen, low, high)
        terms = {
            "ll": losses.l1_loss(out["ll"], low),
            "hh": losses.l1_loss(out["hh"], high),
            "hlh": losses.l1_loss(out["hlh"], high),
            "art": losses.l1_loss(low - out["lh"], out["hl"] - high),
            "gl": losses.lsgan_loss(self._d(d_low, out["lh"]), True),
            "gh": losses.lsgan_loss(self._d(d_high, out["hl"]), True),
        }
        loss = (w.rec * (terms["ll"] + terms["hh"]) + w.self_reduction * terms["hlh"] + w.art * terms["art"]
                + w.adv * (terms["gl"] + terms["gh"]))
        if w.paired:
            terms["lh"] = losses.l1_loss(out["lh"], high)
            loss = loss + w.paired * terms["lh"]
        return loss, (out["lh"], out["hl"], terms)

    def train_step(self, state: TrainState, batch, key):
        p = state.params
        (g_loss, (lh, hl, terms)), g_grads = jax.value_and_grad(self._generator_loss, has_aux=True)(
            p["generator"], p["d_low"], p["d_high"], batch)
        dl_loss, dl_grads = discriminator_update(self._d, p["d_low"], batch["b"], lh)
        dh_loss, dh_grads = discriminator_update(self._d, p["d_high"], batch["a"], hl)
        state = state.apply_gradients({"generator": g_grads, "d_low": dl_grads, "d_high": dh_grads})
        return state, {"loss": g_loss, "d_low": dl_loss, "d_high": dh_loss, **terms}

    def predict(self, state: TrainState, batch):
        """{"reduced": G(E_low(a)) in [-1, 1], "unit": the same on [0, 1]}, `(B, H, W, 1)`."""
        out = self.model.apply({"params": state.params["generator"]}, batch["a"], method=ADNNet.reduce)
        return {"reduced": out, "unit": jnp.clip(to_unit(out), 0.0, 1.0)}

    def eval_step(self, state: TrainState, batch):
        return translation_scores(self.predict(state, batch)["reduced"], batch["b"], batch["mask"])

    def infer(self, state: TrainState, inputs, progress: bool = True):
        """Image-domain metal artifact reduction of a CT volume in HU (`kfjax infer adn`).

        Metal slices (a voxel >= `infer.metal_threshold` HU) are resampled to the training grid, mapped to μ
        at 70 keV, clipped to [0, MU_RANGE] /mm and scaled to [-1, 1], reduced by G(E_low(.)) and mapped
        back to HU; metal voxels keep their input values. No sinogram is needed
        (`kfjax.methods.common.mar.correct_volume`).
        """
        from kfjax.train.loop import notice

        d = self.config.data
        if d.recipe != "mar":
            raise InputError(f"kfjax infer adn needs a model trained on data.recipe=mar, not {d.recipe!r}")
        size, pixel = self.grid()

        @jax.jit
        def correct(st, hu, metal):
            out = self.model.apply({"params": st.params["generator"]}, to_signed(hu_to_mu(hu)), method=ADNNet.reduce)
            return jnp.where(metal > 0, hu, mu_to_hu(to_unit(out) * MU_RANGE))

        return correct_volume(inputs["volume"], lambda hu, metal: correct(state, hu, metal), size, pixel,
                              self.config.infer.metal_threshold, d.batch_size, progress, notice)
