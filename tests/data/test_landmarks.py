"""Landmark data: the projected landmark agrees with the rendered DRR, splits are disjoint, shapes and
dtypes, bad arguments; procedural images put each landmark at the centre of its shape.

The DRR geometry test renders a synthetic bead (no data needed); tests of the real chest CT are marked `data`.
"""

import numpy as np
import pytest

from kfjax.data import landmarks as L
from kfjax.errors import InputError


# ------------------------------------------------------------------------------------------ geometry
def test_bead_projects_to_its_landmark_pixel():
    """A Gaussian bead rendered by the DRR path shows up where `project_points` puts its centre.

    Tolerance: the bead (σ = 1 voxel of 3 mm, ≈ 0.6 px at the detector) is sampled on the voxel grid and
    interpolated bilinearly slice by slice; for a symmetric blob this moves its image centroid by a small
    fraction of a projected voxel, and perspective moves the centroid of a sphere's image from the image of
    its centre by (radius / distance)² of its offset (< 1e-4 px). Half a projected voxel (0.3 px) bounds both.
    """
    size, spacing, n = 64, 3.0, 48
    rng = np.random.default_rng(0)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -spacing * (n - 1) / 2  # volume centred on the world origin
    centre = np.zeros(3)
    bead = rng.uniform(-30, 30, 3)  # world mm, at an arbitrary sub-voxel position
    idx = (bead - affine[:3, 3]) / spacing
    grid = np.stack(np.meshgrid(*(np.arange(n),) * 3, indexing="ij"), -1)
    volume = np.exp(-np.sum((grid - idx) ** 2, -1) / 2.0).astype(np.float32)
    transforms = L.patient_transforms(np.deg2rad(rng.uniform(-8, 8, (4, 3))), rng.uniform(-15, 15, (4, 3)),
                                      1 + rng.uniform(-0.08, 0.08, (4, 3)), centre)
    images = L.render_poses(volume, affine, transforms, size, centre)
    expected = L.project_points(bead[None], transforms, size, centre)[:, 0]
    rows, cols = np.mgrid[:size, :size]
    for image, (r, c) in zip(images, expected):
        w = image / image.sum()
        centroid = np.array([np.sum(w * rows), np.sum(w * cols)])
        projected_voxel = spacing * L.SDD_MM / L.SOURCE_MM / (L.DETECTOR_MM / size)
        assert np.linalg.norm(centroid - [r, c]) < 0.5 * projected_voxel
        assert np.unravel_index(np.argmax(image), image.shape) == (round(r), round(c))


def test_patient_transform_fixes_the_centre_and_moves_by_the_translation():
    c = np.array([10.0, -5.0, 3.0])
    m = L.patient_transforms(np.array([[0.1, -0.2, 0.3]]), np.array([[1.0, 2.0, 3.0]]), np.ones((1, 3)), c)[0]
    np.testing.assert_allclose(m[:3, :3] @ c + m[:3, 3], c + [1, 2, 3], atol=1e-12)
    np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-12)


# ------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize("kwargs", [dict(split="training"), dict(split="train", hard=True),
                                    dict(split="val", size=8), dict(split="val", size=64.0)])
def test_bad_arguments_raise_input_error(kwargs):
    with pytest.raises(InputError):
        L.drr_landmarks(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(n=2, k=0), dict(n=2, k=7), dict(n=2, size=8), dict(n=0),
                                    dict(n=2, size=16, k=6)])
def test_procedural_bad_arguments(kwargs):
    with pytest.raises(InputError):
        L.procedural_landmarks(**kwargs)


# ------------------------------------------------------------------------------------------ procedural
def test_procedural_shapes_dtypes_and_determinism():
    d = L.procedural_landmarks(6, 32, 3, seed=1)
    a = d.arrays
    assert a["image"].shape == (6, 32, 32, 1) and a["landmarks"].shape == (6, 3, 2)
    assert a["visible"].shape == (6, 3) and a["spacing"].shape == (6, 2)
    assert all(v.dtype == np.float32 for v in a.values())
    assert np.all(a["visible"] == 1) and np.all((a["landmarks"] > 0) & (a["landmarks"] < 31))
    np.testing.assert_array_equal(L.procedural_landmarks(6, 32, 3, seed=1).arrays["image"], a["image"])
    assert not np.array_equal(L.procedural_landmarks(6, 32, 3, seed=2).arrays["landmarks"], a["landmarks"])


