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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kfjax.data.mar import MU_RANGE, to_unit_range
from kfjax.data.unpaired import downsample as block_downsample
from kfjax.errors import ConfigError
from kfjax.nn.skip import SkipNet

__all__ = ["DIPConfig", "make_fit", "mar_dip", "mar_geometry"]


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
    seed: int = 0  # seeds z, the network initialisation and the input perturbations


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
    from kfjax.physics.metal import scale_geometry

    fan = scale_geometry(geometry, pixel_mm)
    h, w = fan.image_shape
    return dataclasses.replace(fan, pixel_size=pixel_mm * downsample, image_shape=(h // downsample, w // downsample))


def mar_dip(cfg: DIPConfig, arrays: dict[str, np.ndarray], data_term: str = "image", downsample: int = 1,
            batch_size: int = 4, geometry="adn") -> np.ndarray:
    """DIP metal artifact reduction of every pair of `kfjax.data.mar.mar_data` arrays -> (N, H, W, 1) in [0, 1].

    data_term "image": fit `to_unit_range(li_image)` outside the metal mask. "sinogram": fit the LI sinogram
    outside the metal trace through the fan-beam projector (the data's geometry: `geometry` names the preset
    the data were simulated with, scaled to their pixel size, or is a geometry object used as given), with
    μ = MU_RANGE x output. `downsample` block-averages the images (and multiplies the projector's pixel size)
    like `UnpairedDataConfig.downsample`. Pair i uses key fold_in(key(seed), i), so results do not depend on
    `batch_size`.
    """
    from kfjax.physics.geometry import preset
    from kfjax.physics.projector import make_projector

    n, size = len(arrays["li_image"]), arrays["li_image"].shape[1] // downsample
    if data_term == "image":
        target = block_downsample(to_unit_range(arrays["li_image"]).astype(np.float32), downsample)
        weight = 1.0 - block_downsample(arrays["metal_mask"].astype(np.float32), downsample, "max")
        fit = make_fit(cfg, (size, size))
    elif data_term == "sinogram":
        pixel = float(arrays["pixel_mm"]) * downsample
        fan = (mar_geometry(preset(geometry), float(arrays["pixel_mm"]), downsample) if isinstance(geometry, str)
               else geometry)
        project, _ = make_projector(fan, (size, size))
        if (fan.n_views, fan.n_det) != tuple(arrays["li_sinogram"].shape[1:3]):
            raise ConfigError(f"the sinograms have {arrays['li_sinogram'].shape[1:3]} (views, bins) but the DIP "
                              f"geometry has {(fan.n_views, fan.n_det)}; pass the preset the data were simulated with")
        norm = MU_RANGE * size * pixel  # sinogram scale: the line integral of MU_RANGE across the image
        target = arrays["li_sinogram"].astype(np.float32) / norm
        weight = 1.0 - arrays["metal_trace"].astype(np.float32)
        fit = make_fit(cfg, (size, size), lambda u: project(u * MU_RANGE) / norm)
    else:
        raise ConfigError(f"unknown DIP data term {data_term!r}; choose 'image' or 'sinogram'")
    base = jax.random.key(cfg.seed)
    out = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        pad = np.concatenate([idx, np.repeat(idx[-1:], batch_size - len(idx))])  # one compiled shape
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(pad))
        result = fit(target[pad], weight[pad], keys)
        out.append(np.asarray(result["image"])[: len(idx)])
    return np.concatenate(out)

