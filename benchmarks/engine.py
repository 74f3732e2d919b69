"""The engine's scale settings on this machine: compute dtype and rematerialisation against the float32 step.

For the DuDoNet step (its default 2-D geometry) and the 3-D DI2IN step, one `kfjax bench` row per setting
(`train.compute_dtype=float32|bfloat16`, `model.remat=none|blocks|full`): median step time, XLA's compiled
temporary memory and the bytes the loss keeps for the backward pass (the residuals of `jax.vjp`, what
rematerialisation and a narrower dtype shrink before XLA schedules anything). Then the largest global batch
of the 3-D DI2IN step whose compiled memory (temporaries + arguments) fits `--budget-mib`, with and without
`model.remat=blocks` and `train.accumulate=4`. Every setting of one table runs in the same process, in turn,
so read the ratios.

    python benchmarks/engine.py            # print the tables
    python benchmarks/engine.py --write    # also replace the engine section of benchmarks/README.md
"""

from __future__ import annotations

import argparse
import datetime

import jax
import jax.numpy as jnp
from readme_section import write_section

from kfjax.bench import bench_method
from kfjax.bench.env import environment
from kfjax.bench.method import backward_bytes, synthetic_batch
from kfjax.methods import registry
from kfjax.train.loop import init_train_state
from kfjax.train.mesh import make_mesh

WORKLOADS = {
    "dudonet": ("dudonet", []),
    "di2in 3-D": ("di2in", ["data.spatial_dims=3", "data.size=32", "model.norm=group"]),
}
SETTINGS = {
    "float32": [],
    "bfloat16": ["train.compute_dtype=bfloat16"],
    "remat blocks": ["model.remat=blocks"],
    "remat full": ["model.remat=full"],
}


def saved_bytes(name: str, overrides: list[str], batch: int) -> int:
    """Bytes a supervised method's loss keeps for its backward pass (shapes only, nothing runs)."""
    method = registry.build(name, None, [*overrides, f"data.batch_size={batch}"])
    spec = method.batch_spec(batch)
    state = init_train_state(method, make_mesh(jax.devices()[:1]), spec)
    dtype = jnp.bfloat16 if method.config.train.compute_dtype == "bfloat16" else jnp.float32
    return backward_bytes(method, state, synthetic_batch(spec), dtype)


def settings_table(batch: int, steps: int) -> list[str]:
    lines = ["| step | setting | median step, s | time / float32 | XLA temporary, MiB | kept for backward, MiB "
             "| kept / float32 |", "|---|---|---:|---:|---:|---:|---:|"]
    for label, (name, base) in WORKLOADS.items():
        rows = {}
        for setting, extra in SETTINGS.items():
            row = bench_method(name, [*base, *extra], batch=batch, steps=steps, progress=False)
            rows[setting] = (row, saved_bytes(name, [*base, *extra], batch))
        ref_time, ref_kept = rows["float32"][0]["median_s"], rows["float32"][1]
        for setting, (row, kept) in rows.items():
            temp = row["xla_temp_bytes"]
            lines.append(f"| {label}, batch {batch} | {setting} | {row['median_s']:.3f} | "
                         f"{row['median_s'] / ref_time:.2f} | {'' if temp is None else f'{temp / 2**20:.0f}'} | "
                         f"{kept / 2**20:.0f} | {kept / ref_kept:.2f} |")
    return lines


def compiled_mib(name: str, overrides: list[str], batch: int) -> float | None:
    row = bench_method(name, overrides, batch=batch, steps=1, progress=False)
    if row["xla_temp_bytes"] is None:
        return None
    return (row["xla_temp_bytes"] + (row["xla_argument_bytes"] or 0)) / 2**20


def largest_batch_table(budget_mib: float, max_batch: int) -> list[str]:
    name, base = WORKLOADS["di2in 3-D"]
    lines = [f"Largest global batch of the 3-D DI2IN step (32³, group norm) whose compiled memory (XLA temporaries "
             f"+ arguments) fits {budget_mib:.0f} MiB, batches 1, 2, 4, ... {max_batch}:", "",
             "| setting | largest batch | its compiled MiB |", "|---|---:|---:|"]
    for setting, extra in (("plain", []), ("remat blocks", ["model.remat=blocks"]),
                           ("accumulate 4", ["train.accumulate=4"]),
                           ("remat blocks + accumulate 4", ["model.remat=blocks", "train.accumulate=4"])):
        best, best_mib = None, None
        batch = 4 if "accumulate" in setting else 1
        while batch <= max_batch:
            mib = compiled_mib(name, [*base, *extra], batch)
            if mib is None or mib > budget_mib:
                break
            best, best_mib = batch, mib
            batch *= 2
        lines.append(f"| {setting} | {best or 'none'} | {'' if best_mib is None else f'{best_mib:.0f}'} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4, help="global batch of the settings table")
    p.add_argument("--steps", type=int, default=5, help="timed steps per row")
    p.add_argument("--budget-mib", type=float, default=512.0, help="memory budget of the largest-batch table")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--write", action="store_true", help="replace the engine section of benchmarks/README.md")
    args = p.parse_args()
    env = environment()
    lines = settings_table(args.batch, args.steps) + [""] + largest_batch_table(args.budget_mib, args.max_batch)
    lines += ["", f"- run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {env['cpu']}, "
              f"{env['cores']} cores, {env['device_count']} {env['backend']} device(s) ({env['device_kind']}), "
              f"jax {env['jax']}; median of {args.steps} steps after 2 warm-up steps",
              f"- command: `python benchmarks/engine.py --batch {args.batch} --steps {args.steps} "
              f"--budget-mib {args.budget_mib:g} --max-batch {args.max_batch}{' --write' if args.write else ''}`"]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("engine", "Engine settings: compute dtype, rematerialisation, accumulation", text)


if __name__ == "__main__":
    main()
