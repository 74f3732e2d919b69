"""Ahead-of-time compilation with XLA's own numbers, and timing of calls after a warm-up.

    compiled = compile_aot(jax.jit(f), x)        # compile seconds, FLOPs, memory analysis
    times = time_calls(lambda: compiled.call(x), steps=20, progress=bar)
    summary(times)                               # {"median_s", "p90_s"}
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np

WARMUP = 2  # untimed calls before the timed ones (the first call of a compiled program may still allocate)


@dataclasses.dataclass(frozen=True)
class Compiled:
    """A compiled program and what XLA says about it (per device; None where the backend does not say)."""

    call: Callable[..., Any]
    compile_s: float  # lowering + compilation, seconds
    flops: float | None  # FLOPs of one call on one device
    temp_bytes: int | None  # temporary buffers
    argument_bytes: int | None
    output_bytes: int | None


def _flops(cost: Any) -> float | None:
    """FLOPs from `cost_analysis()`: a dict, a list of dicts (one per computation, older jax) or None."""
    if isinstance(cost, dict):
        cost = [cost]
    if not cost:
        return None
    values = [c.get("flops") for c in cost if isinstance(c, dict)]
    values = [float(v) for v in values if v is not None and v >= 0]
    return sum(values) if values else None


def _bytes(memory: Any, name: str) -> int | None:
    value = getattr(memory, name, None) if memory is not None else None
    return None if value is None or value < 0 else int(value)


def compile_aot(jitted, *args) -> Compiled:
    """Lower and compile `jitted` for `args` (arrays or ShapeDtypeStructs) and read XLA's analyses."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - start
    try:
        memory = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        memory = None
    try:
        flops = _flops(compiled.cost_analysis())
    except (NotImplementedError, RuntimeError):
        flops = None
    return Compiled(compiled, compile_s, flops, _bytes(memory, "temp_size_in_bytes"),
                    _bytes(memory, "argument_size_in_bytes"), _bytes(memory, "output_size_in_bytes"))


def time_calls(call: Callable[[], Any], steps: int, progress=None, warmup: int = WARMUP) -> list[float]:
    """Seconds of each of `steps` calls of `call()` (its outputs blocked on) after `warmup` untimed calls.

    `progress`, if given, has `update(n)` and advances once per call.
    """
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        jax.block_until_ready(call())
        if i >= warmup:
            times.append(time.perf_counter() - start)
        if progress is not None:
            progress.update(1)
    return times


def summary(times: list[float]) -> dict[str, float]:
    """Median and 90th percentile of call times (seconds)."""
    return {"median_s": float(np.median(times)), "p90_s": float(np.percentile(times, 90))}


def device_peak_bytes() -> int | None:
    """The largest `peak_bytes_in_use` of this process's devices since it started, or None (e.g. on CPU)."""
    peaks = []
    for device in jax.local_devices():
        try:
            stats = device.memory_stats()
        except (NotImplementedError, RuntimeError):
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None
