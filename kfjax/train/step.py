"""Step factories: one `jax.jit`-compiled pure function per kind of step.

A method writes plain functions; these factories add the step counter, the per-step key, the
shardings (batch `P("data")`, state replicated) and the donation of the old state:

    step_fn(state, batch, key) -> (state, metrics)       # make_train_step
    eval_fn(state, batch) -> {name: (B,) values}          # make_eval_step (exact sums/counts as Mean)
    predict_fn(state, batch) -> {name: (B, ...) arrays}   # make_predict_step
"""

from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from kfjax.config import TrainConfig
from kfjax.errors import ConfigError
from kfjax.metrics import Mean
from kfjax.train.accumulate import accumulate
from kfjax.train.mesh import data_sharding, replicated
from kfjax.train.precision import (LOSS_SCALE_KEY, Precision, cast_floats, compute_dtype, init_loss_scale,
                                   precision_scope)
from kfjax.train.state import EMA_KEY, TrainState

Batch = dict[str, jax.Array]
StepFn = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]

CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
"""On CPU, XLA's YNNPACK convolution fusions make a U-Net train step about 3x slower than XLA's own
convolutions (benchmarks/README.md); kfjax turns them off for its steps. KFJAX_CPU_YNN=1 keeps XLA's default."""

VALID_KEY = "_valid"
"""Optional batch entry `(B,)` of 0/1: rows added to fill the last eval batch carry 0."""


def compiler_options(mesh: Mesh) -> dict[str, str] | None:
    """XLA options for steps compiled for `mesh` (only CPU meshes get any)."""
    if mesh.devices.flat[0].platform == "cpu" and os.environ.get("KFJAX_CPU_YNN", "0") != "1":
        return dict(CPU_COMPILER_OPTIONS)
    return None


def make_train_step(step_fn: StepFn, mesh: Mesh, train: TrainConfig | None = None):
    """jit(step) with the state donated and replicated and the batch sharded over "data".

    The key passed to `step_fn` is `fold_in(state.key, state.step)`, so a run's randomness depends only
    on (seed, step). `train` (a `TrainConfig`, default float32 and no accumulation) sets the compute dtype
    the step traces its networks in, the micro-batches per step and the parameter EMA. Metrics come back
    replicated and float32.
    """
    train = check_train_config(train or TrainConfig())
    dtype = compute_dtype(train.compute_dtype)
    inner = step_fn if train.accumulate == 1 else accumulate(step_fn, train.accumulate, mesh)

    def train_step(state: TrainState, batch: Batch):
        key = jax.random.fold_in(state.key, state.step)
        scale = state.extra[LOSS_SCALE_KEY]["scale"] if LOSS_SCALE_KEY in state.extra else None
        with precision_scope(Precision(dtype, scale)):
            new_state, metrics = inner(state, batch, key)
        if train.ema_decay:
            new_state = update_ema(new_state, train.ema_decay)
        return new_state.replace(step=state.step + 1), cast_floats(metrics, jnp.float32)

    repl = replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(repl, data_sharding(mesh)),
        out_shardings=(repl, repl),
        donate_argnums=0,
        compiler_options=compiler_options(mesh),
    )


def check_train_config(train: TrainConfig) -> TrainConfig:
    """`train` if its engine settings (compute dtype, accumulation, EMA decay) are valid, else a ConfigError."""
    compute_dtype(train.compute_dtype)
    if train.accumulate < 1:
        raise ConfigError(f"train.accumulate must be at least 1, got {train.accumulate}")
    if train.ema_decay and not 0.0 < train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in (0, 1) (or 0: off), got {train.ema_decay}")
    return train


def engine_extra(train: TrainConfig, params: dict) -> dict:
    """Non-parameter state the engine keeps for `train`: the parameter EMA and the float16 loss scale."""
    extra = {}
    if train.ema_decay:
        extra[EMA_KEY] = jax.tree.map(jnp.copy, params)
    if compute_dtype(train.compute_dtype) == jnp.float16:
        extra[LOSS_SCALE_KEY] = init_loss_scale()
    return extra


def update_ema(state: TrainState, decay: float) -> TrainState:
    """EMA of the parameters with the warm-up min(decay, (1 + t) / (10 + t)) at step t (as TensorFlow's)."""
    t = state.step.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.extra[EMA_KEY], state.params)
    return state.replace(extra={**state.extra, EMA_KEY: ema})


def make_eval_step(eval_fn: Callable[[TrainState, Batch], dict[str, jax.Array]], mesh: Mesh):
    """jit(eval) returning `{name: Mean}` (sum and count) over the valid, finite rows of the global batch.

    Summing (value, 1) pairs rather than averaging per batch keeps the mean over a whole data set exact,
    across devices, processes and a padded last batch.
    """

    def eval_step(state: TrainState, batch: Batch):
        values = eval_fn(state, batch)
        some = next(iter(batch.values()))
        valid = batch.get(VALID_KEY, jnp.ones(some.shape[:1], jnp.float32)).astype(jnp.float32)
        return {name: Mean.from_values(v, valid * jnp.isfinite(v)) for name, v in values.items()}

    repl = replicated(mesh)
    return jax.jit(eval_step, in_shardings=(repl, data_sharding(mesh)), out_shardings=repl,
                   compiler_options=compiler_options(mesh))


def make_predict_step(predict_fn: Callable[[TrainState, Batch], dict[str, jax.Array]], mesh: Mesh):
    """jit(predict) with outputs sharded like the batch."""
    sharding = data_sharding(mesh)
    return jax.jit(predict_fn, in_shardings=(replicated(mesh), sharding), out_shardings=sharding,
                   compiler_options=compiler_options(mesh))
