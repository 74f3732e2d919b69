"""Self-inverse network (paired one2one and unpaired): random swaps, half the generator parameters, f(f(x)) -> x
with training, a sharded step equal to the single-device one, bad settings, and `kfjax infer` in both directions."""

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from kfjax.cli import main
from kfjax.config import apply_overrides
from kfjax.errors import ConfigError
from kfjax.methods.cyclegan import CycleGANConfig, CycleGANMethod
from kfjax.methods.pix2pix import Pix2PixConfig, Pix2PixMethod
from kfjax.methods.self_inverse import SelfInverseConfig, SelfInverseMethod
from kfjax.methods.self_inverse_unpaired import SelfInverseUnpairedConfig, SelfInverseUnpairedMethod
from kfjax.train.loop import evaluate, init_train_state
from kfjax.train.mesh import make_mesh, shard_batch, to_host
from kfjax.train.precision import cast_floats
from kfjax.train.step import make_predict_step, make_train_step

# 4 mm slices (48 x 40), a 3-level U-Net of 16-32-64 features, a 2-layer PatchGAN of 4 base channels
SMALL = ["data.downsample=4", "data.batch_size=4", "model.channels=16,32,64", "model.d_features=4", "model.d_layers=2"]
UNPAIRED = ["data.recipe=invert", "data.size=16", "data.n_toy=8", "data.batch_size=4", "model.features=4",
            "model.n_blocks=1", "model.d_features=4", "model.d_layers=2", "loss.pool_size=3"]


def _n_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _param_shapes(method, batch_size=4):
    """Parameter shapes of a method's fresh state (traced only: nothing is compiled or run)."""
    return jax.eval_shape(lambda k, b: method.init_variables(k, b).params, jax.random.key(0),
                          method.batch_spec(batch_size))


# ---------------------------------------------------------------- the defining properties
def test_swaps_are_per_sample_from_the_key():
    method = SelfInverseMethod(apply_overrides(SelfInverseConfig(), SMALL))
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.normal(size=(64, 4, 4, 1))) for k in ("source", "target")}
    x, y, swapped = method.training_pairs(batch, jax.random.key(3), jnp.int32(0))
    s = np.asarray(swapped)[:, None, None, None]
    np.testing.assert_array_equal(x, np.where(s, batch["target"], batch["source"]))
    np.testing.assert_array_equal(y, np.where(s, batch["source"], batch["target"]))
    # 64 fair coins: P(fewer than 16 or more than 48 heads) < 1e-4
    assert 16 <= int(np.sum(s)) <= 48
    again = method.training_pairs(batch, jax.random.key(3), jnp.int32(0))[2]
    other = method.training_pairs(batch, jax.random.key(4), jnp.int32(0))[2]
    np.testing.assert_array_equal(again, swapped)
    assert np.any(np.asarray(other) != np.asarray(swapped))
    alternate = SelfInverseMethod(apply_overrides(SelfInverseConfig(), SMALL + ["model.swap=alternate"]))
    assert not np.any(alternate.training_pairs(batch, jax.random.key(3), jnp.int32(4))[2])
    assert np.all(alternate.training_pairs(batch, jax.random.key(3), jnp.int32(5))[2])


def test_one_generator_has_half_the_parameters_of_two():
    """one2one: one generator where pix2pix trains two (one per direction) and CycleGAN holds two."""
    si = _param_shapes(SelfInverseMethod(apply_overrides(SelfInverseConfig(), SMALL)))
    p2p = _param_shapes(Pix2PixMethod(apply_overrides(Pix2PixConfig(), SMALL)))
    two_pix2pix = 2 * _n_params(p2p["generator"])
    assert 2 * _n_params(si["generator"]) == two_pix2pix and _n_params(si["generator"]) > 0
    assert _n_params(si["discriminator"]) == _n_params(p2p["discriminator"])  # one D for both directions
    ablation = _param_shapes(SelfInverseMethod(apply_overrides(SelfInverseConfig(),
                                                               SMALL + ["model.direction_discriminators=true"])))
    assert set(ablation["discriminator"]) == {"ab", "ba"}
    assert _n_params(ablation["discriminator"]) == 2 * _n_params(si["discriminator"])
    unpaired = _param_shapes(SelfInverseUnpairedMethod(apply_overrides(SelfInverseUnpairedConfig(), UNPAIRED)))
    cyclegan = _param_shapes(CycleGANMethod(apply_overrides(CycleGANConfig(), UNPAIRED)))
    assert set(cyclegan["generator"]) == {"ab", "ba"}
    assert 2 * _n_params(unpaired["generator"]) == _n_params(cyclegan["generator"])
    assert _n_params(unpaired["discriminator"]) == _n_params(cyclegan["discriminator"])  # D_A and D_B in both


