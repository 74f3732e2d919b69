"""Augmentation: deterministic from the key, the same geometry for images and labels, labels stay labels."""

import numpy as np
import pytest

from kfjax.data import augment as aug
from kfjax.errors import InputError


def _batch(n=3, size=32):
    rng = np.random.default_rng(0)
    label = np.zeros((n, size, size, 1), np.int32)
    label[:, 8:20, 5:14] = 1
    label[:, 20:28, 18:30] = 2
    image = (label * 100.0 + rng.normal(0, 1, label.shape)).astype(np.float32)
    return {"image": image, "label": label, "id": np.arange(n)}


def test_deterministic_for_every_key_kind():
    import jax

    b = _batch()
    for key in (5, (1, 2), jax.random.key(3), jax.random.PRNGKey(3)):
        x, y = aug.augment(b, key), aug.augment(b, key)
        for k in ("image", "label"):
            np.testing.assert_array_equal(x[k], y[k])
    np.testing.assert_array_equal(aug.augment(b, jax.random.key(3))["image"], aug.augment(b, jax.random.PRNGKey(3))["image"])
    assert not np.array_equal(aug.augment(b, 1)["image"], aug.augment(b, 2)["image"])
    g = np.random.default_rng(9)
    assert aug.as_rng(g) is g
    np.testing.assert_array_equal(b["id"], aug.augment(b, 1)["id"]), "other keys pass through"


def test_labels_follow_the_image():
    b = _batch()
    cfg = aug.AugmentConfig(intensity_p=0.0, rotate_deg=20.0, scale=0.2, translate=0.1)
    out = aug.augment(b, 11, config=cfg)
    label, image = out["label"], out["image"]
    assert label.dtype == np.int32 and set(np.unique(label)) <= {0, 1, 2}
    assert not np.array_equal(label, b["label"])
    # the image was made as 100 * label + noise: after the same warp it still matches away from edges
    from scipy import ndimage

    plane = ndimage.generate_binary_structure(2, 1)[None, :, :, None]  # erode within each image only
    for c in (1, 2):
        core = ndimage.binary_erosion(label == c, plane, iterations=2)
        assert core.any() and np.all(np.abs(image[core] - 100.0 * c) < 10.0)
    bg = ndimage.binary_erosion(label == 0, plane, iterations=2)
    assert np.all(np.abs(image[bg]) < 10.0)


def test_flips_only_is_exact():
    b = _batch(n=16)
    cfg = aug.AugmentConfig(flip_axes=(1, 2), flip_p=0.5, affine_p=0.0, intensity_p=0.0)
    out = aug.augment(b, 4, config=cfg)
    kinds = set()
    for i in range(16):
        x, y = out["label"][i], b["label"][i]
        for name, cand in (("none", y), ("ud", y[::-1]), ("lr", y[:, ::-1]), ("both", y[::-1, ::-1])):
            if np.array_equal(x, cand):
                kinds.add(name)
                np.testing.assert_array_equal(out["image"][i], {"none": b["image"][i], "ud": b["image"][i][::-1],
                                                                "lr": b["image"][i][:, ::-1],
                                                                "both": b["image"][i][::-1, ::-1]}[name])
                break
        else:
            pytest.fail(f"sample {i} is not a flip of its input")
    assert len(kinds) >= 3


def test_intensity():
    b = _batch()
    cfg = aug.AugmentConfig(flip_p=0.0, affine_p=0.0, gamma=0.0, intensity_shift=0.0, intensity_scale=0.2)
    out = aug.augment(b, 3, config=cfg)
    np.testing.assert_array_equal(out["label"], b["label"])
    ratio = out["image"][:, 10, 8, 0] / b["image"][:, 10, 8, 0]
    assert np.all((ratio >= 0.8) & (ratio <= 1.2)) and len(np.unique(np.round(ratio, 6))) == 3
    g = aug.random_intensity(np.random.default_rng(0), b["image"], 0.0, 0.0, 0.5)
    for i in range(3):  # gamma keeps each sample's min and max
        assert g[i].min() == pytest.approx(b["image"][i].min(), abs=1e-3)
        assert g[i].max() == pytest.approx(b["image"][i].max(), abs=1e-3)


def test_affine_identity_and_bool_labels():
    m = aug.affine_matrices(np.random.default_rng(0), 2, 0.0, 0.0, 0.0, (16, 16))
    np.testing.assert_allclose(m[:, :, :2], np.broadcast_to(np.eye(2), (2, 2, 2)))
    np.testing.assert_allclose(m[:, :, 2], 0.0, atol=1e-12)
    x = np.random.default_rng(1).random((2, 16, 16, 2)) > 0.5
    np.testing.assert_array_equal(aug.apply_affine(x, m, order=0), x)


def test_make_transform_and_errors():
    b = _batch()
    t = aug.make_transform(7)
    np.testing.assert_array_equal(t(b, 3)["image"], t(b, 3)["image"])
    assert not np.array_equal(t(b, 3)["image"], t(b, 4)["image"])
    assert not np.array_equal(t(b, 3)["image"], aug.make_transform(7, stream=1)(b, 3)["image"])
    with pytest.raises(InputError, match="no key mask"):
        aug.augment(b, 0, label_keys=("mask",))
    with pytest.raises(InputError, match=r"\(B, H, W, C\)"):
        aug.augment({"image": np.zeros((2, 8, 8)), "label": np.zeros((2, 8, 8))}, 0)
    with pytest.raises(InputError, match="differ"):
        aug.augment({"image": np.zeros((2, 8, 8, 1)), "label": np.zeros((2, 9, 8, 1))}, 0)
    with pytest.raises(InputError, match="key"):
        aug.as_rng(np.array([1.5, 2.5]))
