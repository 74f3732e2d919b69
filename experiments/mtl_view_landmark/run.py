"""Multitask view classification + landmark detection (MGCN_R) vs single-task nets vs the simulated human, on
procedural abdominal-ultrasound-like images (CPU scale). methods.md §3.

Runs (`kfjax train mtl_view_landmark --set model.variant=...`): STL = `view_only` (the view classifier
alone), SFCN = `landmark_only` (the landmark branch alone), MGCN_R = `mtl` (both heads, GCN decoder,
coordinate and adversarial terms), optionally `mtl_noadv` (MTL without the adversarial term) and
`mtl_nogcn` (plain 3x3 convolutions in the decoder). Every run is scored by the method's own `eval_step`
through `kfjax.train.loop.evaluate` on the test split. The "human" row scores the simulated annotation of
the same test images (`human_view`, `human_landmarks`) with the same functions.

    python experiments/mtl_view_landmark/run.py --write                       # the README's tables (CPU)
    python experiments/mtl_view_landmark/run.py --steps 20000 --batch 32 --size 256 --kernel 15 \\
        --channels 64,128,256,512 --n-train 20000 --n-test 2000 --write       # paper-like scale, a GPU

Each (variant, seed) run saves `record.json` and `panel.npz` (predictions on the panel cases) in
`runs/steps<N>-s<size>/<variant>-s<seed>/` (checkpoints in `work/`, not kept). Finished runs are reused.
Tables, paired tests and the footer are built from the records only; `--write` puts them into README.md and
the panels into `panels/`.
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

VARIANTS = ["view_only", "landmark_only", "mtl", "mtl_noadv", "mtl_nogcn"]
LABELS = {"human": "human (simulated annotator)", "view_only": "STL (view classifier alone)",
          "landmark_only": "SFCN (landmark branch alone)", "mtl": "MGCN_R (multitask, GCN, coord + adversarial)",
          "mtl_noadv": "MTL without the adversarial term", "mtl_nogcn": "MTL with plain 3x3 decoder convs"}
EXTRA = {"view_only": ["model.variant=view_only"], "landmark_only": ["model.variant=landmark_only"],
         "mtl": ["model.variant=mtl"], "mtl_noadv": ["model.variant=mtl", "loss.adv_weight=0"],
         "mtl_nogcn": ["model.variant=mtl", "model.gcn=false"]}
PANEL_CASES = (0, 1, 2, 3, 4, 5)  # test rows shown in each panel
N_TRAIN = 660  # simulated training images by default (60 per view)
PAPER = ("Paper (Xu et al., MICCAI 2018; 187,219 real abdominal US images; numbers as quoted in the talk): view "
         "accuracy MTL 85.29 %, STL 81.22 %, human (inter-expert agreement) 78.87 %; landmark / measurement errors: "
         "MGCN_R below SFCN and near the inter-user variability (per-measurement mm values not verified here); "
         "model size 539 MB for separate networks vs 100 MB for the multitask net.")


def run_root(args) -> Path:
    root = Path(args.runs) if args.runs else HERE / "runs"
    return root / (f"steps{args.steps}-s{args.size}" + (f"-n{args.n_train}" if args.n_train != N_TRAIN else ""))


def build(variant: str, seed: int, args):
    from kfjax.methods import registry

    sets = [f"seed={seed}", f"data.size={args.size}", f"data.n_train={args.n_train}", f"data.n_val={args.n_test}",
            f"data.batch_size={args.batch}", f"model.channels={args.channels}", f"model.kernel={args.kernel}",
            f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}", "train.log_every=50"]
    return registry.build("mtl_view_landmark", overrides=sets + EXTRA[variant])


def run_trained(variant: str, seed: int, args) -> dict:
    """Train one variant with one seed (or reuse its record), score the test split, save the panel cases."""
    import jax

    from kfjax.config import to_dict
    from kfjax.train.loop import evaluate

    method = build(variant, seed, args)
    folder = run_root(args) / f"{variant}-s{seed}"
    record = records.finished_run(folder, method.config)
    if record is not None:
        return record
    clock = records.Clock()
    folder.mkdir(parents=True, exist_ok=True)
    state, train_s = records.train_to_end(method, folder / "work", f"{variant} seed {seed}")
    timings = {"train_s": train_s}
    start = time.perf_counter()
    metrics = evaluate(method, state, split="test")
    timings["eval_s"] = time.perf_counter() - start
    metrics["params"] = method.parameter_count()
    test = method.dataset("test")
    cases = [c for c in PANEL_CASES if c < len(test)]
    out = jax.jit(method.predict)(state, test[np.asarray(cases)])
    np.savez(folder / "panel.npz", **{k: np.asarray(v) for k, v in out.items() if k != "heatmaps"})
    record = records.make(method="mtl_view_landmark", variant=variant, seed=seed, settings=to_dict(method.config),
                          metrics=metrics, clock=clock, timings=timings, panel_cases=cases,
                          data={"n_train": len(method.dataset("train")), "n_test": len(test)})
    records.save(record, folder)
    jax.clear_caches()
    print(f"{variant} seed {seed}: " + ", ".join(f"{k} {metrics[k]:.3f}" for k in
          ("view_accuracy", "landmark_mm", "length_mm") if k in metrics) + f" ({record['wall_s']:.0f} s)",
          file=sys.stderr, flush=True)
    return records.load(folder)


def human_record(args) -> dict:
    """The simulated annotator on the test split, scored with the method's `landmark_scores`."""
    from kfjax.config import to_dict
    from kfjax.data import ultrasound as us
    from kfjax.methods.mtl_view_landmark import landmark_scores

    folder = run_root(args) / "human"
    method = build("mtl", 0, args)
    settings = {"data": to_dict(method.config.data), "confusion": us.HUMAN_CONFUSION, "slip": us.HUMAN_SLIP,
                "tangent_sigma_px": us.HUMAN_TANGENT_SIGMA_PX, "normal_sigma_px": us.HUMAN_NORMAL_SIGMA_PX}
    if records.exists(folder):
        record = records.load(folder)
        if record["settings"] == records._json_safe(settings):
            return record
    clock = records.Clock()
    t = method.dataset("test").arrays
    scores = landmark_scores(t["human_landmarks"], t["landmarks"], t["landmark_mask"], t["spacing"])
    metrics = {k: float(np.nanmean(np.asarray(v))) for k, v in scores.items()}
    metrics["view_accuracy"] = float(np.mean(t["human_view"] == t["view"]))
    record = records.make(method="human", variant="human", seed=None, settings=settings, metrics=metrics, clock=clock,
                          data={"n_test": len(t["view"])})
    records.save(record, folder)
    return records.load(folder)


