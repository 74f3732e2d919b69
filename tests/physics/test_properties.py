"""Property tests of the imaging physics on random inputs (hypothesis, bounded: the file runs in about a
minute on 2 cores).

- Joseph projector (kfjax.physics.projector) on random parallel-beam (180° and 360°) and fan-beam (flat and
  arc detector) geometries, odd and tiny to moderately large images, shifted detectors: the projection is
  finite, the adjoint is exact to a float32 round-off bound derived from the sizes, gradients are finite.
- DRR renderer (kfjax.physics.drr) at random SE(3) poses, the source outside or inside the volume, both
  modes: images are finite and non-negative, pose and volume gradients are finite. (It found negative
  trilinear DRRs of a volume behind the detector; test_drr_of_a_volume_behind_the_detector_is_zero keeps it.)

Every geometry is compiled anew (it is static), so sizes come from a small set and examples are few.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfjax.physics import carm, drr, se3
from kfjax.physics.geometry import FanBeam, ParallelBeam
from kfjax.physics.projector import make_projector
from kfjax.physics.rays import adjoint_taps

pytestmark = pytest.mark.slow

U32 = 2.0**-24  # float32 unit round-off
SIZES = (1, 2, 3, 7, 16, 33, 64)  # image sides: tiny, odd, even, moderately large


def _unit(draw, lo=0.0, hi=1.0):
    return draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False))


@st.composite
def geometries(draw):
    """A random ParallelBeam (180° or 360°) or FanBeam (flat or arc) that sees the image (or part of it)."""
    h, w = draw(st.sampled_from(SIZES)), draw(st.sampled_from(SIZES))
    pixel = _unit(draw, 0.3, 3.0)
    n_views = draw(st.sampled_from([1, 2, 7, 30]))
    n_det = draw(st.sampled_from([1, 3, 16, 45]))
    start = _unit(draw, -math.pi, math.pi)
    fov = 0.5 * math.hypot(h, w) * pixel  # half-diagonal of the image (mm)
    kind = draw(st.sampled_from(["parallel-180", "parallel-360", "fan-flat", "fan-arc"]))
    cover = _unit(draw, 0.5, 1.5)  # detector length / the image's shadow on it
    shift = _unit(draw, -0.3, 0.3)  # detector offset, as a fraction of the detector length
    if kind.startswith("parallel"):
        spacing = 2 * fov * cover / n_det
        return ParallelBeam(n_views, n_det, spacing, (h, w), pixel, math.pi * (1 if kind == "parallel-180" else 2),
                            start, shift * n_det * spacing)
    source = fov * _unit(draw, 1.05, 8.0)
    detector = source * _unit(draw, 0.0, 2.0)
    half_fan = math.asin(fov / source)
    if kind == "fan-flat":
        spacing = 2 * (source + detector) * math.tan(half_fan) * cover / n_det  # mm
    else:  # radians; every bin within 1.8 * (0.5 + 0.3) = 1.44 < pi/2 of the central ray (rays point forward)
        spacing = min(2 * half_fan * cover, 1.8) / n_det
    return FanBeam(n_views, n_det, source, detector, spacing, kind[4:], (h, w), pixel, 2 * math.pi, start,
                   shift * n_det * spacing)


@st.composite
def arrays(draw, shape):
    """float32 arrays of `shape` >= 0 (dense or sparse, scale 1e-3..1e3) or signed."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.random(shape)
    if draw(st.booleans()):
        x = x * (rng.random(shape) < 0.1)  # sparse: a few bright pixels
    x = x * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    if draw(st.booleans()):
        x = x - x.mean()
    return x.astype(np.float32)


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_projector_is_finite_with_an_exact_adjoint_and_finite_gradients(data):
    """<A x, y> = <x, Aᵀ y> to float32 round-off, for any geometry, image and sinogram.

    Both sides are sums of the same products w·x_j·y_i (w >= 0: tent weight times path length). The inner
    products are taken in float64 from the float32 A x and Aᵀ y, so the mismatch is the float32 round-off
    of the operators, bounded by (first-order, Higham's γ_n = n·u):
    - accumulation: a ray sum adds <= max(H, W) steps, an adjoint pixel <= n_views·taps rays (taps: bins a
      pixel can touch per view), so each product carries <= (max(H, W) + n_views·taps)·u;
    - <= 10 roundings per product (interpolation, path length, tent, the products);
    - the weights: the forward builds them from the ray coordinate a + b·k, the adjoint from the pixel's
      distance to the ray, both from numbers of magnitude <= 2·max(H, W) pixels, so they differ by
      <= 2·max(H, W)·u per unit of weight.
    Hence |<A x, y> - <x, Aᵀ y>| <= (3·max(H, W) + n_views·taps + 10)·u·S with S = <|A| |x|, |y|> =
    <A |x|, |y|> (A >= 0). For 33² pixels and 30 views that is 1e-5·S; measured mismatches stay below 0.7·
    (max(H, W) + n_views·taps)·u·S, the largest (relative to the bound) for 1-pixel images. With x, y >= 0
    (half the examples) S = <A x, y>, so a wrong weight or a missed tap shows in full.
    """
    g = data.draw(geometries(), label="geometry")
    x = data.draw(arrays((1, *g.image_shape, 1)), label="image")
    y = data.draw(arrays((1, g.n_views, g.n_det, 1)), label="sinogram")
    forward, adjoint = make_projector(g)

    @jax.jit
    def run(x, y):
        gradient = jax.grad(lambda v: 0.5 * jnp.sum((forward(v) - y) ** 2))(x)
        return forward(x), adjoint(y), forward(jnp.abs(x)), gradient

    ax, aty, a_abs, gradient = (np.asarray(v, np.float64) for v in run(x, y))
    assert ax.shape == y.shape and aty.shape == x.shape and gradient.shape == x.shape
    assert np.isfinite(ax).all() and np.isfinite(aty).all() and np.isfinite(gradient).all()
    assert (a_abs >= 0).all()
    scale = float(np.sum(a_abs * np.abs(y)))  # S
    bound = (3 * max(g.image_shape) + g.n_views * adjoint_taps(g) + 10) * U32 * scale
    mismatch = abs(float(np.sum(ax * y)) - float(np.sum(x * aty)))
    assert mismatch <= bound, f"{g}: mismatch {mismatch:.3e} > bound {bound:.3e} (S = {scale:.3e})"


