"""Registration benchmark cases: a pure function of (seed, split, index), disjoint splits, the start mTRE's median
in the band its configured distribution implies, targets that are the renderer's DRR with the shift off and
the spectrum-weighted DRR with only the spectrum on, tools only in the targets, exact cylinder chords, and
one clear error per bad setting.

The procedural phantom (6 mm voxels, 32² detectors) needs no data; the calibration on the real chest CT is
marked `data` and `slow`.
"""

import dataclasses

import numpy as np
import pytest
from scipy import stats

from kfjax.data import registration_cases as R
from kfjax.errors import ConfigError, InputError

F32_EPS = float(np.finfo(np.float32).eps)
SMALL = R.CaseConfig(size=32)
TAIL = 1e-6  # probability, per side, that a correct sampler puts the sample median outside the band


@pytest.fixture(scope="module")
def subject():
    return R.phantom_subject()


def _drr(volume, affine, cases):
    """Plain DRRs (N, V, H, W) of ``volume`` (X, Y, Z[, C]) at the cases' ground-truth views, rendered here."""
    from kfjax.physics import drr

    ext = cases.gt_extrinsics.reshape(-1, 4, 4).astype(np.float32)
    p = np.asarray(drr.make_renderer(cases.camera)(volume, affine, ext))
    return p.reshape(cases.gt_extrinsics.shape[:2] + p.shape[1:])


# ------------------------------------------------------------------------------------------------ draws
def test_cases_are_a_pure_function_of_seed_split_and_index(subject):
    a = R.draw_cases(subject, "train", 5, seed=3, config=SMALL)
    b = R.draw_cases(subject, "train", 3, seed=3, config=SMALL)
    for key in a:
        np.testing.assert_array_equal(a[key][:3], b[key])  # a smaller count is a prefix
    assert not np.array_equal(a["gt_params"], R.draw_cases(subject, "train", 5, seed=4, config=SMALL)["gt_params"])
    one = R.make_cases(subject, "test", 2, seed=0, config=SMALL)
    again = R.make_cases(subject, "test", 2, seed=0, config=SMALL)
    np.testing.assert_array_equal(one.targets, again.targets)
    np.testing.assert_array_equal(one.metal, again.metal)
    assert one.targets.shape == (2, 2, 32, 32) and one.targets.dtype == np.float32
    # switching the shift off changes no pose, start or other draw
    clean = R.draw_cases(subject, "test", 2, seed=0, config=R.no_shift(SMALL))
    np.testing.assert_array_equal(clean["gt_params"], one.gt_params)
    np.testing.assert_array_equal(clean["perturbation"], one.perturbation)
    np.testing.assert_array_equal(clean["scatter_sigma"], one.detector["scatter_sigma"])


def test_splits_are_disjoint(subject):
    draws = {s: R.draw_cases(subject, s, 40, seed=0, config=SMALL) for s in R.SPLITS}
    for key in ("gt_params", "perturbation"):
        rows = np.concatenate([draws[s][key] for s in R.SPLITS])
        gaps = np.linalg.norm(rows[:, None] - rows[None], axis=-1) + np.eye(len(rows))
        assert gaps.min() > 0, f"two cases share {key}"
    # the next seed is not a shifted split either
    nxt = R.draw_cases(subject, "train", 40, seed=1, config=SMALL)["gt_params"]
    assert not np.any(np.all(nxt[:, None] == draws["val"]["gt_params"][None], axis=-1))


def test_poses_starts_and_their_mtre_are_consistent(subject):
    from kfjax import metrics
    from kfjax.register.pose import transform_from_params

    d = R.draw_cases(subject, "val", 6, seed=0, config=SMALL)
    c = subject.centre
    np.testing.assert_allclose(np.asarray(transform_from_params(d["init_params"], c)), d["init_transform"], atol=1e-3)
    np.testing.assert_allclose(np.asarray(transform_from_params(d["gt_params"], c)), d["gt_transform"], atol=1e-3)
    by_metric = np.asarray(metrics.mtre(d["init_transform"], d["gt_transform"], subject.points))
    np.testing.assert_allclose(d["init_mtre"], by_metric, rtol=1e-4)  # float32 metric vs float64 host
    deg = np.rad2deg(np.abs(d["perturbation"][:, :3]))
    assert np.all(deg <= SMALL.init_rot_deg) and np.all(np.abs(d["perturbation"][:, 3:]) <= SMALL.init_trans_mm)