# ---------------------------------------------------------------- tables (from records only)
def _by_seed(runs, variant, key):
    return {r["seed"]: r["metrics"].get(key) for r in runs if r["variant"] == variant}


def _values(runs, variant, key, scale=1.0):
    return [r["metrics"][key] * scale for r in runs if r["variant"] == variant and key in r["metrics"]]


def _present(runs, variants):
    return [v for v in variants if any(r["variant"] == v for r in runs)]


def view_table(runs) -> list[str]:
    lines = ["| method | seeds | view accuracy (%) | paper (%) |", "|---|---|---|---|"]
    paper = {"mtl": "85.29", "view_only": "81.22", "human": "78.87", "mtl_noadv": "", "mtl_nogcn": ""}
    for v in _present(runs, ["human", "view_only", "mtl", "mtl_noadv", "mtl_nogcn"]):
        n = len(_values(runs, v, "view_accuracy"))
        lines.append(f"| {LABELS[v]} | {n if v != 'human' else '-'} | {records.cell(_values(runs, v, 'view_accuracy', 100), 2)}"
                     f" | {paper[v]} |")
    return lines


def landmark_table(runs) -> list[str]:
    from kfjax.data.ultrasound import MEASUREMENTS

    names = [m[0] for m in MEASUREMENTS]
    head = "| method | seeds | landmark error (mm) | length error (mm) | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (4 + len(names))]
    for v in _present(runs, ["human", "landmark_only", "mtl", "mtl_noadv", "mtl_nogcn"]):
        cells = [records.cell(_values(runs, v, k), 2) for k in ("landmark_mm", "length_mm")]
        cells += [records.cell(_values(runs, v, f"length_mm/{n.replace(' ', '_')}"), 2) for n in names]
        n = len(_values(runs, v, "landmark_mm"))
        lines.append(f"| {LABELS[v]} | {n if v != 'human' else '-'} | " + " | ".join(cells) + " |")
    return lines


