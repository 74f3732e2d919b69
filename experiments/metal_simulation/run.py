"""One metal-artifact simulation case, as a PNG panel and a table of errors near the metal.

    python experiments/metal_simulation/run.py                    # real chest CT slice (phantom if unavailable)
    python experiments/metal_simulation/run.py --source phantom   # procedural slice

Slice: axial slice 60 of the `chest-ct` source (512², 0.703 mm), resampled to 256² at 1.406 mm, so the ADN
geometry (256², 320 views, 197 arc bins of 0.1°, source at 1075 pixels) is used at the slice's real pixel size;
or a procedural slice (`kfjax.data.phantoms.ct_anatomy_2d`, seed 0) at the ADN preset's 0.6 mm.
Metal: a pair of rods centred in the body by `kfjax.data.phantoms.random_metal(default_rng(seed), 256, "rods",
body=body)`, simulated as each of Ti, Fe, Cu, Au (table densities) with Poisson noise (seed 0); LI and NMAR as
the classic corrections. Errors are RMSE in HU against the 70 keV ground truth over the body pixels within
10 pixels of the metal (metal excluded), and over the whole body; "no metal" is the FBP of the metal-free
polychromatic sinogram (noise-free, water-corrected): the floor set by FBP resolution and bone beam hardening,
which no metal-artifact reduction can go below on this truth.
Writes `panel.png` and `results.json` (the run record: settings, seed, UTC start/end, wall and CPU seconds,
machine, device, versions, git commit, the errors; see experiments/records.py) into `--out-dir` (default:
here) and prints the table and its footer, built from the record only; `--write` also puts them between the
README's results markers (`--readme` another file); `--table-only` rebuilds them from an existing results.json.
Timing (`--no-timing` skips it): the first call of each metal's simulator (with NMAR, compilation included);
and, for the first metal without NMAR, the first call and the median of 3 warm calls for one case and for a
batch of 4.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import records  # noqa: E402  (experiments/records.py)

MATERIALS = ("Ti", "Fe", "Cu", "Au")
NEAR_PX = 10  # "near the metal": body pixels within this many pixels of the metal
PANEL_ROWS = ("Ti", "Fe")
WINDOW_HU = (-175, 275)


def chest_slice(k: int) -> tuple[np.ndarray, float]:
    """Axial slice k of chest-ct in HU, display orientation (anterior up, patient's right on the left), 256²."""
    from kfjax.data.sources import load

    ct = load("chest-ct")["ct"]
    a = ct.array[:, ::-1, k].T  # rows: anterior -> posterior, columns: i (patient right -> left)
    if (a >= 3000).any():
        raise SystemExit(f"slice {k} has voxels at the 3071 HU ceiling; choose another --slice")
    spacing = ct.spacing[0]
    small = ndimage.zoom(a, 256 / a.shape[0], order=1, grid_mode=True, mode="nearest")
    return small.astype(np.float32), spacing * a.shape[0] / 256


def rmse_hu(image, gt, region, mu_water) -> float:
    return float(np.sqrt(np.mean((image - gt)[region] ** 2)) / mu_water * 1000)


def time_simulator(geometry, hu: np.ndarray, metal: np.ndarray, material: str, warm: int = 3) -> dict[str, float]:
    """Seconds of the simulator without NMAR: first call (compilation) and the median of `warm` warm calls, for
    one case and for a batch of 4."""
    import jax

    from kfjax.physics import metal as M

    simulate = M.make_metal_simulator(geometry, M.MetalConfig(material=material))
    out = {}
    for batch in (1, 4):
        h = np.repeat(hu[None, ..., None], batch, 0)
        m = np.repeat(metal[None, ..., None], batch, 0)
        times = []
        for _ in range(warm + 1):
            start = time.perf_counter()
            jax.block_until_ready(simulate(h, m, jax.random.key(0)))
            times.append(time.perf_counter() - start)
        out[f"batch{batch}_first_s"], out[f"batch{batch}_warm_median_s"] = times[0], float(np.median(times[1:]))
    return out


def table(record: dict) -> str:
    """The README table and its footer, from the run record only."""
    if "schema" not in record:
        raise SystemExit("this results.json predates run records (no settings, machine, times); run the simulation "
                         "again to make one")
    lines = ["| metal | μ(70 keV) 1/mm | near metal: metal-affected | LI | NMAR | no metal | body: metal-affected | LI "
             "| NMAR | no metal |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["table"]:
        lines.append(f"| {r['material']} | {r['mu_metal_70kev_per_mm']:.3f} | {r['near_ma_hu']:.0f} | "
                     f"{r['near_li_hu']:.0f} | {r['near_nmar_hu']:.0f} | {r['near_nometal_hu']:.0f} | "
                     f"{r['body_ma_hu']:.0f} | {r['body_li_hu']:.0f} | {r['body_nmar_hu']:.0f} | "
                     f"{r['body_nometal_hu']:.0f} |")
    s, d = record["settings"], record["data"]
    case = f"slice {s['slice']} of chest-ct" if s["source"] == "chest-ct" else "the procedural slice"
    first = [r["seconds_first_call"] for r in record["table"]]
    foot = (f"RMSE in HU against the 70 keV truth: {case} at {s['pixel_size_mm']:.3f} mm pixels, the "
            f"{s['geometry']['preset']} geometry ({s['geometry']['image_side']}², {s['geometry']['n_views']} views, {s['geometry']['n_det']} bins), "
            f"{d['metal_pixels']} metal pixels (mask seed {record['seed']}), near metal = the {d['near_pixels']} body "
            f"pixels within {s['near_px']} pixels of it. First call of each metal's simulator with NMAR "
            f"(compilation included): {min(first):.1f}–{max(first):.1f} s.")
    t = record["timings"]
    if "batch1_first_s" in t:
        foot += (f" Without NMAR ({s['timing_material']}): first call {t['batch1_first_s']:.1f} s, then "
                 f"{t['batch1_warm_median_s']:.2f} s for one case and {t['batch4_warm_median_s']:.2f} s for a batch "
                 f"of 4 (median of {s['timing_warm_calls']} warm calls).")
    return "\n".join(lines + ["", foot, "", records.environment_summary([record])])


def main() -> None:
    import jax

    from kfjax.data.phantoms import ct_anatomy_2d, random_metal
    from kfjax.errors import KfjaxError
    from kfjax.physics import metal as M
    from kfjax.physics.geometry import preset
    from kfjax.viz import image_panel

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", choices=("chest-ct", "phantom"), default="chest-ct")
    p.add_argument("--slice", type=int, default=60)
    p.add_argument("--mask-seed", type=int, default=0)
    p.add_argument("--materials", nargs="+", default=list(MATERIALS), choices=MATERIALS)
    p.add_argument("--no-timing", action="store_true", help="skip the warm-call timing")
    p.add_argument("--out-dir", default=str(HERE), help="where results.json and panel.png go")
    p.add_argument("--readme", default=str(HERE / "README.md"))
    p.add_argument("--write", action="store_true", help="put the table between the README's results markers")
    p.add_argument("--table-only", action="store_true", help="rebuild the table from --out-dir/results.json")
    args = p.parse_args()
    out_dir = Path(args.out_dir)
    if args.table_only:
        text = table(records.load(out_dir / "results.json"))
        print(text)
        if args.write:
            records.write_section(args.readme, "results", text)
        return
    clock = records.Clock()
    from kfjax.runtime import setup_jax

    setup_jax()

    source = args.source
    if source == "chest-ct":
        try:
            hu, pixel = chest_slice(args.slice)
        except KfjaxError as exc:  # no cache and no network: fall back to the procedural slice
            print(f"chest-ct unavailable ({type(exc).__name__}: {exc}); using the procedural slice")
            source = "phantom"
    if source == "phantom":
        hu, pixel = ct_anatomy_2d(np.random.default_rng(0), 256)[0][..., 0], 0.6
    geometry = preset("adn", pixel_size=pixel)
    body = ndimage.binary_fill_holes(hu > -500)
    m = random_metal(np.random.default_rng(args.mask_seed), 256, "rods", body=body)
    metal = m.astype(np.float32)
    near = ndimage.binary_dilation(m, iterations=NEAR_PX) & ~m & body
    inside = body & ~m

    rows, table_rows = [], []
    for material in args.materials:
        config = M.MetalConfig(material=material, nmar=True)
        simulate = M.make_metal_simulator(geometry, config)
        start = time.perf_counter()
        out = {k: np.asarray(v) for k, v in simulate(hu[None, ..., None], metal[None, ..., None], jax.random.key(0)).items()}
        seconds = time.perf_counter() - start
        gt, ma, li, nmar, poly = (out[k][0, ..., 0] for k in ("gt_image", "ma_image", "li_image", "nmar_image", "poly_image"))
        table_rows.append({
            "material": material,
            "mu_metal_70kev_per_mm": M.metal_mu(config),
            "near_ma_hu": rmse_hu(ma, gt, near, config.mu_water),
            "near_li_hu": rmse_hu(li, gt, near, config.mu_water),
            "body_ma_hu": rmse_hu(ma, gt, inside, config.mu_water),
            "body_li_hu": rmse_hu(li, gt, inside, config.mu_water),
            "near_nmar_hu": rmse_hu(nmar, gt, near, config.mu_water),
            "body_nmar_hu": rmse_hu(nmar, gt, inside, config.mu_water),
            "near_nometal_hu": rmse_hu(poly, gt, near, config.mu_water),
            "body_nometal_hu": rmse_hu(poly, gt, inside, config.mu_water),
            "seconds_first_call": seconds,
        })
        if material in PANEL_ROWS:
            hu_of = [M.mu_to_hu(x, config.mu_water) for x in (gt, ma, li)]
            rows.append([*hu_of, out["ma_sinogram"][0, ..., 0].T, out["li_sinogram"][0, ..., 0].T,
                         out["metal_trace"][0, ..., 0].T, metal])
    timings = {} if args.no_timing else time_simulator(geometry, hu, metal, args.materials[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    if rows:
        sino_max = max(float(r[3].max()) for r in rows)
        image_panel(rows, ["GT 70 keV", "metal-affected", "LI", "sinogram (metal)", "sinogram (LI)", "metal trace",
                           "metal mask"], out_dir / "panel.png",
                    vrange=[WINDOW_HU] * 3 + [(0, sino_max), (0, sino_max), (0, 1), (0, 1)])
    settings = {
        "source": source, "slice": args.slice if source == "chest-ct" else None, "pixel_size_mm": pixel,
        "geometry": {"preset": "adn", "pixel_size_mm": pixel, "image_side": geometry.image_shape[0],
                     "n_views": geometry.n_views, "n_det": geometry.n_det},
        "materials": list(args.materials), "metal_config": dataclasses.asdict(M.MetalConfig(nmar=True)),
        "noise_key": 0, "near_px": NEAR_PX, "panel_rows": [m_ for m_ in PANEL_ROWS if m_ in args.materials],
        "window_hu": list(WINDOW_HU), "timing_material": None if args.no_timing else args.materials[0],
        "timing_warm_calls": None if args.no_timing else 3,
    }
    metrics = {r["material"]: {k: v for k, v in r.items() if k not in ("material", "seconds_first_call")}
               for r in table_rows}
    record = records.make(method="kfjax.physics.metal.make_metal_simulator", variant=source, seed=args.mask_seed,
                          settings=settings, metrics=metrics, clock=clock, timings=timings,
                          data={"metal_pixels": int(m.sum()), "near_pixels": int(near.sum())}, table=table_rows)
    (out_dir / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    text = table(records.load(out_dir / "results.json"))
    print(text)
    if args.write:
        records.write_section(args.readme, "results", text)


if __name__ == "__main__":
    main()
