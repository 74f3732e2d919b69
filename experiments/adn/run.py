"""ADN vs CycleGAN vs deep image prior vs LI (and supervised DuDoNet) on simulated metal artifacts.

methods.md §11-12. ADN and CycleGAN train on unpaired data (metal-affected images from half of the training
slices, artifact-free images from the other half); DIP (the registered per-case method "dip") fits each test
image alone (image- or sinogram-domain data term); the ADN ablation ladder drops loss terms. Test pairs,
metal masks and scores are DuDoNet's (`experiments/dudonet`): the 10 test masks on every test slice,
PSNR/SSIM on μ clipped to [0, 0.05] /mm and mapped to [0, 1] (data range 1), outside the metal; DIP runs on
the first `--dip-pairs` pairs only. Every method is scored by its own `eval_step` through
`kfjax.train.loop.evaluate` (per metal size group with `kfjax.methods.common.mar.by_size_group`), the
uncorrected and LI baselines by the GANs' shared `translation_scores` on the same test set.

    python experiments/adn/run.py --write                        # the README's table (CPU scale, see README)
    python experiments/adn/run.py --geometry adn --base 64 --steps 4500 --write   # 50 epochs at 256², a GPU

Each (variant, seed) run saves its run record (`record.json`: settings, seed, times, machine, device,
versions, git commit, test metrics; see experiments/records.py) and the panel cases' outputs in
`runs/<geometry>/steps<N>/<variant>-s<seed>/` (GANs also their checkpoints in `work/`); the baselines in
`runs/<geometry>/baselines/`. Finished runs are reused, so an interrupted experiment continues where it
stopped. The table, the paired tests and the footer are built from the records only; `--write` puts them
into README.md (`--readme` another file) and the per-method panels into `panels/` beside it. `--runs DIR`
and `--dudonet-runs DIR` keep the runs elsewhere; `--source phantom` uses procedural anatomy (no download).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import records  # noqa: E402  (experiments/records.py)

PANEL_CASES = (0, 4, 8)  # test slice 0 with masks 0, 4, 8: size groups g0, g2, g4, all inside the DIP pairs
ADN_LADDER = {  # the paper's ablation (Table II): terms added one at a time; "adn" is the full model
    "adn_adv": (["loss.rec=0", "loss.art=0", "loss.self_reduction=0"], "ADN ablation: adversarial only"),
    "adn_rec": (["loss.art=0", "loss.self_reduction=0"], "ADN ablation: + reconstruction"),
    "adn_art": (["loss.self_reduction=0"], "ADN ablation: + artifact consistency"),
    "adn": ([], "ADN (+ self-reduction: the full model)"),
}
LABELS = {**{k: v[1] for k, v in ADN_LADDER.items()}, "cyclegan": "CycleGAN", "dip_image": "DIP, image term",
          "dip_sinogram": "DIP, sinogram term", "dudonet": "DuDoNet (supervised, for reference)"}
VARIANTS = ["adn_adv", "adn_rec", "adn_art", "adn", "cyclegan", "dip_image", "dip_sinogram", "dudonet"]
COMPARISONS = (("adn", "cyclegan"), ("adn_rec", "adn_adv"), ("adn_art", "adn_rec"), ("adn", "adn_art"))
PAPER = {"adn": (33.6, 0.924), "cyclegan": (30.8, 0.729), "dip_image": (26.4, 0.759), "LI": (32.0, 0.910),
         "adn_adv": (21.7, 0.615), "adn_rec": (26.3, 0.821), "adn_art": (32.8, 0.916)}  # ADN paper, SYN set
DIP_DEFAULTS = (10, 500)  # (--dip-pairs, --dip-iterations) that keep the old folder names


# ---------------------------------------------------------------- where runs live
def data_folder(args) -> Path:
    root = Path(args.runs) if args.runs else HERE / "runs"
    return root / (args.geometry + ("" if args.source == "ct" else f"-{args.source}"))


def run_folder(variant: str, seed: int, args) -> Path:
    """Where one (variant, seed) run keeps record.json, panel.npy (and work/ for the GANs)."""
    steps = f"steps{args.steps}" + ("" if args.base == 16 else f"-base{args.base}")
    name = variant
    if variant.startswith("dip_") and (args.dip_pairs, args.dip_iterations) != DIP_DEFAULTS:
        name += f"-pairs{args.dip_pairs}-it{args.dip_iterations}"
    if variant == "dudonet" and args.dudonet_steps != 300:
        name += f"-steps{args.dudonet_steps}"
    return data_folder(args) / steps / f"{name}-s{seed}"


# ---------------------------------------------------------------- methods
def with_size_groups(method):
    """`method` whose val/test batches carry the pairs' metal size groups and whose eval_step adds the per-group
    scores (`by_size_group`) to its own: the same scores, split by metal size."""
    from kfjax.data.mar import mar_data
    from kfjax.methods.common.mar import by_size_group

    base = type(method)

    class Grouped(base):
        def dataset(self, split):
            data = super().dataset(split)
            if split != "train" and "size_group" not in data.arrays:
                d = self.config.data  # the parameters kfjax.data.unpaired passes for an eval split
                params = {"seed": d.data_seed, "geometry": d.geometry, "slice_step": d.eval_slice_step}
                params |= {"n_phantoms": d.n_phantoms} if d.source == "phantom" else {}
                group = mar_data(split, source=d.source, **params)["size_group"]
                if len(group) != len(data):
                    raise RuntimeError(f"{len(group)} size groups for {len(data)} {split} pairs")
                data.arrays["size_group"] = group
            return data

        def eval_step(self, state, batch):
            values = super().eval_step(state, batch)
            return values | by_size_group(values, batch["size_group"])

    Grouped.__name__ = Grouped.__qualname__ = base.__name__
    return Grouped(method.config)


def gan_overrides(variant: str, seed: int, args) -> tuple[str, list[str]]:
    """(registered method name, overrides) of a GAN variant."""
    data = [f"data.source={args.source}", f"data.geometry={args.geometry}", "data.eval_slice_step=1",
            "data.masks_per_slice=4", "data.batch_size=2", f"train.steps={args.steps}",
            f"train.checkpoint_every={args.steps}", "train.log_every=50", f"seed={seed}"]
    if args.source == "phantom":
        data.append("data.n_phantoms=64")  # the procedural test set that DIP and DuDoNet use by default
    if variant == "cyclegan":
        return "cyclegan", data + [f"model.features={args.base}", "model.n_blocks=3", f"model.d_features={args.base}",
                                   "model.d_layers=2"]
    return "adn", data + [f"model.base={args.base}", "model.num_residual=2",
                          f"model.d_features={args.base}"] + ADN_LADDER[variant][0]


def dip_overrides(variant: str, seed: int, args) -> list[str]:
    return [f"seed={seed}", f"data.source={args.source}", f"data.geometry={args.geometry}", "data.eval_slice_step=1",
            f"data.max_pairs={args.dip_pairs}", "data.batch_size=1",  # one pair at a time: vmap is slower on CPU
            f"fit.data_term={variant.split('_', 1)[1]}", f"fit.channels={args.base}", "fit.scales=3",
            f"fit.iterations={args.dip_iterations}"]


def build(variant: str, seed: int, args):
    from kfjax.methods import registry

    if variant.startswith("dip_"):
        return registry.build("dip", overrides=dip_overrides(variant, seed, args))
    name, sets = gan_overrides(variant, seed, args)
    return with_size_groups(registry.build(name, overrides=sets))


def dudonet_module():
    spec = importlib.util.spec_from_file_location("dudonet_run", HERE.parent / "dudonet" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dudonet_args(module, args):
    argv = ["--geometry", args.geometry, "--steps", str(args.dudonet_steps), "--source", args.source]
    return module.parse_args(argv + (["--runs", args.dudonet_runs] if args.dudonet_runs else []))


# ---------------------------------------------------------------- runs
def _panel_cases(n: int) -> list[int]:
    return [c for c in PANEL_CASES if c < n]


def run_one(variant: str, seed: int, args) -> dict:
    """Train/fit one variant with one seed (or reuse its finished record), score it, save record and panel."""
    if variant == "dudonet":
        return run_dudonet(seed, args)
    import jax

    from kfjax.config import to_dict
    from kfjax.train.loop import evaluate

    folder = run_folder(variant, seed, args)
    method = build(variant, seed, args)
    settings = to_dict(method.config)
    record = records.finished_run(folder, method.config)
    if record is not None:
        return record
    clock = records.Clock()
    folder.mkdir(parents=True, exist_ok=True)
    timings, state = {}, None
    if method.trainable:
        state, timings["train_s"] = records.train_to_end(method, folder / "work", f"{variant} seed {seed}")
    start = time.perf_counter()
    metrics = evaluate(method, state, split="test")
    timings["eval_s"] = time.perf_counter() - start
    test = method.dataset("test")
    cases = _panel_cases(len(test))
    if cases and (method.trainable or seed == min(args.seeds)):  # a DIP panel refits its cases: one seed only
        batch = test[np.asarray(cases)]
        out = method.predict(state, batch)
        np.save(folder / "panel.npy", np.asarray(out["image" if "image" in out else "unit"]))
    data = {"n_test": len(test)}
    if method.trainable:
        data["n_train"] = len(method.dataset("train"))  # metal-affected training images (domain A)
    record = records.make(method=method.name, variant=variant, seed=seed, settings=settings, metrics=metrics,
                          clock=clock, timings=timings, data=data, panel_cases=cases)
    records.save(record, folder)
    jax.clear_caches()  # many variants in one process: drop their compiled programs
    print(f"{variant} seed {seed}: PSNR {metrics['psnr']:.2f} SSIM {metrics['ssim']:.4f} ({record['wall_s']:.0f} s)",
          file=sys.stderr, flush=True)
    return records.load(folder)


def run_dudonet(seed: int, args) -> dict:
    """DuDoNet from experiments/dudonet: its finished run (or trained now with its defaults); its record is
    copied here (with where it came from) and its panel cases predicted from its checkpoint."""
    import jax

    from kfjax.methods import registry
    from kfjax.methods.dudonet import unit_range
    from kfjax.train.loop import restore_for_eval

    folder = run_folder("dudonet", seed, args)
    module = dudonet_module()
    dargs = dudonet_args(module, args)
    source = module.run_one("dual", seed, dargs)
    if records.exists(folder):
        record = records.load(folder)
        if record["settings"] != source["settings"] or record["metrics"] != source["metrics"]:
            raise SystemExit(f"{folder} copies another DuDoNet run than {source['_folder']}; move it away")
        return record
    work = module.run_folder("dual", seed, dargs) / "work"
    method = registry.build("dudonet", overrides=module.overrides("dual", seed, dargs))
    state = restore_for_eval(method, work)
    test = method.dataset("test")
    cases = _panel_cases(len(test))
    if cases:
        pred = jax.jit(lambda s, b: unit_range(method.predict(s, b)["x_out"]))(state, test[np.asarray(cases)])
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "panel.npy", np.asarray(pred))
    record = {k: v for k, v in source.items() if k != "_folder"}
    origin = Path(source["_folder"]).resolve()  # relative to the repository when inside it: no machine paths
    copied = origin.relative_to(records.REPO) if origin.is_relative_to(records.REPO) else origin.name
    record |= {"variant": "dudonet", "copied_from": str(copied), "panel_cases": cases}
    records.save(record, folder)
    return records.load(folder)


def test_data(settings: dict) -> str:
    """Which test set a record was scored on, in words every method's settings can give."""
    d = settings["data"]
    return f"{d['source']} slices simulated at {d['geometry']}"


