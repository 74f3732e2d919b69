"""DuDoNet against its single-domain baselines and its Radon-consistency ablation, on the real chest CT.

Variants (one `kfjax.methods.dudonet` config each): image (IE-Net on the LI image, the CNN-MAR-style learned
baseline), sinogram (SE-Net + Radon inversion layer), dual without the Radon-consistency loss, dual
(DuDoNet); plus three corrections without training: the uncorrected image, LI and NMAR. Data: `mar-ct`
(chest-CT slices split by position with gaps, CNN-MAR-style masks: 90 for training, the 10 test masks on
every test slice in 5 size groups), Ti, the ADN fan-beam geometry or a scaled copy. Scores: DuDoNet's own
`eval_step` through `kfjax.train.loop.evaluate` for the networks, `kfjax.methods.common.mar.unit_scores`
and `by_size_group` on the same test set for the baselines (PSNR and SSIM outside the metal, μ clipped to
[0, 0.05] 1/mm and mapped to [0, 1]); the table gives mean ± sample std over seeds and paired t-tests
over seeds.

    python experiments/dudonet/run.py                         # the README's table (CPU scale, see README)
    python experiments/dudonet/run.py --geometry adn --steps 6000 --batch 8   # the paper-like setting

Each (variant, seed) run trains in `runs/<geometry>/steps<N>/<variant>-s<seed>/work` and saves its run record
(`record.json`: settings, seed, times, machine, device, versions, git commit, test metrics; see
experiments/records.py) beside it; the baselines save theirs in `runs/<geometry>/baselines/<name>/`.
Finished runs are reused and interrupted ones resume, so an interrupted experiment continues where it
stopped. Tables and their footers are built from the records only; `--write` puts them into README.md
(`--readme` another file). `--runs DIR` keeps the runs elsewhere; `--source phantom` uses procedural
anatomy (no download); `--set KEY=VALUE ...` adds config overrides to every run (and names its folder).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import records  # noqa: E402  (experiments/records.py)

VARIANTS = {
    "image": (["model.mode=image"], "image-domain U-Net (IE-Net on LI)"),
    "sinogram": (["model.mode=sinogram"], "sinogram-domain (SE-Net + RIL)"),
    "dual_no_rc": (["model.mode=dual", "loss.consistency=0"], "DuDoNet without the RC loss"),
    "dual": (["model.mode=dual"], "DuDoNet"),
}
BASELINES = {"uncorrected": "uncorrected", "LI": "LI", "NMAR": "NMAR"}
# NMAR (Meyer et al. 2010) as computed here: the prior is thresholded from the LI image (kfjax.physics.metal)
NMAR = {"air_hu": -700.0, "bone_hu": 500.0, "eps": 0.01, "filter": "ram-lak"}
COMPARISONS = (("dual", "image"), ("dual", "sinogram"), ("dual", "dual_no_rc"))  # a - b per seed, paired
PAPER = {  # literature values, not ours: DuDoNet CVPR'19 Table (DeepLesion, 416², average PSNR / SSIM)
    "LI": (25.47, 0.8917),
    "NMAR": (27.51, 0.9001),
    "image": (31.45, None),
    "dual": (33.51, 0.9379),
}
TEST_DATA_KEYS = ("source", "geometry", "material", "eval_slice_step", "pixel_size")
SCORE_PREFIX = {"image": "", "reference": "ref_"}  # metric name prefix of each scoring target
SCORE_TARGETS = {"image": "the metal-free μ at 70 keV",
                 "reference": "the CNN-MAR reference reconstruction (FBP of the metal-free polychromatic, "
                              "beam-hardening corrected sinogram)"}


# ---------------------------------------------------------------- where runs live
def runs_root(args) -> Path:
    return Path(args.runs) if args.runs else HERE / "runs"


def data_folder(args) -> Path:
    """`runs/<geometry>[-<source>][-set<hash>]`: one folder per test set and extra overrides."""
    name = args.geometry + ("" if args.source == "ct" else f"-{args.source}")
    if args.set:
        name += "-set" + hashlib.sha1(" ".join(args.set).encode()).hexdigest()[:8]
    return runs_root(args) / name


def steps_folder(args) -> Path:
    parts = [f"steps{args.steps}"]
    parts += [f"masks{args.masks}"] if args.masks != 2 else []
    parts += [f"batch{args.batch}"] if args.batch != 4 else []
    parts += [f"lr{args.lr:g}"] if args.lr != 1e-3 else []
    return data_folder(args) / "-".join(parts)


def run_folder(variant: str, seed: int, args) -> Path:
    """Where one (variant, seed) run keeps its checkpoints (work/) and record.json."""
    return steps_folder(args) / f"{variant}-s{seed}"


# ---------------------------------------------------------------- runs
def overrides(variant: str, seed: int, args) -> list[str]:
    return VARIANTS[variant][0] + [
        f"seed={seed}",
        f"data.source={args.source}",
        f"data.geometry={args.geometry}",
        f"data.masks_per_slice={args.masks}",
        f"data.batch_size={args.batch}",
        f"train.steps={args.steps}",
        f"optim.lr={args.lr}",
        "optim.schedule=cosine",
        "optim.decay_every=0",
        f"train.checkpoint_every={args.steps}",
        "train.log_every=25",
        *args.set,
    ]


def _check_settings(record: dict, config, folder: Path) -> None:
    """A finished record is reused only for the same settings (else its folder name would lie)."""
    changed = records.changed_settings(record["settings"], config)
    if changed:
        raise SystemExit(f"{folder} holds a run with other settings ({', '.join(changed)}); "
                         "move it away or use another --runs folder")


def run_one(variant: str, seed: int, args) -> dict:
    """Train one (variant, seed), score it on the test split, save its record; reuse a finished record."""
    from kfjax.config import to_dict
    from kfjax.methods import registry
    from kfjax.train.loop import evaluate

    folder = run_folder(variant, seed, args)
    method = registry.build("dudonet", overrides=overrides(variant, seed, args))
    settings = to_dict(method.config)
    if records.exists(folder):
        record = records.load(folder)
        _check_settings(record, method.config, folder)
        return record
    clock = records.Clock()
    resumed = (folder / "work" / "checkpoints").is_dir() and any((folder / "work" / "checkpoints").iterdir())
    state, train_s = records.train_to_end(method, folder / "work", f"{variant} seed {seed}")
    start = time.perf_counter()
    metrics = evaluate(method, state, split="test")
    eval_s = time.perf_counter() - start
    record = records.make(method="dudonet", variant=variant, seed=seed, settings=settings, metrics=metrics,
                          clock=clock, timings={"train_s": train_s, "eval_s": eval_s},
                          data={"n_test": len(method.dataset("test")), "n_train": len(method.dataset("train"))},
                          resumed=bool(resumed))
    records.save(record, folder)
    print(f"{variant} seed {seed}: PSNR {metrics['psnr']:.2f} SSIM {metrics['ssim']:.4f} "
          f"(train {train_s:.0f} s, test {eval_s:.0f} s)", file=sys.stderr, flush=True)
    return records.load(folder)


def test_data(settings: dict) -> dict:
    """The settings that make the test set (equal for runs scored on the same test pairs)."""
    data = settings["data"]
    keys = TEST_DATA_KEYS + (("n_phantoms",) if data["source"] == "phantom" else ())
    return {k: data[k] for k in keys}


def baseline_records(args, compute: bool = True) -> list[dict]:
    """The uncorrected, LI and NMAR records of the test set (computed and saved where missing)."""
    from kfjax.config import to_dict
    from kfjax.methods import registry

    folder = data_folder(args) / "baselines"
    method = registry.build("dudonet", overrides=[f"data.source={args.source}", f"data.geometry={args.geometry}",
                                                  *args.set])
    wanted = test_data(to_dict(method.config))
    found, missing = {}, []
    for name in BASELINES:
        if records.exists(folder / name):
            record = records.load(folder / name)
            if record["settings"]["data"] != wanted:
                raise SystemExit(f"{folder / name} was computed on another test set; move it away")
            if "ref_psnr" not in record["metrics"]:  # made before the reference target was scored
                missing.append(name)
                continue
            found[name] = record
        else:
            missing.append(name)
    if missing and compute:
        found.update(compute_baselines(method, missing, folder, wanted))
    return [found[name] for name in BASELINES if name in found]


def compute_baselines(method, names: list[str], folder: Path, data_settings: dict) -> dict[str, dict]:
    """Score the corrections without training on the method's test set with the shared MAR scores.

    NMAR: the prior comes from the LI image (air / water / bone by thresholds); outside the metal trace the
    LI sinogram is the measured one, so NMAR needs nothing the data set does not keep.
    """
    import jax
    import jax.numpy as jnp

    from kfjax.methods.common.mar import by_size_group, unit_scores
    from kfjax.methods.dudonet import SINO_SCALE, unit_range
    from kfjax.physics.fbp import fbp
    from kfjax.physics.metal import nmar_prior, nmar_sinogram
    from kfjax.physics.projector import make_projector
    from kfjax.units import MU_WATER_70KEV

    start = time.perf_counter()
    test = method.dataset("test").arrays  # images normalised by μ_water (DuDoNet's data)
    data_s = time.perf_counter() - start
    geometry = method.geometry()
    forward, _ = make_projector(geometry)

    @jax.jit
    def nmar(li_sinogram, trace, li_image, metal):
        prior = nmar_prior(li_image * MU_WATER_70KEV, metal, MU_WATER_70KEV, NMAR["air_hu"], NMAR["bone_hu"])
        sinogram = nmar_sinogram(li_sinogram / SINO_SCALE, trace, forward(prior), NMAR["eps"])
        return fbp(sinogram, geometry, filter=NMAR["filter"]) / MU_WATER_70KEV

    @jax.jit
    def scores(image, gt, ref, metal, group):  # against the metal-free μ and (ref_) the reference reconstruction
        values = unit_scores(unit_range(image), unit_range(gt), metal)
        values |= {f"ref_{k}": v for k, v in unit_scores(unit_range(image), unit_range(ref), metal).items()}
        return values | by_size_group(values, group)

    images = {"uncorrected": lambda b: b["ma_image"], "LI": lambda b: b["li_image"],
              "NMAR": lambda b: nmar(b["li_sinogram"], b["metal_trace"], b["li_image"], b["metal_mask"])}
    correction = {"uncorrected": {"image": "ma_image (FBP of the metal-affected sinogram)"},
                  "LI": {"image": "li_image (FBP of the sinogram with the metal trace linearly interpolated)"},
                  "NMAR": {"image": "FBP of nmar_sinogram(LI sinogram, trace, forward(nmar_prior(LI image)))",
                           **NMAR}}
    n, chunk, out = len(test["gt_image"]), 20, {}
    for name in names:
        clock = records.Clock()
        values: dict[str, list] = {}
        for i in range(0, n, chunk):
            b = {k: jnp.asarray(v[i:i + chunk]) for k, v in test.items()}
            for k, v in scores(images[name](b), b["gt_image"], b["ref_image"], b["metal_mask"],
                               b["size_group"]).items():
                values.setdefault(k, []).append(np.asarray(v))
        metrics = {k: float(np.nanmean(np.concatenate(v))) for k, v in values.items()}
        settings = {"data": data_settings, "split": "test", "correction": correction[name],
                    "scoring": "kfjax.methods.common.mar.unit_scores + by_size_group of "
                               "kfjax.methods.dudonet.unit_range(image / mu_water), outside the metal"}
        record = records.make(method=name, variant=name, seed=None, settings=settings, metrics=metrics,
                              clock=clock, timings={"test_data_s": data_s}, data={"n_test": n})
        records.save(record, folder / name)
        out[name] = records.load(folder / name)
    return out


# ---------------------------------------------------------------- tables (from records only)
def _row(label: str, recs: list[dict], paper, groups: int, trained: bool, prefix: str = "") -> str:
    metric = lambda key: [records.get(r, f"metrics.{prefix}{key}") for r in recs]  # noqa: E731
    paper_cell = "" if not paper else f"{paper[0]}" + (f" / {paper[1]}" if paper[1] else "")
    minutes = records.cell([records.get(r, "timings.train_s") / 60 for r in recs], 1) if trained else ""
    return (f"| {label} | {len(recs) if trained else ''} | {records.describe(recs, 'data.n_test')} | "
            + " | ".join(records.cell(metric(f"psnr_g{g}"), 2) for g in range(groups))
            + f" | {records.cell(metric('psnr'), 2)} | {records.cell(metric('ssim'), 4)} | {paper_cell} | {minutes} |")


def comparison_lines(runs: list[dict], pairs=COMPARISONS, prefix: str = "") -> list[str]:
    """One line per (a, b): the per-seed differences a - b of PSNR and SSIM, paired over seeds."""
    lines = []
    for a, b in pairs:
        ra = {r["seed"]: r for r in runs if r["variant"] == a}
        rb = {r["seed"]: r for r in runs if r["variant"] == b}
        if not ra or not rb:
            continue
        psnr, ssim = (records.paired({s: r["metrics"][prefix + k] for s, r in ra.items()},
                                     {s: r["metrics"][prefix + k] for s, r in rb.items()}) for k in ("psnr", "ssim"))
        lines.append(f"- {VARIANTS[a][1]} − {VARIANTS[b][1]}: PSNR {records.paired_cell(psnr, 2, 'dB')}, "
                     f"SSIM {records.paired_cell(ssim, 4)}; seeds {list(psnr.seeds)}")
    return lines


def training_summary(runs: list[dict]) -> str:
    d = lambda path, fmt=str: records.describe(runs, path, fmt)  # noqa: E731
    return (f"{d('settings.train.steps')} steps of batch {d('settings.data.batch_size')}, Adam lr "
            f"{d('settings.optim.lr', lambda v: f'{v:g}')} ({d('settings.optim.schedule')} schedule, b1 "
            f"{d('settings.optim.b1')}, b2 {d('settings.optim.b2')}, gradient clip {d('settings.optim.grad_clip')}), "
            + records.describe(runs, _training_data))


def _training_data(record: dict) -> str:
    """What a run trained on: fixed cached pairs or fresh masks every step (records before the option: fixed)."""
    if records.get(record, "settings.data.masks", "fixed") == "fresh":
        return (f"a new metal mask, position and noise every step on {record['data']['n_train']} training "
                "slices")
    return (f"{record['settings']['data']['masks_per_slice']} training masks per training slice "
            f"({record['data']['n_train']} training pairs)")


def table(runs: list[dict], baselines: list[dict], score: str = "image") -> str:
    """The README table, its paired comparisons and its footer, from run records only; scores against the
    metal-free μ (`score="image"`) or the CNN-MAR reference reconstruction ("reference")."""
    prefix = SCORE_PREFIX[score]
    from kfjax.methods.common.mar import N_SIZE_GROUPS as groups

    every = baselines + runs
    head = ("| method | seeds | test pairs | " + " | ".join(f"PSNR g{g}" for g in range(groups))
            + " | PSNR | SSIM | paper PSNR / SSIM | train min per run |")
    lines = [head, "|" + "---|" * (groups + 7)]
    for r in baselines:
        lines.append(_row(BASELINES[r["variant"]], [r], PAPER.get(r["variant"]), groups, False, prefix))
    for variant, (_, label) in VARIANTS.items():
        recs = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["seed"])
        if recs:
            lines.append(_row(label, recs, PAPER.get(variant), groups, True, prefix))
    compare = comparison_lines(runs, COMPARISONS, prefix)
    if compare:
        lines += ["", "Paired over seeds (per-seed difference, mean ± sample std; two-sided paired t-test, "
                  "scipy.stats.ttest_rel):", "", *compare]
    test = records.describe(every, lambda r: test_data(r["settings"]),
                            lambda v: ", ".join(f"{k} {v[k]}" for k in v))
    nmar = [r for r in baselines if r["variant"] == "NMAR"]
    foot = [f"Scored against {SCORE_TARGETS[score]}. Test set: {test}; the networks are scored by DuDoNet's "
            "eval_step, the baselines by the same kfjax.methods.common.mar scores."]
    if runs:
        resumed = sum(bool(r.get("resumed")) for r in runs)
        foot.append(f"Networks: seeds {sorted({r['seed'] for r in runs})}; {training_summary(runs)}. "
                    "Train minutes: training only, with compilation (which a warm persistent compilation cache "
                    "skips)"
                    + (f"; {resumed} run(s) were resumed and time only their last part" if resumed else "") + ".")
    if nmar:
        s = nmar[0]["settings"]["correction"]
        foot.append(f"NMAR prior: air below {s['air_hu']:g} HU, bone above {s['bone_hu']:g} HU, eps {s['eps']:g}, "
                    f"{s['filter']} filter.")
    foot.append("mean ± sample std (ddof 1) over seeds; g0 = largest metal ... g4 = smallest. The paper's numbers "
                "(DeepLesion, 416², for context only) are literature values typed into run.py, not runs of ours.")
    return "\n".join(lines + ["", " ".join(foot), "", records.environment_summary(every)])


def _epochs(x: float) -> str:
    return f"{x:.2g}" if x < 10 else f"{x:.0f}"


def sweep_table(args) -> str:
    """Image-domain U-Net vs DuDoNet by training length and data size, from every record under the data folder."""
    runs = [r for r in records.find(data_folder(args), f"steps*/*/{records.RECORD}")
            if r["variant"] in ("image", "dual")]
    settings = lambda r: (r["settings"]["data"]["masks_per_slice"], r["settings"]["train"]["steps"],  # noqa: E731
                          r["settings"]["data"]["batch_size"], r["settings"]["optim"]["lr"],
                          r["settings"]["optim"]["schedule"])
    head = ("| steps | batch | training pairs (masks per slice) | epochs | image-domain U-Net PSNR | DuDoNet PSNR "
            "| DuDoNet − image (dB), paired | seeds | train min per run (image, dual) |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    used = []
    for key in sorted({settings(r) for r in runs}):
        group = [r for r in runs if settings(r) == key]
        image = {r["seed"]: r for r in group if r["variant"] == "image"}
        dual = {r["seed"]: r for r in group if r["variant"] == "dual"}
        seeds = sorted(set(image) & set(dual))
        if not seeds:
            continue
        both = [image[s] for s in seeds] + [dual[s] for s in seeds]
        used += both
        masks, steps, batch = key[:3]
        epochs = records.describe(both, lambda r: _epochs(steps * batch / r["data"]["n_train"]))
        psnr = {name: {s: d[s]["metrics"]["psnr"] for s in seeds} for name, d in (("image", image), ("dual", dual))}
        minutes = [records.cell([d[s]["timings"]["train_s"] / 60 for s in seeds], 1) for d in (image, dual)]
        lines.append(f"| {steps} | {batch} | {records.describe(both, 'data.n_train')} ({masks}) | {epochs} | "
                     f"{records.cell(list(psnr['image'].values()), 2)} | {records.cell(list(psnr['dual'].values()), 2)} | "
                     f"{records.paired_cell(records.paired(psnr['dual'], psnr['image']), 2)} | "
                     f"{', '.join(map(str, seeds))} | {minutes[0]}, {minutes[1]} |")
    if not used:
        return "\n".join(lines + ["", "No finished image/dual pairs of runs."])
    d = lambda path, fmt=str: records.describe(used, path, fmt)  # noqa: E731
    foot = (f"PSNR (dB) outside the metal on the {d('data.n_test')} test pairs, mean ± sample std over seeds; "
            "DuDoNet − image: per-seed difference, mean ± sample std, two-sided paired t-test over seeds "
            f"(scipy.stats.ttest_rel). Test set: "
            f"{records.describe(used, lambda r: test_data(r['settings']), lambda v: ', '.join(f'{k} {v[k]}' for k in v))}"
            f". Adam lr {d('settings.optim.lr', lambda v: f'{v:g}')}, {d('settings.optim.schedule')} schedule over "
            "each run. Train minutes: training only, with compilation (which a warm persistent compilation cache skips).")
    return "\n".join(lines + ["", foot, "", records.environment_summary(used)])


RESOLUTION_GEOMETRIES = ("adn_quarter", "adn_half", "adn")  # 64², 128², 256²: the sizes compared, smallest first


def resolution_records(args) -> dict[str, tuple[list[dict], list[dict]]]:
    """geometry -> (image and dual runs, baselines) of ``args``' settings at each RESOLUTION_GEOMETRIES size
    that has finished image/dual runs (``args.geometry`` is ignored)."""
    found = {}
    for geometry in RESOLUTION_GEOMETRIES:
        at = argparse.Namespace(**{**vars(args), "geometry": geometry})
        runs = [r for r in records.find(steps_folder(at), f"*/{records.RECORD}")
                if r["variant"] in ("image", "dual") and r["seed"] in args.seeds]
        if runs:
            found[geometry] = (runs, baseline_records(at, compute=False))
    return found


def resolution_table(by_geometry: dict[str, tuple[list[dict], list[dict]]], score: str = "image") -> str:
    """How the dual-domain gain moves with image size and metal size: per geometry and size group, LI, the
    image-domain U-Net and DuDoNet (mean ± std over seeds), DuDoNet − image paired over seeds, DuDoNet − LI."""
    from kfjax.methods.common.mar import N_SIZE_GROUPS as groups
    from kfjax.physics.geometry import preset

    prefix = SCORE_PREFIX[score]
    lines = ["| image | metal | LI | image-domain U-Net | DuDoNet | DuDoNet − image (dB), paired over seeds "
             "| DuDoNet − LI (dB) |", "|---|---|---|---|---|---|---|"]
    used = []
    for geometry, (runs, baselines) in by_geometry.items():
        image = {r["seed"]: r for r in runs if r["variant"] == "image"}
        dual = {r["seed"]: r for r in runs if r["variant"] == "dual"}
        seeds = sorted(set(image) & set(dual))
        if not seeds:
            continue
        used += [image[s] for s in seeds] + [dual[s] for s in seeds] + baselines
        li = next((r for r in baselines if r["variant"] == "LI"), None)
        h, w = preset(geometry).image_shape
        for key, label in [*((f"psnr_g{g}", f"g{g}") for g in range(groups)), ("psnr", "all")]:
            a = {s: dual[s]["metrics"][prefix + key] for s in seeds}
            b = {s: image[s]["metrics"][prefix + key] for s in seeds}
            li_value = li["metrics"].get(prefix + key) if li else None
            over_li = records.cell([a[s] - li_value for s in seeds], 2, sign=True) if li_value is not None else ""
            lines.append(f"| {h}² ({geometry}) | {label} | {'' if li_value is None else f'{li_value:.2f}'} | "
                         f"{records.cell(list(b.values()), 2)} | {records.cell(list(a.values()), 2)} | "
                         f"{records.paired_cell(records.paired(a, b), 2)} | {over_li} |")
    if not used:
        return "\n".join(lines + ["", "No finished image/dual pairs of runs."])
    runs = [r for r in used if r["seed"] is not None]
    foot = (f"PSNR (dB) outside the metal against {SCORE_TARGETS[score]}, mean ± sample std over seeds; g0 = "
            "largest metal ... g4 = smallest, all = every test pair. DuDoNet − image: per-seed difference, mean ± "
            "sample std, two-sided paired t-test (scipy.stats.ttest_rel); DuDoNet − LI: per-seed difference from "
            f"the (seedless) LI baseline. Networks: {training_summary(runs)}. Test pairs per size: "
            f"{records.describe(runs, 'data.n_test')}.")
    return "\n".join(lines + ["", foot, "", records.environment_summary(used)])


# ---------------------------------------------------------------- command line
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--geometry", default="adn_quarter")
    parser.add_argument("--source", default="ct", choices=["ct", "phantom"], help="ct: the real chest CT")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--masks", type=int, default=2, help="training masks per training slice")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for every run (e.g. data.n_phantoms=8 for a quick test)")
    parser.add_argument("--runs", help="folder of the runs (default: runs/ next to this script)")
    parser.add_argument("--readme", default=str(HERE / "README.md"), help="file that --write rewrites")
    parser.add_argument("--write", action="store_true", help="replace the table (or the sweep) in the README")
    parser.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    parser.add_argument("--sweep", action="store_true", help="tabulate image vs dual over every finished length")
    parser.add_argument("--resolution", action="store_true",
                        help="tabulate image vs dual per image size (64/128/256²) and metal size group from the "
                             "finished runs of these settings (section 'resolution')")
    parser.add_argument("--score", default="image", choices=list(SCORE_PREFIX),
                        help="what the table scores against: the metal-free μ or the reference reconstruction")
    parser.add_argument("--section", default="table", help="README section that --write replaces")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from kfjax.runtime import setup_jax

    setup_jax()
    if args.sweep:
        text = sweep_table(args)
        print(text)
        if args.write:
            records.write_section(args.readme, "sweep", text)
        return
    if args.resolution:
        text = resolution_table(resolution_records(args), args.score)
        print(text)
        if args.write:
            records.write_section(args.readme, "resolution", text)
        return
    baselines = baseline_records(args)  # no training: computed (once) even with --table-only
    if args.table_only:
        runs = [r for r in records.find(steps_folder(args), f"*/{records.RECORD}")
                if r["variant"] in args.variants and r["seed"] in args.seeds]
    else:
        runs = [run_one(v, s, args) for s in args.seeds for v in args.variants]
    text = table(runs, baselines, args.score)
    print(text)
    if args.write:
        records.write_section(args.readme, args.section, text)


if __name__ == "__main__":
    main()
