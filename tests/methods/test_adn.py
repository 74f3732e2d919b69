"""ADN: loss weights, a jitted step lowers the loss and matches the sharded step; MAR data never pair."""

import jax
import numpy as np
import pytest

from kfjax.config import apply_overrides
from kfjax.data.unpaired import mar_split_slices, to_signed
from kfjax.methods.adn import ADNConfig, ADNMethod
from kfjax.train.loop import init_train_state
from kfjax.train.mesh import make_mesh, shard_batch, to_host
from kfjax.train.step import make_eval_step, make_predict_step, make_train_step

SMALL = ["data.recipe=invert", "data.size=16", "data.n_toy=8", "data.batch_size=4", "model.base=4",
         "model.num_residual=1", "model.d_features=4", "optim.lr=1e-3"]


def _run(devices, steps, extra=()):
    method = ADNMethod(apply_overrides(ADNConfig(), SMALL + list(extra)))
    mesh = make_mesh(devices)
    batch = method.dataset("train")[np.arange(4)]
    state = init_train_state(method, mesh, batch)
    step = make_train_step(method.train_step, mesh)
    logs = []
    for _ in range(steps):
        state, metrics = step(state, shard_batch(batch, mesh))
        logs.append({k: float(v) for k, v in to_host(metrics).items()})
    return method, mesh, state, logs


@pytest.mark.slow
def test_sharded_steps_match_single_device(n_devices):
    """Same losses and reductions (parameters: see tests/methods/test_cyclegan.py)."""
    method, mesh1, single, single_logs = _run(jax.devices()[:1], 4)
    _, mesh, sharded, logs = _run(jax.devices(), 4)
    np.testing.assert_allclose([r["loss"] for r in logs], [r["loss"] for r in single_logs], rtol=1e-4)
    batch = method.dataset("val")[np.arange(4)]
    a = to_host(make_predict_step(method.predict, mesh)(sharded, shard_batch(batch, mesh)))
    b = to_host(make_predict_step(method.predict, mesh1)(single, shard_batch(batch, mesh1)))
    np.testing.assert_allclose(a["reduced"], b["reduced"], atol=2e-3)


def test_steps_lower_the_loss_with_the_official_weights():
    method, mesh, sharded, logs = _run(jax.devices()[:1], 5)
    assert set(sharded.params) == {"generator", "d_low", "d_high"}
    assert logs[-1]["loss"] < 0.9 * logs[0]["loss"]
    first = logs[0]
    total = 20 * (first["ll"] + first["hh"] + first["hlh"] + first["art"]) + first["gl"] + first["gh"]
    assert first["loss"] == pytest.approx(total, rel=1e-5)  # the official weights
    scores = make_eval_step(method.eval_step, mesh)(sharded, shard_batch(method.dataset("val")[np.arange(4)], mesh))
    assert np.isfinite(float(scores["psnr"].total)) and np.isfinite(float(scores["ssim"].total))


def test_ablation_adversarial_only():
    *_, logs = _run(jax.devices()[:1], 1, ["loss.rec=0", "loss.art=0", "loss.self_reduction=0"])
    assert logs[0]["loss"] == pytest.approx(logs[0]["gl"] + logs[0]["gh"], rel=1e-5)


def test_signed_scaling():
    np.testing.assert_allclose(to_signed(np.array([-0.01, 0.0, 0.025, 0.05, 0.09])), [-1, -1, 0, 1, 1])


def test_slice_split_is_disjoint_and_covers():
    ids = np.repeat(np.arange(10), 3)
    a, b = mar_split_slices(ids, seed=3)
    assert not set(a) & set(b) and set(a) | set(b) == set(range(10)) and len(b) == 5


@pytest.mark.slow
def test_mar_training_images_never_pair():
    """Artifact-free images come from held-out slices: no batch shows a slice in both domains."""
    method = ADNMethod(apply_overrides(ADNConfig(), ["data.downsample=4"]))
    data = method.dataset("train")
    assert not set(data.a_id) & set(data.b_id)
    assert len(set(data.b_id)) == len(data.b)  # one artifact-free image per held-out slice
    for step in range(8):
        batch = data[np.arange(2 * step, 2 * step + 2) % len(data)]
        assert not set(batch["a_id"]) & set(batch["b_id"])
        assert batch["a"].shape == (2, 64, 64, 1) and batch["a"].min() >= -1 and batch["a"].max() <= 1
    val = method.dataset("val")[np.arange(2)]
    assert set(val) >= {"a", "b", "mask"} and val["mask"].min() == 0  # metal excluded from scoring
