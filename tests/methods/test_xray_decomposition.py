"""xray_decomposition: shapes, the bone-suppressed image, one jitted step lowers the loss, sharded == single
device, the LoG-domain loss, training finds the bones, `kfjax infer` on a PNG and on a 3-D
volume, bad settings, training inputs translated by a cyclegan run. Everything runs on the procedural chest
phantom (no data needed)."""

import re

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from kfjax.cli import main
from kfjax.config import apply_overrides
from kfjax.data.unpaired import xray_signed
from kfjax.data.xray_decomposition import LINE_INTEGRAL_SCALE
from kfjax.errors import ConfigError
from kfjax.methods.xray_decomposition import (OUTPUT_FILES, XrayDecompositionConfig, XrayDecompositionMethod,
                                              log_filter, log_kernel)
from kfjax.methods.registry import build, from_workdir
from kfjax.train.loop import init_train_state, restore_for_eval, train
from kfjax.train.mesh import make_mesh, shard_batch, to_host
from kfjax.train.step import make_eval_step, make_predict_step, make_train_step

TINY = ["data.source=phantom", "data.size=32", "data.n_train=16", "data.n_val=8", "data.batch_size=4",
        "model.channels=8,16"]
GAN = ["data.recipe=xray", "data.source=phantom", "data.size=32", "data.n_train=8", "data.n_val=4",
       "data.batch_size=4", "model.features=4", "model.n_blocks=1", "model.d_features=4", "model.d_layers=2",
       "loss.pool_size=2", "train.steps=2", "train.checkpoint_every=2"]  # a tiny DRR -> detector translator


def _method(*extra):
    return XrayDecompositionMethod(apply_overrides(XrayDecompositionConfig(), [*TINY, *extra]))



def test_shapes_targets_and_the_bone_suppressed_image():
    method = _method()
    batch = method.dataset("train")[np.arange(4)]
    spec = method.batch_spec(4)
    assert {k: v.shape for k, v in batch.items()} == {k: s.shape for k, s in spec.items()}
    # the targets split the input exactly: bone + soft tissue = the DRR
    np.testing.assert_allclose(batch["target"].sum(-1), batch["image"][..., 0] * LINE_INTEGRAL_SCALE, rtol=1e-5)
    detector = _method("data.domain=detector").dataset("train")[np.arange(4)]
    np.testing.assert_array_equal(detector["target"], batch["target"])  # same truth, other input
    assert detector["image"].shape == batch["image"].shape and not np.allclose(detector["image"], batch["image"])
    mesh = make_mesh(jax.devices()[:1])
    state = init_train_state(method, mesh, spec)
    out = to_host(make_predict_step(method.predict, mesh)(state, shard_batch(batch, mesh)))
    assert out["bone"].shape == out["soft"].shape == out["suppressed"].shape == (4, 32, 32, 1)
    total = batch["image"] * LINE_INTEGRAL_SCALE
    np.testing.assert_allclose(out["suppressed"], np.exp(-(total - out["bone"])), rtol=1e-5)
    scores = to_host(make_eval_step(method.eval_step, mesh)(state, shard_batch(batch, mesh)))
    assert set(scores) == {f"{m}_{k}" for m in ("psnr", "ssim") for k in ("bone", "soft", "suppressed")} | {
        "l1_bone", "l1_soft"}


def test_step_lowers_the_loss_on_a_fixed_batch(train_steps):
    method = _method("optim.warmup_steps=0", "optim.schedule=constant", "optim.lr=3e-3")
    batch = method.dataset("train")[np.arange(4)]
    _, _, losses = train_steps(method, jax.devices()[:1], 10, batch)
    assert losses[-1] < 0.9 * losses[0], losses  # measured: 0.75 (falling at every step)


@pytest.mark.slow
def test_sharded_steps_match_single_device(sharded_matches_single):
    """Three steps on 4 devices equal three on one, in float64. Instance norm is per image, so the runs
    differ only in the order of the sums (gradient all-reduce, batch means) of ~1e4 terms: relative ~1e-12,
    passed on by Adam to the parameters; rtol 1e-9 keeps a factor 1e3 and lies far below a sharding error."""
    sharded_matches_single(lambda: _method("loss.log_weight=0.5"), rows=4, steps=3, rtol=1e-9, atol=1e-12)