def baseline_records(args, compute: bool = True) -> list[dict]:
    """Uncorrected and LI over all test pairs and LI over the DIP pairs (computed and saved where missing)."""
    from kfjax.config import to_dict

    names = {"uncorrected": ("a", 0), "LI": ("li", 0), f"LI-first{args.dip_pairs}": ("li", args.dip_pairs)}
    folder = data_folder(args) / "baselines"
    method = build("adn", 0, args)  # the test set does not depend on the seed
    d = to_dict(method.config)["data"]
    wanted = {k: d[k] for k in ("recipe", "source", "geometry", "eval_slice_step", "data_seed", "downsample")}
    wanted |= {"n_phantoms": d["n_phantoms"]} if d["source"] == "phantom" else {}
    out = []
    for name, (key, pairs) in names.items():
        if records.exists(folder / name):
            record = records.load(folder / name)
            if record["settings"]["data"] != wanted:
                raise SystemExit(f"{folder / name} was computed on another test set; move it away")
        elif compute:
            record = compute_baseline(method, key, pairs, wanted, name, folder / name)
        else:
            continue
        out.append(record)
    return out


def compute_baseline(method, key: str, pairs: int, data_settings: dict, name: str, folder: Path) -> dict:
    import jax

    from kfjax.methods.common.gan import translation_scores
    from kfjax.methods.common.mar import by_size_group

    clock = records.Clock()
    test = method.dataset("test")
    n = len(test) if pairs <= 0 else min(pairs, len(test))
    batch = test[np.arange(n)]

    @jax.jit
    def scores(image, truth, mask, group):
        values = translation_scores(image, truth, mask)
        return values | by_size_group(values, group)

    values = scores(batch[key], batch["b"], batch["mask"], batch["size_group"])
    metrics = {k: float(np.nanmean(np.asarray(v))) for k, v in values.items()}
    settings = {"data": data_settings, "split": "test", "pairs": n if pairs > 0 else "all",
                "image": {"a": "uncorrected (FBP of the metal-affected sinogram)", "li": "LI"}[key],
                "scoring": "kfjax.methods.common.gan.translation_scores + kfjax.methods.common.mar.by_size_group"}
    record = records.make(method=name, variant=name, seed=None, settings=settings, metrics=metrics, clock=clock,
                          data={"n_test": n})
    records.save(record, folder)
    return records.load(folder)


