"""LSDN: shapes (2-D, 3-D), matched parameter counts, the location toy (LSDN fits what a location-blind net
cannot), a jitted step lowers the loss, sharded == single device, 3-D windows, bad settings."""

import jax
import nibabel as nib
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kfjax.cli import main
from kfjax.config import apply_overrides
from kfjax.errors import ConfigError, InputError
from kfjax.io import Volume
from kfjax.methods.lsdn import LSDNConfig, LSDNMethod
from kfjax.nn.lsdn import LSDN, VARIANTS, matched_width, multiplies, param_count
from kfjax.train.mesh import shard_batch
from kfjax.train.step import make_eval_step, make_predict_step

TINY = ["data.downsample=4", "data.batch_size=4", "model.hidden=8,4"]


def _method(*extra):
    return LSDNMethod(apply_overrides(LSDNConfig(), [*TINY, *extra]))


def _size(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_counts(variant, dims):
    grid = (5, 12, 10) if dims == 3 else (12, 10)
    image, coords = jnp.zeros((2, *grid, 1)), jnp.zeros((2, *grid, 3))
    net = LSDN((6, 5, 4), variant, dims)
    params = jax.eval_shape(net.init, jax.random.key(0), image, coords)["params"]  # shapes only: no compile
    assert jax.eval_shape(lambda p: net.apply({"params": p}, image, coords), params).shape == (2, *grid, 1)
    h = jax.eval_shape(lambda p: net.apply({"params": p}, image, coords, method=LSDN.first_layer), params)
    assert h.shape == (2, *grid, 6)
    assert _size(params) == param_count((6, 5, 4), variant, dims)
    patch = 3**dims
    first = {"lsdn": 6 * (patch + 3 + 1), "cdn": 6 * (patch + 3), "blind": 6 * patch}[variant]
    assert multiplies((6, 5, 4), variant, dims) == {"first_layer": first, "total": first + 6 * 5 + 5 * 4 + 4}
    with pytest.raises(ValueError, match="spatial_dims"):
        jax.eval_shape(lambda p: net.apply({"params": p}, image[:, 0] if dims == 3 else image[:, None], coords), params)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("hidden", [(64, 32), (128, 64), (200,)])
def test_matched_parameter_counts(hidden, dims):
    """CDN and blind get the first width whose count is nearest LSDN's: off by at most half of one first-layer
    unit's parameters (<= (27 + 4 + 64) / 2 here), under 3 % of the total for these widths."""
    reference = param_count(hidden, "lsdn", dims)
    for variant in ("cdn", "blind"):
        widths = matched_width(hidden, variant, dims)
        assert widths[1:] == hidden[1:]
        count = param_count(widths, variant, dims)
        per_unit = param_count((widths[0] + 1, *widths[1:]), variant, dims) - count
        assert abs(count - reference) <= per_unit / 2
        assert abs(count - reference) / reference < 0.03
        net = LSDN(widths, variant, dims)
        grid = (3, 4, 4) if dims == 3 else (4, 4)
        shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, *grid, 1)), jnp.zeros((1, *grid, 3)))
        assert _size(shapes) == count


