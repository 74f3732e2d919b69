"""U²-Net: a jitted step lowers the loss and ONE compilation serves every domain; sharded == single device;
add-domain training leaves the old domains' outputs bitwise unchanged; Dice per domain; Lovász-softmax
against its definition; `kfjax infer u2net`; bad settings and inputs."""

import itertools

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from kfjax.cli import main
from kfjax.config import apply_overrides
from kfjax.errors import ConfigError, InputError
from kfjax.io import Volume
from kfjax.methods.common.lovasz import focal_loss, lovasz_softmax
from kfjax.methods.u2net import U2NetConfig, U2NetMethod
from kfjax.nn.u2net import is_domain_specific
from kfjax.train.loop import init_train_state, train
from kfjax.train.mesh import make_mesh, shard_batch, to_host
from kfjax.train.step import make_eval_step, make_train_step

OLD = "organ_phantom,prostate_like"
ALL = OLD + ",hippocampus_like"
TINY = ["data.size=16", "model.channels=4,8", "data.n_train=4", "data.n_val=1", "data.batch_size=2",
        "optim.schedule=constant", f"data.domains={ALL}"]


def _method(*extra):
    return U2NetMethod(apply_overrides(U2NetConfig(), [*TINY, *extra]))


def _rows(method, split, domain, count):
    data = method.dataset(split)
    return data[np.flatnonzero(data.arrays["domain"] == domain)[:count]]


# ---------------------------------------------------------------- training steps


def test_step_lowers_the_loss_of_every_domain_with_one_compilation():
    method = _method("optim.lr=3e-3")
    mesh = make_mesh(jax.devices()[:1])
    batches = [_rows(method, "train", d, 2) for d in range(3)]
    traces = []

    def counted(state, batch, key):
        traces.append(1)
        return method.train_step(state, batch, key)

    step = make_train_step(counted, mesh)
    state = init_train_state(method, mesh, method.batch_spec(2))
    losses = {d: [] for d in range(3)}
    for _, d in itertools.product(range(6), range(3)):  # round robin over the domains
        state, logs = step(state, shard_batch(batches[d], mesh))
        losses[d].append(float(to_host(logs)["loss"]))
    assert len(traces) == 1 and step._cache_size() == 1
    for d, values in losses.items():
        assert values[-1] < values[0], (d, values)


def test_sharded_steps_match_single_device(sharded_matches_single):
    """Two steps on 4 devices equal two on one, in float64: the runs differ only in the order of float sums
    (the gradient all-reduce, the means over rows), ~ n u with n ~ 1e5 terms and u = 1.1e-16, ~1e-11 relative;
    Adam's updates inherit it. rtol 1e-7 leaves a margin of 1e4, far below a sharding error (O(1))."""
    sharded_matches_single(_method, rows=4, batch=lambda method: _rows(method, "train", 1, 4))


