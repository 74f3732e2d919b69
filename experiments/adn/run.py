"""ADN vs CycleGAN vs deep image prior vs LI (and supervised DuDoNet) on simulated metal artifacts.

methods.md §11-12. ADN and CycleGAN train on unpaired data (metal-affected images from half of the training
slices, artifact-free images from the other half); DIP fits each test image alone (image- or sinogram-domain
data term); the ADN ablation ladder drops loss terms. Test pairs, metal masks and scores are DuDoNet's
(`experiments/dudonet`): the 10 test masks on every test slice, PSNR/SSIM on μ clipped to [0, 0.05] /mm and
mapped to [0, 1] (data range 1), outside the metal; DIP runs on the first `--dip-pairs` pairs only.

    python experiments/adn/run.py --write                        # the README's table (CPU scale, see README)
    python experiments/adn/run.py --geometry adn --base 64 --steps 4500 --write   # 50 epochs at 256², a GPU

Each (variant, seed) run writes `runs/<geometry>/steps<N>/<variant>-s<seed>/result.json` (and the panel cases'
outputs); finished runs are reused, so an interrupted experiment continues where it stopped. `--write` puts
the table into README.md and the per-method panels into `panels/`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GROUPS = 5
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
PAPER = {"adn": (33.6, 0.924), "cyclegan": (30.8, 0.729), "dip_image": (26.4, 0.759), "LI": (32.0, 0.910),
         "adn_adv": (21.7, 0.615), "adn_rec": (26.3, 0.821), "adn_art": (32.8, 0.916)}  # ADN paper, SYN set


def case_scores(pred_unit: np.ndarray, gt_unit: np.ndarray, metal: np.ndarray) -> dict[str, list[float]]:
    """Per-case PSNR and SSIM outside the metal; inputs `(N, H, W, 1)` on [0, 1]."""
    from kfjax import metrics

    keep = 1.0 - metal
    return {"psnr": np.asarray(metrics.psnr(pred_unit, gt_unit, 1.0, mask=keep)).tolist(),
            "ssim": np.asarray(metrics.ssim(pred_unit, gt_unit, 1.0, mask=keep)).tolist()}


def test_set(args) -> dict[str, np.ndarray]:
    from kfjax.data.mar import mar_data, to_unit_range

    arrays = mar_data("test", source="ct", geometry=args.geometry, seed=0, slice_step=1)
    out = {k: to_unit_range(arrays[k]).astype(np.float32) for k in ("gt_image", "ma_image", "li_image")}
    return out | {"metal": arrays["metal_mask"].astype(np.float32), "group": arrays["size_group"], "raw": arrays}


def gan_sets(variant: str, seed: int, args) -> tuple[type, list[str]]:
    from kfjax.methods.adn import ADNMethod
    from kfjax.methods.cyclegan import CycleGANMethod

    data = ["data.source=ct", f"data.geometry={args.geometry}", "data.eval_slice_step=1", "data.masks_per_slice=4",
            "data.batch_size=2", f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}",
            "train.log_every=50", f"seed={seed}"]
    if variant == "cyclegan":
        return CycleGANMethod, data + [f"model.features={args.base}", "model.n_blocks=3",
                                       f"model.d_features={args.base}", "model.d_layers=2"]
    return ADNMethod, data + [f"model.base={args.base}", "model.num_residual=2",
                              f"model.d_features={args.base}"] + ADN_LADDER[variant][0]


def predict_gan(method, state, images_unit: np.ndarray, batch: int = 20) -> np.ndarray:
    """The trained generator on metal-affected images `(N, H, W, 1)` on [0, 1] -> outputs on [0, 1]."""
    import jax

    predict = jax.jit(lambda s, a: method.predict(s, {"a": a})["unit"])
    out = [np.asarray(predict(state, images_unit[i:i + batch] * 2.0 - 1.0)) for i in range(0, len(images_unit), batch)]
    return np.concatenate(out)


def run_dudonet(seed: int, args) -> tuple[dict, np.ndarray]:
    """DuDoNet from experiments/dudonet (its finished run, or trained now with its defaults): time, outputs."""
    import jax

    from kfjax.cli import build_method
    from kfjax.methods.dudonet import unit_range
    from kfjax.train.loop import restore_for_eval

    spec = importlib.util.spec_from_file_location("dudonet_run", HERE.parent / "dudonet" / "run.py")
    dudonet_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dudonet_run)
    dargs = dudonet_run.parse_args(["--geometry", args.geometry, "--steps", str(args.dudonet_steps)])
    result = dudonet_run.run_one("dual", seed, dargs)
    method = build_method("dudonet", overrides=result["overrides"])
    state = restore_for_eval(method, dudonet_run.run_folder("dual", seed, dargs) / "work")
    data = method.dataset("test")
    predict = jax.jit(lambda s, b: unit_range(method.predict(s, b)["x_out"]))
    pred = [np.asarray(predict(state, data[np.arange(i, min(i + 20, len(data)))])) for i in range(0, len(data), 20)]
    return {"train_s": result["train_s"]}, np.concatenate(pred)


def run_folder(variant: str, seed: int, args) -> Path:
    """Where one (variant, seed) run keeps result.json and panel.npy."""
    return HERE / "runs" / args.geometry / f"steps{args.steps}" / f"{variant}-s{seed}"


def run_one(variant: str, seed: int, test: dict, args) -> dict:
    """Train/fit one variant with one seed (or reuse its finished run): per-case scores, time, panel outputs."""
    folder = run_folder(variant, seed, args)
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    start = time.time()
    gt, metal = test["gt_image"], test["metal"]
    cases = np.arange(len(gt))
    if variant.startswith("dip_"):
        from kfjax.methods.dip import DIPConfig, mar_dip

        cases = cases[: args.dip_pairs]
        sub = {k: (v[cases] if getattr(v, "ndim", 0) else v) for k, v in test["raw"].items()}
        cfg = DIPConfig(channels=args.base, scales=3, iterations=args.dip_iterations, seed=seed)
        pred = mar_dip(cfg, sub, variant.split("_")[1], batch_size=1, geometry=args.geometry)  # vmap is slower on CPU
        extra = {"iterations": args.dip_iterations}
    elif variant == "dudonet":
        extra, pred = run_dudonet(seed, args)
    else:
        from kfjax.config import apply_overrides
        from kfjax.train.loop import train

        cls, sets = gan_sets(variant, seed, args)
        method = cls(apply_overrides(cls.Config(), sets))
        with tempfile.TemporaryDirectory() as workdir:
            state = train(method, workdir, progress=False, evaluate_at_end=False).state
        pred = predict_gan(method, state, test["ma_image"])
        extra = {"overrides": sets}
    seconds = time.time() - start
    out = {"variant": variant, "seed": seed, "seconds": seconds, "cases": cases.tolist(), **extra,
           **case_scores(pred, gt[cases], metal[cases])}
    np.save(folder / "panel.npy", pred[list(PANEL_CASES)])
    done.write_text(json.dumps(out, indent=1))
    print(f"{variant} seed {seed}: PSNR {np.mean(out['psnr']):.2f} SSIM {np.mean(out['ssim']):.4f} "
          f"({seconds:.0f} s)", flush=True)
    return out


def _cell(values, digits: int) -> str:
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}" if len(values) > 1 else f"{values[0]:.{digits}f}"


def _row(name: str, runs: list[dict], group: np.ndarray, paper, seconds: str) -> str:
    groups = []
    for g in range(GROUPS):
        per_seed = [np.mean([p for p, c in zip(r["psnr"], r["cases"]) if group[c] == g]) for r in runs]
        groups.append(_cell(per_seed, 2))
    psnr, ssim = [np.mean(r["psnr"]) for r in runs], [np.mean(r["ssim"]) for r in runs]
    paper_cell = f"{paper[0]} / {paper[1]}" if paper else ""
    seeds = str(len(runs)) if runs[0]["seed"] >= 0 else ""
    return (f"| {name} | {seeds} | {len(runs[0]['cases'])} | " + " | ".join(groups)
            + f" | {_cell(psnr, 2)} | {_cell(ssim, 4)} | {paper_cell} | {seconds} |")


def table(results: list[dict], test: dict, args) -> str:
    import jax

    group = test["group"]
    lines = ["| method | seeds | test pairs | " + " | ".join(f"PSNR g{g}" for g in range(GROUPS))
             + " | PSNR | SSIM | paper PSNR / SSIM | s per run |", "|" + "---|" * (GROUPS + 7)]
    all_cases = np.arange(len(group))
    dip_cases = all_cases[: args.dip_pairs]
    for name, key, cases in (("uncorrected", "ma_image", all_cases), ("LI", "li_image", all_cases),
                             (f"LI (the {args.dip_pairs} DIP pairs)", "li_image", dip_cases)):
        scores = case_scores(test[key][cases], test["gt_image"][cases], test["metal"][cases])
        lines.append(_row(name, [{"seed": -1, "cases": cases.tolist(), **scores}], group, PAPER.get(name), ""))
    for variant in VARIANTS:
        runs = [r for r in results if r["variant"] == variant]
        if runs:
            seconds = ", ".join(f"{r['seconds']:.0f}" if variant != "dudonet" else f"{r['train_s']:.0f}"
                                for r in runs)
            lines.append(_row(LABELS[variant], runs, group, PAPER.get(variant), seconds))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE,
                            check=False).stdout.strip()
    seeds = sorted({r["seed"] for r in results})
    lines += ["", (f"Seeds {seeds}; geometry {args.geometry} ({group.size // 10} test slices x 10 masks); GANs "
                   f"{args.steps} steps of batch 2 (base {args.base}); DIP {args.dip_iterations} iterations on the "
                   f"first {args.dip_pairs} pairs; DuDoNet {args.dudonet_steps} steps of batch 4 (its time is "
                   "training only). mean ± population std over seeds; g0 = largest metal ... g4 = smallest. "
                   f"Table written {datetime.date.today()} at commit {commit} on {platform.machine()}, {os.cpu_count()} "
                   f"cores, no GPU, jax {jax.__version__}. The paper's numbers (DeepLesion, 256², 50 epochs; its "
                   "LI is the CNN-MAR-protocol row of the ADN paper) are for context only.")]
    return "\n".join(lines)


def panels(results: list[dict], test: dict, args) -> list[str]:
    """One PNG per method: the panel cases' metal-affected input, output, truth and |error| (seed 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = HERE / "panels"
    out_dir.mkdir(exist_ok=True)
    written = []
    cases = list(PANEL_CASES)
    for variant in ["li"] + VARIANTS:
        if variant == "li":
            pred = test["li_image"][cases]
        else:
            runs = sorted((r for r in results if r["variant"] == variant), key=lambda r: r["seed"])
            path = run_folder(variant, runs[0]["seed"], args) / "panel.npy" if runs else None
            if path is None or not path.is_file():
                continue
            pred = np.load(path)
        fig, axes = plt.subplots(len(cases), 4, figsize=(8, 2 * len(cases)))
        for row, case in enumerate(cases):
            images = [test["ma_image"][case], pred[row], test["gt_image"][case],
                      np.abs(pred[row] - test["gt_image"][case]) * (1 - test["metal"][case])]
            for col, (image, title) in enumerate(zip(images, ("metal-affected", "output", "truth", "|error| x4"))):
                ax = axes[row, col]
                ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=0.25 if col == 3 else 1)
                ax.set_xticks([]), ax.set_yticks([])
                if row == 0:
                    ax.set_title(title, fontsize=9)
            axes[row, 0].set_ylabel(f"g{test['group'][case]}", fontsize=9)
        fig.suptitle(LABELS.get(variant, "LI"), fontsize=10)
        fig.tight_layout()
        name = f"panels/{variant}.png"
        fig.savefig(HERE / name, dpi=80)
        plt.close(fig)
        written.append(name)
    return written


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--geometry", default="adn_quarter", help="MAR data preset: adn_quarter (64²), adn_half, adn")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600, help="GAN training steps (batch 2)")
    p.add_argument("--base", type=int, default=16, help="ADN base channels / CycleGAN ngf / DIP channels")
    p.add_argument("--dip-pairs", type=int, default=10, help="test pairs given to DIP (the first ones)")
    p.add_argument("--dip-iterations", type=int, default=500)
    p.add_argument("--dudonet-steps", type=int, default=300, help="steps of the DuDoNet reference runs")
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    p.add_argument("--write", action="store_true", help="replace the table in README.md, write panels/")
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    test = test_set(args)
    results = []
    for variant in args.variants:
        for seed in args.seeds:
            done = run_folder(variant, seed, args) / "result.json"
            if args.table_only:
                if done.is_file():
                    results.append(json.loads(done.read_text()))
            else:
                results.append(run_one(variant, seed, test, args))
    text = table(results, test, args)
    print(text)
    if args.write:
        names = panels(results, test, args)
        text += "\n\n" + " ".join(f"![{Path(n).stem}]({n})" for n in names)
        readme = HERE / "README.md"
        begin, end = "<!-- results:begin -->", "<!-- results:end -->"
        head, rest = readme.read_text().split(begin, 1)
        readme.write_text(head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1])


if __name__ == "__main__":
    main()
