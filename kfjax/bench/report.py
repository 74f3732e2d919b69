"""Benchmark documents: build, write atomically, read back with checks, compare two runs, print tables.

    doc = document("physics", rows)            # {"kind", "env", "rows"} (schema in `kfjax.bench`)
    save(doc, "new.json");  old = load("old.json")
    print(env_line(doc), markdown(doc), compare_table(compare(old, doc)), sep="\n")
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from kfjax.bench.env import environment
from kfjax.errors import InputError

KINDS = ("method", "physics")
ROW_KEYS = ("key", "batch", "item", "steps", "compile_s", "median_s", "p90_s", "items_per_s", "flops_per_step",
            "flops_per_s", "xla_temp_bytes")
KIND_KEYS = {
    "method": ("method", "overrides", "compute_dtype", "params", "devices", "peak_fraction", "xla_argument_bytes",
               "xla_output_bytes", "device_peak_bytes"),
    "physics": ("op", "geometry", "shape", "dtype"),
}


def document(kind: str, rows: list[dict]) -> dict:
    """A benchmark document of `kind` ("method" or "physics") with this machine's environment."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {"kind": kind, "env": environment(), "rows": list(rows)}


def check_output(path: str | Path) -> Path:
    """`path` as a file to write: its folder must exist and it must not be a folder (checked before any work)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"--json {path} is a folder; give a file name such as {path / 'bench.json'}")
    if not path.parent.is_dir():
        raise InputError(f"the folder of --json {path} does not exist; create {path.parent} first")
    return path


def save(doc: dict, path: str | Path) -> None:
    """Write `doc` as JSON to `path` under a temporary name, then rename: nothing half-written remains."""
    path = check_output(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> dict:
    """A benchmark document from `path`, checked against the schema (InputError if missing or corrupt)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"benchmark file {path} not found; write one with `kfjax bench ... --json FILE`")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"benchmark file {path} is not valid JSON ({e}); write it again with --json") from None
    problem = _schema_problem(doc)
    if problem:
        raise InputError(f"benchmark file {path} is not a kfjax bench document: {problem}")
    return doc


def _schema_problem(doc) -> str | None:
    """What makes `doc` not a benchmark document, or None."""
    if not isinstance(doc, dict) or not {"kind", "env", "rows"} <= set(doc):
        return "it needs the keys kind, env and rows"
    if doc["kind"] not in KINDS:
        return f"kind is {doc['kind']!r}, not one of {', '.join(KINDS)}"
    if not isinstance(doc["env"], dict) or not isinstance(doc["rows"], list):
        return "env must be an object and rows a list"
    for i, row in enumerate(doc["rows"]):
        missing = [k for k in ROW_KEYS + KIND_KEYS[doc["kind"]] if not isinstance(row, dict) or k not in row]
        if missing:
            return f"row {i} lacks {', '.join(missing)}"
        if not isinstance(row["median_s"], (int, float)) or not row["median_s"] > 0:
            return f"row {i} has median_s {row['median_s']!r}, not a positive number"
    return None


def compare(old: dict, new: dict) -> list[dict]:
    """Rows of `new` whose key is also in `old`: {key, old_s, new_s, ratio} with ratio = new / old median time.

    A ratio below 1 means the new run is faster. Raises InputError when the two kinds differ.
    """
    if old["kind"] != new["kind"]:
        raise InputError(f"cannot compare a {new['kind']} benchmark with a {old['kind']} one")
    before = {row["key"]: row for row in old["rows"]}
    out = []
    for row in new["rows"]:
        if row["key"] in before:
            old_s, new_s = before[row["key"]]["median_s"], row["median_s"]
            out.append({"key": row["key"], "old_s": old_s, "new_s": new_s, "ratio": new_s / old_s})
    return out


def _number(value) -> str:
    """Four significant digits; '' for null."""
    if value is None:
        return ""
    if isinstance(value, int) or abs(value) >= 1e4:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(doc: dict) -> str:
    """The document's rows as a markdown table (times in seconds, memory in MB)."""
    mb = lambda b: None if b is None else b / 1e6  # noqa: E731
    tflops = lambda f: None if f is None else f / 1e12  # noqa: E731
    if doc["kind"] == "method":
        header = ["method", "batch", "dtype", "compile s", "median s", "p90 s", "items/s", "TFLOP/s", "of peak",
                  "XLA temp MB", "device peak MB"]
        rows = [[r["method"], r["batch"], r["compute_dtype"] or "", _number(r["compile_s"]), _number(r["median_s"]),
                 _number(r["p90_s"]), f"{_number(r['items_per_s'])} {r['item']}", _number(tflops(r["flops_per_s"])),
                 "" if r["peak_fraction"] is None else f"{r['peak_fraction']:.1%}", _number(mb(r["xla_temp_bytes"])),
                 _number(mb(r["device_peak_bytes"]))] for r in doc["rows"]]
    else:
        header = ["op", "geometry", "batch", "compile s", "median s", "p90 s", "items/s", "XLA temp MB"]
        rows = [[r["op"], r["geometry"], r["batch"], _number(r["compile_s"]), _number(r["median_s"]),
                 _number(r["p90_s"]), f"{_number(r['items_per_s'])} {r['item']}", _number(mb(r["xla_temp_bytes"]))]
                for r in doc["rows"]]
    return _table(header, rows)


def env_line(doc: dict) -> str:
    """One line naming the machine and the date of a document."""
    e = doc["env"]
    return (f"{e['date']}: {e['device_count']} x {e['device_kind']} ({e['backend']}), {e['cpu']}, {e['cores']} cores, "
            f"jax {e['jax']}")


def compare_table(ratios: list[dict]) -> str:
    """`compare`'s rows as a markdown table, or a line saying no row matched."""
    if not ratios:
        return "no row of the compared file has a key of this run"
    return _table(["key", "old median s", "new median s", "new / old"],
                  [[r["key"], _number(r["old_s"]), _number(r["new_s"]), f"{r['ratio']:.3f}"] for r in ratios])