# ---------------------------------------------------------------- tables (from records only)
def _seconds(record: dict) -> float:
    """Training (with compilation) plus the test evaluation (DIP: the fits); DuDoNet: its training only."""
    t = record["timings"]
    return t["train_s"] if record["variant"] == "dudonet" else t.get("train_s", 0.0) + t["eval_s"]


def _row(label: str, recs: list[dict], paper, groups: int, trained: bool) -> str:
    metric = lambda key: [records.get(r, f"metrics.{key}") for r in recs]  # noqa: E731
    paper_cell = f"{paper[0]} / {paper[1]}" if paper else ""
    seconds = ", ".join(f"{_seconds(r):.0f}" for r in recs) if trained else ""
    return (f"| {label} | {len(recs) if trained else ''} | {records.describe(recs, 'data.n_test')} | "
            + " | ".join(records.cell(metric(f"psnr_g{g}"), 2) for g in range(groups))
            + f" | {records.cell(metric('psnr'), 2)} | {records.cell(metric('ssim'), 4)} | {paper_cell} | {seconds} |")


def comparison_lines(runs: list[dict], pairs=COMPARISONS) -> list[str]:
    lines = []
    for a, b in pairs:
        ra = {r["seed"]: r["metrics"] for r in runs if r["variant"] == a}
        rb = {r["seed"]: r["metrics"] for r in runs if r["variant"] == b}
        if ra and rb:
            psnr = records.paired({s: m["psnr"] for s, m in ra.items()}, {s: m["psnr"] for s, m in rb.items()})
            ssim = records.paired({s: m["ssim"] for s, m in ra.items()}, {s: m["ssim"] for s, m in rb.items()})
            lines.append(f"- {LABELS[a]} − {LABELS[b]}: PSNR {records.paired_cell(psnr, 2, 'dB')}, "
                         f"SSIM {records.paired_cell(ssim, 4)}; seeds {list(psnr.seeds)}")
    return lines


