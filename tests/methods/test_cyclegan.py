"""CycleGAN: a jitted step lowers the generator loss, keeps the pools, and matches a sharded step; data unpaired."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax.config import apply_overrides
from kfjax.data.unpaired import xray_signed
from kfjax.data.xray_decomposition import decomposition_set
from kfjax.methods.cyclegan import CycleGANConfig, CycleGANMethod
from kfjax.train.loop import init_train_state
from kfjax.train.mesh import make_mesh, shard_batch, to_host
from kfjax.train.step import make_eval_step, make_predict_step, make_train_step

XRAY = ["data.recipe=xray", "data.size=32", "data.n_train=8", "data.n_val=4", "data.flip=False"]  # phantom chest
SMALL = ["data.recipe=invert", "data.size=16", "data.n_toy=8", "data.batch_size=4", "model.features=4",
         "model.n_blocks=1", "model.d_features=4", "model.d_layers=2", "loss.pool_size=3", "loss.identity_weight=0.5"]


def _float64(tree):
    """Floating leaves of a pytree (arrays or a TrainState) as float64 (call inside `jax.enable_x64`)."""
    return jax.tree.map(lambda x: x.astype(np.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _run(devices, steps, x64=False):
    method = CycleGANMethod(apply_overrides(CycleGANConfig(), SMALL))
    mesh = make_mesh(devices)
    data = method.dataset("train")
    batch = data[np.arange(4)]
    state = init_train_state(method, mesh, batch)
    if x64:  # parameters, Adam moments, image pools and data in float64: the whole step runs in float64
        batch, state = _float64(batch), _float64(state)
    step = make_train_step(method.train_step, mesh)
    logs = []
    for _ in range(steps):
        state, metrics = step(state, shard_batch(batch, mesh))
        logs.append({k: float(v) for k, v in to_host(metrics).items()})
    return method, mesh, state, logs


def test_steps_train_and_keep_pools():
    method, mesh, sharded, logs = _run(jax.devices()[:1], 6)
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert all(np.isfinite(v) for r in logs for v in r.values())
    assert int(to_host(sharded.extra["pool_a"]["count"])) == 3
    scores = make_eval_step(method.eval_step, mesh)(sharded, shard_batch(method.dataset("val")[np.arange(4)], mesh))
    assert set(scores) == {"psnr", "ssim"} and np.isfinite(float(scores["psnr"].total))


@pytest.mark.slow
def test_sharded_steps_match_single_device(n_devices):
    """Four steps on 4 devices equal four on one: the same losses and translations, in float64.

    The runs differ only in the order of floating-point sums (gradient all-reduce, batch means, kernels
    chosen for 1 or 4 images), and a GAN amplifies that round-off from step to step (ADN's float32 runs: 4e-4
    relative at steps 3-4 on Intel, ~7e3 float32 round-offs; see tests/methods/test_adn.py). The growth is a
    property of the dynamics, so in float64 (u64 = 1.1e-16) it leaves <= ~1e-12; rtol = atol = 1e-9 keeps a
    factor 1000 and is 1e6 below the effect of a real sharding error. Raw parameters are not compared: the
    biases that precede an instance norm get round-off gradients, which Adam (g / (sqrt(v) + eps)) scales
    by up to lr / eps; they do not change any output.
    """
    with jax.enable_x64(True):
        method, mesh1, single, single_logs = _run(jax.devices()[:1], 4, x64=True)
        _, mesh, sharded, logs = _run(jax.devices(), 4, x64=True)
        assert mesh.size == n_devices
        np.testing.assert_allclose([r["loss"] for r in logs], [r["loss"] for r in single_logs], rtol=1e-9)
        batch = _float64(method.dataset("val")[np.arange(4)])
        a = to_host(make_predict_step(method.predict, mesh)(sharded, shard_batch(batch, mesh)))
        b = to_host(make_predict_step(method.predict, mesh1)(single, shard_batch(batch, mesh1)))
    assert a["translated"].dtype == np.float64
    np.testing.assert_allclose(a["translated"], b["translated"], rtol=0, atol=1e-9)


def test_invert_recipe_is_unpaired():
    """No domain-B image the training batches show is a domain-A image or its inversion (the translation
    truth b = -a), flipped or not; the paired validation set does hold b = -a.

    Two images of one pair agree to round-off; independent blob images differ by O(1) somewhere (the
    measured closest pair differs by 1.5 in [-1, 1]), so a pair shows as a maximum difference below 0.1.
    """
    method = CycleGANMethod(apply_overrides(CycleGANConfig(), SMALL))
    data = method.dataset("train")
    batches = [data[(np.arange(4) + 4 * k) % len(data)] for k in range(2 * len(data))]
    a = np.concatenate([x["a"] for x in batches])
    b = np.concatenate([x["b"] for x in batches])
    assert len({int(i) for x in batches for i in x["b_id"]}) >= len(data) // 2  # many B images seen
    b_any = np.concatenate([b, b[:, :, ::-1]])  # the recipe flips images left-right at random
    same = np.abs(a[:, None] - b_any[None]).max(axis=(2, 3, 4))
    inverse = np.abs(a[:, None] + b_any[None]).max(axis=(2, 3, 4))
    assert same.min() > 0.1 and inverse.min() > 0.1, "a B image pairs with an A image"
    val = method.dataset("val")[np.arange(4)]
    np.testing.assert_allclose(val["b"], -val["a"])  # the eval truth is the pair the training data never show
    np.testing.assert_array_equal(data[np.arange(8)]["b"], data[np.arange(8)]["b"])  # deterministic in the indices


def test_xray_recipe_is_unpaired_and_b_is_the_detector_rendering():
    """Training A images are DRRs and B images detector renderings of disjoint image indices (each image is a
    new pose and anatomy), every training image used once; eval pairs are a DRR and its own detector image."""
    method = CycleGANMethod(apply_overrides(CycleGANConfig(), [*SMALL, *XRAY]))
    data = method.dataset("train")
    assert set(data.a_id.tolist()).isdisjoint(data.b_id.tolist())
    assert sorted([*data.a_id.tolist(), *data.b_id.tolist()]) == list(range(8))
    full = decomposition_set("train", 32, "phantom", 8).arrays
    batch = data[np.arange(len(data))]
    np.testing.assert_array_equal(batch["a"], xray_signed(full["drr"][batch["a_id"]]))
    np.testing.assert_array_equal(batch["b"], xray_signed(full["detector"][batch["b_id"]]))
    val, truth = method.dataset("val").arrays, decomposition_set("val", 32, "phantom", 4).arrays
    np.testing.assert_array_equal(val["a"], xray_signed(truth["drr"]))
    np.testing.assert_array_equal(val["b"], xray_signed(truth["detector"]))
    assert np.all(val["mask"] == 1) and method.batch_spec(2)["a"].shape == (2, 32, 32, 1)
    assert float(val["b"].min()) >= -1 and float(val["b"].max()) <= 1
