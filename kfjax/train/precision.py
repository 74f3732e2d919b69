"""Mixed precision and rematerialisation of a network application, set once per compiled train step.

Parameters, optimizer states, batch statistics, losses and metrics stay float32. `apply_network` casts the
parameters and the floating inputs of one `module.apply` to the step's compute dtype (convolutions and
activations run in it) and its floating outputs back to float32, so every loss is reduced in float32.
Gradients come back float32 through the casts.

The compute dtype is `train.compute_dtype`; the engine's train step sets it for the trace of the method's
step (`precision_scope`); evaluation, prediction and inference run in float32. With float16 the step also
scales the loss dynamically: inside a network the cotangents are multiplied by the scale (so small gradients
do not flush to zero in float16) and divided by it again at the network's boundary; `TrainState` skips an
update whose gradients are not finite and halves the scale, and doubles it after `LOSS_SCALE_PERIOD` good steps.

`remat=True` rematerialises the whole application (`jax.checkpoint`): only its inputs are kept for the
backward pass. Block-level rematerialisation (`model.remat=blocks`) lives in the networks (`kfjax.nn.blocks`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Iterator

import jax
import jax.numpy as jnp

from kfjax.errors import ConfigError

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
LOSS_SCALE_INIT = 2.0**15  # first float16 loss scale
LOSS_SCALE_PERIOD = 2000  # good steps before the scale doubles
LOSS_SCALE_KEY = "loss_scale"  # TrainState.extra entry {"scale": f32, "good_steps": i32}


def compute_dtype(name: str):
    """The jnp dtype of a `train.compute_dtype` name."""
    if name not in COMPUTE_DTYPES:
        raise ConfigError(f"train.compute_dtype '{name}' is not one of {', '.join(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


@dataclasses.dataclass(frozen=True)
class Precision:
    """What `apply_network` does inside a train step: the compute dtype and the float16 loss scale (or None)."""

    dtype: Any = jnp.float32
    loss_scale: jax.Array | None = None


_CURRENT = contextvars.ContextVar("kfjax_precision", default=Precision())


@contextlib.contextmanager
def precision_scope(precision: Precision) -> Iterator[None]:
    """Trace the code inside with `precision` (the engine wraps a method's train step in it)."""
    token = _CURRENT.set(precision)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current() -> Precision:
    """The precision of the step being traced (float32 outside a train step)."""
    return _CURRENT.get()


def _is_float(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def cast_floats(tree, dtype):
    """Every floating leaf of `tree` cast to `dtype` (other leaves unchanged)."""
    return jax.tree.map(lambda x: x.astype(dtype) if _is_float(x) else x, tree)


@jax.custom_vjp
def scale_cotangent(tree, factor):
    """Identity forward; the backward pass multiplies the cotangent of every floating leaf by `factor`."""
    return tree


def _scale_fwd(tree, factor):
    return tree, factor


def _scale_bwd(factor, cotangent):
    scaled = jax.tree.map(lambda g: (g * factor).astype(g.dtype) if _is_float(g) else g, cotangent)
    return scaled, jnp.zeros_like(factor)


scale_cotangent.defvjp(_scale_fwd, _scale_bwd)


def apply_network(module, variables: dict, *inputs, remat: bool = False, **kwargs):
    """`module.apply(variables, *inputs, **kwargs)` in the current compute dtype, float32 outputs.

    Only the "params" collection and floating `inputs` are cast (batch statistics stay float32); `kwargs`
    (train flag, `mutable`, `method`) pass through unchanged.
    """
    precision = current()

    def run(variables, *inputs):
        return module.apply(variables, *inputs, **kwargs)

    if remat:
        run = jax.checkpoint(run)
    if precision.dtype == jnp.float32:
        return run(variables, *inputs)
    scale = precision.loss_scale
    params, inputs = variables["params"], inputs
    if scale is not None:
        params, inputs = scale_cotangent((params, inputs), 1.0 / scale)
    low = {**variables, "params": cast_floats(params, precision.dtype)}
    out = cast_floats(run(low, *cast_floats(inputs, precision.dtype)), jnp.float32)
    return out if scale is None else scale_cotangent(out, scale)


def init_loss_scale() -> dict[str, jax.Array]:
    """The float16 loss-scale state kept in `TrainState.extra[LOSS_SCALE_KEY]`."""
    return {"scale": jnp.asarray(LOSS_SCALE_INIT, jnp.float32), "good_steps": jnp.zeros((), jnp.int32)}


def next_loss_scale(state: dict[str, jax.Array], finite: jax.Array) -> dict[str, jax.Array]:
    """Halve the scale after non-finite gradients (at least 1), double it after `LOSS_SCALE_PERIOD` good steps."""
    good = jnp.where(finite, state["good_steps"] + 1, 0)
    grow = good >= LOSS_SCALE_PERIOD
    scale = jnp.where(finite, jnp.where(grow, state["scale"] * 2.0, state["scale"]),
                      jnp.maximum(state["scale"] * 0.5, 1.0))
    return {"scale": scale, "good_steps": jnp.where(grow, 0, good).astype(jnp.int32)}


def all_finite(tree) -> jax.Array:
    """True when every floating leaf of `tree` is finite everywhere."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if _is_float(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
