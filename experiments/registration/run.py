"""POINT² vs optimisation on the 2D/3D registration benchmark: mTRE 50th/95th, gross failure rate, time per case.

    python experiments/registration/run.py --write                  # 3 seeds of point2 on the chest CT
    python experiments/registration/run.py --subject head --write   # the same on the head CT

Cases: :mod:`kfjax.data.registration_cases` (the chest or the head CT, ``--subject``; C-arm-like targets with
a polychromatic spectrum, tools, scatter, blades and noise; starts calibrated to the talk's 20 mm median mTRE),
``--n-test`` test cases of case seed 0, the same for every row and seed. Rows:

- initial: the start pose;
- optimisation: intensity-based registration (gradient correlation, Adam, coarse to fine, ``OPT_LEVELS``) from
  the start (:func:`kfjax.register.intensity.register`); deterministic, run once;
- optimisation without the domain shift: the same on the same poses and starts, with targets rendered with
  every part of the shift off (:func:`kfjax.data.registration_cases.no_shift`): what the shift costs;
- pose regression: a CNN from the DRRs at the start and the X-rays to the pose update (``pose_regression``);
- POINT: the trained tracker, pose from the first view alone (``model.pose=single_view``);
- POINT²: the trained tracker, both views, triangulation + Kabsch;
- POINT² + optimisation: intensity registration from POINT²'s pose with the fine levels ``REFINE_LEVELS``.

Each learned row comes from one ``point2`` (or ``pose_regression``) run per seed (``--seeds``); every run saves
its record (settings, seed, times, machine, versions, git commit; metrics per row: ``<row>_p50``, ``<row>_p95``
(mm), ``<row>_gfr`` (% of cases with mTRE > 10 mm) and ``<row>_s`` (seconds per case)) in
``runs/<settings>/<name>/``; finished runs are reused. The table, paired tests across seeds and the footer are
built from those records only; each subject has its own results section (``results`` for the chest,
``results_<subject>`` otherwise).
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
ROWS = {"initial": "initial (start pose)", "opt": "optimisation only",
        "opt_clean": "optimisation only, targets without the domain shift", "regression": "pose regression (CNN)",
        "point": "POINT (one view)", "point2": "POINT² (two views, triangulation)",
        "point2_opt": "POINT² + optimisation"}
LEARNED = ("point", "point2", "point2_opt")  # the rows of a point2 run
FOLDERS = {"point2": "point2", "pose_regression": "regression"}  # method -> run folder (and record variant)
GROSS_MM = 10.0  # gross failure threshold (kfjax.methods.common.registration.FAILURE_MM)
PANEL_CASES = 3  # the first test cases, drawn for every row in panels/<subject>_<row>.png (the first seed's model)
PAPER = ("Paper context (the talk's table, clinical CBCT data, not comparable): initial 20.4 / 29.7 mm (50th / 95th); "
         "optimisation 0.62 / 57.8 mm, GFR 40 %, 23.5 s; DRL + optimisation 1.06 / 24.6 mm, 15.6 %, 3.21 s; "
         "POINT² + optimisation 0.55 / 5.67 mm, 2.7 %, 2.25 s.")


def settings_folder(args) -> Path:
    root = Path(args.runs) if args.runs else HERE / "runs"
    return root / f"{args.subject}_size{args.size}_n{args.n_train}_steps{args.steps}_test{args.n_test}"


def build(seed: int, args, name: str = "point2", *extra: str):
    from kfjax.methods import registry

    return registry.build(name, overrides=[
        f"seed={seed}", f"data.subject={args.subject}", f"data.size={args.size}", f"data.n_train={args.n_train}",
        f"data.n_test={args.n_test}", f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}", *extra])


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


def first_cases(cases: dict, count: int = PANEL_CASES) -> dict:
    """The first ``count`` cases of a split's arrays."""
    return {k: v[:count] for k, v in cases.items()}


def save_panel(folder: Path, transforms: dict) -> None:
    """The panel cases' poses (row -> (PANEL_CASES, 4, 4)) beside the record, for :func:`write_panels`."""
    np.savez_compressed(folder / "panel.npz", **{k: np.asarray(v[:PANEL_CASES], np.float32)
                                                 for k, v in transforms.items()})