STEPS = 200


@pytest.fixture(scope="module")
def trained():
    """(method, mesh, test scores at init, logs of STEPS steps, test scores after): tiny data, lr 2e-3."""
    method = SelfInverseMethod(apply_overrides(SelfInverseConfig(), SMALL + ["optim.lr=2e-3"]))
    mesh = make_mesh(jax.devices()[:1])
    data = method.dataset("train")
    state = init_train_state(method, mesh, method.batch_spec(4))
    before = evaluate(method, state, mesh, "test")
    step = make_train_step(method.train_step, mesh)
    logs = []
    for i in range(STEPS):
        state, metrics = step(state, shard_batch(data[(np.arange(4) + 4 * i) % len(data)], mesh))
        logs.append({k: float(v) for k, v in to_host(metrics).items()})
    return method, mesh, before, logs, evaluate(method, state, mesh, "test")


@pytest.mark.data
def test_training_lowers_the_loss_and_scores_both_directions(trained):
    method, mesh, before, logs, after = trained
    assert all(np.isfinite(v) for r in logs for v in r.values())
    assert np.mean([r["l1"] for r in logs[-20:]]) < 0.5 * np.mean([r["l1"] for r in logs[:20]])
    assert 0.3 < np.mean([r["swapped"] for r in logs]) < 0.7  # 800 pairs, half swapped: std 0.018
    names = {f"{m}_{d}" for m in ("l1", "psnr", "ssim") for d in ("ab", "ba")} | {"cycle_a", "cycle_b"}
    assert set(after) == names
    for d in ("ab", "ba"):  # both directions learnt by the one generator
        assert after[f"l1_{d}"] < before[f"l1_{d}"] and after[f"psnr_{d}"] > before[f"psnr_{d}"]


@pytest.mark.data
def test_cycle_error_on_held_out_slices_falls_with_training(trained):
    """|f(f(x)) - x| on the held-out slabs, both contrasts, before and after 200 steps.

    Margin: before training f is unrelated to x, so f(f(x)) is too and the error is of the size of the
    intensity spread; any map f∘f that ignored x (a constant c) would err by at least the mean absolute
    deviation of x from its median in the brain (0.10 for T1w, 0.11 for T2w on these slices). A trained
    self-inverse f must beat that bound (it reconstructs x from f(x)) and halve the untrained error.
    Measured here: 0.43 / 0.23 -> 0.064 / 0.078 (T1w / T2w), so both checks hold with room (> 2x, > 25 %).
    """
    method, mesh, before, logs, after = trained
    test = method.dataset("test").arrays
    brain = test["mask"][..., 0] > 0
    for contrast, key in (("source", "cycle_a"), ("target", "cycle_b")):
        x = (test[contrast][..., 0] + 1.0) / 2.0
        mad = np.mean([np.mean(np.abs(x[i][brain[i]] - np.median(x[i][brain[i]]))) for i in range(len(x))])
        assert after[key] < mad, f"{key}: f(f(x)) is no closer to x than a constant"
    assert after["cycle_a"] + after["cycle_b"] < 0.5 * (before["cycle_a"] + before["cycle_b"])


@pytest.mark.data
@pytest.mark.slow
def test_sharded_steps_match_single_device(n_devices):
    """Four steps (random swaps included) on 4 devices equal four on one, in float64.

    The swaps come from the step key, the same on every mesh; the runs differ only in the order of
    floating-point sums, which a GAN amplifies step by step (~1e-4 relative by step 4 in float32, see
    tests/methods/test_cyclegan.py); in float64 the same growth leaves <= ~1e-12, so rtol/atol 1e-9 keep a
    factor 1000 and are far below the effect of a sharding error (a wrong batch mean: 1e-1).
    """
    def run(devices):
        settings = SMALL + ["model.direction_discriminators=true"]
        method = SelfInverseMethod(apply_overrides(SelfInverseConfig(), settings))
        mesh = make_mesh(devices)
        batch = cast_floats({k: v for k, v in method.dataset("train")[np.arange(4)].items() if k in ("source", "target")}, np.float64)
        state = cast_floats(init_train_state(method, mesh, batch), np.float64)
        step = make_train_step(method.train_step, mesh)
        losses = []
        for _ in range(4):
            state, metrics = step(state, shard_batch(batch, mesh))
            losses.append([float(metrics["loss"]), float(metrics["d_loss"])])
        test = cast_floats(method.dataset("test")[np.arange(4)], np.float64)
        return losses, to_host(make_predict_step(method.predict, mesh)(state, shard_batch(test, mesh))), mesh

    with jax.enable_x64(True):
        single, single_out, _ = run(jax.devices()[:1])
        sharded, sharded_out, mesh = run(jax.devices())
    assert mesh.size == n_devices
    np.testing.assert_allclose(sharded, single, rtol=1e-9)
    for key in ("translated", "translated_ba"):
        assert sharded_out[key].dtype == np.float64
        np.testing.assert_allclose(sharded_out[key], single_out[key], rtol=0, atol=1e-9)


