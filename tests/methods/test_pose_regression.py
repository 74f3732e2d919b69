"""Pose regression: shapes; an untrained network returns the start; the pose update is a motion about the
start's centre that the true update undoes exactly; the loss is the anchors' mean distance; a jitted step lowers
it; sharded == single device (float64); bad settings are ConfigErrors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax import metrics
from kfjax.config import apply_overrides
from kfjax.errors import ConfigError
from kfjax.methods.pose_regression import PoseRegressionConfig, PoseRegressionMethod
from kfjax.physics import se3
from kfjax.register.pose import params_from_transform, transform_from_params
from kfjax.train.loop import init_train_state
from kfjax.train.mesh import make_mesh

# the procedural chest (no data) on a 32² detector, a two-level network
TINY = ["data.subject=phantom", "data.size=32", "data.n_train=4", "data.n_val=2", "data.n_test=4",
        "data.batch_size=2", "model.channels=8,16", "model.hidden=16", "loss.points=64",
        "optim.schedule=constant", "optim.warmup_steps=0"]


def _method(*extra):
    return PoseRegressionMethod(apply_overrides(PoseRegressionConfig(), [*TINY, *extra]))


def test_shapes_and_an_untrained_network_keeps_the_start():
    """The output layer starts at zero: the first estimate is the start pose itself."""
    method = _method()
    batch = method.dataset("test")[np.arange(2)]
    state = init_train_state(method, make_mesh(jax.devices()[:1]), method.batch_spec(2))
    prepared = method.prepare(batch)
    assert prepared["drr"].shape == (2, 2, 32, 32)
    assert method.network_inputs(prepared)[0].shape == (2, 32, 32, 4)
    out = jax.jit(method.predict)(state, batch)
    assert out["transform"].shape == (2, 4, 4)
    np.testing.assert_allclose(out["transform"], batch["init_transform"], atol=1e-5)
    scores = method.eval_step(state, batch)
    np.testing.assert_allclose(scores["mtre"], scores["mtre_init"], rtol=1e-5)


def test_the_true_update_gives_the_truth_and_zero_loss():
    """The update the network should output, D = T_gt ∘ T_init⁻¹ as parameters about init(c) divided by the start
    ranges, maps the start onto the truth; the loss is then 0 and equals the anchors' mean distance otherwise."""
    with jax.enable_x64(True):
        method = _method()
        batch = method.dataset("train")[np.arange(2)]
        c = np.asarray(method.scene.centre, np.float64)
        # the cases' poses made rigid in float64 (stored in float32, they are orthonormal to ~1e-7 only)
        rigid = lambda m: transform_from_params(params_from_transform(jnp.asarray(m, jnp.float64), c), c)  # noqa: E731
        init, gt = rigid(batch["init_transform"]), rigid(batch["gt_transform"])
        batch = {**batch, "init_transform": init, "gt_transform": gt}
        centre = se3.apply(init, np.asarray(method.scene.centre)[None])[:, 0]
        d = gt @ np.linalg.inv(init)
        update = jnp.stack([params_from_transform(d[b], centre[b]) for b in range(2)]) / method.start_ranges(
            jnp.float64)
        np.testing.assert_allclose(method.pose(update, init), gt, atol=1e-9)
        loss, _ = method.loss(update, batch)
        assert abs(float(loss)) < 1e-8
        points = np.asarray(method.scene.anchors[:64], np.float64)
        expected = np.mean(np.asarray(metrics.mtre(jnp.asarray(init), jnp.asarray(gt), jnp.asarray(points))))
        loss0, logs = method.loss(jnp.zeros((2, 6)), batch)
        np.testing.assert_allclose(float(loss0), expected, rtol=1e-9)
        assert float(logs["point_mm"]) == float(loss0)


def test_jitted_step_lowers_the_loss_on_a_fixed_batch():
    """Ten Adam steps (lr 1e-2) on one batch with one key (the same starts every step): the anchors' mean distance
    starts at the start's error (~10-20 mm) and must fall by 10 %: the output layer is all a fixed batch needs."""
    method = _method("optim.lr=1e-2")
    state = init_train_state(method, make_mesh(jax.devices()[:1]), method.batch_spec(2))
    batch = method.dataset("train")[np.arange(2)]
    step = jax.jit(lambda s, b: method.train_step(s, b, jax.random.PRNGKey(3)))
    losses = []
    for _ in range(10):
        state, logs = step(state, batch)
        losses.append(float(logs["loss"]))
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.slow
def test_sharded_steps_match_single_device(sharded_matches_single):
    """Two steps on 4 devices equal two on one, in float64: starts, DRRs and the loss are per row; the runs differ
    in the order of the loss mean's and the gradient all-reduce's sums, ~n u = 1e4 x 1.1e-16 relative; rtol 1e-7
    keeps a margin of 1e4 and is far below what a sharding error (a per-device mean, a per-device key) changes."""
    sharded_matches_single(lambda: _method("data.batch_size=4"), rows=4)


@pytest.mark.parametrize("override, message", [
    ("data.subject=knee", "data.subject"), ("data.pair=tilted", "data.pair"), ("model.channels=8,16,32,64,128,256",
                                                                              "data.size"),
    ("model.hidden=0", "model.hidden"), ("loss.points=2", "loss.points"), ("data.n_test=0", "data.n_test")])
def test_bad_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        _method(override).dataset("test")
