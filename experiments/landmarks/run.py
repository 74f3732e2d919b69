"""Landmark detection on chest-CT DRRs: heatmap I2I vs supervised action map (SAM) and classifier (SAC) vs a
deep-Q agent (DRL), on the normal and the hard ("OB"-like) test set (methods.md §5, the talk's table; CPU scale).

Every model is trained through the registry and the train loop (`kfjax train NAME` does the same):
I2I = `landmark_i2i` (DI2IN heatmaps), SAM = `sac` with `model.variant=sam` (DI2IN action map + greedy walk),
SAC = `sac` with `model.variant=sac` (patch classifier + greedy walk), DRL = `dqn_landmark` (one deep-Q agent
per landmark, as Ghesu's). Training images: the 400 `drr_landmarks("train")` DRRs (64², 6 landmarks);
scores on the 100 normal test DRRs and the 100 hard ones (larger poses, collimation, a metal-like occluder,
stronger noise). Per landmark: mean / 50 % / 80 % error in mm over the images where it is visible, and the
failure rate (error > `--fail-mm`); each statistic per seed, then mean ± std over seeds; paired t-tests
across seeds of SAC − I2I and SAM − I2I (mean error over all visible landmarks).

    python experiments/landmarks/run.py --write                    # the README's table (CPU scale, ~30 min)
    python experiments/landmarks/run.py --steps 5000 --size 128 --write    # closer to paper scale, a GPU

Each (method, seed) run saves `record.json` (settings, times, machine, versions, metrics), the predictions
of the panel cases (`panel.npy`) and, locally, all test predictions (`pred_test.npy`, `pred_hard.npy`,
(100, 6, 2) row/col px, NaN where a method gives none) in `runs/steps<N>-s<size>/<method>-s<seed>/`
(checkpoints in `work/`; only record.json and panel.npy are kept in git). Finished runs are reused; the
tables, tests and panels are built from the saved records and predictions only.
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

METHODS = ["i2i", "i2i_long", "drl", "sam", "sac"]
LABELS = {"i2i": "I2I (DI2IN heatmaps)", "i2i_long": "I2I, 3× the steps (its default 600)",
          "drl": "DRL (deep-Q agent per landmark)",
          "sam": "SAM (DI2IN action map + walk)", "sac": "SAC (patch classifier + walk)"}
REGISTRY = {"i2i": "landmark_i2i", "i2i_long": "landmark_i2i", "drl": "dqn_landmark", "sam": "sac", "sac": "sac"}
SETS = {"test": False, "hard": True}  # name -> drr_landmarks(hard=...)
LONG = 3  # i2i_long: I2I with this many times the steps (its own default recipe is 600)
PANEL_CASES = (0, 1, 2)  # test rows shown in the panels (normal and hard set)
TALK = ("The talk's table (its own data: 2-D landmarks lmk1, lmk2 on a normal and a hard \"OB\" set; mm): on the OB "
        "set, lmk1 mean error 14.94 for SAC vs 30.07 for I2I. The other cells (PBT, DRL, SAM, 50 %/80 %, lmk2, the "
        "normal set) are not in methods.md §5 or the issue, so they are not quoted here.")


# ---------------------------------------------------------------- what each run is
def run_root(args) -> Path:
    root = Path(args.runs) if args.runs else HERE / "runs"
    return root / f"steps{args.steps}-s{args.size}"


def run_folder(name: str, seed: int, args) -> Path:
    return run_root(args) / f"{name}-s{seed}"


def overrides(name: str, seed: int, args, landmark: int | None = None) -> list[str]:
    """CPU-scale settings of each method (the same DI2IN for I2I and SAM; the same patch for SAC and DRL)."""
    steps = LONG * args.steps if name == "i2i_long" else args.steps
    common = [f"seed={seed}", "data.source=drr", f"data.size={args.size}", f"data.batch_size={args.batch}",
              f"train.steps={steps}", f"train.checkpoint_every={steps}", "train.log_every=50"]
    walk = f"walk.max_steps={2 * args.size}"
    return common + {
        "i2i": [f"model.channels={args.channels}"],
        "i2i_long": [f"model.channels={args.channels}"],
        "sam": ["model.variant=sam", f"model.channels={args.channels}", walk, "walk.starts=2"],
        "sac": ["model.variant=sac", "model.channels=8,16,32", f"model.patch={args.patch}", "loss.samples=16",
                walk, "walk.starts=1", "walk.eval_grid=4"],
        "drl": [f"data.landmark={landmark}", f"model.patch={args.patch}"],
    }[name]


def build(name: str, seed: int, args, landmark: int | None = None, hard: bool = False):
    from kfjax.methods import registry

    extra = ["data.hard_test=true"] if hard else []
    return registry.build(REGISTRY[name], overrides=overrides(name, seed, args, landmark) + extra)


def truth(hard: bool, size: int) -> dict[str, np.ndarray]:
    """landmarks (N, K, 2) px, visible (N, K), spacing (N, 2) mm/px and images of a test set."""
    from kfjax.data.landmarks import drr_landmarks

    return drr_landmarks("test", size=size, hard=hard, seed=0).arrays


# ---------------------------------------------------------------- training and predicting
def predict_all(method, state, data) -> tuple[np.ndarray, float]:
    """`predict(...)["landmarks"]` over a whole data set (padded to whole batches), and ms per image."""
    import jax

    from kfjax.train.mesh import make_mesh, shard_batch

    mesh, batch = make_mesh(), method.config.data.batch_size
    step = jax.jit(method.predict)
    n = len(data)
    rows = np.concatenate([np.arange(n), np.zeros((-n) % batch, int)])
    jax.block_until_ready(step(state, shard_batch(data[rows[:batch]], mesh)))  # compile
    start = time.perf_counter()
    out = [np.asarray(step(state, shard_batch(data[rows[i:i + batch]], mesh))["landmarks"])
           for i in range(0, len(rows), batch)]
    ms = 1e3 * (time.perf_counter() - start) / len(rows)
    return np.concatenate(out)[:n].astype(np.float64), ms


def train_one(method, workdir: Path):
    return records.train_to_end(method, workdir, str(workdir))[0]


def run_method(name: str, seed: int, args) -> dict:
    """Train one method with one seed (DRL: one agent per landmark) or reuse its record; test predictions."""
    import jax

    from kfjax.config import to_dict

    folder = run_folder(name, seed, args)
    agents = list(range(args.drl_landmarks)) if name == "drl" else [None]
    methods = [build(name, seed, args, k) for k in agents]
    settings = {"agents" if name == "drl" else "config": [to_dict(m.config) for m in methods]}
    if records.exists(folder):
        record = records.load(folder)
        if record["settings"] != records._json_safe(settings):
            raise SystemExit(f"{folder} holds a run with other settings; move it away")
        return record
    clock = records.Clock()
    folder.mkdir(parents=True, exist_ok=True)
    k_all = truth(False, args.size)["landmarks"].shape[1]
    timings = {"train_s": 0.0}
    preds = {s: np.full((len(truth(h, args.size)["landmarks"]), k_all, 2), np.nan) for s, h in SETS.items()}
    ms = {s: 0.0 for s in SETS}
    for method, k in zip(methods, agents):
        start = time.perf_counter()
        state = train_one(method, folder / ("work" if k is None else f"work-lmk{k}"))
        timings["train_s"] += time.perf_counter() - start
        for s, hard in SETS.items():
            test = build(name, seed, args, k, hard).dataset("test")
            pred, t = predict_all(method, state, test)
            ms[s] += t
            if k is None:
                preds[s][:] = pred
            else:
                preds[s][:, k] = pred[:, 0]
        jax.clear_caches()
    metrics = {}
    panel_predictions(folder, preds)
    for s, hard in SETS.items():
        np.save(folder / f"pred_{s}.npy", preds[s])
        metrics[s] = scores(preds[s], truth(hard, args.size), args.fail_mm)
        metrics[s]["ms_per_image"] = ms[s]
    record = records.make(method=REGISTRY[name], variant=name, seed=seed, settings=settings, metrics=metrics,
                          clock=clock, timings=timings, data={"n_train": len(methods[0].dataset("train")),
                                                              "landmarks_predicted": agents})
    records.save(record, folder)
    print(f"{name} seed {seed}: mean error {metrics['test']['all']['mean']:.2f} mm (test), "
          f"{metrics['hard']['all']['mean']:.2f} mm (hard) ({record['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    return records.load(folder)


def panel_predictions(folder: Path, preds: dict | None = None) -> np.ndarray:
    """(sets, PANEL_CASES, K, 2) predictions of the panel cases, kept in git as `panel.npy` (the full
    `pred_*.npy` stay local); made from `pred_*.npy` when `preds` is None and panel.npy is missing."""
    path = folder / "panel.npy"
    if preds is None and path.is_file():
        return np.load(path)
    if preds is None:
        preds = {s: np.load(folder / f"pred_{s}.npy") for s in SETS}
    panel = np.stack([preds[s][np.asarray(PANEL_CASES)] for s in SETS])
    np.save(path, panel)
    return panel


def scores(pred: np.ndarray, data: dict, fail_mm: float) -> dict:
    """Per landmark and over all: mean / median / p80 error (mm) over visible landmarks, failure rate."""
    err = np.sqrt(np.sum(((pred - data["landmarks"]) * data["spacing"][:, None]) ** 2, -1))  # (N, K) mm
    visible = data["visible"] > 0
    out = {}
    for key, mask in [("all", visible)] + [(f"lmk{k + 1}", visible[:, k]) for k in range(err.shape[1])]:
        e = err[:, int(key[3:]) - 1][mask] if key != "all" else err[mask]
        done = e[np.isfinite(e)]
        out[key] = {"mean": float(np.mean(done)), "p50": float(np.median(done)), "p80": float(np.percentile(done, 80)),
                    "fail": float(np.mean(done > fail_mm)), "n": int(done.size)} if done.size else {}
    return out


# ---------------------------------------------------------------- tables (from records only)
def _stat(recs, s: str, key: str, stat: str, scale: float = 1.0) -> str:
    return records.cell([records.get(r, f"metrics.{s}.{key}.{stat}", np.nan) * scale for r in recs], 1)


def _by_seed(runs, name: str, s: str, key: str = "all") -> dict:
    return {r["seed"]: records.get(r, f"metrics.{s}.{key}.mean", np.nan) for r in runs if r["variant"] == name}


def _subset_by_seed(runs, name: str, s: str, count: int) -> dict:
    """Mean error over the visible (image, landmark) pairs of lmk1..lmk{count} (DRL's landmarks), per seed."""
    out = {}
    for r in (r for r in runs if r["variant"] == name):
        stats = [records.get(r, f"metrics.{s}.lmk{k + 1}") or {} for k in range(count)]
        n = sum(st.get("n", 0) for st in stats)
        out[r["seed"]] = sum(st["mean"] * st["n"] for st in stats if st) / n if n else np.nan
    return out


def landmark_names() -> tuple[str, ...]:
    from kfjax.data.landmarks import LANDMARK_NAMES

    return LANDMARK_NAMES


def table(runs: list[dict], args) -> str:
    names = landmark_names()
    present = [m for m in METHODS if any(r["variant"] == m for r in runs)]
    group = {m: sorted((r for r in runs if r["variant"] == m), key=lambda r: r["seed"]) for m in present}
    lines = ["All visible landmarks (mm; mean ± std over seeds of each seed's statistic):", "",
             "| method | seeds | test mean | test 50 % | test 80 % | test fail % | hard mean | hard 50 % | hard 80 % | "
             "hard fail % | ms / image (test) | train s |", "|" + "---|" * 12]
    for m in present:
        recs = group[m]
        cells = [_stat(recs, s, "all", st, 100.0 if st == "fail" else 1.0) for s in SETS
                 for st in ("mean", "p50", "p80", "fail")]
        seconds = ", ".join(f"{r['timings']['train_s']:.0f}" for r in recs)
        note = f" (lmk1–{args.drl_landmarks} only)" if m == "drl" and args.drl_landmarks < len(names) else ""
        lines.append(f"| {LABELS[m]}{note} | {len(recs)} | " + " | ".join(cells) +
                     f" | {records.cell([r['metrics']['test']['ms_per_image'] for r in recs], 1)} | {seconds} |")
    lines += ["", "Per landmark, as the talk's table (mm: mean / 50 % / 80 %):", "",
              "| landmark | method | test mean | test 50 % | test 80 % | hard mean | hard 50 % | hard 80 % |",
              "|" + "---|" * 8]
    for k, lname in enumerate(names):
        for m in present:
            recs = [r for r in group[m] if records.get(r, f"metrics.test.lmk{k + 1}.mean") is not None]
            if recs:
                cells = [_stat(recs, s, f"lmk{k + 1}", st) for s in SETS for st in ("mean", "p50", "p80")]
                lines.append(f"| lmk{k + 1} ({lname}) | {LABELS[m].split(' (')[0]} | " + " | ".join(cells) + " |")
    compare = []
    n_drl = args.drl_landmarks
    full = n_drl >= len(names)  # DRL agents for every landmark: compared like the others
    for a in ("sac", "sam", "drl"):
        for s in SETS:
            if (a != "drl" or full) and _by_seed(runs, "i2i_long", s):
                d = records.paired(_by_seed(runs, a, s), _by_seed(runs, "i2i_long", s))
                if d.n:
                    compare.append(f"- {a.upper()} − I2I with {LONG}× the steps, {s} set, mean error, all landmarks: "
                                   f"{records.paired_cell(d, 2, 'mm')}; seeds {list(d.seeds)}")
            if a == "drl" and not full:
                d = records.paired(_subset_by_seed(runs, a, s, n_drl), _subset_by_seed(runs, "i2i", s, n_drl))
                what = f"mean error over lmk1–{n_drl} (DRL's agents)"
            else:
                d, what = records.paired(_by_seed(runs, a, s), _by_seed(runs, "i2i", s)), "mean error, all landmarks"
            if d.n:
                compare.append(f"- {a.upper()} − I2I, {s} set, {what}: {records.paired_cell(d, 2, 'mm')}; "
                               f"seeds {list(d.seeds)}")
        for base in ("i2i", "i2i_long"):
            d = records.paired(_by_seed(runs, a, "hard", "lmk1"), _by_seed(runs, base, "hard", "lmk1"))
            if d.n:
                compare.append(f"- {a.upper()} − {LABELS[base].split(' (')[0]}, hard set, lmk1 ({names[0]}), the "
                               f"talk's cell: {records.paired_cell(d, 2, 'mm')}")
    if compare:
        lines += ["", "Paired over seeds (per-seed difference, negative = lower error than I2I; mean ± sample std, "
                  "two-sided paired t-test, scipy.stats.ttest_rel):", "", *compare]
    read = reading(runs, n_drl, len(names))
    if read:
        lines += ["", "Reading (generated from the same records):", "", *read]
    missing = [m for m in METHODS if m not in present]
    if missing:
        lines += ["", "Not run: " + ", ".join(LABELS[m] for m in missing) + "."]
    return "\n".join(lines + ["", footer(runs, args)])


def reading(runs: list[dict], n_drl: int, n_landmarks: int) -> list[str]:
    """The order of the methods on each set (all landmarks, without DRL unless it has an agent for each of the
    ``n_landmarks``; lmk1..n_drl with it otherwise) and whether the talk's ordering (SAC, SAM <= I2I < DRL)
    appears in the means."""
    lines = []
    full = n_drl >= n_landmarks
    for s in SETS:
        views = [("all landmarks", lambda m: _by_seed(runs, m, s))]
        views += [] if full else [(f"lmk1–{n_drl}", lambda m: _subset_by_seed(runs, m, s, n_drl))]
        for title, values in views:
            names = [m for m in METHODS if m != "drl" or title != "all landmarks" or full]
            means = {m: records.mean_std(list(values(m).values()))[0] for m in names}
            means = {m: v for m, v in means.items() if np.isfinite(v)}
            if len(means) < 2:
                continue
            order = " < ".join(f"{m.upper()} {v:.1f}" for m, v in sorted(means.items(), key=lambda kv: kv[1]))
            text = f"- {s} set, {title}, mean error over seeds (mm): {order}."
            for base in ("i2i", "i2i_long"):
                if {"sac", "sam", base, "drl"} <= set(means):
                    talk = max(means["sac"], means["sam"]) <= means[base] < means["drl"]
                    text += (f" With {base.upper()} as I2I the talk's ordering SAC, SAM ≤ I2I < DRL "
                             f"{'appears' if talk else 'does not appear'}.")
            lines.append(text)
    return lines


def footer(runs: list[dict], args) -> str:
    parts = [
        f"Data: real chest CT (the `chest-ct` source, with its 89-structure label map); simulated: the AP DRRs "
        f"({args.size}², Joseph line integrals), the patient poses (rotation, translation, scaling), Poisson detector "
        f"noise, and on the hard set collimation and a metal-like occluder. Landmarks: label centroids of "
        f"{', '.join(landmark_names())} projected through the same camera (exact truth). Train 400 DRRs, "
        f"normal test 100, hard test 100 (same CT: poses and corruptions differ, never the patient).",
        f"Training: {args.steps} steps of {args.batch} images per method and seed (DRL: per agent; agents for "
        f"lmk1–{args.drl_landmarks}); I2I and SAM share the DI2IN channels {args.channels}; SAC and DRL see "
        f"{args.patch}² patches; walks from 1 (SAC) or 4 (SAM) starts, at most {2 * args.size} steps. "
        f"Failure: error > {args.fail_mm:g} mm (pixel = {pixel_mm(args):.2f} mm at the isocentre). Seeds "
        f"{sorted({r['seed'] for r in runs})}; ms / image: predict over the test set after compilation, batch "
        f"{args.batch}, on a shared CPU. train s: training with compilation.",
    ]
    return " ".join(parts) + "\n\n" + TALK + "\n\n" + records.environment_summary(runs)


def pixel_mm(args) -> float:
    return float(truth(False, args.size)["spacing"][0, 0])


def panels(runs: list[dict], args, out_dir: Path) -> list[str]:
    """One PNG per method: true (green +) and predicted (red x) landmarks on the same normal and hard cases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for m in METHODS:
        found = sorted((r for r in runs if r["variant"] == m), key=lambda r: r["seed"])
        if not found:
            continue
        fig, axes = plt.subplots(2, len(PANEL_CASES), figsize=(2.4 * len(PANEL_CASES), 5.0), squeeze=False)
        for row, (s, hard) in enumerate(SETS.items()):
            data = truth(hard, args.size)
            pred = panel_predictions(Path(found[0]["_folder"]))[row]
            for col, i in enumerate(PANEL_CASES):
                ax = axes[row, col]
                ax.imshow(data["image"][i, ..., 0], cmap="gray", vmin=0, vmax=1)
                vis = data["visible"][i] > 0
                t, p = data["landmarks"][i], pred[col]
                ax.plot(t[vis, 1], t[vis, 0], "g+", ms=7, mew=1.5)
                ax.plot(p[:, 1], p[:, 0], "rx", ms=5, mew=1.2)
                for k in range(len(t)):
                    if np.all(np.isfinite(p[k])) and vis[k]:
                        ax.plot([t[k, 1], p[k, 1]], [t[k, 0], p[k, 0]], "y-", lw=0.6)
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(f"{s} case {i}", fontsize=8)
        fig.suptitle(f"{LABELS[m]} (seed {found[0]['seed']}): true + , predicted x", fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / f"{m}.png", dpi=80)
        plt.close(fig)
        written.append(f"{out_dir.name}/{m}.png")
    return written


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--steps", type=int, default=200, help="training steps per run (DRL: per agent)")
    p.add_argument("--size", type=int, default=64, help="DRR side in pixels")
    p.add_argument("--batch", type=int, default=8, help="images per step")
    p.add_argument("--channels", default="8,16,32,32", help="DI2IN channels of I2I and SAM")
    p.add_argument("--patch", type=int, default=32, help="patch side of SAC and DRL")
    p.add_argument("--drl-landmarks", type=int, help="DRL agents: one for each of lmk1..lmkN (default: every landmark)")
    p.add_argument("--fail-mm", type=float, default=20.0, help="an error above this is a failure (mm)")
    p.add_argument("--runs", help="folder of the runs (default: runs/ next to this script)")
    p.add_argument("--readme", default=str(HERE / "README.md"), help="file that --write rewrites (panels/ beside it)")
    p.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    p.add_argument("--write", action="store_true", help="replace the results section of the README, write panels/")
    args = p.parse_args(argv)
    if args.drl_landmarks is None:
        args.drl_landmarks = len(landmark_names())
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    from kfjax.runtime import setup_jax

    setup_jax()
    runs = []
    for seed in args.seeds:  # seed-major: every method of seed 0 first
        for name in args.methods:
            folder = run_folder(name, seed, args)
            if args.table_only:
                if records.exists(folder):
                    runs.append(records.load(folder))
            else:
                runs.append(run_method(name, seed, args))
    text = table(runs, args)
    print(text)
    if args.write:
        readme = Path(args.readme)
        names = panels(runs, args, readme.parent / "panels")
        text += "\n\n" + " ".join(f"![{Path(n).stem}]({n})" for n in names)
        records.write_section(readme, "results", text)


if __name__ == "__main__":
    main()