def size_table(runs) -> list[str]:
    counts = {v: records.describe([r for r in runs if r["variant"] == v], "metrics.params")
              for v in _present(runs, ["view_only", "landmark_only", "mtl"])}
    lines = ["| network | parameters |", "|---|---|"] + [f"| {LABELS[v]} | {c} |" for v, c in counts.items()]
    if {"view_only", "landmark_only", "mtl"} <= set(counts):
        two = int(counts["view_only"]) + int(counts["landmark_only"])
        lines.append(f"| STL + SFCN (two single-task nets) | {two} ({two / int(counts['mtl']):.2f}× the multitask net) |")
    return lines


def comparisons(runs) -> list[str]:
    out = []
    acc = records.paired(_by_seed(runs, "mtl", "view_accuracy"), _by_seed(runs, "view_only", "view_accuracy"))
    if acc.n:
        acc = records.paired({s: 100 * v for s, v in _by_seed(runs, "mtl", "view_accuracy").items()},
                             {s: 100 * v for s, v in _by_seed(runs, "view_only", "view_accuracy").items()})
        out.append(f"- view accuracy, MGCN_R − STL: {records.paired_cell(acc, 2, 'points')}; seeds {list(acc.seeds)}")
    for other in ("landmark_only", "mtl_noadv", "mtl_nogcn"):
        for key, what in (("landmark_mm", "landmark error"), ("length_mm", "length error")):
            d = records.paired(_by_seed(runs, "mtl", key), _by_seed(runs, other, key))
            if d.n:
                out.append(f"- {what}, MGCN_R − {LABELS[other]}: {records.paired_cell(d, 2, 'mm')}")
    return out


def reading(runs) -> list[str]:
    """What the tables say about the paper's claims, in sentences whose numbers come from the records."""
    lines = []
    human = next((r["metrics"] for r in runs if r["variant"] == "human"), None)
    mean = lambda v, k: records.mean_std(_values(runs, v, k))[0]  # noqa: E731
    if _values(runs, "mtl", "view_accuracy") and _values(runs, "view_only", "view_accuracy") and human:
        mtl, stl, hum = mean("mtl", "view_accuracy"), mean("view_only", "view_accuracy"), human["view_accuracy"]
        order = mtl > stl > hum
        lines.append(f"- View accuracy: MGCN_R {100 * mtl:.2f} %, STL {100 * stl:.2f} %, human {100 * hum:.2f} %. "
                     f"The paper's ordering MTL > STL > human {'appears' if order else 'does not appear'} here "
                     "(in the means; see the paired test for whether MTL − STL exceeds the seed spread).")
    chance = [f"{r['variant']} seed {r['seed']}" for r in runs if r["variant"] != "human"
              and r["metrics"].get("view_accuracy", 1.0) <= 1.0 / 11 + 0.01]
    if chance:
        lines.append(f"- At chance (view accuracy 1/11: the classifier collapsed to one class): {', '.join(chance)}. "
                     "Per-seed view accuracies: " + "; ".join(
                         f"{v} {[round(100 * x, 1) for x in _values(runs, v, 'view_accuracy')]}"
                         for v in _present(runs, ["view_only", "mtl", "mtl_noadv", "mtl_nogcn"])) + " %.")
    if _values(runs, "mtl", "length_mm") and _values(runs, "landmark_only", "length_mm") and human:
        m, s, h = mean("mtl", "length_mm"), mean("landmark_only", "length_mm"), human["length_mm"]
        lm, ls, lh = mean("mtl", "landmark_mm"), mean("landmark_only", "landmark_mm"), human["landmark_mm"]
        lines.append(f"- Landmarks: MGCN_R {lm:.2f} mm vs SFCN {ls:.2f} mm vs human {lh:.2f} mm; lengths "
                     f"{m:.2f} vs {s:.2f} vs {h:.2f} mm. MGCN_R below SFCN: "
                     f"{'yes' if lm < ls and m < s else 'no'} (landmarks, lengths); MGCN_R within 1.5x of the "
                     f"human: {'yes' if lm < 1.5 * lh else 'no'}.")
    trained = [r for r in runs if r["variant"] != "human"]
    if human and trained and any(r["metrics"].get("view_accuracy", 0.0) < human["view_accuracy"] for r in trained):
        steps, batch = trained[0]["settings"]["train"]["steps"], trained[0]["settings"]["data"]["batch_size"]
        epochs = steps * batch / trained[0]["data"]["n_train"]
        above = [r for r in trained if r["metrics"].get("landmark_mm", 0.0) > human["landmark_mm"]]
        landmarks = " and landmark errors above it" if above else " (the landmark errors are already below it)"
        lines.append(f"- Why the paper's ordering can fail here: the networks are far from converged at this budget "
                     f"({steps} steps of {batch} images, {epochs:.1f} epochs, from scratch): view accuracies below "
                     f"the simulated human's{landmarks}, and the seed spread is as large as the "
                     "gaps. The paper compares converged networks; a longer run (the GPU command above) is the test.")
    return lines


