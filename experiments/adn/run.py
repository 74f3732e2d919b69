"""ADN vs CycleGAN vs deep image prior vs LI on simulated metal artifacts (methods.md §11-12).

Trains ADN and CycleGAN on unpaired data (artifact-affected images from half of the training slices,
artifact-free images from the other half), runs DIP per test image (image- and sinogram-domain data terms),
and scores everything like DuDoNet: PSNR/SSIM on [0, 1] (μ in [0, 0.05] /mm) outside the metal.
Writes results.json next to this file. CPU-sized by default (images block-averaged to 64², small networks):

    python experiments/adn/run.py --source ct --seeds 0 1 2 --steps 300
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from kfjax import metrics
from kfjax.config import apply_overrides
from kfjax.data import derived
from kfjax.data.mar import mar_data, to_unit_range
from kfjax.data.unpaired import downsample
from kfjax.methods.adn import ADNConfig, ADNMethod
from kfjax.methods.cyclegan import CycleGANConfig, CycleGANMethod
from kfjax.methods.dip import DIPConfig, mar_dip
from kfjax.train.loop import evaluate, train

HERE = Path(__file__).parent


def scores(pred_unit: np.ndarray, gt_unit: np.ndarray, metal: np.ndarray) -> dict[str, float]:
    keep = 1.0 - metal
    return {"psnr": float(np.mean(metrics.psnr(pred_unit, gt_unit, 1.0, mask=keep))),
            "ssim": float(np.mean(metrics.ssim(pred_unit, gt_unit, 1.0, mask=keep)))}


def run_gan(cls, cfg_cls, sets: list[str]) -> tuple[dict[str, float], float]:
    method = cls(apply_overrides(cfg_cls(), sets))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        result = train(method, workdir, progress=False, evaluate_at_end=False)
        test = evaluate(method, result.state, split="test")
    return test, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="ct", choices=("ct", "phantom"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--downsample", type=int, default=4)
    p.add_argument("--base", type=int, default=16, help="ADN base channels / CycleGAN ngf")
    p.add_argument("--dip-pairs", type=int, default=10, help="test pairs given to DIP (the first ones)")
    p.add_argument("--dip-iterations", type=int, default=300)
    p.add_argument("--skip", nargs="*", default=[], help="parts to skip: adn cyclegan dip-image dip-sinogram")
    p.add_argument("--keep", action="store_true", help="keep the rows of skipped parts from results.json")
    args = p.parse_args()

    data = [f"data.source={args.source}", f"data.downsample={args.downsample}", "data.batch_size=2",
            f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}", "train.log_every=50"]
    adn_sets = data + [f"model.base={args.base}", "model.num_residual=2", f"model.d_features={args.base}"]
    cyc_sets = data + [f"model.features={args.base}", "model.n_blocks=3", f"model.d_features={args.base}",
                       "model.d_layers=2"]
    test = mar_data("test", source=args.source, slice_step=2)
    f = args.downsample
    gt = downsample(to_unit_range(test["gt_image"]).astype(np.float32), f)
    metal = downsample(test["metal_mask"].astype(np.float32), f, "max")
    rows: dict[str, list] = {"LI": [scores(downsample(to_unit_range(test["li_image"]).astype(np.float32), f),
                                           gt, metal)],
                             "uncorrected": [scores(downsample(to_unit_range(test["ma_image"]).astype(np.float32),
                                                               f), gt, metal)]}
    times: dict[str, list] = {}
    for name, cls, cfg_cls, sets in [("ADN", ADNMethod, ADNConfig, adn_sets),
                                     ("CycleGAN", CycleGANMethod, CycleGANConfig, cyc_sets)]:
        if name.lower() in args.skip:
            continue
        for seed in args.seeds:
            result, seconds = run_gan(cls, cfg_cls, sets + [f"seed={seed}"])
            rows.setdefault(name, []).append(result)
            times.setdefault(name, []).append(seconds)
            print(name, seed, result, f"{seconds:.0f}s", flush=True)
    if "dip-image" not in args.skip or "dip-sinogram" not in args.skip:
        sub = {k: (v[: args.dip_pairs] if getattr(v, "ndim", 0) else v) for k, v in test.items()}
        for term in [t for t in ("image", "sinogram") if f"dip-{t}" not in args.skip]:
            for seed in args.seeds[:1]:
                cfg = DIPConfig(channels=args.base, scales=3, iterations=args.dip_iterations, seed=seed)
                start = time.perf_counter()
                out = mar_dip(cfg, sub, term, downsample=f, batch_size=args.dip_pairs)
                name = f"DIP ({term})"
                rows.setdefault(name, []).append(scores(out, gt[: args.dip_pairs], metal[: args.dip_pairs]))
                times.setdefault(name, []).append(time.perf_counter() - start)
                print(name, seed, rows[name][-1], flush=True)
        n = args.dip_pairs
        rows["LI (DIP pairs)"] = [scores(downsample(to_unit_range(sub["li_image"]).astype(np.float32), f),
                                         gt[:n], metal[:n])]
    table = {name: {k: [r[k] for r in rs] for k in ("psnr", "ssim")} for name, rs in rows.items()}
    path = HERE / "results.json"
    if args.keep and path.exists():  # rows of parts not run now come from the earlier run
        old = json.loads(path.read_text())
        table = {**old["results"], **table}
        times = {**old["seconds"], **times}
        vars(args)["earlier_args"] = old["args"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE, check=False).stdout
    out = {"args": vars(args), "commit": commit.strip(), "mar_data_version": derived.get_derived(f"mar-{args.source}").version,
           "n_test_pairs": len(gt), "image_size": int(gt.shape[1]), "results": table,
           "seconds": times, "machine": f"{platform.machine()} {platform.processor()}, jax {jax.__version__}, "
           f"{jax.devices()[0].platform}"}
    path.write_text(json.dumps(out, indent=1) + "\n")
    for name, t in table.items():
        print(f"{name:16s} PSNR {np.mean(t['psnr']):6.2f} ± {np.std(t['psnr']):.2f}  "
              f"SSIM {np.mean(t['ssim']):.3f} ± {np.std(t['ssim']):.3f}  (n={len(t['psnr'])})")


if __name__ == "__main__":
    main()
