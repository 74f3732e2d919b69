"""The "GPU (kfjax bench)" section of benchmarks/README.md from the JSON files `benchmarks/gpu.sh` wrote.

    python benchmarks/gpu_report.py OUT_DIR --size full [--readme benchmarks/README.md] [--note TEXT ...]

Every row comes from the JSON documents in OUT_DIR (`kfjax.bench` schema): the machine and versions from
their `env`, the method rows (one file per method and dtype) and the physics rows. A target is met when the
row it names (op, geometry, batch) reaches its rate; a CPU run (env.backend "cpu") says so and judges no target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from readme_section import README, write_section

from kfjax.bench.report import load

# The GPU targets: the physics row each one reads (gpu.sh's full size runs these rows) and the rate it needs.
TARGETS = (
    {"op": "forward", "geometry": "adn:256", "batch": 32, "rate": 50_000,
     "what": "forward projections/s, batch 32 of 256² images at 256 views (geometry adn:256)"},
    {"op": "drr", "geometry": "200x200", "batch": None, "rate": 2_000,
     "what": "DRRs/s at 200² (Joseph, cone beam, chest-CT-sized volume)"},
)
HIDDEN_SETTINGS = ("data.batch_size=", "train.compute_dtype=")  # shown in their own columns


def _num(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _mb(value) -> str:
    return "" if value is None else _num(value / 1e6)


def _method_table(docs: list[dict]) -> list[str]:
    rows = sorted((r for d in docs for r in d["rows"]), key=lambda r: (r["method"], r["compute_dtype"] != "float32"))
    lines = ["| method | settings | batch | dtype | median step s | p90 s | items/s | TFLOP/s | of peak | compile s "
             "| XLA temp MB | device peak MB |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        settings = " ".join(o for o in r["overrides"] if not o.startswith(HIDDEN_SETTINGS)) or "defaults"
        peak = "" if r["peak_fraction"] is None else f"{r['peak_fraction']:.1%}"
        tflops = None if r["flops_per_s"] is None else r["flops_per_s"] / 1e12
        lines.append(f"| {r['method']} | `{settings}` | {r['batch']} | {r['compute_dtype']} | {_num(r['median_s'])} "
                     f"| {_num(r['p90_s'])} | {_num(r['items_per_s'])} {r['item']} | {_num(tflops)} | {peak} "
                     f"| {_num(r['compile_s'])} | {_mb(r['xla_temp_bytes'])} | {_mb(r['device_peak_bytes'])} |")
    return lines


def _physics_table(rows: list[dict]) -> list[str]:
    lines = ["| op | geometry | input shape | batch | median s | p90 s | items/s | compile s | XLA temp MB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        shape = "×".join(str(n) for n in r["shape"])
        lines.append(f"| {r['op']} | {r['geometry']} | {shape} | {r['batch']} | {_num(r['median_s'])} "
                     f"| {_num(r['p90_s'])} | {_num(r['items_per_s'])} {r['item']} | {_num(r['compile_s'])} "
                     f"| {_mb(r['xla_temp_bytes'])} |")
    return lines


def _targets(rows: list[dict], cpu: bool) -> list[str]:
    lines = ["| target | needs | measured | |", "|---|---:|---:|---|"]
    for t in TARGETS:
        found = [r for r in rows if r["op"] == t["op"] and r["geometry"] == t["geometry"]
                 and (t["batch"] is None or r["batch"] == t["batch"])]
        if cpu or not found:
            why = "CPU run: not judged" if cpu else "row not run"
            lines.append(f"| {t['what']} | {t['rate']:,} | | {why} |")
            continue
        rate = max(r["items_per_s"] for r in found)
        lines.append(f"| {t['what']} | {t['rate']:,} | {rate:,.0f} | {'met' if rate >= t['rate'] else 'not met'} |")
    return lines


def section(folder: Path, size: str, notes: list[str]) -> str:
    """Markdown of the documents gpu.sh writes into `folder` (method-METHOD-DTYPE.json, physics.json)."""
    docs = [load(p) for p in sorted(folder.glob("method-*.json")) + sorted(folder.glob("physics.json"))]
    if not docs:
        raise SystemExit(f"gpu_report.py: no JSON files in {folder}; run benchmarks/gpu.sh first")
    methods = [d for d in docs if d["kind"] == "method"]
    physics = [r for d in docs if d["kind"] == "physics" for r in d["rows"]]
    env = docs[0]["env"]
    cpu = env["backend"] == "cpu"
    steps = sorted({r["steps"] for d in docs for r in d["rows"]})
    lines = [
        f"`KFJAX_BENCH_SIZE={size} benchmarks/gpu.sh`, {min(d['env']['date'] for d in docs)}: "
        f"{env['device_count']} × {env['device_kind']} ({env['backend']}), CPU {env['cpu']} ({env['cores']} cores), "
        f"jax {env['jax']}, python {env['python']}; median and 90th percentile of {'/'.join(map(str, steps))} "
        "timed calls after 2 warm-up calls, synthetic inputs.",
        "",
    ]
    if cpu:
        lines += ["**CPU run**: jax saw no accelerator, so the rows are reduced sizes and the GPU targets are not "
                  "judged; on a GPU the script runs the full sizes.", ""]
    if methods:
        lines += ["Train steps (`kfjax bench METHOD`: the jitted step `kfjax train` runs; the state donated, the batch "
                  "sharded over every device; items/s = batch / median step; of peak = FLOP/s over the devices' "
                  "dense peak for the dtype, blank where the device is not in `kfjax.bench.env.PEAK_FLOPS`):", ""]
        lines += _method_table(methods) + [""]
    if physics:
        lines += ["Physics (`kfjax bench physics`, float32; forward, adjoint, FBP and the Radon inversion layer per "
                  "geometry, DRRs per detector size):", ""]
        lines += _physics_table(physics) + [""]
    lines += ["Targets (an H100-class GPU):", ""] + _targets(physics, cpu)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="the JSON files of one gpu.sh run")
    parser.add_argument("--size", default="full", help="the KFJAX_BENCH_SIZE of the run (named in the section)")
    parser.add_argument("--readme", type=Path, default=README, help="README whose gpu section is replaced")
    parser.add_argument("--note", nargs="*", default=[], help="lines added under the tables (runs that failed)")
    args = parser.parse_args()
    text = section(args.folder, args.size, args.note)
    write_section("gpu", "GPU (kfjax bench)", text, readme=args.readme)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