def test_log_kernel_and_loss():
    k = log_kernel(1.5)
    assert k.shape == (11, 11) and abs(k.sum()) < 1e-15 and k[5, 5] < 0  # zero-sum, negative centre
    np.testing.assert_allclose(k, k.T, atol=0)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 20, 24, 2)), jnp.float32)
    y = log_filter(x, 1.5)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
    ramp = jnp.broadcast_to(jnp.arange(24.0)[None, None, :, None], (1, 20, 24, 1))
    assert float(jnp.abs(log_filter(ramp, 1.0)[:, 3:-3, 3:-3]).max()) < 1e-4, "no response to a linear ramp"
    method = _method("loss.log_weight=1.0")
    target = jnp.asarray(np.random.default_rng(1).uniform(0, 3, (2, 32, 32, 2)), jnp.float32)
    outputs = target / LINE_INTEGRAL_SCALE
    loss, terms = method.loss(outputs, {"target": outputs * LINE_INTEGRAL_SCALE})  # the loss's own product
    assert float(terms["log_l1"]) == 0.0 and float(loss) == 0.0
    loss, terms = method.loss(jnp.zeros_like(target), {"target": target})
    assert np.isfinite(float(loss)) and float(terms["log_l1"]) > 0
    assert float(loss) == pytest.approx(float(terms["l1_bone"] + terms["l1_soft"] + terms["log_l1"]), rel=1e-6)
    plain, plain_terms = _method().loss(jnp.zeros_like(target), {"target": target})
    assert "log_l1" not in plain_terms and float(plain) < float(loss)


def test_training_finds_the_bones():
    """The defining property on the phantom. The output layer starts at zero, so the untrained network is the
    "no suppression" baseline (bone 0, bone-suppressed image = the input: ~0.14 bone L1, ~30 dB). After 60
    steps the held-out bone L1 falls below 0.7 of it and the bone-suppressed image gains over 3 dB against
    the soft-tissue truth (measured, seeds 0-2: 0.072-0.081 and +5.0 to +5.7 dB), which only a network that
    places the ribs and the spine can do."""
    method = _method("data.n_train=32", "optim.lr=3e-3", "train.steps=60")
    mesh = make_mesh(jax.devices()[:1])
    data, val = method.dataset("train"), method.dataset("val")[np.arange(8)]
    state = init_train_state(method, mesh, method.batch_spec(4))
    evaluate = make_eval_step(method.eval_step, mesh)

    def scores(state):
        s = to_host(evaluate(state, shard_batch(val, mesh)))
        return tuple(float(s[k].total / s[k].count) for k in ("l1_bone", "psnr_suppressed"))

    before = scores(state)
    val_bone = method.dataset("val").arrays["target"][:8, ..., 0]
    assert before[0] == pytest.approx(float(np.abs(val_bone).mean()), rel=1e-5), "the untrained bone is zero"
    step = make_train_step(method.train_step, mesh)
    order = np.random.default_rng(0)
    for _ in range(60):
        state, _ = step(state, shard_batch(data[order.choice(len(data), 4, replace=False)], mesh))
    after = scores(state)
    assert after[0] < 0.7 * before[0] and after[1] > before[1] + 3, (before, after)


@pytest.mark.parametrize("bad,match", [("data.source=jsrt", "data.source"), ("data.domain=cxr", "data.domain"),
                                       ("data.size=33", "data.size"), ("loss.log_sigma=0", "log_sigma"),
                                       ("loss.log_weight=-1", "log_weight"), ("infer.top=-1", "infer.top")])
def test_bad_settings_are_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        _method(bad)


def test_bad_split_is_a_config_error():
    with pytest.raises(ConfigError, match="split"):
        _method().dataset("training")


