"""POINT² vs optimisation on the 2D/3D registration benchmark: mTRE 50th/95th, gross failure rate, time per case.

    python experiments/registration/run.py --write          # 3 seeds of point2, the table into README.md

Cases: :mod:`kfjax.data.registration_cases` (the chest CT, C-arm-like targets with a polychromatic spectrum,
tools, scatter, blades and noise; starts calibrated to the talk's 20 mm median mTRE), ``--n-test`` test cases
of case seed 0, the same for every row and seed. Rows:

- initial: the start pose;
- optimisation: intensity-based registration (gradient correlation, Adam, coarse to fine, ``OPT_LEVELS``) from
  the start (:func:`kfjax.register.intensity.register`); deterministic, run once;
- POINT: the trained tracker, pose from the first view alone (``model.pose=single_view``);
- POINT²: the trained tracker, both views, triangulation + Kabsch;
- POINT² + optimisation: intensity registration from POINT²'s pose with the fine levels ``REFINE_LEVELS``.

Each learned row is one ``point2`` run per seed (``--seeds``); every run saves its record (settings, seed, times,
machine, versions, git commit; metrics per row: ``<row>_p50``, ``<row>_p95`` (mm), ``<row>_gfr`` (% of cases with
mTRE > 10 mm) and ``<row>_s`` (seconds per case)) in ``runs/<settings>/<name>/``; finished runs are reused. The
table, paired tests across seeds and the footer are built from those records only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import records  # noqa: E402  (experiments/records.py)

OPT_LEVELS = ((0.25, 150, 3.0), (0.5, 100, 1.0), (1.0, 60, 0.3))  # (detector scale, Adam steps, step mm)
REFINE_LEVELS = ((0.5, 60, 1.0), (1.0, 60, 0.3))  # from POINT²'s pose: no coarsest level
ROWS = {"initial": "initial (start pose)", "opt": "optimisation only", "point": "POINT (one view)",
        "point2": "POINT² (two views, triangulation)", "point2_opt": "POINT² + optimisation"}
LEARNED = ("point", "point2", "point2_opt")
GROSS_MM = 10.0  # gross failure threshold (kfjax.methods.point2.FAILURE_MM)
PAPER = ("Paper context (the talk's table, clinical CBCT data, not comparable): initial 20.4 / 29.7 mm (50th / 95th); "
         "optimisation 0.62 / 57.8 mm, GFR 40 %, 23.5 s; DRL + optimisation 1.06 / 24.6 mm, 15.6 %, 3.21 s; "
         "POINT² + optimisation 0.55 / 5.67 mm, 2.7 %, 2.25 s.")


def settings_folder(args) -> Path:
    root = Path(args.runs) if args.runs else HERE / "runs"
    return root / f"{args.subject}_size{args.size}_n{args.n_train}_steps{args.steps}_test{args.n_test}"


def build(seed: int, args, pose: str = "triangulation"):
    from kfjax.methods import registry

    return registry.build("point2", overrides=[
        f"seed={seed}", f"data.subject={args.subject}", f"data.size={args.size}", f"data.n_train={args.n_train}",
        f"data.n_test={args.n_test}", f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}",
        f"model.pose={pose}"])


def summary(mtre: np.ndarray, seconds: float, name: str) -> dict:
    """Per-row metrics of one run: 50th/95th percentile mTRE (mm), gross failure rate (%), seconds per case."""
    return {f"{name}_p50": float(np.percentile(mtre, 50)), f"{name}_p95": float(np.percentile(mtre, 95)),
            f"{name}_gfr": float(100.0 * np.mean(mtre > GROSS_MM)), f"{name}_s": float(seconds)}


def refine(method, cases, init_transforms, levels) -> tuple[np.ndarray, float]:
    """Intensity registration of every test case from ``init_transforms`` (N, 4, 4): (transforms, s per case)."""
    from kfjax.register import intensity as ri

    s = method.subject
    lv = tuple(ri.Level(*level) for level in levels)
    x0 = np.asarray(ri.params_from_transform(np.asarray(init_transforms, np.float32), s.centre))
    out, start = [], time.perf_counter()
    for k in range(len(x0)):
        res = ri.register(s.volume, s.affine, cases["xray"][k], method.extrinsics, method.camera, x0[k], levels=lv,
                          centre=s.centre)
        out.append(np.asarray(res.transform))
    return np.stack(out), (time.perf_counter() - start) / len(x0)


def predict(method, state, cases) -> tuple[np.ndarray, float]:
    """The method's poses (N, 4, 4) of the test cases, one case per call (seconds per case after compiling)."""
    import jax

    step = jax.jit(method.predict)
    one = {k: v[:1] for k, v in cases.items()}
    jax.block_until_ready(step(state, one)["transform"])
    out, start = [], time.perf_counter()
    for k in range(len(cases["xray"])):
        out.append(np.asarray(step(state, {key: v[k:k + 1] for key, v in cases.items()})["transform"])[0])
    return np.stack(out), (time.perf_counter() - start) / len(out)


