"""`kfjax bench`: method and physics rows in the documented JSON schema, --compare ratios, one-line errors that
write nothing, an atomic JSON write, and benchmarks/gpu.sh end to end at the tiny size into a README copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from kfjax.bench import report
from kfjax.bench.env import peak_flops
from kfjax.bench.method import item_name, synthetic_batch
from kfjax.bench.timing import _flops
from kfjax.cli import main
from kfjax.errors import InputError

REPO = Path(__file__).resolve().parents[2]
DI2IN = ["data.size=16", "model.channels=4,8"]
DUDONET = ["data.geometry=adn_quarter", "model.se_channels=4", "model.ie_channels=4"]  # one level each: ~25 s
NUMBER, OPTIONAL = (int, float), (int, float, type(None))
TYPES = {
    "key": str, "batch": int, "item": str, "steps": int, "compile_s": float, "median_s": float, "p90_s": float,
    "items_per_s": float, "flops_per_step": OPTIONAL, "flops_per_s": OPTIONAL, "xla_temp_bytes": (int, type(None)),
}
KIND_TYPES = {
    "method": {"method": str, "overrides": list, "compute_dtype": (str, type(None)), "params": int, "devices": int,
               "peak_fraction": OPTIONAL, "xla_argument_bytes": (int, type(None)),
               "xla_output_bytes": (int, type(None)), "device_peak_bytes": (int, type(None))},
    "physics": {"op": str, "geometry": str, "shape": list, "dtype": str},
}
ENV_TYPES = {"date": str, "jax": str, "jaxlib": str, "python": str, "backend": str, "device_kind": str,
             "device_count": int, "process_count": int, "cpu": str, "cores": int, "compilation_cache": bool}


def check_schema(doc: dict, kind: str) -> None:
    """`doc` has exactly the keys and types the `kfjax.bench` docstring documents."""
    assert set(doc) == {"kind", "env", "rows"} and doc["kind"] == kind
    assert set(doc["env"]) == set(ENV_TYPES)
    for name, types in ENV_TYPES.items():
        assert isinstance(doc["env"][name], types), (name, doc["env"][name])
    types = TYPES | KIND_TYPES[kind]
    assert doc["rows"]
    for row in doc["rows"]:
        assert set(row) == set(types), set(row) ^ set(types)
        for name, t in types.items():
            assert isinstance(row[name], t), (name, row[name])
        assert 0 < row["median_s"] <= row["p90_s"]
        assert row["items_per_s"] == pytest.approx(row["batch"] / row["median_s"])
    assert report._schema_problem(doc) is None


def _document(kind: str) -> dict:
    """A valid document of `kind` with one row of made-up values (for comparisons)."""
    row = {k: 1.0 for k in report.ROW_KEYS + report.KIND_KEYS[kind]} | {"key": "a b1"}
    return {"kind": kind, "env": {}, "rows": [row]}


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("kfjax: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def di2in_json(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "di2in.json"
    assert main(["bench", "di2in", "--set", *DI2IN, "--batch", "4", "--steps", "2", "--json", str(path),
                 "--no-progress"]) == 0
    return path


def test_method_row(di2in_json, n_devices):
    doc = json.loads(di2in_json.read_text())
    check_schema(doc, "method")
    (row,) = doc["rows"]
    assert row["key"] == "di2in b4" and row["method"] == "di2in" and row["item"] == "images"
    assert row["batch"] == 4 and row["steps"] == 2 and row["devices"] == n_devices
    assert row["overrides"] == [*DI2IN, "data.batch_size=4"]
    assert row["compute_dtype"] == "float32" and row["params"] > 0
    assert row["flops_per_step"] > 0 and row["peak_fraction"] is None  # CPU: no peak in the table
    assert doc["env"]["backend"] == "cpu" and doc["env"]["device_count"] == n_devices


def test_compare_prints_new_over_old(di2in_json, tmp_path, capsys):
    new = tmp_path / "new.json"
    capsys.readouterr()
    assert main(["bench", "di2in", "--set", *DI2IN, "--batch", "4", "--steps", "2", "--json", str(new),
                 "--compare", str(di2in_json), "--no-progress"]) == 0
    out = capsys.readouterr().out
    old_doc, new_doc = report.load(di2in_json), report.load(new)
    (ratio,) = report.compare(old_doc, new_doc)
    assert ratio["ratio"] == pytest.approx(new_doc["rows"][0]["median_s"] / old_doc["rows"][0]["median_s"])
    assert "| di2in | 4 | float32 |" in out and "new / old" in out
    assert "| di2in b4 | " in out and f"| {ratio['ratio']:.3f} |" in out
    assert report.compare(old_doc, {**new_doc, "rows": []}) == []
    with pytest.raises(InputError, match="cannot compare a method benchmark with a physics one"):
        report.compare(_document("physics"), new_doc)
    assert "no row" in report.compare_table([])


def test_dudonet_row(tmp_path):
    path = tmp_path / "dudonet.json"
    assert main(["bench", "dudonet", "--set", *DUDONET, "--batch", "4", "--steps", "2", "--json", str(path),
                 "--no-progress"]) == 0
    doc = json.loads(path.read_text())
    check_schema(doc, "method")
    assert doc["rows"][0]["key"] == "dudonet b4" and doc["rows"][0]["item"] == "images"


def test_physics_tiny(tmp_path, capsys):
    path = tmp_path / "physics.json"
    assert main(["bench", "physics", "--tiny", "--json", str(path), "--no-progress"]) == 0
    doc = json.loads(path.read_text())
    check_schema(doc, "physics")
    assert [r["op"] for r in doc["rows"]] == ["forward", "adjoint", "fbp", "ril", "drr"]
    assert {r["geometry"] for r in doc["rows"]} == {"adn_quarter", "16x16"}
    assert doc["rows"][0]["item"] == "projections" and doc["rows"][-1]["item"] == "DRRs"
    out = capsys.readouterr().out
    assert "| forward | adn_quarter | 2 |" in out and "DRRs" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["physics.json"]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"kind": "method", "env": {}, "rows": [')
    not_bench = tmp_path / "other.json"
    not_bench.write_text(json.dumps({"kind": "method", "rows": []}))
    method_doc = tmp_path / "method.json"
    method_doc.write_text(json.dumps(_document("method")))
    out = tmp_path / "out.json"
    cases = {
        "unknown method 'di2inn'": ["di2inn"],
        "unknown config key 'model.chanels'": ["di2in", "--set", "model.chanels=4"],
        "--steps must be a positive integer": ["di2in", "--steps", "0"],
        "--batch must be a positive integer": ["physics", "--batch", "-1"],
        "does not divide over": ["di2in", "--set", *DI2IN, "--batch", "3"],
        "has nothing to train": ["dip"],
        "not found": ["di2in", "--compare", str(tmp_path / "missing.json")],
        "is not valid JSON": ["di2in", "--compare", str(corrupt)],
        "needs the keys kind, env and rows": ["di2in", "--compare", str(not_bench)],
        "holds a method benchmark": ["physics", "--tiny", "--compare", str(method_doc)],
        "number of views after ':'": ["physics", "--geometries", "adn:x"],
        "unknown geometry 'nosuch'": ["physics", "--geometries", "nosuch"],
        "apply to `kfjax bench physics`": ["di2in", "--tiny"],
        "--set applies to a method": ["physics", "--set", "a=1"],
    }
    for expected, argv in cases.items():
        message = _error(capsys, ["bench", *argv, "--json", str(out)])
        assert expected in message, message
        assert not out.exists(), argv
    message = _error(capsys, ["bench", "physics", "--tiny", "--json", str(tmp_path / "no" / "out.json")])
    assert "does not exist" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.json", "method.json", "other.json"]


def test_save_leaves_nothing_half_written(tmp_path, monkeypatch):
    doc = {"kind": "physics", "env": {}, "rows": [{"median_s": 1.0}]}

    def broken(obj, f, **kwargs):
        f.write('{"kind": ')
        raise OSError("disk full")

    monkeypatch.setattr(report.json, "dump", broken)
    with pytest.raises(OSError):
        report.save(doc, tmp_path / "out.json")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    report.save(doc, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == doc and len(list(tmp_path.iterdir())) == 1


def test_helpers():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert peak_flops("NVIDIA H200", "float32") == 67e12
    assert peak_flops("NVIDIA A100-SXM4-40GB", "bfloat16") == 312e12
    assert peak_flops("NVIDIA H100 PCIe", "bfloat16") is None
    assert peak_flops("cpu", "float32") is None and peak_flops("NVIDIA H100", None) is None
    assert _flops({"flops": 3.0}) == 3.0 and _flops([{"flops": 1.0}, {"flops": 2.0}]) == 3.0
    assert _flops(None) is None and _flops([]) is None and _flops({"bytes accessed": 1.0}) is None
    spec = {"image": jax.ShapeDtypeStruct((2, 8, 8, 8, 1), jnp.float32), "id": jax.ShapeDtypeStruct((2,), jnp.int32)}
    assert item_name(spec) == "volumes"
    assert item_name({"x": jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)}) == "images"
    a, b = synthetic_batch(spec), synthetic_batch(spec)
    assert (a["image"] == b["image"]).all() and 0 <= a["image"].min() and a["image"].max() < 1
    assert (a["id"] == 0).all() and a["id"].dtype == jnp.int32


def _without_gpu_section(text: str) -> str:
    """A README without its "GPU (kfjax bench)" heading and section (as gpu.sh writes them)."""
    if "<!-- gpu:begin -->" not in text:
        return text.rstrip()
    head, rest = text.split("<!-- gpu:begin -->", 1)
    head = head.rstrip().removesuffix("## GPU (kfjax bench)").rstrip()
    return (head + rest.split("<!-- gpu:end -->", 1)[1]).rstrip()


@pytest.mark.slow
def test_gpu_sh_tiny_writes_the_section_into_a_readme_copy(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "benchmarks" / "README.md", readme)
    repo_readme = (REPO / "benchmarks" / "README.md").read_bytes()
    env = {**os.environ, "KFJAX_BENCH_SIZE": "tiny", "KFJAX_BENCH_METHODS": "di2in", "KFJAX_BENCH_README": str(readme),
           "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(tmp_path / "out")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "method-di2in-bfloat16.json", "method-di2in-float32.json", "physics.json"]
    text = readme.read_text()
    section = text.split("<!-- gpu:begin -->")[1].split("<!-- gpu:end -->")[0]
    assert "## GPU (kfjax bench)" in text and "KFJAX_BENCH_SIZE=tiny" in section and "**CPU run**" in section
    assert "| di2in | `data.size=16 model.channels=4,8` | 4 | float32 |" in section
    assert "| di2in | `data.size=16 model.channels=4,8` | 4 | bfloat16 |" in section
    assert "| drr | 16x16 |" in section and section.count("CPU run: not judged") == 2
    assert _without_gpu_section(text) == _without_gpu_section(repo_readme.decode())  # the rest is untouched
    assert (REPO / "benchmarks" / "README.md").read_bytes() == repo_readme
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "out"]