def _median_band(points, centre, config, n_cases):
    """[q_lo, q_hi] of the start mTRE such that the median of ``n_cases`` (odd) iid starts falls outside with
    probability <= TAIL per side: the sample median is the order statistic k = (n + 1) / 2, and F(X_(k)) is
    Beta(k, n + 1 - k) for any continuous law, so the band is the reference law's quantiles at that Beta's
    TAIL and 1 - TAIL quantiles. The reference law: 40,000 draws from the configured uniforms (own stream)."""
    k = (n_cases + 1) // 2
    p_lo, p_hi = stats.beta.ppf([TAIL, 1 - TAIL], k, n_cases + 1 - k)
    rng = np.random.default_rng(12345)
    u = rng.uniform(-1, 1, (40_000, 6))
    pert = np.concatenate([np.deg2rad(u[:, :3] * config.init_rot_deg), u[:, 3:] * config.init_trans_mm], 1)
    reference = R.initial_mtre(pert, points, centre)
    return np.quantile(reference, [p_lo, p_hi]), reference


def test_start_mtre_median_lies_in_the_band_of_the_configured_distribution(subject):
    """101 test cases: their median start mTRE within the order-statistic band (~ the reference law's 27th to
    73rd percentiles); the reference quantiles carry a Monte Carlo error of ~0.25 percentile points, small
    against the band."""
    n = 101
    d = R.draw_cases(subject, "test", n, seed=0, config=SMALL)
    (lo, hi), reference = _median_band(subject.points, subject.centre, SMALL, n)
    assert lo < np.median(d["init_mtre"]) < hi, (lo, np.median(d["init_mtre"]), hi)
    assert lo < np.median(reference) < hi


# ------------------------------------------------------------------------------------------------ targets
def test_target_is_the_plain_drr_with_the_shift_off(subject):
    """Shift off: the target is the renderer's DRR of the target volume at the true pose. The case renders the
    water and bone channels and adds them; here their sum is rendered: the same taps, added in another order,
    so they agree to a few float32 roundings of the largest line integral (bound 64 eps x max)."""
    cases = R.make_cases(subject, "val", 3, seed=0, config=R.no_shift(SMALL))
    plain = _drr(subject.target_volume.sum(-1), subject.target_affine, cases)
    assert plain.max() > 3.0
    np.testing.assert_allclose(cases.targets, plain, rtol=0, atol=64 * F32_EPS * float(plain.max()))
    assert np.all(cases.metal == 0)


def test_spectrum_alone_gives_the_spectrum_weighted_drr(subject):
    """Only the polychromatic spectrum on: the target is -log sum_E S(E) exp(-(r_w(E) p_w + r_b(E) p_b)) of
    the water and bone DRRs rendered here, with the shipped spectrum and ratios at the DRR's energy; and the
    beam hardens: the thickest pixel loses more of its monochromatic line integral than a thin one."""
    from kfjax.physics import metal

    config = dataclasses.replace(R.no_shift(SMALL), polychromatic=True)
    cases = R.make_cases(subject, "val", 2, seed=0, config=config)
    water_bone = _drr(subject.target_volume, subject.target_affine, cases)  # (N, V, H, W, 2)
    ratios = metal.attenuation_ratios("Ti", R.reference_energy())[:, :2]
    spectrum = metal.load_tables()["spectrum"]
    expected = -np.log(np.exp(-water_bone.astype(np.float64) @ ratios.T) @ spectrum)
    np.testing.assert_allclose(cases.targets, expected, rtol=1e-5, atol=1e-5)
    mono = water_bone.sum(-1)
    thick, thin = np.argmax(mono), np.argmin(np.where(mono > 0.2, mono, np.inf))
    ratio = cases.targets.ravel() / np.maximum(mono.ravel(), 1e-6)
    assert ratio[thick] < ratio[thin] - 0.01, (ratio[thick], ratio[thin])