# ------------------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer_xray_decomposition")
    workdir = root / "run"
    settings = [*TINY, "data.n_train=8", "data.n_val=4", "train.steps=2", "train.checkpoint_every=2"]
    assert main(["train", "xray_decomposition", "--workdir", str(workdir), "--no-progress", "--set", *settings]) == 0
    image = (np.random.default_rng(0).random((45, 60)) * 65535).astype(np.uint16)
    Image.fromarray(image).save(root / "cxr.png")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)), str(root / "volume.nii.gz"))
    return root, workdir


def _infer(run, source, out):
    root, workdir = run
    return main(["infer", "xray_decomposition", "--workdir", str(workdir), "--input", str(root / source),
                 "--out", str(root / out), "--no-progress"])


def test_cli_infer_writes_the_images_of_a_png(run):
    root = run[0]
    assert _infer(run, "cxr.png", "decomposed") == 0
    out = root / "decomposed"
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES), "no temporary files left"
    for name in OUTPUT_FILES[:3]:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size == (60, 45) and im.mode == "I;16"
    with Image.open(out / OUTPUT_FILES[3]) as panel:
        assert panel.format == "PNG" and panel.size[0] > 2 * panel.size[1], "side by side"


def test_cli_infer_refuses_a_3d_volume_and_a_file_as_folder(run, capsys):
    root = run[0]
    assert _infer(run, "volume.nii.gz", "vol_out") == 2
    err = capsys.readouterr().err
    assert "one 2-D radiograph" in err and len(err.strip().splitlines()) == 1 and not (root / "vol_out").exists()
    (root / "taken.txt").write_text("x")
    assert _infer(run, "cxr.png", "taken.txt") == 2
    assert "give a folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ unpaired adaptation
@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    """Workdir of a tiny cyclegan run on the xray recipe (2 steps: a translator, not a good one)."""
    workdir = tmp_path_factory.mktemp("xray_translator") / "gan"
    assert train(build("cyclegan", overrides=GAN), workdir, progress=False, evaluate_at_end=False).status == "completed"
    return workdir


def test_translator_adapts_the_training_inputs_only(translator):
    """Training inputs become G_AB(DRR) in [0, 1] (20 images: a full and a padded batch of 16), targets stay
    the exact DRR components; val and test keep the untranslated images of data.domain."""
    adapted = _method("data.n_train=20", f"data.translator_workdir={translator}", "data.domain=detector")
    plain = _method("data.n_train=20")
    trained_on, raw = adapted.dataset("train").arrays, plain.dataset("train").arrays
    np.testing.assert_array_equal(trained_on["target"], raw["target"])
    gan = from_workdir("cyclegan", translator)
    state = restore_for_eval(gan, translator)
    expected = np.asarray(jax.jit(gan.predict)(state, {"a": xray_signed(raw["image"])})["unit"])
    assert trained_on["image"].shape == raw["image"].shape and trained_on["image"].dtype == np.float32
    np.testing.assert_allclose(trained_on["image"], expected, rtol=0, atol=1e-5)  # batches of 16 vs one of 20
    assert np.abs(trained_on["image"] - raw["image"]).max() > 0.1, "the inputs were translated"
    detector = _method("data.domain=detector")
    for split in ("val", "test"):
        np.testing.assert_array_equal(adapted.dataset(split).arrays["image"], detector.dataset(split).arrays["image"])


def test_bad_translator_workdir_is_one_config_error_line(translator, run, tmp_path):
    """A missing folder, the workdir of another method and a translator of another image size."""
    cases = [([f"data.translator_workdir={tmp_path / 'missing'}"], "holds no config.json"),
             ([f"data.translator_workdir={run[1]}"], "is for method 'xray_decomposition', not 'cyclegan'"),
             ([f"data.translator_workdir={translator}", "data.size=16"],
              re.escape("(phantom) at 32², this run needs recipe 'xray' (phantom) at 16²"))]
    for settings, match in cases:
        with pytest.raises(ConfigError, match=match) as error:
            _method(*settings)
        assert "\n" not in str(error.value)