def footer(runs: list[dict], baselines: list[dict]) -> str:
    every = baselines + runs
    parts = [f"Test set: {records.describe(every, lambda r: test_data(r['settings']))}."]
    if runs:
        parts.append(f"Seeds {sorted({r['seed'] for r in runs})}.")
    gans = [r for r in runs if r["method"] in ("adn", "cyclegan")]
    if gans:
        d = lambda path, recs=gans: records.describe(recs, path)  # noqa: E731
        adn = [r for r in gans if r["method"] == "adn"]
        cyc = [r for r in gans if r["method"] == "cyclegan"]
        nets = []
        if adn:
            nets.append(f"ADN base {d('settings.model.base', adn)} with {d('settings.model.num_residual', adn)} "
                        f"residual blocks per encoder/decoder")
        if cyc:
            nets.append(f"CycleGAN ngf {d('settings.model.features', cyc)} with {d('settings.model.n_blocks', cyc)} "
                        "residual blocks")
        parts.append(f"GANs: {d('settings.train.steps')} steps of batch {d('settings.data.batch_size')} on "
                     f"{d('data.n_train')} metal-affected training images ({d('settings.data.masks_per_slice')} masks "
                     f"per slice of the A half), {'; '.join(nets)}; {d('settings.model.d_layers')}-layer "
                     f"discriminators of {d('settings.model.d_features')} features.")
    dip = [r for r in runs if r["method"] == "dip"]
    if dip:
        d = lambda path: records.describe(dip, path)  # noqa: E731
        parts.append(f"DIP: {d('settings.fit.iterations')} iterations, {d('settings.fit.channels')} channels / "
                     f"{d('settings.fit.scales')} scales, on the first {d('data.n_test')} test pairs.")
    dud = [r for r in runs if r["variant"] == "dudonet"]
    if dud:
        d = lambda path: records.describe(dud, path)  # noqa: E731
        parts.append(f"DuDoNet: {d('settings.train.steps')} steps of batch {d('settings.data.batch_size')} "
                     "(experiments/dudonet's runs; its seconds are training only).")
    parts.append("s per run: each seed's training (with compilation) and test evaluation (DIP: the fits of its "
                 "pairs), without data loading and panels. mean ± sample std (ddof 1) over seeds; g0 = largest metal ... g4 = smallest. The paper's "
                 "numbers (DeepLesion, 256², 50 epochs; its LI is the CNN-MAR-protocol row of the ADN paper) are "
                 "literature values typed into run.py, for context only.")
    return " ".join(parts) + "\n\n" + records.environment_summary(every)