def test_default_shift_moves_the_target_away_from_the_drr(subject):
    """With the default shift every target differs from the plain DRR by more than 2% (RMS, relative): the
    noise alone at the highest dose (5e4 photons) is about 1 / sqrt(5e4 exp(-p)) ~ 3-4 % of a line integral
    of 3-4 in the body, and blur, scatter and gamma add to it."""
    cases = R.make_cases(subject, "test", 4, seed=0, config=SMALL)
    plain = _drr(subject.target_volume.sum(-1), subject.target_affine, cases)
    rms = np.sqrt(np.mean((cases.targets - plain) ** 2, axis=(2, 3)) / np.mean(plain**2, axis=(2, 3)))
    assert np.all(rms > 0.02), rms


def test_tools_appear_only_in_the_target(subject):
    """Tools on, everything else off: the target is the DRR plus the tools' line integral, which is positive on
    some pixels of every view; the CT used for DRRs is untouched and holds nothing as dense as titanium."""
    from kfjax.physics.metal import MetalConfig, metal_mu

    before = subject.volume.copy()
    config = dataclasses.replace(R.no_shift(SMALL), metal=1.0, screws=(1, 2), wires=(1, 1))
    cases = R.make_cases(subject, "train", 3, seed=0, config=config)
    plain = _drr(subject.target_volume.sum(-1), subject.target_affine, cases)
    tol = 64 * F32_EPS * float(cases.targets.max())
    np.testing.assert_allclose(cases.targets, plain + cases.metal, rtol=0, atol=tol)
    assert np.all(cases.metal.max(axis=(2, 3)) > 0.5), "every view shows a tool"
    assert np.all(cases.metal >= 0) and np.mean(cases.metal > 0) < 0.3, "tools are thin"
    np.testing.assert_array_equal(subject.volume, before)
    assert subject.volume.max() < metal_mu(MetalConfig(material="Ti", energy=R.reference_energy()))


def test_cylinder_chords_are_exact():
    import jax
    import jax.numpy as jnp

    chords_of = jax.jit(R.cylinder_chords)
    a, b, r = np.array([[0.0, -20.0, 0.0]]), np.array([[0.0, 20.0, 0.0]]), np.array([3.0])
    source = np.array([0.0, 0.0, -500.0])
    # through the axis square on, through it at a slant along the axis, past the side, past the end (y 21 at z 0)
    targets = np.array([[0.0, 0.0, 500.0], [0.0, 19.0, 500.0], [10.0, 0.0, 500.0], [0.0, 42.0, 500.0]])
    chords = np.asarray(chords_of(source, targets, a, b, r))[:, 0]
    np.testing.assert_allclose(chords[:2], [6.0, 6.0 * np.hypot(1000, 19) / 1000], rtol=1e-5)
    assert chords[2] == 0 and chords[3] == 0, "rays past the side or the end miss"
    along = np.asarray(chords_of(np.array([0.0, -500.0, 0.0]), np.array([[0.0, 500.0, 0.0]]), a, b, r))
    np.testing.assert_allclose(along, [[40.0]], rtol=1e-5)
    # random rays aimed near a tilted cylinder against dense sampling (step 0.03 mm: error <= 2 steps)
    rng = np.random.default_rng(0)
    a2, b2 = np.array([[5.0, -10.0, 3.0]]), np.array([[-15.0, 25.0, 10.0]])
    src = np.array([2.0, 1.0, -300.0])
    near = a2 + rng.uniform(0, 1, (32, 1)) * (b2 - a2) + rng.uniform(-6, 6, (32, 3))
    tgt = src + 2 * (near - src)  # the segment's midpoint is near the axis
    fast = np.asarray(chords_of(src, tgt, a2, b2, np.array([4.0])))[:, 0]
    t = np.linspace(0.0, 1.0, 20_001)
    pts = src + t[:, None, None] * (tgt - src)[None]  # (S, R, 3)
    axis = (b2 - a2)[0]
    h = (pts - a2[0]) @ axis / (axis @ axis)
    dist = np.linalg.norm(pts - a2[0] - h[..., None] * axis, axis=-1)
    inside = (dist <= 4.0) & (h >= 0) & (h <= 1)
    length = np.linalg.norm(tgt - src, axis=1)
    slow = inside.mean(0) * length
    assert 5 < np.sum(slow > 0) < 32, "some rays hit, some miss"
    np.testing.assert_allclose(fast, slow, atol=2 * length.max() / 20_000 + 1e-3)
    assert np.all(np.isfinite(np.asarray(chords_of(src, tgt, a2, a2, jnp.zeros(1)))))


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("field, value", [("size", 8), ("size", 64.0), ("views_deg", ()), ("views_deg", [0, 90]),
                                          ("init_rot_deg", (8.0, 8.0)), ("pose_trans_mm", (1.0, -1.0, 1.0)),
                                          ("photons", (0.0, 100.0)), ("scatter", (0.3, 0.1)), ("gamma", (0.0, 1.0)),
                                          ("metal", 1.5), ("blade", 0.7), ("screws", (3, 1)), ("detector_mm", 0.0)])
