"""pix2pix: a jitted step lowers the loss and matches a sharded step; a conditional PatchGAN; bad settings; infer."""

import json

import jax
import nibabel as nib
import numpy as np
import pytest

from kfjax.cli import main
from kfjax.config import apply_overrides
from kfjax.errors import ConfigError
from kfjax.methods.pix2pix import Pix2PixConfig, Pix2PixMethod
from kfjax.train.loop import init_train_state
from kfjax.train.mesh import make_mesh, shard_batch, to_host
from kfjax.train.precision import cast_floats
from kfjax.train.step import make_predict_step, make_train_step

# 4 mm slices (48 x 40), a 3-level U-Net of 4-8-16 features and a 2-layer PatchGAN: a step costs milliseconds
SMALL = ["data.downsample=4", "data.batch_size=4", "model.channels=4,8,16", "model.d_features=4", "model.d_layers=2"]


def _run(devices, steps, x64=False, extra=()):
    method = Pix2PixMethod(apply_overrides(Pix2PixConfig(), SMALL + list(extra)))
    mesh = make_mesh(devices)
    batch = {k: v for k, v in method.dataset("train")[np.arange(4)].items() if k in ("source", "target")}
    state = init_train_state(method, mesh, batch)
    if x64:  # parameters, Adam moments and data in float64: the whole step runs in float64
        batch, state = cast_floats(batch, np.float64), cast_floats(state, np.float64)
    step = make_train_step(method.train_step, mesh)
    logs = []
    for _ in range(steps):
        state, metrics = step(state, shard_batch(batch, mesh))
        logs.append({k: float(v) for k, v in to_host(metrics).items()})
    return method, mesh, state, logs


@pytest.mark.data
@pytest.mark.slow
def test_sharded_steps_match_single_device(n_devices):
    """Four steps on 4 devices equal four on one, in float64.

    The runs differ only in the order of floating-point sums (gradient all-reduce, batch means); a GAN
    amplifies that round-off step by step (CycleGAN's and ADN's float32 runs reach ~1e-4 relative by step 4),
    so in float64 (unit round-off 1.1e-16, the same amplification) the difference stays <= ~1e-12; rtol and
    atol 1e-9 keep a factor 1000 and are far below the effect of a real sharding error (a wrong mean over
    the batch changes the loss at the 1e-1 level).
    """
    with jax.enable_x64(True):
        method, mesh1, single, single_logs = _run(jax.devices()[:1], 4, x64=True)
        _, mesh, sharded, logs = _run(jax.devices(), 4, x64=True)
        assert mesh.size == n_devices
        np.testing.assert_allclose([r["loss"] for r in logs], [r["loss"] for r in single_logs], rtol=1e-9)
        np.testing.assert_allclose([r["d_loss"] for r in logs], [r["d_loss"] for r in single_logs], rtol=1e-9)
        batch = cast_floats(method.dataset("test")[np.arange(4)], np.float64)
        a = to_host(make_predict_step(method.predict, mesh)(sharded, shard_batch(batch, mesh)))
        b = to_host(make_predict_step(method.predict, mesh1)(single, shard_batch(batch, mesh1)))
    assert a["translated"].dtype == np.float64
    np.testing.assert_allclose(a["translated"], b["translated"], rtol=0, atol=1e-9)


def test_discriminator_is_conditional():
    """D sees concat(input, output), 2 channels: its first kernel is 4x4x2 (shapes only, no data, no compile)."""
    method = Pix2PixMethod(apply_overrides(Pix2PixConfig(), SMALL))
    spec = method.batch_spec(4)
    assert spec["source"].shape == (4, 48, 40, 1)
    params = jax.eval_shape(lambda k, b: method.init_variables(k, b).params, jax.random.key(0), spec)
    assert set(params["discriminator"]) == {"ab"}  # one discriminator, one direction
    assert params["discriminator"]["ab"]["Conv_0"]["kernel"].shape == (4, 4, 2, 4)
    assert params["generator"]["Conv_0"]["kernel"].shape == (1, 1, 4, 1)  # U-Net output conv, 1 channel


