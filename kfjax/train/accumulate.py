"""Gradient accumulation inside one jitted step: the update of a k-times larger batch in k micro-batches.

The method's own `train_step` runs once per micro-batch (`lax.scan`, so the program does not grow with k)
on a state whose `apply_gradients` records the gradients instead of applying them (`collect_grads`); the
mean of the k gradients is applied once, with the batch statistics and non-parameter state of the last
micro-batch. Every group's gradient is taken at the step's starting parameters, and metrics are averaged
over the micro-batches. Losses that are means over the batch give exactly the large batch's gradient; with
BatchNorm the statistics are those of the micro-batches.

Micro-batch j holds rows j, j + k, j + 2k, ... of the global batch, so with the batch sharded over "data"
every device keeps its own rows: the split moves no data (the global batch must be a multiple of
k x devices).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kfjax.train.mesh import DATA_AXIS
from kfjax.train.state import GRADS_KEY, TrainState

Batch = dict[str, jax.Array]


def split_micro_batches(batch: Batch, k: int, mesh: Mesh | None = None) -> Batch:
    """`(B, ...)` entries -> `(k, B // k, ...)`, micro-batch j = rows j, j + k, ...; sharded over "data" on axis 1."""

    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {k} micro-batches")
        x = jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
        if mesh is not None:
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, DATA_AXIS)))
        return x

    return jax.tree.map(split, batch)


def accumulate(step_fn: Callable, k: int, mesh: Mesh | None = None) -> Callable:
    """`step_fn(state, batch, key) -> (state, metrics)` -> the same signature, over k micro-batches."""

    def one(state: TrainState, micro: Batch, key: jax.Array):
        new, metrics = step_fn(state.replace(collect_grads=True), micro, key)
        extra = dict(new.extra)
        grads = extra.pop(GRADS_KEY)
        return new.replace(extra=extra, collect_grads=False), grads, metrics

    def step(state: TrainState, batch: Batch, key: jax.Array):
        micro = split_micro_batches(batch, k, mesh)
        first = jax.tree.map(lambda x: x[0], micro)
        _, grad_shape, _ = jax.eval_shape(one, state, first, key)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), grad_shape)

        def body(carry, xs):
            st, total = carry
            mb, index = xs
            st, grads, metrics = one(st, mb, jax.random.fold_in(key, index))
            return (st, jax.tree.map(jnp.add, total, grads)), metrics

        (last, total), metrics = jax.lax.scan(body, (state, zeros), (micro, jnp.arange(k)))
        grads = jax.tree.map(lambda g: g / k, total)
        new = state.replace(batch_stats=last.batch_stats, extra=last.extra).apply_gradients(grads)
        return new, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

    return step