VOLUME = (12, 10, 8)  # voxels; one shape and one camera for every example: one compilation per mode
CAMERA = carm.CArm(sdd=300.0, height=9, width=11, dx=4.0, dy=3.5, x0=2.0, y0=-1.0)


def _vec3(lo, hi):
    return st.tuples(*[st.floats(lo, hi, allow_nan=False, allow_infinity=False)] * 3).map(np.array)


@st.composite
def scenes(draw):
    """(volume, affine, extrinsic): anisotropic rotated voxels, a camera at a random SE(3) pose aimed at a
    point within 20 mm of the volume's centre, from 40..400 mm away or from 0..15 mm (the source inside or
    next to the volume; then the detector may lie inside or beyond it)."""
    spacing = draw(_vec3(0.5, 2.5))
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(se3.so3_exp(draw(_vec3(-math.pi, math.pi))), np.float64) @ np.diag(spacing)
    affine[:3, 3] = draw(_vec3(-50.0, 50.0))
    centre = affine[:3, :3] @ ((np.array(VOLUME) - 1) / 2) + affine[:3, 3]
    rotation = np.asarray(se3.so3_exp(draw(_vec3(-math.pi, math.pi))), np.float64)  # world -> camera
    distance = draw(st.one_of(st.floats(0.0, 15.0), st.floats(40.0, 400.0)))
    source = centre + draw(_vec3(-20.0, 20.0)) - distance * rotation[2]  # camera +z (row 2) looks at the aim
    extrinsic = np.asarray(se3.from_rt(rotation, -rotation @ source), np.float64)
    volume = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).random(VOLUME).astype(np.float32)
    return 0.02 * volume, affine, extrinsic


@settings(max_examples=15, deadline=None)
@given(scene=scenes(), mode=st.sampled_from(["joseph", "trilinear"]))
def test_drr_at_random_poses_is_finite_with_finite_gradients(scene, mode):
    volume, affine, extrinsic = scene
    render = drr.make_renderer(CAMERA, mode=mode, n_samples=32, chunk=128)
    image = np.asarray(render(volume, affine, extrinsic))  # the host picks the stepping axis
    assert image.shape == (CAMERA.height, CAMERA.width)
    assert np.isfinite(image).all() and (image >= 0).all(), "line integrals of attenuation must be finite, >= 0"
    grads, traced = _pose_and_volume_gradients(mode)(jnp.zeros(6), volume, extrinsic, affine)
    traced = np.asarray(traced)
    assert np.isfinite(traced).all() and (traced >= 0).all(), "line integrals of attenuation must be finite, >= 0"
    for name, g in zip(("pose", "volume"), grads):
        assert np.isfinite(np.asarray(g)).all(), f"{name} gradient is not finite"


_GRADIENTS = {}


def _pose_and_volume_gradients(mode):
    """jit(d/d(twist, volume) of a weighted sum of the DRR at exp(twist)·extrinsic): the traced-pose path."""
    if mode not in _GRADIENTS:
        render = drr.make_renderer(CAMERA, mode=mode, n_samples=32, chunk=128)
        weights = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, (CAMERA.height, CAMERA.width)), jnp.float32)

        def loss(xi, volume, extrinsic, affine):
            image = render(volume, affine, se3.compose(se3.se3_exp(xi), extrinsic))
            return jnp.sum(weights * image), image

        _GRADIENTS[mode] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))

    def run(xi, volume, extrinsic, affine):
        (_, image), grads = _GRADIENTS[mode](xi, volume, jnp.asarray(extrinsic, jnp.float32),
                                             jnp.asarray(affine, jnp.float32))
        return grads, image

    return run


def test_drr_of_a_volume_behind_the_detector_is_zero():
    """Found by the property test above: the detector plane (z = -1.25 mm) lies between the source and the
    volume (z in [0, 3.5] mm), so every ray ends before the volume and the DRR must be 0. The trilinear mode
    gave down to -1e-3: its sample range [alpha_min, alpha_max] ran backwards when no ray met the volume."""
    volume = 0.02 * np.random.default_rng(0).random(VOLUME).astype(np.float32)
    affine = np.diag([1.0, 1.0, 0.5, 1.0])
    extrinsic = np.eye(4)
    extrinsic[:3, 3] = [-5.5, -4.5, CAMERA.sdd + 1.25]  # source at z = -301.25 mm looking along +z
    for mode in ("joseph", "trilinear"):
        image = np.asarray(drr.make_renderer(CAMERA, mode=mode, n_samples=32)(volume, affine, extrinsic))
        np.testing.assert_array_equal(image, 0.0, err_msg=mode)
