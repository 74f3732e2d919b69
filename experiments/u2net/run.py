"""U²-Net: independent vs shared vs universal on five segmentation domains, and adding a sixth (CPU scale).

methods.md §7. One `kfjax train u2net` run per (mode, seed) on the five default domains of
`kfjax.data.domains` (real chest-CT organs, real MNI152 tissue classes on simulated T1w+T2w, procedural organ,
anisotropic prostate-like and small hippocampus-like domains), one domain per step in round robin; each run
is scored by its own `eval_step` through `kfjax.train.loop.evaluate` on the test patches: mean foreground
Dice per domain. Then, per seed, the trained universal model gets the sixth domain (`organ_lowcontrast`) by
add-domain training (`train.add_domain`): only that domain's adapters, norms and I/O layers train; the old
domains' logits on their test patches are compared bitwise before and after.

    python experiments/u2net/run.py --write                          # the README's table (CPU scale)
    python experiments/u2net/run.py --steps 30000 --size 64 --channels 16,32,64,128,256 --batch 2 \\
        --n-train 400 --write                                        # paper-like widths, a GPU

Runs live in `runs/<settings>/<mode>-s<seed>/` (record.json, panel.npz; checkpoints in work/, not kept in
git); finished runs are reused, so an interrupted experiment continues. The table, paired tests and footer
come from the records only; `--write` puts them into README.md (section `--section`) and panels/.
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

MODES = ["independent", "shared", "universal"]
ADD = "add_domain"
LOGGED = ("loss", "lovasz", "focal")  # the training log's last values kept in each record (mean of 50 steps)
PAPER_WIDTHS = (16, 32, 64, 128, 256)  # base 16, five levels (the paper's smaller tasks; liver uses six)
PAPER = ("Paper (MSD heart, liver, hippocampus, prostate, pancreas, spleen; real patients): universal Dice "
         "close to independent networks (within about a point per task), shared mode lower, with about 1 % of "
         "the parameters of N separate models per domain, and a new domain learned without changing the old "
         "ones. Its per-task Dice values are not quoted here (not verified offline).")


def run_root(args) -> Path:
    root = Path(args.runs) if args.runs else HERE / "runs"
    return root / f"steps{args.steps}-s{args.size}-c{args.channels.replace(',', '-')}-b{args.batch}-n{args.n_train}"


def overrides(mode: str, seed: int, args, steps: int, extra=()) -> list[str]:
    return [f"seed={seed}", f"model.mode={mode}", f"model.channels={args.channels}", f"data.size={args.size}",
            f"data.batch_size={args.batch}", f"data.n_train={args.n_train}", f"data.n_val={args.n_val}",
            f"train.steps={steps}", f"train.checkpoint_every={steps}", "train.log_every=50", *extra]


def build(mode: str, seed: int, args, steps: int, extra=()):
    from kfjax.methods import registry

    return registry.build("u2net", overrides=overrides(mode, seed, args, steps, extra))


def _panel(method, state, folder: Path) -> None:
    """Middle slices (image channel 0, label, prediction) of the first test patch of every domain."""
    import jax

    test = method.dataset("test")
    rows = [int(np.flatnonzero(test.arrays["domain"] == k)[0]) for k in range(len(method.domains))]
    batch = test[np.asarray(rows)]
    pred = np.asarray(jax.jit(method.predict)(state, batch)["labels"])
    mid = batch["label"].shape[1] // 2
    np.savez_compressed(folder / "panel.npz", image=batch["image"][:, mid, ..., 0], label=batch["label"][:, mid],
                        pred=pred[:, mid], names=np.asarray([d.name for d in method.domains]))


def _counts(method) -> dict:
    from kfjax.nn.u2net import param_counts

    net = method.network()
    mine = param_counts(net.in_channels, net.class_counts, net.channels, net.mode)
    paper = param_counts(net.in_channels, net.class_counts, PAPER_WIDTHS, net.mode)
    return {"params_total": mine["total"], "params_per_domain": mine["per_domain"],
            "per_domain_pct": mine["per_domain_pct"], "per_domain_pct_paper_widths": paper["per_domain_pct"]}


def run_mode(mode: str, seed: int, args) -> dict:
    """Train one mode with one seed on the five domains (or reuse its record); test Dice, counts, panel."""
    import jax

    from kfjax.config import to_dict
    from kfjax.train.loop import evaluate

    method = build(mode, seed, args, args.steps)
    folder = run_root(args) / f"{mode}-s{seed}"
    record = records.finished_run(folder, method.config)
    if record is not None:
        return record
    clock = records.Clock()
    folder.mkdir(parents=True, exist_ok=True)
    state, train_s = records.train_to_end(method, folder / "work", f"{mode} seed {seed}")
    timings = {"train_s": train_s}
    start = time.perf_counter()
    metrics = evaluate(method, state, split="test") | _counts(method)
    timings["eval_s"] = time.perf_counter() - start
    _panel(method, state, folder)
    data = {"n_train_per_domain": args.n_train, "n_test_per_domain": args.n_val,
            "domains": [d.name for d in method.domains]}
    record = records.make(method="u2net", variant=mode, seed=seed, settings=to_dict(method.config), metrics=metrics,
                          clock=clock, timings=timings, data=data,
                          train_log=records.last_train_log(folder / "work", LOGGED))
    records.save(record, folder)
    jax.clear_caches()
    print(f"{mode} seed {seed}: Dice {metrics['dice']:.3f} ({record['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    return records.load(folder)


def run_add_domain(seed: int, args) -> dict:
    """Add the new domain to the universal run of `seed`; old domains' test logits compared bitwise."""
    import jax

    from kfjax.config import apply_overrides, to_dict
    from kfjax.data.domains import DEFAULT_DOMAINS, NEW_DOMAIN
    from kfjax.train.loop import evaluate, restore_for_eval

    run_mode("universal", seed, args)
    base_dir = run_root(args) / f"universal-s{seed}" / "work"
    domains = ",".join((*DEFAULT_DOMAINS, NEW_DOMAIN))
    method = build("universal", seed, args, args.add_steps, [f"data.domains={domains}", f"train.add_domain={base_dir}"])
    folder = run_root(args) / f"{ADD}-s{seed}-steps{args.add_steps}"
    base_name = str(base_dir.relative_to(run_root(args)))  # the record keeps no path of this machine
    recorded = apply_overrides(method.config, [f"train.add_domain={base_name}"])
    record = records.finished_run(folder, recorded)
    if record is not None:
        return record
    clock = records.Clock()
    folder.mkdir(parents=True, exist_ok=True)
    base = build("universal", seed, args, args.steps)
    base_state = restore_for_eval(base, base_dir)
    test = method.dataset("test")
    old = test[np.flatnonzero(test.arrays["domain"] < len(DEFAULT_DOMAINS))]
    before = np.asarray(jax.jit(base.logits)(base_state, old))
    state, train_s = records.train_to_end(method, folder / "work", f"{ADD} seed {seed}")
    timings = {"train_s": train_s}
    after = np.asarray(jax.jit(method.logits)(state.for_evaluation(), old))
    metrics = evaluate(method, state, split="test") | _counts(method)
    metrics["old_logits_bitwise_equal"] = float(np.array_equal(before, after))
    _panel(method, state, folder)
    record = records.make(method="u2net", variant=ADD, seed=seed, settings=to_dict(recorded), metrics=metrics,
                          clock=clock, timings=timings, data={"base": base_name})
    records.save(record, folder)
    jax.clear_caches()
    return records.load(folder)


