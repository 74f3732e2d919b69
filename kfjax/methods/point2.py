"""POINT²: multiview 2D/3D rigid registration by tracking points of interest and triangulating them
(Liao et al., CVPR 2019), on the benchmark cases of :mod:`kfjax.data.registration_cases`.

A case: a CT, two X-ray views with known C-arm geometry (extrinsics ``E_v``, shared camera) taken at an unknown
patient motion ``T_gt``, and a start ``T_init``. The method renders the DRRs of the CT at ``T_init`` (inside the
jitted step, :mod:`kfjax.physics.drr`), picks ``model.n_poi`` points of interest (POIs: bone voxels of the CT,
the subject's anchors, that project inside both DRRs), and tracks each one from the DRR into the X-ray of the
same view (:class:`kfjax.nn.poi_tracker.PoiTracker`: Siamese U-Net features, template correlation, soft-argmax).
Two tracked views give each POI's 3-D position by weighted linear triangulation (:func:`kfjax.physics.carm.triangulate`
with the views' projection matrices ``K E_v``: the point as the patient moved it, ``T_gt x``), and the weighted
Kabsch fit of the POIs onto their triangulated positions (:func:`kfjax.physics.carm.kabsch`) is the pose: one
forward pass, no iterations. Weights: ``1 / (1 + spread)`` per view and POI (spread: root of the score map's
variance, feature pixels), their product per POI for Kabsch. A case with fewer than 3 POIs in view keeps its start.

``model.pose=single_view`` is the paper's POINT baseline on the same tracker: the pose from the first view's
tracks alone (weighted Gauss-Newton on the reprojection error from ``T_init``; depth along that view's rays is
weakly constrained).

Training: fresh starts every step (``T_init = T_gt ∘ Δ``, Δ uniform in the cases' start ranges about the CT
centre), so the network never sees the same DRR twice; the X-rays are the split's fixed cases. Loss: tracking,
the cross-entropy of each score map's spatial softmax against a Gaussian (``loss.sigma`` feature pixels) at the
POI's true X-ray position, over the POIs that are inside both DRRs and inside the X-ray's collimation window;
plus ``loss.geometry_weight`` x the mean distance (mm) of the triangulated POIs from their true positions.
Deviations from the paper: the paper's BCE per score-map pixel is replaced by the softmax cross-entropy (the
distribution whose mean soft-argmax takes); POIs are random bone voxels, not chosen by gradient magnitude.

Metrics per case: ``mtre`` (mm, over the subject's target points), ``mtre_init``, ``failure`` (1 if mtre > 10 mm:
its mean is the gross failure rate), ``tracking_px`` (mean distance of the tracked from the true X-ray positions,
detector pixels) and ``tracking_px_init`` (the same for the DRR positions, i.e. no tracking).

    kfjax train point2 --workdir runs/point2                          # chest CT (the chest-ct source)
    kfjax train point2 --workdir runs/point2-head --set data.subject=head   # head CT (the head-ct source)
    kfjax eval point2 --workdir runs/point2 --set model.pose=single_view   # POINT on the same tracker
    kfjax register CT.nii.gz --xray AP.dcm --xray LAT.dcm --geometry carm.json --method point2 \
        --checkpoint runs/point2 --refine                             # a user's CT (Scene, estimate)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from kfjax.config import BaseConfig, BaseModelConfig, OptimConfig, TrainConfig
from kfjax.data.registration_cases import ANCHORS, BONE_HU, METAL_REACH_MM, view_extrinsics
from kfjax.errors import ConfigError, InputError
from kfjax.methods.common.registration import DataConfig, RegistrationMethod, Scene, standardise
from kfjax.methods.registry import register
from kfjax.nn.poi_tracker import PoiTracker, soft_argmax, to_feature
from kfjax.physics import carm, se3
from kfjax.physics.drr import hu_to_mu
from kfjax.register.pose import params_from_transform, transform_from_params

POSES = ("triangulation", "single_view")
PNP_ITERATIONS = 20  # Gauss-Newton steps of the single-view pose
PNP_DAMPING = 1e-3  # Levenberg-Marquardt damping, relative to the diagonal of JᵀWJ
ANCHOR_SEED = 0  # stream that picks a user's CT anchors (fixed: the same CT gives the same pool)


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseModelConfig):
    channels: tuple[int, ...] = (16, 32, 64)  # feature U-Net, features per level
    features: int = 32  # feature channels compared by the correlation
    stride: int = 1  # score-map pixel = stride detector pixels
    patch: int = 5  # template side, feature pixels (odd)
    n_poi: int = 32  # points of interest per case
    norm: str = "group"  # U-Net normalisation
    pose: str = "triangulation"  # triangulation: POINT² (two views) | single_view: POINT (first view, PnP)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    sigma: float = 1.0  # tracking target: Gaussian σ, feature pixels
    geometry_weight: float = 0.001  # x mean 3-D error of the triangulated POIs, mm (the re-implementation's 0.001)


@dataclasses.dataclass(frozen=True)
class Point2Config(BaseConfig):
    seed: int = 0  # seeds initialisation, data order and per-step keys (starts, POIs)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=50, grad_clip=1.0)  # paper: Adam 2e-4
    train: TrainConfig = TrainConfig(steps=1500, log_every=50, checkpoint_every=500)


def isocentre_pixel_mm(camera, extrinsic, centre) -> float:
    """Detector pixel pitch (mm) scaled to the depth of ``centre`` (3,) mm in the view ``extrinsic`` (4, 4): the
    size of a pixel on the anatomy, what the tracker's features are tuned to."""
    depth = float((np.asarray(extrinsic, np.float64) @ np.append(np.asarray(centre, np.float64), 1.0))[2])
    return float(np.sqrt(camera.dx * camera.dy)) * depth / camera.sdd


