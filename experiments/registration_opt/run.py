"""Intensity-based 2D/3D registration ("Opt." baseline) on the real chest CT: mTRE from random starts.

    python experiments/registration_opt/run.py                 # 20 cases, AP + lateral, writes results.json
    python experiments/registration_opt/run.py --views ap --out experiments/registration_opt/results_ap.json
    python experiments/registration_opt/run.py --table results.json results_ap.json --write   # the README table

Protocol (README.md next to this file): the `chest-ct` source (512x512x133, 0.703x0.703x2.5 mm); targets are
DRRs of the full-resolution CT at the true pose (identity patient motion), 128x128 detector of 3.125 mm pixels
(400 mm, sdd 1020 mm, source 850 mm from the volume centre), with Poisson noise at ``--photons`` per pixel
and taken back to line integrals -log(I/I0). Registration renders a 4x4x1 block-averaged CT (2.81 x 2.81 x
2.5 mm) with Joseph's method: the target is not rendered by the model that registers it. Starts: rotation
vector components uniform in +-10 deg and translations uniform in +-20 mm per axis, about the volume centre.
mTRE over ``--points`` random body voxels (HU > -300) of the CT.

Each run writes its run record to ``--out`` (see experiments/records.py: settings, seed, UTC start/end, wall
and CPU seconds, machine, device, versions, git commit; metrics = the summary; every case). ``--table FILE
...`` builds the README table and its footer from such records only (files relative to this folder or the
working directory); ``--write`` puts it between the README's registration markers (``--readme`` another file).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import records  # noqa: E402  (experiments/records.py)

VIEW_NAMES = {"ap": "AP", "lat": "lateral"}
SDD_MM, SOURCE_MM, DETECTOR_MM = 1020.0, 850.0, 400.0  # source-detector, source-centre distances; detector side
SUCCESS_MM, GROSS_MM = 1.0, 10.0  # mTRE below which a case counts as a success, above which as a gross failure


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
    p.add_argument("--table", nargs="+", metavar="FILE", help="only tabulate these run records (no registration)")
    p.add_argument("--write", action="store_true", help="with --table: rewrite the README's registration section")
    p.add_argument("--readme", default=str(HERE / "README.md"))
    args = p.parse_args(argv)
    if args.table:
        text = table([records.load(_find(f)) for f in args.table])
        print(text)
        if args.write:
            records.write_section(args.readme, "registration", text)
        return 0
    clock = records.Clock()
    from kfjax.runtime import setup_jax

    setup_jax()

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
    cam = carm.CArm(sdd=SDD_MM, height=args.detector, width=args.detector, dx=DETECTOR_MM / args.detector,
                    dy=DETECTOR_MM / args.detector)
    directions = {"ap": [0.0, SOURCE_MM, 0.0], "lat": [SOURCE_MM, 0.0, 0.0]}
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
        "below_1mm": float(np.mean(m < SUCCESS_MM)),
        "gross_failure_rate": float(metrics.gross_failure_rate(m, GROSS_MM)),
        "seconds_per_case_median": float(np.median(secs)),
        "compile_seconds": compile_s,
    }
    settings = {**{k: v for k, v in vars(args).items() if k not in ("table", "write", "readme")},
                "out": _relative(args.out),
                "volume": {"registration_shape": list(vol.shape),
                           "registration_spacing_mm": np.abs(np.diag(aff)[:3]).tolist(), "target_shape": list(hu.shape)},
                "camera": {"sdd_mm": SDD_MM, "source_mm": SOURCE_MM, "detector_mm": DETECTOR_MM},
                "thresholds_mm": {"success": SUCCESS_MM, "gross_failure": GROSS_MM}}
    command = "python " + " ".join([_relative(sys.argv[0])] + list(argv if argv else sys.argv[1:]))
    record = records.make(method="kfjax.register.intensity.register", variant="+".join(names), seed=args.seed,
                          settings=settings, metrics=summary, clock=clock,
                          timings={"compile_s": compile_s, "cases_s": float(secs.sum())},
                          data={"cases": args.cases, "points": args.points}, command=command, summary=summary,
                          cases=rows)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print("\n" + table([record]))
    print(f"compile {compile_s:.1f} s; wrote {args.out}")
    return 0


def _find(name: str) -> Path:
    """A record file as given, or in this folder."""
    path = Path(name)
    return path if path.is_file() or path.is_absolute() else HERE / name


def table(recs: list[dict]) -> str:
    """The README table and its footer, from run records only."""
    for r in recs:
        if "schema" not in r:
            raise SystemExit(f"{r.get('_folder', '?')}: this results file predates run records (no machine, "
                             "device, times); run the registration again to make one")
    d = lambda path, fmt=str: records.describe(recs, path, fmt)  # noqa: E731
    lines = [f"| views | cases | start mTRE p50 mm | mTRE p50 mm | mTRE p95 mm | "
             f"mTRE < {d('settings.thresholds_mm.success', lambda v: f'{v:g}')} mm | gross failure "
             f"(> {d('settings.thresholds_mm.gross_failure', lambda v: f'{v:g}')} mm) | s per case (median, range) "
             "| compile s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        m, views = r["metrics"], [VIEW_NAMES.get(v, v) for v in r["metrics"]["views"]]
        secs = [c["seconds"] for c in r["cases"]]
        lines.append(f"| {' + '.join(views) + (' only' if len(views) == 1 else '')} | {m['cases']} | "
                     f"{m['mtre_start_p50_mm']:.1f} | {m['mtre_p50_mm']:.2f} | {m['mtre_p95_mm']:.2f} | "
                     f"{100 * m['below_1mm']:.0f}% | {100 * m['gross_failure_rate']:.0f}% | "
                     f"{m['seconds_per_case_median']:.1f} ({min(secs):.1f}–{max(secs):.1f}) | "
                     f"{r['timings']['compile_s']:.0f} |")
    lines += ["", f"Settings (from the records): detector {d('settings.detector')}² pixels over "
              f"{d('settings.camera.detector_mm')} mm, sdd {d('settings.camera.sdd_mm')} mm, source "
              f"{d('settings.camera.source_mm')} mm from the volume centre; targets from the "
              f"{d('settings.volume.target_shape', lambda v: 'x'.join(map(str, v)))} CT with "
              f"{d('settings.photons', lambda v: f'{v:g}')} photons per pixel; registration on the CT block-averaged "
              f"{d('settings.downsample')} to {d('settings.volume.registration_shape', lambda v: 'x'.join(map(str, v)))}"
              f" voxels; similarity {d('settings.similarity')}, optimiser {d('settings.optimizer')}, levels "
              f"(scale:steps:step) {d('settings.levels')}; starts within ±{d('settings.rot')}° and "
              f"±{d('settings.trans')} mm; {d('settings.points')} target points; seed {d('seed')}. Seconds per case: "
              "wall time of one registration after compilation (all levels); compile s: the first registration, "
              "which compiles every level.", "", records.environment_summary(recs)]
    return "\n".join(lines)


def _relative(path: str) -> str:
    """``path`` relative to the repository root when it lies inside it."""
    p, root = Path(path).resolve(), HERE.parent.parent
    return str(p.relative_to(root)) if p.is_relative_to(root) else path


if __name__ == "__main__":
    raise SystemExit(main())
