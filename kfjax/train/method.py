"""The method contract: everything the loop, evaluation, restore and inference need, declared up front.

A method is a `Method` subclass registered by name (`kfjax.methods.registry.register`). Its config
extends `BaseConfig` (seed, `data.batch_size`, `optim` with per-group overrides, `train`). It declares:

    groups        parameter groups; the engine builds one optax transform per group from the config
    trainable     False for methods that optimise per case at evaluation (deep image prior, registration)
    dataset       host-side data set of a split;  sampler: which rows make the global batch of a step
    transform     host-side augmentation of a training batch, `(batch, step) -> batch`, or None
    batch_spec    shapes and dtypes of a training batch, so restore, inference and benchmarks never build data
    init_variables  parameters, batch statistics and non-parameter state (image pools, EMA) from a key
    train_step / eval_step / predict / host_metrics   pure functions the engine jits and shards
    inference     an `Inference` (named inputs) when `kfjax infer NAME` applies; its settings live in
                  the config's `infer` section (`--set infer.metal_threshold=3000`)

Nothing here is discovered by `hasattr` or signature inspection: the loop reads these declarations.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from kfjax.config import BaseConfig, BaseDataConfig, OptimConfig, replace_path
from kfjax.data.pipeline import Dataset, EpochSampler, Sampler
from kfjax.errors import ConfigError
from kfjax.io import Volume
from kfjax.train.optim import make_optimizer
from kfjax.train.state import TrainState

__all__ = ["BaseConfig", "BaseDataConfig", "Inference", "Method", "PerCaseMethod", "Variables", "spec_of",
           "zeros_like_spec"]

Batch = dict[str, Any]
Spec = dict[str, jax.ShapeDtypeStruct]


@dataclasses.dataclass(frozen=True)
class Variables:
    """What `init_variables` returns: `{group: pytree}` parameters, batch statistics and other state."""

    params: dict[str, Any]
    batch_stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Inference:
    """`kfjax infer NAME` applies: the named inputs (each a NIfTI/DICOM volume) and what comes out."""

    inputs: tuple[str, ...] = ("volume",)  # `--input FILE` for one input, `--input NAME=FILE` for several
    output: str = "volume"  # volume: `infer` returns a Volume (NIfTI); landmarks: a LandmarkResult (JSON + PNG);
    # images: an object whose write(folder) saves several images into the `--out` folder
    help: str = ""  # one line for `kfjax infer --help` and `kfjax list`


def optim_for_group(config: BaseConfig, group: str, groups: tuple[str, ...]) -> OptimConfig:
    """`config.optim` with the `optim_groups` entries of `group` applied (each entry GROUP.FIELD=VALUE)."""
    optim = config.optim
    for entry in config.optim_groups:
        target, sep, value = entry.partition("=")
        name, dot, key = target.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"optim_groups entry '{entry}' is not GROUP.FIELD=VALUE; write e.g. {groups[0]}.lr=1e-4")
        if name not in groups:
            raise ConfigError(f"optim_groups entry '{entry}' names no parameter group; the groups are {', '.join(groups)}")
        if name == group:
            optim = replace_path(optim, key, value.strip())
    return optim


class Method(abc.ABC):
    """Model(s) + losses + metrics + data recipe of one method; see the module docstring for the contract."""

    name: ClassVar[str]
    Config: ClassVar[type]
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    groups: ClassVar[tuple[str, ...]] = ("model",)
    trainable: ClassVar[bool] = True
    host_metric_names: ClassVar[tuple[str, ...]] = ()  # metrics that `host_metrics` computes outside jit
    inference: ClassVar[Inference | None] = None

    def __init__(self, config: Any):
        if not isinstance(config, BaseConfig):
            raise TypeError(f"{type(self).__name__} needs a config extending BaseConfig, got {type(config).__name__}")
        self.config = config
        for group in self.groups:  # unknown groups and fields fail here, before any work
            optim_for_group(config, group, self.groups)

    # ---------------------------------------------------------------- data
    @abc.abstractmethod
    def dataset(self, split: str) -> Dataset:
        """Host-side data set of the split ("train", "val" or "test")."""

    @abc.abstractmethod
    def batch_spec(self, batch_size: int) -> Spec:
        """`{name: ShapeDtypeStruct}` of a training batch with `batch_size` rows: every entry `train_step` reads."""

    def sampler(self, dataset: Dataset, batch_size: int) -> Sampler:
        """Which rows of `dataset` make the global batch of each step (default: shuffled epochs)."""
        return EpochSampler(len(dataset), batch_size, self.config.seed)

    def transform(self) -> Callable[[Batch, int], Batch] | None:
        """Host-side augmentation `(numpy batch, step) -> batch` applied to training batches, or None."""
        return None

    # ---------------------------------------------------------------- state
    @abc.abstractmethod
    def init_variables(self, key: jax.Array, batch: Batch) -> Variables:
        """Fresh parameters `{group: pytree}` (keys == `groups`), batch statistics and non-parameter state."""

    def optimizers(self) -> dict[str, Any]:
        """One optax transform per parameter group, from `optim` and `optim_groups`."""
        steps = self.config.train.steps
        return {g: make_optimizer(optim_for_group(self.config, g, self.groups), steps) for g in self.groups}

    def init(self, key: jax.Array, batch: Batch) -> TrainState:
        """Fresh TrainState from a key and a batch (only its shapes matter)."""
        init_key, state_key = jax.random.split(key)
        v = self.init_variables(init_key, batch)
        if set(v.params) != set(self.groups):
            raise ValueError(f"{self.name}: init_variables returned groups {sorted(v.params)}, declared {self.groups}")
        return TrainState.create(v.params, self.optimizers(), state_key, v.batch_stats, v.extra)

    # ---------------------------------------------------------------- steps (pure; the engine jits them)
    @abc.abstractmethod
    def train_step(self, state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimisation step of every parameter group; metrics must include a scalar "loss"."""

    @abc.abstractmethod
    def eval_step(self, state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        """Per-example metric values `{name: (B,)}`; NaN leaves a row out of a metric's exact mean."""

    def predict(self, state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        """Model outputs for a batch `{name: (B, ...)}`."""
        raise NotImplementedError(f"method '{self.name}' has no predict step")

    def host_metrics(self, batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The `host_metric_names` metrics, per example `{name: (B,)}`, from numpy batch and `predict` outputs."""
        return {}

    # ---------------------------------------------------------------- a user's files
    def infer(self, state: TrainState, inputs: dict[str, Volume], progress: bool = True) -> Volume:
        """Apply the trained method to a user's inputs (names from `inference.inputs`); settings in `config.infer`."""
        raise NotImplementedError(f"method '{self.name}' declares no inference")


class PerCaseMethod(Method):
    """A method without training: it optimises each case inside `eval_step` (deep image prior, registration).

    It has no parameter groups; `kfjax eval NAME` runs it over a split with the same exact means as any method.
    """

    groups: ClassVar[tuple[str, ...]] = ()
    trainable: ClassVar[bool] = False

    def __init__(self, config: Any):
        super().__init__(config)
        default = type(config)()
        if (config.optim, config.train, config.optim_groups) != (default.optim, default.train, default.optim_groups):
            raise ConfigError(f"'{self.name}' trains nothing, so optim.*, optim_groups and train.* do not apply; "
                              "its per-case settings are in its own config sections")

    def init_variables(self, key: jax.Array, batch: Batch) -> Variables:
        return Variables(params={})

    def train_step(self, state, batch, key):
        raise ConfigError(f"'{self.name}' optimises each case at evaluation; run `kfjax eval {self.name}`")


def spec_of(batch: Batch) -> Spec:
    """`{name: ShapeDtypeStruct}` of a batch of arrays (or of a spec, returned as is)."""
    return {k: jax.ShapeDtypeStruct(np.shape(v), v.dtype) for k, v in batch.items()}


def zeros_like_spec(spec: Spec) -> dict[str, jax.Array]:
    """A batch of zeros with the spec's shapes (inside jit this costs nothing)."""
    return {k: jnp.zeros(s.shape, s.dtype) for k, s in spec.items()}
