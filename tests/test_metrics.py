"""Tests of kfjax.metrics against scikit-image, numpy and analytic cases."""

import jax
import numpy as np
import pytest
from scipy import ndimage
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize

from kfjax import metrics as M
from kfjax.errors import InputError

psnr_jit = jax.jit(M.psnr)
ssim_jit = jax.jit(M.ssim, static_argnames="window")


def _smooth(rng, shape, sigma):
    """Smooth random field in [0, 1] per sample (structured, not white noise)."""
    x = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma)
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo)


def _pairs_2d(data_range, c):
    """(B=3, 64, 64, c) targets (camera crop + two smooth fields) and noisy, shifted predictions."""
    rng = np.random.default_rng(int(data_range) + c)
    cam = resize(skdata.camera().astype(np.float64) / 255.0, (128, 128), anti_aliasing=True)[32:96, 32:96]
    cams = np.stack([cam] * c, -1)
    t = np.stack([cams, _smooth(rng, (64, 64, c), (3, 3, 0)), rng.uniform(size=(64, 64, c))])
    p = np.clip(t + 0.08 * rng.standard_normal(t.shape) + 0.02, 0.0, 1.0)
    return p * data_range, t * data_range


def _pairs_3d(data_range):
    rng = np.random.default_rng(7)
    t = np.stack([_smooth(rng, (20, 22, 24, 1), (2, 2, 2, 0)) for _ in range(3)])
    p = np.clip(t + 0.1 * rng.standard_normal(t.shape), 0.0, 1.0)
    return p * data_range, t * data_range


def _sk_ssim(p, t, r, window):
    """scikit-image SSIM per sample, float64, channels via channel_axis."""
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False) if window == "gaussian" else {}
    out = []
    for pi, ti in zip(p, t):
        if pi.shape[-1] == 1:
            out.append(structural_similarity(ti[..., 0], pi[..., 0], data_range=r, **kw))
        else:
            out.append(structural_similarity(ti, pi, data_range=r, channel_axis=-1, **kw))
    return np.array(out)


@pytest.mark.parametrize("data_range", [1.0, 4095.0])
@pytest.mark.parametrize("c", [1, 3])
def test_psnr_matches_skimage(data_range, c):
    p, t = _pairs_2d(data_range, c)
    got = np.asarray(psnr_jit(p.astype(np.float32), t.astype(np.float32), data_range))
    want = [peak_signal_noise_ratio(ti, pi, data_range=data_range) for pi, ti in zip(p, t)]
    assert got.shape == (3,)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_psnr_3d_and_masked():
    p, t = _pairs_3d(4095.0)
    got = np.asarray(psnr_jit(p.astype(np.float32), t.astype(np.float32), 4095.0))
    want = [peak_signal_noise_ratio(ti, pi, data_range=4095.0) for pi, ti in zip(p, t)]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    # masked: MSE over masked voxels only (mask without channel axis)
    mask = (np.random.default_rng(0).uniform(size=p.shape[:-1]) > 0.6)
    got = np.asarray(psnr_jit(p.astype(np.float32), t.astype(np.float32), 4095.0, mask))
    want = [10 * np.log10(4095.0**2 / np.mean((pi - ti)[mi] ** 2)) for pi, ti, mi in zip(p, t, mask)]
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("window", ["uniform", "gaussian"])
@pytest.mark.parametrize("data_range", [1.0, 4095.0])
@pytest.mark.parametrize("c", [1, 3])
def test_ssim_2d_matches_skimage(window, data_range, c):
    p, t = _pairs_2d(data_range, c)
    got = np.asarray(ssim_jit(p.astype(np.float32), t.astype(np.float32), data_range, window=window))
    assert got.shape == (3,)
    np.testing.assert_allclose(got, _sk_ssim(p, t, data_range, window), rtol=1e-4)


@pytest.mark.parametrize("window", ["uniform", "gaussian"])
@pytest.mark.parametrize("data_range", [1.0, 4095.0])
def test_ssim_3d_matches_skimage(window, data_range):
    p, t = _pairs_3d(data_range)
    got = np.asarray(ssim_jit(p.astype(np.float32), t.astype(np.float32), data_range, window=window))
    assert got.shape == (3,)
    np.testing.assert_allclose(got, _sk_ssim(p, t, data_range, window), rtol=1e-4)


def test_ssim_identical_and_masked():
    p, t = _pairs_2d(1.0, 1)
    np.testing.assert_allclose(np.asarray(ssim_jit(t, t, 1.0)), 1.0, rtol=1e-5)
    # masked SSIM = mean of skimage's full SSIM map over mask pixels inside the cropped region
    mask = np.zeros(t.shape[:-1], bool)
    mask[:, 10:40, 5:50] = True
    got = np.asarray(ssim_jit(p.astype(np.float32), t.astype(np.float32), 1.0, mask=mask))
    want = []
    for pi, ti, mi in zip(p, t, mask):
        _, smap = structural_similarity(ti[..., 0], pi[..., 0], data_range=1.0, full=True)
        want.append(smap[3:-3, 3:-3][mi[3:-3, 3:-3]].mean())
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_ssim_bad_args():
    x = np.zeros((1, 5, 5, 1), np.float32)
    with pytest.raises(InputError):
        M.ssim(x, x, 1.0)
    with pytest.raises(InputError):
        M.ssim(np.zeros((1, 16, 16, 1)), np.zeros((1, 16, 16, 1)), 1.0, window="box")


