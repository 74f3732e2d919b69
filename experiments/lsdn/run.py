"""LSDN vs CDN vs location-blind (+ ShrinkConnect) on simulated T1w -> T2w MR synthesis (CPU scale).

methods.md §2. Three networks of matched parameter counts (`kfjax train lsdn --set model.variant=...`):
location-blind (source patch only), CDN (patch and atlas coordinates concatenated into the first layer) and
LSDN (first-layer units = feature unit x spatial unit); then ShrinkConnect on each trained LSDN (simultaneous
OMP over its first-layer responses on training voxels, folded into the next layer: `LSDNMethod.shrink_connect`),
for each `--shrink` k. Every network is scored by its own `eval_step` through `kfjax.train.loop.evaluate`:
PSNR (data range 1 on [0, 1]) and SSIM inside the brain mask, per test slice, averaged over the 18 test
slices (three held-out slabs). A per-intensity lookup table (mean target per source-intensity bin over the
training brain voxels: the best 1-voxel location-blind mapping) is the floor.

    python experiments/lsdn/run.py --write                                  # the README's table (CPU scale)
    python experiments/lsdn/run.py --steps 20000 --hidden 256,128 --write   # paper-scale widths, a GPU

Each (variant, seed) run saves its run record (`record.json`: settings, seed, times, machine, device, versions,
git commit, metrics) and the panel slices' outputs (`panel.npy`) in `runs/steps<N>-h<widths>/<variant>-s<seed>/`
(trained networks also their checkpoints in `work/`, not kept in git). Finished runs are reused, so an
interrupted experiment continues where it stopped. The table, the paired tests and the footer are built from
the records only; `--write` puts them into README.md and the panels into `panels/`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import records  # noqa: E402  (experiments/records.py)

VARIANTS = ["blind", "cdn", "lsdn"]
LABELS = {"ceiling": "ceiling: the noise-free target", "lookup": "intensity lookup table (1 voxel, no location)",
          "blind": "location-blind",
          "cdn": "CDN (features ⊕ coordinates)", "lsdn": "LSDN (features × spatial units)"}
PANEL_CASES = (2, 8, 14)  # test rows: one slice from each of the three test slabs
PAPER = ("Paper (NAMIC T1→T2, leave-one-out, real patients): LSDN > CDN (concatenation) > location-blind in PSNR, "
         "and LSDN + ShrinkConnect 26× faster than other sparse-representation methods (MIMECS, modality "
         "propagation); its dB values are not reproduced here (not available offline, not verified).")
SPEED_REPEATS = 10  # timed forward passes (after 2 warm-up calls); the median counts
LOOKUP_BINS = 256


def label(variant: str) -> str:
    if variant.startswith("lsdn_sc"):
        return f"LSDN + ShrinkConnect, k = {variant[7:]}"
    return LABELS[variant]


# ---------------------------------------------------------------- where runs live, what they run
def run_root(args) -> Path:
    root = Path(args.runs) if args.runs else HERE / "runs"
    return root / f"steps{args.steps}-h{args.hidden.replace(',', '-')}"


def run_folder(variant: str, seed: int | None, args) -> Path:
    return run_root(args) / (variant if seed is None else f"{variant}-s{seed}")


def overrides(variant: str, seed: int, args, hidden: str | None = None) -> list[str]:
    return [f"seed={seed}", f"model.variant={variant}", f"model.hidden={hidden or args.hidden}",
            f"data.batch_size={args.batch}", f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}",
            "train.log_every=100"]


def build(variant: str, seed: int, args, hidden: str | None = None):
    from kfjax.methods import registry

    return registry.build("lsdn", overrides=overrides(variant, seed, args, hidden))


def voxels_per_second(net, params, batch) -> float:
    """Measured throughput of the jitted forward pass on `batch` (median of SPEED_REPEATS, after warm-up)."""
    import jax

    apply = jax.jit(lambda p, x, s: net.apply({"params": p}, x, s))
    x, s = jax.device_put(batch["source"]), jax.device_put(batch["coords"])
    for _ in range(2):
        apply(params, x, s).block_until_ready()
    times = []
    for _ in range(SPEED_REPEATS):
        start = time.perf_counter()
        apply(params, x, s).block_until_ready()
        times.append(time.perf_counter() - start)
    return float(x.size / statistics.median(times))


def _panel(method, state, folder: Path) -> list[int]:
    import jax

    test = method.dataset("test")
    cases = [c for c in PANEL_CASES if c < len(test)]
    out = jax.jit(method.predict)(state, test[np.asarray(cases)])["image"]
    np.save(folder / "panel.npy", np.asarray(out))
    return cases


def _cost(method, widths) -> dict:
    from kfjax.nn.lsdn import param_count

    m = method.config.model
    mult = method.multiplies(widths)
    return {"params": param_count(widths, m.variant, m.spatial_dims, m.kernel), "first_width": widths[0],
            "mults_first": mult["first_layer"], "mults_total": mult["total"], "flops": 2 * mult["total"]}


def run_trained(variant: str, seed: int, args) -> dict:
    """Train one variant with one seed (or reuse its record); test scores, cost, speed, panel."""
    import jax

    from kfjax.config import to_dict
    from kfjax.train.loop import evaluate

    method = build(variant, seed, args)
    folder = run_folder(variant, seed, args)
    record = records.finished_run(folder, method.config)
    if record is not None:
        return _with_train_scores(record, method, folder)
    clock = records.Clock()
    folder.mkdir(parents=True, exist_ok=True)
    state, train_s = records.train_to_end(method, folder / "work", f"{variant} seed {seed}")
    timings = {"train_s": train_s}
    start = time.perf_counter()
    metrics = evaluate(method, state, split="test")
    timings["eval_s"] = time.perf_counter() - start
    test = method.dataset("test")
    speed_batch = test[np.arange(min(8, len(test)))]
    metrics |= _cost(method, method.widths) | method.param_counts()
    metrics["voxels_per_s"] = voxels_per_second(method.model, state.params["model"], speed_batch)
    cases = _panel(method, state, folder)
    data = {"n_train": len(method.dataset("train")), "n_test": len(test),
            "speed_batch": list(speed_batch["source"].shape)}
    record = records.make(method="lsdn", variant=variant, seed=seed, settings=to_dict(method.config), metrics=metrics,
                          clock=clock, timings=timings, data=data, panel_cases=cases)
    records.save(record, folder)
    jax.clear_caches()
    print(f"{variant} seed {seed}: PSNR {metrics['psnr']:.2f} SSIM {metrics['ssim']:.4f} ({record['wall_s']:.0f} s)",
          file=sys.stderr, flush=True)
    return _with_train_scores(records.load(folder), method, folder)


def _with_train_scores(record: dict, method, folder: Path) -> dict:
    """The record with the training-slice scores (`train_psnr`, `train_ssim`) of its checkpoint added (once):
    training vs test PSNR tells under-fitting from over-fitting."""
    if "train_psnr" in record["metrics"]:
        return record
    from kfjax.train.loop import evaluate, restore_for_eval

    scores = evaluate(method, restore_for_eval(method, folder / "work"), split="train")
    record["metrics"] |= {"train_psnr": scores["psnr"], "train_ssim": scores["ssim"]}
    records.save(record, folder)
    return records.load(folder)


def run_shrunk(k: int, seed: int, args) -> dict:
    """ShrinkConnect with k first-layer units on the trained LSDN of `seed`; both networks timed here, back to
    back on the same batch, so their speed ratio is measured under the same load."""
    import jax

    from kfjax.config import to_dict
    from kfjax.train.loop import evaluate, init_train_state, restore_for_eval
    from kfjax.train.mesh import make_mesh

    variant = f"lsdn_sc{k}"
    full = build("lsdn", seed, args)
    folder = run_folder(variant, seed, args)
    settings = to_dict(full.config) | {"shrink_connect": {"units": k, "voxels": args.sc_voxels, "fit_seed": seed}}
    if records.exists(folder):
        record = records.load(folder)
        if record["settings"] != records._json_safe(settings):
            raise SystemExit(f"{folder} holds a ShrinkConnect run with other settings; move it away")
        return record
    run_trained("lsdn", seed, args)
    clock = records.Clock()
    folder.mkdir(parents=True, exist_ok=True)
    state = restore_for_eval(full, run_folder("lsdn", seed, args) / "work")
    start = time.perf_counter()
    net, small, fit = full.shrink_connect(state, k, args.sc_voxels, seed)
    timings = {"fit_s": time.perf_counter() - start}
    widths = (k, *full.widths[1:])
    method = build("lsdn", seed, args, hidden=",".join(str(n) for n in widths))
    state_k = init_train_state(method, make_mesh(), method.batch_spec(args.batch))
    state_k = state_k.replace(params={"model": jax.device_put(small)})
    start = time.perf_counter()
    metrics = evaluate(method, state_k, split="test")
    timings["eval_s"] = time.perf_counter() - start
    test = method.dataset("test")
    speed_batch = test[np.arange(min(8, len(test)))]
    metrics |= _cost(method, widths)
    metrics["voxels_per_s"] = voxels_per_second(net, small, speed_batch)
    metrics["voxels_per_s_full"] = voxels_per_second(full.model, state.params["model"], speed_batch)
    metrics["fit_relative_error"] = fit.relative_error
    cases = _panel(method, state_k, folder)
    record = records.make(method="lsdn", variant=variant, seed=seed, settings=settings, metrics=metrics, clock=clock,
                          timings=timings, data={"n_test": len(test), "support": fit.support.tolist()},
                          panel_cases=cases)
    records.save(record, folder)
    jax.clear_caches()
    print(f"{variant} seed {seed}: PSNR {metrics['psnr']:.2f} (fit error {fit.relative_error:.3f})",
          file=sys.stderr, flush=True)
    return records.load(folder)


def _data_settings(d) -> dict:
    """The data settings a baseline without training depends on."""
    return {k: getattr(d, k) for k in ("source", "target", "downsample", "field", "noise", "bias", "location",
                                       "data_seed")}


def _reuse_baseline(folder: Path, settings: dict) -> dict:
    """The saved record of a baseline, if it was computed with `settings`; else stop."""
    record = records.load(folder)
    if record["settings"] != records._json_safe(settings):
        raise SystemExit(f"{folder} was computed on other data; move it away")
    return record


def lookup_record(args) -> dict:
    """The floor: a table of the mean training target per source-intensity bin (brain voxels), applied to the
    test slices and scored like the networks (`translation_scores`)."""
    import jax.numpy as jnp

    from kfjax.methods.common.gan import translation_scores

    folder = run_folder("lookup", None, args)
    method = build("blind", 0, args)
    d = method.config.data
    settings = {"data": _data_settings(d), "bins": LOOKUP_BINS,
                "fit": "mean target per source bin over the training brain voxels; empty bins interpolated"}
    if records.exists(folder):
        return _reuse_baseline(folder, settings)
    clock = records.Clock()
    train, test = method.dataset("train"), method.dataset("test")
    x, y, m = (train.arrays[k][..., 0] for k in ("source", "target", "mask"))
    edges = np.linspace(-1.0, 1.0, LOOKUP_BINS + 1)
    idx = lambda v: np.clip(np.digitize(v, edges) - 1, 0, LOOKUP_BINS - 1)  # noqa: E731
    inside = m > 0
    sums = np.bincount(idx(x[inside]), y[inside], LOOKUP_BINS)
    counts = np.bincount(idx(x[inside]), None, LOOKUP_BINS)
    centres, seen = 0.5 * (edges[1:] + edges[:-1]), counts > 0
    table = np.interp(centres, centres[seen], sums[seen] / counts[seen])
    pred = table[idx(test.arrays["source"])].astype(np.float32)
    scores = translation_scores(jnp.asarray(pred), jnp.asarray(test.arrays["target"]), jnp.asarray(test.arrays["mask"]))
    metrics = {k: float(np.mean(np.asarray(v))) for k, v in scores.items()}
    folder.mkdir(parents=True, exist_ok=True)
    cases = [c for c in PANEL_CASES if c < len(test)]
    np.save(folder / "panel.npy", pred[np.asarray(cases)])
    record = records.make(method="lookup", variant="lookup", seed=None, settings=settings, metrics=metrics,
                          clock=clock, data={"n_test": len(test)}, panel_cases=cases)
    records.save(record, folder)
    return records.load(folder)


def ceiling_record(args) -> dict:
    """The ceiling: the noise-free target (the same simulation with data.noise=0, in the noisy target's intensity
    units) scored against the noisy test target like the networks: what a perfect denoised prediction scores."""
    import dataclasses

    import jax.numpy as jnp

    from kfjax.data.synthesis import synthesis_volume
    from kfjax.methods.common.gan import translation_scores

    folder = run_folder("ceiling", None, args)
    method = build("blind", 0, args)
    d = method.config.data
    settings = {"data": _data_settings(d),
                "prediction": "the same simulation with noise 0, times its intensity scale / the noisy one's"}
    if records.exists(folder):
        return _reuse_baseline(folder, settings)
    clock = records.Clock()
    clean = synthesis_volume(dataclasses.replace(d, noise=0.0))
    test = method.dataset("test")
    rows = test.arrays["slice_index"]
    ratio = clean["scale"][d.target] / method.volume["scale"][d.target]
    pred = (2.0 * np.clip(clean[d.target][rows] * ratio, 0.0, 1.0) - 1.0)[..., None].astype(np.float32)
    scores = translation_scores(jnp.asarray(pred), jnp.asarray(test.arrays["target"]), jnp.asarray(test.arrays["mask"]))
    metrics = {k: float(np.mean(np.asarray(v))) for k, v in scores.items()}
    record = records.make(method="ceiling", variant="ceiling", seed=None, settings=settings, metrics=metrics,
                          clock=clock, data={"n_test": len(test)})
    records.save(record, folder)
    return records.load(folder)


# ---------------------------------------------------------------- tables (from records only)
def _values(recs, key):
    return [records.get(r, f"metrics.{key}") for r in recs]


def _row(variant: str, recs: list[dict]) -> str:
    if variant in ("ceiling", "lookup"):
        return (f"| {label(variant)} | | | | | {records.cell(_values(recs, 'psnr'), 2)} | "
                f"{records.cell(_values(recs, 'ssim'), 4)} | | | | |")
    speed = records.cell([v / 1e6 for v in _values(recs, "voxels_per_s")], 2)
    fit = records.cell(_values(recs, "fit_relative_error"), 3) if variant.startswith("lsdn_sc") else ""
    seconds = ", ".join(f"{records.get(r, 'timings.train_s', records.get(r, 'timings.fit_s')):.0f}" for r in recs)
    return (f"| {label(variant)} | {len(recs)} | {records.describe(recs, 'metrics.first_width')} | "
            f"{records.describe(recs, 'metrics.params')} | "
            f"{records.describe(recs, 'metrics.mults_first')} / {records.describe(recs, 'metrics.mults_total')} | "
            f"{records.cell(_values(recs, 'psnr'), 2)} | {records.cell(_values(recs, 'ssim'), 4)} | "
            f"{records.cell(_values(recs, 'train_psnr'), 2)} | {speed} | {fit} | "
            f"{seconds} |")


def _by_seed(runs, variant, key):
    return {r["seed"]: r["metrics"][key] for r in runs if r["variant"] == variant}


def comparisons(runs: list[dict], shrink: list[int]) -> list[str]:
    pairs = [("lsdn", "cdn"), ("cdn", "blind"), ("lsdn", "blind")] + [("lsdn", f"lsdn_sc{k}") for k in shrink]
    lines = []
    for a, b in pairs:
        psnr = records.paired(_by_seed(runs, a, "psnr"), _by_seed(runs, b, "psnr"))
        ssim = records.paired(_by_seed(runs, a, "ssim"), _by_seed(runs, b, "ssim"))
        if psnr.n:
            lines.append(f"- {label(a)} − {label(b)}: PSNR {records.paired_cell(psnr, 2, 'dB')}, "
                         f"SSIM {records.paired_cell(ssim, 4)}; seeds {list(psnr.seeds)}")
    full = [r["metrics"] for r in runs if r["variant"] == "lsdn"]
    for k in shrink:
        sc = [r["metrics"] for r in runs if r["variant"] == f"lsdn_sc{k}"]
        if sc and full:
            ratio = [m["voxels_per_s"] / m["voxels_per_s_full"] for m in sc]
            lines.append(f"- ShrinkConnect k = {k}: measured speed-up over the full LSDN (same process, same batch, "
                         f"back to back) {records.cell(ratio, 2)}×; multiplications per voxel, first layer "
                         f"{full[0]['mults_first']} → {sc[0]['mults_first']} "
                         f"({full[0]['mults_first'] / sc[0]['mults_first']:.1f}× fewer), all layers "
                         f"{full[0]['mults_total']} → {sc[0]['mults_total']} "
                         f"({full[0]['mults_total'] / sc[0]['mults_total']:.1f}× fewer)")
    return lines


def _order(diff: records.Paired, a: str, b: str) -> str:
    """"a > b (significant)" style verdict of a paired difference a - b (p < 0.05 two-sided)."""
    if diff.n < 2:
        return f"{a} vs {b}: not enough seeds"
    winner, loser = (a, b) if diff.mean > 0 else (b, a)
    sig = "significant" if diff.p < 0.05 else "not significant"
    return f"{winner} > {loser} by {abs(diff.mean):.2f} dB ({sig} at n = {diff.n}, p = {diff.p:.2g})"


def reading(runs: list[dict], shrink: list[int]) -> list[str]:
    """What the table says about the paper's claims, in sentences whose numbers come from the records."""
    psnr = {v: _by_seed(runs, v, "psnr") for v in ["blind", "cdn", "lsdn", *(f"lsdn_sc{k}" for k in shrink)]}
    lines = []
    if psnr["lsdn"] and psnr["cdn"]:
        prod = records.paired(psnr["lsdn"], psnr["cdn"])
        text = f"- Product vs concatenation: {_order(prod, 'LSDN', 'CDN')}."
        if psnr["blind"]:
            loc = records.paired(psnr["cdn"], psnr["blind"]), records.paired(psnr["lsdn"], psnr["blind"])
            paper = prod.n >= 2 and prod.mean > 0 and prod.p < 0.05 and all(d.mean > 0 and d.p < 0.05 for d in loc)
            text += (f" Location: {_order(loc[0], 'CDN', 'blind')}; {_order(loc[1], 'LSDN', 'blind')}. The paper's "
                     f"full ordering LSDN > CDN > location-blind {'appears' if paper else 'does not appear'} here.")
        lines.append(text)
        present = [v for v in ("blind", "cdn", "lsdn") if psnr[v]]
        gaps = {v: records.mean_std([r["metrics"].get("train_psnr", np.nan) - r["metrics"]["psnr"] for r in runs
                                     if r["variant"] == v])[0] for v in present}
        train = {v: records.mean_std([r["metrics"].get("train_psnr") for r in runs if r["variant"] == v])[0]
                 for v in ("cdn", "lsdn")}
        if all(np.isfinite(list(gaps.values()))):
            each = ", ".join(f"{gaps[v]:+.2f} dB ({v})" for v in present)
            lines.append(f"- Fit: training minus test PSNR is {each}: no network over-fits the training slabs, and "
                         "all stay far below the ceiling. On the training slices themselves LSDN reaches "
                         f"{train['lsdn']:.2f} dB and CDN {train['cdn']:.2f} dB, so the difference between them is one "
                         "of fitting (optimisation or capacity at this width and length), not of generalisation.")
    for k in shrink:
        sc = [r["metrics"] for r in runs if r["variant"] == f"lsdn_sc{k}"]
        if sc and psnr["lsdn"]:
            loss = records.paired(psnr["lsdn"], psnr[f"lsdn_sc{k}"])
            speed = records.mean_std([m["voxels_per_s"] / m["voxels_per_s_full"] for m in sc])[0]
            lines.append(f"- ShrinkConnect, k = {k}: {speed:.1f}× faster measured, at a loss of {loss.mean:.2f} dB "
                         f"(p = {loss.p:.2g}); the first-layer responses are reproduced to a relative error of "
                         f"{records.mean_std([m['fit_relative_error'] for m in sc])[0]:.3f}.")
    return lines


