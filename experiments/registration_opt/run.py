"""Intensity-based 2D/3D registration ("Opt." baseline) on the real chest CT: mTRE from random starts.

    python experiments/registration_opt/run.py                 # 20 cases, AP + lateral, writes results.json
    python experiments/registration_opt/run.py --views ap      # single view, for comparison

Protocol (README.md next to this file): the `chest-ct` source (512x512x133, 0.703x0.703x2.5 mm); targets are
DRRs of the full-resolution CT at the true pose (identity patient motion), 128x128 detector of 3.125 mm pixels
(400 mm, sdd 1020 mm, source 850 mm from the volume centre), with Poisson noise at ``--photons`` per pixel
and taken back to line integrals -log(I/I0). Registration renders a 4x4x1 block-averaged CT (2.81 x 2.81 x
2.5 mm) with Joseph's method: the target is not rendered by the model that registers it. Starts: rotation
vector components uniform in +-10 deg and translations uniform in +-20 mm per axis, about the volume centre.
mTRE over ``--points`` random body voxels (HU > -300) of the CT.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--views", default="ap,lat", help="comma list of ap, lat")
    p.add_argument("--similarity", default="gc", choices=["gc", "ncc"])
    p.add_argument("--optimizer", default="adam", choices=["adam", "lbfgs"])
    p.add_argument("--levels", default="0.25:150:4,0.5:100:1.5,1:40:0.5", help="scale:steps:lr,... coarse first")
    p.add_argument("--photons", type=float, default=1e5, help="I0 per target pixel (Poisson)")
    p.add_argument("--detector", type=int, default=128, help="detector pixels per side (400 mm)")
    p.add_argument("--downsample", default="4,4,1", help="block factors of the CT used for registration")
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--rot", type=float, default=10.0, help="start rotation range, +- degrees per axis")
    p.add_argument("--trans", type=float, default=20.0, help="start translation range, +- mm per axis")
    p.add_argument("--out", default=str(HERE / "results.json"))
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from kfjax import metrics
    from kfjax.data import sources
    from kfjax.physics import carm, drr
    from kfjax.register import intensity as ri

    ct = sources.load("chest-ct")["ct"]
    hu = np.asarray(ct.array, np.float32)
    aff0 = np.asarray(ct.affine, np.float64)
    mu0 = np.asarray(drr.hu_to_mu(hu))
    factors = tuple(int(f) for f in args.downsample.split(","))
    vol, aff = ri.downsample_volume(mu0, aff0, factors)
    centre = ri.volume_centre(aff0, hu.shape)
    cam = carm.CArm(sdd=1020.0, height=args.detector, width=args.detector, dx=400.0 / args.detector,
                    dy=400.0 / args.detector)
    directions = {"ap": [0.0, 850.0, 0.0], "lat": [850.0, 0.0, 0.0]}
    names = args.views.split(",")
    ext = np.stack([np.asarray(carm.look_at(centre + np.array(directions[n]), centre), np.float64) for n in names])
    levels = tuple(ri.Level(float(s), int(n), float(lr)) for s, n, lr in (x.split(":") for x in args.levels.split(",")))

    rng = np.random.default_rng(args.seed)
    body = np.argwhere(hu > -300)
    pick = body[rng.choice(len(body), args.points, replace=False)]
    points = pick @ aff0[:3, :3].T + aff0[:3, 3]  # world mm

    # targets: full-resolution CT at the true pose (identity), Poisson noise, back to line integrals
    clean = np.asarray(drr.make_renderer(cam)(mu0, aff0, ext), np.float64)  # (V, H, W)
    starts = np.concatenate([np.deg2rad(rng.uniform(-args.rot, args.rot, (args.cases, 3))),
                             rng.uniform(-args.trans, args.trans, (args.cases, 3))], 1)
    noise_rng = np.random.default_rng(args.seed + 1)
    targets = []
    for _ in range(args.cases):
        counts = np.maximum(noise_rng.poisson(args.photons * np.exp(-clean)), 1)
        targets.append(-np.log(counts / args.photons))
    targets = np.asarray(targets, np.float32)

    kw = {"similarity": args.similarity, "levels": levels, "optimizer": args.optimizer, "centre": centre}
    t0 = time.perf_counter()
    warm = ri.register(vol, aff, targets[0], ext, cam, starts[0], **kw)  # compiles every level
    jax.block_until_ready(warm.params)
    compile_s = time.perf_counter() - t0

    eye = jnp.eye(4)[None]
    rows = []
    for k in range(args.cases):
        t = time.perf_counter()
        res = ri.register(vol, aff, targets[k], ext, cam, starts[k], **kw)
        jax.block_until_ready(res.params)
        dt = time.perf_counter() - t
        m0 = float(metrics.mtre(ri.transform_from_params(starts[k], centre)[None], eye, points)[0])
        m1 = float(metrics.mtre(res.transform[None], eye, points)[0])
        rows.append({"case": k, "start": starts[k].tolist(), "params": np.asarray(res.params, float).tolist(),
                     "mtre_start_mm": m0, "mtre_mm": m1, "similarity": float(res.similarity), "seconds": dt})
        print(f"case {k:2d}: mTRE {m0:6.2f} -> {m1:7.3f} mm, similarity {float(res.similarity):.4f}, {dt:.1f} s",
              flush=True)

    m = np.array([r["mtre_mm"] for r in rows])
    m_start = np.array([r["mtre_start_mm"] for r in rows])
    secs = np.array([r["seconds"] for r in rows])
    summary = {
        "views": names,
        "cases": args.cases,
        "mtre_start_p50_mm": float(np.percentile(m_start, 50)),
        "mtre_p50_mm": float(np.percentile(m, 50)),
        "mtre_p95_mm": float(np.percentile(m, 95)),
        "below_1mm": float(np.mean(m < 1.0)),
        "gross_failure_rate": float(metrics.gross_failure_rate(m, 10.0)),
        "seconds_per_case_median": float(np.median(secs)),
        "compile_seconds": compile_s,
    }
    meta = {
        "command": "python " + " ".join([_relative(sys.argv[0])] + list(argv if argv else sys.argv[1:])),
        "args": {**vars(args), "out": _relative(args.out)},
        "volume": {"registration_shape": list(vol.shape), "registration_spacing_mm": np.abs(np.diag(aff)[:3]).tolist(),
                   "target_shape": list(hu.shape)},
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "machine": f"{platform.machine()}, {platform.processor() or _cpu()}, {jax.device_count()} "
                   f"{jax.default_backend()} device(s), {_ncores()} cores",
        "git": _git(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out = {"summary": summary, "meta": meta, "cases": rows}
    Path(args.out).write_text(json.dumps(out, indent=1))
    s = summary
    print(f"\n| views | cases | start mTRE p50 mm | mTRE p50 mm | mTRE p95 mm | < 1 mm | gross failure (>10 mm) | "
          f"s per case |\n|---|---|---|---|---|---|---|---|\n| {'+'.join(names)} | {s['cases']} | "
          f"{s['mtre_start_p50_mm']:.1f} | {s['mtre_p50_mm']:.2f} | {s['mtre_p95_mm']:.2f} | "
          f"{100 * s['below_1mm']:.0f}% | {100 * s['gross_failure_rate']:.0f}% | {s['seconds_per_case_median']:.1f} |")
    print(f"compile {compile_s:.1f} s; wrote {args.out}")
    return 0


def _relative(path: str) -> str:
    """``path`` relative to the repository root when it lies inside it."""
    p, root = Path(path).resolve(), HERE.parent.parent
    return str(p.relative_to(root)) if p.is_relative_to(root) else path


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _ncores() -> int:
    import os

    return os.cpu_count() or 0


def _git() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                              cwd=HERE).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
