"""Two-player GAN pieces shared by CycleGAN and ADN: unpaired data, LSGAN discriminator updates, scores.

`UnpairedMethod` gives a method the unpaired two-domain data of `kfjax.data.unpaired` (config field
`data: UnpairedDataConfig`), the batch spec `{"a", "b"}` and the image grid of the MAR recipe. The
discriminator update is the LSGAN one: 0.5 (MSE(D(real), 1) + MSE(D(fake), 0)), with the fakes detached.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import jax
import jax.numpy as jnp

from kfjax import losses
from kfjax.data.synthesis import synthesis_grid
from kfjax.data.unpaired import unpaired_dataset
from kfjax.errors import ConfigError
from kfjax.methods.common.mar import unit_scores
from kfjax.physics.geometry import preset
from kfjax.train.method import Method
from kfjax.units import FOV_MM, to_unit


def lsgan_d_loss(d_real: jax.Array, d_fake: jax.Array) -> jax.Array:
    """0.5 (MSE(D(real), 1) + MSE(D(fake), 0)): the discriminator's LSGAN loss."""
    return 0.5 * (losses.lsgan_loss(d_real, True) + losses.lsgan_loss(d_fake, False))


def discriminator_update(apply_d: Callable, params, real: jax.Array, fake: jax.Array):
    """(LSGAN loss, gradient w.r.t. `params`) of a discriminator `apply_d(params, x)`; `fake` is detached."""
    fake = jax.lax.stop_gradient(fake)
    return jax.value_and_grad(lambda p: lsgan_d_loss(apply_d(p, real), apply_d(p, fake)))(params)


def translation_scores(pred: jax.Array, target: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """PSNR (dB) and SSIM of [-1, 1] images mapped to [0, 1] over `mask` (1 = scored): `{name: (B,)}`."""
    return unit_scores(jnp.clip(to_unit(pred), 0.0, 1.0), to_unit(target), 1.0 - mask)


class UnpairedMethod(Method, abc.ABC):
    """A method trained on unpaired images `a` (domain A) and `b` (domain B) from a `kfjax.data.unpaired`
    recipe; evaluated on paired `a`, truth `b` and a score `mask`."""

    def __init__(self, config):
        super().__init__(config)
        self._datasets: dict[str, object] = {}

    def dataset(self, split: str):
        if split not in self._datasets:
            d = self.config.data
            self._datasets[split] = unpaired_dataset(d.recipe, split, d, self.config.seed)
        return self._datasets[split]

    def grid(self) -> tuple[int, float]:
        """(image side in pixels, pixel size in mm) of the square training images of the MAR and toy recipes;
        mm is 0 for the toy recipe."""
        d = self.config.data
        if d.recipe == "invert":
            return d.size, 0.0
        if d.recipe != "mar":
            raise ConfigError(f"data.recipe '{d.recipe}' has no square CT grid; this method needs mar or invert")
        side = preset(d.geometry).image_shape[0]
        if side % d.downsample:
            raise ConfigError(f"image size {side} is not divisible by data.downsample={d.downsample}")
        return side // d.downsample, FOV_MM / side * d.downsample

    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the training images of the configured recipe."""
        d = self.config.data
        if d.recipe == "mr":
            return synthesis_grid(d.downsample)
        if d.recipe == "xray":
            return d.size, d.size
        side = self.grid()[0]
        return side, side

    def batch_spec(self, batch_size: int):
        image = jax.ShapeDtypeStruct((batch_size, *self.image_shape(), 1), jnp.float32)
        return {"a": image, "b": image}