def test_bad_config_raises_one_config_error(field, value):
    with pytest.raises(ConfigError, match=f"CaseConfig.{field}"):
        R.CaseConfig(**{field: value})


@pytest.mark.parametrize("kwargs", [dict(split="training"), dict(count=0), dict(count=2.0), dict(seed=-1)])
def test_bad_arguments_raise_input_error(subject, kwargs):
    args = dict(split="test", count=2, seed=0, config=SMALL) | kwargs
    with pytest.raises(InputError):
        R.draw_cases(subject, **args)


# ------------------------------------------------------------------------------------------------ real data
@pytest.mark.data
@pytest.mark.slow
def test_chest_ct_starts_are_calibrated_to_the_talk():
    """On the chest CT's bony target points the default starts have a median mTRE of 20.4 mm (the talk's) to
    within 1 mm (the reference median's Monte Carlo error is ~0.05 mm), and 101 test cases fall in the band."""
    subject = R.chest_subject()
    (lo, hi), reference = _median_band(subject.points, subject.centre, R.CaseConfig(), 101)
    assert abs(np.median(reference) - 20.4) < 1.0, np.median(reference)
    d = R.draw_cases(subject, "test", 101, seed=0)
    assert lo < np.median(d["init_mtre"]) < hi
    assert subject.points.shape == (1000, 3) and subject.target_volume.shape[-1] == 2


@pytest.mark.data
def test_head_subject_is_the_head_without_its_holder():
    """The second anatomy: bone points and anchors are dense voxels of the head; the holder is gone."""
    from kfjax.data.sources import load
    from kfjax.physics.drr import hu_to_mu

    subject = R.load_subject("head")
    assert subject is R.head_subject() and subject.name == "head-ct"
    assert subject.volume.shape == (128, 128, 108) and subject.target_volume.shape == (256, 256, 108, 2)
    ct = load("head-ct")
    index = np.rint((subject.points - ct.affine[:3, 3]) @ np.linalg.inv(ct.affine[:3, :3]).T).astype(int)
    assert np.all(ct.array[tuple(index.T)] >= R.BONE_HU)
    assert np.all(np.linalg.norm(subject.anchors - subject.centre, axis=1) <= R.METAL_REACH_MM)
    # the scan holds the head and a holder (two arcs of about 38,000 voxels each); the DRR volume the head alone
    from scipy import ndimage

    def regions(mask):
        labels, _ = ndimage.label(mask)
        return np.sort(np.bincount(labels.ravel())[1:])[::-1]

    scan = regions(ct.array > R.BODY_HU)
    assert scan[1] > 30_000 and scan[2] > 30_000
    kept = regions(subject.volume > float(hu_to_mu(R.BODY_HU)))
    assert kept[1:].sum() < 1e-4 * kept[0]


def test_unknown_subject_is_refused():
    with pytest.raises(ConfigError, match="unknown registration subject 'knee'; choose one of chest, head"):
        R.load_subject("knee")
