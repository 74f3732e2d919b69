"""Throughput of kfjax's training steps and physics operators on the machine it runs on (`kfjax bench`).

    row = bench_method("di2in", ["model.channels=16,32"], batch=8, steps=20)   # one jitted train step
    rows = bench_physics(sizes=(128, 256), batch=8, steps=10)                  # projector, FBP, RIL, DRR
    save(document("method", [row]), "di2in.json");  compare(load("old.json"), load("di2in.json"))

Every number is measured the same way: the jitted function is lowered and compiled ahead of time (the
compile time, XLA's memory analysis and its FLOP count come from that), called twice to warm up, then
`steps` times with `block_until_ready` after each call; median and 90th percentile of those calls.

JSON schema (one file per run; `null` where a backend does not report a value):

    {"kind": "method" | "physics",
     "env": {"date": ISO-8601 UTC, "jax": str, "jaxlib": str, "python": str, "backend": str,
             "device_kind": str, "device_count": int, "process_count": int, "cpu": str, "cores": int,
             "compilation_cache": bool},
     "rows": [row, ...]}

Keys every row has (times in seconds, memory in bytes):

    key             str    what `compare` matches rows by ("di2in b8", "forward adn:256 b32", "drr 200x200 b8")
    batch           int    rows per call (a global batch over all devices for methods)
    item            str    what a batch row is: images | volumes (methods); projections, backprojections,
                           reconstructions, DRRs (physics)
    steps           int    timed calls (after 2 warm-up calls)
    compile_s       float  lowering + XLA compilation (a persistent-cache hit when the cache already holds it)
    median_s        float  median seconds per call
    p90_s           float  90th percentile seconds per call
    items_per_s     float  batch / median_s
    flops_per_step  float|null  XLA cost analysis of one call, all devices together
    flops_per_s     float|null  flops_per_step / median_s
    xla_temp_bytes  int|null    XLA temporary buffers of the compiled call, per device

Method rows also have: method (str), overrides (list of "key=value"), compute_dtype (the config's
`train.compute_dtype`, str|null), params (int, parameter count of all groups), devices (int), peak_fraction
(flops_per_s over the devices' dense peak for compute_dtype, float|null when the device is not in
`env.PEAK_FLOPS`), xla_argument_bytes, xla_output_bytes (int|null, per device) and device_peak_bytes
(int|null: the largest `peak_bytes_in_use` of the local devices since the process started).

Physics rows also have: op (forward | adjoint | fbp | ril | drr), geometry (a preset spec such as "adn" or
"adn:256" = the adn preset with 256 views, or "HxW" of a DRR detector), shape (list: the input of one call)
and dtype ("float32").
"""

from kfjax.bench.method import bench_method
from kfjax.bench.physics import bench_physics
from kfjax.bench.report import compare, document, load, save

__all__ = ["bench_method", "bench_physics", "compare", "document", "load", "save"]
