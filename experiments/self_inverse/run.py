"""Self-inverse network (one2one) vs pix2pix (paired) and vs CycleGAN (unpaired) for T1w <-> T2w synthesis.

methods.md §8. Paired: pix2pix trained per direction (two models: T1w->T2w and T2w->T1w) against one
self-inverse generator trained on both directions (`self_inverse`: pix2pix with each pair swapped with p 0.5).
Unpaired: CycleGAN (two ResNet generators) against one2one-unpaired (`self_inverse_unpaired`: the same
CycleGAN with one generator), on the unpaired recipe "mr" (A = T1w of one half of the training slices, B = T2w
of the other half). Every model is scored here by one function (`kfjax.methods.common.paired_gan.paired_scores`:
L1, PSNR, SSIM on [0, 1] in the brain mask) on the same held-out test slices, in both directions: T1w->T2w
(`_ab`) and T2w->T1w (`_ba`); a self-inverse model's cycle error |f(f(x)) - x| beside them.

The pairs are SIMULATED from the real MNI152 template (one subject; `kfjax.data.synthesis`): the test set is
held-out axial slabs of the same subject, not other patients.

    python experiments/self_inverse/run.py --write                              # the README's table (CPU scale)
    python experiments/self_inverse/run.py --channels 64 128 256 512 512 --d-features 64 --d-layers 3 \
        --features 64 --n-blocks 9 --steps 20000 --unpaired-steps 20000 --lr 2e-4 --write   # paper scale, a GPU

Each (variant, seed) run saves its run record (`record.json`: settings, seed, times, machine, device, versions,
git commit, test metrics) and its outputs on the panel slices (`panel.npy`) in `runs/<scale>/<variant>-s<seed>/`,
its checkpoints in `work/` (not kept in git). Finished runs are reused, so an interrupted experiment continues
where it stopped. The table, the paired tests and the footer are built from the records only; `--write` puts
them into README.md and the per-method panels into `panels/`.
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

PANEL_SLICES = (3, 9, 15)  # rows of the test split shown in the panels (one per test slab)
VARIANTS = ["pix2pix_ab", "pix2pix_ba", "one2one", "cyclegan", "one2one_unpaired", "one2one_2x"]
METHODS = {"pix2pix_ab": "pix2pix", "pix2pix_ba": "pix2pix", "one2one": "self_inverse", "cyclegan": "cyclegan",
           "one2one_unpaired": "self_inverse_unpaired", "one2one_2x": "self_inverse"}
LABELS = {"pix2pix": "pix2pix (two models, one per direction)", "one2one": "one2one (one self-inverse model)",
          "one2one_2x": "one2one, 2× steps (as many updates per direction as pix2pix)",
          "cyclegan": "CycleGAN (two generators)", "one2one_unpaired": "one2one-unpaired (one generator)"}
ROWS = ["pix2pix", "one2one", "one2one_2x", "cyclegan", "one2one_unpaired"]  # "pix2pix" joins pix2pix_ab + _ba
COMPARISONS = (("one2one", "pix2pix"), ("one2one_2x", "pix2pix"), ("one2one_unpaired", "cyclegan"))
# the talk's table (paired, BraTS T1 <-> T2; L1 on [0, 1], PSNR dB, SSIM), for context only
PAPER = {"pix2pix": {"l1_ab": 0.042, "psnr_ab": 26.53, "ssim_ab": 0.871, "l1_ba": 0.051, "psnr_ba": 27.78,
                     "ssim_ba": 0.872},
         "one2one": {"l1_ab": 0.039, "psnr_ab": 29.23, "ssim_ab": 0.875, "l1_ba": 0.048, "psnr_ba": 30.99,
                     "ssim_ba": 0.876}}
SCORES = [f"{m}_{d}" for d in ("ab", "ba") for m in ("l1", "psnr", "ssim")]
DIGITS = {"l1": 3, "psnr": 2, "ssim": 3}
NAMES = {"ab": "T1→T2", "ba": "T2→T1"}


# ---------------------------------------------------------------- where runs live
def scale_name(args) -> str:
    return (f"unet{'-'.join(map(str, args.channels))}_res{args.features}x{args.n_blocks}_d{args.d_features}x"
            f"{args.d_layers}_steps{args.steps}-{args.unpaired_steps}_lr{args.lr:g}")


def run_folder(variant: str, seed: int, args) -> Path:
    root = Path(args.runs) if args.runs else HERE / "runs"
    return root / scale_name(args) / f"{variant}-s{seed}"


# ---------------------------------------------------------------- methods
def overrides(variant: str, seed: int, args) -> list[str]:
    """`--set` items of a variant: the same data, discriminator, optimiser and batch for every model."""
    common = [f"seed={seed}", f"data.batch_size={args.batch}", f"optim.lr={args.lr}", "train.log_every=50",
              f"model.d_features={args.d_features}", f"model.d_layers={args.d_layers}"]
    if variant in ("cyclegan", "one2one_unpaired"):
        steps = args.unpaired_steps
        return common + [f"train.steps={steps}", f"train.checkpoint_every={steps}", "data.recipe=mr",
                         "data.downsample=2", "data.flip=false", f"model.features={args.features}",
                         f"model.n_blocks={args.n_blocks}"]
    direction = ["data.source=t2w", "data.target=t1w"] if variant == "pix2pix_ba" else []
    steps = 2 * args.steps if variant == "one2one_2x" else args.steps
    return common + direction + [f"train.steps={steps}", f"train.checkpoint_every={steps}",
                                 "model.channels=" + ",".join(map(str, args.channels))]


def build(variant: str, seed: int, args):
    from kfjax.methods import registry

    return registry.build(METHODS[variant], overrides=overrides(variant, seed, args))


def translators(variant: str, method, state) -> dict:
    """{"ab": f, "ba": g}: the model's map T1w -> T2w and T2w -> T1w (where it has one), each jitted."""
    import jax

    gen = state.params["generator"]
    if variant in ("pix2pix_ab", "pix2pix_ba", "one2one", "one2one_2x"):
        f = jax.jit(lambda x: method.translate(gen, x))
        return {"pix2pix_ab": {"ab": f}, "pix2pix_ba": {"ba": f}}.get(variant, {"ab": f, "ba": f})
    if variant == "cyclegan":
        return {"ab": jax.jit(lambda x: method._g(gen["ab"], x)), "ba": jax.jit(lambda x: method._g(gen["ba"], x))}
    f = jax.jit(lambda x: method._g(gen, x))
    return {"ab": f, "ba": f}


