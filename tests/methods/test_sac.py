"""SAM / SAC: shapes of both variants, a jitted step lowers the loss, sharded == single device, SAM learns
the action map and its walk finds the landmarks on procedural images, patches are cut where asked, bad
settings are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax.config import apply_overrides
from kfjax.errors import ConfigError
from kfjax.methods.common.actions import optimal_action_map
from kfjax.methods.common.actions import start_grid
from kfjax.methods.sac import SACConfig, SACMethod, cut_patches
from kfjax.train.loop import init_train_state
from kfjax.train.mesh import make_mesh, shard_batch, to_host
from kfjax.train.step import make_eval_step, make_predict_step, make_train_step

TINY = ["data.source=procedural", "data.size=16", "data.n_train=16", "data.n_val=8", "data.batch_size=4",
        "model.channels=4,8", "model.patch=8", "model.hidden=8", "loss.samples=4", "walk.max_steps=24",
        "optim.warmup_steps=0", "optim.schedule=constant"]
VARIANTS = ("sam", "sac")


def _method(variant: str, *extra) -> SACMethod:
    return SACMethod(apply_overrides(SACConfig(), [*TINY, f"model.variant={variant}", *extra]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_of_predictions_and_scores(variant):
    method = _method(variant)
    mesh = make_mesh(jax.devices()[:1])
    batch = method.dataset("val")[np.arange(4)]
    assert set(batch) == {"image", "landmarks", "visible", "spacing"} and batch["landmarks"].shape == (4, 2, 2)
    state = init_train_state(method, mesh, method.batch_spec(4))
    out = make_predict_step(method.predict, mesh)(state, shard_batch(batch, mesh))
    assert out["landmarks"].shape == (4, 2, 2)
    est = np.asarray(out["landmarks"])
    assert np.all((est >= 0) & (est <= 15))  # walks stay in the image
    if variant == "sam":
        assert out["action_map"].shape == (4, 16, 16, 2)
    scores = jax.eval_shape(method.eval_step, state, batch)  # shapes only: no second compile
    assert {k: v.shape for k, v in scores.items()} == {k: (4,) for k in ("error_mm", "error_mm_lmk1",
                                                                       "error_mm_lmk2", "action_acc")}


@pytest.mark.parametrize("variant", VARIANTS)
def test_jitted_step_lowers_the_loss(variant, train_steps):
    """SAM: a fixed batch. SAC: fresh positions every step from the step key, so the loss is noisy; the mean
    of the last three steps must still fall below the first."""
    method = _method(variant, "optim.lr=1e-2")
    _, state, losses = train_steps(method, jax.devices()[:1], 12, method.dataset("train")[np.arange(4)])
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.85 * losses[0], losses
    assert "model" in state.batch_stats


@pytest.mark.parametrize("variant", VARIANTS)
def test_sharded_steps_match_single_device(variant, sharded_matches_single):
    """Two steps on 4 devices equal two on one, in float64. The runs differ only in the order of the sums
    (gradient all-reduce, batch-norm moments, the weighted CE over the global batch): relative differences
    ~ n u, n ~ 1e4 terms, u = 1.1e-16, about 1e-12; SAC's positions come from the same replicated step key
    (jax.random values do not depend on sharding), so the patches are identical. Adam passes the gradients'
    relative error on; rtol 1e-8 keeps a margin of 1e4 and lies far below a sharding error (a mean over one
    device's rows, or patches from another key, change the loss by O(0.1))."""
    sharded_matches_single(lambda: _method(variant), rows=4, steps=2, rtol=1e-8, atol=1e-11)


def test_sam_inference_on_the_perfect_map_finds_every_landmark_within_a_pixel():
    """The method's own inference path (argmax map -> K walks from the start grid -> mean) on the one-hot
    closed-form map: within 1 px per axis (the bound of `kfjax.methods.common.actions`), so within sqrt(2)
    px, i.e. sqrt(2) mm at the procedural spacing of 1 mm, plus float32 round-off."""
    method = _method("sam", "walk.starts=3", "walk.max_steps=0")
    batch = method.dataset("val")[np.arange(8)]

    def perfect(state, batch):
        labels, _ = method.action_targets(batch)
        return 10.0 * jax.nn.one_hot(labels, 4)

    method.action_logits = perfect
    out = method.predict(None, batch)
    err = np.abs(np.asarray(out["landmarks"]) - batch["landmarks"])
    assert err.max() <= 1.0 + 1e-5, err.max()
    scores = {k: np.asarray(v) for k, v in method.eval_step(None, batch).items()}
    assert np.all(scores["action_acc"] == 1.0) and np.all(scores["error_mm"] <= np.sqrt(2.0) + 1e-5)


@pytest.mark.slow
def test_sam_learns_the_action_map_and_the_walk_finds_the_landmarks():
    """The defining property. A 3-level DI2IN trained for 60 steps on procedural images must classify most
    pixels' optimal action (chance is 1/4: the 4 sectors are of similar size) and its greedy walk must land
    closer to the landmarks than the untrained network's. Thresholds: accuracy > 0.5 (measured ~0.7 after 50
    steps with 2 levels, ~0.9 after 150 with 4), error < 0.7 x the untrained error (measured 15 -> 7 px)."""
    method = _method("sam", "data.size=32", "model.channels=8,16,32", "data.n_train=64", "data.n_val=16",
                     "data.batch_size=8", "optim.lr=3e-3", "walk.max_steps=0")
    mesh = make_mesh(jax.devices()[:1])
    train, test = method.dataset("train"), method.dataset("val")
    evaluate = make_eval_step(method.eval_step, mesh)
    state = init_train_state(method, mesh, method.batch_spec(8))

    def scores(state):
        out = to_host(evaluate(state.for_evaluation(), shard_batch(test[np.arange(16)], mesh)))
        return {k: float(out[k].compute()) for k in ("action_acc", "error_mm")}

    before = scores(state)
    step = make_train_step(method.train_step, mesh)
    rng = np.random.default_rng(0)
    for _ in range(60):
        state, _ = step(state, shard_batch(train[rng.choice(len(train), 8, replace=False)], mesh))
    after = scores(state)
    assert after["action_acc"] > 0.5, (before, after)
    assert after["error_mm"] < 0.7 * before["error_mm"], (before, after)


def test_sam_target_is_the_closed_form_map_with_visibility_and_band_weights():
    method = _method("sam", "loss.diagonal_band=1.5", "loss.diagonal_weight=0.25")
    batch = method.dataset("train")[np.arange(2)]
    batch["visible"][1, 0] = 0.0
    labels, weight = method.action_targets(batch)
    expected = optimal_action_map(batch["landmarks"][:, 1], (16, 16))
    np.testing.assert_array_equal(np.asarray(labels[..., 1]), np.asarray(expected))
    w = np.asarray(weight)
    assert np.all(w[1, ..., 0] == 0) and set(np.unique(w[0, ..., 0])) == {0.25, 1.0}


def test_patches_are_centred_on_the_position_and_zero_outside():
    image = jnp.arange(2 * 10 * 12, dtype=jnp.float32).reshape(2, 10, 12, 1) + 1.0
    patches = np.asarray(cut_patches(image, jnp.array([1, 0]), jnp.array([[4, 5], [0, 0]]), 4))
    np.testing.assert_array_equal(patches[0, 2, 2, 0], image[1, 4, 5, 0])
    np.testing.assert_array_equal(patches[0, ..., 0], image[1, 2:6, 3:7, 0])
    assert np.all(patches[1, :2] == 0) and np.all(patches[1, :, :2] == 0) and patches[1, 2, 2, 0] == image[0, 0, 0, 0]
    np.testing.assert_array_equal(start_grid(32, 1), [[15, 15]])
    assert start_grid(64, 2).tolist() == [[15, 15], [15, 47], [47, 15], [47, 47]]


def test_sac_samples_follow_the_landmarks_and_are_labelled_optimally():
    """With every sample drawn around a landmark (sigma 1 px) each position lies within 5 sigma per axis of
    one (a Gaussian beyond 5 sigma: p ~ 6e-7 per coordinate, 256 coordinates here), clipping only moves it
    inwards; labels are the closed-form actions at the positions, and each patch is centred on its position."""
    from kfjax.methods.common.actions import optimal_actions

    method = _method("sac", "loss.samples=64", "loss.near_fraction=1.0", "loss.near_sigma=1.0")
    batch = method.dataset("train")[np.arange(2)]
    out = {k: np.asarray(v) for k, v in method.sample_patches(batch, jax.random.key(0)).items()}
    assert out["patches"].shape == (128, 8, 8, 1) and out["labels"].shape == (128, 2)
    owner = np.repeat(np.arange(2), 64)
    lm, pos = batch["landmarks"][owner], out["positions"]
    assert np.all(np.min(np.max(np.abs(lm - pos[:, None]), -1), -1) <= 5.0 + 0.5)  # + rounding
    np.testing.assert_array_equal(out["labels"], optimal_actions(lm, np.repeat(pos[:, None], 2, 1)))
    np.testing.assert_array_equal(out["patches"][:, 4, 4, 0], batch["image"][owner, pos[:, 0], pos[:, 1], 0])
    np.testing.assert_array_equal(out["weight"], 1.0)


def test_infer_returns_landmarks_of_a_users_image():
    """`kfjax infer sac` path: a 2-D image of another size is padded to a square and resampled to the training
    grid, walked, and the landmarks come back in its own pixels (inside the padded square: an untrained walk
    may end in the padding) and in world mm through its affine."""
    from kfjax.io import Volume

    method = _method("sam")
    state = init_train_state(method, make_mesh(jax.devices()[:1]), method.batch_spec(4))
    image = np.random.default_rng(0).uniform(0, 100, (24, 20)).astype(np.float32)
    affine = np.diag([0.5, 0.5, 1.0, 1.0])
    result = method.infer(state, {"volume": Volume(image, affine, None)}, progress=False)
    assert result.names == ("disk", "ring") and result.pixel.shape == (2, 2) and result.world.shape == (2, 3)
    assert np.all(result.pixel >= -0.5) and np.all(result.pixel <= 24 - 0.5)  # in the image padded to a square
    np.testing.assert_allclose(result.world[:, :2], 0.5 * result.voxel[:, :2], rtol=1e-6)


def test_bad_settings_are_refused():
    for bad, match in (("model.variant=dqn", "model.variant"), ("data.source=ct", "data.source"),
                       ("data.size=31", "divisible"), ("walk.starts=0", "walk.starts"),
                       ("loss.near_fraction=2", "near_fraction")):
        with pytest.raises(ConfigError, match=match):
            _method("sam", bad)
    with pytest.raises(ConfigError, match="6 landmarks"):
        SACMethod(apply_overrides(SACConfig(), ["data.landmarks=2"]))
    with pytest.raises(ConfigError, match="split"):
        _method("sac").dataset("validation")
