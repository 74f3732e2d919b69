"""ADN: loss weights, a jitted step lowers the loss and matches the sharded step; MAR data never pair."""

import jax
import numpy as np
import pytest

from kfjax.config import apply_overrides
from kfjax.data.unpaired import mar_split_slices, to_signed
from kfjax.methods.adn import ADNConfig, ADNMethod
from kfjax.train.loop import init_train_state
from kfjax.train.mesh import make_mesh, shard_batch, to_host
from kfjax.train.precision import cast_floats
from kfjax.train.step import make_eval_step, make_predict_step, make_train_step

SMALL = ["data.recipe=invert", "data.size=16", "data.n_toy=8", "data.batch_size=4", "model.base=4",
         "model.num_residual=1", "model.d_features=4", "optim.lr=1e-3"]


def _run(devices, steps, extra=(), x64=False):
    method = ADNMethod(apply_overrides(ADNConfig(), SMALL + list(extra)))
    mesh = make_mesh(devices)
    batch = method.dataset("train")[np.arange(4)]
    state = init_train_state(method, mesh, batch)
    if x64:  # parameters, Adam moments and data in float64: every operation of the step runs in float64
        batch, state = cast_floats(batch, np.float64), cast_floats(state, np.float64)
    step = make_train_step(method.train_step, mesh)
    logs = []
    for _ in range(steps):
        state, metrics = step(state, shard_batch(batch, mesh))
        logs.append({k: float(v) for k, v in to_host(metrics).items()})
    return method, mesh, state, logs


@pytest.mark.slow
def test_sharded_steps_match_single_device(n_devices):
    """Four steps on 4 devices equal four on one: the same losses and reduced images, in float64.

    The two runs compute the same function; they differ only in the order of floating-point sums (the
    gradient all-reduce over devices, the batch means, the convolution kernels XLA picks for 1 or 4 images).
    A GAN step amplifies such round-off: in float32 the losses of steps 3-4 differed by 4e-4 relative on an
    Intel CPU, about 7e3 float32 unit round-offs (u32 = 6e-8), while AMD CPUs stayed at 2e-7. That growth is a
    property of the training dynamics (small differences grow linearly with their start), not of the
    precision, so in float64 (u64 = 1.1e-16) the same growth leaves at most ~7e3 u64 = 8e-13 (measured on AMD:
    3e-16 for the losses, 7e-15 for the images). rtol = atol = 1e-9 keeps a factor 1000 for a CPU with faster
    growth and is still 1e6 below what a real sharding error (a per-device instead of a global batch mean, a
    missing all-reduce) changes after one step (>= 1e-3). Parameters are not compared: see test_cyclegan.py.
    """
    with jax.enable_x64(True):
        method, mesh1, single, single_logs = _run(jax.devices()[:1], 4, x64=True)
        _, mesh, sharded, logs = _run(jax.devices(), 4, x64=True)
        assert mesh.size == n_devices
        np.testing.assert_allclose([r["loss"] for r in logs], [r["loss"] for r in single_logs], rtol=1e-9)
        batch = cast_floats(method.dataset("val")[np.arange(4)], np.float64)
        a = to_host(make_predict_step(method.predict, mesh)(sharded, shard_batch(batch, mesh)))
        b = to_host(make_predict_step(method.predict, mesh1)(single, shard_batch(batch, mesh1)))
    assert a["reduced"].dtype == np.float64
    np.testing.assert_allclose(a["reduced"], b["reduced"], rtol=0, atol=1e-9)


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
