"""DI2IN vs DI2IN-AN (adversarial shape prior) on procedural 3-D organs at two training-set sizes (CPU scale).

methods.md §6. Both variants are `kfjax train di2in_an` on the same cases with the same generator, loss,
optimiser and steps; DI2IN is the run whose pre-training never ends (`adv.pretrain_steps` = `train.steps`:
the critic never moves and the generator update is exactly DI2IN's, a tested property), DI2IN-AN switches
the critic and the adversarial term on after `--pretrain` steps. Every run is scored on the same test cases
(`data.seed` fixed): per case Dice, ASD and HD95 in mm (voxel FIELD_MM / data.size), on all cases and on the
missing-boundary cases (a neighbour of exactly the organ's HU touches it on one side), and on the real chest
CT's liver (one patient, resampled to the same voxel size, covered by sliding windows).

    python experiments/di2in_an/run.py --write                  # the README's table and panels (CPU scale)
    python experiments/di2in_an/run.py --seeds 0 --sizes 8 --size 16 --steps 4 --pretrain 2 \\
        --channels 4,8 --runs runs/di2in_an-smoke --readme runs/di2in_an-smoke/README.md --write   # a smoke run

Each (variant, size, seed) run saves its run record (`record.json`: settings, seed, times, machine, device,
versions, git commit, summary metrics and the per-case values) and the panel cases' predictions
(`panel.npz`) in `runs/<recipe>/<variant>-n<N>-s<seed>/` (checkpoints in `work/`, not kept in git). Finished
runs are reused. The table, paired tests and footer are built from the records only; `--write` puts them
into README.md (section `--section`, default "results") and the per-method panels into `panels/`.
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

VARIANTS = ("di2in", "di2in_an", "di2in_an_hard", "di2in_an_image_hard")
LABELS = {"di2in": "DI2IN", "di2in_an": "DI2IN-AN", "di2in_an_hard": "DI2IN-AN, hard-mask critic",
          "di2in_an_image_hard": "DI2IN-AN, hard-mask critic given the image"}
CRITIC = {"di2in_an_hard": ["model.critic_mask=hard"],  # settings beyond DI2IN-AN's
          "di2in_an_image_hard": ["model.critic_mask=hard", "model.condition=true"]}
ADVERSARIAL = VARIANTS[1:]  # the variants with a critic
PAIRS = [(v, "di2in") for v in ADVERSARIAL] + [("di2in_an_image_hard", "di2in_an_hard")]  # paired tests, a - b
PAPER = {400: (2.38, 2.09), 1000: (2.15, 1.95)}  # training volumes -> ASD mean (mm) DI2IN, DI2IN-AN (the talk)
PANEL_CASES = 3  # the first test cases with a missing boundary shown in the panels
SUMMARY = ("mean", "std", "max", "median")


def recipe(args) -> str:
    return f"s{args.size}-steps{args.steps}-pre{args.pretrain}-c{args.channels.replace(',', '-')}"


def run_folder(variant: str, n_train: int, seed: int, args) -> Path:
    root = Path(args.runs) if args.runs else HERE / "runs"
    return root / recipe(args) / f"{variant}-n{n_train}-s{seed}"


def overrides(variant: str, n_train: int, seed: int, args) -> list[str]:
    pretrain = args.steps if variant == "di2in" else args.pretrain
    return [*CRITIC.get(variant, []), f"seed={seed}", f"data.size={args.size}", f"data.n_train={n_train}",
            f"data.n_test={args.n_test}", f"data.n_val={args.n_val}", f"data.batch_size={args.batch}",
            f"model.channels={args.channels}",
            f"model.critic_channels={args.channels}", f"train.steps={args.steps}", f"adv.pretrain_steps={pretrain}",
            f"adv.weight={args.weight}", f"train.checkpoint_every={args.steps}", "train.log_every=50", *args.set]


def build(variant: str, n_train: int, seed: int, args):
    from kfjax.methods import registry

    return registry.build("di2in_an", overrides=overrides(variant, n_train, seed, args))


def case_scores(method, state) -> dict[str, np.ndarray]:
    """Per test case: dice, asd, hd95 (mm), missing flag; and the predicted masks of the panel cases."""
    import jax

    from kfjax.metrics import average_surface_distance, hausdorff_distance_95

    test = method.dataset("test")
    predict = jax.jit(lambda st, image: method.predict(st, {"image": image})["probability"])
    batch = method.config.data.batch_size
    images = test.arrays["image"]
    pad = (-len(images)) % batch
    padded = np.concatenate([images, np.repeat(images[:1], pad, axis=0)]) if pad else images
    probs = np.concatenate([np.asarray(predict(state, padded[i:i + batch])) for i in range(0, len(padded), batch)])
    pred = probs[: len(images), ..., 0] > 0.5
    label = test.arrays["label"][..., 0] > 0.5
    inter = (pred & label).sum(axis=(1, 2, 3))
    dice = 2.0 * inter / np.maximum(pred.sum(axis=(1, 2, 3)) + label.sum(axis=(1, 2, 3)), 1)
    asd = np.asarray([average_surface_distance(p, t, method.spacing) for p, t in zip(pred, label)])
    hd95 = np.asarray([hausdorff_distance_95(p, t, method.spacing) for p, t in zip(pred, label)])
    missing = test.arrays["missing"] > 0.5
    panel = np.flatnonzero(missing)[:PANEL_CASES]
    return {"dice": dice, "asd": asd, "hd95": hd95, "missing": missing, "panel_cases": panel, "panel": pred[panel]}


def real_scores(method, state) -> dict[str, float]:
    """Dice and ASD (mm) on the real chest CT's liver at the training voxel size, through `method.infer`."""
    from kfjax.data.organs3d import real_liver_case
    from kfjax.io import Volume
    from kfjax.metrics import average_surface_distance

    case = real_liver_case(method.spacing)
    mask = method.infer(state, {"volume": Volume(case["hu"], case["affine"])}, progress=False).array > 0
    label = case["label"]
    dice = 2.0 * (mask & label).sum() / max(mask.sum() + label.sum(), 1)
    return {"real_dice": float(dice), "real_asd": average_surface_distance(mask, label, method.spacing)}


