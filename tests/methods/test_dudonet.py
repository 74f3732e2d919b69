"""DuDoNet: the untrained network returns the LI inputs, gradients reach both networks through the Radon
inversion layer, a few steps lower the loss, the sharded step equals the single-device one, the variants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax.methods.registry import build as build_method
from kfjax.errors import ConfigError
from kfjax.nn.mask_pyramid import crop_sinogram, pad_sinogram
from kfjax.train.loop import init_train_state
from kfjax.train.mesh import make_mesh, replicate, shard_batch, to_host
from kfjax.train.step import make_train_step

QUICK = [
    "data.source=phantom",
    "data.geometry=adn_quarter",
    "data.n_phantoms=10",
    "data.masks_per_slice=2",
    "data.batch_size=4",
    "model.se_channels=[8,16,32]",
    "model.ie_channels=[8,16,32]",
    "optim.lr=1e-3",
]


@pytest.fixture(scope="module")
def method(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # the module's own data folder, restored after the module
        mp.setenv("KFJAX_DATA", str(tmp_path_factory.mktemp("data")))
        yield build_method("dudonet", overrides=QUICK)


def _batch(method, split="train", n=4):
    data = method.dataset(split)
    return {k: jnp.asarray(v) for k, v in data[np.arange(n)].items()}


def test_pad_and_crop_round_trip():
    x = jnp.arange(2 * 10 * 13 * 1, dtype=jnp.float32).reshape(2, 10, 13, 1)
    padded, pads = pad_sinogram(x, 8)
    assert padded.shape == (2, 16, 16, 1)
    np.testing.assert_array_equal(padded[:, 10:13, 1:14], x[:, 0:3])  # views wrap around (360° scan)
    np.testing.assert_array_equal(crop_sinogram(padded, pads), x)


def test_untrained_network_returns_li_and_grads_reach_both_networks(method):
    batch = _batch(method)
    state = method.init(jax.random.key(0), batch)
    out = jax.jit(method.predict)(state, batch)
    np.testing.assert_allclose(out["x_out"], batch["li_image"], atol=1e-6)
    np.testing.assert_allclose(out["y_out"], batch["li_sinogram"], atol=1e-6)
    grads = jax.jit(jax.grad(lambda p: method._objective(p, state, batch)[0]))(state.params["model"])
    norms = {name: float(optax_norm(g)) for name, g in grads.items()}
    assert norms["se_net"] > 0 and norms["ie_net"] > 0


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(tree)))


@pytest.mark.slow
def test_training_lowers_loss_and_sharded_step_matches(method, n_devices):
    batch = _batch(method)
    state = method.init(jax.random.key(0), batch)
    single = make_train_step(method.train_step, make_mesh(jax.devices()[:1]))
    first = None
    s = jax.tree_util.tree_map(jnp.copy, state)
    for _ in range(12):
        s, logs = single(s, batch)
        first = float(logs["loss"]) if first is None else first
    assert float(logs["loss"]) < first
    mesh = make_mesh()
    assert mesh.size == n_devices
    sharded = make_train_step(method.train_step, mesh)
    a, logs_a = single(jax.tree_util.tree_map(jnp.copy, state), batch)
    b, logs_b = sharded(replicate(state, mesh), shard_batch(jax.tree_util.tree_map(np.asarray, batch), mesh))
    np.testing.assert_allclose(float(logs_a["loss"]), float(logs_b["loss"]), rtol=1e-5)
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_eval_step_reports_baselines_and_size_groups(method):
    batch = _batch(method, "test", 10)
    state = method.init(jax.random.key(0), batch)
    values = jax.jit(method.eval_step)(state, batch)
    # untrained = LI exactly; every test slice carries all five size groups (two masks each)
    np.testing.assert_allclose(values["psnr"], values["li_psnr"], rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(values["ma_psnr"])))
    for g in range(5):
        assert int(np.sum(np.isfinite(np.asarray(values[f"psnr_g{g}"])))) == 2


@pytest.mark.parametrize("mode,keys", [("image", {"x_out"}), ("sinogram", {"x_out", "x_hat", "y_out"})])
def test_variants(method, mode, keys):
    variant = build_method("dudonet", overrides=QUICK + [f"model.mode={mode}"])
    variant._datasets = method._datasets  # same data, no rebuild
    batch = _batch(variant)
    state = variant.init(jax.random.key(1), batch)
    assert set(jax.jit(variant.predict)(state, batch)) == keys
    loss, (_, logs) = jax.jit(lambda p: variant._objective(p, state, batch))(state.params["model"])
    assert np.isfinite(float(loss)) and ("l1_consistency" in logs) == (mode == "sinogram")


def test_bad_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="model.mode"):
        build_method("dudonet", overrides=["model.mode=both"])


@pytest.mark.slow
def test_loss_weights_weigh_the_logged_terms(method):
    """The logged loss is the weighted sum of the logged L1 terms for non-default weights, and
    loss.consistency=0 (the "without RC loss" ablation) drops that term although it is still logged."""
    weights = {"sinogram": 0.25, "consistency": 0.0, "image": 3.0}
    variant = build_method("dudonet", overrides=QUICK + [f"loss.{k}={v}" for k, v in weights.items()])
    mesh = make_mesh(jax.devices()[:1])
    batch = {k: np.asarray(v) for k, v in method.dataset("train")[np.arange(4)].items()}
    state = init_train_state(variant, mesh, batch)
    _, logs = make_train_step(variant.train_step, mesh)(state, shard_batch(batch, mesh))
    logs = {k: float(v) for k, v in to_host(logs).items()}
    assert {f"l1_{k}" for k in weights} <= set(logs) and logs["l1_consistency"] > 0
    total = sum(w * logs[f"l1_{k}"] for k, w in weights.items())
    assert logs["loss"] == pytest.approx(total, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("geometry", ["dudonet_cvpr"])
def test_dudonet_geometry_trains_at_416(geometry, tmp_path, monkeypatch):
    """The DuDoNet paper's 416² geometry as a config: data, RIL and one jitted step at full size."""
    monkeypatch.setenv("KFJAX_DATA", str(tmp_path))
    overrides = ["data.source=phantom", f"data.geometry={geometry}", "data.n_phantoms=5", "data.masks_per_slice=1",
                 "data.batch_size=4", "model.se_channels=[4,8]", "model.ie_channels=[4,8]"]
    method = build_method("dudonet", overrides=overrides)
    batch = _batch(method)
    assert batch["li_image"].shape == (4, 416, 416, 1) and batch["li_sinogram"].shape == (4, 320, 321, 1)
    state = method.init(jax.random.key(0), batch)
    np.testing.assert_allclose(jax.jit(method.predict)(state, batch)["x_out"], batch["li_image"], atol=1e-5)
    new_state, logs = jax.jit(method.train_step)(state, batch, jax.random.key(1))
    assert np.isfinite(float(logs["loss"])) and float(logs["l1_sinogram"]) > 0
    assert float(optax_norm(jax.tree.map(lambda a, b: a - b, new_state.params, state.params))) > 0