def test_set():
    """The held-out slices (t1w, t2w in [-1, 1], brain mask) every model is scored on: the paired data's test split
    at 2 mm (the unpaired recipe "mr" holds the same slices)."""
    from kfjax.data.synthesis import SynthesisDataConfig, synthesis_slices

    return synthesis_slices("test", SynthesisDataConfig(source="t1w", target="t2w", downsample=2))


def score(maps: dict, test, batch: int = 6) -> tuple[dict, dict]:
    """(mean scores over the test slices, outputs on the panel slices) of the model's maps."""
    import jax

    from kfjax.methods.common.paired_gan import paired_scores

    a, b, mask = (test.arrays[k] for k in ("source", "target", "mask"))
    scores_fn = jax.jit(paired_scores, static_argnums=3)
    totals: dict[str, list] = {}
    for i in range(0, len(a), batch):
        x, y, m = a[i:i + batch], b[i:i + batch], mask[i:i + batch]
        parts = {}
        if "ab" in maps:
            parts |= scores_fn(maps["ab"](x), y, m, "_ab")
        if "ba" in maps:
            parts |= scores_fn(maps["ba"](y), x, m, "_ba")
        if "ab" in maps and "ba" in maps:
            parts |= {"cycle_a": _cycle(maps["ab"], maps["ba"], x, m), "cycle_b": _cycle(maps["ba"], maps["ab"], y, m)}
        for k, v in parts.items():
            totals.setdefault(k, []).append(np.asarray(v))
    metrics = {k: float(np.mean(np.concatenate(v))) for k, v in totals.items()}
    rows = np.asarray(PANEL_SLICES)
    panel = {d: np.asarray(f(a[rows] if d == "ab" else b[rows])) for d, f in maps.items()}
    return metrics, panel