def table(runs: list[dict], baselines: list[dict]) -> str:
    """The README table, the paired comparisons and the footer, from run records only."""
    from kfjax.methods.common.mar import N_SIZE_GROUPS as groups

    lines = ["| method | seeds | test pairs | " + " | ".join(f"PSNR g{g}" for g in range(groups))
             + " | PSNR | SSIM | paper PSNR / SSIM | s per run |", "|" + "---|" * (groups + 7)]
    for r in baselines:
        label = r["variant"] if r["settings"]["pairs"] == "all" else f"LI (the {r['data']['n_test']} DIP pairs)"
        lines.append(_row(label, [r], PAPER.get(r["variant"]), groups, trained=False))
    for variant in VARIANTS:
        recs = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["seed"])
        if recs:
            lines.append(_row(LABELS[variant], recs, PAPER.get(variant), groups, trained=True))
    compare = comparison_lines(runs)
    if compare:
        lines += ["", "Paired over seeds (per-seed difference, mean ± sample std; two-sided paired t-test, "
                  "scipy.stats.ttest_rel):", "", *compare]
    return "\n".join(lines + ["", footer(runs, baselines)])


def panels(runs: list[dict], args, out_dir: Path) -> list[str]:
    """One PNG per method: the panel cases' metal-affected input, output, truth and |error| (lowest seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kfjax.units import to_unit

    test = build("adn", 0, args).dataset("test")
    cases = _panel_cases(len(test))
    batch = test[np.asarray(cases)]
    ma, gt, li = (np.clip(to_unit(batch[k]), 0, 1) for k in ("a", "b", "li"))
    metal = 1.0 - batch["mask"]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for variant in ["li"] + VARIANTS:
        if variant == "li":
            pred, shown = li, cases
        else:
            found = sorted((r for r in runs if r["variant"] == variant
                            and (Path(r["_folder"]) / "panel.npy").is_file()), key=lambda r: r["seed"])
            if not found:
                continue
            pred, shown = np.load(Path(found[0]["_folder"]) / "panel.npy"), found[0]["panel_cases"]
        fig, axes = plt.subplots(len(shown), 4, figsize=(8, 2 * len(shown)), squeeze=False)
        for row, case in enumerate(shown):
            i = cases.index(case)
            images = [ma[i], pred[row], gt[i], np.abs(pred[row] - gt[i]) * (1 - metal[i])]
            for col, (image, title) in enumerate(zip(images, ("metal-affected", "output", "truth", "|error| x4"))):
                ax = axes[row, col]
                ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=0.25 if col == 3 else 1)
                ax.set_xticks([]), ax.set_yticks([])
                if row == 0:
                    ax.set_title(title, fontsize=9)
            axes[row, 0].set_ylabel(f"g{batch['size_group'][i]}", fontsize=9)
        fig.suptitle(LABELS.get(variant, "LI"), fontsize=10)
        fig.tight_layout()
        fig.savefig(out_dir / f"{variant}.png", dpi=80)
        plt.close(fig)
        written.append(f"{out_dir.name}/{variant}.png")
    return written


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--geometry", default="adn_quarter", help="MAR data preset: adn_quarter (64²), adn_half, adn")
    p.add_argument("--source", default="ct", choices=["ct", "phantom"], help="ct: the real chest CT")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600, help="GAN training steps (batch 2)")
    p.add_argument("--base", type=int, default=16, help="ADN base channels / CycleGAN ngf / DIP channels")
    p.add_argument("--dip-pairs", type=int, default=DIP_DEFAULTS[0], help="test pairs given to DIP (the first ones)")
    p.add_argument("--dip-iterations", type=int, default=DIP_DEFAULTS[1])
    p.add_argument("--dudonet-steps", type=int, default=300, help="steps of the DuDoNet reference runs")
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--runs", help="folder of the runs (default: runs/ next to this script)")
    p.add_argument("--dudonet-runs", help="folder of the DuDoNet runs (default: experiments/dudonet/runs)")
    p.add_argument("--readme", default=str(HERE / "README.md"), help="file that --write rewrites (panels/ beside it)")
    p.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    p.add_argument("--write", action="store_true", help="replace the table in the README, write panels/")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from kfjax.runtime import setup_jax

    setup_jax()
    baselines = baseline_records(args)  # no training: computed (once) even with --table-only
    runs = []
    for variant in args.variants:
        for seed in args.seeds:
            if not args.table_only:
                runs.append(run_one(variant, seed, args))
            elif records.exists(run_folder(variant, seed, args)):
                runs.append(records.load(run_folder(variant, seed, args)))
    text = table(runs, baselines)
    print(text)
    if args.write:
        readme = Path(args.readme)
        names = panels(runs, args, readme.parent / "panels")
        text += "\n\n" + " ".join(f"![{Path(n).stem}]({n})" for n in names)
        records.write_section(readme, "results", text)


if __name__ == "__main__":
    main()
