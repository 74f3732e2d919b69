"""Host-side batching with an order that depends only on (seed, step).

`EpochSampler` maps a step to the indices of its global batch: epoch = step // steps_per_epoch, the
epoch's order is `default_rng((seed, epoch)).permutation(n)`. A resumed run therefore sees exactly the
batches the interrupted one would have seen. In a multi-process run each process gathers only its rows
of the global batch (`kfjax.train.mesh.process_slice`). `RoundRobinSampler` gives each step's batch from
one domain in turn. `BatchLoader` prefetches batches in a background thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, Mapping, Protocol

import numpy as np

from kfjax.errors import ConfigError

Batch = dict[str, np.ndarray]


class Dataset(Protocol):
    """A finite data set that gathers batches: `len(ds)`, `ds[indices] -> {name: (len(indices), ...)}`."""

    def __len__(self) -> int: ...

    def __getitem__(self, indices: np.ndarray) -> Batch: ...


class ArrayDataset:
    """In-memory data set of equally long arrays, e.g. `ArrayDataset(image=x, label=y)`."""

    def __init__(self, **arrays: np.ndarray):
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"arrays differ in length: { {k: len(a) for k, a in arrays.items()} }")
        self.arrays = {k: np.asarray(a) for k, a in arrays.items()}

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, indices: np.ndarray) -> Batch:
        return {k: a[indices] for k, a in self.arrays.items()}


class Sampler(Protocol):
    """Which rows of a data set make the global batch of a step; a pure function of (seed, step)."""

    steps_per_epoch: int

    def indices(self, step: int) -> np.ndarray: ...


class EpochSampler:
    """Global batch indices of each step; whole batches only (the remainder of an epoch is dropped)."""

    def __init__(self, size: int, batch_size: int, seed: int, shuffle: bool = True):
        if batch_size > size:
            raise ConfigError(f"batch size {batch_size} exceeds the {size} training examples; lower data.batch_size")
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.steps_per_epoch = size // batch_size

    def indices(self, step: int) -> np.ndarray:
        """Indices `(batch_size,)` of the global batch of `step`."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if self.shuffle:
            order = np.random.default_rng((self.seed, epoch)).permutation(self.size)
        else:
            order = np.arange(self.size)
        start = position * self.batch_size
        return order[start : start + self.batch_size]


class RoundRobinSampler:
    """Batches that each come from one domain, the domains taking turns: step s draws domain s % n_domains.

    domains: `(N,)` the domain id (0 .. n_domains - 1) of every row. Within a domain the rows are shuffled
    per (seed, domain, domain epoch), so a resumed run sees the same batches. Domains of unequal size simply
    run through their epochs at different rates. Used by multi-domain methods (U²-Net adapters).
    """

    def __init__(self, domains: np.ndarray, batch_size: int, seed: int):
        domains = np.asarray(domains)
        self.n_domains = int(domains.max()) + 1 if domains.size else 0
        self.rows = [np.flatnonzero(domains == d) for d in range(self.n_domains)]
        small = [d for d, rows in enumerate(self.rows) if len(rows) < batch_size]
        if small:
            raise ConfigError(f"domain {small[0]} has {len(self.rows[small[0]])} rows, fewer than the batch size "
                              f"{batch_size}; lower data.batch_size")
        self.batch_size, self.seed = batch_size, seed
        self.steps_per_epoch = sum(len(r) // batch_size for r in self.rows)

    def indices(self, step: int) -> np.ndarray:
        """Indices `(batch_size,)` of the global batch of `step`, all from domain `step % n_domains`."""
        domain, turn = step % self.n_domains, step // self.n_domains
        rows = self.rows[domain]
        epoch, position = divmod(turn, len(rows) // self.batch_size)
        order = np.random.default_rng((self.seed, domain, epoch)).permutation(len(rows))
        start = position * self.batch_size
        return rows[order[start : start + self.batch_size]]


class BatchLoader:
    """Iterator over `(step, local_batch)` from `start_step` to `end_step`, prefetched in a thread.

    rows: which rows of each global batch this process loads (default all).
    transform: optional `(batch, step) -> batch` applied in the thread (augmentation with explicit seeds).
    """

    def __init__(
        self,
        dataset: Dataset,
        sampler: Sampler,
        start_step: int,
        end_step: int,
        rows: slice = slice(None),
        transform: Callable[[Batch, int], Batch] | None = None,
        prefetch: int = 2,
    ):
        self.dataset, self.sampler, self.rows, self.transform = dataset, sampler, rows, transform
        self.start_step, self.end_step = start_step, end_step
        self._queue: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self._thread.start()

    def load(self, step: int) -> Batch:
        batch = self.dataset[self.sampler.indices(step)[self.rows]]
        return self.transform(batch, step) if self.transform else batch

    def _fill(self) -> None:
        try:
            for step in range(self.start_step, self.end_step):
                item = (step, self.load(step))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # surface loader errors in the consuming thread
            self._queue.put(e)
            return
        self._queue.put(None)

    def __iter__(self) -> Iterator[tuple[int, Batch]]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def eval_batches(dataset: Dataset, batch_size: int, rows: slice = slice(None)) -> Iterator[Batch]:
    """The whole data set in order, the last batch padded by repeating its last row; `_valid` marks real rows."""
    n = len(dataset)
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        valid = (idx < n).astype(np.float32)
        batch = dataset[np.minimum(idx, n - 1)[rows]]
        batch["_valid"] = valid[rows]
        yield batch


def concat_batches(batches: list[Mapping[str, np.ndarray]]) -> Batch:
    """Stack a list of batches along the batch axis."""
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
