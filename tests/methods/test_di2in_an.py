"""DI2IN-AN: shapes; a jitted step lowers the loss; sharded == single device; pre-training leaves the critic
untouched and moves the generator exactly as DI2IN does; with adv.weight=0 the generator is DI2IN's; infer."""

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from kfjax.cli import main
from kfjax.config import apply_overrides
from kfjax.errors import ConfigError, InputError
from kfjax.io import Volume
from kfjax.methods.di2in import DI2INConfig, DI2INMethod
from kfjax.methods.di2in_an import DI2INANConfig, DI2INANMethod
from kfjax.train.loop import init_train_state
from kfjax.train.mesh import make_mesh, shard_batch, to_host
from kfjax.train.method import zeros_like_spec
from kfjax.train.precision import cast_floats
from kfjax.train.state import TrainState
from kfjax.train.step import make_train_step

# 16^3 cases, a 2-level generator of 4-8 features, a 2-level critic: a step costs well under a second
SMALL = ["data.size=16", "data.n_train=4", "data.n_val=2", "data.n_test=2", "data.batch_size=4",
         "model.channels=4,8", "model.critic_channels=4,8", "optim.warmup_steps=0", "optim.schedule=constant"]


def _method(*extra) -> DI2INANMethod:
    return DI2INANMethod(apply_overrides(DI2INANConfig(), SMALL + list(extra)))


def _train(method, state, batch, mesh, steps):
    step = make_train_step(method.train_step, mesh)
    logs = []
    for _ in range(steps):
        state, metrics = step(state, shard_batch(batch, mesh))
        logs.append({k: float(v) for k, v in to_host(metrics).items()})
    return to_host(state), logs


def _start(method, devices, x64=False):
    mesh = make_mesh(devices)
    batch = {k: v for k, v in method.dataset("train")[np.arange(4)].items() if k in ("image", "label")}
    state = init_train_state(method, mesh, batch)
    return (mesh, cast_floats(batch, np.float64), cast_floats(state, np.float64)) if x64 else (mesh, batch, state)


def test_shapes_and_critic_inputs():
    for condition, channels in (("false", 1), ("true", 2)):
        method = _method(f"model.condition={condition}")
        batch = method.dataset("train")[np.arange(4)]
        assert batch["image"].shape == (4, 16, 16, 16, 1) and batch["missing"].shape == (4,)
        state = jax.eval_shape(lambda key: method.init(key, zeros_like_spec(method.batch_spec(4))),
                               jax.random.key(0))
        assert set(state.params) == {"generator", "discriminator"} and "generator" in state.batch_stats
        critic_in = method.critic_input(batch, batch["label"])
        assert critic_in.shape == (4, 16, 16, 16, channels)
        logits = jax.eval_shape(method.discriminate, state.params["discriminator"], critic_in)
        assert logits.shape == (4,)
        probability = jax.eval_shape(method.predict, state, batch)["probability"]
        assert probability.shape == (4, 16, 16, 16, 1)
    kernel = state.params["discriminator"]["ConvNormAct_0"]["Conv_0"]["kernel"]
    assert kernel.shape == (3, 3, 3, 2, 4)  # the conditioned critic's first convolution reads image and mask


def test_a_hard_critic_mask_is_binary_and_passes_the_probability_gradient():
    """model.critic_mask=hard shows the critic the mask thresholded at 0.5 (no softness to tell it from a true
    mask) and gives the generator the probability's gradient (straight-through): d mask / d logit = p (1 - p)."""
    logits = jnp.linspace(-3.0, 3.0, 13).reshape(1, 13, 1)
    soft, hard = _method().generated_mask(logits), _method("model.critic_mask=hard").generated_mask(logits)
    np.testing.assert_array_equal(hard, (np.asarray(logits) > 0).astype(np.float32))
    p = jax.nn.sigmoid(logits)
    np.testing.assert_allclose(soft, p)
    grad = jax.grad(lambda x: jnp.sum(_method("model.critic_mask=hard").generated_mask(x) * jnp.arange(13.0)[:, None]))
    np.testing.assert_allclose(grad(logits), (p * (1 - p)) * jnp.arange(13.0)[:, None], rtol=1e-6)


