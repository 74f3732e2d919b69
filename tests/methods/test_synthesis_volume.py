"""Slice-wise synthesis of a user's volume: orientation, resampling, coordinates and the intensity round trip."""

import numpy as np
import pytest

from kfjax.data.synthesis import atlas_coords, intensity_scale
from kfjax.errors import InputError
from kfjax.io import Volume
from kfjax.io.orientation import to_display_slices
from kfjax.methods.common.synthesis import synthesis_slices_of, synthesize_volume

# An LAS-like 1 mm affine (columns permuted and flipped against display order) and a smooth positive volume.
AFFINE = np.array([[-1.0, 0, 0, 40], [0, 0, 1.0, -30], [0, 1.0, 0, -20], [0, 0, 0, 1]])


def _volume(shape=(20, 6, 24)):
    i, j, k = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    return Volume((1.0 + np.sin(3 * i) * np.cos(2 * k) + j).astype(np.float32), AFFINE)


def test_identity_translation_returns_the_input_clipped_at_its_scale():
    """At the volume's own pixel size no resampling happens: translate = identity gives the input back
    (clipped at the scale, up to float32 rounding of u * scale / scale)."""
    vol = _volume()
    out = synthesize_volume(vol, lambda x, c: x, pixel_mm=1.0, multiple=8, batch_size=4, progress=False)
    assert out.array.shape == vol.array.shape
    np.testing.assert_array_equal(out.affine, vol.affine)
    expected = np.minimum(vol.array, intensity_scale(to_display_slices(vol)[0]))
    np.testing.assert_allclose(out.array, expected, rtol=1e-6, atol=1e-6)


def test_coordinates_are_the_atlas_coordinates_of_the_display_grid():
    vol = _volume()
    images, coords, ctx = synthesis_slices_of(vol, pixel_mm=1.0, multiple=8)
    display, display_affine = to_display_slices(vol)
    h, w = display.shape[1:]
    assert images.shape == (len(display), -(-h // 8) * 8, -(-w // 8) * 8, 1)
    np.testing.assert_allclose(coords[:, :h, :w], atlas_coords(display_affine, display.shape), atol=1e-6)


def test_resampling_to_a_coarser_grid_and_back_keeps_a_smooth_image():
    """Down to 2 mm and back: linear interpolation of a smooth image loses little (its second derivative
    over 2 mm is small against the signal): a relative mean error under 2 %."""
    vol = _volume((20, 8, 40))
    out = synthesize_volume(vol, lambda x, c: x, pixel_mm=2.0, multiple=8, batch_size=3, progress=False)
    assert out.array.shape == vol.array.shape
    assert np.abs(out.array - vol.array).mean() / vol.array.mean() < 0.02


@pytest.mark.parametrize("array, message", [
    (np.ones((8, 8), np.float32), "2-D image"),
    (np.ones((4, 4, 4, 2), np.float32), "one contrast"),
    (-np.ones((4, 4, 4), np.float32), "negative intensities"),
])
def test_bad_volumes(array, message):
    with pytest.raises(InputError, match=message):
        synthesize_volume(Volume(array, np.eye(4)), lambda x, c: x, pixel_mm=1.0, progress=False)
