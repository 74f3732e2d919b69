"""One method's jitted train step on a synthetic batch: compile time, step time, throughput, FLOP/s, memory.

The step is the one `kfjax train` runs (`make_train_step`: state replicated and donated, batch sharded over
every device); the batch comes from `method.batch_spec`, so no data set is built or downloaded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kfjax.bench.env import peak_flops
from kfjax.bench.timing import WARMUP, compile_aot, device_peak_bytes, summary, time_calls
from kfjax.errors import ConfigError
from kfjax.methods import registry
from kfjax.train.loop import init_train_state
from kfjax.train.mesh import check_batch_size, make_mesh, process_slice, shard_batch
from kfjax.train.precision import Precision, precision_scope
from kfjax.train.step import make_train_step
from kfjax.train.writers import Progress

SEED = 0  # of the synthetic batch
STEPS = 20  # timed steps by default


def synthetic_batch(spec: dict, seed: int = SEED) -> dict[str, np.ndarray]:
    """Host batch of `spec`'s shapes: floats uniform in [0, 1) from a fixed seed, integers zero.

    [0, 1) suits every kind of entry a method reads (images, probabilities, masks, labels).
    """
    rng = np.random.default_rng(seed)
    batch = {}
    for name in sorted(spec):
        s = spec[name]
        if np.issubdtype(s.dtype, np.floating):
            batch[name] = rng.random(s.shape, dtype=np.float32).astype(s.dtype)
        else:
            batch[name] = np.zeros(s.shape, s.dtype)
    return batch


def backward_bytes(method, state, batch: dict, dtype=jnp.float32) -> int:
    """Bytes a supervised method's loss keeps for its backward pass: the residuals of `jax.vjp` of its
    objective over the "model" parameters with networks in compute dtype `dtype` (shapes only, nothing runs).
    What rematerialisation and a narrower dtype shrink before XLA schedules anything."""

    def residuals(params):
        with precision_scope(Precision(dtype)):
            _, backward = jax.vjp(lambda p: method._objective(p, state, batch)[0], params)
        return jax.tree.leaves(backward)

    return sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in jax.eval_shape(residuals, state.params["model"]))


def item_name(spec: dict) -> str:
    """"images" when the largest floating batch entry is (B, H, W, C), "volumes" for (B, D, H, W, C)."""
    floats = [s for s in spec.values() if np.issubdtype(s.dtype, np.floating)]
    if not floats:
        return "rows"
    largest = max(floats, key=lambda s: int(np.prod(s.shape)))
    return {4: "images", 5: "volumes"}.get(len(largest.shape), "rows")


def _parameter_count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def bench_method(name: str, overrides: list[str] | None = None, batch: int | None = None, steps: int = STEPS,
                 progress: bool = True) -> dict:
    """Time `steps` train steps of method `name` (after 2 warm-up steps); returns one method row.

    `overrides` are "key=value" config settings; `batch` (global rows per step) sets `data.batch_size`.
    Raises ConfigError for an unknown method or key, a per-case method, or a batch that does not divide
    over the devices.
    """
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    overrides = list(overrides or [])
    if batch is not None:
        if batch < 1:
            raise ConfigError(f"batch must be at least 1, got {batch}")
        overrides.append(f"data.batch_size={batch}")
    method = registry.build(name, None, overrides)
    if not method.trainable:
        raise ConfigError(f"'{name}' has nothing to train (it optimises each case at evaluation); "
                          "`kfjax list` marks such methods per-case")
    rows = method.config.data.batch_size
    mesh = make_mesh()
    check_batch_size(rows, mesh)
    spec = method.batch_spec(rows)
    state = init_train_state(method, mesh, spec)
    params = _parameter_count(state.params)
    host = synthetic_batch(spec)
    local = process_slice(rows)
    batch_arrays = shard_batch({k: v[local] for k, v in host.items()}, mesh)
    compiled = compile_aot(make_train_step(method.train_step, mesh, method.config.train), state, batch_arrays)

    def step():
        nonlocal state  # the step donates its state: keep the one it returns
        state, metrics = compiled.call(state, batch_arrays)
        return state, metrics

    bar = Progress(0, WARMUP + steps, enabled=progress, desc=f"bench {name}")
    try:
        times = time_calls(step, steps, bar)
    finally:
        bar.close()
    stats = summary(times)
    devices = mesh.devices.size
    flops = None if compiled.flops is None else compiled.flops * devices
    flops_per_s = None if flops is None else flops / stats["median_s"]
    dtype = method.config.train.compute_dtype
    peak = peak_flops(jax.devices()[0].device_kind, dtype)
    return {
        "key": f"{name} b{rows}",
        "method": name,
        "overrides": overrides,
        "compute_dtype": dtype,
        "params": params,
        "devices": devices,
        "batch": rows,
        "item": item_name(spec),
        "steps": steps,
        "compile_s": compiled.compile_s,
        **stats,
        "items_per_s": rows / stats["median_s"],
        "flops_per_step": flops,
        "flops_per_s": flops_per_s,
        "peak_fraction": None if peak is None or flops_per_s is None else flops_per_s / (peak * devices),
        "xla_temp_bytes": compiled.temp_bytes,
        "xla_argument_bytes": compiled.argument_bytes,
        "xla_output_bytes": compiled.output_bytes,
        "device_peak_bytes": device_peak_bytes(),
    }

