"""Procedural left atrium and ICE frames: determinism, anatomy (every structure, veins joined to the LA body,
catheter outside it), fan images, one plane operator for slicing and reslicing, the place/reslice round trip,
bad arguments."""

import numpy as np
import pytest
from scipy import ndimage

from kfjax.data import ice
from kfjax.errors import InputError

SHAPE, SPACING, FRAME = (64, 64, 64), 2.0, (64, 64)


@pytest.fixture(scope="module")
def anatomies():
    return [ice.left_atrium(seed, 0, SHAPE, SPACING) for seed in range(4)]


@pytest.fixture(scope="module")
def case():
    return ice.ice_case(seed=5, n_frames=12, frame_shape=FRAME)


def test_deterministic_from_the_seed_and_seeds_differ():
    kwargs = dict(n_frames=4, frame_shape=FRAME)
    a, b = ice.ice_case(seed=1, **kwargs), ice.ice_case(seed=1, **kwargs)
    for key in ("labels", "tissue", "ct", "echo", "catheter"):
        np.testing.assert_array_equal(a["anatomy"][key], b["anatomy"][key])
    for key in ("image", "label", "poses"):
        np.testing.assert_array_equal(a[key], b[key])
    for other in (ice.ice_case(seed=2, **kwargs), ice.ice_case(seed=1, index=1, **kwargs)):
        assert not np.array_equal(other["anatomy"]["labels"], a["anatomy"]["labels"])
        assert not np.allclose(other["image"], a["image"])
        assert not np.allclose(other["poses"], a["poses"])


def test_every_structure_present_and_joined_to_the_la_body(anatomies):
    for anatomy in anatomies:
        labels = anatomy["labels"]
        assert labels.shape == SHAPE and labels.dtype == np.uint8
        counts = np.bincount(labels.ravel(), minlength=len(ice.STRUCTURES))
        assert len(counts) == len(ice.STRUCTURES) and np.all(counts[1:] >= 50), counts
        body = labels == ice.STRUCTURES.index("la_body")
        assert ndimage.label(body)[1] == 1
        touching = ndimage.binary_dilation(body)  # face neighbours of the LA body
        for value, name in enumerate(ice.STRUCTURES[2:], start=2):
            part = labels == value
            assert ndimage.label(part)[1] == 1, f"{name} is not one connected piece"
            assert (part & touching).any(), f"{name} does not touch the LA body"
            assert ndimage.label(part | body)[1] == 1
        assert anatomy["ct"].dtype == np.float32 and 0.0 <= anatomy["ct"].min() and anatomy["ct"].max() <= 1.0
        blood = anatomy["tissue"] == ice.TISSUES.index("blood")
        assert np.all(blood[labels > 0]) and anatomy["ct"][blood].mean() > anatomy["ct"][~blood].mean() + 0.2


def test_the_catheter_sits_outside_the_la_in_blood(anatomies):
    for anatomy in anatomies:
        tip, labels = anatomy["catheter"], anatomy["labels"]
        assert np.all(tip >= 0) and np.all(tip <= (np.asarray(SHAPE) - 1) * SPACING)
        voxel = tuple(np.rint(tip / SPACING).astype(int))
        assert labels[voxel] == 0 and anatomy["tissue"][voxel] == ice.TISSUES.index("blood")  # the right atrium
        # the clearance was checked at the tip's nearest voxel, at most half a voxel diagonal from the tip
        distance = np.linalg.norm(np.argwhere(labels > 0) * SPACING - tip, axis=1).min()
        assert distance >= ice.CLEARANCE_MM - SPACING * np.sqrt(3) / 2, distance
        assert np.isclose(np.linalg.norm(anatomy["catheter_axis"]), 1.0) and anatomy["catheter_axis"][0] > 0.9


