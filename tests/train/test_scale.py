"""Accelerator-scale training, checked on CPU: mixed precision, rematerialisation, gradient accumulation,
parameter EMA, float16 loss scaling, profiling, the out-of-memory message and the data-wait share."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax.bench.method import backward_bytes
from kfjax.errors import ConfigError
from kfjax.methods import registry
from kfjax.train import loop
from kfjax.train.loop import TrainingError, init_train_state, train
from kfjax.train.mesh import make_mesh, shard_batch, to_host
from kfjax.train.precision import LOSS_SCALE_KEY, Precision, apply_network, precision_scope
from kfjax.train.state import EMA_KEY
from kfjax.train.step import make_train_step

# The smallest settings of every registered trainable method; a new method adds its line here.
TINY = {
    "di2in": ["data.size=32", "model.channels=8,16"],
    "dudonet": ["data.geometry=adn_quarter", "model.se_channels=8,16", "model.ie_channels=8,16"],
    "cyclegan": ["data.recipe=invert", "data.size=32", "model.features=8", "model.n_blocks=1", "model.d_features=8"],
    "adn": ["data.recipe=invert", "data.size=32", "model.base=8", "model.num_residual=1", "model.d_features=8"],
    "lsdn": ["data.downsample=4", "model.hidden=8,4"],
    "pix2pix": ["data.downsample=8", "model.channels=8,16", "model.d_features=8", "model.d_layers=2"],
    "self_inverse": ["data.downsample=8", "model.channels=8,16", "model.d_features=8", "model.d_layers=2"],
    "self_inverse_unpaired": ["data.recipe=invert", "data.size=32", "model.features=8", "model.n_blocks=1",
                              "model.d_features=8"],
    "landmark_i2i": ["data.source=procedural", "data.size=32", "model.channels=8,16"],
    "sac": ["data.source=procedural", "data.size=16", "model.channels=4,8"],
    "dqn_landmark": ["data.size=32", "model.channels=8,16", "model.hidden=16", "agent.replay_size=64",
                     "agent.replay_batch=16"],
    "mtl_view_landmark": ["data.size=32", "data.n_train=8", "data.n_val=4", "model.channels=4,8",
                          "model.decoder_features=4", "model.kernel=5", "model.d_features=4"],
    "u2net": ["data.domains=organ_phantom,prostate_like", "model.channels=4,8", "data.n_train=2", "data.n_val=1"],
    "di2in_an": ["data.size=16", "data.n_train=2", "data.n_val=2", "model.channels=4,8", "model.critic_channels=4,8"],
    "xray_decomposition": ["data.source=phantom", "data.size=32", "data.n_train=2", "model.channels=8,16"],
    "ice_contouring": ["model.pipeline=2d", "data.shape=16,16,16", "data.spacing=7.0", "data.frame_shape=32,32",
                       "data.n_frames=2", "data.n_train=1", "data.n_val=1", "data.n_test=1", "model.channels=4,8"],
    "point2": ["data.subject=phantom", "data.size=32", "data.n_train=2", "model.channels=8,16", "model.features=8",
               "model.n_poi=8"],
    "pose_regression": ["data.subject=phantom", "data.size=32", "data.n_train=2", "model.channels=8,16",
                        "model.hidden=8", "loss.points=32"],
}
# batches of rigid poses and X-rays: random numbers would make no case, so real rows
DATA_BATCHES = ("point2", "pose_regression")

BF16_UNIT_ROUNDOFF = 2.0**-8
# A loss computed by a network in bfloat16 carries about one rounding of relative size u per layer on its
# deepest path; the tiny networks have at most a dozen layers there (Lipschitz-1 normalised blocks), so the
# first-step loss agrees with float32's within 12 u ~ 4.7 %.
BF16_LOSS_RTOL = 12 * BF16_UNIT_ROUNDOFF


def _method(name, *extra, batch=2):
    return registry.build(name, None, [*TINY[name], f"data.batch_size={batch}", *extra])


def _batch(spec, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(0.0, 1.0, s.shape).astype(s.dtype) for k, s in spec.items()}


def _first_step(method, mesh, batch, state=None):
    """(state, metrics) after one train step from `state` (default: the method's fresh state; not donated)."""
    if state is None:
        state = init_train_state(method, mesh, method.batch_spec(method.config.data.batch_size))
    else:
        state = jax.tree.map(jnp.copy, state)
    step = make_train_step(method.train_step, mesh, method.config.train)
    return step(state, shard_batch(batch, mesh))


def _step_memory(method, mesh) -> int:
    """XLA's temporary memory (bytes) of the compiled train step."""
    state = init_train_state(method, mesh, method.batch_spec(method.config.data.batch_size))
    step = make_train_step(method.train_step, mesh, method.config.train)
    batch = shard_batch(_batch(method.batch_spec(method.config.data.batch_size)), mesh)
    return step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes


def test_every_trainable_method_has_tiny_settings():
    trainable = {n for n in registry.names() if registry.get(n).trainable}
    assert trainable == set(TINY), "add the new method's smallest settings to TINY"


@pytest.mark.parametrize("name", sorted(TINY))
def test_bfloat16_step_loss_agrees_with_float32(name):
    mesh = make_mesh(jax.devices()[:1])
    method = _method(name)
    batch = method.dataset("train")[np.arange(2)] if name in DATA_BATCHES else _batch(method.batch_spec(2))
    start = init_train_state(method, mesh, method.batch_spec(2))
    _, f32 = _first_step(method, mesh, batch, start)
    state, bf16 = _first_step(_method(name, "train.compute_dtype=bfloat16"), mesh, batch, start)
    assert bf16["loss"].dtype == jnp.float32
    np.testing.assert_allclose(float(bf16["loss"]), float(f32["loss"]), rtol=BF16_LOSS_RTOL)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(to_host(state.params)))


