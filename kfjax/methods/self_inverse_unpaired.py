"""Unpaired self-inverse network (one2one-unpaired, Shen et al., WACV 2020 / arXiv 1909.04110): CycleGAN with ONE G.

One generator G maps A -> B and B -> A. Two PatchGAN discriminators: D_B judges G(A) against real B images,
D_A judges G(B) against real A images. Cycle terms |G(G(A)) - A|_1 and |G(G(B)) - B|_1 x `loss.cycle_weight`
(10), image pools of 50, Adam 2e-4 beta1 0.5. Everything but the number of generators is `cyclegan`'s (this
is its subclass: the same ResNet generator `model.features`/`model.n_blocks`, LSGAN, one jitted step, the
same pools), so the pair `cyclegan` / `self_inverse_unpaired` differs only in one vs two generators.
Differences from the reference code, on purpose: LSGAN as kfjax's CycleGAN (the reference one2one-unpaired
code uses the vanilla GAN loss), and one generator update per step on the sum of both directions' losses
(the reference updates G twice per iteration, once per domain's batch).

Data: the unpaired recipe "mr" of `kfjax.data.unpaired` by default (A = T1w slices of one half of the
training slices, B = T2w slices of the other half; no flips: the simulated contrast depends on location).
Metrics for both directions on [0, 1] in the brain mask: `l1_ab`, `psnr_ab`, `ssim_ab` (G(a) vs b),
`l1_ba`, `psnr_ba`, `ssim_ba` (G(b) vs a), cycle errors `cycle_a`, `cycle_b`.

    kfjax train self_inverse_unpaired
    kfjax train self_inverse_unpaired --set model.features=64 model.n_blocks=9 model.d_features=64 \
        model.d_layers=3 optim.lr=2e-4 train.steps=20000                    # paper scale (a GPU)
    kfjax infer self_inverse_unpaired --workdir RUN --input t1.nii.gz --out t2.nii.gz --set infer.direction=t1w_to_t2w
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kfjax import losses
from kfjax.config import OptimConfig, TrainConfig
from kfjax.data.unpaired import UnpairedDataConfig
from kfjax.errors import ConfigError
from kfjax.methods.common.paired_gan import (InferConfig, check_direction, cycle_error, direction_name, infer_volume,
                                             paired_scores)
from kfjax.methods.cyclegan import CycleGANConfig, CycleGANMethod, ModelConfig
from kfjax.methods.registry import register
from kfjax.nn.gan import pool_init
from kfjax.train.method import Inference, Variables
from kfjax.train.state import TrainState
from kfjax.units import to_unit

__all__ = ["SelfInverseUnpairedConfig", "SelfInverseUnpairedMethod"]


@dataclasses.dataclass(frozen=True)
class SelfInverseUnpairedConfig(CycleGANConfig):
    data: UnpairedDataConfig = UnpairedDataConfig(recipe="mr", downsample=2, flip=False, batch_size=4)
    model: ModelConfig = ModelConfig(features=16, n_blocks=3, d_features=16, d_layers=2)  # CPU scale
    optim: OptimConfig = OptimConfig(lr=1e-3, b1=0.5, b2=0.999)  # CPU scale; the paper's lr is 2e-4
    train: TrainConfig = TrainConfig(steps=300, log_every=50, checkpoint_every=300)
    infer: InferConfig = InferConfig()


@register("self_inverse_unpaired")
class SelfInverseUnpairedMethod(CycleGANMethod):
    Config = SelfInverseUnpairedConfig
    description = "one self-inverse generator from unpaired images (one2one-unpaired: CycleGAN with one G)"
    paper = "Shen et al., WACV 2020"
    inference = Inference(inputs=("volume",), help="synthesize the other contrast of an MR volume (either direction)")

    def __init__(self, config: SelfInverseUnpairedConfig):
        super().__init__(config)
        if config.loss.identity_weight:  # the identity term asks G(b) = b while the translation asks G(b) = a
            raise ConfigError(f"loss.identity_weight={config.loss.identity_weight} contradicts one self-inverse G "
                              "(G(b) would have to be b and a); set it to 0")
        d = config.data
        both = (direction_name(d.contrast_a, d.contrast_b), direction_name(d.contrast_b, d.contrast_a))
        self.direction = check_direction(config.infer.direction, both, "one of the two this model was trained for")

    def init_variables(self, key: jax.Array, batch) -> Variables:
        k_g, k_a, k_b = jax.random.split(key, 3)
        a = batch["a"]
        dis = {"a": self.discriminator.init(k_a, a)["params"], "b": self.discriminator.init(k_b, a)["params"]}
        size = self.config.loss.pool_size
        pools = {"pool_a": pool_init(size, a.shape[1:], a.dtype), "pool_b": pool_init(size, a.shape[1:], a.dtype)}
        return Variables(params={"generator": self.generator.init(k_g, a)["params"], "discriminator": dis},
                         extra=pools)

    def _generator_loss(self, gen, dis, batch):
        """CycleGAN's generator loss with G_AB = G_BA = G; returns (loss, (G(b), G(a), logs)) as CycleGAN's."""
        cfg = self.config.loss
        a, b = batch["a"], batch["b"]
        fake_b, fake_a = self._g(gen, a), self._g(gen, b)
        adv_ab = losses.lsgan_loss(self._d(dis["b"], fake_b), True)
        adv_ba = losses.lsgan_loss(self._d(dis["a"], fake_a), True)
        cycle_a = losses.l1_loss(self._g(gen, fake_b), a)
        cycle_b = losses.l1_loss(self._g(gen, fake_a), b)
        loss = adv_ab + adv_ba + cfg.cycle_weight * (cycle_a + cycle_b)
        logs = {"g_adv_ab": adv_ab, "g_adv_ba": adv_ba, "cycle_a": cycle_a, "cycle_b": cycle_b}
        return loss, (fake_a, fake_b, logs)

    def predict(self, state: TrainState, batch):
        """{"translated": G(a), "translated_ba": G(b), "unit": G(a) on [0, 1]}, `(B, H, W, 1)` in [-1, 1]."""
        gen = state.params["generator"]
        ab, ba = self._g(gen, batch["a"]), self._g(gen, batch["b"])
        return {"translated": ab, "translated_ba": ba, "unit": jnp.clip(to_unit(ab), 0.0, 1.0)}

    def eval_step(self, state: TrainState, batch):
        gen = state.params["generator"]
        a, b, mask = batch["a"], batch["b"], batch["mask"]
        f = lambda x: self._g(gen, x)  # noqa: E731
        return {**paired_scores(f(a), b, mask, "_ab"), **paired_scores(f(b), a, mask, "_ba"),
                "cycle_a": cycle_error(f, a, mask), "cycle_b": cycle_error(f, b, mask)}

    def infer(self, state: TrainState, inputs, progress: bool = True):
        """The other contrast of an MR volume of either trained contrast (G slice by slice; see
        `kfjax.methods.common.paired_gan.infer_volume`). Needs a model trained on `data.recipe=mr`."""
        d = self.config.data
        if d.recipe != "mr":
            raise ConfigError(f"kfjax infer {self.name} needs a model trained on data.recipe=mr, not {d.recipe!r}")
        return infer_volume(inputs["volume"], self._g, state.params["generator"], d.downsample, 4, d.batch_size,
                            progress)
