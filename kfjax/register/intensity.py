"""Intensity-based 2D/3D rigid registration of a CT to one or more X-ray views (the "Opt." baseline).

    res = register(mu, affine, targets, extrinsics, camera, init)     # targets (V, H, W) line integrals
    res.transform                                                     # (4, 4) patient motion, world mm

Model. A C-arm takes V views whose geometry relative to each other is known: view v has the extrinsic
``E_v`` (4x4 world -> camera, :mod:`kfjax.physics.carm`) and all views share one detector ``camera``. The
unknown is a rigid motion ``T`` of the patient, i.e. of the CT's world frame (RAS mm through the NIfTI
``affine``): view v sees the CT through ``E_v @ T``. ``T`` has 6 parameters ``params = (w, t)``: a rotation
vector ``w`` (rad) about a centre ``c`` (mm, default the centre of the volume) and a translation ``t`` (mm)::

    T x = R(w) (x - c) + c + t          (transform_from_params / params_from_transform, kfjax.register.pose)

Rotating about the volume centre rather than the world origin keeps rotation and translation nearly
decoupled. :func:`register` maximises ``sum_v S(DRR_v(T), target_v)`` over ``params`` with ``S`` the
normalised cross-correlation (:func:`ncc`) or the gradient correlation (:func:`gradient_correlation`) of
Penney et al. (1998), by Adam with a cosine-decayed step (or optax's L-BFGS with a zoom line search), from
a coarse detector to the full one (multi-resolution: the targets are block-averaged, the camera keeps its
field of view with fewer, larger pixels). Each level is one jitted call (``lax.scan`` over the steps) and
returns the best iterate it visited. Several starts (or cases) register at once with a batched ``init``.

Targets are images in the detector's (rows, columns) layout. DRRs are rendered as line integrals, so a
measured intensity image should be turned into one first, ``p = -log(I / I0)``; both similarities are
invariant to affine intensity changes, so the scale of ``mu`` and of ``I0`` do not matter, only the sign.

The similarities (:mod:`kfjax.register.similarity`) and the pose/resampling helpers
(:mod:`kfjax.register.pose`) are re-exported here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kfjax.errors import InputError
from kfjax.physics import carm as _carm
from kfjax.physics import drr as _drr
from kfjax.physics import se3
from kfjax.register.pose import (  # re-exported (__all__)
    downsample_volume,
    params_from_transform,
    resize_images,
    transform_from_params,
    volume_centre,
)
from kfjax.register.similarity import SIMILARITIES, gradient_correlation, ncc, sobel  # re-exported (__all__)
from kfjax.register.similarity import SIMILARITY_FUNCTIONS as _SIM

__all__ = ["SIMILARITIES", "OPTIMIZERS", "Level", "DEFAULT_LEVELS", "RegistrationResult", "register", "make_objective",
           "ncc", "gradient_correlation", "sobel", "volume_centre", "transform_from_params", "params_from_transform",
           "downsample_volume", "resize_images"]

OPTIMIZERS = ("adam", "lbfgs")


# ------------------------------------------------------------------------------------------- objective
@dataclass(frozen=True)
class Level:
    """One resolution level: detector ``scale`` in (0, 1] of the camera's pixels per side, ``steps``
    optimiser iterations, Adam step ``lr`` in mm (rotations move ``lr / radius`` rad; unused by L-BFGS)."""

    scale: float = 1.0
    steps: int = 100
    lr: float = 1.0


DEFAULT_LEVELS = (Level(0.25, 150, 3.0), Level(0.5, 100, 1.0), Level(1.0, 60, 0.3))


@dataclass(frozen=True)
class RegistrationResult:
    """Output of :func:`register`; a leading batch axis (B) when ``init`` was (B, 6).

    params: (B, 6) rotation vector (rad) and translation (mm), see :func:`transform_from_params`.
    transform: (B, 4, 4) the estimated patient motion T (world -> world, mm).
    similarity: (B,) mean over views of the similarity at ``params`` on the finest level.
    history: per level, (B, steps) the mean similarity at each iterate.
    centre: (3,) mm, the centre of rotation.
    """

    params: jax.Array
    transform: jax.Array
    similarity: jax.Array
    history: tuple
    centre: np.ndarray


def _scale_vec(radius, dtype):
    return jnp.concatenate([jnp.full(3, 1.0 / radius, dtype), jnp.ones(3, dtype)])


def make_objective(camera, axes, similarity: str = "gc", mode: str = "joseph"):
    """Negative summed similarity ``f(params (6,), volume, affine, extrinsics (V, 4, 4), targets (V, H, W),
    centre (3,)) -> ()``, pure and jittable, differentiable w.r.t. ``params`` (and the volume).

    ``axes`` is a tuple with one Joseph stepping axis per view (:func:`kfjax.physics.drr.principal_axis`),
    fixed so that a traced pose renders one slice direction only.
    """
    if similarity not in _SIM:
        raise InputError(f"similarity must be one of {SIMILARITIES}, not {similarity!r}")
    sim = _SIM[similarity]
    renderers = [_drr.make_renderer(camera, mode=mode, axis=None if a is None else int(a)) for a in axes]

    def objective(params, volume, affine, extrinsics, targets, centre):
        t = transform_from_params(params, centre)
        total = 0.0
        for v, render in enumerate(renderers):
            total = total + sim(render(volume, affine, extrinsics[v] @ t), targets[v])
        return -total

    return objective


@functools.lru_cache(maxsize=64)
def _level_runner(camera, axes, similarity, mode, optimizer, steps, lr, radius):
    """Jitted ``(x0 (B, 6), volume, affine, extrinsics, targets (B, V, H, W), centre) -> (best params,
    best loss, loss history (B, steps))``, vmapped over B. Parameters are optimised in the scaled space
    ``(w * radius, t)`` (all in mm) so one step size suits rotation and translation."""
    objective = make_objective(camera, axes, similarity, mode)

    def one(x0, volume, affine, extrinsics, targets, centre):
        scale = _scale_vec(radius, x0.dtype)

        def f(x):
            return objective(x * scale, volume, affine, extrinsics, targets, centre)

        if optimizer == "adam":
            opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.02))
            value_and_grad = jax.value_and_grad(f)

            def grad_step(x, state):
                val, g = value_and_grad(x)
                upd, state = opt.update(g, state, x)
                return val, optax.apply_updates(x, upd), state
        else:
            opt = optax.lbfgs()
            value_and_grad = optax.value_and_grad_from_state(f)

            def grad_step(x, state):
                val, g = value_and_grad(x, state=state)
                upd, state = opt.update(g, state, x, value=val, grad=g, value_fn=f)
                return val, optax.apply_updates(x, upd), state

        def step(carry, _):
            x, state, bx, bl = carry
            val, x_new, state = grad_step(x, state)
            better = val < bl  # NaN never wins
            return (x_new, state, jnp.where(better, x, bx), jnp.where(better, val, bl)), val

        inf = jnp.asarray(jnp.inf, x0.dtype)
        (x, _, bx, bl), hist = jax.lax.scan(step, (x0, opt.init(x0), x0, inf), None, length=steps)
        last = f(x)
        better = last < bl
        bx, bl = jnp.where(better, x, bx), jnp.where(better, last, bl)
        return bx * scale, bl, hist

    def run(x0, volume, affine, extrinsics, targets, centre):
        return jax.vmap(one, (0, None, None, None, 0, None))(x0, volume, affine, extrinsics, targets, centre)

    return jax.jit(run)


# ------------------------------------------------------------------------------------------- register
def _check_rigid(m, name):
    m = np.asarray(m, np.float64)
    if not np.all(np.isfinite(m)):
        raise InputError(f"{name} has non-finite entries")
    if not (np.allclose(m[..., 3, :], [0, 0, 0, 1], atol=1e-6) and np.all(se3.is_rotation(m[..., :3, :3], 1e-4))):
        raise InputError(f"{name} must be rigid 4x4 matrices (orthonormal rotation, det +1, last row 0 0 0 1)")
    return m


def _validate(volume, affine, targets, extrinsics, camera, init, similarity, optimizer, mode, levels, radius):
    if not isinstance(camera, _carm.CArm):
        raise InputError(f"camera must be a kfjax.physics.carm.CArm, not {type(camera).__name__}")
    if similarity not in _SIM:
        raise InputError(f"similarity must be one of {SIMILARITIES}, not {similarity!r}")
    if optimizer not in OPTIMIZERS:
        raise InputError(f"optimizer must be one of {OPTIMIZERS}, not {optimizer!r}")
    if mode not in ("joseph", "trilinear"):
        raise InputError(f"mode must be 'joseph' or 'trilinear', not {mode!r}")
    if np.ndim(volume) != 3:
        raise InputError(f"volume must be 3-D (X, Y, Z) attenuation, got shape {np.shape(volume)}")
    a = np.asarray(affine, np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise InputError(f"affine must be a finite, invertible 4x4 voxel -> world matrix, got shape {a.shape}")
    e = np.asarray(extrinsics, np.float64)
    if e.ndim != 3 or e.shape[1:] != (4, 4) or e.shape[0] < 1:
        raise InputError(f"extrinsics must be (V, 4, 4) world -> camera matrices, got shape {e.shape}")
    _check_rigid(e, "extrinsics")
    v = e.shape[0]
    tshape = np.shape(targets)
    want = (v, camera.height, camera.width)
    if len(tshape) not in (3, 4) or tuple(tshape[-3:]) != want:
        raise InputError(f"targets must be (V, H, W) = {want} or (B, {v}, {camera.height}, {camera.width}) "
                         f"(one image per view at the camera's size), got {tshape}")
    if not np.all(np.isfinite(np.asarray(targets))):
        raise InputError("targets have non-finite pixels (log of zero counts?); clip the intensities first")
    x0 = np.zeros(6) if init is None else np.asarray(init, np.float64)
    if x0.ndim not in (1, 2) or x0.shape[-1] != 6:
        raise InputError(f"init must be (6,) or (B, 6) = (rotation vector rad, translation mm), got {x0.shape}")
    if not np.all(np.isfinite(x0)):
        raise InputError("init has non-finite values")
    if len(tshape) == 4 and (x0.ndim != 2 or x0.shape[0] != tshape[0]):
        raise InputError(f"batched targets {tshape} need init of shape ({tshape[0]}, 6), got {x0.shape}")
    if not levels:
        raise InputError("levels is empty; give at least one Level(scale, steps, lr)")
    for lv in levels:
        if not isinstance(lv, Level) or not (0 < lv.scale <= 1) or int(lv.steps) < 1 or not lv.lr > 0:
            raise InputError(f"bad level {lv!r}: need Level(scale in (0, 1], steps >= 1, lr > 0)")
        if min(camera.scaled(lv.scale).height, camera.scaled(lv.scale).width) < 3 and similarity == "gc":
            raise InputError(f"level scale {lv.scale} leaves fewer than 3x3 pixels; gradient correlation needs 3x3")
    if not radius > 0:
        raise InputError(f"radius must be positive (mm), got {radius}")
    return a, e, x0


def register(
    volume,
    affine,
    targets,
    extrinsics,
    camera,
    init=None,
    *,
    similarity: str = "gc",
    levels=DEFAULT_LEVELS,
    optimizer: str = "adam",
    mode: str = "joseph",
    centre=None,
    radius: float = 100.0,
    axes=None,
) -> RegistrationResult:
    """Rigid 2D/3D registration of a CT to V X-ray views by maximising the summed similarity.

    Args:
        volume: (X, Y, Z) attenuation (1/mm, e.g. :func:`kfjax.physics.drr.hu_to_mu`); a downsampled
            volume (:func:`downsample_volume`) renders faster.
        affine: (4, 4) voxel index -> world mm of ``volume``.
        targets: (V, H, W) X-ray line integrals, one per view at ``camera``'s size, or (B, V, H, W) with a
            batched ``init`` (B cases).
        extrinsics: (V, 4, 4) world -> camera of each view at the reference (identity) patient pose.
        camera: :class:`kfjax.physics.carm.CArm` shared by the views.
        init: (6,) or (B, 6) start parameters (rotation vector rad, translation mm), default 0.
        similarity: "gc" (gradient correlation, default) or "ncc".
        levels: :class:`Level` s, coarse to fine; each runs ``steps`` iterations on a detector of
            ``camera.scaled(scale)`` against block-averaged targets.
        optimizer: "adam" (cosine-decayed step ``Level.lr``) or "lbfgs" (optax L-BFGS, zoom line search).
        mode: DRR renderer mode, "joseph" (default) or "trilinear".
        centre: (3,) mm centre of rotation, default the volume centre.
        radius: mm; rotations are optimised as ``w * radius`` so that an Adam step of ``lr`` mm moves a
            point at ``radius`` from the centre by about ``lr`` mm.
        axes: Joseph stepping axis per view; default chosen per view at the start pose.

    Returns:
        :class:`RegistrationResult` (unbatched fields when ``init`` was (6,)).

    Raises:
        InputError: bad shapes, non-rigid extrinsics, non-finite values, unknown options.

    Call it outside ``jax.jit``: it chooses the Joseph axes from concrete poses and runs one jitted call per
    level; use :func:`make_objective` to embed the objective in a jitted program of your own.
    """
    a, e, x0 = _validate(volume, affine, targets, extrinsics, camera, init, similarity, optimizer, mode, levels,
                         radius)
    single = x0.ndim == 1
    x0 = np.atleast_2d(x0)
    c = volume_centre(a, np.shape(volume)) if centre is None else np.asarray(centre, np.float64).reshape(3)
    axes = _view_axes(camera, e, a, x0, c, axes)
    tg = jnp.asarray(targets, jnp.float32)
    tg = jnp.broadcast_to(tg, (x0.shape[0],) + tg.shape[-3:])
    arrays = (jnp.asarray(volume, jnp.float32), jnp.asarray(a, jnp.float32), jnp.asarray(e, jnp.float32), tg,
              jnp.asarray(c, jnp.float32))
    params, loss, history = _run_levels(camera, axes, similarity, mode, optimizer, levels, float(radius),
                                        jnp.asarray(x0, jnp.float32), *arrays)
    v = e.shape[0]
    out = (params, transform_from_params(params, arrays[-1]), -loss / v, tuple(-h / v for h in history))
    if single:
        out = (out[0][0], out[1][0], out[2][0], tuple(h[0] for h in out[3]))
    return RegistrationResult(*out, centre=c)


def _view_axes(camera, extrinsics, affine, x0, centre, axes) -> tuple:
    """The Joseph stepping axis of each view: ``axes`` checked, or per view the most common principal axis
    (:func:`kfjax.physics.drr.principal_axis`) over the batch of start poses ``x0`` (B, 6)."""
    v = extrinsics.shape[0]
    if axes is None:
        starts = np.asarray(transform_from_params(x0, centre), np.float64)  # (B, 4, 4)
        per = _drr.principal_axis(camera, extrinsics[None] @ starts[:, None], affine)  # (B, V)
        axes = tuple(int(np.bincount(per[:, k], minlength=3).argmax()) for k in range(v))
    elif len(axes) != v:
        raise InputError(f"axes needs one entry per view ({v}), got {axes}")
    return tuple(None if ax is None else int(ax) for ax in axes)


def _run_levels(camera, axes, similarity, mode, optimizer, levels, radius, x0, volume, affine, extrinsics, targets,
                centre):
    """Coarse to fine: each level starts from the previous best. Returns (params (B, 6), summed negative
    similarity (B,) of the finest level, per-level loss histories (B, steps))."""
    scale = _scale_vec(radius, jnp.float32)
    x = x0 / scale
    history, loss = [], None
    for lv in levels:
        cam = camera.scaled(lv.scale)
        run = _level_runner(cam, axes, similarity, mode, optimizer, int(lv.steps), float(lv.lr), radius)
        params, loss, hist = run(x, volume, affine, extrinsics, resize_images(targets, cam.height, cam.width), centre)
        x = params / scale
        history.append(hist)
    return x * scale, loss, history