def mtre(method, transforms, cases) -> np.ndarray:
    from kfjax import metrics

    return np.asarray(metrics.mtre(np.asarray(transforms, np.float32), cases["gt_transform"],
                                   np.asarray(method.subject.points, np.float32)))


def run_optimisation(args) -> dict:
    """The seed-free rows (initial, optimisation only), once."""
    from kfjax.config import to_dict

    method = build(0, args)
    folder = settings_folder(args) / "optimisation"
    if records.exists(folder):
        return records.load(folder)
    clock = records.Clock()
    cases = method.dataset("test").arrays
    transforms, seconds = refine(method, cases, cases["init_transform"], OPT_LEVELS)
    metrics = summary(mtre(method, cases["init_transform"], cases), 0.0, "initial")
    metrics |= summary(mtre(method, transforms, cases), seconds, "opt")
    record = records.make(method="intensity", variant="optimisation", seed=None,
                          settings={"cases": to_dict(method.config.data), "levels": OPT_LEVELS,
                                    "similarity": "gc", "optimizer": "adam"},
                          metrics=metrics, clock=clock, data={"n_test": len(cases["xray"])})
    records.save(record, folder)
    print(f"optimisation: median {metrics['opt_p50']:.2f} mm, GFR {metrics['opt_gfr']:.1f} %", file=sys.stderr)
    return records.load(folder)


def run_seed(seed: int, args) -> dict:
    """Train point2 with ``seed`` (or reuse its record); the learned rows on the test cases."""
    import jax

    from kfjax.config import to_dict

    method = build(seed, args)
    folder = settings_folder(args) / f"point2-s{seed}"
    record = records.finished_run(folder, method.config)
    if record is not None:
        return record
    clock = records.Clock()
    folder.mkdir(parents=True, exist_ok=True)
    state, train_s = records.train_to_end(method, folder / "work", f"point2 seed {seed}")
    cases = method.dataset("test").arrays
    start = time.perf_counter()
    poses, seconds = predict(method, state, cases)
    single = build(seed, args, pose="single_view")
    single._datasets = method._datasets
    single_poses, single_s = predict(single, state, cases)
    refined, refine_s = refine(method, cases, poses, REFINE_LEVELS)
    metrics = summary(mtre(method, single_poses, cases), single_s, "point")
    metrics |= summary(mtre(method, poses, cases), seconds, "point2")
    metrics |= summary(mtre(method, refined, cases), seconds + refine_s, "point2_opt")
    record = records.make(method="point2", variant="point2", seed=seed, settings=to_dict(method.config),
                          metrics=metrics, clock=clock,
                          timings={"train_s": train_s, "eval_s": time.perf_counter() - start},
                          data={"n_train": args.n_train, "n_test": len(cases["xray"])})
    records.save(record, folder)
    jax.clear_caches()
    print(f"point2 seed {seed}: POINT² median {metrics['point2_p50']:.2f} mm, GFR {metrics['point2_gfr']:.1f} %; "
          f"+ opt {metrics['point2_opt_p50']:.2f} mm, {metrics['point2_opt_gfr']:.1f} %", file=sys.stderr)
    return records.load(folder)