def summary(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """ASD mean/std/max/median (all cases, missing-boundary cases, the others), Dice and HD95 means."""
    out = {}
    subsets = {"": np.ones_like(scores["missing"]), "missing_": scores["missing"], "normal_": ~scores["missing"]}
    for prefix, keep in subsets.items():
        asd = scores["asd"][keep & np.isfinite(scores["asd"])]
        if asd.size:
            stats = {"mean": asd.mean(), "std": asd.std(ddof=1) if asd.size > 1 else np.nan, "max": asd.max(),
                     "median": np.median(asd)}
            out |= {f"{prefix}asd_{k}": float(v) for k, v in stats.items()}
        out[f"{prefix}dice"] = float(scores["dice"][keep].mean())
        out[f"{prefix}asd_failed"] = int((~np.isfinite(scores["asd"][keep])).sum())  # empty predictions
    out["hd95_mean"] = float(np.nanmean(scores["hd95"]))
    return out


LOGGED = ("seg_loss", "d_loss", "g_adv", "adv_pull")  # the training log's last values kept in each record


def run_one(variant: str, n_train: int, seed: int, args) -> dict:
    """Train one (variant, size, seed) or reuse its record; score the test cases and the real CT."""
    import jax

    from kfjax.config import to_dict

    method = build(variant, n_train, seed, args)
    folder = run_folder(variant, n_train, seed, args)
    record = records.finished_run(folder, method.config)
    if record is not None:
        return record
    clock = records.Clock()
    folder.mkdir(parents=True, exist_ok=True)
    state, train_s = records.train_to_end(method, folder / "work", f"{variant} n={n_train} seed {seed}")
    timings = {"train_s": train_s}
    start = time.perf_counter()
    scores = case_scores(method, state)
    metrics = summary(scores)
    if not args.no_real:
        metrics |= real_scores(method, state)
    timings["eval_s"] = time.perf_counter() - start
    np.savez_compressed(folder / "panel.npz", cases=scores["panel_cases"], pred=scores["panel"])
    per_case = {k: scores[k].tolist() for k in ("dice", "asd", "hd95", "missing")}
    record = records.make(method="di2in_an", variant=variant, seed=seed, settings=to_dict(method.config),
                          metrics=metrics, clock=clock, timings=timings,
                          data={"n_train": n_train, "n_test": len(scores["asd"]),
                                "n_missing": int(scores["missing"].sum()), "spacing_mm": method.spacing},
                          per_case=per_case, train_log=records.last_train_log(folder / "work", LOGGED))
    records.save(record, folder)
    jax.clear_caches()
    print(f"{variant} n={n_train} seed {seed}: ASD {metrics['asd_mean']:.2f} mm, Dice {metrics['dice']:.3f} "
          f"({record['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    return records.load(folder)


# ---------------------------------------------------------------- the table, from records only
def _by_seed(runs, variant, n_train, key) -> dict:
    return {r["seed"]: r["metrics"].get(key) for r in runs
            if r["variant"] == variant and r["data"]["n_train"] == n_train}


def _cell(runs, variant, n_train, key, digits=2) -> str:
    return records.cell(list(_by_seed(runs, variant, n_train, key).values()), digits)


def table(runs: list[dict]) -> str:
    sizes = sorted({r["data"]["n_train"] for r in runs})
    head = ("| training cases | method | ASD mean | ASD std | ASD max | ASD median | Dice | missing-boundary ASD "
            "mean | missing-boundary ASD max | other cases ASD mean | real CT liver Dice | real CT ASD |")
    lines = [head, "|" + "---|" * 12]
    for n in sizes:
        for v in VARIANTS:
            if not _by_seed(runs, v, n, "asd_mean"):
                continue
            cells = [_cell(runs, v, n, f"asd_{k}") for k in SUMMARY] + [_cell(runs, v, n, "dice", 3)]
            cells += [_cell(runs, v, n, k) for k in ("missing_asd_mean", "missing_asd_max", "normal_asd_mean")]
            cells += [_cell(runs, v, n, "real_dice", 3), _cell(runs, v, n, "real_asd")]
            lines.append(f"| {n} | {LABELS[v]} | " + " | ".join(cells) + " |")
    with_image = any(r["variant"] == "di2in_an_image_hard" for r in runs)
    lines += ["", "Paired differences over seeds, a variant with a critic − DI2IN (negative = the shape prior lowers "
              "the distance)" + (" and the image-conditioned critic − the same critic without the image"
                                 if with_image else "") + "; two-sided paired t-test:", ""]
    for v, base in PAIRS:
        for n in sizes:
            if not (_by_seed(runs, v, n, "asd_mean") and _by_seed(runs, base, n, "asd_mean")):
                continue
            parts = []
            for key, name in (("asd_mean", "ASD mean"), ("asd_std", "ASD std"), ("asd_max", "ASD max"),
                              ("missing_asd_mean", "missing-boundary ASD mean"), ("dice", "Dice")):
                diff = records.paired(_by_seed(runs, v, n, key), _by_seed(runs, base, n, key))
                digits, unit = (3, "") if key == "dice" else (2, "mm")
                parts.append(f"{name} {records.paired_cell(diff, digits, unit)}")
            lines.append(f"- {LABELS[v]} − {LABELS[base]}, {n} training cases: " + "; ".join(parts) + ".")
    lines += ["", "The paper's numbers for context (the talk; 1000+ real CT volumes at 3 mm, not comparable to "
              "procedural organs): ASD mean " + "; ".join(f"{a:.2f} → {b:.2f} mm with {n} training volumes"
                                                         for n, (a, b) in PAPER.items())
              + "; the std and the max fall more than the mean."]
    for v in ADVERSARIAL:
        if any(r["variant"] == v for r in runs):
            lines += ["", critic_line(runs, v)]
    lines += ["", footer(runs)]
    return "\n".join(lines)


def critic_line(runs: list[dict], variant: str = "di2in_an") -> str:
    """How the adversarial game ended: the last logged critic and generator terms of one variant's runs."""
    logs = [r["train_log"] for r in runs if r["variant"] == variant and r.get("train_log")]
    if not logs:
        return f"The {LABELS[variant]} records hold no training log."
    mean = {k: float(np.mean([log[k] for log in logs])) for k in LOGGED}
    return (f"{LABELS[variant]}: the adversarial game at the last logged step (mean over {len(logs)} runs): "
            f"critic loss "
            f"{mean['d_loss']:.4f} (0.693 = cannot tell predicted from true masks), the generator's adversarial "
            f"loss {mean['g_adv']:.2f}, segmentation loss {mean['seg_loss']:.3f}, and the pull of the weighted "
            f"adversarial gradient on the fused logits relative to the segmentation gradient {mean['adv_pull']:.3f}.")


def footer(runs: list[dict]) -> str:
    d = lambda path, fmt=str: records.describe(runs, path, fmt)  # noqa: E731
    an = [r for r in runs if r["variant"] in ADVERSARIAL]
    seeds = "; ".join(f"{LABELS[v]} {', '.join(str(s) for s in sorted({r['seed'] for r in runs if r['variant'] == v}))}"
                      for v in VARIANTS if any(r["variant"] == v for r in runs))
    return (f"Cells: mean ± sample std over the seeds ({seeds}) of each run's statistic over "
            f"{d('data.n_test')} test cases ({d('data.n_missing')} with a missing boundary), "
            f"{d('settings.data.size')}³ voxels of {d('data.spacing_mm', lambda v: f'{v:g}')} mm; "
            f"{d('settings.train.steps')} steps of batch {d('settings.data.batch_size')}, generator and critic "
            f"channels {d('settings.model.channels', lambda v: '-'.join(map(str, v)))}, Adam lr "
            f"{d('settings.optim.lr', lambda v: f'{v:g}')} ({d('settings.optim.schedule')}); DI2IN-AN: "
            f"{records.describe(an, 'settings.adv.pretrain_steps')} pre-training steps, λ_adv "
            f"{records.describe(an, 'settings.adv.weight')}. Real CT: one patient's liver (the scan cuts its "
            "inferior part), resampled to the same voxel size: a held-out case, not generalisation across patients. "
            + records.environment_summary(runs))


def panels(runs: list[dict], args, out_dir: Path, prefix: str = "") -> list[str]:
    """One PNG per method (`panels/<prefix><variant>.png`): the missing-boundary panel cases of the largest size,
    first seed; truth vs prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    n, seed = max(r["data"]["n_train"] for r in runs), min(r["seed"] for r in runs)
    written = []
    for v in VARIANTS:
        rec = [r for r in runs if r["variant"] == v and r["data"]["n_train"] == n and r["seed"] == seed]
        if not rec:
            continue
        method = build(v, n, seed, args)
        saved = np.load(Path(rec[0]["_folder"]) / "panel.npz")
        test = method.dataset("test")
        cases = saved["cases"]
        fig, axes = plt.subplots(1, len(cases), figsize=(3.2 * len(cases), 3.4), squeeze=False)
        for ax, case, pred in zip(axes[0], cases, saved["pred"]):
            label = test.arrays["label"][case, ..., 0] > 0.5
            k = int(np.argmax(label.sum(axis=(1, 2))))  # the axial slice with the most organ
            ax.imshow(test.arrays["image"][case, k, ..., 0], cmap="gray", vmin=0, vmax=1)
            ax.contour(label[k], [0.5], colors="lime", linewidths=1.2)
            ax.contour(pred[k].astype(float), [0.5], colors="red", linewidths=1.0)
            ax.set_title(f"test case {case}, ASD {rec[0]['per_case']['asd'][case]:.1f} mm", fontsize=8)
            ax.axis("off")
        fig.suptitle(f"{LABELS[v]}, {n} training cases, seed {seed}: truth (green), prediction (red); "
                     "missing-boundary cases (simulated)", fontsize=8)
        path = out_dir / f"{prefix}{v}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(str(path))
    return written


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="variants to run or tabulate")
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 64], help="training-set sizes (cases)")
    p.add_argument("--size", type=int, default=24, help="case side in voxels (192 mm field: 8 mm voxels at 24)")
    p.add_argument("--steps", type=int, default=300, help="training steps per run")
    p.add_argument("--pretrain", type=int, default=150, help="DI2IN-AN: steps of the generator alone first")
    p.add_argument("--weight", type=float, default=0.01, help="lambda_adv")
    p.add_argument("--channels", default="8,16,32,64", help="generator and critic features per level")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--n-val", type=int, default=4)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    p.add_argument("--no-real", action="store_true", help="skip the real chest CT case")
    p.add_argument("--runs", help="folder of the runs (default: runs/ next to this script)")
    p.add_argument("--readme", default=str(HERE / "README.md"), help="file that --write rewrites (panels/ beside it)")
    p.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    p.add_argument("--section", default="results", help="README section (<!-- NAME:begin/end -->) that --write "
                   "replaces; panels of another section are named NAME-<variant>.png")
    p.add_argument("--write", action="store_true", help="replace the section in the README, write panels/")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    runs = []
    for n in args.sizes:
        for seed in args.seeds:
            for v in args.variants:
                folder = run_folder(v, n, seed, args)
                if args.table_only:
                    if records.exists(folder):
                        runs.append(records.with_train_log(records.load(folder), LOGGED))
                else:
                    runs.append(records.with_train_log(run_one(v, n, seed, args), LOGGED))
    if not runs:
        raise SystemExit("no finished runs to tabulate")
    text = table(runs)
    print(text)
    if args.write:
        readme = Path(args.readme)
        if not readme.exists():  # another file (a smoke run): start it with an empty section
            readme.parent.mkdir(parents=True, exist_ok=True)
            readme.write_text(f"# DI2IN vs DI2IN-AN\n\n<!-- {args.section}:begin -->\n<!-- {args.section}:end -->\n")
        prefix = "" if args.section == "results" else f"{args.section}-"
        written = panels(runs, args, readme.resolve().parent / "panels", prefix)
        records.write_section(readme, args.section, text)
        print("wrote", args.readme, *written, file=sys.stderr)


if __name__ == "__main__":
    main()