DI2IN_64 = ["data.size=64", "model.channels=16,32,64"]


def _saved_bytes(method, state, dtype=jnp.float32) -> int:
    """Bytes a supervised method's loss keeps for its backward pass (the residuals of `jax.vjp`), batch 8."""
    return backward_bytes(method, state, _batch(method.batch_spec(8)), dtype)


@pytest.mark.parametrize("name, extra", [("di2in", DI2IN_64), ("dudonet", [])])
def test_remat_and_bfloat16_keep_fewer_activations_for_the_backward_pass(name, extra):
    # What the backward pass keeps, as JAX hands it to XLA. (XLA:CPU's compiled temporary memory does not
    # show it: its scheduler does not exploit the recomputation; the gpu tests below check that figure.)
    method = _method(name, *extra, batch=8)
    state = init_train_state(method, make_mesh(jax.devices()[:1]), method.batch_spec(8))
    plain = _saved_bytes(method, state)
    blocks = _saved_bytes(_method(name, *extra, "model.remat=blocks", batch=8), state)
    full = _saved_bytes(_method(name, *extra, "model.remat=full", batch=8), state)
    bf16 = _saved_bytes(method, state, jnp.bfloat16)
    assert full < blocks < plain / 2
    assert bf16 < plain


@pytest.mark.gpu
@pytest.mark.parametrize("setting", ["train.compute_dtype=bfloat16", "model.remat=blocks"])
def test_bfloat16_and_remat_lower_the_compiled_temporary_memory_on_gpu(setting):
    mesh = make_mesh(jax.devices()[:1])
    plain = _step_memory(_method("di2in", *DI2IN_64, batch=8), mesh)
    assert _step_memory(_method("di2in", *DI2IN_64, setting, batch=8), mesh) < plain


@pytest.mark.parametrize("mode", ["blocks", "full"])
def test_remat_gives_the_same_gradients(mode):
    mesh = make_mesh(jax.devices()[:1])
    method = _method("dudonet", "optim.name=sgd", "optim.lr=1")
    batch = _batch(method.batch_spec(2))
    start = init_train_state(method, mesh, method.batch_spec(2))
    plain, _ = _first_step(method, mesh, batch, start)
    remat, _ = _first_step(_method("dudonet", "optim.name=sgd", "optim.lr=1", f"model.remat={mode}"), mesh, batch,
                           start)
    # Recomputation repeats the same float32 operations; only XLA's fusion choices may differ (last bits).
    for a, b in zip(jax.tree.leaves(to_host(plain.params)), jax.tree.leaves(to_host(remat.params))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _sgd_update(devices, *extra, batch=8):
    """Parameter change after one SGD step (lr 1: minus the gradient) of a group-norm DI2IN."""
    method = _method("di2in", "model.norm=group", "optim.name=sgd", "optim.lr=1", *extra, batch=batch)
    mesh = make_mesh(devices)
    state = init_train_state(method, mesh, method.batch_spec(batch))
    before = to_host(state.params)
    state, metrics = make_train_step(method.train_step, mesh, method.config.train)(
        state, shard_batch(_batch(method.batch_spec(batch)), mesh))
    after = to_host(state.params)
    return jax.tree.map(lambda a, b: b - a, before, after), float(metrics["loss"])


def test_accumulated_micro_batches_give_the_large_batch_update(n_devices):
    grads, loss = _sgd_update(jax.devices()[:1])
    for devices, k in ((jax.devices()[:1], 4), (jax.devices()[:2], 2)):
        acc, acc_loss = _sgd_update(devices, f"train.accumulate={k}")
        np.testing.assert_allclose(acc_loss, loss, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(acc), jax.tree.leaves(grads)):
            # Float32 sums of the same terms in another order: |error| <= N u max|term| with N = 8 x 32 x 32
            # terms per gradient entry, u = 2^-24; bounded here by N u times the largest gradient entry.
            bound = 8 * 32 * 32 * 2.0**-24 * float(np.max(np.abs(b)))
            np.testing.assert_allclose(a, b, rtol=0, atol=bound)


def test_accumulate_must_divide_the_batch(tmp_path):
    method = _method("di2in", "train.accumulate=3", batch=4)
    with pytest.raises(ConfigError, match="train.accumulate"):
        train(method, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value", [("train.compute_dtype", "float8"), ("train.accumulate", "0"),
                                        ("train.ema_decay", "1.5"), ("model.remat", "some")])