def table(optimisation: dict, runs: list[dict]) -> str:
    """The README table, paired tests and footer from the records."""
    def values(row, key):
        if row in LEARNED:
            return [r["metrics"][f"{row}_{key}"] for r in runs]
        return [optimisation["metrics"][f"{row}_{key}"]]

    lines = ["| method | mTRE 50th (mm) | mTRE 95th (mm) | gross failures (%) | time per case (s) |",
             "|---|---|---|---|---|"]
    for row, label in ROWS.items():
        seconds = "" if row == "initial" else records.cell(values(row, "s"), 3)
        lines.append(f"| {label} | {records.cell(values(row, 'p50'))} | {records.cell(values(row, 'p95'))} | "
                     f"{records.cell(values(row, 'gfr'), 1)} | {seconds} |")
    lines += ["", "Paired differences over seeds (POINT² + optimisation − POINT²; POINT² − POINT):", ""]
    for a, b in (("point2_opt", "point2"), ("point2", "point")):
        for key, unit in (("p50", "mm"), ("p95", "mm"), ("gfr", "%")):
            pair = records.paired({r["seed"]: r["metrics"][f"{a}_{key}"] for r in runs},
                                  {r["seed"]: r["metrics"][f"{b}_{key}"] for r in runs})
            lines.append(f"- {ROWS[a]} − {ROWS[b]}, {key}: {records.paired_cell(pair, 2, unit)}")
    opt = optimisation["metrics"]
    lines += ["", "Optimisation only is deterministic (one run): " + ", ".join(
        f"{k} {'+' if d >= 0 else ''}{d:.2f}" for k, d in (
            ("POINT² + optimisation − optimisation, 50th (mm, mean over seeds)",
             float(np.mean(values("point2_opt", "p50"))) - opt["opt_p50"]),
            ("GFR (%)", float(np.mean(values("point2_opt", "gfr"))) - opt["opt_gfr"]))) + "."]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    lines += ["", f"Settings (from the run records): {records.describe(runs, 'data.n_test')} test cases, "
              f"{records.describe(runs, 'settings.data.n_train')} training cases at "
              f"{records.describe(runs, 'settings.data.size')}² ({records.describe(runs, 'settings.data.subject')} "
              f"subject, views {records.describe(runs, 'settings.data.pair')}), "
              f"{records.describe(runs, 'settings.train.steps')} steps of "
              f"{records.describe(runs, 'settings.data.batch_size')} cases; seeds {seeds}; mean ± sample std over "
              "seeds, paired t-tests across seeds.", "", PAPER, "",
              records.environment_summary([optimisation, *runs])]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--subject", default="chest", choices=["chest", "phantom"])
    p.add_argument("--size", type=int, default=64, help="detector pixels per side")
    p.add_argument("--n-train", type=int, default=256, help="training cases")
    p.add_argument("--n-test", type=int, default=64, help="test cases (case seed 0)")
    p.add_argument("--steps", type=int, default=1500, help="point2 training steps per seed")
    p.add_argument("--runs", help="folder of the runs (default: runs/ next to this script)")
    p.add_argument("--readme", default=str(HERE / "README.md"), help="file that --write rewrites")
    p.add_argument("--write", action="store_true", help="replace the results section of the README")
    args = p.parse_args()
    from kfjax.runtime import setup_jax

    setup_jax()
    optimisation = run_optimisation(args)
    runs = [run_seed(seed, args) for seed in args.seeds]
    text = table(optimisation, runs)
    print(text)
    if args.write:
        records.write_section(args.readme, "results", text)


if __name__ == "__main__":
    main()