# ---------------------------------------------------------------- tables, panels


def _by_seed(runs, variant, key):
    return {r["seed"]: r["metrics"].get(key) for r in runs if r["variant"] == variant}


def table(runs: list[dict], domains: list[str], new: str) -> str:
    header = ["mode", *domains, "mean Dice", "own params / domain", "% of one network (here; paper widths)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in [*MODES, ADD]:
        recs = [r for r in runs if r["variant"] == variant]
        if not recs:
            continue
        cols = list(domains) + ([new] if variant == ADD else [])
        cells = [records.cell([r["metrics"].get(f"dice_{d}") for r in recs], 3) for d in cols]
        if variant == ADD:
            cells = cells[:len(domains)]
            name = f"universal + {new} (add-domain): {new} Dice " + records.cell(
                [r["metrics"].get(f"dice_{new}") for r in recs], 3)
        else:
            name = variant
        m = recs[0]["metrics"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {records.cell([r['metrics']['dice'] for r in recs], 3)}"
                     f" | {m['params_per_domain']:,.0f} | {m['per_domain_pct']:.2f} %; "
                     f"{m['per_domain_pct_paper_widths']:.2f} % |")
    return "\n".join(lines)


def comparisons(runs: list[dict]) -> list[str]:
    out = []
    for a, b in (("universal", "independent"), ("universal", "shared"), ("shared", "independent")):
        if not (_by_seed(runs, a, "dice") and _by_seed(runs, b, "dice")):
            continue
        diff = records.paired(_by_seed(runs, a, "dice"), _by_seed(runs, b, "dice"))
        out.append(f"- mean Dice, {a} − {b}: {records.paired_cell(diff, 3)}")
    adds = [r for r in runs if r["variant"] == ADD]
    if adds:
        same = all(r["metrics"].get("old_logits_bitwise_equal") == 1.0 for r in adds)
        out.append(f"- add-domain: old domains' test logits bitwise equal before and after in "
                   f"{sum(r['metrics'].get('old_logits_bitwise_equal') == 1.0 for r in adds)} of {len(adds)} seeds"
                   + ("" if same else " (NOT all: a bug)"))
    return out


def panels(runs: list[dict], out_dir: Path, prefix: str = "") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for variant in [*MODES, ADD]:
        recs = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["seed"])
        if not recs:
            continue
        panel = np.load(Path(recs[0]["_folder"]) / "panel.npz")
        n = len(panel["names"])
        fig, axes = plt.subplots(3, n, figsize=(2.0 * n, 6.2), squeeze=False)
        for k in range(n):
            for row, (key, cmap) in enumerate((("image", "gray"), ("label", "tab10"), ("pred", "tab10"))):
                ax = axes[row, k]
                ax.imshow(panel[key][k], cmap=cmap, vmin=0 if key != "image" else None, vmax=9 if key != "image" else None,
                          interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
            axes[0, k].set_title(str(panel["names"][k]), fontsize=8)
        for row, name in enumerate(("image", "label", "prediction")):
            axes[row, 0].set_ylabel(name)
        fig.suptitle(f"{variant}, seed {recs[0]['seed']}: middle slice of the first test patch per domain", fontsize=9)
        name = f"{prefix}{variant}.png"
        fig.savefig(out_dir / name, dpi=80, bbox_inches="tight")
        plt.close(fig)
        lines.append(f"![{variant}](panels/{name})")
    return lines


def report(runs: list[dict], args, out_dir: Path | None, prefix: str = "") -> str:
    from kfjax.data.domains import DEFAULT_DOMAINS, DOMAINS, NEW_DOMAIN

    domains = list(DEFAULT_DOMAINS)
    text = [f"Test patches: {args.n_val} per domain; {args.steps} steps of batch {args.batch} ({args.size}³ patches, "
            f"channels {args.channels}); seeds {', '.join(map(str, sorted(records.distinct(runs, 'seed'))))}. "
            "Dice: mean over the domain's foreground classes per patch, mean ± std over seeds.", "",
            table(runs, domains, NEW_DOMAIN), "", *comparisons(runs), "", PAPER, "",
            "What is real: " + "; ".join(f"{d}: {DOMAINS[d].source}" for d in (*domains, NEW_DOMAIN)) + ". One CT and "
            "one template cannot show generalisation across patients: their test patches come from a held-out slab "
            "of the same subject.", "", records.environment_summary(runs)]
    if out_dir is not None:
        text += ["", *panels(runs, out_dir, prefix)]
    return "\n".join(text)


def lengths_table(by_steps: dict[int, list[dict]]) -> str:
    """Mean Dice of every mode and the universal − independent gap per training length (`by_steps`: steps -> that
    length's run records), with each mode's last logged training loss (does the gap close with training?)."""
    lines = ["| steps (per domain) | " + " | ".join(f"{m} Dice" for m in MODES) + " | universal − independent | "
             "last training loss: " + " / ".join(MODES) + " |", "|" + "---|" * (len(MODES) + 3)]
    for steps, runs in sorted(by_steps.items()):
        dice = [records.cell(list(_by_seed(runs, m, "dice").values()), 3) or "not run" for m in MODES]
        gap = records.paired(_by_seed(runs, "universal", "dice"), _by_seed(runs, "independent", "dice"))
        loss = [records.cell([r["train_log"]["loss"] for r in runs if r["variant"] == m and r.get("train_log")], 3)
                or "-" for m in MODES]
        lines.append(f"| {steps} ({steps // len(runs[0]['data']['domains'])}) | " + " | ".join(dice)
                     + f" | {records.paired_cell(gap, 3)} | " + " / ".join(loss) + " |")
    everything = [r for runs in by_steps.values() for r in runs]
    seeds = ", ".join(map(str, sorted(records.distinct(everything, "seed"))))
    lines += ["", f"Dice: mean over the domains of each run's test Dice, mean ± std over seeds ({seeds}); the gap is "
              "a paired t-test over seeds. Last training loss: Lovász-softmax + focal, the mean over the last "
              f"{records.describe(everything, 'settings.train.log_every')} logged steps (round robin over the "
              "domains), '-' where the run's log was not kept. Every length has its own cosine learning-rate decay "
              "to zero.", "", records.environment_summary(everything)]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300, help="training steps per run (round robin over 5 domains)")
    p.add_argument("--add-steps", type=int, default=100, help="add-domain training steps")
    p.add_argument("--size", type=int, default=16, help="patch side in voxels")
    p.add_argument("--channels", default="16,32,64", help="features per level")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--n-train", type=int, default=48, help="training patches per domain")
    p.add_argument("--n-val", type=int, default=16, help="test patches per domain")
    p.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    p.add_argument("--no-add", action="store_true", help="skip the add-domain runs")
    p.add_argument("--runs", help="folder of the runs (default: runs/ next to this script)")
    p.add_argument("--readme", default=str(HERE / "README.md"), help="file that --write rewrites (panels/ beside it)")
    p.add_argument("--section", default="results", help="README section (<!-- NAME:begin/end -->) that --write replaces")
    p.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    p.add_argument("--lengths", type=int, nargs="+", metavar="STEPS",
                   help="tabulate the finished runs of these --steps values side by side (other settings as given)")
    p.add_argument("--write", action="store_true", help="replace the section in the README, write panels/")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.table_only:
        for seed in args.seeds:
            for mode in args.modes:
                run_mode(mode, seed, args)
            if not args.no_add:
                run_add_domain(seed, args)
    readme = Path(args.readme)
    if args.lengths:
        roots = {steps: run_root(argparse.Namespace(**{**vars(args), "steps": steps})) for steps in args.lengths}
        by_steps = {steps: [records.with_train_log(r, LOGGED) for r in records.find(root) if r["variant"] in MODES]
                    for steps, root in roots.items()}
        by_steps = {steps: runs for steps, runs in by_steps.items() if runs}
        if not by_steps:
            raise SystemExit(f"no finished runs under {', '.join(map(str, roots.values()))}")
        text = lengths_table(by_steps)
    else:
        runs = [records.with_train_log(r, LOGGED) for r in records.find(run_root(args))]
        if not runs:
            raise SystemExit(f"no finished runs under {run_root(args)}")
        prefix = "" if args.section == "results" else f"{args.section}-"
        text = report(runs, args, readme.parent / "panels" if args.write else None, prefix)
    print(text)
    if args.write:
        records.write_section(readme, args.section, text)


if __name__ == "__main__":
    main()
