"""DuDoNet's settings for locating the dual-domain gain: the reference-reconstruction target, X_LI = RIL(Y_LI),
SE-Net convolutions that wrap around the 0°/360° seam, the whole-sinogram L1 mean, clipping per network,
and the interleaved slice split."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kfjax.data.ct import interleaved_positions
from kfjax.errors import ConfigError
from kfjax.methods.registry import build as build_method
from kfjax.nn.mask_pyramid import MaskPyramidUNet
from kfjax.train.optim import clip_each_module

QUICK = [
    "data.source=phantom",
    "data.geometry=adn_quarter",
    "data.n_phantoms=10",
    "data.masks_per_slice=2",
    "data.batch_size=4",
    "model.se_channels=[8,16,32]",
    "model.ie_channels=[8,16,32]",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four training and ten test pairs of the quick phantom set (host arrays)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KFJAX_DATA", str(tmp_path_factory.mktemp("data")))
        method = build_method("dudonet", overrides=QUICK)
        return {"train": method.dataset("train")[np.arange(4)], "test": method.dataset("test")[np.arange(10)]}


def _method(*overrides):
    return build_method("dudonet", overrides=QUICK + list(overrides))


def _masked_mean(a, b, mask):
    return float(np.sum(np.abs(a - b) * mask) / np.sum(mask))


def test_reference_is_the_metal_free_version_of_the_measurement(data):
    """Outside the trace the LI sinogram is the measured polychromatic, beam-hardening corrected sinogram, so
    the reference sinogram (the same without metal and noise) is much closer to it than the monochromatic
    truth is; likewise the LI image is closer to the reference reconstruction than to the μ truth."""
    d = data["train"]
    outside = 1.0 - d["metal_trace"]
    assert _masked_mean(d["li_sinogram"], d["ref_sinogram"], outside) < 0.5 * _masked_mean(
        d["li_sinogram"], d["gt_sinogram"], outside)
    keep = 1.0 - d["metal_mask"]
    assert _masked_mean(d["li_image"], d["ref_image"], keep) < 0.5 * _masked_mean(d["li_image"], d["gt_image"], keep)


@pytest.mark.parametrize("target,image_key", [("image", "gt_image"), ("reference", "ref_image")])
def test_the_target_sets_what_the_losses_compare_with(data, target, image_key):
    method = _method(f"data.target={target}")
    batch = {k: jnp.asarray(v) for k, v in data["train"].items()}
    state = method.init(jax.random.key(0), batch)
    _, (_, logs) = jax.jit(lambda p: method._objective(p, state, batch))(state.params["model"])
    keep = 1.0 - data["train"]["metal_mask"]  # untrained: X_out = X_LI
    expected = _masked_mean(data["train"]["li_image"], data["train"][image_key], keep)
    assert float(logs["l1_image"]) == pytest.approx(expected, rel=1e-5)


def test_eval_scores_both_targets(data):
    method = _method()
    batch = {k: jnp.asarray(v) for k, v in data["test"].items()}
    values = jax.jit(method.eval_step)(method.init(jax.random.key(0), batch), batch)
    np.testing.assert_allclose(values["ref_psnr"], values["li_ref_psnr"], rtol=1e-5)
    assert np.all(np.asarray(values["li_ref_psnr"]) > np.asarray(values["li_psnr"]))  # LI is nearer the reference


def test_li_image_from_the_radon_inversion_layer(data):
    """With li_source=ril X_LI = RIL(Y_LI): untrained, X̂ and X_out both equal it exactly (one operator)."""
    method = _method("model.li_source=ril")
    batch = {k: jnp.asarray(v) for k, v in data["train"].items()}
    out = jax.jit(method.predict)(method.init(jax.random.key(0), batch), batch)
    np.testing.assert_array_equal(np.asarray(out["x_out"]), np.asarray(out["x_hat"]))
    assert not np.allclose(np.asarray(out["x_out"]), data["train"]["li_image"], atol=1e-3)  # not the data's FBP


def test_direct_radon_inversion_layer_is_the_data_s_reconstruction(data):
    """ril_method=direct: RIL(Y_LI) is the weighted fan-beam FBP the data's LI image was made with."""
    method = _method("model.li_source=ril", "model.ril_method=direct")
    batch = {k: jnp.asarray(v) for k, v in data["train"].items()}
    out = jax.jit(method.predict)(method.init(jax.random.key(0), batch), batch)
    scale = float(np.max(np.abs(data["train"]["li_image"])))
    np.testing.assert_allclose(np.asarray(out["x_out"]), data["train"]["li_image"], atol=1e-5 * scale)


def test_circular_padding_commutes_with_rotating_the_scan():
    """SE-Net with circular_rows is equivariant to a cyclic shift of the views by a multiple of its pooling
    factor (a rotation of the scan); with zero padding the seam breaks it."""
    x = jax.random.normal(jax.random.key(0), (1, 32, 20, 2))
    mask = (jax.random.uniform(jax.random.key(1), (1, 32, 20, 1)) > 0.8).astype(jnp.float32)
    shift = 8  # views, a multiple of 2**(levels-1) = 4

    def error(padding):
        net = MaskPyramidUNet(1, (4, 8, 8), padding=padding)
        params = net.init(jax.random.key(2), x, mask)
        f = jax.jit(lambda a, m: net.apply(params, a, m))
        rolled = f(jnp.roll(x, shift, axis=1), jnp.roll(mask, shift, axis=1))
        return float(jnp.max(jnp.abs(rolled - jnp.roll(f(x, mask), shift, axis=1))))

    scale = float(jnp.max(jnp.abs(x)))
    assert error("circular_rows") < 1e-5 * scale  # float32 rounding of the same sums in another order
    assert error("zeros") > 1e-2 * scale