def test_mae():
    rng = np.random.default_rng(1)
    p, t = rng.uniform(size=(2, 8, 8, 2)), rng.uniform(size=(2, 8, 8, 2))
    mask = rng.uniform(size=(2, 8, 8)) > 0.5
    np.testing.assert_allclose(M.mae(p, t), np.abs(p - t).mean(axis=(1, 2, 3)), rtol=1e-5)
    want = [np.abs(pi - ti)[mi].mean() for pi, ti, mi in zip(p, t, mask)]
    np.testing.assert_allclose(jax.jit(M.mae)(p, t, mask), want, rtol=1e-5)


def test_dice_known_overlaps():
    p = np.zeros((2, 10, 10, 2), np.float32)
    t = np.zeros((2, 10, 10, 2), np.float32)
    p[0, :4, :, 1] = 1  # 40 px
    t[0, 2:8, :, 1] = 1  # 60 px, overlap 20 -> dice 40/100
    p[..., 0] = 1 - p[..., 1]
    t[..., 0] = 1 - t[..., 1]
    p[1, ..., 0] = t[1, ..., 0] = 1  # sample 1: foreground empty in both -> 1.0
    dice_jit = jax.jit(M.dice, static_argnames="include_background")
    d = np.asarray(dice_jit(p, t))
    assert d.shape == (2, 2)
    np.testing.assert_allclose(d[0, 1], 0.4, rtol=1e-6)
    np.testing.assert_allclose(d[0, 0], 0.4, rtol=1e-6)  # background: 60 & 40 px, overlap 20
    np.testing.assert_allclose(d[1], [1.0, 1.0])
    fg = np.asarray(dice_jit(p, t, include_background=False))
    assert fg.shape == (2, 1)
    np.testing.assert_allclose(fg[:, 0], [0.4, 1.0], rtol=1e-6)
    # disjoint -> 0
    assert float(dice_jit(p[..., 1:], 1 - p[..., 1:])[0, 0]) == 0.0


def _ball(shape, center, radius_mm, spacing):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, center)) <= radius_mm**2


def test_surface_distances_concentric_spheres():
    spacing = (0.5, 0.5, 0.5)
    c = (12.0, 12.0, 12.0)
    a = _ball((49, 49, 49), c, 6.0, spacing)
    b = _ball((49, 49, 49), c, 9.0, spacing)
    asd = M.average_surface_distance(a, b, spacing)
    hd = M.hausdorff_distance_95(a, b, spacing)
    assert abs(asd - 3.0) <= 0.5  # r2 - r1 = 3 mm, within one voxel (0.5 mm)
    assert abs(hd - 3.0) <= 0.5
    assert M.average_surface_distance(b, a, spacing) == pytest.approx(asd)


def _shifted_cube_expected(a, k, s0):
    """Analytic ASD and HD95 of an a^3 cube vs. the same cube shifted by k voxels along axis 0,
    when k * s0 <= the spacing of the other axes (so no sideways path is shorter)."""
    n_surface = a**3 - (a - 2) ** 3
    total = (a**2 + (a - 2) ** 2) * k * s0  # faces x=0 and the interior of x=a-1: k voxels to go
    total += sum(4 * (a - 1) * (k - x) * s0 for x in range(1, k))  # side rings with x < k
    return total / n_surface, k * s0  # same in both directions by symmetry


@pytest.mark.parametrize("k", [1, 2])
def test_surface_distances_shifted_cube(k):
    a, spacing = 10, (0.5, 2.0, 1.5)
    p = np.zeros((16, 14, 14), bool)
    p[2:2 + a, 2:2 + a, 2:2 + a] = True
    t = np.roll(p, k, axis=0)
    want_asd, want_hd = _shifted_cube_expected(a, k, spacing[0])
    assert M.average_surface_distance(p, t, spacing) == pytest.approx(want_asd, rel=1e-12)
    assert M.hausdorff_distance_95(p, t, spacing) == pytest.approx(want_hd, rel=1e-12)


def test_surface_distances_identical_2d_and_empty():
    m = np.zeros((20, 20), bool)
    m[5:12, 3:15] = True
    assert M.average_surface_distance(m, m, (1.0, 0.7)) == 0.0
    assert M.hausdorff_distance_95(m, m) == 0.0
    assert np.isnan(M.average_surface_distance(m, np.zeros_like(m)))
    assert np.isnan(M.hausdorff_distance_95(np.zeros_like(m), np.zeros_like(m)))
    with pytest.raises(InputError):
        M.hausdorff_distance_95(m, m[:10])