def test_bad_engine_settings_fail_before_the_workdir_is_written(tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        train(_method("di2in", f"{key}={value}", batch=4), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_parameter_ema_follows_its_formula_and_is_what_evaluation_uses():
    mesh = make_mesh(jax.devices()[:1])
    method = _method("di2in", "train.ema_decay=0.99", "model.norm=group")
    state = init_train_state(method, mesh, method.batch_spec(2))
    first = to_host(state.params)
    assert jax.tree.all(jax.tree.map(np.array_equal, to_host(state.extra[EMA_KEY]), first))
    state, _ = make_train_step(method.train_step, mesh, method.config.train)(
        state, shard_batch(_batch(method.batch_spec(2)), mesh))
    decay = min(0.99, (1 + 0) / (10 + 0))  # the warm-up at step 0
    expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, first, to_host(state.params))
    for a, b in zip(jax.tree.leaves(to_host(state.extra[EMA_KEY])), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert jax.tree.all(jax.tree.map(np.array_equal, to_host(state.for_evaluation().params),
                                     to_host(state.extra[EMA_KEY])))


def test_float16_loss_scaling_unscales_gradients_and_skips_overflow():
    mesh = make_mesh(jax.devices()[:1])
    f16 = _method("di2in", "train.compute_dtype=float16", "model.norm=group", "optim.name=sgd", "optim.lr=1")
    batch = shard_batch(_batch(f16.batch_spec(2)), mesh)
    step = make_train_step(f16.train_step, mesh, f16.config.train)
    state = init_train_state(f16, mesh, f16.batch_spec(2))
    before = to_host(state.params)
    scale0 = float(state.extra[LOSS_SCALE_KEY]["scale"])
    state, _ = step(state, batch)
    assert int(state.extra[LOSS_SCALE_KEY]["good_steps"]) == 1
    assert float(state.extra[LOSS_SCALE_KEY]["scale"]) == scale0
    f16_update = jax.tree.map(lambda a, b: b - a, before, to_host(state.params))
    f32_update, _ = _sgd_update(jax.devices()[:1], batch=2)
    for a, b in zip(jax.tree.leaves(f16_update), jax.tree.leaves(f32_update)):  # float16: u = 2^-11
        np.testing.assert_allclose(a, b, rtol=0, atol=0.05 * float(np.max(np.abs(b))) + 1e-6)
    # a scale that overflows float16 in the backward pass: no update, the scale halves
    huge = {"scale": jnp.asarray(1e30, jnp.float32), "good_steps": jnp.asarray(5, jnp.int32)}
    state = state.replace(extra={**state.extra, LOSS_SCALE_KEY: huge})
    kept = to_host(state.params)
    state, _ = step(state, batch)
    assert jax.tree.all(jax.tree.map(np.array_equal, kept, to_host(state.params)))
    assert float(state.extra[LOSS_SCALE_KEY]["scale"]) == pytest.approx(0.5e30)
    assert int(state.extra[LOSS_SCALE_KEY]["good_steps"]) == 0


def test_apply_network_casts_parameters_and_returns_float32():
    import flax.linen as nn

    dense = nn.Dense(3)
    variables = dense.init(jax.random.key(0), jnp.ones((2, 4)))
    with precision_scope(Precision(jnp.bfloat16)):
        out = apply_network(dense, variables, jnp.ones((2, 4)))
        grads = jax.grad(lambda v: apply_network(dense, v, jnp.ones((2, 4))).sum())(variables)
    assert out.dtype == jnp.float32
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    outside = apply_network(dense, variables, jnp.ones((2, 4)))
    np.testing.assert_allclose(out, outside, rtol=4 * 2.0**-8)  # a dot of 4 terms in bfloat16


def _tiny_run(tmp_path, *extra):
    method = _method("di2in", "model.norm=group", "train.steps=4", "train.log_every=2",
                     "train.checkpoint_every=2", *extra, batch=4)
    return method, tmp_path / "run"


def test_profile_and_data_wait_share(tmp_path):
    method, workdir = _tiny_run(tmp_path, "train.profile_steps=1")
    train(method, workdir, progress=False, evaluate_at_end=False, profile=tmp_path / "profile")
    assert list((tmp_path / "profile").rglob("*.xplane.pb")), "no trace written"
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    shares = [r["data_wait_share"] for r in rows if "data_wait_share" in r]
    assert shares and all(0.0 <= s <= 1.0 for s in shares)


def test_out_of_memory_stops_with_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    method, workdir = _tiny_run(tmp_path)
    real = loop.make_train_step
    calls = []

    def failing(step_fn, mesh, cfg):
        compiled = real(step_fn, mesh, cfg)

        def step(state, batch):
            calls.append(1)
            if len(calls) > 2:
                raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9 GiB")
            return compiled(state, batch)

        return step

    monkeypatch.setattr(loop, "make_train_step", failing)
    with pytest.raises(TrainingError) as error:
        train(method, workdir, progress=False)
    message = str(error.value)
    assert "\n" not in message
    for field in ("data.batch_size", "model.remat", "train.compute_dtype", "train.accumulate"):
        assert field in message
    assert (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir())
