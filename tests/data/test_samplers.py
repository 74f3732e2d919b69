"""RoundRobinSampler: each step's batch comes from one domain, the domains take turns, order from (seed, step)."""

import numpy as np
import pytest

from kfjax.data.pipeline import ArrayDataset, BatchLoader, RoundRobinSampler
from kfjax.errors import ConfigError


def test_domains_take_turns_and_each_epoch_covers_its_domain():
    domains = np.array([0] * 8 + [1] * 12 + [2] * 4)
    sampler = RoundRobinSampler(domains, 4, seed=5)
    for step in range(30):
        rows = sampler.indices(step)
        assert len(rows) == 4 and set(domains[rows]) == {step % 3}
    turns = [sampler.indices(s) for s in range(1, 3 * 3, 3)]  # domain 1's first three turns: one epoch
    assert sorted(np.concatenate(turns)) == list(np.flatnonzero(domains == 1))
    again = RoundRobinSampler(domains, 4, seed=5)
    assert all(np.array_equal(sampler.indices(s), again.indices(s)) for s in range(30))
    assert not all(np.array_equal(sampler.indices(s), RoundRobinSampler(domains, 4, seed=6).indices(s))
                   for s in range(30))


def test_a_domain_smaller_than_the_batch_is_refused():
    with pytest.raises(ConfigError, match="domain 1 has 2 rows"):
        RoundRobinSampler(np.array([0, 0, 0, 0, 1, 1]), 4, seed=0)


def test_loader_resumes_round_robin_batches():
    data = ArrayDataset(x=np.arange(24), d=np.repeat([0, 1], 12))
    sampler = RoundRobinSampler(data.arrays["d"], 3, seed=2)
    full = [b["x"].copy() for _, b in BatchLoader(data, sampler, 0, 12)]
    resumed = [b["x"].copy() for _, b in BatchLoader(data, sampler, 7, 12)]
    assert all(np.array_equal(a, b) for a, b in zip(full[7:], resumed))
