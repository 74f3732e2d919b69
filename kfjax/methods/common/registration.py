"""What the learned 2D/3D registration methods share: the benchmark's cases, the scene and the mTRE metrics.

A subclass (``point2``, ``pose_regression``) names its network, how a batch feeds it, its loss and
``predict(state, batch) -> {"transform" (B, 4, 4), ...}``; it gets the cases of
:mod:`kfjax.data.registration_cases` as datasets (``xray`` (B, V, H, W), ``gt_transform``, ``init_transform``,
``window``, ``case``), the training :class:`Scene`, fresh starts per step (:meth:`draw_starts`) and an
``eval_step`` with ``mtre`` (mm over the subject's target points), ``mtre_init`` and ``failure``
(mtre > FAILURE_MM: its mean is the gross failure rate).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from kfjax import metrics
from kfjax.config import BaseDataConfig
from kfjax.data.pipeline import ArrayDataset
from kfjax.data.registration_cases import PAIRS, SPLITS, SUBJECTS, CaseConfig, camera, make_cases, view_extrinsics
from kfjax.errors import ConfigError, InputError
from kfjax.methods.common.supervised import SupervisedMethod
from kfjax.physics import carm
from kfjax.physics.drr import make_renderer, principal_axis
from kfjax.register.pose import transform_from_params

FAILURE_MM = 10.0  # gross failure: mTRE above this (the paper's and the talk's threshold)


@dataclasses.dataclass(frozen=True)
class DataConfig(BaseDataConfig):
    subject: str = "chest"  # chest: the chest-ct source | head: the head-ct source | phantom: procedural, no data
    seed: int = 0  # seeds the cases (poses, starts, detector, tools), apart from the run's seed
    n_train: int = 256  # training cases (each two X-rays; starts are redrawn every step)
    n_val: int = 16  # validation cases
    n_test: int = 64  # test cases (fixed starts)
    size: int = 64  # detector pixels per side (200 mm panel); the paper: 256
    pair: str = "wide"  # view pair: wide (0° and 90°) | narrow (-20° and 20°)
    batch_size: int = 4  # cases per step (two views each)


@dataclasses.dataclass(frozen=True, eq=False)
class Scene:
    """One CT seen by fixed views: what a learned estimator needs besides the X-rays.

    volume: (X, Y, Z) μ 1/mm, the CT the DRRs are rendered from; affine: (4, 4) index -> mm. anchors: (M, 3) mm,
    bone voxels (POINT²'s POI pool). centre: (3,) mm, the rotation centre of the pose parameters.
    camera: the detector (:class:`kfjax.physics.carm.CArm`); extrinsics: (V, 4, 4) world -> camera at T = I.
    """

    volume: np.ndarray
    affine: np.ndarray
    anchors: np.ndarray
    centre: np.ndarray
    camera: carm.CArm
    extrinsics: np.ndarray

    @functools.cached_property
    def projections(self) -> np.ndarray:
        """(V, 3, 4) float32 projection matrices K E_v."""
        with jax.ensure_compile_time_eval():  # first used inside a jitted step: still host numbers
            e = jnp.asarray(self.extrinsics, jnp.float32)
            return np.asarray(carm.projection_matrix(self.camera, e), np.float32)

    @functools.cached_property
    def renderers(self):
        """One DRR renderer per view, stepping along the view's principal axis at T = I."""
        with jax.ensure_compile_time_eval():
            axes = principal_axis(self.camera, self.extrinsics, self.affine).reshape(-1)
        return [make_renderer(self.camera, axis=int(a)) for a in axes]

    def render(self, transforms):
        """DRRs (B, V, H, W) line integrals of the CT moved by ``transforms`` (B, 4, 4)."""
        volume, affine = jnp.asarray(self.volume, jnp.float32), jnp.asarray(self.affine, jnp.float32)
        e = jnp.asarray(self.extrinsics, jnp.float32)
        views = [render(volume, affine, e[v] @ transforms) for v, render in enumerate(self.renderers)]
        return jax.lax.stop_gradient(jnp.stack(views, 1))


class RegistrationMethod(SupervisedMethod):
    """A supervised method on the registration benchmark (the config's ``data`` section is :class:`DataConfig`)."""

    def __init__(self, config):
        super().__init__(config)
        d = config.data
        if d.subject not in SUBJECTS:
            raise ConfigError(f"data.subject '{d.subject}' is not one of {', '.join(SUBJECTS)}")
        if d.pair not in PAIRS:
            raise ConfigError(f"data.pair '{d.pair}' is not one of {', '.join(PAIRS)}")
        self.case_config = CaseConfig(size=d.size, views_deg=PAIRS[d.pair])
        self.camera = camera(self.case_config)
        self._datasets: dict[str, ArrayDataset] = {}

    @functools.cached_property
    def subject(self):
        from kfjax.data.registration_cases import load_subject

        with jax.ensure_compile_time_eval():  # may be first needed while a step is traced
            return load_subject(self.config.data.subject)

    @functools.cached_property
    def scene(self) -> Scene:
        """The training subject seen by the benchmark's views (the scene of every split)."""
        s = self.subject
        with jax.ensure_compile_time_eval():  # first used inside a jitted step: still host numbers
            extrinsics = view_extrinsics(s.centre, self.case_config.views_deg)
        return Scene(s.volume, s.affine, s.anchors, s.centre, self.camera, extrinsics)

    @property
    def extrinsics(self) -> np.ndarray:
        """(V, 4, 4) world -> camera of the views at the reference pose."""
        return self.scene.extrinsics

    def dataset(self, split: str) -> ArrayDataset:
        if split not in SPLITS:
            raise InputError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        if split not in self._datasets:
            d = self.config.data
            count = {"train": d.n_train, "val": d.n_val, "test": d.n_test}[split]
            if count < 1:
                raise ConfigError(f"data.n_{split} is {count}; the {split} split needs at least one case")
            c = make_cases(self.subject, split, count, d.seed, self.case_config)
            self._datasets[split] = ArrayDataset(
                xray=c.targets.astype(np.float32), gt_transform=c.gt_transform.astype(np.float32),
                init_transform=c.init_transform.astype(np.float32), window=c.detector["window"].astype(np.int32),
                case=np.arange(count, dtype=np.int32))
        return self._datasets[split]

    def batch_spec(self, batch_size: int):
        v, n = len(self.case_config.views_deg), self.config.data.size
        f32 = jnp.float32
        return {"xray": jax.ShapeDtypeStruct((batch_size, v, n, n), f32),
                "gt_transform": jax.ShapeDtypeStruct((batch_size, 4, 4), f32),
                "init_transform": jax.ShapeDtypeStruct((batch_size, 4, 4), f32),
                "window": jax.ShapeDtypeStruct((batch_size, 4), jnp.int32),
                "case": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

    def start_ranges(self, dtype=jnp.float32):
        """(6,) half-widths of the starts' perturbation: rotation-vector radians, then mm (the cases' ranges)."""
        c = self.case_config
        return jnp.asarray([*np.deg2rad(c.init_rot_deg), *c.init_trans_mm], dtype)

    def draw_starts(self, gt, key):
        """Fresh starts (B, 4, 4) = gt ∘ Δ, Δ uniform in the cases' start ranges about the CT centre."""
        delta = jax.random.uniform(key, (gt.shape[0], 6), jnp.float32, -1.0, 1.0) * self.start_ranges()
        return gt @ transform_from_params(delta, jnp.asarray(self.scene.centre, jnp.float32))

    def starts(self, batch, key=None):
        """The batch's starts (B, 4, 4): fresh ones drawn with ``key`` (training), else the cases' fixed starts."""
        return batch["init_transform"] if key is None else self.draw_starts(batch["gt_transform"], key)

    def eval_step(self, state, batch):
        out = self.predict(state, batch)
        points = jnp.asarray(self.subject.points, jnp.float32)
        mtre = metrics.mtre(out["transform"], batch["gt_transform"], points)
        return {"mtre": mtre, "mtre_init": metrics.mtre(batch["init_transform"], batch["gt_transform"], points),
                "failure": (mtre > FAILURE_MM).astype(jnp.float32)}


def standardise(images):
    """Each image (..., H, W) to zero mean and unit variance."""
    mean = jnp.mean(images, axis=(-2, -1), keepdims=True)
    std = jnp.std(images, axis=(-2, -1), keepdims=True)
    return (images - mean) / (std + 1e-6)