def _cycle(first, second, x, mask):
    """|second(first(x)) - x| on [0, 1] in the mask per image (for one map f = first = second: |f(f(x)) - x|)."""
    from kfjax import metrics
    from kfjax.units import to_unit

    back = np.clip(to_unit(np.asarray(second(first(x)))), 0.0, 1.0)
    return np.asarray(metrics.mae(back, to_unit(x), mask=mask))


def n_generator_params(state) -> int:
    import jax

    return int(sum(x.size for x in jax.tree.leaves(state.params["generator"])))


# ---------------------------------------------------------------- runs
def run_one(variant: str, seed: int, args, test) -> dict:
    """Train one (variant, seed) (or reuse its finished record), score it here, save record and panel."""
    import jax

    from kfjax.config import to_dict

    folder = run_folder(variant, seed, args)
    method = build(variant, seed, args)
    record = records.finished_run(folder, method.config)
    if record is not None:
        return record
    clock = records.Clock()
    folder.mkdir(parents=True, exist_ok=True)
    state, train_s = records.train_to_end(method, folder / "work", f"{variant} seed {seed}")
    timings = {"train_s": train_s}
    start = time.perf_counter()
    metrics, panel = score(translators(variant, method, state), test)
    timings["eval_s"] = time.perf_counter() - start
    metrics["generator_params"] = n_generator_params(state)
    np.save(folder / "panel.npy", np.stack([panel.get(d, np.full_like(next(iter(panel.values())), np.nan))
                                            for d in ("ab", "ba")]))
    data = {"n_test": len(test), "n_train": len(method.dataset("train"))}
    record = records.make(method=method.name, variant=variant, seed=seed, settings=to_dict(method.config),
                          metrics=metrics, clock=clock, timings=timings, data=data, panel_slices=list(PANEL_SLICES))
    records.save(record, folder)
    jax.clear_caches()  # many runs in one process: drop their compiled programs
    shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k in SCORES)
    print(f"{variant} seed {seed}: {shown} ({record['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    return records.load(folder)


# ---------------------------------------------------------------- tables (from records only)
def row_metrics(runs: list[dict], row: str) -> dict[int, dict]:
    """{seed: metrics} of a table row; the pix2pix row joins each seed's two one-direction models."""
    by = lambda v: {r["seed"]: r for r in runs if r["variant"] == v}  # noqa: E731
    if row != "pix2pix":
        return {s: dict(r["metrics"]) for s, r in by(row).items()}
    ab, ba = by("pix2pix_ab"), by("pix2pix_ba")
    out = {}
    for seed in sorted(set(ab) & set(ba)):
        m = {k: v for k, v in ab[seed]["metrics"].items() if k.endswith("_ab")}
        m |= {k: v for k, v in ba[seed]["metrics"].items() if k.endswith("_ba")}
        m["generator_params"] = ab[seed]["metrics"]["generator_params"] + ba[seed]["metrics"]["generator_params"]
        out[seed] = m
    return out


def _seconds(runs: list[dict], row: str) -> str:
    variants = ("pix2pix_ab", "pix2pix_ba") if row == "pix2pix" else (row,)
    by_seed: dict[int, float] = {}
    for r in runs:
        if r["variant"] in variants:
            by_seed[r["seed"]] = by_seed.get(r["seed"], 0.0) + r["timings"]["train_s"] + r["timings"]["eval_s"]
    return ", ".join(f"{by_seed[s]:.0f}" for s in sorted(by_seed))


def table(runs: list[dict]) -> str:
    head = " | ".join(f"{m.upper()} {'T1→T2' if d == 'ab' else 'T2→T1'}"
                      for d in ("ab", "ba") for m in ("l1", "psnr", "ssim"))
    lines = [f"| method | seeds | generator parameters | {head} | cycle error T1 / T2 | s per seed |",
             "|" + "---|" * 11]
    for row in ROWS:
        per_seed = row_metrics(runs, row)
        if not per_seed:
            continue
        values = lambda key: [m.get(key) for m in per_seed.values()]  # noqa: E731
        params = records.describe([{"p": m["generator_params"]} for m in per_seed.values()], "p",
                                  fmt=lambda v: f"{v:,}")
        cells = [records.cell(values(k), DIGITS[k.split("_")[0]]) for k in SCORES]
        cycle = ""
        if row != "pix2pix":
            cycle = f"{records.cell(values('cycle_a'), 3)} / {records.cell(values('cycle_b'), 3)}"
        lines.append(f"| {LABELS[row]} | {len(per_seed)} | {params} | {' | '.join(cells)} | {cycle} | "
                     f"{_seconds(runs, row)} |")
        if row in PAPER:
            paper = " | ".join(f"{PAPER[row][k]}" for k in SCORES)
            lines.append(f"| *paper (talk, BraTS): {row}* | | | {paper} | | |")
    compare = comparison_lines(runs)
    if compare:
        lines += ["", "Paired over seeds (per-seed difference, mean ± sample std; two-sided paired t-test, "
                  "scipy.stats.ttest_rel). Lower L1 is better, higher PSNR/SSIM are better:", "", *compare]
    found = findings(runs)
    return "\n".join(lines + ([""] + [found] if found else []) + ["", footer(runs)])


def comparison_lines(runs: list[dict]) -> list[str]:
    lines = []
    for a, b in COMPARISONS:
        ma, mb = row_metrics(runs, a), row_metrics(runs, b)
        if not ma or not mb:
            continue
        parts = []
        for k in SCORES:
            result = records.paired({s: m[k] for s, m in ma.items()}, {s: m[k] for s, m in mb.items()})
            unit = "dB" if k.startswith("psnr") else ""
            parts.append(f"{k} {records.paired_cell(result, DIGITS[k.split('_')[0]], unit)}")
        lines.append(f"- {LABELS[a]} − {LABELS[b]}: " + "; ".join(parts))
    return lines


def _diff(runs: list[dict], a: str, b: str, key: str):
    return records.paired({s: m[key] for s, m in row_metrics(runs, a).items()},
                          {s: m[key] for s, m in row_metrics(runs, b).items()})


def findings(runs: list[dict]) -> str:
    """What the paired tests say about the papers' ordering, in sentences built from the records."""
    lines = []
    for a, b in (("one2one", "pix2pix"), ("one2one_2x", "pix2pix")):
        if not row_metrics(runs, a) or not row_metrics(runs, b):
            continue
        cells = {d: _diff(runs, a, b, f"psnr_{d}") for d in ("ab", "ba")}
        ssim = {d: _diff(runs, a, b, f"ssim_{d}") for d in ("ab", "ba")}
        better = [d for d in cells if cells[d].mean > 0 and ssim[d].mean > 0]
        verdict = ("appears (higher PSNR and SSIM in both directions)" if len(better) == 2 else
                   "does not appear" if not better else f"appears in {' and '.join(NAMES[d] for d in better)} only")
        lines.append(f"- **{LABELS[a]} vs {LABELS[b]}**: the paper's ordering (one2one ≥ pix2pix in both directions, "
                     f"with half the generator parameters) {verdict}: PSNR T1→T2 "
                     f"{records.paired_cell(cells['ab'], 2, 'dB')}, T2→T1 {records.paired_cell(cells['ba'], 2, 'dB')}.")
    if row_metrics(runs, "one2one") and row_metrics(runs, "one2one_2x"):
        gain = _diff(runs, "one2one_2x", "one2one", "psnr_ab")
        lines.append(f"- Why: at equal steps the one generator is updated on each direction about half as often as a "
                     f"pix2pix model, and at this scale the models are still improving: doubling one2one's steps "
                     f"changes its T1→T2 PSNR by {records.paired_cell(gain, 2, 'dB')}. The 2× row compares the "
                     "models at equal updates per direction (equal total generator updates to the two pix2pix "
                     "models together).")
    unpaired = [m for row in ("cyclegan", "one2one_unpaired") for m in row_metrics(runs, row).values()]
    if unpaired:
        top = max(max(m["ssim_ab"], m["ssim_ba"]) for m in unpaired)
        steps = records.describe([r for r in runs if r["method"] in ("cyclegan", "self_inverse_unpaired")],
                                 "settings.train.steps")
        verdict = ("neither unpaired model has learnt the contrast mapping" if top < 0.5 else
                   "the unpaired models learnt part of the mapping")
        paired_ssim = [m[f"ssim_{d}"] for row in ("pix2pix", "one2one") for m in row_metrics(runs, row).values()
                       for d in ("ab", "ba")]
        than = f"; the paired models' lowest is {min(paired_ssim):.3f}" if paired_ssim else ""
        why = (": the cycle terms fall (small cycle errors) while the adversarial terms have not yet pulled the "
               "translations to the other contrast. The one2one-unpaired − CycleGAN differences above compare two "
               "unconverged models and do not test the paper's claim; a longer run is needed for that."
               if top < 0.5 else ".")
        lines.append(f"- **Unpaired**: after {steps} steps {verdict} (best SSIM of any seed and direction "
                     f"{top:.3f}{than}){why}")
    return "\n".join(lines)


def footer(runs: list[dict]) -> str:
    if not runs:
        return "No runs."
    paired = [r for r in runs if r["method"] in ("pix2pix", "self_inverse")]
    unpaired = [r for r in runs if r["method"] in ("cyclegan", "self_inverse_unpaired")]
    parts = [f"Test set: {records.describe(runs, 'data.n_test')} held-out axial slices (3 slabs) of the simulated "
             "subject at 2 mm (96 × 80), both contrasts, scored in the brain mask on [0, 1]; seeds "
             f"{sorted({r['seed'] for r in runs})}."]
    if paired:
        d = lambda path: records.describe(paired, path)  # noqa: E731
        parts.append(f"Paired models: U-Net {d('settings.model.channels')} ({d('settings.model.norm')} norm, tanh), "
                     f"{d('settings.model.d_layers')}-layer conditional PatchGAN of {d('settings.model.d_features')} "
                     f"features, {d('settings.loss.gan')} GAN + {d('settings.loss.l1_weight')} × L1, "
                     f"{d('settings.train.steps')} steps of batch {d('settings.data.batch_size')} on "
                     f"{d('data.n_train')} paired training slices, Adam {d('settings.optim.lr')} β1 "
                     f"{d('settings.optim.b1')}.")
    if unpaired:
        d = lambda path: records.describe(unpaired, path)  # noqa: E731
        parts.append(f"Unpaired models: ResNet generator(s) ngf {d('settings.model.features')} with "
                     f"{d('settings.model.n_blocks')} residual blocks, {d('settings.model.d_layers')}-layer PatchGANs "
                     f"of {d('settings.model.d_features')} features, LSGAN, "
                     f"cycle × {d('settings.loss.cycle_weight')}, "
                     f"pools of {d('settings.loss.pool_size')}, {d('settings.train.steps')} steps of batch "
                     f"{d('settings.data.batch_size')}, {d('data.n_train')} A images (T1w) from half of the training "
                     f"slices and T2w images from the other half, Adam {d('settings.optim.lr')}.")
    parts.append("s per seed: training (with compilation) and scoring, pix2pix's two models summed. "
                 "mean ± sample std (ddof 1) over seeds. The paper's numbers are the talk's BraTS table (real "
                 "paired T1/T2 of many patients, 256², full training), typed into run.py, for context only.")
    return " ".join(parts) + "\n\n" + records.environment_summary(runs)


def panels(runs: list[dict], out_dir: Path, test, prefix: str = "") -> list[str]:
    """One PNG per table row: input, target, output and |error| on the panel slices, both directions (lowest seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = np.asarray(PANEL_SLICES)
    a, b = ((test.arrays[k][rows] + 1.0) / 2.0 for k in ("source", "target"))
    brain = test.arrays["mask"][rows]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for row in ROWS:
        variants = ("pix2pix_ab", "pix2pix_ba") if row == "pix2pix" else (row,)
        outputs = {}
        for v in variants:
            found = sorted((r for r in runs if r["variant"] == v and (Path(r["_folder"]) / "panel.npy").is_file()),
                           key=lambda r: r["seed"])
            if found:
                panel = np.load(Path(found[0]["_folder"]) / "panel.npy")
                outputs |= {d: panel[i] for i, d in enumerate(("ab", "ba")) if np.all(np.isfinite(panel[i]))}
        if set(outputs) != {"ab", "ba"}:
            continue
        fig, axes = plt.subplots(2 * len(rows), 4, figsize=(7, 3.2 * len(rows)), squeeze=False)
        for i in range(len(rows)):
            for j, (d, src, tgt, name) in enumerate((("ab", a, b, "T1→T2"), ("ba", b, a, "T2→T1"))):
                out = np.clip((outputs[d][i] + 1.0) / 2.0, 0.0, 1.0)
                images = (src[i], tgt[i], out, np.abs(out - tgt[i]) * brain[i])
                for col, (image, title) in enumerate(zip(images, ("input", "target", "output", "|error| ×4"))):
                    ax = axes[2 * i + j, col]
                    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=0.25 if col == 3 else 1)
                    ax.set_xticks([]), ax.set_yticks([])
                    if i == j == 0:
                        ax.set_title(title, fontsize=9)
                axes[2 * i + j, 0].set_ylabel(f"slice {test.arrays['slice_index'][rows[i]]}\n{name}", fontsize=8)
        fig.suptitle(LABELS[row], fontsize=10)
        fig.tight_layout()
        fig.savefig(out_dir / f"{prefix}{row}.png", dpi=70)
        plt.close(fig)
        written.append(f"{out_dir.name}/{prefix}{row}.png")
    return written


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=400, help="training steps of each paired model")
    p.add_argument("--unpaired-steps", type=int, default=300, help="training steps of each unpaired model")
    p.add_argument("--batch", type=int, default=4, help="batch size of every model")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of every network (β1 0.5)")
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128], help="U-Net features per level")
    p.add_argument("--features", type=int, default=16, help="ResNet generator ngf (unpaired models)")
    p.add_argument("--n-blocks", type=int, default=3, help="ResNet generator residual blocks (unpaired models)")
    p.add_argument("--d-features", type=int, default=16, help="PatchGAN base channels (every model)")
    p.add_argument("--d-layers", type=int, default=2, help="PatchGAN stride-2 layers (2: 34x34; 3: 70x70)")
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--runs", help="folder of the runs (default: runs/ next to this script)")
    p.add_argument("--readme", default=str(HERE / "README.md"), help="file that --write rewrites (panels/ beside it)")
    p.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    p.add_argument("--write", action="store_true", help="replace the table in the README, write panels/")
    p.add_argument("--section", default="results",
                   help="README section --write replaces (another section's panels get its name as a prefix)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from kfjax.runtime import setup_jax

    setup_jax()
    test = test_set()
    runs = []
    for seed in args.seeds:  # seed-major: an interrupted experiment has whole seeds of every variant
        for variant in args.variants:
            if not args.table_only:
                runs.append(run_one(variant, seed, args, test))
            elif records.exists(run_folder(variant, seed, args)):
                runs.append(records.load(run_folder(variant, seed, args)))
    text = table(runs)
    print(text)
    if args.write:
        readme = Path(args.readme)
        prefix = "" if args.section == "results" else f"{args.section}_"
        names = panels(runs, readme.parent / "panels", test, prefix)
        text += "\n\n" + " ".join(f"![{Path(n).stem}]({n})" for n in names)
        records.write_section(readme, args.section, text)


if __name__ == "__main__":
    main()
