"""TrainState: everything a training step changes, as one pytree.

Parameters, optimizer states and batch statistics are dicts keyed by *group* ("model" for a plain
network; "generator" and "discriminator" for a GAN, ...). Each group has its own optax transform, so
several optimisers live in one state and one jitted step can update all of them.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.struct as struct
import jax
import jax.numpy as jnp
import optax
from flax.core import FrozenDict

from kfjax.train.precision import LOSS_SCALE_KEY, all_finite, next_loss_scale

PyTree = Any
EMA_KEY = "ema"  # TrainState.extra entry: the parameter EMA `{group: pytree}` (train.ema_decay > 0)
GRADS_KEY = "_grads"  # TrainState.extra entry written by apply_gradients while collect_grads is on


@struct.dataclass
class TrainState:
    """Pytree of a training run.

    step: int32 scalar, number of steps taken.
    params: {group: parameter pytree}.
    opt_state: {group: optax state}.
    batch_stats: {group: running statistics} (empty dict for groups without BatchNorm).
    extra: {name: pytree} non-parameter state a method carries (GAN image pools, parameter EMA).
    rng: uint32 key data `(2,)`; the step key is `fold_in(rng, step)`.
    tx: {group: optax transform} (static, not saved in checkpoints).
    collect_grads: static; True while the engine accumulates micro-batches: `apply_gradients` then stores
        the gradients in `extra[GRADS_KEY]` instead of applying them (the engine applies their mean once).
    """

    step: jax.Array
    params: dict[str, PyTree]
    opt_state: dict[str, PyTree]
    batch_stats: dict[str, PyTree]
    extra: dict[str, PyTree]
    rng: jax.Array
    tx: FrozenDict = struct.field(pytree_node=False)
    collect_grads: bool = struct.field(pytree_node=False, default=False)

    @classmethod
    def create(
        cls,
        params: Mapping[str, PyTree],
        tx: Mapping[str, optax.GradientTransformation],
        rng: jax.Array,
        batch_stats: Mapping[str, PyTree] | None = None,
        extra: Mapping[str, PyTree] | None = None,
    ) -> "TrainState":
        """Start a run at step 0; `rng` is a typed key or raw uint32 key data."""
        if set(params) != set(tx):
            raise ValueError(f"params groups {sorted(params)} and optimizer groups {sorted(tx)} differ")
        if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
            rng = jax.random.key_data(rng)
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=dict(params),
            opt_state={name: tx[name].init(p) for name, p in params.items()},
            batch_stats=dict(batch_stats or {}),
            extra=dict(extra or {}),
            rng=rng,
            tx=FrozenDict(tx),
        )

    @property
    def key(self) -> jax.Array:
        """The run's base key as a typed PRNG key."""
        return jax.random.wrap_key_data(self.rng)

    def apply_gradients(
        self,
        grads: Mapping[str, PyTree],
        batch_stats: Mapping[str, PyTree] | None = None,
        extra: Mapping[str, PyTree] | None = None,
    ) -> "TrainState":
        """Update the groups named in `grads` with their own transforms; optionally replace entries of the
        batch statistics `{group: stats}` and of the non-parameter state `{name: pytree}`.

        Does not advance `step`: the step factory does that once per step, however many groups moved. With a
        float16 loss scale in `extra`, non-finite gradients leave parameters and optimizer states as they were.
        """
        state = self.replace(batch_stats={**self.batch_stats, **(batch_stats or {})},
                             extra={**self.extra, **(extra or {})})
        if self.collect_grads:
            return state.replace(extra={**state.extra, GRADS_KEY: dict(grads)})
        params = dict(self.params)
        opt_state = dict(self.opt_state)
        for name, g in grads.items():
            updates, opt_state[name] = self.tx[name].update(g, opt_state[name], params[name])
            params[name] = optax.apply_updates(params[name], updates)
        if LOSS_SCALE_KEY in self.extra:
            finite = all_finite(grads)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
            params, opt_state = keep(params, dict(self.params)), keep(opt_state, dict(self.opt_state))
            state = state.replace(extra={**state.extra, LOSS_SCALE_KEY: next_loss_scale(self.extra[LOSS_SCALE_KEY], finite)})
        return state.replace(params=params, opt_state=opt_state)

    def for_evaluation(self) -> "TrainState":
        """This state with the parameter EMA (when the run keeps one) in place of the parameters."""
        return self.replace(params=self.extra[EMA_KEY]) if EMA_KEY in self.extra else self

    def variables(self, group: str = "model") -> dict[str, PyTree]:
        """Flax variables of one group for `module.apply`: params and, if any, batch stats."""
        out = {"params": self.params[group]}
        if group in self.batch_stats:
            out["batch_stats"] = self.batch_stats[group]
        return out