def test_landmarks():
    pred = np.array([[[0.0, 0, 0], [1, 1, 1]], [[3, 4, 0], [0, 0, 2]]])
    target = np.zeros_like(pred)
    e = np.asarray(jax.jit(M.landmark_errors)(pred, target))
    np.testing.assert_allclose(e, [[0, np.sqrt(3)], [5, 2]], rtol=1e-6)
    e2 = np.asarray(M.landmark_errors(pred, target, spacing=(2.0, 1.0, 0.5)))
    np.testing.assert_allclose(e2, [[0, np.sqrt(4 + 1 + 0.25)], [np.sqrt(36 + 16), 1]], rtol=1e-6)
    st = M.error_stats(np.arange(1.0, 11.0))
    assert st["mean"] == 5.5 and st["median"] == 5.5
    assert st["std"] == pytest.approx(np.std(np.arange(1.0, 11.0)))
    assert st["p80"] == pytest.approx(8.2)


def _rot_z(theta):
    c, s = np.cos(theta), np.sin(theta)
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    return T


def test_mtre_translation_rotation_and_gfr():
    pts = np.random.default_rng(2).uniform(-50, 50, size=(20, 3))
    t_true = np.stack([np.eye(4)] * 2)
    t_pred = t_true.copy()
    t_pred[0, :3, 3] = [3.0, 4.0, 12.0]  # |t| = 13
    t_pred[1] = _rot_z(np.pi / 2)  # 90 degrees about z: error = sqrt(2) * radius in the xy plane
    got = np.asarray(jax.jit(M.mtre)(t_pred, t_true, pts))
    want_rot = np.mean(np.sqrt(2.0) * np.linalg.norm(pts[:, :2], axis=1))
    np.testing.assert_allclose(got, [13.0, want_rot], rtol=1e-5)
    assert float(M.gross_failure_rate(np.array([10.0, 10.0001, 3.0, 25.0]))) == 0.5
    assert float(M.gross_failure_rate(np.array([10.0]))) == 0.0
    assert float(M.gross_failure_rate(np.array([5.0, 6.0]), threshold=5.0)) == 0.5


def test_accuracy():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    np.testing.assert_array_equal(M.accuracy(logits, np.array([1, 1, 2])), [1.0, 0.0, 1.0])
    seg = np.array([[[0, 1], [1, 1]]])
    np.testing.assert_allclose(M.accuracy(seg, np.array([[[0, 1], [0, 0]]])), [0.5])


def test_mean_chunks_merge_exactly():
    values = np.arange(24, dtype=np.float32) / 8.0  # exactly representable sums
    mask = (np.arange(24) % 3 != 0).astype(np.float32)
    whole = M.Mean.from_values(values, mask)
    acc = M.Mean.empty()
    for lo, hi in [(0, 6), (6, 12), (12, 24)]:
        acc = acc.merge(M.Mean.from_values(values[lo:hi], mask[lo:hi]))
    assert float(acc.compute()) == float(whole.compute()) == float(values[mask > 0].mean())
    # dicts of accumulators
    d = M.merge_metrics(None, {"a": M.Mean.from_values(values[:10])})
    d = M.merge_metrics(d, {"a": M.Mean.from_values(values[10:]), "b": M.Mean.from_values([np.nan], [0.0])})
    out = M.compute_metrics(d)
    assert float(out["a"]) == float(values.mean())
    assert np.isnan(float(out["b"]))  # nothing counted


def test_mean_jitted_eval_step_on_sharded_batch():
    n = jax.device_count()
    b = 8 if 8 % n == 0 else n
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    rng = np.random.default_rng(3)
    p = rng.uniform(size=(b, 16, 16, 1)).astype(np.float32)
    t = np.clip(p + 0.1 * rng.standard_normal(p.shape), 0, 1).astype(np.float32)
    valid = (np.arange(b) < b - 1).astype(np.float32)  # last sample is padding

    @jax.jit
    def eval_step(p, t, valid):
        return {"psnr": M.Mean.from_values(M.psnr(p, t, 1.0), valid),
                "mae": M.Mean.from_values(M.mae(p, t), valid)}

    args = [jax.device_put(x, sharding) for x in (p, t, valid)]
    out = eval_step(*args)
    assert isinstance(out["psnr"], M.Mean)
    halves = M.merge_metrics(eval_step(p[: b // 2], t[: b // 2], valid[: b // 2]),
                             eval_step(p[b // 2:], t[b // 2:], valid[b // 2:]))
    want = np.mean([peak_signal_noise_ratio(ti, pi, data_range=1.0) for pi, ti in zip(p[:-1], t[:-1])])
    res = M.compute_metrics(out)
    np.testing.assert_allclose(float(res["psnr"]), want, rtol=1e-5)
    np.testing.assert_allclose(float(M.compute_metrics(halves)["psnr"]), want, rtol=1e-5)
    np.testing.assert_allclose(float(res["mae"]), np.abs(p - t)[:-1].mean(), rtol=1e-5)
    assert float(out["psnr"].count) == b - 1
