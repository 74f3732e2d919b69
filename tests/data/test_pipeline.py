"""Batch order depends only on (seed, step); processes split the global batch; phantoms are seeded."""

import numpy as np
import pytest

from kfjax.data.phantoms import organ_dataset, organ_phantom
from kfjax.data.pipeline import ArrayDataset, BatchLoader, EpochSampler, eval_batches
from kfjax.errors import ConfigError


def test_sampler_is_a_function_of_seed_and_step():
    a, b = EpochSampler(20, 4, seed=3), EpochSampler(20, 4, seed=3)
    assert all(np.array_equal(a.indices(s), b.indices(s)) for s in range(12))
    epoch = np.concatenate([a.indices(s) for s in range(5)])
    assert sorted(epoch) == list(range(20)), "one epoch visits every example once"
    assert not np.array_equal(a.indices(0), a.indices(5)), "epochs are reshuffled"
    assert not np.array_equal(a.indices(0), EpochSampler(20, 4, seed=4).indices(0))
    with pytest.raises(ConfigError, match="exceeds"):
        EpochSampler(3, 4, seed=0)


def test_loader_resumes_with_the_same_batches():
    data = ArrayDataset(x=np.arange(30)[:, None], y=np.arange(30))
    sampler = EpochSampler(len(data), 5, seed=1)
    full = [b["x"].copy() for _, b in BatchLoader(data, sampler, 0, 10)]
    resumed = [b["x"].copy() for _, b in BatchLoader(data, sampler, 6, 10)]
    assert all(np.array_equal(x, y) for x, y in zip(full[6:], resumed))
    halves = [b["x"] for _, b in BatchLoader(data, sampler, 0, 10, rows=slice(0, 2))]
    assert all(np.array_equal(h, f[:2]) for h, f in zip(halves, full))


def test_loader_surfaces_errors():
    class Broken:
        def __len__(self):
            return 8

        def __getitem__(self, idx):
            raise ValueError("broken data")

    with pytest.raises(ValueError, match="broken data"):
        list(BatchLoader(Broken(), EpochSampler(8, 2, 0), 0, 3))


def test_eval_batches_pad_and_mark():
    data = ArrayDataset(x=np.arange(10))
    batches = list(eval_batches(data, 4))
    assert [b["_valid"].sum() for b in batches] == [4, 4, 2]
    assert list(batches[-1]["x"]) == [8, 9, 9, 9]


@pytest.mark.parametrize("dims", [2, 3])
def test_organ_phantom_seeded(dims):
    image, label = organ_phantom(np.random.default_rng(5), size=24, spatial_dims=dims)
    again, _ = organ_phantom(np.random.default_rng(5), size=24, spatial_dims=dims)
    assert image.shape == label.shape == (24,) * dims + (1,)
    np.testing.assert_array_equal(image, again)
    assert 0.005 < label.mean() < 0.5 and set(np.unique(label)) == {0.0, 1.0}
    assert image[label[..., 0] > 0].mean() > image[label[..., 0] == 0].mean()
    train, _ = organ_dataset(2, 16, 2, seed=0, split="train")
    val, _ = organ_dataset(2, 16, 2, seed=0, split="val")
    assert not np.allclose(train, val), "splits use disjoint seeds"
