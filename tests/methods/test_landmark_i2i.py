"""landmark_i2i: shapes, decoding an exact Gaussian, one jitted step lowers the loss, sharded == single device,
training beats the untrained network on procedural landmarks, per-landmark NaN for invisible ones, bad settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax.config import apply_overrides
from kfjax.errors import ConfigError
from kfjax.methods.landmark_i2i import LandmarkI2IConfig, LandmarkI2IMethod, landmark_scores, refine_argmax
from kfjax.nn.heatmaps import gaussian_heatmaps
from kfjax.train.loop import init_train_state
from kfjax.train.mesh import make_mesh, shard_batch, to_host
from kfjax.train.step import make_eval_step, make_predict_step, make_train_step

TINY = ["data.source=procedural", "data.size=32", "data.n_train=64", "data.n_val=32", "data.batch_size=4",
        "model.channels=8,16"]


def _method(*extra):
    return LandmarkI2IMethod(apply_overrides(LandmarkI2IConfig(), [*TINY, *extra]))


def test_shapes_of_batch_outputs_and_predictions():
    method = _method("data.n_landmarks=4")
    batch = method.dataset("train")[np.arange(4)]
    spec = method.batch_spec(4)
    assert {k: v.shape for k, v in batch.items()} == {k: s.shape for k, s in spec.items()}
    mesh = make_mesh(jax.devices()[:1])
    state = init_train_state(method, mesh, spec)
    final, sides = method.apply(state.variables("model"), batch)
    assert final.shape == (4, 32, 32, 4) and len(sides) == 1 and sides[0].shape == final.shape
    out = to_host(make_predict_step(method.predict, mesh)(state, shard_batch(batch, mesh)))
    assert out["landmarks"].shape == (4, 4, 2) and out["heatmaps"].shape == (4, 32, 32, 4)
    assert method.landmark_names == ("disk", "ring", "plus", "square")


def test_refined_argmax_recovers_the_landmark_of_an_exact_gaussian():
    """Decoding the exact target returns its landmark. The sampled Gaussian's centroid over the whole grid
    is the landmark up to exp(-2 pi^2 sigma^2) (Poisson summation; 1e-34 for sigma 2); the window of radius
    3 sigma about the nearest pixel cuts at >= 2.75 sigma on each side, whose tail mass (<= 0.3 %) at lever
    arms <= 7 px moves the centroid by < 0.03 px; float32 adds ~1e-5. Bound 0.05 px."""
    rng = np.random.default_rng(0)
    sigma = 2.0
    landmarks = rng.uniform(8, 56, (6, 3, 2)).astype(np.float32)
    heat = gaussian_heatmaps(landmarks, (64, 64), sigma)
    decoded = np.asarray(refine_argmax(heat, 3 * sigma))
    np.testing.assert_allclose(decoded, landmarks, atol=0.05)
    on_grid = np.round(landmarks)  # at pixel centres the window is symmetric: float32 roundoff only
    decoded = np.asarray(refine_argmax(gaussian_heatmaps(on_grid, (64, 64), sigma), 3 * sigma))
    np.testing.assert_allclose(decoded, on_grid, atol=64 * 169 * np.finfo(np.float32).eps)


def test_step_lowers_the_loss_on_a_fixed_batch(train_steps):
    method = _method("optim.warmup_steps=0", "optim.schedule=constant")
    batch = method.dataset("train")[np.arange(4)]
    _, state, losses = train_steps(method, jax.devices()[:1], 10, batch)
    assert losses[-1] < 0.7 * losses[0], losses
    assert "model" in state.batch_stats


@pytest.mark.slow
def test_sharded_steps_match_single_device(sharded_matches_single):
    """Three steps on 4 devices equal three on one, in float64: the runs differ only in the order of sums
    (the gradient all-reduce, the batch means and BatchNorm statistics over 4 images) of ~1e4 terms, relative
    ~1e4 x 1.1e-16 ~ 1e-12, which Adam passes on to the parameters; rtol 1e-9 keeps a factor 1e3 and lies
    far below a sharding error (a per-device batch mean changes the loss by O(1))."""
    sharded_matches_single(_method, rows=4, steps=3, rtol=1e-9, atol=1e-12)


def _val_error(method, state, mesh) -> float:
    data = method.dataset("val")
    scores = to_host(make_eval_step(method.eval_step, mesh)(state, shard_batch(data[np.arange(32)], mesh)))
    return float(scores["error_mm"].total / scores["error_mm"].count)


def test_training_brings_the_error_far_below_the_untrained_network():
    """The defining property: after 150 steps on 64 procedural images (a disk and a ring) the held-out error
    (1 mm per px) is under a third of the untrained network's. Untrained, the argmax of a random map lands
    anywhere in the 32² image (expected distance to a landmark ~10 px); a trained detector of shapes 7 px
    wide lands on them (about 0.4 px measured), while mistaking the disk for the ring in a third of the
    images would already cost ~3 px: 2 px bounds a detector that tells the two apart."""
    method = _method("train.steps=150", "optim.lr=3e-3", "data.n_landmarks=2")
    mesh = make_mesh(jax.devices()[:1])
    data = method.dataset("train")
    state = init_train_state(method, mesh, method.batch_spec(4))
    before = _val_error(method, state, mesh)
    step = make_train_step(method.train_step, mesh)
    order = np.random.default_rng(0)
    for _ in range(150):
        state, _ = step(state, shard_batch(data[order.choice(len(data), 4, replace=False)], mesh))
    after = _val_error(method, state, mesh)
    assert before > 5.0 and after < min(before / 3, 2.0), (before, after)


def test_scores_leave_invisible_landmarks_out():
    pred = jnp.array([[[0.0, 0.0], [3.0, 4.0]], [[1.0, 1.0], [2.0, 2.0]]])
    target = jnp.zeros((2, 2, 2))
    visible = jnp.array([[1.0, 1.0], [0.0, 0.0]])
    s = landmark_scores(pred, target, visible, jnp.full((2, 2), 2.0))
    np.testing.assert_allclose(s["error_mm"][0], 5.0)  # (0 + 10 mm) / 2
    assert np.isnan(s["error_mm"][1]) and np.isnan(s["error_mm_lmk2"][1])
    np.testing.assert_allclose(s["error_mm_lmk2"][0], 10.0)


@pytest.mark.parametrize("bad,match", [("data.source=ultrasound", "data.source"), ("data.size=33", "data.size"),
                                       ("data.n_landmarks=7", "n_landmarks"), ("data.hard_test=true", "hard_test"),
                                       ("loss.sigma=0", "sigma"), ("loss.coord_weight=-1", "weights")])
def test_bad_settings_are_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        _method(bad)


def test_bad_split_is_a_config_error():
    with pytest.raises(ConfigError, match="split"):
        _method().dataset("training")