def clean_cases(method) -> dict:
    """The test cases (as ``method.dataset("test").arrays``, the same poses and starts) with X-rays rendered with
    the domain shift off (:func:`kfjax.data.registration_cases.no_shift`)."""
    from kfjax.data.registration_cases import make_cases, no_shift

    d = method.config.data
    c = make_cases(method.subject, "test", d.n_test, d.seed, no_shift(method.case_config))
    return {"xray": c.targets.astype(np.float32), "gt_transform": c.gt_transform.astype(np.float32),
            "init_transform": c.init_transform.astype(np.float32)}


def run_clean_optimisation(args) -> dict:
    """The optimisation row on targets without the domain shift, once."""
    from kfjax.config import to_dict

    method = build(0, args)
    folder = settings_folder(args) / "optimisation-clean"
    if records.exists(folder):
        return records.load(folder)
    clock = records.Clock()
    cases = clean_cases(method)
    transforms, seconds = refine(method, cases, cases["init_transform"], OPT_LEVELS)
    record = records.make(method="intensity", variant="optimisation-clean", seed=None,
                          settings={"cases": to_dict(method.config.data), "levels": OPT_LEVELS, "shift": "off",
                                    "similarity": "gc", "optimizer": "adam"},
                          metrics=summary(mtre(method, transforms, cases), seconds, "opt_clean"), clock=clock,
                          data={"n_test": len(cases["xray"])})
    records.save(record, folder)
    return records.load(folder)


def run_optimisation(args) -> dict:
    """The seed-free rows (initial, optimisation only), once."""
    from kfjax.config import to_dict

    method = build(0, args)
    folder = settings_folder(args) / "optimisation"
    cases = method.dataset("test").arrays
    if records.exists(folder):
        if not (folder / "panel.npz").exists():  # a record from before the panels
            first = first_cases(cases)
            save_panel(folder, {"initial": first["init_transform"],
                                "opt": refine(method, first, first["init_transform"], OPT_LEVELS)[0]})
        return records.load(folder)
    clock = records.Clock()
    transforms, seconds = refine(method, cases, cases["init_transform"], OPT_LEVELS)
    metrics = summary(mtre(method, cases["init_transform"], cases), 0.0, "initial")
    metrics |= summary(mtre(method, transforms, cases), seconds, "opt")
    record = records.make(method="intensity", variant="optimisation", seed=None,
                          settings={"cases": to_dict(method.config.data), "levels": OPT_LEVELS,
                                    "similarity": "gc", "optimizer": "adam"},
                          metrics=metrics, clock=clock, data={"n_test": len(cases["xray"])})
    records.save(record, folder)
    save_panel(folder, {"initial": cases["init_transform"], "opt": transforms})
    print(f"optimisation: median {metrics['opt_p50']:.2f} mm, GFR {metrics['opt_gfr']:.1f} %", file=sys.stderr)
    return records.load(folder)


def learned_poses(method, state, cases, seed: int, args) -> tuple[dict, dict]:
    """A trained run's rows' poses (row -> (N, 4, 4)) of ``cases`` and their seconds per case: pose regression's,
    or POINT's, POINT²'s and POINT² + optimisation's from one point2 run."""
    poses, seconds = predict(method, state, cases)
    if method.name == "pose_regression":
        return {"regression": poses}, {"regression": seconds}
    single = build(seed, args, "point2", "model.pose=single_view")
    single._datasets = method._datasets
    single_poses, single_s = predict(single, state, cases)
    refined, refine_s = refine(method, cases, poses, REFINE_LEVELS)
    return ({"point": single_poses, "point2": poses, "point2_opt": refined},
            {"point": single_s, "point2": seconds, "point2_opt": seconds + refine_s})