def pnp(p, uv, points, weights, init, centre):
    """Single-view pose: T (4, 4) minimising sum_k w_k |project(p T, x_k) - uv_k|² from ``init`` (4, 4) by
    damped Gauss-Newton (PNP_ITERATIONS steps). p (3, 4), uv (K, 2) px, points (K, 3) mm, weights (K,)."""
    root = jnp.sqrt(weights)[:, None]

    def residual(x):
        return ((carm.project(p @ transform_from_params(x, centre), points) - uv) * root).reshape(-1)

    def step(_, x):
        r = residual(x)
        j = jax.jacfwd(residual)(x)
        h = j.T @ j
        h = h + PNP_DAMPING * jnp.diag(jnp.diag(h)) + 1e-9 * jnp.eye(6, dtype=h.dtype)
        return x - jnp.linalg.solve(h, j.T @ r)

    x = jax.lax.fori_loop(0, PNP_ITERATIONS, step, params_from_transform(init, centre))
    return transform_from_params(x, centre)


@register("point2")
class Point2Method(RegistrationMethod):
    Config = Point2Config
    description = "POINT²: 2D/3D registration by POI tracking in two X-ray views, triangulation and Kabsch"
    paper = "Liao et al., CVPR 2019"

    def __init__(self, config: Point2Config):
        super().__init__(config)
        d, m = config.data, config.model
        if m.pose not in POSES:
            raise ConfigError(f"model.pose '{m.pose}' is not one of {', '.join(POSES)}")
        multiple = m.stride * 2 ** (len(m.channels) - 1)
        if m.stride < 1 or d.size % multiple or d.size // m.stride < 8:
            raise ConfigError(f"data.size {d.size} must divide by model.stride x 2**(levels - 1) = {multiple} and "
                              f"leave score maps of at least 8 pixels")
        if m.patch < 1 or m.patch % 2 == 0:
            raise ConfigError(f"model.patch must be a positive odd number of feature pixels, got {m.patch}")
        if m.n_poi < 3:
            raise ConfigError(f"model.n_poi is {m.n_poi}; the Kabsch pose needs at least 3 points")
        if config.loss.sigma <= 0:
            raise ConfigError(f"loss.sigma must be positive (feature pixels), got {config.loss.sigma}")

    # ---------------------------------------------------------------- a user's CT
    def scene_for(self, volume, affine, centre, camera, extrinsics) -> Scene:
        """A user's CT and views as a :class:`Scene`. volume: (X, Y, Z) μ 1/mm; affine (4, 4); centre (3,) mm;
        camera: the X-rays' detector; extrinsics (V, 4, 4) world -> camera at T = I. Anchors: up to ANCHORS voxels
        of at least BONE_HU within METAL_REACH_MM of the centre (as the training anchors). The detector is
        resampled (same field of view) so that a pixel covers as much anatomy as in training
        (:func:`isocentre_pixel_mm` at the centre, mean over views), each side rounded to a multiple of
        stride x 2**(levels - 1)."""
        m = self.config.model
        extrinsics = np.asarray(extrinsics, np.float64)
        if m.pose == "triangulation" and len(extrinsics) < 2:
            raise InputError("POINT² triangulates: it needs at least 2 X-ray views (model.pose=single_view uses one)")
        a = np.asarray(affine, np.float64)
        bone = np.argwhere(np.asarray(volume) >= float(hu_to_mu(BONE_HU))) @ a[:3, :3].T + a[:3, 3]
        bone = bone[np.linalg.norm(bone - np.asarray(centre, np.float64), axis=1) <= METAL_REACH_MM]
        if len(bone) < 3:
            raise InputError(f"the CT has {len(bone)} voxels of at least {BONE_HU:g} HU within {METAL_REACH_MM:g} "
                             "mm of its centre; POINT² tracks bone and needs a CT with bone about the centre")
        anchors = bone[np.random.default_rng(ANCHOR_SEED).choice(len(bone), min(ANCHORS, len(bone)), replace=False)]
        origin = view_extrinsics(np.zeros(3), self.case_config.views_deg)[0]
        trained = isocentre_pixel_mm(self.camera, origin, np.zeros(3))
        pitch = np.mean([isocentre_pixel_mm(camera, e, centre) for e in extrinsics])
        multiple = m.stride * 2 ** (len(m.channels) - 1)
        h, w = (max(1, round(n * pitch / trained / multiple)) * multiple for n in (camera.height, camera.width))
        if min(h, w) // m.stride < 8:
            raise InputError(f"the X-rays cover {camera.height * pitch:.0f} x {camera.width * pitch:.0f} mm at the "
                             f"CT centre, {h} x {w} pixels at the training pixel size ({trained:.2f} mm): too few "
                             f"for the tracker (at least {8 * m.stride} per side)")
        cam = carm.CArm(camera.sdd, h, w, camera.dx * camera.width / w, camera.dy * camera.height / h,
                        camera.x0, camera.y0)
        return Scene(np.asarray(volume, np.float32), np.asarray(affine, np.float64), anchors.astype(np.float32),
                     np.asarray(centre, np.float64), cam, extrinsics)

    # ---------------------------------------------------------------- network
    def network(self) -> PoiTracker:
        m = self.config.model
        return PoiTracker(features=m.features, channels=tuple(m.channels), stride=m.stride, patch=m.patch,
                          norm=m.norm)

    def network_inputs(self, batch) -> tuple:
        b, v = batch["drr"].shape[:2]
        flat = lambda x: x.reshape((b * v,) + x.shape[2:])  # noqa: E731
        return flat(standardise(batch["drr"])), flat(standardise(batch["xray"])), flat(batch["uv_drr"])

    def init_variables(self, key, batch):
        """Parameters from the batch's shapes only (the DRRs and POIs of a real step are not needed)."""
        b, v = batch["xray"].shape[:2]
        dummy = {"drr": jnp.zeros_like(batch["xray"]), "xray": batch["xray"],
                 "uv_drr": jnp.zeros((b, v, self.config.model.n_poi, 2), batch["xray"].dtype)}
        return super().init_variables(key, dummy)

    # ---------------------------------------------------------------- data
    def views(self, scene: Scene, init, keys) -> dict:
        """DRRs of ``scene`` at the starts ``init`` (B, 4, 4) and POIs drawn with ``keys`` (B, 2): drr (B, V, H, W);
        poi (B, K, 3) mm; uv_drr (B, V, K, 2) px; valid (B, K): inside every DRR (fewer than K bone anchors in
        view leave invalid POIs)."""
        m = self.config.model
        cam = scene.camera
        pool = jnp.asarray(scene.anchors, init.dtype)
        p = jnp.asarray(scene.projections, init.dtype)
        uv_pool = carm.project(p[None] @ init[:, None], pool[None, None])  # (B, V, M, 2)
        margin = m.stride * (m.patch - 1) / 2.0
        visible = jnp.all(_inside(uv_pool, margin, cam.height, cam.width), axis=1)  # (B, M)
        gumbel = jax.vmap(lambda k: jax.random.gumbel(k, (pool.shape[0],)))(keys)
        _, index = jax.lax.top_k(gumbel + jnp.where(visible, 0.0, -1e9), m.n_poi)  # K visible POIs, if there are K
        uv_drr = jnp.take_along_axis(uv_pool, index[:, None, :, None], axis=2)
        return {"init_transform": init, "drr": scene.render(init), "poi": pool[index], "uv_drr": uv_drr,
                "valid": jnp.take_along_axis(visible, index, axis=1)}

    def prepare(self, batch, key=None):
        """The batch with :meth:`views` of the training scene and the truth: uv_true (B, V, K, 2) px, each POI in
        the X-ray; trackable (B, V, K): valid and inside the X-ray's window. ``key``: draw fresh starts and POIs
        (training); None: the batch's starts, POIs fixed by the case index."""
        d = self.config.data
        gt = batch["gt_transform"]
        if key is None:
            init = self.starts(batch)
            keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(d.seed), i))(batch["case"])
        else:
            start_key, poi_key = jax.random.split(key)
            init = self.starts(batch, start_key)
            keys = jax.random.split(poi_key, gt.shape[0])
        seen = self.views(self.scene, init, keys)
        p = jnp.asarray(self.scene.projections, gt.dtype)
        uv_true = carm.project(p[None] @ gt[:, None], seen["poi"][:, None])
        w = batch["window"].astype(jnp.float32)  # (B, 4): top, bottom, left, right rows/columns
        in_window = ((uv_true[..., 0] >= w[:, None, None, 2]) & (uv_true[..., 0] <= w[:, None, None, 3])
                     & (uv_true[..., 1] >= w[:, None, None, 0]) & (uv_true[..., 1] <= w[:, None, None, 1]))
        trackable = seen["valid"][:, None] & in_window & _inside(uv_true, 0.0, d.size, d.size)
        return {**batch, **seen, "uv_true": uv_true, "trackable": trackable}

    # ---------------------------------------------------------------- pose from score maps
    def solve(self, logits, prepared, scene: Scene | None = None):
        """Tracked positions and the pose: {"uv" (B, V, K, 2) px, "confidence" (B, V, K), "points" (B, K, 3) mm
        (triangulation only), "transform" (B, 4, 4)} from score-map logits (B, V, K, H', W') of ``scene``'s
        views (default: the training scene)."""
        scene = self.scene if scene is None else scene
        uv, spread, _ = soft_argmax(logits, self.config.model.stride)
        valid = prepared["valid"].astype(uv.dtype)
        confidence = valid[:, None] / (1.0 + spread)
        p = jnp.asarray(scene.projections, uv.dtype)
        if self.config.model.pose == "single_view":
            centre = jnp.asarray(scene.centre, uv.dtype)
            t = jax.vmap(pnp, in_axes=(None, 0, 0, 0, 0, None))(p[0], uv[:, 0], prepared["poi"], confidence[:, 0],
                                                              prepared["init_transform"], centre)
            return {"uv": uv, "confidence": confidence, "transform": t}
        points = carm.triangulate(p, uv, weights=confidence + 1e-3)  # a floor keeps the DLT well posed
        t = carm.kabsch(prepared["poi"], points, weights=jnp.prod(confidence, axis=1) + 1e-6)
        enough = jnp.sum(valid, axis=1) >= 3  # fewer POIs in view: no pose, the start is kept
        t = jnp.where(enough[:, None, None], t, prepared["init_transform"].astype(t.dtype))
        return {"uv": uv, "confidence": confidence, "points": points, "transform": t}

    def estimate(self, state, scene: Scene, xrays, init, key=None) -> dict:
        """The pose of a CT from its X-rays, one forward pass: ``xrays`` (V, H, W) line integrals on
        ``scene.camera``, ``init`` (4, 4) the start. Returns :meth:`solve`'s outputs for this one case (no batch
        axis) and :meth:`views`'. ``key`` draws the POIs (default ``PRNGKey(0)``)."""
        cam = scene.camera
        if xrays.shape != (len(scene.extrinsics), cam.height, cam.width):
            raise InputError(f"X-rays of shape {tuple(xrays.shape)} do not match the scene's "
                             f"{len(scene.extrinsics)} views of {cam.height}x{cam.width} pixels")

        key = jax.random.PRNGKey(0) if key is None else key
        return self._estimate(scene, state.variables("model"), jnp.asarray(xrays, jnp.float32),
                              jnp.asarray(init, jnp.float32), key)

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def _estimate(self, scene: Scene, variables, xrays, init, key) -> dict:
        """:meth:`estimate`'s computation, compiled once per (method, scene)."""
        seen = self.views(scene, init[None], key[None])
        out = self.apply(variables, {**seen, "xray": xrays[None]})
        solved = self.solve(out.reshape((1, len(scene.extrinsics)) + out.shape[1:]), seen, scene)
        return jax.tree.map(lambda x: x[0], {**seen, **solved})

    # ---------------------------------------------------------------- steps
    def train_step(self, state, batch, key):
        return super().train_step(state, self.prepare(batch, key), key)

    def loss(self, outputs, batch):
        b, v, k = batch["uv_true"].shape[:3]
        logits = outputs.reshape((b, v, k) + outputs.shape[-2:])
        tracking = tracking_loss(logits, batch["uv_true"], batch["trackable"], self.config.model.stride,
                                 self.config.loss.sigma)
        solved = self.solve(logits, batch)
        truth = se3.apply(batch["gt_transform"], batch["poi"])
        both = jnp.all(batch["trackable"], axis=1).astype(logits.dtype)
        error = jnp.linalg.norm(solved["points"] - truth, axis=-1) if "points" in solved else jnp.zeros_like(both)
        geometry = jnp.sum(error * both) / jnp.maximum(jnp.sum(both), 1.0)
        return tracking + self.config.loss.geometry_weight * geometry, {"tracking": tracking, "geometry_mm": geometry}

    def predict(self, state, batch):
        """{"transform" (B, 4, 4), "uv", "confidence", "uv_true", "trackable", ...} of evaluation cases."""
        prepared = self.prepare(batch)
        b, v = prepared["drr"].shape[:2]
        out = self.apply(state.variables("model"), prepared)
        solved = self.solve(out.reshape((b, v) + out.shape[1:]), prepared)
        return {**solved, "uv_true": prepared["uv_true"], "uv_drr": prepared["uv_drr"],
                "trackable": prepared["trackable"], "drr": prepared["drr"]}

    def eval_step(self, state, batch):
        out = self.predict(state, batch)
        track = out["trackable"].astype(jnp.float32)

        def track_px(uv):
            distance = jnp.linalg.norm(uv - out["uv_true"], axis=-1)
            return jnp.sum(distance * track, axis=(1, 2)) / jnp.maximum(jnp.sum(track, axis=(1, 2)), 1.0)

        return {**super().eval_step(state, batch), "tracking_px": track_px(out["uv"]),
                "tracking_px_init": track_px(out["uv_drr"])}


