"""Deep image prior (Ulyanov et al., CVPR 2018) as a per-image optimisation, batched with `vmap`.

For every image a fresh `kfjax.nn.SkipNet` f_θ is fitted from a fixed random input z ~ U(0, 0.1) (depth
`input_depth`) to a corrupted observation under a forward model; the network structure, not training
data, is the prior, and the fixed iteration count is the regulariser. Each iteration perturbs z with fresh
Gaussian noise (std `reg_noise_std`), takes one Adam step (lr 0.01) on the weighted mean squared data term,
and folds the output into an exponential average (weight `ema`, 0.99), which is the result.

    fit = make_fit(DIPConfig(), image_shape=(H, W), forward=None)
    out = fit(target, weight, key)   # {"image": (B, H, W, 1) in [0, 1], "last": ..., "loss": (B,)}

Data terms: `forward=None` fits the image itself (`target` (B, H, W, 1), e.g. denoising or, for metal
artifact reduction, the LI image with `weight` = 1 outside the metal); otherwise `forward` maps a unit image
(1, H, W, 1) to the target's space (1, ...) (e.g. a CT projector: fit the sinogram outside the metal trace).
`mar_dip` builds both MAR variants from `kfjax.data.mar` arrays. Defaults are small for CPUs; the paper's
denoising network is `channels=128 scales=5 iterations=1800..3000`.

As a method (`kfjax eval dip --set fit.data_term=sinogram data.max_pairs=10`), DIP is a per-case method:
nothing is trained; `eval_step` fits every pair of the split and scores it like every MAR method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kfjax.config import BaseConfig, BaseDataConfig
from kfjax.data.mar import mar_data
from kfjax.data.pipeline import ArrayDataset
from kfjax.data.unpaired import downsample as block_downsample
from kfjax.errors import ConfigError
from kfjax.methods.common.mar import by_size_group, unit_scores
from kfjax.methods.registry import register
from kfjax.nn.skip import SkipNet
from kfjax.physics.geometry import preset
from kfjax.physics.metal import scale_geometry
from kfjax.physics.projector import make_projector
from kfjax.train.method import PerCaseMethod
from kfjax.units import FOV_MM, MU_RANGE, to_unit_range

__all__ = ["DIPConfig", "DIPMethod", "DIPMethodConfig", "make_fit", "mar_dip", "mar_geometry"]


@dataclasses.dataclass(frozen=True)
class DIPConfig:
    channels: int = 32  # channels of every down/up level (paper: 128)
    scales: int = 4  # encoder-decoder levels (paper: 5); image sides must divide by 2**scales
    skip_channels: int = 4  # skip-branch channels per level (paper: 4)
    input_depth: int = 32  # channels of the random input z (paper: 32)
    input_scale: float = 0.1  # z ~ U(0, input_scale)
    iterations: int = 300  # Adam steps per image (paper: 1800-3000); the only stopping rule
    lr: float = 0.01  # Adam learning rate
    reg_noise_std: float = 1.0 / 30.0  # std of the fresh perturbation of z at every step
    ema: float = 0.99  # exponential averaging weight of the reported output
    data_term: str = "image"  # image: fit the LI image outside the metal; sinogram: the LI sinogram outside the trace


def make_fit(cfg: DIPConfig, image_shape: tuple[int, int], forward: Callable | None = None):
    """A jitted `fit(target, weight, key) -> {"image", "last", "loss"}` batched over the leading axis.

    key: one key (split into one per row) or a (B,) array of per-row keys.
    target, weight: (B, ...) of one shape (the image (B, H, W, 1) or the forward model's output space).
    Returns image: (B, H, W, 1) the averaged output in [0, 1]; last: the final output; loss: (B,) final data term.
    """
    h, w = image_shape
    if h % 2**cfg.scales or w % 2**cfg.scales:
        raise ConfigError(f"DIP image {h}x{w} must be divisible by 2**scales = {2**cfg.scales}; lower scales")
    net = SkipNet(1, (cfg.channels,) * cfg.scales, (cfg.channels,) * cfg.scales, (cfg.skip_channels,) * cfg.scales)
    tx = optax.adam(cfg.lr)
    model = forward if forward is not None else (lambda u: u)

    def one(target, weight, key):
        k_z, k_init, k_steps = jax.random.split(key, 3)
        z = cfg.input_scale * jax.random.uniform(k_z, (1, h, w, cfg.input_depth))
        params = net.init(k_init, z)["params"]

        def data_loss(params, z_in):
            out = net.apply({"params": params}, z_in)
            residual = (model(out) - target[None]) ** 2 * weight[None]
            return jnp.sum(residual) / jnp.maximum(jnp.sum(weight), 1.0), out

        def step(carry, k):
            params, opt, avg, i = carry
            z_in = z + cfg.reg_noise_std * jax.random.normal(k, z.shape)
            (loss, out), grads = jax.value_and_grad(data_loss, has_aux=True)(params, z_in)
            updates, opt = tx.update(grads, opt, params)
            params = optax.apply_updates(params, updates)
            avg = jnp.where(i == 0, out, cfg.ema * avg + (1.0 - cfg.ema) * out)
            return (params, opt, avg, i + 1), (loss, out)

        carry = (params, tx.init(params), jnp.zeros((1, h, w, 1)), jnp.zeros((), jnp.int32))
        (params, _, avg, _), (loss, _) = jax.lax.scan(step, carry, jax.random.split(k_steps, cfg.iterations))
        last = net.apply({"params": params}, z)
        return {"image": avg[0], "last": last[0], "loss": loss[-1]}

    @jax.jit
    def fit(target, weight, key):
        keys = jax.random.split(key, target.shape[0]) if key.ndim == 0 else key
        return jax.vmap(one)(target, weight.astype(target.dtype), keys)

    return fit


def mar_geometry(geometry, pixel_mm: float, downsample: int = 1):
    """The MAR data's geometry (`geometry` scaled to the data's `pixel_mm`) seen by an image block-averaged
    by `downsample`: the same source, detector and rays, pixels `downsample` times larger, fewer of them."""
    fan = scale_geometry(geometry, pixel_mm)
    h, w = fan.image_shape
    return dataclasses.replace(fan, pixel_size=pixel_mm * downsample, image_shape=(h // downsample, w // downsample))


def _mar_fit(cfg: DIPConfig, size: int, pixel_mm: float, fan, data_term: str):
    """(fit, to_target) for MAR: `to_target(arrays) -> (target, weight)` of the data term, `fit` as `make_fit`."""
    if data_term == "image":
        def to_target(a, downsample):
            target = block_downsample(to_unit_range(a["li_image"]).astype(np.float32), downsample)
            return target, 1.0 - block_downsample(a["metal_mask"].astype(np.float32), downsample, "max")

        return make_fit(cfg, (size, size)), to_target
    if data_term != "sinogram":
        raise ConfigError(f"unknown DIP data term {data_term!r}; choose 'image' or 'sinogram'")
    project, _ = make_projector(fan, (size, size))
    norm = MU_RANGE * size * pixel_mm  # sinogram scale: the line integral of MU_RANGE across the image

    def to_target(a, downsample):
        if (fan.n_views, fan.n_det) != tuple(a["li_sinogram"].shape[1:3]):
            raise ConfigError(f"the sinograms have {a['li_sinogram'].shape[1:3]} (views, bins) but the DIP "
                              f"geometry has {(fan.n_views, fan.n_det)}; pass the preset the data were simulated with")
        return a["li_sinogram"].astype(np.float32) / norm, 1.0 - a["metal_trace"].astype(np.float32)

    return make_fit(cfg, (size, size), lambda u: project(u * MU_RANGE) / norm), to_target


def mar_dip(cfg: DIPConfig, arrays: dict[str, np.ndarray], data_term: str = "image", downsample: int = 1,
            batch_size: int = 4, geometry="adn", seed: int = 0) -> np.ndarray:
    """DIP metal artifact reduction of every pair of `kfjax.data.mar.mar_data` arrays -> (N, H, W, 1) in [0, 1].

    data_term "image": fit `to_unit_range(li_image)` outside the metal mask. "sinogram": fit the LI sinogram
    outside the metal trace through the fan-beam projector (the data's geometry: `geometry` names the preset
    the data were simulated with, scaled to their pixel size, or is a geometry object used as given), with
    μ = MU_RANGE x output. `downsample` block-averages the images (and multiplies the projector's pixel size)
    like `UnpairedDataConfig.downsample`. Pair i uses key fold_in(key(seed), i), so results do not depend on
    `batch_size`.
    """
    n, size = len(arrays["li_image"]), arrays["li_image"].shape[1] // downsample
    pixel = float(arrays["pixel_mm"])
    fan = mar_geometry(preset(geometry), pixel, downsample) if isinstance(geometry, str) else geometry
    fit, to_target = _mar_fit(cfg, size, pixel * downsample, fan, data_term)
    target, weight = to_target(arrays, downsample)
    base = jax.random.key(seed)
    out = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        pad = np.concatenate([idx, np.repeat(idx[-1:], batch_size - len(idx))])  # one compiled shape
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(pad))
        result = fit(target[pad], weight[pad], keys)
        out.append(np.asarray(result["image"])[: len(idx)])
    return np.concatenate(out)


@dataclasses.dataclass(frozen=True)
class DIPDataConfig(BaseDataConfig):
    source: str = "ct"  # ct: real chest-CT slices (fetched once) | phantom: procedural anatomy, no download
    geometry: str = "adn_quarter"  # fan-beam preset the metal is simulated at (adn_quarter: 64², 80 views)
    eval_slice_step: int = 1  # every k-th val/test slice, each with all 10 test masks
    max_pairs: int = 10  # fit only the first N pairs of the split (0: all); each pair is a whole optimisation
    batch_size: int = 1  # pairs fitted at once (vmap); results do not depend on it


@dataclasses.dataclass(frozen=True)
class DIPMethodConfig(BaseConfig):
    seed: int = 0  # seeds z, the network initialisation and the input perturbations (pair i: fold_in(seed, i))
    data: DIPDataConfig = DIPDataConfig()
    fit: DIPConfig = DIPConfig(channels=16, scales=3, iterations=500)


@register("dip")
class DIPMethod(PerCaseMethod):
    """Deep image prior for metal artifact reduction, evaluated per case on the MAR pairs (`kfjax eval dip`)."""

    Config = DIPMethodConfig
    description = "deep image prior: a network fitted per image (image or sinogram data term), no training data"
    paper = "Ulyanov et al., CVPR 2018"

    def __init__(self, config: DIPMethodConfig):
        super().__init__(config)
        side = preset(config.data.geometry).image_shape[0]
        self.fan = mar_geometry(preset(config.data.geometry), FOV_MM / side)
        self.fit, self.to_target = _mar_fit(config.fit, side, FOV_MM / side, self.fan, config.fit.data_term)
        self._datasets: dict[str, ArrayDataset] = {}

    def dataset(self, split: str) -> ArrayDataset:
        if split not in self._datasets:
            d = self.config.data
            a = mar_data(split, d.source, geometry=d.geometry, slice_step=d.eval_slice_step)
            n = len(a["li_image"]) if d.max_pairs <= 0 else min(d.max_pairs, len(a["li_image"]))
            target, weight = self.to_target({k: a[k][:n] for k in ("li_image", "metal_mask", "li_sinogram",
                                                                       "metal_trace")}, 1)
            self._datasets[split] = ArrayDataset(
                target=target, weight=weight, gt=to_unit_range(a["gt_image"][:n]).astype(np.float32),
                metal=a["metal_mask"][:n].astype(np.float32), size_group=a["size_group"][:n],
                index=np.arange(n, dtype=np.int32))
        return self._datasets[split]

    def batch_spec(self, batch_size: int):
        return {}

    def predict(self, state, batch):
        """{"image": (B, H, W, 1) the averaged fit in [0, 1]} of each pair; pair i uses fold_in(key(seed), i)."""
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(self.config.seed), i))(batch["index"])
        return {"image": self.fit(batch["target"], batch["weight"], keys)["image"]}

    def eval_step(self, state, batch):
        values = unit_scores(self.predict(state, batch)["image"], batch["gt"], batch["metal"])
        return values | by_size_group(values, batch["size_group"])