def run_seed(seed: int, args, name: str = "point2") -> dict:
    """Train method ``name`` (point2 or pose_regression) with ``seed``, or reuse its record; its rows on the test
    cases; the first seed's run also keeps the panel cases' poses."""
    import jax

    from kfjax.config import to_dict

    method = build(seed, args, name)
    folder = settings_folder(args) / f"{FOLDERS[name]}-s{seed}"
    record = records.finished_run(folder, method.config)
    panel = seed == args.seeds[0]
    if record is not None:
        if panel and not (folder / "panel.npz").exists():  # a record from before the panels: its checkpoint
            state, _ = records.train_to_end(method, folder / "work", f"{name} seed {seed}")
            save_panel(folder, learned_poses(method, state, first_cases(method.dataset("test").arrays), seed, args)[0])
        return record
    clock = records.Clock()
    folder.mkdir(parents=True, exist_ok=True)
    state, train_s = records.train_to_end(method, folder / "work", f"{name} seed {seed}")
    cases = method.dataset("test").arrays
    start = time.perf_counter()
    poses, seconds = learned_poses(method, state, cases, seed, args)
    metrics = {}
    for row in poses:
        metrics |= summary(mtre(method, poses[row], cases), seconds[row], row)
    record = records.make(method=name, variant=FOLDERS[name], seed=seed, settings=to_dict(method.config),
                          metrics=metrics, clock=clock,
                          timings={"train_s": train_s, "eval_s": time.perf_counter() - start},
                          data={"n_train": args.n_train, "n_test": len(cases["xray"])})
    records.save(record, folder)
    if panel:
        save_panel(folder, poses)
    jax.clear_caches()
    print(f"{name} seed {seed}: " + ", ".join(f"{ROWS[row]} median {metrics[row + '_p50']:.2f} mm, GFR "
                                             f"{metrics[row + '_gfr']:.1f} %" for row in poses), file=sys.stderr)
    return records.load(folder)


def write_panels(args, panels: Path) -> list[Path]:
    """panels/<subject>_<row>.png: the panel cases' X-rays (rows: views) with the edges of the DRR at each row's
    pose (and at the true pose) in green; the case's mTRE above it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kfjax.cli.register import overlay
    from kfjax.physics import drr

    folder = settings_folder(args)
    method = build(args.seeds[0], args)
    cases = first_cases(method.dataset("test").arrays)
    poses = {}
    for name in ("optimisation", f"point2-s{args.seeds[0]}", f"regression-s{args.seeds[0]}"):
        poses |= dict(np.load(folder / name / "panel.npz"))
    poses["truth"] = cases["gt_transform"]
    s, render = method.subject, drr.make_renderer(method.camera)
    panels.mkdir(parents=True, exist_ok=True)
    written = []
    for row, label in ({"truth": "true pose"} | ROWS).items():
        if row not in poses:  # the clean-target row has other X-rays: no panel
            continue
        errors = mtre(method, poses[row], cases)
        fig, axes = plt.subplots(len(method.extrinsics), PANEL_CASES, figsize=(2.6 * PANEL_CASES, 5.4), squeeze=False)
        for k in range(PANEL_CASES):
            images = np.asarray(render(s.volume, s.affine, method.extrinsics @ poses[row][k]))
            for v, ax in enumerate(axes[:, k]):
                ax.imshow(overlay(np.asarray(cases["xray"][k][v]), images[v]))
                ax.set_xticks([]), ax.set_yticks([])
            axes[0, k].set_title(f"case {k}: mTRE {errors[k]:.1f} mm", fontsize=9)
        fig.suptitle(f"{label} ({args.subject} CT; green: DRR edges at the pose)", fontsize=10)
        fig.tight_layout()
        path = panels / f"{args.subject}_{row}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def table(optimisation: dict, runs: list[dict], regressions: list[dict], clean: dict) -> str:
    """The README table, paired tests and footer from the records (optimisation, point2 runs, pose-regression
    runs, optimisation without the domain shift)."""
    def group(row):
        return {"regression": regressions, "opt_clean": [clean]}.get(row, runs if row in LEARNED else [optimisation])

    def values(row, key):
        return [r["metrics"][f"{row}_{key}"] for r in group(row)]

    lines = ["| method | mTRE 50th (mm) | mTRE 95th (mm) | gross failures (%) | time per case (s) |",
             "|---|---|---|---|---|"]
    for row, label in ROWS.items():
        seconds = "" if row == "initial" else records.cell(values(row, "s"), 3)
        lines.append(f"| {label} | {records.cell(values(row, 'p50'))} | {records.cell(values(row, 'p95'))} | "
                     f"{records.cell(values(row, 'gfr'), 1)} | {seconds} |")
    lines += ["", "Paired differences over seeds (POINT² + optimisation − POINT²; POINT² − POINT; POINT² − "
              "pose regression):", ""]
    for a, b in (("point2_opt", "point2"), ("point2", "point"), ("point2", "regression")):
        for key, unit in (("p50", "mm"), ("p95", "mm"), ("gfr", "%")):
            pair = records.paired({r["seed"]: r["metrics"][f"{a}_{key}"] for r in group(a)},
                                  {r["seed"]: r["metrics"][f"{b}_{key}"] for r in group(b)})
            lines.append(f"- {ROWS[a]} − {ROWS[b]}, {key}: {records.paired_cell(pair, 2, unit)}")
    opt = optimisation["metrics"]
    lines += ["", "Optimisation only is deterministic (one run): " + ", ".join(
        f"{k} {'+' if d >= 0 else ''}{d:.2f}" for k, d in (
            ("POINT² + optimisation − optimisation, 50th (mm, mean over seeds)",
             float(np.mean(values("point2_opt", "p50"))) - opt["opt_p50"]),
            ("GFR (%)", float(np.mean(values("point2_opt", "gfr"))) - opt["opt_gfr"]))) + "."]
    lines += ["", renders_line(optimisation, runs)]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    lines += ["", f"Settings (from the run records): {records.describe(runs, 'data.n_test')} test cases, "
              f"{records.describe(runs, 'settings.data.n_train')} training cases at "
              f"{records.describe(runs, 'settings.data.size')}² ({records.describe(runs, 'settings.data.subject')} "
              f"subject, views {records.describe(runs, 'settings.data.pair')}), "
              f"{records.describe(runs, 'settings.train.steps')} steps of "
              f"{records.describe(runs, 'settings.data.batch_size')} cases; seeds {seeds}; mean ± sample std over "
              "seeds, paired t-tests across seeds.", "", PAPER, "",
              records.environment_summary([optimisation, clean, *runs, *regressions])]
    return "\n".join(lines)


def renders_line(optimisation: dict, runs: list[dict]) -> str:
    """DRRs rendered inside the intensity optimisation per case (one per view per Adam step, forward and gradient)
    and renders per second, from the optimisation record and the point2 runs' refinement times."""
    from kfjax.data.registration_cases import PAIRS

    views = len(PAIRS[optimisation["settings"]["cases"]["pair"]])
    start = views * sum(int(level[1]) for level in optimisation["settings"]["levels"])
    refine = views * sum(int(level[1]) for level in REFINE_LEVELS)
    refine_s = float(np.mean([r["metrics"]["point2_opt_s"] - r["metrics"]["point2_s"] for r in runs]))
    return (f"DRRs inside the optimisation (one per view per Adam step, forward and gradient, at each level's "
            f"detector size): {start} per case from the start, {start / optimisation['metrics']['opt_s']:.0f} "
            f"renders/s on this CPU; {refine} per case in the refinement from POINT², {refine / refine_s:.0f} "
            "renders/s.")


