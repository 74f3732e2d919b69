"""The Joseph projector: exact adjoint, agreement with scikit-image and analytic line integrals, jit/vmap/grad,
memory, dtypes and errors. Every check runs the jitted, batched path."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from skimage.transform import radon

from kfjax.errors import InputError
from kfjax.physics import analytic
from kfjax.physics.conventions import from_skimage
from kfjax.physics.geometry import FanBeam, ParallelBeam, preset
from kfjax.physics.projector import make_projector, operator_norm

GEOMETRIES = {
    "parallel-180": ParallelBeam(n_views=37, n_det=61, det_spacing=0.8, image_shape=(40, 33), pixel_size=1.1),
    "parallel-360": ParallelBeam(n_views=50, n_det=45, image_shape=(32, 32), angle_range=2 * math.pi),
    "parallel-offset": ParallelBeam(n_views=20, n_det=40, det_spacing=1.7, image_shape=(24, 24), det_offset=2.5),
    "fan-flat": FanBeam(
        n_views=48,
        n_det=70,
        source_distance=60,
        detector_distance=45,
        det_spacing=1.3,
        image_shape=(32, 36),
    ),
    "fan-arc": FanBeam(
        n_views=48,
        n_det=80,
        source_distance=50,
        detector_distance=30,
        det_spacing=0.02,
        detector="arc",
        image_shape=(32, 32),
        det_offset=0.01,
    ),
    "fan-arc-near": FanBeam(  # source close to the image: many rays per pixel near the source
        n_views=30,
        n_det=150,
        source_distance=26,
        detector_distance=30,
        det_spacing=0.01,
        detector="arc",
        image_shape=(32, 32),
    ),
}


def _sinogram_shape(g, batch=2, channels=2):
    return (batch, g.n_views, g.n_det, channels)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_adjoint_is_exact(name):
    g = GEOMETRIES[name]
    forward, adjoint = make_projector(g)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *g.image_shape, 2)).astype(np.float32)
    y = rng.standard_normal(_sinogram_shape(g)).astype(np.float32)
    ax, aty = jax.jit(forward)(x), jax.jit(adjoint)(y)
    mismatch = abs(float(jnp.vdot(ax, y)) - float(jnp.vdot(x, aty)))
    assert mismatch / (float(jnp.linalg.norm(ax)) * float(jnp.linalg.norm(y))) <= 1e-5


def test_adjoint_of_presets():
    g = preset("adn")
    forward, adjoint = make_projector(g)
    rng = np.random.default_rng(1)
    x = rng.random((1, *g.image_shape, 1)).astype(np.float32)
    y = rng.random(_sinogram_shape(g, 1, 1)).astype(np.float32)
    ax, aty = jax.jit(forward)(x), jax.jit(adjoint)(y)
    mismatch = abs(float(jnp.vdot(ax, y)) - float(jnp.vdot(x, aty)))
    assert mismatch / (float(jnp.linalg.norm(ax)) * float(jnp.linalg.norm(y))) <= 1e-5


@pytest.mark.parametrize("circle", [True, False])
def test_matches_skimage_radon(circle):
    n = 129
    image = analytic.rasterize(analytic.shepp_logan_ellipses(n / 2), (n, n), 1.0).astype(np.float32)
    image[20:35, 80:90] += 0.5  # break the phantom's left-right symmetry so a mirrored convention fails
    theta = np.linspace(0.0, 180.0, 90, endpoint=False)
    reference = radon(image, theta, circle=circle).T  # (views, bins)
    g = from_skimage(theta, n, circle=circle)
    ours = np.asarray(jax.jit(make_projector(g)[0])(jnp.asarray(image)[None, ..., None]))[0, ..., 0]
    assert ours.shape == reference.shape
    assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) <= 0.01


# Ellipses (value 1/mm, a, b, x0, y0, phi) at least 10 pixels across: the error of a rasterised phantom is
# first order in the pixel size at edges, and thin rims (the Shepp-Logan skull) need finer grids
# (Shepp-Logan at 1.5 / 0.75 / 0.375 mm pixels: 2.9 % / 1.4 % / 0.7 %).
ELLIPSES = [
    (0.02, 80.0, 60.0, 0.0, 0.0, 0.0),
    (0.01, 20.0, 35.0, -25.0, 10.0, 0.4),
    (-0.008, 15.0, 12.0, 30.0, -20.0, -0.7),
    (0.015, 10.0, 25.0, 20.0, 30.0, 1.2),
    (-0.005, 30.0, 8.0, -10.0, -35.0, 0.1),
]


@pytest.mark.parametrize(
    "g",
    [
        ParallelBeam(
            n_views=90,
            n_det=250,
            det_spacing=1.0,
            image_shape=(200, 200),
            pixel_size=1.0,
        ),
        FanBeam(
            n_views=90,
            n_det=300,
            source_distance=400,
            detector_distance=200,
            det_spacing=1.2,
            image_shape=(200, 200),
            pixel_size=1.0,
        ),
        FanBeam(
            n_views=90,
            n_det=300,
            source_distance=400,
            detector_distance=200,
            det_spacing=0.0025,
            detector="arc",
            image_shape=(200, 200),
            pixel_size=1.0,
        ),
    ],
    ids=["parallel", "fan-flat", "fan-arc"],
)
def test_matches_analytic_line_integrals(g):
    image = analytic.rasterize(ELLIPSES, g.image_shape, g.pixel_size, supersample=8).astype(np.float32)
    exact = analytic.sinogram(ELLIPSES, g)
    ours = np.asarray(jax.jit(make_projector(g)[0])(jnp.asarray(image)[None, ..., None]))[0, ..., 0]
    assert np.linalg.norm(ours - exact) / np.linalg.norm(exact) <= 0.01


def test_float64_and_vmap_and_grad():
    g = GEOMETRIES["fan-arc"]
    forward, adjoint = make_projector(g)
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.random((3, 2, *g.image_shape, 1)))  # an extra leading axis for vmap
        y = jax.jit(jax.vmap(forward))(x)
        assert y.dtype == jnp.float64 and y.shape == (3, 2, g.n_views, g.n_det, 1)
        single = forward(x[1])
        np.testing.assert_allclose(np.asarray(y[1]), np.asarray(single), rtol=1e-12, atol=1e-12)
        target = jnp.asarray(rng.random((2, g.n_views, g.n_det, 1)))
        grad = jax.jit(jax.grad(lambda v: 0.5 * jnp.sum((forward(v) - target) ** 2)))(x[0])
        np.testing.assert_allclose(np.asarray(grad), np.asarray(adjoint(forward(x[0]) - target)), rtol=1e-10)


@pytest.mark.parametrize("name", ["parallel-180", "fan-flat"])
def test_check_grads_float64(name):
    g = GEOMETRIES[name]
    forward, adjoint = make_projector(g)
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.random((1, *g.image_shape, 1)))
        y = jnp.asarray(rng.random((1, g.n_views, g.n_det, 1)))
        check_grads(jax.jit(forward), (x,), order=1, modes=["rev"])
        check_grads(jax.jit(adjoint), (y,), order=1, modes=["rev"])
        # second order through the pair: the VJP of the VJP is the forward projector again
        check_grads(lambda v: jnp.sum(forward(v) ** 2), (x,), order=2, modes=["rev"])


def test_forward_and_grad_memory_is_linear_in_image_and_sinogram():
    g = ParallelBeam(n_views=180, n_det=367, image_shape=(256, 256))
    forward, _ = make_projector(g)
    x = jnp.zeros((4, 256, 256, 1))
    loss_grad = jax.jit(jax.grad(lambda v: jnp.sum(forward(v) ** 2)))
    memory = loss_grad.lower(x).compile().memory_analysis()
    if memory is None:
        pytest.skip("this backend reports no memory analysis")
    data_bytes = 4 * (x.size + 4 * g.n_views * g.n_det)
    rays_times_samples = 4 * 4 * g.n_views * g.n_det * 256
    assert memory.temp_size_in_bytes < 12 * data_bytes < rays_times_samples


def test_shape_and_dtype_errors():
    g = GEOMETRIES["parallel-360"]
    forward, adjoint = make_projector(g)
    with pytest.raises(InputError, match=r"shape \(B, 32, 32, C\)"):
        forward(jnp.zeros((1, 31, 32, 1)))
    with pytest.raises(InputError, match="sinogram must have shape"):
        adjoint(jnp.zeros((1, 32, 32, 1)))
    with pytest.raises(InputError, match="floating point"):
        forward(jnp.zeros((1, 32, 32, 1), jnp.int32))


def test_mass_is_conserved_per_view():
    """Every parallel view integrates the whole image: the sum over bins times the bin width is the image's
    integral (μ·mm²) when the detector covers it."""
    g = ParallelBeam(n_views=16, n_det=80, det_spacing=0.5, image_shape=(24, 24), pixel_size=1.5)
    image = np.zeros((1, 24, 24, 1), np.float32)
    image[0, 6:18, 8:14] = 1.0
    sino = np.asarray(jax.jit(make_projector(g)[0])(image))
    np.testing.assert_allclose(sino.sum(axis=2)[0, :, 0] * g.det_spacing, image.sum() * 1.5**2, rtol=2e-3)


def test_operator_norm_matches_the_largest_singular_value():
    g = ParallelBeam(n_views=12, n_det=15, image_shape=(8, 8))
    forward, _ = make_projector(g)
    with jax.enable_x64(True):
        columns = jnp.eye(64).reshape(64, 8, 8, 1)
        matrix = np.asarray(jax.jit(forward)(columns)).reshape(64, -1).T  # (rays, pixels)
    largest = np.linalg.svd(matrix, compute_uv=False)[0]
    assert operator_norm(g, iterations=50) == pytest.approx(largest, rel=1e-3)
