"""Multitask view + landmark method: shapes per variant, jitted steps lower the loss, sharded == single device,
the defining property (unsupervised landmark channels get no gradient from the heatmap, coordinate and
adversarial terms), one MTL net is smaller than the two single-task nets, the scores, bad settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax.cli import main
from kfjax.config import apply_overrides
from kfjax.data.ultrasound import CHANNELS, VIEWS
from kfjax.errors import ConfigError
from kfjax.methods.mtl_view_landmark import MTLConfig, MTLViewLandmarkMethod, landmark_scores
from kfjax.train.loop import init_train_state
from kfjax.train.mesh import make_mesh, shard_batch, to_host
from kfjax.train.precision import cast_floats
from kfjax.train.step import make_train_step

TINY = ["data.size=32", "data.n_train=8", "data.n_val=4", "data.batch_size=4", "model.channels=4,8",
        "model.decoder_features=4", "model.kernel=5", "model.d_features=4", "optim.warmup_steps=0", "train.steps=10"]
L = len(CHANNELS)


def _method(*extra):
    return MTLViewLandmarkMethod(apply_overrides(MTLConfig(), [*TINY, *extra]))


def _steps(method, devices, steps, x64=False):
    mesh = make_mesh(devices)
    batch = method.dataset("train")[np.arange(4)]
    state = init_train_state(method, mesh, method.batch_spec(4))
    if x64:
        batch, state = cast_floats(batch, np.float64), cast_floats(state, np.float64)
    step = make_train_step(method.train_step, mesh, method.config.train)
    logs = []
    for _ in range(steps):
        state, out = step(state, shard_batch(batch, mesh))
        logs.append({k: float(v) for k, v in to_host(out).items()})
    return mesh, state, logs


@pytest.fixture(scope="module")
def trained():
    """(method, fresh state, logs of 8 jitted steps on one device) of the tiny MTL configuration."""
    method = _method()
    mesh = make_mesh(jax.devices()[:1])
    start = init_train_state(method, mesh, method.batch_spec(4))
    _, _, logs = _steps(method, jax.devices()[:1], 8)
    return method, start, logs


@pytest.mark.parametrize("variant", ["mtl", "view_only", "landmark_only"])
def test_shapes_and_scores(variant):
    """Shapes only (jax.eval_shape: traced, not compiled)."""
    method = _method(f"model.variant={variant}")
    batch = method.dataset("val")[np.arange(4)]
    state = jax.eval_shape(method.init, jax.random.key(0), batch)
    out = jax.eval_shape(method.predict, state, batch)
    keys = ({"view_probs", "view"} if variant != "landmark_only" else set()) | \
        ({"heatmaps", "landmarks"} if variant != "view_only" else set())
    assert set(out) == keys
    if "view" in out:
        assert out["view_probs"].shape == (4, len(VIEWS)) and out["view"].dtype == jnp.int32
    if "heatmaps" in out:
        assert out["heatmaps"].shape == (4, 32, 32, L) and out["landmarks"].shape == (4, L, 2)
    scores = jax.eval_shape(method.eval_step, state, batch)
    assert ("view_accuracy" in scores) == (variant != "landmark_only")
    assert ("length_mm" in scores) == ("landmark_mm" in scores) == (variant != "view_only")
    assert all(v.shape == (4,) for v in scores.values())


def test_jitted_steps_lower_the_loss(trained):
    _, _, logs = trained
    first, last = logs[0], logs[-1]
    assert all(np.isfinite(v) for log in logs for v in log.values())
    assert last["view_ce"] < first["view_ce"] and last["heatmap_mse"] < first["heatmap_mse"]
    assert "d_loss" in last and "g_adv" in last


def test_sharded_steps_match_single_device(n_devices):
    """Three steps on 4 devices equal three on one, in float64. The runs differ only in the order of the
    floating-point sums (the gradient's all-reduce, the batch means): relative differences ~ n u with
    n ~ 1e5 terms and u = 1.1e-16, ~1e-11. Adam's update m / (sqrt(v) + eps) keeps that relative size unless a
    gradient component is ~0, where eps (1e-8) bounds the step change to ~lr x 1e-11 / 1e-8 = 2e-6 x 1e-3;
    so rtol 1e-8 with atol 1e-8 leaves a margin of 1e3, while a sharding error (one device's mean) is O(1)."""
    method = _method()
    with jax.enable_x64(True):
        _, single, a = _steps(method, jax.devices()[:1], 3, x64=True)
        mesh, sharded, b = _steps(method, jax.devices(), 3, x64=True)
        assert mesh.size == n_devices
        for x, y in zip(a, b):
            np.testing.assert_allclose([y[k] for k in sorted(y)], [x[k] for k in sorted(x)], rtol=1e-8)
        for x, y in zip(jax.tree.leaves(to_host(single.params)), jax.tree.leaves(to_host(sharded.params))):
            assert x.dtype == np.float64
            np.testing.assert_allclose(y, x, rtol=1e-8, atol=1e-8)


def test_unsupervised_channels_get_no_gradient(trained):
    """The defining property: the landmark loss (heatmap MSE + coordinate L1 + adversarial term) sees only the
    true view's channels, so its gradient w.r.t. the heatmaps, and w.r.t. the output conv's weights of a
    channel no view in the batch supervises, is exactly zero; supervised channels get a nonzero gradient."""
    method, state, _ = trained
    batch = method.dataset("train")[np.arange(4)]
    mask = batch["landmark_mask"]
    assert 0 < mask.sum() < mask.size and (mask.sum(axis=0) == 0).any()
    params, dis = state.params["model"], state.params["discriminator"]
    _, heatmaps = method.apply(params, batch["image"])
    grad = jax.grad(lambda h: method.landmark_loss(h, batch, dis)[0])(heatmaps)
    per_channel = np.abs(np.asarray(grad)).sum(axis=(1, 2))  # (B, L)
    assert np.all(per_channel[mask == 0] == 0.0) and np.all(per_channel[mask == 1] > 0.0)
    g = jax.grad(lambda p: method.landmark_loss(method.apply(p, batch["image"])[1], batch, dis)[0])(params)
    kernel = np.abs(np.asarray(g["heatmaps"]["kernel"])).sum(axis=(0, 1, 2))  # (L,)
    unused = mask.sum(axis=0) == 0
    assert np.all(kernel[unused] == 0.0) and np.all(kernel[~unused] > 0.0)


def test_one_multitask_net_is_smaller_than_two_single_task_nets():
    counts = {v: _method(f"model.variant={v}").parameter_count() for v in ("mtl", "view_only", "landmark_only")}
    assert max(counts["view_only"], counts["landmark_only"]) < counts["mtl"]
    assert counts["mtl"] < counts["view_only"] + counts["landmark_only"]


def test_landmark_scores():
    """A (3, 4) px offset at 0.5 mm/px is 2.5 mm; moving both ends of a pair by the same offset keeps its length."""
    target = np.random.default_rng(0).uniform(5, 25, (2, L, 2)).astype(np.float32)
    mask = np.zeros((2, L), np.float32)
    mask[0, :4] = 1.0  # kidney_long: two measurements; the second row supervises nothing
    spacing = np.full((2, 2), 0.5, np.float32)
    scores = landmark_scores(target + np.array([3.0, 4.0], np.float32), target, mask, spacing)
    np.testing.assert_allclose(scores["landmark_mm"][0], 2.5, rtol=1e-6)
    np.testing.assert_allclose(scores["length_mm"][0], 0.0, atol=1e-5)
    assert np.isnan(scores["landmark_mm"][1]) and np.isnan(scores["length_mm"][1])
    assert np.isnan(scores["length_mm/liver_length"][0]) and np.isfinite(scores["length_mm/kidney_length"][0])


@pytest.mark.parametrize("bad, match", [("model.variant=both", "model.variant"), ("model.kernel=4", "odd"),
                                        ("data.size=33", "divisible"), ("loss.heatmap_weight=-1", "heatmap_weight"),
                                        ("loss.temperature=0", "temperature"), ("loss.sigma=nan", "sigma")])
def test_bad_settings_are_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        _method(bad)


@pytest.mark.slow
def test_cli_trains(tmp_path):
    assert main(["train", "mtl_view_landmark", "--workdir", str(tmp_path / "run"), "--no-progress",
                 "--set", *TINY, "train.steps=2", "train.checkpoint_every=2"]) == 0
