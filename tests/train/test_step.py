"""The jitted, sharded train step: same numbers as a single-device step, batch really sharded."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kfjax.nn import DI2IN
from kfjax.train.mesh import data_sharding, make_mesh, replicate, shard_batch, to_host
from kfjax.train.state import TrainState
from kfjax.train.step import make_eval_step, make_predict_step, make_train_step


def _batch(n=8, size=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, size, size, 1)).astype(np.float32)
    y = (x > 0.3).astype(np.float32)
    return {"image": x, "label": y}


def _setup(norm):
    model = DI2IN(channels=(4, 8), norm=norm)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
    stats = {"model": variables["batch_stats"]} if "batch_stats" in variables else {}
    state = TrainState.create({"model": variables["params"]}, {"model": optax.adam(1e-2)}, jax.random.key(1), stats)

    def step_fn(state, batch, key):
        def loss_fn(params):
            v = {**state.variables("model"), "params": params}
            mutable = ["batch_stats"] if stats else []
            (final, sides), upd = model.apply(v, batch["image"], train=True, mutable=mutable)
            noise = 1e-3 * jax.random.normal(key, final.shape)  # per-step key is used
            loss = optax.sigmoid_binary_cross_entropy(final + noise, batch["label"]).mean()
            return loss, upd

        (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["model"])
        new_stats = {"model": upd["batch_stats"]} if stats else {}
        return state.apply_gradients({"model": grads}, batch_stats=new_stats), {"loss": loss}

    return model, state, step_fn


def _run(devices, norm, steps=3):
    model, state, step_fn = _setup(norm)
    mesh = make_mesh(devices)
    state = replicate(state, mesh)
    step = make_train_step(step_fn, mesh)
    losses = []
    for i in range(steps):
        state, metrics = step(state, shard_batch(_batch(seed=i), mesh))
        losses.append(float(to_host(metrics)["loss"]))
    return to_host(state), losses


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_sharded_step_matches_single_device(norm, n_devices):
    single, single_losses = _run(jax.devices()[:1], norm)
    sharded, sharded_losses = _run(jax.devices(), norm)
    np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(sharded.batch_stats), jax.tree.leaves(single.batch_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert int(sharded.step) == 3


def test_batch_is_sharded_and_state_replicated(n_devices):
    mesh = make_mesh()
    batch = shard_batch(_batch(), mesh)
    x = batch["image"]
    assert x.sharding == data_sharding(mesh)
    assert len(x.addressable_shards) == 4
    assert {s.data.shape[0] for s in x.addressable_shards} == {2}
    model, state, step_fn = _setup("group")
    state = replicate(state, mesh)
    state, _ = make_train_step(step_fn, mesh)(state, batch)
    leaf = jax.tree.leaves(state.params)[0]
    assert leaf.sharding.is_fully_replicated


def test_state_is_donated(n_devices):
    mesh = make_mesh()
    model, state, step_fn = _setup("group")
    state = replicate(state, mesh)
    old_leaf = jax.tree.leaves(state.params)[0]
    make_train_step(step_fn, mesh)(state, shard_batch(_batch(), mesh))
    assert old_leaf.is_deleted()


def test_gan_style_step_updates_every_group_in_one_call(n_devices):
    """Two parameter groups with their own optimisers move in one compiled step."""
    gen, disc = nn.Dense(4), nn.Dense(1)
    pg = gen.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
    pd = disc.init(jax.random.key(1), jnp.zeros((1, 4)))["params"]
    state = TrainState.create({"generator": pg, "discriminator": pd},
                              {"generator": optax.adam(1e-2), "discriminator": optax.sgd(1e-1)}, jax.random.key(2))

    def step_fn(state, batch, key):
        def d_loss(p):
            fake = gen.apply({"params": state.params["generator"]}, batch["z"])
            return jnp.mean(disc.apply({"params": p}, fake) ** 2)

        def g_loss(p):
            fake = gen.apply({"params": p}, batch["z"])
            return jnp.mean((disc.apply({"params": state.params["discriminator"]}, fake) - 1) ** 2)

        gd, gg = jax.grad(d_loss)(state.params["discriminator"]), jax.grad(g_loss)(state.params["generator"])
        return state.apply_gradients({"discriminator": gd, "generator": gg}), {"loss": d_loss(state.params["discriminator"])}

    mesh = make_mesh()
    before = to_host(state.params)
    state = replicate(state, mesh)
    state, _ = make_train_step(step_fn, mesh)(state, shard_batch({"z": np.ones((8, 3), np.float32)}, mesh))
    after = to_host(state.params)
    for group in ("generator", "discriminator"):
        assert not np.allclose(jax.tree.leaves(before[group])[0], jax.tree.leaves(after[group])[0])


def test_eval_step_exact_sums_with_padding(n_devices):
    mesh = make_mesh()
    state = replicate(TrainState.create({"m": {}}, {"m": optax.sgd(0.1)}, jax.random.key(0)), mesh)
    values = np.arange(8, dtype=np.float32)
    valid = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
    step = make_eval_step(lambda s, b: {"v": b["v"] * 2.0}, mesh)
    out = to_host(step(state, shard_batch({"v": values, "_valid": valid}, mesh)))
    assert float(out["v"].total) == 2.0 * (0 + 1 + 2 + 3 + 4) and float(out["v"].count) == 5.0
    pred = make_predict_step(lambda s, b: {"y": b["v"] + 1}, mesh)(state, shard_batch({"v": values}, mesh))
    assert pred["y"].sharding == data_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(pred["y"]), values + 1)