@pytest.mark.parametrize("override, words", [
    ("loss.gan=wgan", "loss.gan"),
    ("model.norm=batch", "instance"),
    ("data.target=t1w", "both"),
    ("data.source=ct", "data.source"),
    ("model.channels=4,8,16,32,64", "divide"),
    ("infer.direction=t2w_to_t1w", "trained for"),
    ("infer.direction=t1_to_t2", "SOURCE_to_TARGET"),
])
def test_bad_settings_are_config_errors(override, words):
    with pytest.raises(ConfigError, match=words):
        Pix2PixMethod(apply_overrides(Pix2PixConfig(), SMALL + [override]))


# ---------------------------------------------------------------- kfjax train / infer pix2pix
TINY = SMALL + ["train.steps=8", "train.checkpoint_every=8", "train.log_every=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run trained by `kfjax train` (8 jitted steps, one batch of 4 per step, then the val scores)."""
    root = tmp_path_factory.mktemp("infer_pix2pix")
    workdir = root / "run"
    assert main(["train", "pix2pix", "--workdir", str(workdir), "--no-progress", "--set", *TINY]) == 0
    return root, workdir


@pytest.mark.data
def test_training_lowers_the_loss_and_scores_are_in_range(run):
    root, workdir = run
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 8 and all(np.isfinite(r[k]) for r in train for k in ("loss", "d_loss", "l1"))
    for key in ("l1", "loss"):  # a new batch every step: the mean of the last three against the first
        assert np.mean([r[key] for r in train[-3:]]) < train[0][key]
    (val,) = [r for r in rows if r["split"] == "val"]
    assert 0.0 <= val["l1"] <= 1.0 and np.isfinite(val["psnr"]) and -1.0 <= val["ssim"] <= 1.0


def _nifti(path, array, zooms=(3.0, 3.0, 3.0)):
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = (-70.0, -90.0, -40.0)
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), affine), str(path))
    return affine


def _head(shape=(50, 60, 4)):
    """A bright ellipse with a darker core: a positive 'MR' volume (x, y, z)."""
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    r2 = x**2 + (y / 1.2) ** 2
    image = np.where(r2 < 0.8, 600.0, 0.0) + np.where(r2 < 0.2, -250.0, 0.0)
    return np.repeat(image[..., None], shape[2], axis=-1).astype(np.float32)


@pytest.mark.data
def test_infer_pix2pix_keeps_shape_and_affine(run):
    root, workdir = run
    affine = _nifti(root / "t1.nii.gz", _head())
    out = root / "t2.nii.gz"
    assert main(["infer", "pix2pix", "--workdir", str(workdir), "--input", str(root / "t1.nii.gz"), "--out",
                 str(out), "--no-progress", "--set", "infer.direction=t1w_to_t2w"]) == 0
    result = nib.load(str(out))
    array = np.asarray(result.dataobj, np.float32)
    assert array.shape == _head().shape and np.allclose(result.affine, affine)
    assert np.all(np.isfinite(array)) and array.min() >= 0.0


@pytest.mark.data
@pytest.mark.parametrize("case, words", [
    ("direction", "trained for"),
    ("2d", "2-D"),
    ("negative", "negative"),
])
def test_infer_pix2pix_bad_inputs_exit_2_with_one_line(run, capsys, case, words):
    root, workdir = run
    path = root / f"{case}.nii.gz"
    array = {"2d": _head()[..., 0], "negative": _head() - 100.0}.get(case, _head())
    _nifti(path, array)
    out = root / f"out_{case}.nii.gz"
    sets = ["--set", "infer.direction=t2w_to_t1w"] if case == "direction" else []
    code = main(["infer", "pix2pix", "--workdir", str(workdir), "--input", str(path), "--out", str(out),
                 "--no-progress", *sets])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert words in err and len(err.splitlines()) == 1
