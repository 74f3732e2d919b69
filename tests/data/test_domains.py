"""The U²-Net domains: shapes, channels and classes per domain, determinism, padding to one batch shape,
anisotropy, disjoint train/test slabs of the real volumes, bad names."""

import numpy as np
import pytest

from kfjax.data.domains import (DOMAINS, MAX_CHANNELS, TEST_SLAB, check_domains, domain_patches,
                                multi_domain_dataset, normalise)
from kfjax.errors import ConfigError

PROCEDURAL = [n for n in DOMAINS if n not in TEST_SLAB]


@pytest.mark.parametrize("name", PROCEDURAL)
def test_procedural_patches_have_the_domains_channels_and_classes(name):
    d = DOMAINS[name]
    image, label = domain_patches(name, "train", 3, 16, seed=0)
    assert image.shape == (3, 16, 16, 16, d.in_channels) and image.dtype == np.float32
    assert label.shape == (3, 16, 16, 16) and label.max() < d.n_classes
    assert set(np.unique(label)) == set(range(d.n_classes))  # every class appears in three patches
    again, _ = domain_patches(name, "train", 3, 16, seed=0)
    np.testing.assert_array_equal(image, again)
    test, _ = domain_patches(name, "test", 3, 16, seed=0)
    assert not np.allclose(test, image)


def test_prostate_like_has_thick_slices_and_the_hippocampus_is_small():
    _, prostate = domain_patches("prostate_like", "train", 8, 16, seed=1)
    gland = prostate > 0
    extent = [np.ptp(np.nonzero(g)[0]) + 1 for g in gland], [np.ptp(np.nonzero(g)[1]) + 1 for g in gland]
    assert np.mean(extent[0]) < 0.6 * np.mean(extent[1])  # the same gland spans fewer thick slices
    _, hippo = domain_patches("hippocampus_like", "train", 8, 16, seed=1)
    assert 0.002 < (hippo > 0).mean() < 0.08


def test_multi_domain_dataset_pads_channels_and_labels_the_domain():
    names = ("organ_phantom", "prostate_like", "hippocampus_like")
    data = multi_domain_dataset(names, "val", 2, 16, seed=0)
    assert data.arrays["image"].shape == (6, 16, 16, 16, MAX_CHANNELS)
    np.testing.assert_array_equal(data.arrays["domain"], [0, 0, 1, 1, 2, 2])
    assert np.all(data.arrays["image"][data.arrays["domain"] != 1, ..., 1] == 0.0)
    only = multi_domain_dataset(names, "train", 2, 16, seed=0, only=2)
    np.testing.assert_array_equal(only.arrays["domain"], [2, 2])


def test_bad_names_and_normalisation():
    with pytest.raises(ConfigError, match="unknown domain 'liverx'"):
        check_domains(["organ_phantom", "liverx"])
    with pytest.raises(ConfigError, match="twice"):
        check_domains(["organ_phantom", "organ_phantom"])
    with pytest.raises(ConfigError, match="split"):
        domain_patches("organ_phantom", "dev", 1, 16, 0)
    hu = np.array([[-2000.0], [0.0], [3000.0]])
    np.testing.assert_allclose(normalise("ct", hu)[:, 0], [0.0, 0.5, 1.0])


@pytest.mark.data
@pytest.mark.parametrize("name", sorted(TEST_SLAB))
def test_real_domains_train_and_test_on_disjoint_slabs(name):
    """Every training patch lies wholly outside the held-out slab, every test patch wholly inside it, and the
    patches are the volume's voxels at the reported corners."""
    from kfjax.data.domains import _real_volume, slab_patches

    volume, labels = _real_volume(name)
    lo, hi = (int(round(f * labels.shape[0])) for f in TEST_SLAB[name])
    for split in ("train", "test"):
        image, label, corners = slab_patches(name, split, 6, 16, seed=0)
        assert image.shape[-1] == DOMAINS[name].in_channels and label.max() < DOMAINS[name].n_classes
        d, h, w = corners[0]
        np.testing.assert_array_equal(image[0], volume[d:d + 16, h:h + 16, w:w + 16])
        inside = (corners[:, 0] >= lo) & (corners[:, 0] + 16 <= hi)
        outside = (corners[:, 0] + 16 <= lo) | (corners[:, 0] >= hi)
        assert np.all(inside if split == "test" else outside)
    assert (label > 0).mean() > 0.05  # foreground-centred patches find the organs
