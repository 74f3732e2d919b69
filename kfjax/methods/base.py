"""What a method is: everything the training loop needs, and nothing about the loop.

A method subclasses `Method`, declares its config dataclass as `Config` (with fields `seed`,
`data.batch_size`, `optim` and `train`) and is registered with `@kfjax.registry.register("name")`.
All step functions are pure; the loop compiles, shards and calls them.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import jax
import numpy as np

from kfjax.data.pipeline import Dataset
from kfjax.train.state import TrainState

Batch = dict[str, jax.Array]


class Method(abc.ABC):
    """Model(s) + losses + metrics + data recipe of one method."""

    name: ClassVar[str]
    Config: ClassVar[type]
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""

    def __init__(self, config: Any):
        self.config = config

    @abc.abstractmethod
    def dataset(self, split: str) -> Dataset:
        """Host-side data set of the split ("train", "val" or "test")."""

    @abc.abstractmethod
    def init(self, key: jax.Array, batch: Batch) -> TrainState:
        """Fresh train state from a key and an example batch (only its shapes matter)."""

    @abc.abstractmethod
    def train_step(self, state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimisation step of every parameter group; metrics must include a scalar "loss"."""

    @abc.abstractmethod
    def eval_step(self, state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        """Per-example metric values `{name: (B,)}`; the loop averages them exactly."""

    def predict(self, state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        """Model outputs for a batch `{name: (B, ...)}`."""
        raise NotImplementedError(f"method '{self.name}' has no predict step")

    def host_metrics(self, batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-example metrics that cannot run under jit (surface distances, ...): `{name: (B,)}`."""
        return {}
