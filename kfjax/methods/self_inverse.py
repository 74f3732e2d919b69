"""Self-inverse network ("one2one", Shen et al., ISBI 2020 / arXiv 1909.04104): one generator for T1w <-> T2w.

MR contrasts of one patient are in one-to-one correspondence, so one function f with f(f(x)) = x can serve
both directions: f(T1w) = T2w and f(T2w) = T1w. The paired version is pix2pix with a single generator trained
on both directions: each sample's (input, output) pair is swapped with probability 0.5 inside the jitted
step, from the step key (`model.swap=random`; `alternate` swaps the whole batch every other step, the
reference code's alternating runs; `none` is pix2pix). Half the parameters of two pix2pix models, twice
the training pairs. One conditional PatchGAN judges the (input, output) pairs of both directions;
`model.direction_discriminators=true` gives each direction its own (the ablation). Everything else is
pix2pix (`kfjax.methods.common.paired_gan`: U-Net + tanh, L1 x 100, vanilla GAN, Adam beta1 0.5;
CPU-scale defaults, paper scale below).

Data: the simulated paired slices of `kfjax.data.synthesis` (`data.source` = A, `data.target` = B).
Metrics for both directions on [0, 1] in the brain mask: `l1_ab`, `psnr_ab`, `ssim_ab` (f(A) vs B), `l1_ba`,
`psnr_ba`, `ssim_ba` (f(B) vs A) and the cycle errors `cycle_a` = |f(f(A)) - A|, `cycle_b` = |f(f(B)) - B|.

    kfjax train self_inverse
    kfjax train self_inverse --set model.channels=64,128,256,512,512 model.d_features=64 model.d_layers=3 \
        optim.lr=2e-4 train.steps=20000                                       # paper scale (a GPU)
    kfjax infer self_inverse --workdir RUN --input t1.nii.gz --out t2.nii.gz --set infer.direction=t1w_to_t2w

For `infer` the direction only names what the output is (the same f serves both); it must be one of the
two trained directions. The unpaired variant is `self_inverse_unpaired` (`kfjax.methods.self_inverse_unpaired`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kfjax.errors import ConfigError
from kfjax.methods.common import paired_gan
from kfjax.methods.common.paired_gan import PairedGANMethod, check_direction, cycle_error, direction_name, paired_scores
from kfjax.methods.registry import register
from kfjax.train.method import Inference
from kfjax.train.state import TrainState
from kfjax.units import to_unit

__all__ = ["SWAPS", "SelfInverseConfig", "SelfInverseMethod"]

SWAPS = ("random", "alternate", "none")


@dataclasses.dataclass(frozen=True)
class ModelConfig(paired_gan.ModelConfig):
    swap: str = "random"  # random: each pair swapped with p 0.5 | alternate: all, every other step | none
    direction_discriminators: bool = False  # one PatchGAN per direction instead of one for both (ablation)


@dataclasses.dataclass(frozen=True)
class SelfInverseConfig(paired_gan.PairedGANConfig):
    model: ModelConfig = ModelConfig()


@register("self_inverse")
class SelfInverseMethod(PairedGANMethod):
    Config = SelfInverseConfig
    description = "one self-inverse generator for both MR contrast directions (one2one: pix2pix + random swaps)"
    paper = "Shen et al., ISBI 2020"
    inference = Inference(inputs=("volume",), help="synthesize the other contrast of an MR volume (either direction)")

    def __init__(self, config: SelfInverseConfig):
        super().__init__(config)
        if config.model.swap not in SWAPS:
            raise ConfigError(f"unknown model.swap '{config.model.swap}'; choose one of {', '.join(SWAPS)}")
        d = config.data
        both = (direction_name(d.source, d.target), direction_name(d.target, d.source))
        self.direction = check_direction(config.infer.direction, both, "one of the two this model was trained for")

    def direction_discriminators(self) -> bool:
        return self.config.model.direction_discriminators

    def training_pairs(self, batch, key: jax.Array, step: jax.Array):
        """(input, output, swapped (B,)): the pair (source, target) or, where swapped, (target, source)."""
        a, b = batch["source"], batch["target"]
        n = a.shape[0]
        swap = self.config.model.swap
        if swap == "random":
            swapped = jax.random.bernoulli(key, 0.5, (n,))
        else:
            swapped = jnp.full((n,), (step % 2 == 1) if swap == "alternate" else False)
        where = swapped[:, None, None, None]
        return jnp.where(where, b, a), jnp.where(where, a, b), swapped

    def predict(self, state: TrainState, batch):
        """{"translated": f(source), "translated_ba": f(target), "unit": f(source) on [0, 1]}, `(B, H, W, 1)`."""
        gen = state.params["generator"]
        ab, ba = self.translate(gen, batch["source"]), self.translate(gen, batch["target"])
        return {"translated": ab, "translated_ba": ba, "unit": jnp.clip(to_unit(ab), 0.0, 1.0)}

    def eval_step(self, state: TrainState, batch):
        gen = state.params["generator"]
        a, b, mask = batch["source"], batch["target"], batch["mask"]
        fa, fb = self.translate(gen, a), self.translate(gen, b)
        f = lambda x: self.translate(gen, x)  # noqa: E731
        return {**paired_scores(fa, b, mask, "_ab"), **paired_scores(fb, a, mask, "_ba"),
                "cycle_a": cycle_error(f, a, mask), "cycle_b": cycle_error(f, b, mask)}

    def infer(self, state: TrainState, inputs, progress: bool = True):
        """The other contrast of a volume of either trained contrast: f applied slice by slice; the direction
        (`infer.direction`) only names the output, f is the same for both."""
        return self.synthesize(state, inputs["volume"], progress)
