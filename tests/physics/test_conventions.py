"""Converters to and from ASTRA vectors and scikit-image; agreement with ASTRA where it is installed."""

import math

import jax
import numpy as np
import pytest
from scipy import ndimage

from kfjax.errors import ConfigError
from kfjax.physics.conventions import (
    astra_volume_window,
    from_astra_vectors,
    from_skimage,
    to_astra_vectors,
    to_skimage_theta,
)
from kfjax.physics.geometry import FanBeam, ParallelBeam
from kfjax.physics.projector import make_projector

PARALLEL = ParallelBeam(n_views=30, n_det=50, det_spacing=0.7, image_shape=(40, 40), pixel_size=0.9, det_offset=1.3)
FLAT = FanBeam(
    n_views=40,
    n_det=64,
    source_distance=80,
    detector_distance=50,
    det_spacing=1.1,
    image_shape=(40, 40),
    start_angle=0.3,
    det_offset=-0.8,
)


@pytest.mark.parametrize("g", [PARALLEL, FLAT], ids=["parallel", "fan-flat"])
def test_astra_round_trip(g):
    kind, vectors = to_astra_vectors(g)
    back = from_astra_vectors(kind, vectors, g.n_det, g.image_shape, g.pixel_size)
    for field in ("n_views", "n_det", "image_shape", "pixel_size"):
        assert getattr(back, field) == getattr(g, field)
    for field in ("det_spacing", "angle_range", "det_offset"):
        assert getattr(back, field) == pytest.approx(getattr(g, field), abs=1e-9)
    assert math.remainder(back.start_angle - g.start_angle, 2 * math.pi) == pytest.approx(0, abs=1e-9)
    if isinstance(g, FanBeam):
        assert back.source_distance == pytest.approx(g.source_distance)
        assert back.detector_distance == pytest.approx(g.detector_distance)


def test_conversion_errors():
    arc = FanBeam(
        n_views=8,
        n_det=16,
        source_distance=80,
        detector_distance=50,
        det_spacing=0.01,
        detector="arc",
        image_shape=(20, 20),
    )
    with pytest.raises(ConfigError, match="no 2-D arc"):
        to_astra_vectors(arc)
    kind, vectors = to_astra_vectors(PARALLEL)
    vectors[3, 4:6] *= -1  # one view turned around: angles no longer uniform
    with pytest.raises(ConfigError, match="uniformly spaced"):
        from_astra_vectors(kind, vectors, 50, (40, 40))
    with pytest.raises(ConfigError, match="pad an even-sized image"):
        from_skimage(np.arange(10.0), 64)
    with pytest.raises(ConfigError, match="parallel-beam"):
        to_skimage_theta(arc)


def test_skimage_geometry():
    g = from_skimage(np.linspace(0, 180, 60, endpoint=False), 255, circle=False)
    assert (g.n_views, g.n_det, g.image_shape) == (60, 361, (255, 255))
    np.testing.assert_allclose(to_skimage_theta(g), np.linspace(0, 180, 60, endpoint=False))


@pytest.mark.parametrize("g", [PARALLEL, FLAT], ids=["parallel", "fan-flat"])
def test_agrees_with_astra(g):
    astra = pytest.importorskip("astra")
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random(g.image_shape), 2.0).astype(np.float32)  # smooth: kernels differ
    kind, vectors = to_astra_vectors(g)
    vol = astra.create_vol_geom(*g.image_shape, *astra_volume_window(g))
    proj = astra.create_proj_geom(kind, g.n_det, vectors)
    projector = astra.create_projector("linear" if kind == "parallel_vec" else "line_fanflat", proj, vol)
    sino_id, theirs = astra.create_sino(image, projector)
    astra.data2d.delete(sino_id)
    ours = np.asarray(jax.jit(make_projector(g)[0])(image[None, ..., None]))[0, ..., 0]
    # Joseph (linear) matches ASTRA's linear kernel to round-off; ASTRA's fan projector is a different
    # discretisation (line lengths), so only a loose bound there
    bound = 1e-4 if kind == "parallel_vec" else 0.02
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < bound
