"""PNG reading: 8/16-bit grayscale keep their values, RGB becomes luminance, the array is (W, H) with the
identity affine (shown as array.T), load_volume dispatches .png, and bad files raise one-line InputErrors."""

import numpy as np
import pytest
from PIL import Image

from kfjax.errors import InputError
from kfjax.io import load_volume
from kfjax.io.png import LUMA_WEIGHTS, load_png


def _save(tmp_path, array, name="x.png", mode=None):
    path = tmp_path / name
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_8_bit_grayscale_values_orientation_and_affine(tmp_path):
    image = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20  # 3 rows, 4 columns
    v = load_png(_save(tmp_path, image))
    assert v.array.shape == (4, 3) and v.array.dtype == np.float32
    np.testing.assert_array_equal(v.array.T, image)  # shown as array.T
    np.testing.assert_array_equal(v.affine, np.eye(4))
    assert v.header is None


def test_16_bit_grayscale_keeps_the_full_range(tmp_path):
    image = (np.arange(12).reshape(3, 4) * 5000).astype(np.uint16)
    v = load_png(_save(tmp_path, image))
    np.testing.assert_array_equal(v.array.T, image.astype(np.float32))
    assert v.array.max() == 55000


def test_rgb_and_rgba_become_luminance(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    expected = rgb.astype(np.float64) @ np.asarray(LUMA_WEIGHTS)
    # float32 weighted sum of three values <= 255: roundoff ~ 3 x 255 x 6e-8 ~ 5e-5
    np.testing.assert_allclose(load_png(_save(tmp_path, rgb)).array.T, expected, atol=1e-4)
    rgba = np.concatenate([rgb, np.full((5, 6, 1), 7, np.uint8)], -1)
    np.testing.assert_allclose(load_png(_save(tmp_path, rgba, "a.png")).array.T, expected, atol=1e-4)


def test_load_volume_dispatches_png_and_expect_ndim(tmp_path):
    path = _save(tmp_path, np.zeros((3, 4), np.uint8))
    assert load_volume(path).array.shape == (4, 3)
    assert load_volume(path, expect_ndim=3).array.shape == (4, 3, 1)
    with pytest.raises(InputError, match="2-D image"):
        load_png(path, expect_ndim=4)


def test_bad_files_raise_one_line_input_errors(tmp_path):
    missing = tmp_path / "missing.png"
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    truncated = tmp_path / "truncated.png"
    full = _save(tmp_path, np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8), "full.png")
    truncated.write_bytes(full.read_bytes()[:200])
    jpeg = tmp_path / "photo.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(jpeg, format="JPEG")
    for path, match in [(missing, "no such file"), (corrupt, "damaged"), (truncated, "damaged"), (jpeg, "not PNG")]:
        with pytest.raises(InputError, match=match) as info:
            load_volume(path)
        assert "\n" not in str(info.value)


def test_animated_png_is_refused(tmp_path):
    frames = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (0, 255)]
    path = tmp_path / "anim.png"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match="frames"):
        load_png(path)