def _toy(n: int, size: int, seed: int):
    """Source x i.i.d. uniform in [-1, 1]; target y = x * s0, s0 the first atlas coordinate (a gain that
    flips sign across the midline): a location-dependent function of the source."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (n, size, size, 1)).astype(np.float32)
    g = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    s = np.stack([*np.meshgrid(g, g, indexing="ij"), np.zeros((size, size), np.float32)], axis=-1)
    coords = np.broadcast_to(s, (n, size, size, 3)).copy()
    return x, coords, x * coords[..., :1]


def _fit_toy(variant: str) -> float:
    """Held-out MSE (interior pixels) of a (16, 8) network after 300 Adam steps (lr 1e-2) on the toy."""
    net = LSDN((16, 8), variant, activation="relu")
    x, c, y = _toy(8, 24, seed=0)
    params = net.init(jax.random.key(0), x, c)["params"]
    opt = optax.adam(1e-2)

    @jax.jit
    def step(p, s):
        g = jax.grad(lambda p: jnp.mean((net.apply({"params": p}, x, c) - y) ** 2))(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    opt_state = opt.init(params)
    for _ in range(300):
        params, opt_state = step(params, opt_state)
    xt, ct, yt = _toy(16, 24, seed=1)
    err = np.asarray(net.apply({"params": params}, xt, ct)) - yt
    return float(np.mean(err[:, 1:-1, 1:-1] ** 2))


def test_location_toy_lsdn_beats_location_blind():
    """The defining property. Away from the border (where zero padding could tell position) the source
    patch is independent of the location, so any location-blind predictor f(patch) has expected MSE >=
    E[x^2] Var(s0) (the floor; its best is f = 0). On 16 x 22 x 22 held-out pixels a fixed f's empirical
    MSE has a relative spread ~ sqrt(2 / 7744) ~ 2 %, so blind >= 0.9 floor holds by 6 sigma. LSDN can
    represent x * s0 with products of feature and spatial units; it reached ~2e-4 (floor 0.10, 500x lower)
    with two seeds: < 0.1 floor keeps a factor 50."""
    _, c, _ = _toy(1, 24, 0)
    floor = (1.0 / 3.0) * float(np.var(c[0, 1:-1, 1:-1, 0]))  # E[x^2] = 1/3 for x ~ U(-1, 1)
    blind, lsdn = _fit_toy("blind"), _fit_toy("lsdn")
    assert blind >= 0.9 * floor
    assert lsdn < 0.1 * floor, (lsdn, floor)


def test_bad_settings_are_config_errors():
    for bad, match in (("model.variant=concat", "model.variant"), ("model.spatial_dims=4", "model.spatial_dims"),
                       ("model.kernel=2", "model.kernel"), ("loss.region=head", "loss.region"),
                       ("model.activation=gelu", "model.activation"), ("data.target=t1w", "data.source")):
        with pytest.raises(ConfigError, match=match):
            _method(bad)
    with pytest.raises(ConfigError, match="patch_depth"):
        _method("model.spatial_dims=3", "data.patch_depth=2")


@pytest.mark.data
@pytest.mark.parametrize("dims", [2, 3])
def test_jitted_steps_lower_the_loss_and_score(dims, train_steps):
    method = _method(f"model.spatial_dims={dims}", "data.patch_depth=3", "model.activation=relu")
    mesh, state, losses = train_steps(method, jax.devices()[:1], 8, method.dataset("train")[np.arange(4)])
    assert losses[-1] < losses[0] and all(np.isfinite(losses))
    test = method.dataset("test")
    batch = test[np.arange(4)]
    if dims == 3:  # a window of the slice and its neighbours; scored on its own slice
        assert batch["source"].shape == (4, 3, 48, 40, 1) and batch["target"].shape == (4, 48, 40, 1)
        own = 2.0 * method.volume["t1w"][batch["slice_index"]][..., None] - 1.0
        np.testing.assert_allclose(batch["source"][:, 1], own, atol=1e-6)
        train = method.dataset("train")
        split = method.volume["split"]
        assert all(set(split[i:i + 3]) == {"train"} for i in train.arrays["slice_index"])  # inside training slabs
    scores = make_eval_step(method.eval_step, mesh)(state, shard_batch(batch, mesh))
    assert set(scores) == {"psnr", "ssim"} and np.isfinite(float(scores["psnr"].total))
    assert make_predict_step(method.predict, mesh)(state, shard_batch(batch, mesh))["image"].shape == (4, 48, 40, 1)


@pytest.mark.data
def test_sharded_steps_match_single_device(sharded_matches_single):
    """Three steps on 4 devices equal three on one, in float64. The runs differ only in the order of the
    floating-point sums (the all-reduce of the gradient, the masked mean over the batch): relative differences
    ~ n u with n ~ 1e4 terms and u = 1.1e-16, about 1e-12 of the loss and the gradients. Adam's updates,
    lr m / (sqrt(v) + eps), inherit the gradients' relative error (no component here is near zero, so no sign
    flips), so the parameters differ by ~1e-15. rtol 1e-9 keeps a margin of 1e3 and lies far below a sharding
    error (a mean over one device's rows changes the loss by O(1))."""
    sharded_matches_single(_method, rows=4, steps=3, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- `kfjax infer lsdn`
INFER_RUN = [*TINY, "train.steps=3", "train.checkpoint_every=3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step 2-D run at 4 mm, and the simulated subject's T1w (x 1000) saved as NIfTI with its MNI affine."""
    root = tmp_path_factory.mktemp("infer_lsdn")
    workdir = root / "run"
    assert main(["train", "lsdn", "--workdir", str(workdir), "--no-progress", "--set", *INFER_RUN]) == 0
    method = _method()
    nib.save(nib.Nifti1Image(1000.0 * method.volume["t1w"], method.volume["affine"]), str(root / "t1.nii.gz"))
    return root, workdir, method


def _infer(run, name, *extra, source="t1.nii.gz"):
    root, workdir, _ = run
    out = root / name
    code = main(["infer", "lsdn", "--workdir", str(workdir), "--input", str(root / source), "--out", str(out),
                 "--no-progress", *extra])
    return code, out


@pytest.mark.data
def test_infer_matches_the_network_on_the_training_grid(run):
    """On the subject itself (already on the 4 mm training grid: no resampling), the output divided by the
    input's intensity scale is the network's [0, 1] prediction of each slice. The input was normalised to its
    99.5th foreground percentile and clipped at 1 (so at least 0.5 % of the foreground is exactly 1): its own
    99.5th percentile is 1 again and re-normalising it is the identity; what remains is float32 round-off of
    the x1000 / scale round trip and of the network, ~1e-6. atol 1e-4 keeps a margin of 100, and any
    orientation or slice mix-up changes a slice by O(0.1-1)."""
    from kfjax.data.synthesis import intensity_scale
    from kfjax.train.loop import restore_for_eval
    from kfjax.units import to_unit

    root, workdir, method = run
    code, out = _infer(run, "t2.nii.gz")
    assert code == 0
    result = nib.load(str(out))
    synth = np.asarray(result.dataobj, np.float32)
    assert synth.shape == method.volume["t1w"].shape and np.allclose(result.affine, method.volume["affine"])
    scale = intensity_scale(1000.0 * method.volume["t1w"])
    test = method.dataset("test")[np.arange(4)]
    state = restore_for_eval(method, workdir)
    pred = np.clip(to_unit(np.asarray(jax.jit(method.predict)(state, test)["image"])), 0.0, 1.0)[..., 0]
    np.testing.assert_allclose(synth[test["slice_index"]] / scale, pred, atol=1e-4)


@pytest.mark.data
def test_infer_with_shrink_connect(run):
    code, out = _infer(run, "t2_sc.nii.gz", "--set", "infer.shrink_units=4")
    assert code == 0 and np.all(np.isfinite(np.asarray(nib.load(str(out)).dataobj)))


@pytest.mark.data
def test_infer_refuses_a_volume_outside_atlas_space(run, capsys):
    root, _, method = run
    affine = method.volume["affine"].copy()
    affine[:3, 3] += (150.0, 0.0, 0.0)  # the head 15 cm to the right of MNI's origin: not registered
    nib.save(nib.Nifti1Image(1000.0 * method.volume["t1w"], affine), str(root / "moved.nii.gz"))
    code, out = _infer(run, "moved_t2.nii.gz", source="moved.nii.gz")
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "register it to MNI152" in err and len(err.strip().splitlines()) == 1


@pytest.mark.data
def test_infer_refuses_a_2d_image(run, capsys):
    root = run[0]
    nib.save(nib.Nifti1Image(np.ones((20, 16), np.float32), np.eye(4)), str(root / "slice.nii.gz"))
    code, out = _infer(run, "slice_t2.nii.gz", source="slice.nii.gz")
    assert code == 2 and not out.exists() and "3-D MR volume" in capsys.readouterr().err


def test_a_3d_run_refuses_to_infer():
    method = _method("model.spatial_dims=3", "data.patch_depth=3")
    volume = Volume(np.ones((8, 8, 8), np.float32), np.eye(4), None)
    with pytest.raises(InputError, match="2-D run"):
        method.infer(None, {"volume": volume})
