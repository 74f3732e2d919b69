"""POINT²: batch shapes; the correlation equals scipy's; soft-argmax and the tracking loss put the truth where it
is; exact tracks give the pose back through triangulation + Kabsch (two views) and through the single-view PnP;
a jitted step lowers the loss; sharded == single device (float64); bad settings are ConfigErrors; the chest CT
cases (data)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from kfjax import metrics
from kfjax.config import apply_overrides
from kfjax.errors import ConfigError, InputError
from kfjax.methods.point2 import Point2Config, Point2Method, tracking_loss
from kfjax.nn.poi_tracker import correlate, sample_patches, soft_argmax, to_feature
from kfjax.train.loop import init_train_state
from kfjax.train.mesh import make_mesh

# the procedural chest (no data) on a 32² detector: 6.25 mm pixels, 12 POIs, a two-level feature U-Net
TINY = ["data.subject=phantom", "data.size=32", "data.n_train=4", "data.n_val=2", "data.n_test=4",
        "data.batch_size=2", "model.channels=8,16", "model.features=8", "model.n_poi=12",
        "optim.schedule=constant", "optim.warmup_steps=0"]


def _method(*extra):
    return Point2Method(apply_overrides(Point2Config(), [*TINY, *extra]))


def _well_inside(prepared, size: int, margin: float = 5.0):
    """(B, K) POIs valid in the DRRs whose true X-ray positions lie ``margin`` px inside both X-rays and their
    windows (a score map cut by the border biases soft-argmax towards the inside)."""
    uv = prepared["uv_true"]
    inside = jnp.all((uv >= margin) & (uv <= size - margin), axis=-1)
    return prepared["valid"] & jnp.all(inside & prepared["trackable"], axis=1)


def _exact_logits(prepared, size: int, stride: int = 1, sharpness: float = 0.5):
    """Score-map logits (B, V, K, H, W) of a perfect tracker: a Gaussian of σ = 1 feature pixel about the true
    X-ray positions (sampled at unit spacing its mean is exact to ~exp(-2π²) ≈ 3e-9 px; a peak much sharper
    than a pixel would snap soft-argmax to the nearest pixel centre)."""
    xy = to_feature(prepared["uv_true"], stride)
    n = size // stride
    xs = jnp.arange(n, dtype=jnp.float32)
    return -sharpness * ((xs - xy[..., 0, None, None]) ** 2 + (xs[:, None] - xy[..., 1, None, None]) ** 2)


def test_batches_fit_their_spec_and_prepare_gives_drrs_and_pois():
    method = _method()
    spec, batch = method.batch_spec(2), method.dataset("train")[np.arange(2)]
    assert set(spec) == set(batch)
    for k, s in spec.items():
        assert batch[k].shape == s.shape and batch[k].dtype == s.dtype, k
    prepared = jax.jit(method.prepare)(batch, jax.random.PRNGKey(0))
    assert prepared["drr"].shape == (2, 2, 32, 32) and prepared["poi"].shape == (2, 12, 3)
    assert prepared["uv_drr"].shape == prepared["uv_true"].shape == (2, 2, 12, 2)
    assert prepared["valid"].shape == (2, 12) and prepared["trackable"].shape == (2, 2, 12)
    assert bool(jnp.all(prepared["valid"]))  # the phantom's bone fills the field: 12 visible POIs in each case
    assert np.all(np.isfinite(np.asarray(prepared["drr"]))) and float(jnp.max(prepared["drr"])) > 1.0
    # fresh starts: another key moves the DRR positions; evaluation (no key) keeps the cases' own starts
    other = jax.jit(method.prepare)(batch, jax.random.PRNGKey(1))
    assert float(jnp.max(jnp.abs(other["init_transform"] - prepared["init_transform"]))) > 1e-3
    fixed = method.prepare(batch)
    np.testing.assert_array_equal(np.asarray(fixed["init_transform"]), batch["init_transform"])


def test_correlate_equals_scipy_and_peaks_at_the_template_origin():
    """The score map is scipy's 'same' cross-correlation of each channel, summed, over P²; a template cut from
    the features at a point scores highest at that point (unit-length features: a cosine of 1 everywhere)."""
    rng = np.random.default_rng(0)
    f = rng.normal(size=(12, 10, 3)).astype(np.float32)
    t = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
    ours = np.asarray(correlate(jnp.asarray(f), jnp.asarray(t)))
    for k in range(2):
        ref = sum(signal.correlate(f[..., c], t[k, ..., c], mode="same") for c in range(3)) / 25
        np.testing.assert_allclose(ours[k], ref, rtol=1e-5, atol=1e-5)
    unit = f / np.linalg.norm(f, axis=-1, keepdims=True)
    centres = jnp.asarray([[4.0, 6.0], [7.0, 3.0]])  # (x, y)
    templates = sample_patches(jnp.asarray(unit), centres, 3)
    np.testing.assert_allclose(np.asarray(templates[0, 1, 1]), unit[6, 4], rtol=1e-6)  # integer centre: the pixel
    scores = np.asarray(correlate(jnp.asarray(unit), templates))
    for k, (x, y) in enumerate([(4, 6), (7, 3)]):
        assert np.unravel_index(scores[k].argmax(), scores[k].shape) == (y, x)


def test_soft_argmax_and_tracking_loss_put_the_truth_where_it_is():
    logits = jnp.full((1, 8, 8), -1e4).at[0, 5, 2].set(0.0)  # all mass on row 5, column 2
    uv, spread, p = soft_argmax(logits, stride=2)
    np.testing.assert_allclose(np.asarray(uv[0]), [(2 + 0.5) * 2, (5 + 0.5) * 2])
    assert float(spread[0]) < 1e-3 and float(p.sum()) == pytest.approx(1.0)
    truth = jnp.asarray([[[[5.0, 11.0]]]])  # (B, V, K, 2) px at stride 2: feature (2, 5)
    mask = jnp.ones((1, 1, 1))
    at_truth = tracking_loss(logits[None, None] * 1e-3, truth, mask, 2, 1.0)
    elsewhere = tracking_loss(jnp.roll(logits, 3, axis=-1)[None, None] * 1e-3, truth, mask, 2, 1.0)
    assert float(at_truth) < float(elsewhere)


@pytest.mark.parametrize("pose", ["triangulation", "single_view"])
def test_exact_tracks_give_the_pose_back(pose):
    """With score maps of a perfect tracker the pose error is far below the 3.1 mm pixel and the ~20 mm start:
    triangulation + Kabsch is exact for exact tracks (float32 round-off: ~1e-4 mm), and 20 Gauss-Newton steps
    of the single-view PnP converge from the start."""
    method = _method(f"model.pose={pose}", "data.size=64", "model.n_poi=32")
    batch = method.dataset("test")[np.arange(4)]
    prepared = method.prepare(batch)
    prepared["valid"] = _well_inside(prepared, 64)
    assert np.all(np.asarray(prepared["valid"]).sum(1) >= 6)
    solved = method.solve(_exact_logits(prepared, 64), prepared)
    points = jnp.asarray(method.subject.points, jnp.float32)
    err = np.asarray(metrics.mtre(solved["transform"], batch["gt_transform"], points))
    start = np.asarray(metrics.mtre(batch["init_transform"], batch["gt_transform"], points))
    assert np.all(start > 5.0), start
    assert np.all(err < 0.1), (err, start)


def test_jitted_step_lowers_the_loss_on_a_fixed_batch():
    """Eight Adam steps (lr 1e-2) on one batch with one key (the same starts and POIs every step): the tracking
    loss starts near ln(32²) = 6.9 nats (flat score maps) and must fall by 10 %; the sharpened maps of a working
    gradient path take far more (a broken one: none)."""
    method = _method("optim.lr=1e-2")
    mesh = make_mesh(jax.devices()[:1])
    batch = method.dataset("train")[np.arange(2)]
    state = init_train_state(method, mesh, method.batch_spec(2))
    step = jax.jit(lambda s, b: method.train_step(s, b, jax.random.PRNGKey(3)))
    losses = []
    for _ in range(8):
        state, logs = step(state, batch)
        losses.append(float(logs["loss"]))
    assert losses[-1] < 0.9 * losses[0], losses
    assert {"tracking", "geometry_mm"} <= set(logs)


@pytest.mark.slow
def test_sharded_steps_match_single_device(sharded_matches_single):
    """Two steps on 4 devices equal two on one, in float64. Each case's starts, DRRs and POIs are computed per
    row (no cross-row sums), so the runs differ only in the order of the sums of the loss means and the gradient
    all-reduce: ~n u = 1e4 x 1.1e-16 relative. rtol 1e-7 keeps a margin of 1e4 and is far below what a sharding
    error (a per-device mean, a key split per device) changes (>1e-3)."""
    sharded_matches_single(lambda: _method("data.batch_size=4"), rows=4)


@pytest.mark.parametrize("override, message", [
    ("data.subject=knee", "data.subject"), ("data.pair=tilted", "data.pair"), ("model.pose=pnp", "model.pose"),
    ("data.size=33", "data.size"), ("model.patch=4", "model.patch"), ("model.n_poi=2", "model.n_poi"),
    ("loss.sigma=0", "loss.sigma"), ("data.n_test=0", "data.n_test")])
def test_bad_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        _method(override).dataset("test")


@pytest.mark.data
def test_chest_cases_exact_tracks_recover_the_pose():
    """The chest CT (64² detector): exact tracks of the POIs visible in both X-rays give the pose within 0.5 mm."""
    method = Point2Method(apply_overrides(Point2Config(), ["data.n_test=4"]))
    batch = method.dataset("test")[np.arange(4)]
    prepared = method.prepare(batch)
    assert float(jnp.mean(prepared["valid"])) > 0.9
    prepared["valid"] = _well_inside(prepared, 64)
    solved = method.solve(_exact_logits(prepared, 64), prepared)
    err = metrics.mtre(solved["transform"], batch["gt_transform"], jnp.asarray(method.subject.points, jnp.float32))
    assert np.all(np.asarray(err) < 0.5), err


def test_estimate_on_the_training_scene_is_predict():
    """`estimate` (one user case, the scene passed in) gives the pose that `predict` (the evaluated path) gives
    for the same case, start and POIs."""
    method = _method()
    state = init_train_state(method, make_mesh(), method.batch_spec(2))
    batch = method.dataset("test")[np.arange(2)]
    want = method.predict(state, batch)
    for i in range(2):
        key = jax.random.fold_in(jax.random.PRNGKey(method.config.data.seed), int(batch["case"][i]))
        got = method.estimate(state, method.scene, batch["xray"][i], batch["init_transform"][i], key=key)
        np.testing.assert_allclose(np.asarray(got["uv"]), np.asarray(want["uv"][i]), atol=2e-3)
        np.testing.assert_allclose(np.asarray(got["transform"]), np.asarray(want["transform"][i]), atol=2e-3)


def test_scene_for_a_user_ct_keeps_the_training_pixel_size_and_draws_bone_anchors():
    from kfjax.data.registration_cases import ANCHORS, BONE_HU
    from kfjax.methods.point2 import isocentre_pixel_mm
    from kfjax.physics import carm
    from kfjax.physics.drr import hu_to_mu

    method = _method()
    s, train = method.subject, method.scene
    fine = carm.CArm(train.camera.sdd, 80, 64, train.camera.dx / 2, train.camera.dy / 2)  # half the training pitch
    scene = method.scene_for(s.volume, s.affine, s.centre, fine, train.extrinsics)
    assert (scene.camera.height, scene.camera.width) == (40, 32)  # half the pitch: half the pixels, same field
    assert scene.camera.height * scene.camera.dy == pytest.approx(fine.height * fine.dy)
    assert isocentre_pixel_mm(scene.camera, scene.extrinsics[0], s.centre) == pytest.approx(
        isocentre_pixel_mm(train.camera, train.extrinsics[0], s.centre))
    index = np.rint((scene.anchors - s.affine[:3, 3]) @ np.linalg.inv(s.affine[:3, :3]).T).astype(int)
    assert 3 <= len(scene.anchors) <= ANCHORS
    assert np.all(s.volume[tuple(index.T)] >= float(hu_to_mu(BONE_HU)))
    with pytest.raises(InputError, match="at least 2 X-ray views"):
        method.scene_for(s.volume, s.affine, s.centre, fine, train.extrinsics[:1])
    with pytest.raises(InputError, match="bone about the centre"):
        method.scene_for(np.zeros_like(s.volume), s.affine, s.centre, fine, train.extrinsics)
    tiny = carm.CArm(train.camera.sdd, 4, 4, train.camera.dx, train.camera.dy)
    with pytest.raises(InputError, match="too few"):
        method.scene_for(s.volume, s.affine, s.centre, tiny, train.extrinsics)