@pytest.mark.slow
def test_adversarial_steps_lower_the_segmentation_loss():
    method = _method("adv.pretrain_steps=0", "adv.weight=0.1")
    mesh, batch, state = _start(method, jax.devices()[:1])
    _, logs = _train(method, state, batch, mesh, 6)
    assert all(r["adversarial"] == 1.0 and r["d_loss"] > 0 for r in logs)
    assert logs[-1]["seg_loss"] < 0.9 * logs[0]["seg_loss"], [r["seg_loss"] for r in logs]
    assert logs[-1]["d_loss"] < logs[0]["d_loss"]  # the critic learns to tell the masks apart


@pytest.mark.slow
def test_sharded_steps_match_single_device_and_the_critic_keeps_its_cadence(n_devices):
    """Four steps (one of pre-training, then the critic every 2nd step, 2 updates each) on 4 devices equal four
    on one, in float64: the runs differ only in the order of floating-point sums (gradient all-reduce, batch
    means, batch statistics), relative ~ n u with n ~ 1e4 and u = 1.1e-16; a GAN amplifies that step by step
    (float32 runs of the other GANs reach 1e-4 by step 4), so float64 stays near 1e-11 and rtol 1e-8 keeps a
    margin of 1e3 while a sharding error (a mean over one device's rows) changes the loss at 1e-2 or more."""
    extra = ("adv.pretrain_steps=1", "adv.d_every=2", "adv.d_steps=2", "adv.weight=0.1")
    with jax.enable_x64(True):
        method = _method(*extra)
        single, single_logs = _train(*_run_args(method, jax.devices()[:1]), steps=4)
        sharded, logs = _train(*_run_args(method, jax.devices()), steps=4)
    assert len(jax.devices()) == n_devices
    for key in ("loss", "d_loss", "g_adv"):
        np.testing.assert_allclose([r[key] for r in logs], [r[key] for r in single_logs], rtol=1e-8, atol=1e-12)
    for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)
    # the critic moved on adversarial steps 0 and 2 (steps 1 and 3 of the run), twice each: 4 Adam counts
    counts = [int(x) for x in jax.tree.leaves(single.opt_state["discriminator"]) if np.ndim(x) == 0]
    assert counts and all(c == 4 for c in counts), counts
    assert [r["adversarial"] for r in single_logs] == [0.0, 1.0, 1.0, 1.0]
    assert single_logs[0]["d_loss"] == 0.0 and single_logs[2]["d_loss"] == 0.0 and single_logs[1]["d_loss"] > 0


def _run_args(method, devices):
    mesh, batch, state = _start(method, devices, x64=True)
    return method, state, batch, mesh


def _di2in_steps(an: DI2INANMethod, start: TrainState, batch, mesh, steps: int):
    """Plain DI2IN (same network, loss and optimiser) from the generator of `start`: its parameters after `steps`."""
    cfg = apply_overrides(DI2INConfig(), ["data.spatial_dims=3", "data.size=16", "data.n_train=4",
                                          "data.batch_size=4", "model.channels=4,8", "optim.warmup_steps=0",
                                          "optim.schedule=constant"])
    method = DI2INMethod(cfg)
    assert method.network() == an.network()
    tx = method.optimizers()
    state = TrainState.create({"model": start.params["generator"]}, tx, jax.random.key(0),
                              {"model": start.batch_stats["generator"]})
    state = cast_floats(state, np.float64)
    state, _ = _train(method, state, batch, mesh, steps)
    return state


@pytest.mark.slow
@pytest.mark.parametrize("extra, critic_moves", [
    (("adv.pretrain_steps=5",), False),  # pre-training: the critic is left alone
    (("adv.pretrain_steps=0", "adv.weight=0"), True),  # lambda_adv = 0: the critic trains, the generator ignores it
])
def test_generator_update_equals_di2in_when_the_adversarial_term_is_off(extra, critic_moves):
    """Float64: the two programs differ only in how XLA fuses the same operations (the generator's gradient is
    one VJP of the summed cotangents here, `jax.grad` of the loss in DI2IN), relative differences ~ 1e-13 after
    3 Adam steps; rtol 1e-9 would catch an adversarial term of any weight or a wrong loss."""
    with jax.enable_x64(True):
        method = _method(*extra)
        mesh, batch, start = _start(method, jax.devices()[:1], x64=True)
        start = to_host(start)
        state, logs = _train(method, jax.tree.map(jnp.asarray, start), batch, mesh, 3)
        plain = _di2in_steps(method, start, batch, mesh, 3)
    for a, b in zip(jax.tree.leaves(state.params["generator"]), jax.tree.leaves(plain.params["model"])):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves((state.params["discriminator"],
                                                                    state.opt_state["discriminator"])),
                                                 jax.tree.leaves((start.params["discriminator"],
                                                                  start.opt_state["discriminator"])))]
    assert all(same) != critic_moves


