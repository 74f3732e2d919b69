"""The DuDoNet and ADN experiment tables are built from run records alone: rows, size-group cells, paired
tests over seeds and footers all come from the records (synthetic ones here; nothing is trained)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _load(name: str, path: Path):
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


records = _load("records", EXPERIMENTS / "records.py")
dudonet_run = _load("dudonet_run", EXPERIMENTS / "dudonet" / "run.py")
adn_run = _load("adn_run", EXPERIMENTS / "adn" / "run.py")
di2in_run = _load("di2in_run", EXPERIMENTS / "di2in" / "run.py")
registration_run = _load("registration_run", EXPERIMENTS / "registration_opt" / "run.py")
ice_run = _load("ice_run", EXPERIMENTS / "ice" / "run.py")
point2_run = _load("point2_run", EXPERIMENTS / "registration" / "run.py")
di2in_an_run = _load("di2in_an_run", EXPERIMENTS / "di2in_an" / "run.py")
u2net_run = _load("u2net_run", EXPERIMENTS / "u2net" / "run.py")

ENV = {"machine": {"cpu": "Test CPU 9000", "cores": 7, "platform": "TestOS", "arch": "x", "python": "3",
                   "load_avg": [1.5, 1.0, 1.0]},
       "device": {"backend": "cpu", "kind": "cpu", "count": 1},
       "versions": {"jax": "9.9", "jaxlib": "9.9", "flax": "8.8"}, "git": {"commit": "feedbee", "dirty": False}}
TEST = {"source": "phantom", "geometry": "adn_quarter", "material": "Ti", "eval_slice_step": 1, "pixel_size": 0.0,
        "n_phantoms": 17}


def _metrics(psnr: float, ssim: float) -> dict:
    return {"psnr": psnr, "ssim": ssim, **{f"psnr_g{g}": psnr - 2 + g for g in range(5)},
            **{f"ssim_g{g}": ssim for g in range(5)}}


def _record(method, variant, seed, settings, metrics, **fields) -> dict:
    return {"schema": 1, "method": method, "variant": variant, "seed": seed, "settings": settings,
            "started": "2031-05-0%dT10:00:00+00:00" % (1 + (seed or 0)), "ended": "2031-05-01T11:00:00+00:00",
            "wall_s": 123.0, "cpu_s": 200.0, "timings": {}, "environment": ENV, "metrics": metrics, **fields}


def _dudonet_records(steps=7):
    baselines = [
        _record(name, name, None, {"data": TEST, "split": "test", "correction": dict(dudonet_run.NMAR)},
                _metrics(p, 0.8), data={"n_test": 37})
        for name, p in (("uncorrected", 27.0), ("LI", 29.0), ("NMAR", 28.5))]
    rng = np.random.default_rng(0)
    runs = []
    for seed in (0, 1, 2):
        for variant, p in (("image", 31.0), ("dual", 31.3)):
            settings = {"seed": seed, "data": dict(TEST, masks_per_slice=3, batch_size=5),
                        "train": {"steps": steps}, "optim": {"lr": 0.002, "schedule": "cosine", "b1": 0.5,
                                                             "b2": 0.999, "grad_clip": 1.0},
                        "model": {"mode": variant}}
            runs.append(_record("dudonet", variant, seed, settings, _metrics(p + rng.normal(0, 0.1), 0.9),
                                timings={"train_s": 60.0 * (seed + 1), "eval_s": 5.0},
                                data={"n_test": 37, "n_train": 51}))
    return runs, baselines


def test_dudonet_table_comes_from_the_records():
    runs, baselines = _dudonet_records()
    text = dudonet_run.table(runs, baselines)
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split(" | ")[0] for r in rows] == ["| uncorrected", "| LI", "| NMAR",
                                                  "| image-domain U-Net (IE-Net on LI)", "| DuDoNet"]
    nmar = rows[2].split(" | ")
    assert nmar[2] == "37" and nmar[3:8] == ["26.50", "27.50", "28.50", "29.50", "30.50"]  # per-group cells filled
    image = {r["seed"]: r["metrics"]["psnr"] for r in runs if r["variant"] == "image"}
    dual = {r["seed"]: r["metrics"]["psnr"] for r in runs if r["variant"] == "dual"}
    cells = rows[4].split(" | ")
    values = list(dual.values())
    assert cells[1] == "3" and cells[8] == f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"
    assert cells[-1].strip(" |") == "2.0 ± 1.0"  # train minutes 1, 2, 3
    p = stats.ttest_rel([dual[s] for s in range(3)], [image[s] for s in range(3)]).pvalue
    line = next(line for line in lines if line.startswith("- DuDoNet − image-domain"))
    assert f"p = {p:.2g}" in line and "n = 3" in line and "seeds [0, 1, 2]" in line
    for fact in ("7 steps of batch 5", "lr 0.002", "3 training masks per training slice", "(51 training pairs)",
                 "n_phantoms 17", "air below -700 HU", "Test CPU 9000, 7 cores, TestOS", "feedbee",
                 "2031-05-01 to 2031-05-03"):
        assert fact in text, fact
    for stale in ("180", "batch 4", "no GPU", "x86_64"):
        assert stale not in text, stale


def test_dudonet_resolution_table_pairs_seeds_per_size_and_metal_group():
    small, small_base = _dudonet_records()
    large, large_base = _dudonet_records()
    for r in large:  # at the larger size DuDoNet gains 1 dB more in every group
        r["settings"]["data"]["geometry"] = "adn_half"
        if r["variant"] == "dual":
            r["metrics"] = {k: v + 1.0 for k, v in r["metrics"].items()}
    text = dudonet_run.resolution_table({"adn_quarter": (small, small_base), "adn_half": (large, large_base)})
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| 64²") or line.startswith("| 128²")]
    assert [(r[0], r[1]) for r in rows][:6] == [("| 64² (adn_quarter)", g) for g in ("g0", "g1", "g2", "g3", "g4",
                                                                                      "all")]
    assert len(rows) == 12 and rows[6][0] == "| 128² (adn_half)"
    for runs, row in ((small, rows[0]), (large, rows[6])):
        a = {r["seed"]: r["metrics"]["psnr_g0"] for r in runs if r["variant"] == "dual"}
        b = {r["seed"]: r["metrics"]["psnr_g0"] for r in runs if r["variant"] == "image"}
        d = [a[s] - b[s] for s in range(3)]
        p = stats.ttest_rel([a[s] for s in range(3)], [b[s] for s in range(3)]).pvalue
        assert row[5].startswith(f"{np.mean(d):+.2f} ± {np.std(d, ddof=1):.2f} (n = 3, p")
        assert (f"p = {p:.2g}" if p >= 0.001 else "p < 0.001") in row[5]
        assert row[2] == "27.00" and row[6].strip(" |") == records_cell([a[s] - 27.0 for s in range(3)])
    assert "7 steps of batch 5" in text and "Test CPU 9000" in text and "Test pairs per size: 37" in text


def records_cell(values):
    return f"{np.mean(values):+.2f} ± {np.std(values, ddof=1):.2f}"


def test_dudonet_table_scores_against_the_reference_when_asked():
    runs, baselines = _dudonet_records()
    for r in runs + baselines:  # reference scores 10 dB above the image ones
        r["metrics"] |= {f"ref_{k}": v + 10 for k, v in r["metrics"].items()}
    text = dudonet_run.table(runs, baselines, "reference")
    li = next(line for line in text.splitlines() if line.startswith("| LI |")).split(" | ")
    assert li[8] == "39.00" and "reference reconstruction" in text
    dual = [r["metrics"]["ref_psnr"] for r in runs if r["variant"] == "dual"]
    assert f"{np.mean(dual):.2f} ± {np.std(dual, ddof=1):.2f}" in text


def test_dudonet_table_says_when_records_disagree():
    runs, baselines = _dudonet_records()
    runs[0]["settings"]["train"]["steps"] = 9
    runs[1]["environment"] = dict(ENV, device={"backend": "gpu", "kind": "H200", "count": 1})
    text = dudonet_run.table(runs, baselines)
    assert "7 / 9 (differs between runs) steps" in text or "9 / 7 (differs between runs) steps" in text
    assert "H200" in text and "differs between runs" in text


def test_dudonet_baselines_only_and_no_runs():
    _, baselines = _dudonet_records()
    text = dudonet_run.table([], baselines)
    assert "| LI |" in text and "Paired" not in text and "Networks" not in text


def _adn_records():
    test = {"source": "phantom", "geometry": "adn_quarter"}
    baselines = [_record(name, name, None, {"data": dict(test, recipe="mar"), "split": "test", "pairs": pairs},
                         _metrics(p, 0.8), data={"n_test": n})
                 for name, p, pairs, n in (("uncorrected", 27.0, "all", 120), ("LI", 29.0, "all", 120),
                                           ("LI-first6", 28.0, 6, 6))]
    runs = []
    gan = {"data": dict(test, batch_size=2, masks_per_slice=4), "train": {"steps": 11},
           "model": {"base": 8, "num_residual": 2, "d_layers": 2, "d_features": 8}}
    cyc = {"data": dict(test, batch_size=2, masks_per_slice=4), "train": {"steps": 11},
           "model": {"features": 8, "n_blocks": 3, "d_layers": 2, "d_features": 8}}
    for seed in (0, 1):
        for variant, method, settings, p in (("adn_art", "adn", gan, 25.0), ("adn", "adn", gan, 25.6),
                                             ("cyclegan", "cyclegan", cyc, 22.0)):
            runs.append(_record(method, variant, seed, settings, _metrics(p + 0.1 * seed * (variant == "adn"), 0.7),
                                timings={"train_s": 100.0, "eval_s": 23.0}, data={"n_test": 120, "n_train": 90}))
        runs.append(_record("dip", "dip_image", seed, {"data": test, "fit": {"iterations": 13, "channels": 8,
                                                                               "scales": 3}},
                            _metrics(28.0, 0.7), timings={"eval_s": 77.0}, data={"n_test": 6}))
        runs.append(_record("dudonet", "dudonet", seed, {"data": dict(test, batch_size=4), "train": {"steps": 19}},
                            _metrics(31.0, 0.9), timings={"train_s": 42.0}, data={"n_test": 120}))
    return runs, baselines


def test_adn_table_comes_from_the_records():
    runs, baselines = _adn_records()
    text = adn_run.table(runs, baselines)
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| method")]
    labels = [r.split(" | ")[0][2:] for r in rows]
    assert labels == ["uncorrected", "LI", "LI (the 6 DIP pairs)", "ADN ablation: + artifact consistency",
                      "ADN (+ self-reduction: the full model)", "CycleGAN", "DIP, image term",
                      "DuDoNet (supervised, for reference)"]
    assert rows[2].split(" | ")[2] == "6" and rows[0].split(" | ")[3] == "25.00"
    assert rows[-1].split(" | ")[-1].strip(" |") == "42, 42"  # DuDoNet: training seconds
    assert rows[3].split(" | ")[-1].strip(" |") == "123, 123"  # GANs: training + test evaluation
    assert rows[6].split(" | ")[-1].strip(" |") == "77, 77"  # DIP: the fits
    adn_line = next(line for line in lines if line.startswith("- ADN (+ self-reduction: the full model) − CycleGAN"))
    assert "n = 2" in adn_line
    assert any(line.startswith("- ADN (+ self-reduction: the full model) − ADN ablation: + artifact") for line in lines)
    for fact in ("11 steps of batch 2", "90 metal-affected training images", "ADN base 8", "CycleGAN ngf 8",
                 "DIP: 13 iterations", "first 6 test pairs", "DuDoNet: 19 steps of batch 4", "Seeds [0, 1]",
                 "phantom slices simulated at adn_quarter", "Test CPU 9000"):
        assert fact in text, fact
    for stale in ("180", "600 steps", "no GPU", "x86_64"):
        assert stale not in text, stale


@pytest.mark.parametrize("x, text", [(0.75, "0.75"), (6.74, "6.7"), (27.0, "27")])
def test_sweep_epochs_format(x, text):
    assert dudonet_run._epochs(x) == text


def test_di2in_table_comes_from_the_records():
    def rec(variant, seed, dims, size, dice):
        settings = {"seed": seed, "data": {"spatial_dims": dims, "size": size, "batch_size": 3, "n_train": 33,
                                           "n_val": 9}, "model": {"channels": [4, 8]},
                    "train": {"steps": 21}, "optim": {"lr": 0.004, "schedule": "cosine", "warmup_steps": 2}}
        return _record("di2in", variant, seed, settings, {"dice": dice, "asd": 0.5}, timings={"subprocess_s": 12.0},
                       overrides=[f"seed={seed}"])
    text = di2in_run.table([rec("2d", 0, 2, 48, 0.9), rec("2d", 1, 2, 48, 0.8), rec("3d", 0, 3, 16, 0.7)])
    assert "| 2-D 48², seed 1 | `seed=1` | 0.8000 | 0.500 | 12 |" in text
    assert "| 3-D 16³, seed 0 |" in text
    assert f"Dice 0.8500 ± {np.std([0.9, 0.8], ddof=1):.4f}" in text
    assert "2-D: 21 steps of batch 3, 33 training and 9 validation phantoms of 48 px, channels 4-8" in text
    assert "Test CPU 9000" in text and "no GPU" not in text


def _di2in_an_records(variants=("di2in", "di2in_an"), sizes=(16, 64)):
    """`variants` x `sizes` x 3 seeds; every critic variant's ASD mean is 0.1 + 0.05 s mm below DI2IN's."""
    rows = []
    for n in sizes:
        for seed in (0, 1, 2):
            for variant in variants:
                base = 3.0 - n / 64 + 0.1 * seed - (0.1 + 0.05 * seed) * (variant != "di2in")
                metrics = {"asd_mean": base, "asd_std": 1.0, "asd_max": 5.0, "asd_median": base, "dice": 0.9,
                           "missing_asd_mean": base + 1, "missing_asd_max": 6.0, "normal_asd_mean": base - 0.5,
                           "real_dice": 0.7, "real_asd": 4.0}
                settings = {"seed": seed, "data": {"size": 24, "batch_size": 4}, "train": {"steps": 300},
                            "model": {"channels": [8, 16]}, "optim": {"lr": 0.001, "schedule": "cosine"},
                            "adv": {"pretrain_steps": 150, "weight": 0.01}}
                log = {"seg_loss": 0.7, "d_loss": 0.001 * (seed + 1), "g_adv": 6.0, "adv_pull": 0.06}
                rows.append(_record("di2in_an", variant, seed, settings, metrics, train_log=log,
                                    data={"n_train": n, "n_test": 40, "n_missing": 13, "spacing_mm": 8.0}))
    return rows


def test_di2in_an_table_comes_from_the_records(tmp_path):
    text = di2in_an_run.table(_di2in_an_records())
    assert "| 64 | DI2IN-AN |" in text and "| 16 | DI2IN |" in text
    assert "- DI2IN-AN − DI2IN, 16 training cases: ASD mean -0.15 ± 0.05 mm (n = 3" in text  # -(0.1 + 0.05 s)
    assert "hard-mask critic" not in text, "a variant without runs has no row, no test and no critic line"
    assert "critic loss 0.0020" in text and "relative to the segmentation gradient 0.060" in text
    assert "2.38 → 2.09 mm with 400 training volumes" in text and "Test CPU 9000" in text
    ablation = di2in_an_run.table(_di2in_an_records() + _di2in_an_records(
        ("di2in_an_hard", "di2in_an_image_hard"), sizes=(64,)))
    assert ("- DI2IN-AN, hard-mask critic given the image − DI2IN-AN, hard-mask critic, 64 training cases: "
            "ASD mean +0.00 ± 0.00 mm") in ablation, "the image-conditioned critic is paired with the same critic"
    assert "given the image − DI2IN-AN, hard-mask critic, 16" not in ablation
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"split": "train", "d_loss": 0.5, "g_adv": 1.0}\n{"split": "val", "d_loss": 9.0}\n'
                   '{"split": "train", "d_loss": 0.25, "seg_loss": 0.3}\n')
    assert records.last_train_log(tmp_path, di2in_an_run.LOGGED) == {"d_loss": 0.25, "seg_loss": 0.3}
    assert records.last_train_log(tmp_path / "absent", di2in_an_run.LOGGED) == {}


def _u2net_records(steps: int, modes=("independent", "universal")) -> list[dict]:
    """Runs of `modes` x 3 seeds; universal's mean Dice is 0.1 + 0.01 s below independent's."""
    domains = ["a", "b"]
    rows = []
    for seed in (0, 1, 2):
        for mode in modes:
            dice = 0.8 + 0.02 * seed - (0.1 + 0.01 * seed) * (mode == "universal")
            metrics = {"dice": dice, "dice_a": dice, "dice_b": dice, "params_per_domain": 10.0,
                       "per_domain_pct": 1.0, "per_domain_pct_paper_widths": 0.5}
            rows.append(_record("u2net", mode, seed, {"seed": seed, "train": {"steps": steps}}, metrics,
                                train_log={"loss": 0.5 if mode == "universal" else 0.25},
                                data={"domains": domains, "n_train_per_domain": 8, "n_test_per_domain": 4}))
    return rows


def test_u2net_tables_come_from_the_records():
    text = u2net_run.lengths_table({1200: _u2net_records(1200), 300: _u2net_records(300, ("independent",))})
    lines = text.splitlines()
    assert lines[2] == "| 300 (150) | 0.820 ± 0.020 | not run | not run | no common seeds | 0.250 ± 0.000 / - / - |"
    assert lines[3].startswith("| 1200 (600) | 0.820 ± 0.020 | not run | 0.710 ± 0.010 | -0.110 ± 0.010 (n = 3,")
    assert lines[3].endswith("| 0.250 ± 0.000 / - / 0.500 ± 0.000 |") and "Test CPU 9000" in text
    pairs = u2net_run.comparisons(_u2net_records(300))
    assert len(pairs) == 1 and pairs[0].startswith("- mean Dice, universal − independent: -0.110"), \
        "a pair with a mode that was not run is left out"


def test_registration_table_comes_from_the_records():
    summary = {"views": ["ap"], "cases": 3, "mtre_start_p50_mm": 20.0, "mtre_p50_mm": 0.5, "mtre_p95_mm": 2.0,
               "below_1mm": 2 / 3, "gross_failure_rate": 0.0, "seconds_per_case_median": 5.0}
    settings = {"detector": 64, "photons": 1e4, "downsample": "2,2,1", "similarity": "ncc", "optimizer": "adam",
                "levels": "1:5:1", "rot": 5.0, "trans": 7.0, "points": 50,
                "volume": {"registration_shape": [1, 2, 3], "target_shape": [2, 4, 3]},
                "camera": {"sdd_mm": 1000.0, "source_mm": 800.0, "detector_mm": 300.0},
                "thresholds_mm": {"success": 2.0, "gross_failure": 5.0}}
    record = _record("register", "ap", 0, settings, summary, timings={"compile_s": 44.0},
                     cases=[{"seconds": 4.0}, {"seconds": 5.0}, {"seconds": 9.0}])
    text = registration_run.table([record])
    assert "| AP only | 3 | 20.0 | 0.50 | 2.00 | 67% | 0% | 5.0 (4.0–9.0) | 44 |" in text
    assert "mTRE < 2 mm | gross failure (> 5 mm)" in text and "detector 64² pixels over 300.0 mm" in text
    with pytest.raises(SystemExit, match="predates run records"):
        registration_run.table([{"summary": summary, "meta": {}}])


def _point2_records():
    """The optimisation record, three point2 records with per-row metrics (seed s adds s mm to POINT²) and three
    pose-regression records (12 + 2 s mm)."""
    rows = {"initial": (20.0, 28.0, 100.0, 0.0), "opt": (1.0, 40.0, 30.0, 9.0)}
    opt = _record("intensity", "optimisation", None, {"levels": point2_run.OPT_LEVELS, "cases": {"pair": "wide"}},
                  {f"{r}_{k}": v for r, vals in rows.items() for k, v in zip(("p50", "p95", "gfr", "s"), vals)},
                  data={"n_test": 64})
    runs = []
    for seed in (0, 1, 2):
        learned = {"point": (8.0 + seed, 30.0, 40.0, 0.02), "point2": (3.0 + seed, 9.0, 5.0 + seed, 0.03),
                   "point2_opt": (0.5 + 0.1 * seed, 4.0, 2.0, 3.0)}
        settings = {"seed": seed, "data": {"n_train": 256, "size": 64, "subject": "chest", "pair": "wide",
                                           "batch_size": 4}, "train": {"steps": 1500}}
        runs.append(_record("point2", "point2", seed, settings,
                            {f"{r}_{k}": v for r, vals in learned.items()
                             for k, v in zip(("p50", "p95", "gfr", "s"), vals)}, data={"n_test": 64}))
    regressions = [_record("pose_regression", "regression", seed, {"seed": seed},
                           {"regression_p50": 12.0 + 2 * seed, "regression_p95": 30.0, "regression_gfr": 60.0,
                            "regression_s": 0.01}, data={"n_test": 64}) for seed in (0, 1, 2)]
    clean = _record("intensity", "optimisation-clean", None, {"levels": point2_run.OPT_LEVELS, "shift": "off"},
                    {"opt_clean_p50": 0.1, "opt_clean_p95": 0.5, "opt_clean_gfr": 0.0, "opt_clean_s": 8.0},
                    data={"n_test": 64})
    return opt, runs, regressions, clean


def test_point2_table_comes_from_the_records():
    text = point2_run.table(*_point2_records())
    assert "| optimisation only, targets without the domain shift | 0.10 | 0.50 | 0.0 | 8.000 |" in text
    # 2 views x (150 + 100 + 60) Adam steps in 9 s; refinement 2 x (60 + 60) in 3.0 - 0.03 s
    assert "620 per case from the start, 69 renders/s" in text and "240 per case in the refinement" in text
    assert f"{240 / 2.97:.0f} renders/s." in text
    assert "| pose regression (CNN) | 14.00 ± 2.00 | 30.00 ± 0.00 | 60.0 ± 0.0 | 0.010 ± 0.000 |" in text
    # POINT² - regression per seed: (3 + s) - (12 + 2 s) = -9 - s: mean -10, std 1
    assert "- POINT² (two views, triangulation) − pose regression (CNN), p50: -10.00 ± 1.00 mm (n = 3" in text
    assert "| optimisation only | 1.00 | 40.00 | 30.0 | 9.000 |" in text
    assert "| POINT² (two views, triangulation) | 4.00 ± 1.00 | 9.00 ± 0.00 | 6.0 ± 1.0 | 0.030 ± 0.000 |" in text
    assert "| initial (start pose) | 20.00 | 28.00 | 100.0 |  |" in text
    _, runs, _, _ = _point2_records()
    point2 = {r["seed"]: r["metrics"]["point2_p50"] for r in runs}
    point = {r["seed"]: r["metrics"]["point_p50"] for r in runs}
    assert records.paired(point2, point).mean == pytest.approx(-5.0)  # every seed: 3 + s - (8 + s)
    assert "64 test cases, 256 training cases at 64² (chest subject, views wide), 1500 steps of 4 cases" in text
    assert "seeds 0, 1, 2" in text and "Test CPU 9000" in text and "0.55 / 5.67 mm" in text
    assert "GFR (%) -28.00" in text  # 2 % - 30 %


# per-structure means of the fabricated ICE runs: 2-D + 3-D gains most on the veins and the appendage
ICE_MEANS = {"2d": (0.80, [0.90, 0.50, 0.40, 0.35, 0.42, 0.30]), "3d": (0.70, [0.85, 0.40, 0.30, 0.30, 0.32, 0.20]),
             "2d3d": (0.85, [0.91, 0.60, 0.55, 0.50, 0.52, 0.45])}


def _ice_records(means=ICE_MEANS):
    rng = np.random.default_rng(3)
    rows = []
    for seed in (0, 1, 2):
        for pipeline, (total, per) in means.items():
            settings = {"seed": seed, "data": {"shape": [24, 24, 24], "spacing": 5.0, "n_frames": 11,
                                               "frame_shape": [48, 48], "sweep_deg": 80.0, "depth_mm": 90.0,
                                               "n_train": 13, "seed": 0, "batch_size": 3 if pipeline == "3d" else 5},
                        "model": {"pipeline": pipeline, "channels": [4, 8], "norm": "group"},
                        "train": {"steps": 17 if pipeline == "3d" else 19},
                        "optim": {"lr": 0.003, "schedule": "cosine"}, "loss": {"dice_weight": 1.0}}
            metrics = {"dice": total + rng.normal(0, 0.01),
                       **{f"dice_{s}": v + rng.normal(0, 0.01) for s, v in zip(ice_run.STRUCTURES, per)}}
            rows.append(_record("ice_contouring", pipeline, seed, settings, metrics,
                                timings={"train_s": 60.0 * (seed + 2), "eval_s": 3.0},
                                data={"n_test_sweeps": 4, "n_test_frames": 44}))
    return rows


def test_ice_table_comes_from_the_records():
    rows = _ice_records()
    rows[3]["metrics"]["dice_rspv"] = None  # 3-D, seed 1: RSPV never seen (NaN saved as null): left out
    text = ice_run.table(rows)
    lines = text.splitlines()
    by = {p: {r["seed"]: r["metrics"] for r in rows if r["variant"] == p} for p in ice_run.PIPELINES}

    def cell(pipeline, key):
        x = [m[key] for m in by[pipeline].values() if m[key] is not None]
        return f"{np.mean(x):.3f} ± {np.std(x, ddof=1):.3f}" if len(x) > 1 else f"{x[0]:.3f}"

    row = next(line for line in lines if line.startswith("| 2-D + 3-D |")).split(" | ")
    assert row[1:8] == [cell("2d3d", k) for k in ("dice", *(f"dice_{s}" for s in ice_run.STRUCTURES))]
    assert row[8] == "3" and row[9].strip(" |") == "3.0 ± 1.0"  # train minutes 2, 3, 4
    three = next(line for line in lines if line.startswith("| 3-D only")).split(" | ")
    assert three[7] == cell("3d", "dice_rspv") and three[7].count("±") == 1
    assert "| paper: 2-D + 3-D | 0.898 | 0.942 | 0.658 | 0.706 | 0.620 | 0.718 | 0.395 |" in text
    assert "| paper: 2-D only | 0.872 |" in text and "| paper: 3-D only (resliced) | 0.853 |" in text
    for a, b, name in (("2d3d", "2d", "dice"), ("2d", "3d", "dice"), ("2d3d", "2d", "dice_lspv")):
        p = stats.ttest_rel([by[a][s][name] for s in range(3)], [by[b][s][name] for s in range(3)]).pvalue
        label = "total Dice" if name == "dice" else "LSPV"
        line = next(x for x in lines if x.startswith(f"- {label}, {ice_run.LABELS[a]} − {ice_run.LABELS[b]}:"))
        assert f"p = {p:.2g}" in line and "n = 3" in line, line
    assert sum(x.startswith("- ") and "2-D + 3-D − 2-D only" in x for x in lines) == 7  # total + 6 structures
    order = next(x for x in lines if x.startswith("Ordering"))
    assert order.index("2-D + 3-D (") < order.index("2-D only (") < order.index("3-D only") and ") holds at" in order
    gains = next(x for x in lines if x.startswith("Mean gain")).split(": ", 1)[1]
    assert gains.index("LA body") > max(gains.index(n) for n in ("LAA", "LIPV", "LSPV", "RSPV"))
    for fact in ("volumes 24×24×24 voxels at 5 mm", "11 frames of 48×48 px over 80°",
                 "13 training and 4 test sweeps (44 test frames)",
                 "2-D only 19 × 5, 3-D only (resliced) 17 × 3, 2-D + 3-D 19 × 5", "channels 4-8", "lr 0.003",
                 "seeds 0, 1, 2", "nothing here is real data", "Test CPU 9000, 7 cores",
                 "feedbee", "2031-05-01 to 2031-05-03"):
        assert fact in text, fact


def test_ice_table_says_when_the_ordering_fails_and_runs_are_missing():
    swapped = dict(ICE_MEANS, **{"2d": ICE_MEANS["3d"], "3d": ICE_MEANS["2d"]})
    text = ice_run.table(_ice_records(swapped))
    order = next(x for x in text.splitlines() if x.startswith("Ordering"))
    assert "does NOT hold" in order and order.index("3-D only") < order.index("2-D only (")
    text = ice_run.table([r for r in _ice_records() if r["variant"] != "3d"])
    assert "| 3-D only" not in text.replace("| paper: 3-D only", "") and "Ordering" not in text
    assert "- total Dice, 2-D + 3-D − 2-D only" in text and "2-D only − 3-D" not in text


def test_ice_panel_frames_pick_the_frame_with_most_structures():
    labels = np.zeros((5, 3, 4, 4), np.int32)
    labels[0, 1, 0, :3] = [1, 2, 3]  # sweep 0: frame 1 holds three structures
    labels[0, 2, :, :] = 1  # frame 2: one structure, more pixels
    labels[1, 2, 0, :2] = [4, 5]
    labels[1, 0, 0, :2] = [4, 6]
    labels[1, 0, 1, 0] = 6  # sweep 1: frames 0 and 2 tie on structures; frame 0 has more foreground
    assert ice_run.panel_frames(labels) == [[0, 1], [1, 0], [2, 0], [3, 0]]
