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

from kfjax import losses
from kfjax.config import BaseConfig, BaseDataConfig, BaseModelConfig, OptimConfig, TrainConfig
from kfjax.data.mar import mar_data
from kfjax.data.pipeline import ArrayDataset
from kfjax.errors import ConfigError
from kfjax.methods.common.mar import MARInferConfig, by_size_group, correct_volume, unit_scores
from kfjax.methods.common.supervised import SupervisedMethod
from kfjax.methods.registry import register
from kfjax.nn.dudonet import MODES, DuDoNet
from kfjax.physics.geometry import preset
from kfjax.physics.metal import scale_geometry
from kfjax.train.method import Inference
from kfjax.train.state import TrainState
from kfjax.units import FOV_MM, MU_RANGE, MU_WATER_70KEV, hu_to_mu, mu_to_hu

SINO_SCALE = 0.25  # normalised sinograms are line integrals x SINO_SCALE (a 360 mm water path is about 1.7)


@dataclasses.dataclass(frozen=True)
class DataConfig(BaseDataConfig):
    source: str = "ct"  # "ct": real chest-CT slices (fetched once); "phantom": procedural anatomy
    geometry: str = "adn"  # fan-beam preset: adn (256²), dudonet (416², 640 views), dudonet_cvpr (416², 320)
    material: str = "Ti"  # metal: Ti, Fe, Cu, Au
    masks_per_slice: int = 4  # training masks drawn per training slice (of the 90)
    n_phantoms: int = 64  # procedural training slices (source=phantom; val/test get a fifth of it)
    eval_slice_step: int = 1  # evaluate on every k-th val/test slice (each with all 10 test masks)
    pixel_size: float = 0.0  # mm; 0 = the slices' own: the chest CT's (and the phantoms') 360 mm FOV / size
    batch_size: int = 8  # global batch (paper: 8)


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseModelConfig):
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
class DuDoNetConfig(BaseConfig):
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    # paper: Adam(0.5, 0.999), 2e-4, halved periodically; clipping for stability of the dual-domain graph
    optim: OptimConfig = OptimConfig(lr=2e-4, b1=0.5, b2=0.999, schedule="step", decay_every=2000, grad_clip=1.0)
    train: TrainConfig = TrainConfig(steps=6000, log_every=20, checkpoint_every=500)
    infer: MARInferConfig = MARInferConfig()


def unit_range(normalised: jax.Array) -> jax.Array:
    """Normalised image (μ / μ_water at 70 keV) -> [0, 1] on the metric window μ in [0, MU_RANGE] 1/mm."""
    return jnp.clip(normalised * MU_WATER_70KEV / MU_RANGE, 0.0, 1.0)


@register("dudonet")
class DuDoNetMethod(SupervisedMethod):
    Config = DuDoNetConfig
    description = "dual-domain metal artifact reduction: SE-Net, Radon inversion layer, IE-Net (+ baselines)"
    paper = "Lin et al., CVPR 2019"
    inference = Inference(inputs=("volume",), help="metal artifact reduction of a CT volume in HU")

    def __init__(self, config: DuDoNetConfig):
        super().__init__(config)
        if config.model.mode not in MODES:
            raise ConfigError(f"model.mode must be one of {', '.join(MODES)}, got {config.model.mode!r}")
        if config.data.source not in ("ct", "phantom"):
            raise ConfigError(f"data.source must be 'ct' or 'phantom', got {config.data.source!r}")
        self._datasets: dict[str, ArrayDataset] = {}

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
                li_image=a["li_image"] / MU_WATER_70KEV,
                ma_image=a["ma_image"] / MU_WATER_70KEV,
                gt_image=a["gt_image"] / MU_WATER_70KEV,
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

    def network(self) -> DuDoNet:
        m = self.config.model
        return DuDoNet(self.geometry(), 1.0 / MU_WATER_70KEV, SINO_SCALE, mode=m.mode, se_channels=tuple(m.se_channels),
                       ie_channels=tuple(m.ie_channels), norm=m.norm, filter=m.filter,
                       remat=m.remat == "blocks")

    def network_inputs(self, batch) -> tuple:
        return batch["li_sinogram"], batch["metal_trace"], batch["li_image"]

    def batch_spec(self, batch_size: int):
        g = self.geometry()
        sino = jax.ShapeDtypeStruct((batch_size, g.n_views, g.n_det, 1), jnp.float32)
        image = jax.ShapeDtypeStruct((batch_size, *g.image_shape, 1), jnp.float32)
        return {"li_sinogram": sino, "gt_sinogram": sino, "metal_trace": sino, "li_image": image, "ma_image": image,
                "gt_image": image, "metal_mask": image, "size_group": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

    # ---------------------------------------------------------------- training
    def loss(self, out, batch):
        w = self.config.loss
        keep = 1.0 - batch["metal_mask"]
        terms = {"image": losses.l1_loss(out["x_out"], batch["gt_image"], mask=keep)}
        if "y_out" in out:
            terms["sinogram"] = losses.l1_loss(out["y_out"], batch["gt_sinogram"], mask=batch["metal_trace"])
            terms["consistency"] = losses.l1_loss(out["x_hat"], batch["gt_image"], mask=keep)
        loss = sum(getattr(w, name) * value for name, value in terms.items())
        return loss, {f"l1_{k}": v for k, v in terms.items()}

    # ---------------------------------------------------------------- evaluation
    def predict(self, state: TrainState, batch):
        return dict(self.apply(state.variables("model"), batch))

    def eval_step(self, state: TrainState, batch):
        out = self.apply(state.variables("model"), batch)
        metal, gt = batch["metal_mask"], unit_range(batch["gt_image"])
        values = {}
        for prefix, image in (("", out["x_out"]), ("li_", batch["li_image"]), ("ma_", batch["ma_image"])):
            values.update({f"{prefix}{k}": v for k, v in unit_scores(unit_range(image), gt, metal).items()})
        return values | by_size_group({k: values[k] for k in ("psnr", "ssim")}, batch["size_group"])

    # ---------------------------------------------------------------- a user's volume
    def infer(self, state: TrainState, inputs, progress: bool = True):
        """Metal artifact reduction of a CT volume in HU (`kfjax infer dudonet`).

        Each metal slice is forward-projected (μ at 70 keV) with the training geometry, the trace of the
        thresholded metal is filled by LI, and the network corrects the LI sinogram and image. A real scan's
        artifacts are already in its image, so this path sees LI of a projected image, not of raw data.
        """
        from kfjax.physics.fbp import fbp
        from kfjax.physics.metal import interpolate_trace
        from kfjax.physics.projector import make_projector
        from kfjax.train.loop import notice

        geometry = self.geometry()
        forward, _ = make_projector(geometry)

        @jax.jit
        def correct(st, hu, metal):
            sinogram = forward(hu_to_mu(hu))
            trace = forward(metal) > 0
            li = interpolate_trace(sinogram, trace)
            batch = {"li_sinogram": li * SINO_SCALE, "metal_trace": trace.astype(hu.dtype),
                     "li_image": fbp(li, geometry, self.config.model.filter) / MU_WATER_70KEV}
            return mu_to_hu(self.apply(st.variables("model"), batch)["x_out"] * MU_WATER_70KEV)

        return correct_volume(inputs["volume"], lambda hu, metal: correct(state, hu, metal), geometry.image_shape[0],
                              self.pixel_mm, self.config.infer.metal_threshold, self.config.data.batch_size, progress,
                              notice)