def test_unpaired_step_trains_one_generator_and_scores_both_directions():
    method = SelfInverseUnpairedMethod(apply_overrides(SelfInverseUnpairedConfig(), UNPAIRED))
    mesh = make_mesh(jax.devices()[:1])
    data = method.dataset("train")
    batch = data[np.arange(4)]
    state = init_train_state(method, mesh, batch)
    step = make_train_step(method.train_step, mesh)
    logs = []
    for _ in range(6):
        state, metrics = step(state, shard_batch(batch, mesh))
        logs.append({k: float(v) for k, v in to_host(metrics).items()})
    assert logs[-1]["loss"] < logs[0]["loss"] and all(np.isfinite(v) for r in logs for v in r.values())
    assert int(to_host(state.extra["pool_a"]["count"])) == 3
    scores = jax.eval_shape(method.eval_step, state, method.dataset("val")[np.arange(4)])  # traced, not compiled
    assert all(v.shape == (4,) for v in scores.values())
    assert set(scores) == {f"{m}_{d}" for m in ("l1", "psnr", "ssim") for d in ("ab", "ba")} | {"cycle_a", "cycle_b"}


@pytest.mark.parametrize("cls, override, words", [
    (SelfInverseMethod, "model.swap=sometimes", "model.swap"),
    (SelfInverseMethod, "infer.direction=t1w_to_pd", "trained for"),
    (SelfInverseMethod, "infer.direction=forward", "SOURCE_to_TARGET"),
    (SelfInverseMethod, "loss.gan=hinge", "loss.gan"),
    (SelfInverseUnpairedMethod, "loss.identity_weight=0.5", "identity"),
    (SelfInverseUnpairedMethod, "infer.direction=pd_to_t1w", "trained for"),
])
def test_bad_settings_are_config_errors(cls, override, words):
    extra = SMALL if cls is SelfInverseMethod else UNPAIRED
    with pytest.raises(ConfigError, match=words):
        cls(apply_overrides(cls.Config(), extra + [override]))


# ---------------------------------------------------------------- kfjax infer self_inverse
TINY = ["data.downsample=4", "data.batch_size=4", "model.channels=4,8,16", "model.d_features=4", "model.d_layers=2",
        "train.steps=2", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer_self_inverse")
    workdir = root / "run"
    assert main(["train", "self_inverse", "--workdir", str(workdir), "--no-progress", "--set", *TINY]) == 0
    x, y = np.meshgrid(np.linspace(-1, 1, 50), np.linspace(-1, 1, 60), indexing="ij")
    r2 = x**2 + (y / 1.2) ** 2
    head = np.where(r2 < 0.8, 600.0, 0.0) - np.where(r2 < 0.2, 250.0, 0.0)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.repeat(head[..., None], 4, -1).astype(np.float32), affine), str(root / "in.nii.gz"))
    return root, workdir, affine


def _infer(root, workdir, direction, name):
    out = root / name
    code = main(["infer", "self_inverse", "--workdir", str(workdir), "--input", str(root / "in.nii.gz"), "--out",
                 str(out), "--no-progress", "--set", f"infer.direction={direction}"])
    return code, out


@pytest.mark.data
def test_infer_either_direction_applies_the_same_f(run):
    root, workdir, affine = run
    code_ab, out_ab = _infer(root, workdir, "t1w_to_t2w", "t2.nii.gz")
    code_ba, out_ba = _infer(root, workdir, "t2w_to_t1w", "t1.nii.gz")
    assert code_ab == code_ba == 0
    ab, ba = nib.load(str(out_ab)), nib.load(str(out_ba))
    assert ab.shape == (50, 60, 4) and np.allclose(ab.affine, affine)
    array = np.asarray(ab.dataobj, np.float32)
    assert np.all(np.isfinite(array)) and array.min() >= 0.0
    np.testing.assert_array_equal(array, np.asarray(ba.dataobj, np.float32))  # the direction only names the output


@pytest.mark.data
@pytest.mark.parametrize("direction", ["t1w_to_pd", "sideways"])
def test_infer_unknown_direction_exits_2_with_one_line(run, capsys, direction):
    root, workdir, _ = run
    code, out = _infer(root, workdir, direction, f"{direction}.nii.gz")
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists() and len(err.splitlines()) == 1 and "infer.direction" in err
