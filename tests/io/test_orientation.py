"""kfjax.io.orientation: display slices from a Volume's affine and back, exactly."""

import itertools

import numpy as np
import pytest

from kfjax.errors import InputError
from kfjax.io import Volume
from kfjax.io.orientation import DISPLAY_AXES, from_display_slices, to_display_slices


def _world(affine, index):
    return (np.asarray(affine) @ np.r_[np.asarray(index, np.float64), 1.0])[:3]


def _random_affine(rng, perm, signs):
    """Oblique-free affine: array axis i points along world axis perm[i] with sign signs[i]."""
    a = np.eye(4)
    a[:3, :3] = 0.0
    for i, (w, s) in enumerate(zip(perm, signs)):
        a[w, i] = s * rng.uniform(0.5, 3.0)
    a[:3, 3] = rng.uniform(-200, 200, 3)
    return a


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
def test_round_trip_exact_for_permuted_flipped_affines(perm):
    rng = np.random.default_rng(sum(p * 10**i for i, p in enumerate(perm)))
    for signs in itertools.product((-1, 1), repeat=3):
        shape = tuple(int(n) for n in rng.integers(2, 7, 3))
        vol = Volume(rng.standard_normal(shape).astype(np.float32), _random_affine(rng, perm, signs))
        slices, display_affine = to_display_slices(vol)
        assert slices.shape == tuple(shape[perm.index(w)] for w in (2, 1, 0))  # (S, P/A, L/R) extents
        back = from_display_slices(slices, vol.affine)
        assert back.dtype == vol.array.dtype and np.array_equal(back, vol.array)
        # display axes: +d superior, +r posterior (y down), +c patient left (x down in RAS)
        step = display_affine[:3, :3]
        assert step[2, 0] > 0 and step[1, 1] < 0 and step[0, 2] < 0
        assert np.count_nonzero(np.round(step, 9)) == 3
        # every voxel keeps its world position
        idx = tuple(int(rng.integers(0, n)) for n in shape)
        disp = np.linalg.solve(display_affine, np.r_[_world(vol.affine, idx), 1.0])[:3]
        d = tuple(int(round(v)) for v in disp)
        assert slices[d] == vol.array[idx]


def test_known_orientation_las_volume():
    # LAS like the chest CT: i -> patient left, j -> anterior, k -> superior
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    affine = np.diag([-1.0, 1.0, 2.5, 1.0])
    vol = Volume(array, affine)
    slices, display_affine = to_display_slices(vol)
    assert DISPLAY_AXES == ("S", "P", "L")
    # display[d, r, c] = array[c, J-1-r, d]: slices along k, rows flip j (anterior on top), columns keep i
    expected = np.transpose(array, (2, 1, 0))[:, ::-1, :]
    np.testing.assert_array_equal(slices, expected)
    np.testing.assert_allclose(display_affine[:3, :3], [[0, 0, -1], [0, -1, 0], [2.5, 0, 0]])
    np.testing.assert_allclose(display_affine[:3, 3], [0, 2, 0])  # voxel (0, J-1, 0) sits at y = 2 mm
    np.testing.assert_array_equal(from_display_slices(slices, affine), array)


def test_ras_volume_and_trailing_axes():
    # RAS: columns must run right -> left, i.e. against +i; trailing channel axis untouched
    rng = np.random.default_rng(0)
    array = rng.standard_normal((3, 4, 5, 2))
    vol = Volume(array, np.eye(4))
    slices, display_affine = to_display_slices(vol)
    assert slices.shape == (5, 4, 3, 2)
    np.testing.assert_array_equal(slices, np.transpose(array, (2, 1, 0, 3))[:, ::-1, ::-1])
    np.testing.assert_array_equal(from_display_slices(slices, vol.affine), array)
    assert slices.flags.c_contiguous


def test_bad_input():
    with pytest.raises(InputError, match="3 axes"):
        to_display_slices(Volume(np.zeros((4, 4)), np.eye(4)))
    singular = np.eye(4)
    singular[2, 2] = 0.0
    with pytest.raises(InputError, match="singular"):
        to_display_slices(Volume(np.zeros((2, 2, 2)), singular))