def test_fan_images(case):
    image, label, fan = case["image"], case["label"], case["fan"]
    assert image.shape == label.shape == (12,) + FRAME and fan.shape == FRAME
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert np.all(np.isfinite(image)) and image.min() >= 0.0 and image.max() <= 1.0
    assert np.all(image[:, ~fan] == 0) and np.all(label[:, ~fan] == 0)
    assert (image[:, fan] > 0).mean() > 0.99
    _, r = ice.fan_mask(FRAME)
    assert fan[1, FRAME[1] // 2] and not fan[1, 0] and r[fan].max() <= ice.DEPTH_MM
    assert case["pixel_mm"] == ice.pixel_spacing(FRAME)
    body = label == ice.STRUCTURES.index("la_body")
    assert image[body].mean() < image[fan[None] & (label == 0)].mean() - 0.15  # blood darker than its surround
    seen = (label[..., None] == np.arange(len(ice.STRUCTURES))).any(axis=(1, 2)).mean(axis=0)
    assert seen[1] > 0.5 and np.all(seen[3:] < seen[1])  # the veins are the less-observed structures


def test_poses_follow_a_clockwise_sweep_about_the_catheter(case):
    poses, anatomy = case["poses"], case["anatomy"]
    rot = poses[:, :3, :3]
    np.testing.assert_allclose(np.swapaxes(rot, 1, 2) @ rot, np.broadcast_to(np.eye(3), rot.shape), atol=1e-12)
    np.testing.assert_allclose(poses[:, 3], np.broadcast_to([0, 0, 0, 1.0], (12, 4)))
    axis = anatomy["catheter_axis"]
    assert np.all(rot[:, :, 0] @ axis > np.cos(np.deg2rad(ice.JITTER_DEG + 0.01)))  # columns run along the axis
    assert np.all(np.linalg.norm(poses[:, :3, 3] - anatomy["catheter"], axis=1) < 5 * ice.JITTER_MM)
    beams = rot[:, :, 1]
    turns = np.einsum("ki,ki->k", np.cross(beams[:-1], beams[1:]), np.broadcast_to(axis, (11, 3)))
    assert np.all(turns > 0)  # right-handed about the axis: clockwise seen from the handle
    ice_points = ice.plane_points(poses, FRAME, case["pixel_mm"])
    assert ice_points.shape == (12,) + FRAME + (3,)
    apex = ice_points[:, 0, FRAME[1] // 2] - 0.5 * case["pixel_mm"] * rot[:, :, 0]  # even W: apex between columns
    np.testing.assert_allclose(apex, poses[:, :3, 3], atol=1e-9)


def test_label_slices_are_reslices_of_the_label_volume(case):
    labels, poses, px = case["anatomy"]["labels"], case["poses"], case["pixel_mm"]
    sliced = ice.reslice(labels, poses, FRAME, px, SPACING, order=0, fill=0)
    np.testing.assert_array_equal(case["label"], sliced * case["fan"])
    one = ice.reslice(labels, poses[3], FRAME, px, SPACING)
    np.testing.assert_array_equal(one, sliced[3])
    # an independent nearest-neighbour sampler agrees (up to rounding ties at exactly half a voxel)
    coords = np.moveaxis(ice.plane_points(poses, FRAME, px) / SPACING, -1, 0)
    other = ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0)
    assert (other == sliced).mean() > 0.999


def test_place_frames_inverts_reslice_exactly_for_frames_sampled_from_a_volume(case):
    poses, px, fan = case["poses"], case["pixel_mm"], case["fan"]
    volume = np.random.default_rng(0).uniform(0.0, 1.0, SHAPE).astype(np.float32)
    frames = ice.reslice(volume, poses, FRAME, px, SPACING, order=0, fill=None)
    placed, coverage = ice.place_frames(frames, poses, SHAPE, SPACING, px, fan)
    assert placed.shape == SHAPE and placed.dtype == np.float32 and coverage.dtype == bool
    assert 0 < coverage.mean() < 0.5 and np.all(placed[~coverage] == 0)
    np.testing.assert_allclose(placed[coverage], volume[coverage], rtol=1e-6)  # averages of one value


def test_place_then_reslice_returns_the_frame_within_one_voxel(case):
    poses, px, fan = case["poses"], case["pixel_mm"], case["fan"]
    gradient = np.array([0.3, -0.2, 0.5])  # a linear field f(x) = g . x + 7 over world mm
    points = ice.plane_points(poses, FRAME, px)
    frames = (points @ gradient + 7.0).astype(np.float32)
    placed, coverage = ice.place_frames(frames, poses, SHAPE, SPACING, px, fan)
    back = ice.reslice(placed, poses, FRAME, px, SPACING, order=0, fill=np.nan)
    inside = fan[None] & np.isfinite(back)  # fan pixels inside the grid
    assert inside.mean() > 0.3
    assert np.all(ice.reslice(coverage, poses, FRAME, px, SPACING, order=0, fill=False)[inside])
    # Tolerance: pixel p is read back from the voxel v it was written into (one rounding rule both ways); v holds
    # the mean of f over the pixels q that round to v, which all lie in v's cell, so |x_q - x_p| < spacing per
    # axis, and for a linear f: |mean f(x_q) - f(x_p)| = |g . (mean x_q - x_p)| < spacing * sum |g_i|.
    tolerance = SPACING * np.abs(gradient).sum()
    error = np.abs(back - frames)[inside]
    assert error.max() < tolerance and error.mean() < tolerance / 2, (error.max(), tolerance)


def test_bad_arguments_raise_input_errors(case):
    anatomy, poses, px = case["anatomy"], case["poses"], case["pixel_mm"]
    labels = anatomy["labels"]
    cases = [
        (lambda: ice.left_atrium(shape=(64, 64)), "three positive integers"),
        (lambda: ice.left_atrium(shape=(64, 0, 64)), "three positive integers"),
        (lambda: ice.left_atrium(spacing=-2.0), "spacing must be one positive number"),
        (lambda: ice.left_atrium(shape=(32, 32, 32), spacing=2.0), "at least 112 mm"),
        (lambda: ice.ice_frames(anatomy, poses, frame_shape=(8, 8)), "at least 16 pixels"),
        (lambda: ice.ice_frames(anatomy, poses, depth_mm=0.0), "positive imaging depth"),
        (lambda: ice.ice_frames(anatomy, poses[:, :3]), "4x4"),
        (lambda: ice.ice_frames(anatomy, 2.0 * poses), "rigid"),
        (lambda: ice.catheter_sweep(anatomy, n_frames=0), "n_frames"),
        (lambda: ice.catheter_sweep(anatomy, sweep_deg=0.0), "sweep_deg"),
        (lambda: ice.reslice(labels[0], poses, FRAME, px, SPACING), r"volume \(D, H, W\)"),
        (lambda: ice.reslice(labels, poses, FRAME, px, SPACING, order=3), "order must be 0"),
        (lambda: ice.reslice(labels, poses, FRAME, -1.0, SPACING), "pixel_mm"),
        (lambda: ice.place_frames(case["image"][:3], poses, SHAPE, SPACING, px), "same K"),
        (lambda: ice.place_frames(case["image"], poses, SHAPE, SPACING, px, np.ones((5, 5))), "mask must be"),
        (lambda: ice.place_frames(case["image"], poses, (64, 64, -1), SPACING, px), "three positive integers"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message):
            call()
