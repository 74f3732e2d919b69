"""DuDoNet against its single-domain baselines and its Radon-consistency ablation, on the real chest CT.

Variants (one `kfjax.methods.dudonet` config each): image (IE-Net on the LI image, the CNN-MAR-style learned
baseline), sinogram (SE-Net + Radon inversion layer), dual without the Radon-consistency loss, dual
(DuDoNet); plus the uncorrected and LI images. Data: `mar-ct` (chest-CT slices split by position with gaps,
CNN-MAR-style masks: 90 for training, the 10 test masks on every test slice in 5 size groups), Ti, the
ADN fan-beam geometry or a scaled copy. Metrics: PSNR and SSIM outside the metal, μ clipped to [0, 0.05]
1/mm and mapped to [0, 1] (data range 1), mean over the test cases; the table gives mean ± std over seeds.

    python experiments/dudonet/run.py                         # the README's table (CPU scale, see README)
    python experiments/dudonet/run.py --geometry adn --steps 6000 --batch 8   # the paper-like setting

Each (variant, seed) run writes `runs/<geometry>/<variant>-s<seed>/result.json`; finished runs are reused,
so an interrupted experiment continues where it stopped. `--write` puts the table into README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "image": (["model.mode=image"], "image-domain U-Net (IE-Net on LI)"),
    "sinogram": (["model.mode=sinogram"], "sinogram-domain (SE-Net + RIL)"),
    "dual_no_rc": (["model.mode=dual", "loss.consistency=0"], "DuDoNet without the RC loss"),
    "dual": (["model.mode=dual"], "DuDoNet"),
}
PAPER = {  # DuDoNet CVPR'19 Table (DeepLesion, 416², average PSNR / SSIM), for context only
    "uncorrected": None,
    "LI": (25.47, 0.8917),
    "NMAR": (27.51, 0.9001),
    "image": (31.45, None),
    "dual": (33.51, 0.9379),
}
GROUPS = 5


def run_folder(variant: str, seed: int, args) -> Path:
    """Where one (variant, seed) run keeps its checkpoint and result.json."""
    masks = "" if args.masks == 2 else f"-masks{args.masks}"
    return HERE / "runs" / args.geometry / f"steps{args.steps}{masks}" / f"{variant}-s{seed}"


def run_one(variant: str, seed: int, args) -> dict:
    import jax

    from kfjax.cli import build_method
    from kfjax.train.loop import evaluate, train

    folder = run_folder(variant, seed, args)
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    overrides = VARIANTS[variant][0] + [
        f"seed={seed}",
        "data.source=ct",
        f"data.geometry={args.geometry}",
        f"data.masks_per_slice={args.masks}",
        f"data.batch_size={args.batch}",
        f"train.steps={args.steps}",
        f"optim.lr={args.lr}",
        "optim.schedule=cosine",
        "optim.decay_every=0",
        f"train.checkpoint_every={args.steps}",
        "train.log_every=25",
    ]
    method = build_method("dudonet", overrides=overrides)
    start = time.time()
    result = train(method, folder / "work", progress=False, evaluate_at_end=False)
    train_s = time.time() - start
    scores = evaluate(method, result.state, split="test")
    out = {
        "variant": variant,
        "seed": seed,
        "overrides": overrides,
        "train_s": train_s,
        "n_test": len(method.dataset("test")),
        "devices": f"{jax.device_count()} {jax.default_backend()}",
        "scores": {k: float(v) for k, v in scores.items()},
    }
    done.write_text(json.dumps(out, indent=1))
    return out


def baseline_scores(args) -> dict[str, dict[str, float]]:
    """Uncorrected, LI and NMAR on the test pairs, scored like the networks: {name: {psnr, ssim, psnr_g0, ...}}.

    NMAR (Meyer et al. 2010): the prior comes from the LI image (air / water / bone kept); outside the metal
    trace the LI sinogram is the measured one, so NMAR needs nothing the data set does not keep.
    """
    import jax.numpy as jnp

    from kfjax.data.mar import mar_data
    from kfjax.methods.dudonet import FOV_MM, MU_WATER, image_metrics
    from kfjax.physics.fbp import fbp
    from kfjax.physics.geometry import preset
    from kfjax.physics.metal import MetalConfig, nmar_prior, nmar_sinogram, scale_geometry
    from kfjax.physics.projector import make_projector

    a = mar_data("test", "ct", geometry=args.geometry, seed=0, slice_step=1)
    geometry = scale_geometry(preset(args.geometry), FOV_MM / preset(args.geometry).image_shape[0])
    forward, _ = make_projector(geometry)
    trace, metal = jnp.asarray(a["metal_trace"], jnp.float32), jnp.asarray(a["metal_mask"], jnp.float32)
    prior = nmar_prior(jnp.asarray(a["li_image"]), metal, MU_WATER)
    sinogram = nmar_sinogram(jnp.asarray(a["li_sinogram"]), trace, forward(prior))
    images = {"uncorrected": a["ma_image"], "LI": a["li_image"],
              "NMAR": fbp(sinogram, geometry, filter=MetalConfig().filter)}
    out = {}
    for name, image in images.items():
        values = image_metrics(jnp.asarray(image) / MU_WATER, jnp.asarray(a["gt_image"]) / MU_WATER, metal)
        out[name] = {k: float(np.mean(v)) for k, v in values.items()}
        for g in range(GROUPS):
            out[name][f"psnr_g{g}"] = float(np.mean(np.asarray(values["psnr"])[a["size_group"] == g]))
    return out


def _cell(values: list[float], digits: int) -> str:
    return (
        f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}" if len(values) > 1 else f"{values[0]:.{digits}f}"
    )


def table(results: list[dict], args) -> str:
    import jax

    by_variant = {v: [r for r in results if r["variant"] == v] for v in VARIANTS}
    head = (
        "| method | seeds | " + " | ".join(f"PSNR g{g}" for g in range(GROUPS)) + " | PSNR | SSIM | paper PSNR / SSIM |"
    )
    lines = [head, "|" + "---|" * (GROUPS + 5)]
    n_test = results[0]["n_test"]
    for name, scores in baseline_scores(args).items():
        paper = PAPER.get(name)
        lines.append(
            f"| {name} | | " + " | ".join(f"{scores[f'psnr_g{g}']:.2f}" for g in range(GROUPS))
            + f" | {scores['psnr']:.2f} | {scores['ssim']:.4f} | " + (f"{paper[0]} / {paper[1]}" if paper else "") + " |"
        )
    for variant, runs in by_variant.items():
        if not runs:
            continue
        groups = [_cell([r["scores"][f"psnr_g{g}"] for r in runs], 2) for g in range(GROUPS)]
        paper = PAPER.get(variant)
        paper_cell = "" if not paper else f"{paper[0]}" + (f" / {paper[1]}" if paper[1] else "")
        lines.append(
            f"| {VARIANTS[variant][1]} | {len(runs)} | "
            + " | ".join(groups)
            + f" | {_cell([r['scores']['psnr'] for r in runs], 2)} | "
            + f"{_cell([r['scores']['ssim'] for r in runs], 4)} | {paper_cell} |"
        )
    seeds = sorted({r["seed"] for r in results})
    minutes = np.mean([r["train_s"] for r in results]) / 60
    lines += [
        "",
        (
            f"Seeds {seeds}; {n_test} test cases (test slices x 10 masks); geometry {args.geometry}; "
            f"{args.steps} steps of batch {args.batch}, Adam lr {args.lr} cosine, {args.masks} training masks per "
            f"slice. Training took {minutes:.1f} min per run on average ({results[0]['devices']} device(s)); "
            f"{datetime.date.today()}, {platform.machine()} {os.cpu_count()} cores, jax {jax.__version__}. "
            "g0 = largest metal ... g4 = smallest. Uncorrected and LI are the same for every seed."
        ),
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--geometry", default="adn_quarter")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--masks", type=int, default=2, help="training masks per training slice")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    parser.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    parser.add_argument("--sweep", action="store_true", help="tabulate image vs dual over every finished length")
    return parser.parse_args(argv)


def sweep_table(args) -> str:
    """Image-domain U-Net vs DuDoNet by training length and data size, from every finished run folder."""
    import jax

    from kfjax.data.derived import ct_slices
    from kfjax.physics.geometry import preset

    n_slices = len(ct_slices(size=preset(args.geometry).image_shape[0])["splits"]["train"])
    head = ("| steps (batch 4) | training pairs (masks per slice) | epochs | image-domain U-Net PSNR | DuDoNet PSNR "
            "| DuDoNet - image (dB) | seeds | min per run (image, dual) |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    rows = []
    for folder in (HERE / "runs" / args.geometry).glob("steps*"):
        runs = [json.loads(p.read_text()) for p in folder.glob("*/result.json")]
        image = {r["seed"]: r for r in runs if r["variant"] == "image"}
        dual = {r["seed"]: r for r in runs if r["variant"] == "dual"}
        seeds = sorted(set(image) & set(dual))
        if not seeds:
            continue
        setting = dict(o.split("=", 1) for o in runs[0]["overrides"])
        steps, batch, masks = int(setting["train.steps"]), int(setting["data.batch_size"]), int(setting["data.masks_per_slice"])
        pairs = n_slices * masks
        psnr = {name: [d[s]["scores"]["psnr"] for s in seeds] for name, d in (("image", image), ("dual", dual))}
        minutes = [np.mean([d[s]["train_s"] for s in seeds]) / 60 for d in (image, dual)]
        row = (f"| {steps} | {pairs} ({masks}) | {steps * batch / pairs:.0f} | {_cell(psnr['image'], 2)} | "
               f"{_cell(psnr['dual'], 2)} | {_cell(np.subtract(psnr['dual'], psnr['image']), 2)} | "
               f"{', '.join(map(str, seeds))} | {minutes[0]:.1f}, {minutes[1]:.1f} |")
        rows.append((masks, steps, row))
    foot = (f"PSNR (dB) outside the metal on the 180 test pairs, mean ± std over seeds; geometry {args.geometry}, Adam "
            f"lr 0.001 cosine; {datetime.date.today()}, {platform.machine()} {os.cpu_count()} cores, no GPU, jax "
            f"{jax.__version__}.")
    return "\n".join(lines + [row for *_, row in sorted(rows)] + ["", foot])


def _write_section(name: str, text: str) -> None:
    readme = HERE / "README.md"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    head, rest = readme.read_text().split(begin, 1)
    readme.write_text(head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def main() -> None:
    args = parse_args()
    if args.sweep:
        text = sweep_table(args)
        print(text)
        if args.write:
            _write_section("sweep", text)
        return
    if args.table_only:
        found = sorted(run_folder("image", 0, args).parent.glob("*/result.json"))
        results = [json.loads(p.read_text()) for p in found]
        results = [r for r in results if r["variant"] in args.variants and r["seed"] in args.seeds]
    else:
        results = [run_one(v, s, args) for s in args.seeds for v in args.variants]
    text = table(results, args)
    print(text)
    if args.write:
        _write_section("table", text)


if __name__ == "__main__":
    main()