def footer(runs) -> str:
    trained = [r for r in runs if r["variant"] != "human"]
    d = lambda path: records.describe(trained, path)  # noqa: E731
    parts = [
        "All images, labels and annotations are procedural (simulated) by `kfjax.data.ultrasound`: a sector fan, "
        "smooth random organ shapes, compounded Rayleigh speckle, log compression, shadows behind bright "
        "reflectors, depth gain; nothing here is a real ultrasound image or a real annotator. The human rows "
        "are the simulated annotator (view confused with a similar view at a chosen rate, landmarks moved along "
        "the boundary by a chosen σ): their values follow from those settings, not from measurement.",
        f"Data: {d('settings.data.size')}² images, {d('data.n_train')} training and {d('data.n_test')} test images "
        f"(11 views, balanced; simulation seed {d('settings.data.data_seed')} for every run). Training: "
        f"{d('settings.train.steps')} steps of {d('settings.data.batch_size')} images, Adam "
        f"{d('settings.optim.lr')} ({d('settings.optim.schedule')}), encoder channels {d('settings.model.channels')}, "
        f"GCN k = {d('settings.model.kernel')}, λ_h {d('settings.loss.heatmap_weight')}, λ_c "
        f"{d('settings.loss.coord_weight')}, λ_adv {d('settings.loss.adv_weight')} (0 in the no-adversarial row), "
        f"Gaussian σ {d('settings.loss.sigma')} px.",
        f"Seeds {sorted({r['seed'] for r in trained})} (initialisation and batch order; the images are the same); "
        "mean ± sample std over seeds; landmark error = mean over the true view's landmarks per image, length error "
        "= mean |predicted − true length| over the true view's pairs, averaged over the test images that have them.",
        f"Sizes chosen for a shared 2-core CPU: the {len(trained)} training run(s) here took "
        f"{sum(r['wall_s'] for r in trained) / 60:.0f} min in total, compilation included (see the load "
        "average below); the paper trains a ResNet-50-size net on 187,219 images at 256².",
    ]
    return " ".join(parts) + "\n\n" + PAPER + "\n\n" + records.environment_summary(runs)


def tables(runs) -> str:
    lines = ["View classification (test split):", "", *view_table(runs), "", "Landmarks and length measurements "
             "(mm, test split; per-measurement columns: |length error|):", "", *landmark_table(runs), "",
             "Model size (network parameters; the discriminator is not counted):", "", *size_table(runs)]
    compare = comparisons(runs)
    if compare:
        lines += ["", "Paired over seeds (per-seed difference, mean ± sample std; two-sided paired t-test):", "", *compare]
    read = reading(runs)
    if read:
        lines += ["", "Reading (generated from the same records):", "", *read]
    return "\n".join(lines + ["", footer(runs)])


