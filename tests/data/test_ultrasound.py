"""Simulated abdominal ultrasound: shapes, determinism, disjoint splits, landmarks inside the fan, each view's
landmark mask, the documented human annotation noise, bad arguments."""

import numpy as np
import pytest

from kfjax.data import ultrasound as us
from kfjax.errors import InputError

SIZE, N = 32, 44  # four images of each of the 11 views


@pytest.fixture(scope="module")
def data():
    return us.ultrasound_views("train", N, SIZE, seed=0).arrays


def test_shapes_and_ranges(data):
    L = len(us.CHANNELS)
    shapes = {"image": (N, SIZE, SIZE, 1), "view": (N,), "landmarks": (N, L, 2), "landmark_mask": (N, L),
              "spacing": (N, 2), "human_view": (N,), "human_landmarks": (N, L, 2)}
    assert {k: v.shape for k, v in data.items()} == shapes
    assert data["image"].dtype == np.float32 and data["view"].dtype == np.int32
    assert data["image"].min() >= 0.0 and data["image"].max() <= 1.0
    assert np.bincount(data["view"], minlength=len(us.VIEWS)).tolist() == [N // len(us.VIEWS)] * len(us.VIEWS)
    depth_px = SIZE - 1 + us.APEX_ABOVE * SIZE  # apex to the deepest row
    low, high = (d / depth_px for d in us.DEPTH_MM)
    assert np.all(data["spacing"] >= low - 1e-5) and np.all(data["spacing"] <= high + 1e-5)
    assert np.all(data["spacing"][:, 0] == data["spacing"][:, 1])


def test_deterministic_and_splits_differ():
    us._generate.cache_clear()  # a fresh simulation, not the cached arrays
    a = us.ultrasound_views("val", 6, SIZE, seed=3).arrays
    us._generate.cache_clear()
    b = us.ultrasound_views("val", 6, SIZE, seed=3).arrays
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    for other in (us.ultrasound_views("test", 6, SIZE, seed=3), us.ultrasound_views("val", 6, SIZE, seed=4)):
        assert not np.allclose(other.arrays["image"], a["image"])


def test_landmarks_lie_inside_the_fan_and_outside_is_black(data):
    mask = data["landmark_mask"] > 0
    assert us.in_fan(data["landmarks"][mask], SIZE).all()
    _, _, _, _, fan = us._fan(SIZE)
    assert np.all(data["image"][:, ~fan] == 0.0) and np.all(data["image"][:, fan].mean(axis=1) > 0.1)


def test_each_view_supervises_its_own_channels(data):
    table = us.view_channel_mask()
    np.testing.assert_array_equal(data["landmark_mask"], table[data["view"]])
    assert table[us.VIEWS.index("others")].sum() == 0 and table[us.VIEWS.index("kidney_long")].sum() == 4
    assert np.all(data["landmarks"][data["landmark_mask"] == 0] == 0.0)
    pairs = us.measurement_pairs()
    for row in range(N):  # every supervised pair has a positive length and is ordered (poles by column)
        for p, (a, b) in enumerate(pairs):
            if data["landmark_mask"][row, a]:
                assert data["landmark_mask"][row, b] == 1
                assert np.linalg.norm(data["landmarks"][row, a] - data["landmarks"][row, b]) > 2.0


def test_human_annotation_noise_is_as_documented():
    """Human - true landmark offsets: E|d|² = σ_t² + σ_n² (4.56 px²). With ~800 supervised landmarks the
    sample mean of |d|² has a relative standard error ~ sqrt(2 (σ_t⁴ + σ_n⁴)) / (σ_t² + σ_n²) / sqrt(800) ~ 4.6 %;
    ± 20 % is over 4 standard errors. The human view agrees with probability 1 - confusion - slip (0.79); over
    550 images the binomial standard error is 1.7 %, so ± 0.07 is 4 standard errors."""
    data = us.ultrasound_views("test", 550, SIZE, seed=1).arrays
    mask = data["landmark_mask"] > 0
    d2 = np.sum((data["human_landmarks"] - data["landmarks"])[mask] ** 2, axis=-1)
    expected = us.HUMAN_TANGENT_SIGMA_PX**2 + us.HUMAN_NORMAL_SIGMA_PX**2
    assert d2.size > 700 and abs(d2.mean() / expected - 1.0) < 0.2
    np.testing.assert_array_equal(data["human_landmarks"][~mask], data["landmarks"][~mask])
    agree = np.mean(data["human_view"] == data["view"])
    assert abs(agree - (1.0 - us.HUMAN_CONFUSION - us.HUMAN_SLIP)) < 0.07


@pytest.mark.parametrize("args, match", [(("tune", 4, 32), "split"), (("train", 0, 32), "positive"),
                                         (("train", 4, 16), "at least 32"), (("train", 2.5, 32), "positive")])
def test_bad_arguments(args, match):
    with pytest.raises(InputError, match=match):
        us.ultrasound_views(*args)
