"""Pose regression: the learned baseline of POINT² (methods.md §10), a CNN that maps the DRRs at the start pose
and the X-rays of both views straight to a rigid pose update, without points, tracking or geometry.

The network (:class:`kfjax.nn.pose_regressor.PoseRegressor`) sees, per case, the V DRRs rendered at the start
``T_init`` and the V X-rays, each standardised, stacked as 2V channels. Its 6 outputs, times the starts'
half-ranges (radians, then mm: an output of ±1 spans the training perturbation), are the parameters of an
update ``D`` about the CT centre as the start places it, ``init(c)``; the estimate is ``D ∘ T_init``. The
X-ray differs from the DRR by ``T_gt ∘ T_init⁻¹``, a motion in the views' (world) frame, so that is the update
predicted. Loss: the mean distance (mm) between the estimate and the truth over ``loss.points`` bone anchors of
the subject (an mTRE on anchors, not on the evaluation's target points). Cases, starts (redrawn every
training step) and metrics are POINT²'s (:mod:`kfjax.methods.common.registration`).

    kfjax train pose_regression --workdir runs/pose_regression                 # chest CT
    kfjax train pose_regression --workdir runs/pose_regression-head --set data.subject=head
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kfjax.config import BaseConfig, BaseModelConfig, OptimConfig, TrainConfig
from kfjax.errors import ConfigError
from kfjax.methods.common.registration import DataConfig, RegistrationMethod, standardise
from kfjax.methods.registry import register
from kfjax.nn.pose_regressor import PoseRegressor
from kfjax.physics import se3
from kfjax.register.pose import transform_from_params


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseModelConfig):
    channels: tuple[int, ...] = (16, 32, 64, 128)  # features per level (each level halves the image)
    hidden: int = 128  # dense layer before the 6 outputs
    norm: str = "group"


@dataclasses.dataclass(frozen=True)
class LossConfig:
    points: int = 256  # bone anchors of the subject the distance loss is averaged over


@dataclasses.dataclass(frozen=True)
class PoseRegressionConfig(BaseConfig):
    seed: int = 0  # seeds initialisation, data order and the starts drawn per step
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=50, grad_clip=1.0)  # as point2
    train: TrainConfig = TrainConfig(steps=1500, log_every=50, checkpoint_every=500)


@register("pose_regression")
class PoseRegressionMethod(RegistrationMethod):
    Config = PoseRegressionConfig
    description = "pose regression: a CNN from the DRRs at the start and the X-rays to a rigid pose update"
    paper = "learning-based baseline of Liao et al., CVPR 2019"

    def __init__(self, config: PoseRegressionConfig):
        super().__init__(config)
        m = config.model
        if not m.channels or min(m.channels) < 1 or m.hidden < 1:
            raise ConfigError(f"model.channels and model.hidden must be positive, got {m.channels} and {m.hidden}")
        if config.data.size < 2 ** len(m.channels):
            raise ConfigError(f"data.size {config.data.size} is smaller than the {2 ** len(m.channels)} pixels that "
                              f"{len(m.channels)} stride-2 levels need")
        if config.loss.points < 3:
            raise ConfigError(f"loss.points is {config.loss.points}; a rigid pose needs at least 3 points")

    def network(self) -> PoseRegressor:
        m = self.config.model
        return PoseRegressor(channels=tuple(m.channels), hidden=m.hidden, norm=m.norm)

    def network_inputs(self, batch) -> tuple:
        images = jnp.concatenate([standardise(batch["drr"]), standardise(batch["xray"])], axis=1)  # (B, 2V, H, W)
        return (jnp.moveaxis(images, 1, -1),)

    def init_variables(self, key, batch):
        """Parameters from the batch's shapes only (no DRR is rendered)."""
        return super().init_variables(key, {**batch, "drr": jnp.zeros_like(batch["xray"])})

    def prepare(self, batch, key=None):
        """The batch with its starts and the DRRs there: init_transform (B, 4, 4), drr (B, V, H, W). ``key``:
        fresh starts (training); None: the cases' own."""
        init = self.starts(batch, key)
        return {**batch, "init_transform": init, "drr": self.scene.render(init)}

    def pose(self, update, init):
        """The estimate D ∘ init (B, 4, 4) from network outputs (B, 6) and starts (B, 4, 4)."""
        centre = se3.apply(init, jnp.asarray(self.scene.centre, init.dtype)[None])[:, 0]  # (B, 3): where init puts c
        params = update.astype(init.dtype) * self.start_ranges(init.dtype)
        return jax.vmap(transform_from_params)(params, centre) @ init

    def train_step(self, state, batch, key):
        return super().train_step(state, self.prepare(batch, key), key)

    def loss(self, outputs, batch):
        points = jnp.asarray(self.scene.anchors[: self.config.loss.points], jnp.float32)
        estimate = se3.apply(self.pose(outputs, batch["init_transform"]), points)  # (B, K, 3)
        truth = se3.apply(batch["gt_transform"], points)
        distance = jnp.mean(jnp.linalg.norm(estimate - truth, axis=-1))
        return distance, {"point_mm": distance}

    def predict(self, state, batch):
        """{"transform" (B, 4, 4), "drr" (B, V, H, W) at the start} of evaluation cases."""
        prepared = self.prepare(batch)
        update = self.apply(state.variables("model"), prepared)
        return {"transform": self.pose(update, prepared["init_transform"]), "drr": prepared["drr"]}