@pytest.mark.parametrize("kind", L.PROCEDURAL_NAMES)
def test_each_shape_is_centred_on_its_landmark(kind):
    """Every shape kind is symmetric about its centre. On a grid symmetric about the centre (integer or
    half-integer position) the coverage centroid is the landmark to float64 roundoff (sums of ~1e3 terms of
    size <= 32: ~1e-12; bound 1e-9); at a random sub-pixel position the one-pixel anti-aliasing ramp is
    sampled unevenly, which moves the centroid by a small fraction of the ramp (bound 0.1 px)."""
    rng = np.random.default_rng(L.PROCEDURAL_NAMES.index(kind))
    rr, cc = np.mgrid[:32, :32].astype(np.float64)
    for p, tol in [(np.array([15.0, 12.5]), 1e-9), (rng.uniform(10, 22, 2), 0.1)]:
        cover = L._shape(kind, rr - p[0], cc - p[1], 3.2)
        centroid = np.array([np.sum(cover * rr), np.sum(cover * cc)]) / cover.sum()
        assert cover.max() == 1.0
        np.testing.assert_allclose(centroid, p, atol=tol)


def test_procedural_landmarks_are_bright_for_filled_shapes():
    d = L.procedural_landmarks(20, 32, 3, seed=3).arrays  # disk, ring, plus: the disk and plus are filled
    r = np.rint(d["landmarks"][:, [0, 2]]).astype(int)
    values = d["image"][np.arange(20)[:, None], r[..., 0], r[..., 1], 0]
    assert np.all(values > 0.6) and np.median(d["image"]) < 0.4
    with pytest.raises(InputError, match="shape"):
        L._shape("star", 0.0, 0.0, 2.0)


# ------------------------------------------------------------------------------------------ real data
@pytest.fixture(scope="module")
def real():
    return {(s, h): L.drr_landmarks(s, size=32, hard=h) for s, h in
            [("train", False), ("val", False), ("test", False), ("test", True)]}


@pytest.mark.data
def test_real_shapes_dtypes_and_visibility(real):
    k = len(L.LANDMARK_NAMES)
    for (split, hard), d in real.items():
        a = d.arrays
        n = L.SPLIT_SIZES[split]
        assert a["image"].shape == (n, 32, 32, 1) and a["landmarks"].shape == (n, k, 2)
        assert a["visible"].shape == (n, k) and a["spacing"].shape == (n, 2)
        for key in ("image", "landmarks", "visible", "spacing"):
            assert a[key].dtype == np.float32
        assert np.all(np.isfinite(a["image"])) and -0.1 < a["image"].min() and a["image"].max() < 1.5
        np.testing.assert_allclose(a["spacing"], L.DETECTOR_MM / 32 * L.SOURCE_MM / L.SDD_MM)
        lm, vis = a["landmarks"], a["visible"] > 0
        inside = np.all((lm >= -0.5) & (lm <= 31.5), -1)
        assert np.all(inside[vis]), "a visible landmark lies in the image"
        if hard:
            assert 0.05 < 1 - vis.mean() < 0.5, "the hard set loses some landmarks, not most"
        else:
            assert vis.mean() > 0.99


@pytest.mark.data
def test_real_splits_are_disjoint_and_cached(real):
    poses = {key: np.concatenate([d.arrays["rotvec"], d.arrays["trans"]], 1) for key, d in real.items()}
    keys = list(poses)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            shared = (poses[a][:, None, :] == poses[b][None, :, :]).all(-1)
            assert not shared.any(), (a, b)
    again = L.drr_landmarks("val", size=32)
    np.testing.assert_array_equal(again.arrays["image"], real[("val", False)].arrays["image"])


@pytest.mark.data
def test_real_spine_landmarks_sit_on_bright_bone(real):
    """T7 and T12 (vertebral bodies) project onto the spine: brighter than the image median."""
    a = real[("train", False)].arrays
    idx = np.rint(a["landmarks"]).astype(int)
    for name in ("T7", "T12"):
        j = L.LANDMARK_NAMES.index(name)
        values = a["image"][np.arange(len(idx)), idx[:, j, 0], idx[:, j, 1], 0]
        medians = np.median(a["image"].reshape(len(idx), -1), 1)
        assert np.mean(values > medians) > 0.9, name
