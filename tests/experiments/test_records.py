"""experiments/records.py: run records, environment description, statistics over seeds, README sections."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _load(name: str, path: Path):
    """The module at `path`, registered as `name` (the experiment scripts import experiments/records.py as
    `records`, so the tests share that one module)."""
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


records = _load("records", EXPERIMENTS / "records.py")


def _record(tmp_path: Path, **changes) -> dict:
    clock = records.Clock()
    fields = dict(method="dudonet", variant="dual", seed=1, settings={"data": {"batch_size": 4}, "seed": 1},
                  metrics={"psnr": np.float32(30.5), "psnr_g0": float("nan"), "n": np.int64(3)}, clock=clock,
                  timings={"train_s": 1.5}, data={"n_test": 10}, with_device=True)
    fields.update(changes)
    return records.make(**fields)


def test_record_holds_everything_and_round_trips(tmp_path):
    record = _record(tmp_path, resumed=False)
    path = records.save(record, tmp_path / "run")
    assert path == tmp_path / "run" / "record.json"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["record.json"]  # no temporary file left
    loaded = records.load(tmp_path / "run")
    assert loaded["_folder"] == str(tmp_path / "run")
    assert {k: v for k, v in loaded.items() if k != "_folder"} == json.loads(path.read_text())
    assert loaded["method"] == "dudonet" and loaded["variant"] == "dual" and loaded["seed"] == 1
    assert loaded["settings"] == {"data": {"batch_size": 4}, "seed": 1}
    assert loaded["metrics"] == {"psnr": 30.5, "psnr_g0": None, "n": 3}  # NaN saved as null, numpy as plain
    assert loaded["timings"] == {"train_s": 1.5} and loaded["data"] == {"n_test": 10} and loaded["resumed"] is False
    assert loaded["started"] <= loaded["ended"] and loaded["started"].endswith("+00:00")
    assert loaded["wall_s"] >= 0 and loaded["cpu_s"] >= 0
    env = loaded["environment"]
    assert env["machine"]["cores"] == os.cpu_count() and env["machine"]["cpu"]
    assert env["machine"]["platform"] and env["machine"]["python"]
    import jax

    assert env["device"] == {"backend": jax.default_backend(), "kind": jax.devices()[0].device_kind,
                             "count": jax.device_count()}
    assert env["versions"]["jax"] == jax.__version__ and env["versions"]["jaxlib"] and env["versions"]["flax"]
    # saving again (e.g. a copied record) drops the read-only _folder and rewrites atomically
    records.save(loaded, tmp_path / "copy")
    assert "_folder" not in json.loads((tmp_path / "copy" / "record.json").read_text())
    assert records.exists(tmp_path / "copy") and not records.exists(tmp_path / "nothing")


def test_find_reads_every_record_under_a_folder(tmp_path):
    for seed in (2, 0, 1):
        records.save(_record(tmp_path, seed=seed, with_device=False), tmp_path / "steps3" / f"dual-s{seed}")
    found = records.find(tmp_path, "steps3/*/record.json")
    assert [r["seed"] for r in found] == [0, 1, 2]
    assert "device" not in found[0]["environment"]
    assert records.find(tmp_path / "missing") == []


def test_git_state_in_and_outside_a_repository(tmp_path):
    assert records.git_state(tmp_path) is None  # tmp_path is not inside a git repository
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=EXPERIMENTS, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no git checkout")
    state = records.git_state(EXPERIMENTS)
    assert state["commit"] == head and isinstance(state["dirty"], bool)


def test_cpu_model_and_machine():
    assert isinstance(records.cpu_model(), str) and records.cpu_model()
    m = records.machine()
    assert set(m) >= {"cpu", "cores", "platform", "arch", "python", "load_avg"}


def test_mean_std_and_cell():
    assert records.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)  # sample std (ddof 1)
    mean, std, n = records.mean_std([5.0, None, float("nan")])
    assert (mean, n) == (5.0, 1) and math.isnan(std)
    assert records.mean_std([])[2] == 0
    assert records.cell([1.0, 2.0, 3.0], 2) == "2.00 ± 1.00"
    assert records.cell([0.5], 4) == "0.5000"
    assert records.cell([], 2) == ""
    assert records.cell([0.25, 0.75], 1, sign=True) == "+0.5 ± 0.4"


def test_paired_matches_scipy_and_pairs_common_seeds_only():
    a = {0: 31.5, 1: 31.0, 2: 32.1, 3: 30.0}
    b = {0: 31.0, 1: 30.9, 2: 31.2, 5: 10.0}
    result = records.paired(a, b)
    assert result.seeds == (0, 1, 2) and result.n == 3
    d = np.array([0.5, 0.1, 0.9])
    assert result.differences == pytest.approx(tuple(d))
    assert result.mean == pytest.approx(d.mean()) and result.std == pytest.approx(d.std(ddof=1))
    expected = stats.ttest_rel([31.5, 31.0, 32.1], [31.0, 30.9, 31.2])
    assert result.t == pytest.approx(expected.statistic) and result.p == pytest.approx(expected.pvalue)
    assert records.paired_cell(result, 2, "dB") == f"+0.50 ± 0.40 dB (n = 3, p = {expected.pvalue:.2g})"


def test_paired_edge_cases():
    one = records.paired({0: 2.0}, {0: 1.5, 1: 3.0})
    assert one.n == 1 and math.isnan(one.p)
    assert records.paired_cell(one, 2) == "+0.50 (n = 1, no test)"
    assert records.paired_cell(records.paired({0: 1.0}, {1: 1.0})) == "no common seeds"
    flat = records.paired({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0})  # identical differences: no spread, no test
    assert flat.mean == 1.0 and flat.std == 0.0 and math.isnan(flat.p)
    assert records.paired_cell(flat, 1) == "+1.0 ± 0.0 (n = 2, p = n/a (no spread))"
    small = records.paired({i: 1.0 + i + 1e-3 * (i % 2) for i in range(40)}, {i: float(i) for i in range(40)})
    assert records.paired_cell(small, 1).endswith("p < 0.001)")


def test_get_distinct_describe_and_diff_keys():
    recs = [{"settings": {"train": {"steps": 300}}, "data": {"n_test": 180}},
            {"settings": {"train": {"steps": 1200}}, "data": {"n_test": 180}},
            {"settings": {"train": {"steps": 300}}, "data": {}}]
    assert records.get(recs[0], "settings.train.steps") == 300
    assert records.get(recs[2], "data.n_test", "?") == "?"
    assert records.distinct(recs, "settings.train.steps") == [300, 1200]
    assert records.describe(recs[:2], "data.n_test") == "180"
    assert records.describe(recs, "settings.train.steps") == "300 / 1200 (differs between runs)"
    assert records.describe(recs, "data.n_test") == "180 / not recorded (differs between runs)"
    assert records.describe([], "data.n_test") == "not recorded"
    assert records.describe(recs, lambda r: r["settings"]["train"]["steps"] * 2, lambda v: f"{v:,}") \
        == "600 / 2,400 (differs between runs)"
    assert records.diff_keys({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 5}, "e": 0}) == ["b.c", "b.d", "e"]
    assert records.diff_keys({"a": [1, 2]}, {"a": [1, 2]}) == []


def test_environment_summary_lists_disagreements(tmp_path):
    a = _record(tmp_path, with_device=False)
    b = json.loads(json.dumps(a))
    b["environment"]["machine"]["cpu"] = "Other CPU"
    b["started"] = "2030-01-02T00:00:00+00:00"
    b["environment"]["git"] = {"commit": "abc1234", "dirty": False}
    text = records.environment_summary([a, b])
    assert text.startswith("2 run record(s), started ")
    assert "to 2030-01-02" in text and "Other CPU" in text and "(differs between runs)" in text
    assert "abc1234" in text and "device: not recorded" in text
    same = records.environment_summary([a, a])
    assert "differs" not in same and f"{os.cpu_count()} cores" in same
    assert records.environment_summary([]) == "No run records."


def test_write_section_replaces_only_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- table:begin -->\nold\n<!-- table:end -->\noutro\n")
    records.write_section(readme, "table", "| a |\n|---|\n")
    assert readme.read_text() == "intro\n<!-- table:begin -->\n| a |\n|---|\n<!-- table:end -->\noutro\n"
    with pytest.raises(SystemExit, match="sweep"):
        records.write_section(readme, "sweep", "x")