def tracking_loss(logits, uv_true, mask, stride: int, sigma: float):
    """Cross-entropy of the spatial softmax of score maps (B, V, K, H, W) against a Gaussian (σ feature pixels)
    about the true positions uv_true (B, V, K, 2) px, mean over ``mask`` (B, V, K)."""
    h, w = logits.shape[-2:]
    xy = to_feature(uv_true, stride)
    ys, xs = jnp.arange(h, dtype=logits.dtype), jnp.arange(w, dtype=logits.dtype)
    d2 = (xs - xy[..., 0, None, None]) ** 2 + (ys[:, None] - xy[..., 1, None, None]) ** 2
    target = jax.nn.softmax((-d2 / (2 * sigma**2)).reshape(d2.shape[:-2] + (-1,)), axis=-1)
    log_p = jax.nn.log_softmax(logits.reshape(logits.shape[:-2] + (-1,)), axis=-1)
    ce = -jnp.sum(target * log_p, axis=-1)
    m = mask.astype(logits.dtype)
    return jnp.sum(ce * m) / jnp.maximum(jnp.sum(m), 1.0)


def _inside(uv, margin: float, height: int, width: int):
    """(...,) whether pixel positions (..., 2) lie at least ``margin`` px inside the detector."""
    return ((uv[..., 0] >= margin) & (uv[..., 0] <= width - margin)
            & (uv[..., 1] >= margin) & (uv[..., 1] <= height - margin))
