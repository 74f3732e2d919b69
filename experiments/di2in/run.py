"""DI2IN on procedural organ phantoms: the default 2-D recipe over 3 seeds and a 3-D run.

    python experiments/di2in/run.py            # prints the table and rewrites it in README.md

Each run is `kfjax train di2in --workdir runs/di2in-exp/<run> --set seed=S ...` in a subprocess (so the
wall time includes start-up and compilation, as a user sees it); its metrics are the final validation
Dice and ASD the loop writes to metrics.jsonl, and its run record (`record.json` in the run folder:
the resolved config the run saved, seed, times, machine, device, versions, git commit, metrics; see
experiments/records.py) is what the table and its footer are built from. Finished runs are reused.
`--runs DIR` (or $KFJAX_EXP_DIR) puts the runs elsewhere, `--readme FILE` writes another file, `--set`
adds overrides to every run (a quick check: `--set train.steps=3`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import records  # noqa: E402  (experiments/records.py)

RUNS = {  # run folder -> (variant, overrides)
    "2d-s0": ("2d", ["seed=0"]),
    "2d-s1": ("2d", ["seed=1"]),
    "2d-s2": ("2d", ["seed=2"]),
    "3d-s0": ("3d", ["seed=0", "data.spatial_dims=3", "data.size=24", "data.n_train=128", "data.batch_size=4",
                     "model.channels=8,16,32,64", "train.steps=200"]),
}


def run(name: str, extra: list[str], root: Path) -> dict:
    """`kfjax train di2in` in a subprocess (or its finished record): the record of the run."""
    variant, overrides = RUNS[name]
    overrides = overrides + extra
    workdir = root / name
    if records.exists(workdir):
        record = records.load(workdir)
        if record["overrides"] != overrides:
            raise SystemExit(f"{workdir} holds a run with other overrides ({' '.join(record['overrides'])}); "
                             "move it away or use another --runs folder")
        return record
    resumed = (workdir / "checkpoints").is_dir()
    cmd = [sys.executable, "-m", "kfjax", "train", "di2in", "--workdir", str(workdir), "--no-progress",
           "--set", *overrides]
    clock = records.Clock()
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    train_s = time.perf_counter() - start
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in lines if r["split"] == "val"][-1]
    saved = json.loads((workdir / "config.json").read_text())
    metrics = {k: v for k, v in val.items() if k not in ("step", "split", "time")}
    record = records.make(method=saved["method"], variant=variant, seed=saved["config"]["seed"],
                          settings=saved["config"], metrics=metrics, clock=clock,
                          timings={"subprocess_s": train_s}, data={"val_step": val["step"]}, overrides=overrides,
                          command=" ".join(["python"] + cmd[1:]), resumed=resumed)
    records.save(record, workdir)
    print(f"{name}: Dice {metrics['dice']:.4f} ({train_s:.0f} s)", file=sys.stderr, flush=True)
    return records.load(workdir)


def label(record: dict) -> str:
    d = record["settings"]["data"]
    return f"{d['spatial_dims']}-D {d['size']}{'²' if d['spatial_dims'] == 2 else '³'}, seed {record['seed']}"


def table(rows: list[dict]) -> str:
    """The README table and footer, from run records only."""
    lines = ["| run | overrides | val Dice | val ASD (px) | wall time (s) |", "|---|---|---|---|---|"]
    lines += [f"| {label(r)} | `{' '.join(r['overrides'])}` | {r['metrics']['dice']:.4f} | {r['metrics']['asd']:.3f} "
              f"| {r['timings']['subprocess_s']:.0f} |" for r in rows]
    two_d = [r for r in rows if r["variant"] == "2d"]
    lines.append("")
    if two_d:
        lines += [f"2-D recipe, {len(two_d)} seed(s): Dice {records.cell([r['metrics']['dice'] for r in two_d], 4)}, "
                  f"ASD {records.cell([r['metrics']['asd'] for r in two_d], 3)} px (mean ± sample std).", ""]
    recipes = []
    for variant in ("2d", "3d"):
        rs = [r for r in rows if r["variant"] == variant]
        if rs:
            d = lambda path, fmt=str, rs=rs: records.describe(rs, path, fmt)  # noqa: E731
            recipes.append(f"{variant[0]}-D: {d('settings.train.steps')} steps of batch {d('settings.data.batch_size')}"
                           f", {d('settings.data.n_train')} training and {d('settings.data.n_val')} validation "
                           f"phantoms of {d('settings.data.size')} px, channels "
                           f"{d('settings.model.channels', lambda v: '-'.join(map(str, v)))}, Adam lr "
                           f"{d('settings.optim.lr', lambda v: f'{v:g}')} ({d('settings.optim.schedule')}, "
                           f"{d('settings.optim.warmup_steps')} warm-up steps)")
    lines.append("Settings (from the runs' saved configs): " + "; ".join(recipes) + ". Metrics: the final validation "
                 "evaluation. Wall time includes process start-up, phantom generation, compilation and the final "
                 "evaluation.")
    lines += ["", records.environment_summary(rows)]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=os.environ.get("KFJAX_EXP_DIR", "runs/di2in-exp"), help="folder of the runs")
    p.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS), help="runs to do (default: all)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    p.add_argument("--readme", default=str(HERE / "README.md"))
    p.add_argument("--no-write", action="store_true", help="print the table, leave the README alone")
    p.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    args = p.parse_args(argv)
    root = Path(args.runs)
    if args.table_only:
        rows = [records.load(root / name) for name in args.only if records.exists(root / name)]
    else:
        rows = [run(name, args.set, root) for name in args.only]
    text = table(rows)
    print(text)
    if not args.no_write:
        records.write_section(args.readme, "results", text)


if __name__ == "__main__":
    main()
