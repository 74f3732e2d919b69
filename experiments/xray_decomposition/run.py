"""X-ray decomposition (bone suppression) learned from DRR components: trained on clean DRRs, with and without
the LoG-domain loss and unpaired CycleGAN adaptation, and on detector-model radiographs, scored on held-out
poses of both domains (CPU scale).

methods.md §1. Every image is a DRR of the real chest CT at a new pose and a new deformation, split exactly
into bone and soft-tissue line integrals (`kfjax.data.xray_decomposition`); the "radiograph" domain is the
same DRR through a detector model (beam hardening, scatter, blur, Poisson noise, collimation, gamma), whose
truth is therefore known. Variants (`kfjax train xray_decomposition --set ...`):

- drr: trained on clean DRRs (no adaptation): how much of it survives the domain shift;
- drr_log: the same with the LoG-domain L1 (`loss.log_weight`);
- drr_adapted, drr_log_adapted: drr and drr_log trained on the DRRs translated by a CycleGAN into the detector
  domain (`data.translator_workdir`); the targets stay the exact DRR components;
- detector: trained on the detector-model images with their exact targets: the upper bound that a perfect
  adaptation could reach (real radiographs have no such targets);
- no suppression: bone = 0 and soft tissue = the input (computed from the test arrays, no network).

The translator of each seed is a `cyclegan` run on the `xray` recipe (`kfjax.data.unpaired`) of the same
training images, unpaired: DRRs of one half and detector images of the other half (split by the seed), small
at CPU scale (`--gan-features`, `--gan-blocks`, `--gan-steps`; identity loss 0.5). Its record, in
`runs/<settings>/cyclegan-s<seed>/`, holds the test PSNR/SSIM of G_AB(DRR) against the detector image of the
same DRR, and of the untranslated DRR; the adapted runs record its workdir relative to `runs/<settings>/`.

Each network is scored by its own `eval_step` (`kfjax.train.loop.evaluate`) on the test split of both input
domains: PSNR/SSIM (range 1, line integral / 6) of the bone and soft-tissue images, L1 of the bone line
integral. Each (variant, seed) run saves its record (`record.json`: settings, seed, times, machine, versions,
git commit, metrics) in `runs/<settings>/<variant>-s<seed>/`; finished runs are reused; the table, paired tests
and footer are built from the records only, and `--write` puts them into README.md and panels into `panels/`.

    python experiments/xray_decomposition/run.py --write
    python experiments/xray_decomposition/run.py --size 256 --n-train 4000 --channels 64,128,256,512 \\
        --steps 20000 --write                                  # paper-scale widths and images, a GPU
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

VARIANTS = {"drr": [], "drr_log": ["loss.log_weight=1"], "drr_adapted": [], "drr_log_adapted": ["loss.log_weight=1"],
            "detector": ["data.domain=detector"]}
ADAPTED = ("drr_adapted", "drr_log_adapted")  # trained on the DRRs translated by the seed's CycleGAN
LABELS = {"none": "no suppression (bone 0, soft tissue = input)", "drr": "trained on DRRs (no adaptation)",
          "drr_log": "trained on DRRs + LoG-domain loss", "drr_adapted": "trained on DRRs adapted by CycleGAN",
          "drr_log_adapted": "trained on adapted DRRs + LoG-domain loss",
          "detector": "trained on detector images (upper bound)"}
PAIRS = (("drr_log", "drr"), ("drr_adapted", "drr"), ("drr_log_adapted", "drr_log"), ("drr_log_adapted", "drr_adapted"),
         ("detector", "drr"), ("detector", "drr_adapted"))  # paired differences a − b in the table
GAN_STEPS = 1000  # default CycleGAN steps (about 10 minutes on 2 busy CPU cores at 64², 16 features, 3 blocks); 400 blurred fine anatomy
TRANSLATOR = "cyclegan"  # folder of the translator of seed s: runs/<settings>/cyclegan-s<s>/
DOMAINS = ("detector", "drr")
SCORES = ("psnr_soft", "ssim_soft", "psnr_bone", "ssim_bone", "l1_bone")
PANEL_CASES = (0, 1, 2, 3)  # test images shown in every panel
PAPER = ("Paper context (not comparable: real radiographs, a reader study): bone-suppressed images raised readers' "
         "accuracy by 8 % and cut reading time by 27 % (the talk); the TMI 2020 method works in the LoG domain to "
         "narrow the radiograph/DRR gap. No PSNR table of the paper is reproduced here.")


def settings_folder(args) -> Path:
    """runs/<settings>/: the runs of one set of decomposition settings (the translators' paths are relative to it)."""
    root = Path(args.runs) if args.runs else HERE / "runs"
    return root / f"size{args.size}_n{args.n_train}_c{args.channels.replace(',', '-')}_steps{args.steps}"


def run_folder(variant: str, seed: int, args) -> Path:
    return settings_folder(args) / f"{variant}-s{seed}"


def build_translator(seed: int, args):
    """The CycleGAN DRR -> detector translator of `seed` on the decomposition's images (`xray` recipe)."""
    from kfjax.methods import registry

    return registry.build("cyclegan", overrides=[
        f"seed={seed}", "data.recipe=xray", "data.source=ct", f"data.size={args.size}", f"data.n_train={args.n_train}",
        f"data.n_val={args.n_test}", f"model.features={args.gan_features}", f"model.d_features={args.gan_features}",
        f"model.n_blocks={args.gan_blocks}", "loss.identity_weight=0.5", f"train.steps={args.gan_steps}",
        f"train.checkpoint_every={args.gan_steps}", "train.log_every=50"])


def run_translator(seed: int, args) -> dict:
    """Train the translator of `seed` (or reuse its record): test PSNR/SSIM of G_AB(DRR) and of the DRR itself
    against the detector image of the same DRR."""
    import jax

    from kfjax.config import to_dict
    from kfjax.methods.common.gan import translation_scores
    from kfjax.train.loop import evaluate

    method = build_translator(seed, args)
    folder = translator_workdir(seed, args).parent
    record = records.finished_run(folder, method.config)
    if record is not None:
        return record
    clock = records.Clock()
    folder.mkdir(parents=True, exist_ok=True)
    state, train_s = records.train_to_end(method, folder / "work", f"translator seed {seed}")
    start = time.perf_counter()
    metrics = evaluate(method, state, split="test")
    test = method.dataset("test").arrays
    untranslated = translation_scores(test["a"], test["b"], test["mask"])
    metrics |= {f"untranslated_{k}": float(np.mean(v)) for k, v in untranslated.items()}
    train = method.dataset("train")
    record = records.make(method="cyclegan", variant="translator", seed=seed, settings=to_dict(method.config),
                          metrics=metrics, clock=clock, timings={"train_s": train_s,
                                                                 "eval_s": time.perf_counter() - start},
                          data={"n_train_a": len(train.a), "n_train_b": len(train.b), "n_test": len(test["a"])})
    records.save(record, folder)
    jax.clear_caches()
    print(f"translator seed {seed}: test PSNR {metrics['psnr']:.2f} dB (untranslated "
          f"{metrics['untranslated_psnr']:.2f}) ({record['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    return records.load(folder)


def translator_workdir(seed: int, args) -> Path:
    return settings_folder(args) / f"{TRANSLATOR}-s{seed}" / "work"


def build(variant: str, seed: int, args, domain: str | None = None):
    """The decomposition of `variant` (scored on `domain`); adapted variants use the seed's translator."""
    from kfjax.methods import registry

    extra = VARIANTS[variant] + ([f"data.domain={domain}"] if domain else [])
    if variant in ADAPTED:
        extra.append(f"data.translator_workdir={translator_workdir(seed, args)}")
    return registry.build("xray_decomposition", overrides=[
        f"seed={seed}", f"data.size={args.size}", f"data.n_train={args.n_train}", f"data.n_val={args.n_test}",
        f"model.channels={args.channels}", f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}",
        "train.log_every=100", *extra])


def recorded_config(method, variant: str, seed: int, args):
    """`method.config` as its record keeps it: the translator's workdir relative to runs/<settings>/ (no path
    of this machine)."""
    from kfjax.config import apply_overrides

    if variant not in ADAPTED:
        return method.config
    relative = translator_workdir(seed, args).relative_to(settings_folder(args))
    return apply_overrides(method.config, [f"data.translator_workdir={relative}"])


def run(variant: str, seed: int, args) -> dict:
    """Train one variant with one seed (or reuse its record); its scores on both test domains and a panel."""
    import jax

    from kfjax.config import to_dict
    from kfjax.train.loop import evaluate

    if variant in ADAPTED:
        run_translator(seed, args)
    method = build(variant, seed, args)
    recorded = recorded_config(method, variant, seed, args)
    folder = run_folder(variant, seed, args)
    record = records.finished_run(folder, recorded)
    if record is not None:
        return record
    clock = records.Clock()
    folder.mkdir(parents=True, exist_ok=True)
    state, train_s = records.train_to_end(method, folder / "work", f"{variant} seed {seed}")
    start = time.perf_counter()
    metrics = {}
    for domain in DOMAINS:
        scores = evaluate(build(variant, seed, args, domain), state, split="test")
        metrics |= {f"{domain}_{k}": v for k, v in scores.items()}
    test = build(variant, seed, args, "detector").dataset("test")[np.asarray(PANEL_CASES)]
    out = jax.jit(method.predict)(state, test)
    np.save(folder / "panel.npy", np.concatenate([np.asarray(out["bone"]), np.asarray(out["soft"])], -1))
    record = records.make(method="xray_decomposition", variant=variant, seed=seed, settings=to_dict(recorded),
                          metrics=metrics, clock=clock, timings={"train_s": train_s,
                                                                 "eval_s": time.perf_counter() - start},
                          data={"n_train": len(method.dataset("train")), "n_test": args.n_test},
                          panel_cases=list(PANEL_CASES))
    records.save(record, folder)
    jax.clear_caches()
    print(f"{variant} seed {seed}: detector PSNR soft {metrics['detector_psnr_soft']:.2f}, bone "
          f"{metrics['detector_psnr_bone']:.2f} ({record['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    return records.load(folder)


def no_suppression(args) -> dict[str, float]:
    """Scores of bone = 0 and soft tissue = the input image, on the test split of each domain."""
    import jax.numpy as jnp

    from kfjax import metrics
    from kfjax.data.xray_decomposition import LINE_INTEGRAL_SCALE

    scores = {}
    for domain in DOMAINS:
        test = build("drr", 0, args, domain).dataset("test").arrays
        image, target = jnp.asarray(test["image"]), jnp.asarray(test["target"]) / LINE_INTEGRAL_SCALE
        bone, soft = jnp.zeros_like(image), image
        for name, (x, y) in {"soft": (soft, target[..., 1:]), "bone": (bone, target[..., :1])}.items():
            scores[f"{domain}_psnr_{name}"] = float(jnp.mean(metrics.psnr(x, y, 1.0)))
            scores[f"{domain}_ssim_{name}"] = float(jnp.mean(metrics.ssim(x, y, 1.0)))
        scores[f"{domain}_l1_bone"] = float(jnp.mean(jnp.abs(target[..., :1]))) * LINE_INTEGRAL_SCALE
    return scores


def table(rows: list[dict], baseline: dict[str, float], translators: list[dict]) -> str:
    head = ["| method | " + " | ".join(f"{d} {s.replace('_', ' ')}" for d in DOMAINS for s in SCORES[:4]) + " |",
            "|---|" + "---|" * (len(DOMAINS) * 4)]
    lines = head + ["| " + LABELS["none"] + " | " + " | ".join(
        f"{baseline[f'{d}_{s}']:.{2 if 'psnr' in s else 4}f}" for d in DOMAINS for s in SCORES[:4]) + " |"]
    by_variant = {v: {r["seed"]: r for r in rows if r["variant"] == v} for v in VARIANTS}
    for v, runs in by_variant.items():
        if runs:
            lines.append(f"| {LABELS[v]} | " + " | ".join(
                records.cell([r["metrics"][f"{d}_{s}"] for r in runs.values()], 2 if "psnr" in s else 4)
                for d in DOMAINS for s in SCORES[:4]) + " |")
    lines += ["", "Paired differences over seeds (detector-domain test images):", ""]
    for a, b in PAIRS:
        if by_variant[a] and by_variant[b]:
            for score, unit in (("psnr_soft", "dB"), ("psnr_bone", "dB")):
                pair = records.paired({s: r["metrics"][f"detector_{score}"] for s, r in by_variant[a].items()},
                                      {s: r["metrics"][f"detector_{score}"] for s, r in by_variant[b].items()})
                lines.append(f"- {LABELS[a]} − {LABELS[b]}, {score.replace('_', ' ')}: "
                             f"{records.paired_cell(pair, 2, unit)}")
    d = lambda path, fmt=str: records.describe(rows, path, fmt)  # noqa: E731
    lines += ["", f"Settings (from the run records): {d('settings.data.n_train')} training images, "
              f"{d('data.n_test')} test images per domain at {d('settings.data.size')}², U-Net channels "
              f"{d('settings.model.channels', lambda v: '-'.join(map(str, v)))}, {d('settings.train.steps')} steps "
              f"of batch {d('settings.data.batch_size')}, Adam lr {d('settings.optim.lr', lambda v: f'{v:g}')} "
              f"({d('settings.optim.schedule')}); LoG σ {d('settings.loss.log_sigma')} px. Mean ± sample std over "
              f"seeds {', '.join(str(s) for s in records.distinct(rows, 'seed'))}; paired t-tests across seeds.",
              *translator_lines(translators), "", PAPER, "", records.environment_summary(rows + translators)]
    return "\n".join(lines)


def translator_lines(translators: list[dict]) -> list[str]:
    """The footer paragraph on the CycleGAN translators of the adapted variants (none: no lines)."""
    if not translators:
        return []
    d = lambda path, fmt=str: records.describe(translators, path, fmt)  # noqa: E731
    m = lambda key, digits: records.cell([r["metrics"][key] for r in translators], digits)  # noqa: E731
    return ["", f"Translators (CycleGAN DRR → detector image, one per seed; seeds "
            f"{', '.join(str(s) for s in records.distinct(translators, 'seed'))}): trained unpaired on the DRRs of "
            f"{d('data.n_train_a')} training images and the detector images of {d('data.n_train_b')} others, "
            f"{d('settings.train.steps')} steps of batch {d('settings.data.batch_size')}, "
            f"{d('settings.model.features')} features, {d('settings.model.n_blocks')} residual blocks, identity weight "
            f"{d('settings.loss.identity_weight')}. Test pairs (the detector image of the same DRR, [0, 1]): "
            f"G_AB(DRR) PSNR {m('psnr', 2)} dB, SSIM {m('ssim', 4)}; the untranslated DRR PSNR "
            f"{m('untranslated_psnr', 2)} dB, SSIM {m('untranslated_ssim', 4)}."]


def panels(rows: list[dict], args, folder: Path) -> None:
    """panels/<variant>.png: the detector-domain test images, true and predicted bone and soft tissue (first seed)."""
    from kfjax.data.xray_decomposition import LINE_INTEGRAL_SCALE
    from kfjax.viz import image_panel

    test = build("drr", 0, args, "detector").dataset("test")[np.asarray(PANEL_CASES)]
    truth = test["target"] / LINE_INTEGRAL_SCALE
    bone_range = (0.0, float(truth[..., 0].max()))  # true and predicted bone on one scale
    folder.mkdir(exist_ok=True)
    for v in VARIANTS:
        runs = sorted((r for r in rows if r["variant"] == v), key=lambda r: r["seed"])
        if not runs:
            continue
        pred = np.load(run_folder(v, runs[0]["seed"], args) / "panel.npy") / LINE_INTEGRAL_SCALE
        cells = [[test["image"][i, ..., 0], truth[i, ..., 0], pred[i, ..., 0], truth[i, ..., 1], pred[i, ..., 1]]
                 for i in range(len(PANEL_CASES))]
        image_panel(cells, ["detector image", "true bone", "predicted bone", "true soft tissue",
                            "predicted soft tissue"], folder / f"{v}.png",
                    vrange=[(0, 1), bone_range, bone_range, (0, 1), (0, 1)])


def real_radiograph(rows: list[dict], args, folder: Path) -> None:
    """panels/chest-xray.png: the real PA radiograph decomposed by the detector-trained network of the first seed
    (the side-by-side panel of `kfjax infer`; its full-size 16-bit images are not kept)."""
    import shutil
    import tempfile

    from kfjax.data import sources
    from kfjax.train.loop import restore_for_eval

    runs = sorted((r for r in rows if r["variant"] == "detector"), key=lambda r: r["seed"])
    if not runs:
        return
    method = build("detector", runs[0]["seed"], args)
    state = restore_for_eval(method, run_folder("detector", runs[0]["seed"], args) / "work")
    with tempfile.TemporaryDirectory() as tmp:
        method.infer(state, {"volume": sources.load("chest-xray")}, progress=False).write(tmp)
        shutil.copyfile(Path(tmp) / "decomposition.png", folder / "chest-xray.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--size", type=int, default=64, help="detector side in pixels")
    p.add_argument("--n-train", type=int, default=400, help="training images (each a new pose and deformation)")
    p.add_argument("--n-test", type=int, default=100, help="test (and validation) images per domain")
    p.add_argument("--channels", default="16,32,64,128", help="U-Net features per level")
    p.add_argument("--steps", type=int, default=600, help="training steps per run")
    p.add_argument("--gan-steps", type=int, default=GAN_STEPS, help="training steps of each CycleGAN translator")
    p.add_argument("--gan-features", type=int, default=16, help="CycleGAN generator and discriminator base features")
    p.add_argument("--gan-blocks", type=int, default=3, help="CycleGAN generator residual blocks")
    p.add_argument("--runs", help="folder of the runs (default: runs/ next to this script)")
    p.add_argument("--readme", default=str(HERE / "README.md"), help="file that --write rewrites (panels/ beside it)")
    p.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    p.add_argument("--write", action="store_true", help="replace the results section of the README, write panels/")
    args = p.parse_args()
    rows, translators = [], []
    for seed in args.seeds:
        for v in args.variants:
            if args.table_only:
                if records.exists(run_folder(v, seed, args)):
                    rows.append(records.load(run_folder(v, seed, args)))
            else:
                rows.append(run(v, seed, args))
        if set(args.variants) & set(ADAPTED) and records.exists(translator_workdir(seed, args).parent):
            translators.append(records.load(translator_workdir(seed, args).parent))
    if not rows:
        raise SystemExit("no finished runs to tabulate")
    text = table(rows, no_suppression(args), translators)
    print(text)
    if args.write:
        records.write_section(args.readme, "results", text)
        panel_dir = Path(args.readme).parent / "panels"
        panels(rows, args, panel_dir)
        real_radiograph(rows, args, panel_dir)


if __name__ == "__main__":
    main()
