"""DuDoNet metal artifact reduction (Lin et al., CVPR 2019) and its single-domain baselines.

Data: `kfjax.data.mar` (real chest-CT slices or procedural anatomy x CNN-MAR-style metal masks through the
polychromatic simulator, ADN's 256² fan-beam geometry by default). Network: `kfjax.nn.DuDoNet`.
Losses (equal weights by default):
    sinogram     L1 of Y_out - Y_gt inside the metal trace (the only bins SE-Net changes)
    consistency  L1 of RIL(Y_out) - X_gt outside the metal (the Radon consistency loss)
    image        L1 of X_out - X_gt outside the metal
Metrics: PSNR and SSIM (7x7 uniform window) outside the metal on μ mapped to [0, 1] by clipping to
[0, 0.05] 1/mm (data range 1), overall and per metal size group (g0 = largest metal ... g4 = smallest), with
the uncorrected and LI images as baselines.

    kfjax train dudonet                                   # DuDoNet on the real chest CT
    kfjax train dudonet --set model.mode=image            # the image-domain baseline
    kfjax train dudonet --set data.source=phantom         # procedural anatomy, no download
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from kfjax import losses, metrics
from kfjax.config import OptimConfig, TrainConfig
from kfjax.data.mar import MU_RANGE, mar_data
from kfjax.data.pipeline import ArrayDataset
from kfjax.errors import ConfigError
from kfjax.methods.base import Method
from kfjax.nn.dudonet import MODES, DuDoNet
from kfjax.physics.geometry import preset
from kfjax.physics.metal import scale_geometry
from kfjax.registry import register
from kfjax.train.optim import make_optimizer
from kfjax.train.state import TrainState

MU_WATER = 0.0192  # 1/mm at 70 keV: normalised images are μ / MU_WATER
SINO_SCALE = 0.25  # normalised sinograms are line integrals x SINO_SCALE (a 360 mm water path is about 1.7)
N_GROUPS = 5
FOV_MM = 360.0  # in-plane field of view of the chest CT (512 x 0.703 mm) and of the procedural slices


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "ct"  # "ct": real chest-CT slices (fetched once); "phantom": procedural anatomy
    geometry: str = "adn"  # fan-beam preset: adn (256²), dudonet (416², 640 views), dudonet_cvpr (416², 320)
    material: str = "Ti"  # metal: Ti, Fe, Cu, Au
    masks_per_slice: int = 4  # training masks drawn per training slice (of the 90)
    n_phantoms: int = 64  # procedural training slices (source=phantom; val/test get a fifth of it)
    eval_slice_step: int = 1  # evaluate on every k-th val/test slice (each with all 10 test masks)
    pixel_size: float = 0.0  # mm; 0 = the slices' own: the chest CT's (and the phantoms') 360 mm FOV / size
    batch_size: int = 8  # global batch (paper: 8)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    mode: str = "dual"  # dual (DuDoNet) | image (IE-Net only) | sinogram (SE-Net + RIL only)
    se_channels: tuple[int, ...] = (16, 32, 64, 128)  # SE-Net features per level (finest first)
    ie_channels: tuple[int, ...] = (16, 32, 64, 128)  # IE-Net features per level
    norm: str = "group"  # group | batch | instance | layer | none
    filter: str = "ram-lak"  # ramp filter of the Radon inversion layer


@dataclasses.dataclass(frozen=True)
class LossConfig:
    sinogram: float = 1.0  # weight of the sinogram L1 inside the trace
    consistency: float = 1.0  # weight of the Radon-consistency L1 (0: the "without RC loss" ablation)
    image: float = 1.0  # weight of the image L1


@dataclasses.dataclass(frozen=True)
class DuDoNetConfig:
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    # paper: Adam(0.5, 0.999), 2e-4, halved periodically; clipping for stability of the dual-domain graph
    optim: OptimConfig = OptimConfig(lr=2e-4, b1=0.5, b2=0.999, schedule="step", decay_every=2000, grad_clip=1.0)
    train: TrainConfig = TrainConfig(steps=6000, log_every=20, checkpoint_every=500)


def unit_range(normalised: jax.Array) -> jax.Array:
    """Normalised image (μ / μ_water) -> [0, 1] on the metric window μ in [0, MU_RANGE] 1/mm."""
    return jnp.clip(normalised * MU_WATER / MU_RANGE, 0.0, 1.0)


def image_metrics(pred: jax.Array, target: jax.Array, metal: jax.Array) -> dict[str, jax.Array]:
    """PSNR (dB) and SSIM outside the metal of normalised images `(B, H, W, 1)`: `{name: (B,)}`."""
    keep = 1.0 - metal
    p, t = unit_range(pred), unit_range(target)
    return {"psnr": metrics.psnr(p, t, 1.0, mask=keep), "ssim": metrics.ssim(p, t, 1.0, mask=keep)}


@register("dudonet")
class DuDoNetMethod(Method):
    Config = DuDoNetConfig
    description = "dual-domain metal artifact reduction: SE-Net, Radon inversion layer, IE-Net (+ baselines)"
    paper = "Lin et al., CVPR 2019"

    def __init__(self, config: DuDoNetConfig):
        super().__init__(config)
        if config.model.mode not in MODES:
            raise ConfigError(f"model.mode must be one of {', '.join(MODES)}, got {config.model.mode!r}")
        if config.data.source not in ("ct", "phantom"):
            raise ConfigError(f"data.source must be 'ct' or 'phantom', got {config.data.source!r}")
        self._datasets: dict[str, ArrayDataset] = {}
        self._model = None

    # ---------------------------------------------------------------- data
    def _arrays(self, split: str) -> dict[str, np.ndarray]:
        d = self.config.data
        params = {
            "geometry": d.geometry,
            "material": d.material,
            "masks_per_slice": d.masks_per_slice,
            "seed": 0,
            "slice_step": 1 if split == "train" else d.eval_slice_step,
        }
        if d.source == "phantom":
            params["n_phantoms"] = d.n_phantoms
        return mar_data(split, d.source, **params)

    def dataset(self, split: str) -> ArrayDataset:
        if split not in self._datasets:
            a = self._arrays(split)
            if abs(float(a["pixel_mm"]) - self.pixel_mm) > 1e-4:
                raise ConfigError(f"the {split} data have {float(a['pixel_mm'])} mm pixels, the model {self.pixel_mm}")
            self._datasets[split] = ArrayDataset(
                li_sinogram=a["li_sinogram"] * SINO_SCALE,
                gt_sinogram=a["gt_sinogram"] * SINO_SCALE,
                metal_trace=a["metal_trace"].astype(np.float32),
                li_image=a["li_image"] / MU_WATER,
                ma_image=a["ma_image"] / MU_WATER,
                gt_image=a["gt_image"] / MU_WATER,
                metal_mask=a["metal_mask"].astype(np.float32),
                size_group=a["size_group"],
            )
        return self._datasets[split]

    @property
    def pixel_mm(self) -> float:
        """Pixel size of the data and the geometry (mm)."""
        d = self.config.data
        return d.pixel_size if d.pixel_size > 0 else FOV_MM / preset(d.geometry).image_shape[0]

    def geometry(self):
        """The fan-beam geometry of the data (preset scaled to the pixel size)."""
        return scale_geometry(preset(self.config.data.geometry), self.pixel_mm)

    @property
    def model(self) -> DuDoNet:
        if self._model is None:
            m = self.config.model
            self._model = DuDoNet(
                self.geometry(),
                1.0 / MU_WATER,
                SINO_SCALE,
                mode=m.mode,
                se_channels=tuple(m.se_channels),
                ie_channels=tuple(m.ie_channels),
                norm=m.norm,
                filter=m.filter,
            )
        return self._model

    def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """Zeros with the shapes of a batch (restoring a checkpoint needs no data)."""
        g = self.geometry()
        sino, image = (batch_size, g.n_views, g.n_det, 1), (batch_size, *g.image_shape, 1)
        names = {
            "li_sinogram": sino,
            "gt_sinogram": sino,
            "metal_trace": sino,
            "li_image": image,
            "ma_image": image,
            "gt_image": image,
            "metal_mask": image,
        }
        return {k: np.zeros(shape, np.float32) for k, shape in names.items()} | {
            "size_group": np.zeros(batch_size, np.int32)
        }

    # ---------------------------------------------------------------- training
    def _apply(self, variables, batch, train: bool):
        return self.model.apply(variables, batch["li_sinogram"], batch["metal_trace"], batch["li_image"], train)

    def init(self, key: jax.Array, batch) -> TrainState:
        init_key, state_key = jax.random.split(key)
        variables = self.model.init(init_key, batch["li_sinogram"], batch["metal_trace"], batch["li_image"])
        tx = make_optimizer(self.config.optim, self.config.train.steps)
        stats = {"model": variables["batch_stats"]} if "batch_stats" in variables else {}
        return TrainState.create({"model": variables["params"]}, {"model": tx}, state_key, stats)

    def _loss(self, params, state: TrainState, batch):
        variables = {**state.variables("model"), "params": params}
        mutable = ["batch_stats"] if "model" in state.batch_stats else []
        out, updates = self.model.apply(
            variables, batch["li_sinogram"], batch["metal_trace"], batch["li_image"], True, mutable=mutable
        )
        w = self.config.loss
        keep = 1.0 - batch["metal_mask"]
        terms = {"image": losses.l1_loss(out["x_out"], batch["gt_image"], mask=keep)}
        if "y_out" in out:
            terms["sinogram"] = losses.l1_loss(out["y_out"], batch["gt_sinogram"], mask=batch["metal_trace"])
            terms["consistency"] = losses.l1_loss(out["x_hat"], batch["gt_image"], mask=keep)
        loss = sum(getattr(w, name) * value for name, value in terms.items())
        return loss, (updates, {"loss": loss, **{f"l1_{k}": v for k, v in terms.items()}})

    def train_step(self, state: TrainState, batch, key):
        grads, (updates, logs) = jax.grad(self._loss, has_aux=True)(state.params["model"], state, batch)
        stats = {"model": updates["batch_stats"]} if "batch_stats" in updates else {}
        return state.apply_gradients({"model": grads}, **stats), logs

    # ---------------------------------------------------------------- evaluation
    def predict(self, state: TrainState, batch):
        out = self._apply(state.variables("model"), batch, False)
        return {k: v for k, v in out.items()}

    def eval_step(self, state: TrainState, batch):
        out = self._apply(state.variables("model"), batch, False)
        metal, gt = batch["metal_mask"], batch["gt_image"]
        values = {}
        for name, image in (("", out["x_out"]), ("li_", batch["li_image"]), ("ma_", batch["ma_image"])):
            for k, v in image_metrics(image, gt, metal).items():
                values[f"{name}{k}"] = v
        group = batch["size_group"]
        for g in range(N_GROUPS):  # non-finite values are left out of the exact means: NaN marks other groups
            for k in ("psnr", "ssim"):
                values[f"{k}_g{g}"] = jnp.where(group == g, values[k], jnp.nan)
        return values

    # ---------------------------------------------------------------- a user's volume
    def infer_volume(self, state: TrainState, volume, progress: bool = True, metal_threshold: float = 2500.0):
        """Metal artifact reduction of a CT volume in HU (`kfjax infer dudonet`); see `kfjax.methods.mar_infer`.

        Each metal slice is forward-projected (70 keV μ) with the training geometry, the trace of the
        thresholded metal is filled by LI, and the network corrects the LI sinogram and image. A real scan's
        artifacts are already in its image, so this path sees LI of a projected image, not of raw data.
        """
        from kfjax.methods.mar_infer import correct_volume
        from kfjax.physics.fbp import fbp
        from kfjax.physics.metal import hu_to_mu, interpolate_trace, mu_to_hu
        from kfjax.physics.projector import make_projector
        from kfjax.train.loop import notice

        geometry = self.geometry()
        forward, _ = make_projector(geometry)

        def correct(st, hu, metal):
            sinogram = forward(hu_to_mu(hu, MU_WATER))
            trace = forward(metal) > 0
            li = interpolate_trace(sinogram, trace)
            batch = {
                "li_sinogram": li * SINO_SCALE,
                "metal_trace": trace.astype(hu.dtype),
                "li_image": fbp(li, geometry, self.config.model.filter) / MU_WATER,
            }
            return mu_to_hu(self._apply(st.variables("model"), batch, False)["x_out"] * MU_WATER, MU_WATER)

        jitted = jax.jit(correct)
        return correct_volume(
            volume,
            lambda hu, metal: jitted(state, hu, metal),
            geometry.image_shape[0],
            self.pixel_mm,
            metal_threshold,
            self.config.data.batch_size,
            progress,
            notice,
        )