def test_whole_sinogram_mean_scales_the_trace_mean_by_the_trace_share(data):
    batch = {k: jnp.asarray(v) for k, v in data["train"].items()}
    logs = {}
    for mean in ("trace", "sinogram"):
        method = _method(f"loss.sinogram_mean={mean}")
        state = method.init(jax.random.key(0), batch)
        logs[mean] = float(jax.jit(lambda p: method._objective(p, state, batch))(state.params["model"])[1][1][
            "l1_sinogram"])
    share = float(np.mean(data["train"]["metal_trace"]))
    assert 0 < share < 0.5
    assert logs["sinogram"] == pytest.approx(logs["trace"] * share, rel=1e-5)


def test_clipping_per_module_bounds_each_network_apart():
    grads = {"se_net": {"w": jnp.full((4,), 1.5)}, "ie_net": {"w": jnp.full((4,), 0.1)}}  # norms 3.0 and 0.2
    per_module, _ = clip_each_module(1.0).update(grads, optax.EmptyState())
    whole, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    norm = lambda t: float(optax.tree.norm(t))  # noqa: E731
    assert norm(per_module["se_net"]) == pytest.approx(1.0, rel=1e-6)
    assert norm(per_module["ie_net"]) == pytest.approx(0.2, rel=1e-6)  # untouched
    assert norm(whole["ie_net"]) < 0.07  # one norm over both shrinks the small network's step too


def test_interleaved_split_spans_the_scan_without_touching():
    n = 133
    splits = interleaved_positions(n, (0.7, 0.15, 0.15))
    owner = np.full(n, -1)
    for i, positions in enumerate(splits.values()):
        assert np.all(owner[positions] == -1)  # disjoint
        owner[positions] = i
        assert positions.min() < n // 4 and positions.max() > 3 * n // 4  # each split spans the scan
    used = np.flatnonzero(owner >= 0)
    neighbours = owner[used[:-1]] != owner[used[1:]]
    assert np.all(np.diff(used)[neighbours] >= 2)  # at least one unused slice between different splits


@pytest.mark.parametrize("key,value", [("model.li_source", "fbp"), ("model.se_padding", "wrap"),
                                       ("model.ril_method", "fan"),
                                       ("data.target", "poly"), ("data.slice_split", "random"),
                                       ("loss.sinogram_mean", "bins"), ("optim.clip_scope", "layer")])
def test_bad_settings_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        method = _method(f"{key}={value}")
        method.optimizers()


def test_phantoms_have_no_slice_split():
    with pytest.raises(ConfigError, match="slice_split"):
        _method("data.slice_split=interleaved")


def test_fresh_masks_cover_the_test_sizes_and_repeat_with_the_step():
    from kfjax.data.mar import fresh_masks
    from kfjax.data.phantoms import metal_masks

    size, slices = 64, np.arange(8)
    first, again, later = (fresh_masks(slices, s, 0, size) for s in (5, 5, 6))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, later)
    areas = np.concatenate([fresh_masks(slices, s, 0, size).sum(axis=(1, 2, 3)) for s in range(40)])
    test_areas = metal_masks(size, "test").sum(axis=(1, 2))
    assert areas.max() >= test_areas.max() and areas.min() <= test_areas.min()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """The fresh-mask method and one step's host batch (slices + masks from its transform)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KFJAX_DATA", str(tmp_path_factory.mktemp("fresh")))
        method = _method("data.masks=fresh")
        rows = method.dataset("train")[np.arange(4)]
        yield method, method.transform()(rows, 3)


def test_fresh_step_trains_on_the_pair_the_simulator_makes(fresh):
    """A fresh-mask step equals the fixed-pair step on the pair simulated from the same slices, masks and key."""
    from kfjax.data.mar import pair_arrays
    from kfjax.methods.dudonet import normalised

    method, batch = fresh
    assert set(batch) == {"hu", "metal"} and set(method.batch_spec(4)) == {"hu", "metal"}
    key = jax.random.key(7)
    state = method.init(jax.random.key(0), method.batch_spec(4))
    a, logs_a = jax.jit(method.train_step)(state, batch, key)
    fixed = _method()
    pairs = normalised(pair_arrays(method.simulator(batch["hu"], batch["metal"], key)))
    b, logs_b = jax.jit(fixed.train_step)(state, pairs, key)
    assert float(logs_a["loss"]) == pytest.approx(float(logs_b["loss"]), rel=1e-5)
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_fresh_sharded_step_matches_single_device(fresh, n_devices):
    from kfjax.train.mesh import make_mesh, replicate, shard_batch
    from kfjax.train.step import make_train_step

    method, batch = fresh
    state = method.init(jax.random.key(0), method.batch_spec(4))
    single = make_train_step(method.train_step, make_mesh(jax.devices()[:1]))
    mesh = make_mesh()
    sharded = make_train_step(method.train_step, mesh)
    a, logs_a = single(jax.tree_util.tree_map(jnp.copy, state), batch)
    b, logs_b = sharded(replicate(state, mesh), shard_batch(batch, mesh))
    np.testing.assert_allclose(float(logs_a["loss"]), float(logs_b["loss"]), rtol=1e-5)
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