def benchmark_arguments(p: argparse.ArgumentParser) -> None:
    """The options that name a benchmark setting and its runs (shared with user_path.py)."""
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--subject", default="chest", choices=["chest", "head", "phantom"])
    p.add_argument("--size", type=int, default=64, help="detector pixels per side")
    p.add_argument("--n-train", type=int, default=256, help="training cases")
    p.add_argument("--n-test", type=int, default=64, help="test cases (case seed 0)")
    p.add_argument("--steps", type=int, default=1500, help="training steps per seed")
    p.add_argument("--runs", help="folder of the runs (default: runs/ next to this script)")
    p.add_argument("--readme", default=str(HERE / "README.md"), help="file that --write rewrites")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchmark_arguments(p)
    p.add_argument("--write", action="store_true", help="replace the results section of the README")
    args = p.parse_args()
    from kfjax.runtime import setup_jax

    setup_jax()
    optimisation = run_optimisation(args)
    runs = [run_seed(seed, args) for seed in args.seeds]
    regressions = [run_seed(seed, args, "pose_regression") for seed in args.seeds]
    text = table(optimisation, runs, regressions, run_clean_optimisation(args))
    print(text)
    if args.write:
        records.write_section(args.readme, "results" if args.subject == "chest" else f"results_{args.subject}", text)
        for path in write_panels(args, Path(args.readme).parent / "panels"):
            print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