def footer(runs: list[dict]) -> str:
    trained = [r for r in runs if r["variant"] in VARIANTS]
    d = lambda path: records.describe(trained, path)  # noqa: E731
    parts = [
        f"Data: {d('settings.data.source')} → {d('settings.data.target')}, {d('settings.data.downsample')} mm "
        f"slices ({d('data.n_train')} training slices, {d('data.n_test')} test slices from 3 held-out slabs) of "
        f"one subject simulated from the real MNI152 template (location-dependent contrast "
        f"{d('settings.data.location')}, bias fields {d('settings.data.bias')}, noise {d('settings.data.noise')}).",
        f"Training: {d('settings.train.steps')} steps of {d('settings.data.batch_size')} slices, Adam "
        f"{d('settings.optim.lr')}, MSE over {d('settings.loss.region')} voxels of the slices; LSDN widths "
        f"{d('settings.model.hidden')} ({d('settings.model.activation')} after the first layer, linear output); "
        f"CDN and blind: first width matched to LSDN's parameter count (`model.match_params`).",
        f"Seeds {sorted({r['seed'] for r in trained})}. mean ± sample std (ddof 1) over seeds. Multiplications per "
        "voxel: first layer / all layers (FLOPs = 2 × all). voxels/s: jitted forward pass on 8 test slices, median "
        f"of {SPEED_REPEATS} after warm-up, on a shared 2-core CPU (noisy: compare the same-process ratios below). "
        "train PSNR: the same score on the training slices (final checkpoint). s: training with compilation "
        "(ShrinkConnect rows: the fit).",
    ]
    return " ".join(parts) + "\n\n" + PAPER + "\n\n" + records.environment_summary(runs)