def panels(runs, args, out_dir: Path) -> list[str]:
    """One PNG per method: panel cases with true (red +) and predicted (cyan x) landmarks and the views; named
    `<variant>.png`, or `<section>_<variant>.png` for another README section than "results"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kfjax.data.ultrasound import VIEWS

    test = build("mtl", 0, args).dataset("test")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for variant in _present(runs, VARIANTS):
        found = sorted((r for r in runs if r["variant"] == variant and (Path(r["_folder"]) / "panel.npz").is_file()),
                       key=lambda r: r["seed"])
        if not found:
            continue
        pred = np.load(Path(found[0]["_folder"]) / "panel.npz")
        cases = found[0]["panel_cases"]
        batch = test[np.asarray(cases)]
        fig, axes = plt.subplots(1, len(cases), figsize=(2.2 * len(cases), 2.6), squeeze=False)
        for i, ax in enumerate(axes[0]):
            ax.imshow(batch["image"][i, ..., 0], cmap="gray", vmin=0, vmax=1)
            m = batch["landmark_mask"][i] > 0
            ax.plot(batch["landmarks"][i, m, 1], batch["landmarks"][i, m, 0], "r+", ms=8)
            if "landmarks" in pred:
                ax.plot(pred["landmarks"][i, m, 1], pred["landmarks"][i, m, 0], "cx", ms=6)
            title = f"true: {VIEWS[batch['view'][i]]}"
            if "view" in pred:
                title += f"\npred: {VIEWS[int(pred['view'][i])]}"
            ax.set_title(title, fontsize=7)
            ax.set_xticks([]), ax.set_yticks([])
        fig.suptitle(f"{LABELS[variant]} (seed {found[0]['seed']}); simulated images", fontsize=8)
        fig.tight_layout()
        name = variant if args.section == "results" else f"{args.section}_{variant}"
        fig.savefig(out_dir / f"{name}.png", dpi=80)
        plt.close(fig)
        written.append(f"{out_dir.name}/{name}.png")
    return written


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300, help="training steps per run")
    p.add_argument("--batch", type=int, default=16, help="images per step")
    p.add_argument("--size", type=int, default=48, help="image side in pixels")
    p.add_argument("--n-train", type=int, default=N_TRAIN, help="simulated training images")
    p.add_argument("--n-test", type=int, default=220, help="simulated test images")
    p.add_argument("--channels", default="8,16,32,64", help="encoder channels per level")
    p.add_argument("--kernel", type=int, default=7, help="GCN kernel k")
    p.add_argument("--variants", nargs="+", default=["view_only", "landmark_only", "mtl"], choices=VARIANTS)
    p.add_argument("--runs", help="folder of the runs (default: runs/ next to this script)")
    p.add_argument("--readme", default=str(HERE / "README.md"), help="file that --write rewrites (panels/ beside it)")
    p.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    p.add_argument("--write", action="store_true", help="replace the tables in the README, write panels/")
    p.add_argument("--section", default="results", help="README section that --write replaces")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from kfjax.runtime import setup_jax

    setup_jax()
    runs = [human_record(args)]
    for seed in args.seeds:  # seed-major: every variant of seed 0 first
        for variant in args.variants:
            folder = run_root(args) / f"{variant}-s{seed}"
            if args.table_only:
                if records.exists(folder):
                    runs.append(records.load(folder))
            else:
                runs.append(run_trained(variant, seed, args))
    text = tables(runs)
    print(text)
    if args.write:
        readme = Path(args.readme)
        names = panels(runs, args, readme.parent / "panels")
        text += "\n\n" + " ".join(f"![{Path(n).stem}]({n})" for n in names)
        records.write_section(readme, args.section, text)


if __name__ == "__main__":
    main()