@pytest.mark.parametrize("override, words", [
    ("data.size=15", "divisible"),
    ("model.critic_norm=batch", "critic_norm"),
    ("adv.d_steps=0", "adv.d_steps"),
    ("adv.weight=-1", "adv.weight"),
    ("data.missing_fraction=2", "missing_fraction"),
    ("train.accumulate=2", "accumulate"),
    ("model.critic_mask=binary", "critic_mask"),
])
def test_bad_settings_are_config_errors(override, words):
    with pytest.raises(ConfigError, match=words):
        _method(override)


@pytest.mark.slow
def test_infer_resamples_slides_windows_and_keeps_the_input_grid():
    """A volume at the training spacing and size gives the direct prediction; an anisotropic larger one is
    resampled, covered by windows and returned on its own grid with its affine."""
    method = _method("infer.window_batch=1")
    state = init_train_state(method, make_mesh(jax.devices()[:1]), method.batch_spec(4))
    case = method.dataset("val")[np.arange(1)]
    hu = case["image"][0, ..., 0] * 500.0 - 200.0  # back to HU through the training window
    spacing = method.spacing
    direct = np.asarray(jax.jit(method.predict)(state, {"image": case["image"]})["probability"])[0, ..., 0]
    same = method.infer(state, {"volume": Volume(hu, np.diag([spacing] * 3 + [1.0]))}, progress=False)
    decided = np.abs(direct - 0.5) > 1e-4
    assert decided.mean() > 0.5
    np.testing.assert_array_equal(same.array[decided], (direct >= 0.5)[decided])
    affine = np.diag([spacing / 2, spacing, spacing * 1.5, 1.0])
    big = np.pad(hu, ((0, 8), (4, 0), (0, 2)), mode="edge")
    out = method.infer(state, {"volume": Volume(big, affine)}, progress=False)
    assert out.array.shape == big.shape and out.array.dtype == np.uint8
    np.testing.assert_allclose(out.affine, affine)


@pytest.mark.parametrize("array, words", [
    (np.zeros((20, 20), np.float32), "2-D"),
    (np.zeros((16, 16, 16, 3), np.float32), "one CT channel"),
    (np.full((16, 16, 16), np.nan, np.float32), "NaN"),
])
def test_infer_refuses_bad_volumes(array, words):
    method = _method()
    with pytest.raises(InputError, match=words):  # refused before the network runs: no state needed
        method.infer(None, {"volume": Volume(array, np.eye(4) * 12.0 + np.diag([0, 0, 0, -11.0]))}, progress=False)


@pytest.mark.slow
def test_cli_train_then_infer_writes_a_label_map_and_bad_files_exit_2(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main(["train", "di2in_an", "--workdir", str(workdir), "--no-progress", "--set", *SMALL,
                 "train.steps=2", "adv.pretrain_steps=1"]) == 0
    affine = np.diag([10.0, 12.0, 14.0, 1.0])
    good, flat = tmp_path / "ct.nii.gz", tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(50, 30, (20, 18, 16)).astype(np.float32), affine), good)
    nib.save(nib.Nifti1Image(np.zeros((20, 18), np.float32), np.eye(4)), flat)
    out = tmp_path / "mask.nii.gz"
    assert main(["infer", "di2in_an", "--workdir", str(workdir), "--input", str(good), "--out", str(out),
                 "--no-progress"]) == 0
    result = nib.load(str(out))
    assert result.shape == (20, 18, 16) and np.allclose(result.affine, affine)
    capsys.readouterr()
    bad = tmp_path / "bad.nii.gz"
    assert main(["infer", "di2in_an", "--workdir", str(workdir), "--input", str(flat), "--out", str(bad),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "2-D" in err and len(err.splitlines()) == 1 and not bad.exists()