# ---------------------------------------------------------------- add-domain training


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A 2-step run on the first two domains (its checkpoint is the add-domain start)."""
    workdir = tmp_path_factory.mktemp("u2net") / "base"
    method = _method(f"data.domains={OLD}", "train.steps=2", "train.checkpoint_every=2", "data.batch_size=4")
    train(method, workdir, progress=False)
    return workdir


def _logits(method, state, batch):
    return np.asarray(jax.jit(method.logits)(state, batch))


def test_add_domain_training_leaves_old_domains_bitwise_unchanged(base_run):
    from kfjax.train.loop import restore_for_eval

    base = _method(f"data.domains={OLD}", "train.steps=2", "data.batch_size=4")
    base_state = restore_for_eval(base, base_run)
    method = _method(f"train.add_domain={base_run}", "optim.lr=1e-2", "optim.weight_decay=1e-3")
    mesh = make_mesh(jax.devices()[:1])
    state = init_train_state(method, mesh, method.batch_spec(2))
    old = {d: _rows(method, "val", d, 1) for d in range(2)}
    new = _rows(method, "val", 2, 1)
    before = {d: _logits(method, state, b) for d, b in old.items()}
    for d, b in old.items():  # the merged start reproduces the base run exactly
        np.testing.assert_array_equal(before[d], _logits(base, base_state, b))
    new_before = _logits(method, state, new)
    params_before = to_host(state.params["model"])
    train_data = method.dataset("train")
    assert set(train_data.arrays["domain"]) == {2}
    step = make_train_step(method.train_step, mesh)
    for s in range(3):
        state, _ = step(state, shard_batch(train_data[method.sampler(train_data, 2).indices(s)], mesh))
    for d, b in old.items():
        np.testing.assert_array_equal(_logits(method, state, b), before[d])
    assert not np.array_equal(_logits(method, state, new), new_before)
    after = to_host(state.params["model"])
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(params_before), jax.tree.leaves(after)):
        if is_domain_specific(path):
            np.testing.assert_array_equal(y[:2], x[:2])
        else:
            np.testing.assert_array_equal(y, x)


def test_add_domain_refuses_a_base_run_with_other_domains(base_run):
    method = _method(f"train.add_domain={base_run}", "data.domains=organ_phantom,hippocampus_like,prostate_like")
    with pytest.raises(ConfigError, match="domains"):
        init_train_state(method, make_mesh(jax.devices()[:1]), method.batch_spec(2))
    with pytest.raises(ConfigError, match="at least two"):
        _method("train.add_domain=x", "data.domains=organ_phantom")


# ---------------------------------------------------------------- metrics and loss


def test_dice_per_domain_is_nan_on_the_other_domains_rows():
    method = _method()
    mesh = make_mesh(jax.devices()[:1])
    state = init_train_state(method, mesh, method.batch_spec(2))
    val = method.dataset("val")
    scores = to_host(jax.jit(method.eval_step)(state, val[np.arange(3)]))
    assert set(scores) == {"dice", "dice_organ_phantom", "dice_prostate_like", "dice_hippocampus_like"}
    np.testing.assert_array_equal(np.isnan(scores["dice_prostate_like"]), [True, False, True])
    assert np.all((scores["dice"] >= 0) & (scores["dice"] <= 1))
    means = make_eval_step(method.eval_step, mesh)(state, shard_batch(val[np.arange(3)], mesh))
    assert float(to_host(means["dice_prostate_like"]).count) == 1.0
    method.predict = lambda state, batch: {"labels": batch["label"]}  # a perfect prediction scores 1
    np.testing.assert_allclose(to_host(method.eval_step(state, val[np.arange(3)]))["dice"], 1.0)
    wrong = {**val[np.arange(3)]}
    method.predict = lambda state, batch: {"labels": jnp.zeros_like(batch["label"])}  # all background: 0
    np.testing.assert_allclose(to_host(method.eval_step(state, wrong))["dice"], 0.0)


def _jaccard_loss(errors_set: np.ndarray, fg: np.ndarray) -> float:
    """Δ(M) = |M| / |F ∪ M| for the mispredicted set M (boolean) and foreground F."""
    union = np.sum(fg | errors_set)
    return float(errors_set.sum() / union) if union else 0.0


def _lovasz_by_integral(prob: np.ndarray, fg: np.ndarray) -> float:
    """The Lovász extension as ∫_0^1 Δ({i: m_i >= t}) dt, exactly (Δ is constant between sorted errors)."""
    m = np.abs(fg.astype(np.float64) - prob)
    levels = np.concatenate([[0.0], np.sort(np.unique(m))])
    return sum((hi - lo) * _jaccard_loss(m >= hi, fg) for lo, hi in zip(levels[:-1], levels[1:]))


def test_lovasz_softmax_equals_its_definition_on_tiny_inputs():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 2, 3, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=(3, 2, 3)).astype(np.int32)
    labels[2] = np.where(labels[2] == 2, 0, labels[2])  # image 2 lacks class 2: it does not count there
    mask = np.array([True, True, True, False])
    got = np.asarray(lovasz_softmax(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask)))
    prob = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for b in range(3):
        present = [c for c in range(3) if (labels[b] == c).any()]
        want = np.mean([_lovasz_by_integral(prob[b, ..., c].ravel(), (labels[b] == c).ravel()) for c in present])
        # ~12 terms summed in float32: tolerance 12 eps
        np.testing.assert_allclose(got[b], want, rtol=12 * np.finfo(np.float32).eps, atol=1e-6)
    perfect = 50.0 * jax.nn.one_hot(jnp.asarray(labels), 4)
    np.testing.assert_allclose(lovasz_softmax(perfect, jnp.asarray(labels)), 0.0, atol=1e-6)
    gamma0 = focal_loss(jnp.asarray(logits), jnp.asarray(labels), 0.0)
    ce = -np.log(np.take_along_axis(prob, labels[..., None], -1))[..., 0].reshape(3, -1).mean(-1)
    np.testing.assert_allclose(gamma0, ce, rtol=1e-5)


# ---------------------------------------------------------------- inference and bad settings


def test_infer_writes_a_label_map_with_the_inputs_affine(base_run, tmp_path):
    method = _method(f"data.domains={OLD}", "infer.domain=organ_phantom", "infer.window_batch=1")
    from kfjax.train.loop import restore_for_eval

    state = restore_for_eval(method, base_run)
    image = np.random.default_rng(0).normal(size=(20, 18, 17)).astype(np.float32)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    out = method.infer(state, {"volume": Volume(image, affine)}, progress=False)
    assert out.array.shape == image.shape and out.array.dtype == np.uint8 and out.array.max() < 2
    np.testing.assert_allclose(out.affine, affine)
    with pytest.raises(InputError, match="modalities"):
        _method(f"data.domains={OLD}", "infer.domain=prostate_like").infer(state, {"volume": Volume(image, affine)})
    with pytest.raises(InputError, match="2-D"):
        method.infer(state, {"volume": Volume(image[:, :, :1], affine)})
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "in.nii.gz"))
    args = ["infer", "u2net", "--workdir", str(base_run), "--input", str(tmp_path / "in.nii.gz"), "--no-progress",
            "--out", str(tmp_path / "out.nii.gz")]
    assert main([*args, "--set", "infer.domain=liver"]) == 2
    assert not (tmp_path / "out.nii.gz").exists()
    assert main([*args, "--set", "infer.domain=organ_phantom", "infer.window_batch=1"]) == 0
    assert nib.load(str(tmp_path / "out.nii.gz")).shape == image.shape


@pytest.mark.parametrize("key,value,match", [("model.mode", "separate", "model.mode"),
                                             ("data.size", "15", "divide"),
                                             ("data.domains", "organ_phantom,lungs", "unknown domain"),
                                             ("model.remat", "blocks", "remat")])
def test_bad_settings_fail_with_one_line(key, value, match):
    with pytest.raises(ConfigError, match=match):
        _method(f"{key}={value}")
