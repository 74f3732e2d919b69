"""Intensity-based 2D/3D rigid registration of a CT to one or more X-ray views (the "Opt." baseline).

    res = register(mu, affine, targets, extrinsics, camera, init)     # targets (V, H, W) line integrals
    res.transform                                                     # (4, 4) patient motion, world mm

Model. A C-arm takes V views whose geometry relative to each other is known: view v has the extrinsic
``E_v`` (4x4 world -> camera, :mod:`kfjax.physics.carm`) and all views share one detector ``camera``. The
unknown is a rigid motion ``T`` of the patient, i.e. of the CT's world frame (RAS mm through the NIfTI
``affine``): view v sees the CT through ``E_v @ T``. ``T`` has 6 parameters ``params = (w, t)``: a rotation
vector ``w`` (rad) about a centre ``c`` (mm, default the centre of the volume) and a translation ``t`` (mm)::

    T x = R(w) (x - c) + c + t          (transform_from_params / params_from_transform)

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

SIMILARITIES = ("ncc", "gc")
OPTIMIZERS = ("adam", "lbfgs")


# ------------------------------------------------------------------------------------------- similarity
def _pair(x, y, name: str, min_size: int = 1):
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim < 2 or y.ndim < 2:
        raise InputError(f"{name}: images must be (..., H, W), got shapes {x.shape} and {y.shape}")
    if x.shape[-2:] != y.shape[-2:]:
        raise InputError(f"{name}: image sizes differ, {x.shape[-2:]} vs {y.shape[-2:]}; resample one first")
    try:
        jnp.broadcast_shapes(x.shape, y.shape)
    except ValueError:
        raise InputError(f"{name}: batch shapes {x.shape[:-2]} and {y.shape[:-2]} do not broadcast") from None
    if min(x.shape[-2:]) < min_size:
        raise InputError(f"{name}: images must be at least {min_size}x{min_size}, got {x.shape[-2:]}")
    dtype = jnp.result_type(x, y, jnp.float32)
    return x.astype(dtype), y.astype(dtype)


@jax.jit
def _ncc(x, y, eps):
    xc = x - jnp.mean(x, (-2, -1), keepdims=True)
    yc = y - jnp.mean(y, (-2, -1), keepdims=True)
    sxy = jnp.mean(xc * yc, (-2, -1))
    sxx = jnp.mean(xc * xc, (-2, -1))
    syy = jnp.mean(yc * yc, (-2, -1))
    return sxy / jnp.sqrt((sxx + eps) * (syy + eps))


def ncc(x, y, *, eps: float = 1e-12):
    """Normalised cross-correlation of images (..., H, W) and (..., H, W) -> (...) in [-1, 1].

    Pearson correlation of the pixel values of each image pair (batch axes broadcast): 1 for ``y = a x + b``
    with ``a > 0``, -1 with ``a < 0``, invariant to affine intensity changes of either image. ``eps`` is
    added to each variance (units of the images squared), so a constant image gives 0, not NaN.
    Differentiable in both arguments.
    """
    x, y = _pair(x, y, "ncc")
    return _ncc(x, y, eps)


def sobel(x):
    """Sobel derivatives of images (..., H, W): (d/dcol, d/drow), each (..., H-2, W-2) (valid region)."""
    x = jnp.asarray(x)
    rows = x[..., :-2, :] + 2.0 * x[..., 1:-1, :] + x[..., 2:, :]  # smoothed across rows
    cols = x[..., :, :-2] + 2.0 * x[..., :, 1:-1] + x[..., :, 2:]  # smoothed across columns
    return rows[..., :, 2:] - rows[..., :, :-2], cols[..., 2:, :] - cols[..., :-2, :]


def gradient_correlation(x, y, *, eps: float = 1e-12):
    """Gradient correlation (Penney et al., 1998) of images (..., H, W) -> (...) in [-1, 1].

    The mean of the NCCs of the column and the row Sobel derivatives of ``x`` and ``y`` (valid region, so
    images need at least 3x3 pixels). 1 for ``y = a x + b`` with ``a > 0``; invariant to affine intensity
    changes; insensitive to smooth additive backgrounds (it compares edges). Differentiable.
    """
    x, y = _pair(x, y, "gradient_correlation", min_size=3)
    return _gc(x, y, eps)


@jax.jit
def _gc(x, y, eps):
    gx, gy = sobel(x), sobel(y)
    return 0.5 * (_ncc(gx[0], gy[0], eps) + _ncc(gx[1], gy[1], eps))


_SIM = {"ncc": ncc, "gc": gradient_correlation}


# ------------------------------------------------------------------------------------------------- pose
def volume_centre(affine, shape):
    """World position (3,) mm of the centre of a volume of ``shape`` (X, Y, Z, ...) under ``affine``."""
    a = np.asarray(affine, np.float64)
    return a[:3, :3] @ ((np.asarray(shape[:3], np.float64) - 1.0) / 2.0) + a[:3, 3]


@jax.jit
def transform_from_params(params, centre):
    """Pose parameters (..., 6) = (rotation vector rad, translation mm) -> (..., 4, 4) world -> world map
    ``x -> R(w) (x - c) + c + t`` with ``c = centre`` (3,) mm. Differentiable."""
    params = jnp.asarray(params)
    c = jnp.asarray(centre).astype(params.dtype)
    r = se3.so3_exp(params[..., :3])
    return se3.from_rt(r, params[..., 3:] + c - jnp.einsum("...ij,j->...i", r, c))


@jax.jit
def params_from_transform(m, centre):
    """Inverse of :func:`transform_from_params`: rigid (..., 4, 4) -> (..., 6) = (w rad, t mm)."""
    m = jnp.asarray(m)
    r, t = se3.to_rt(m)
    c = jnp.asarray(centre).astype(m.dtype)
    return jnp.concatenate([se3.so3_log(r), t - c + jnp.einsum("...ij,j->...i", r, c)], -1)


# -------------------------------------------------------------------------------------------- resampling
def downsample_volume(volume, affine, factors):
    """Block-average a volume (X, Y, Z) by integer ``factors`` (3,) -> (volume', affine').

    Trailing voxels that do not fill a block are dropped; ``affine'`` puts each new voxel at the centre of
    its block, so world positions are kept (mm).
    """
    vol = np.asarray(volume)
    f = tuple(int(v) for v in np.broadcast_to(np.asarray(factors), (3,)))
    if vol.ndim != 3 or min(f) < 1:
        raise InputError(f"downsample_volume needs a 3-D volume and factors >= 1, got {vol.shape} and {f}")
    n = [s // k for s, k in zip(vol.shape, f)]
    if min(n) < 1:
        raise InputError(f"factors {f} are larger than the volume {vol.shape}")
    v = vol[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]]
    v = v.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).mean((1, 3, 5), dtype=np.float64).astype(np.float32)
    s = np.eye(4)
    s[:3, :3] = np.diag(f)
    s[:3, 3] = (np.asarray(f) - 1) / 2.0
    return v, np.asarray(affine, np.float64) @ s


def resize_images(images, height: int, width: int):
    """Images (..., H, W) -> (..., height, width): block means when the sizes divide, else antialiased
    linear resampling. The field of view is kept (pixels grow), as in :meth:`CArm.scaled`."""
    images = jnp.asarray(images)
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    if h % height == 0 and w % width == 0:
        fh, fw = h // height, w // width
        x = images.reshape(images.shape[:-2] + (height, fh, width, fw))
        return x.mean((-3, -1))
    return jax.image.resize(images, images.shape[:-2] + (height, width), "linear", antialias=True)


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
    b, v = x0.shape[0], e.shape[0]
    c = volume_centre(a, np.shape(volume)) if centre is None else np.asarray(centre, np.float64).reshape(3)
    if axes is None:
        # per view, the most common principal axis over the batch of start poses
        starts = np.asarray(transform_from_params(x0, c), np.float64)  # (B, 4, 4)
        per = _drr.principal_axis(camera, e[None] @ starts[:, None], a)  # (B, V)
        axes = tuple(int(np.bincount(per[:, k], minlength=3).argmax()) for k in range(v))
    elif len(axes) != v:
        raise InputError(f"axes needs one entry per view ({v}), got {axes}")
    axes = tuple(None if ax is None else int(ax) for ax in axes)
    tg = jnp.asarray(targets, jnp.float32)
    tg = jnp.broadcast_to(tg, (b,) + tg.shape[-3:])
    vol = jnp.asarray(volume, jnp.float32)
    aff, ext = jnp.asarray(a, jnp.float32), jnp.asarray(e, jnp.float32)
    cen = jnp.asarray(c, jnp.float32)
    x = jnp.asarray(x0, jnp.float32) / _scale_vec(radius, jnp.float32)
    history = []
    loss = None
    for lv in levels:
        cam = camera.scaled(lv.scale)
        run = _level_runner(cam, axes, similarity, mode, optimizer, int(lv.steps), float(lv.lr), float(radius))
        params, loss, hist = run(x, vol, aff, ext, resize_images(tg, cam.height, cam.width), cen)
        x = params / _scale_vec(radius, jnp.float32)
        history.append(-hist / v)
    params = x * _scale_vec(radius, jnp.float32)
    sim = -loss / v
    out = (params, transform_from_params(params, cen), sim, tuple(history))
    if single:
        out = (out[0][0], out[1][0], out[2][0], tuple(h[0] for h in out[3]))
    return RegistrationResult(*out, centre=c)
