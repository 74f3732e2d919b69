"""The machine a benchmark ran on, and the dense peak FLOP/s of the accelerators kfjax knows."""

from __future__ import annotations

import datetime
import os
import platform

import jax
import jaxlib

# Dense peak FLOP/s per device (vendor data sheets, SXM parts; sparsity not counted). A device kind is
# matched by the first name it contains; PCIe parts have lower clocks, so they match nothing (null).
PEAK_FLOPS = (
    ("H200", {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12}),  # H200 SXM: same chip as H100 SXM
    ("H100", {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12}),
    ("A100", {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12}),
)


def peak_flops(device_kind: str, dtype: str | None) -> float | None:
    """Dense peak FLOP/s of one device of `device_kind` in `dtype`, or None when unknown."""
    kind = device_kind.upper()
    if "PCIE" in kind or dtype is None:
        return None
    for name, peaks in PEAK_FLOPS:
        if name in kind:
            return peaks.get(dtype)
    return None


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo on Linux, else what `platform` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """The `env` record of a benchmark document (see `kfjax.bench`)."""
    device = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "compilation_cache": bool(jax.config.jax_compilation_cache_dir),
    }