def table(runs: list[dict], shrink: list[int]) -> str:
    lines = ["| method | seeds | first width | params | mults / voxel (first / all) | PSNR (dB) | SSIM | "
             "train PSNR | Mvoxels/s | SC fit error | s |", "|" + "---|" * 11]
    for variant in ["ceiling", "lookup", *VARIANTS, *(f"lsdn_sc{k}" for k in shrink)]:
        recs = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["seed"] or 0)
        if recs:
            lines.append(_row(variant, recs))
    compare = comparisons(runs, shrink)
    if compare:
        lines += ["", "Paired over seeds (per-seed difference, mean ± sample std; two-sided paired t-test, "
                  "scipy.stats.ttest_rel):", "", *compare]
    read = reading(runs, shrink)
    if read:
        lines += ["", "Reading (generated from the same records):", "", *read]
    return "\n".join(lines + ["", footer(runs)])


def panels(runs: list[dict], args, out_dir: Path) -> list[str]:
    """One PNG per method: source, target, output, |error| on the panel slices (lowest seed's run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = build("blind", 0, args).dataset("test")
    cases = [c for c in PANEL_CASES if c < len(test)]
    batch = test[np.asarray(cases)]
    unit = lambda a: np.clip((a + 1.0) * 0.5, 0.0, 1.0)  # noqa: E731
    src, tgt, mask = unit(batch["source"]), unit(batch["target"]), batch["mask"]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    variants = ["lookup", *VARIANTS, *(f"lsdn_sc{k}" for k in args.shrink)]
    for variant in variants:
        found = sorted((r for r in runs if r["variant"] == variant and (Path(r["_folder"]) / "panel.npy").is_file()),
                       key=lambda r: r["seed"] or 0)
        if not found:
            continue
        pred = unit(np.load(Path(found[0]["_folder"]) / "panel.npy"))
        fig, axes = plt.subplots(len(cases), 4, figsize=(7, 2.3 * len(cases)), squeeze=False)
        for row, i in enumerate(range(len(cases))):
            images = [src[i], tgt[i], pred[i], np.abs(pred[i] - tgt[i]) * mask[i]]
            titles = ("source (T1w)", "target (T2w)", "output", "|error| in brain, x4")
            for col, (image, title) in enumerate(zip(images, titles)):
                ax = axes[row, col]
                ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=0.25 if col == 3 else 1)
                ax.set_xticks([]), ax.set_yticks([])
                if row == 0:
                    ax.set_title(title, fontsize=8)
            axes[row, 0].set_ylabel(f"slice {int(batch['slice_index'][i])}", fontsize=8)
        seed = found[0]["seed"]
        fig.suptitle(label(variant) + ("" if seed is None else f" (seed {seed})"), fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / f"{variant}.png", dpi=80)
        plt.close(fig)
        written.append(f"{out_dir.name}/{variant}.png")
    return written


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=4000, help="training steps per run")
    p.add_argument("--batch", type=int, default=4, help="slices per step")
    p.add_argument("--hidden", default="64,32", help="LSDN widths (CDN and blind are matched to its count)")
    p.add_argument("--shrink", type=int, nargs="+", default=[16, 8], help="ShrinkConnect units to keep")
    p.add_argument("--sc-voxels", type=int, default=65536, help="training voxels of the ShrinkConnect fit")
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--runs", help="folder of the runs (default: runs/ next to this script)")
    p.add_argument("--readme", default=str(HERE / "README.md"), help="file that --write rewrites (panels/ beside it)")
    p.add_argument("--section", default="results", help="README section (<!-- NAME:begin/end -->) that --write replaces")
    p.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    p.add_argument("--write", action="store_true", help="replace the table in the README, write panels/")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from kfjax.runtime import setup_jax

    setup_jax()
    runs = [ceiling_record(args), lookup_record(args)]
    jobs = [(v, s) for s in args.seeds for v in args.variants]  # seed-major: every variant of seed 0 first
    jobs += [(f"lsdn_sc{k}", s) for s in args.seeds for k in args.shrink if "lsdn" in args.variants]
    for variant, seed in jobs:
        folder = run_folder(variant, seed, args)
        if args.table_only:
            if records.exists(folder):
                runs.append(records.load(folder))
        elif variant.startswith("lsdn_sc"):
            runs.append(run_shrunk(int(variant[7:]), seed, args))
        else:
            runs.append(run_trained(variant, seed, args))
    text = table(runs, args.shrink)
    print(text)
    if args.write:
        readme = Path(args.readme)
        if args.section == "results":  # the panels belong to the main table
            names = panels(runs, args, readme.parent / "panels")
            text += "\n\n" + " ".join(f"![{Path(n).stem}]({n})" for n in names)
        records.write_section(readme, args.section, text)


if __name__ == "__main__":
    main()
