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

from kfjax.metrics import Mean
from kfjax.train.mesh import data_sharding, replicated
from kfjax.train.state import TrainState

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


def make_train_step(step_fn: StepFn, mesh: Mesh) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """jit(step) with the state donated and replicated and the batch sharded over "data".

    The key passed to `step_fn` is `fold_in(state.key, state.step)`, so a run's randomness depends only
    on (seed, step). Metrics come back replicated.
    """

    def train_step(state: TrainState, batch: Batch):
        key = jax.random.fold_in(state.key, state.step)
        new_state, metrics = step_fn(state, batch, key)
        return new_state.replace(step=state.step + 1), metrics

    repl = replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(repl, data_sharding(mesh)),
        out_shardings=(repl, repl),
        donate_argnums=0,
        compiler_options=compiler_options(mesh),
    )


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
