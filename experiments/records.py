"""Run records of the experiments: every number an experiment README shows comes from one of these.

A run record is a JSON file (`record.json`) that a run saves in its own folder, next to its checkpoints:

    method, variant, seed      what ran (the registered method name, the experiment's variant label)
    settings                   the full resolved config (`kfjax.config.to_dict(method.config)`) or, for a
                               computation without a method (a baseline), every setting it used
    started, ended, wall_s     UTC timestamps (ISO 8601) and wall seconds of the whole run; cpu_s: process
                               CPU seconds (all threads); timings: named parts (train_s, eval_s, ...)
    environment                machine (CPU model, cores, platform, load average at the start), device
                               (jax backend, device kind, count), versions (python, jax, jaxlib, flax,
                               numpy, ...), git (short commit, dirty flag: uncommitted or untracked files)
    metrics                    the resulting numbers, `{name: float}` (NaN/inf saved as null)
    data                       sizes of what was used (n_test, n_train, ...), optional

Experiment scripts build their tables and footers from these records only (`distinct`, `describe`,
`environment_summary`, `cell`, `paired`); they import this module with

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import records

Nothing here imports kfjax; jax is imported only to describe the device.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

RECORD = "record.json"
SCHEMA = 1
REPO = Path(__file__).resolve().parent.parent
VERSION_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "kfjax")

__all__ = [
    "RECORD", "Clock", "cell", "cpu_model", "describe", "device", "diff_keys", "distinct", "environment",
    "environment_summary", "exists", "find", "get", "git_state", "load", "machine", "make", "mean_std",
    "paired", "paired_cell", "save", "versions", "write_section",
]


# ---------------------------------------------------------------- the environment of a run
def cpu_model() -> str:
    """The CPU model: /proc/cpuinfo's "model name", else platform.processor(), else "unknown CPU"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, Any]:
    """CPU model, core count, platform, architecture, Python version and the load average at this moment."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "arch": platform.machine(), "python": platform.python_version(), "load_avg": load}


def device() -> dict[str, Any]:
    """The jax device the run used: backend ("cpu", "gpu", "tpu"), device kind and device count."""
    import jax

    return {"backend": jax.default_backend(), "kind": jax.devices()[0].device_kind, "count": jax.device_count()}


def versions(packages: Sequence[str] = VERSION_PACKAGES) -> dict[str, str | None]:
    """Installed versions of `packages` (None where one is not installed)."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(cwd: str | Path = REPO) -> dict[str, Any] | None:
    """`{"commit": short hash, "dirty": bool}` of the repository at `cwd`; None outside git or without git.

    dirty: tracked files differ from the commit or untracked (not ignored) files exist, so the commit alone
    does not say what ran.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=cwd, check=False, timeout=30)
        if commit.returncode != 0 or not commit.stdout.strip():
            return None
        status = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=cwd,
                                check=False, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def environment(with_device: bool = True) -> dict[str, Any]:
    """machine, device (when `with_device`), versions and git state of this process."""
    out = {"machine": machine(), "versions": versions(), "git": git_state()}
    if with_device:
        out["device"] = device()
    return out


# ---------------------------------------------------------------- making, saving and reading records
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Clock:
    """Start of a run: UTC timestamp, wall and process CPU clocks; `stop()` -> (ended, wall_s, cpu_s)."""

    def __init__(self):
        self.started = _now()
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def stop(self) -> tuple[str, float, float]:
        return _now(), time.perf_counter() - self._wall, time.process_time() - self._cpu


def _json_safe(value: Any) -> Any:
    """Numbers as plain floats/ints (non-finite floats as None), containers recursively, the rest as is."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_safe(dataclasses.asdict(value))
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) or (isinstance(value, np.ndarray) and value.ndim == 0):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    return value


def make(*, method: str, variant: str, seed: int | None, settings: Mapping[str, Any],
         metrics: Mapping[str, Any], clock: Clock, timings: Mapping[str, float] | None = None,
         data: Mapping[str, Any] | None = None, with_device: bool = True, **extra: Any) -> dict[str, Any]:
    """A complete record; `clock` was made when the run started (ended/wall/cpu are taken now)."""
    ended, wall_s, cpu_s = clock.stop()
    record = {
        "schema": SCHEMA, "method": method, "variant": variant, "seed": seed, "settings": settings,
        "started": clock.started, "ended": ended, "wall_s": wall_s, "cpu_s": cpu_s,
        "timings": dict(timings or {}), "environment": environment(with_device), "metrics": dict(metrics),
        "data": dict(data or {}), **extra,
    }
    return _json_safe(record)


def save(record: Mapping[str, Any], folder: str | Path) -> Path:
    """Write `record` to `folder/record.json` (atomically: a killed write leaves no half record)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RECORD
    tmp = path.with_name(RECORD + ".tmp")
    tmp.write_text(json.dumps(_json_safe({k: v for k, v in record.items() if k != "_folder"}), indent=1) + "\n")
    tmp.replace(path)
    return path


def exists(folder: str | Path) -> bool:
    return (Path(folder) / RECORD).is_file()


def load(folder_or_file: str | Path) -> dict[str, Any]:
    """The record in a folder (or a record file); `_folder` (not saved) says where it was read."""
    path = Path(folder_or_file)
    path = path / RECORD if path.is_dir() else path
    record = json.loads(path.read_text())
    record["_folder"] = str(path.parent)
    return record


def find(root: str | Path, pattern: str = f"**/{RECORD}") -> list[dict[str, Any]]:
    """Every record under `root` whose path matches `pattern`, sorted by path."""
    root = Path(root)
    return [load(p) for p in sorted(root.glob(pattern))] if root.is_dir() else []


# ---------------------------------------------------------------- reading values out of records
def get(record: Mapping[str, Any], path: str, default: Any = None) -> Any:
    """`record["a"]["b"]["c"]` for path "a.b.c", `default` where a key is missing."""
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return default
        value = value[key]
    return value


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two nested dicts (e.g. two records' settings) differ."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return [k for key in sorted(set(a) | set(b)) for k in diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def changed_settings(saved: Mapping[str, Any], config: Any) -> list[str]:
    """Dotted settings where a record's saved settings differ from `config` (a method's config); a field added
    to the config after the record was made counts as its default (`kfjax.config.changed_keys`)."""
    from kfjax.config import changed_keys

    return changed_keys(dict(saved), config)


def finished_run(folder: str | Path, config: Any) -> dict[str, Any] | None:
    """The record of the finished run in `folder`, or None if there is none; stops the script when that run
    was made with other settings than `config` (a frozen config dataclass)."""
    if not exists(folder):
        return None
    record = load(folder)
    changed = changed_settings(record["settings"], config)
    if changed:
        raise SystemExit(f"{folder} holds a run with other settings ({', '.join(changed)}); move it away")
    return record


def train_to_end(method, workdir: str | Path, label: str) -> tuple[Any, float]:
    """(final TrainState, wall seconds incl. compilation) of training `method` in `workdir`, resuming its
    checkpoint if there is one; stops the script when the training was interrupted."""
    from kfjax.train.loop import train

    start = time.perf_counter()
    result = train(method, workdir, progress=False, evaluate_at_end=False)
    if result.status != "completed":
        raise SystemExit(f"{label} was interrupted; run the same command to resume")
    return result.state, time.perf_counter() - start


def last_train_log(workdir: str | Path, keys: Sequence[str]) -> dict[str, float]:
    """The `keys` of the last training entry of `workdir/metrics.jsonl` (empty if there is none)."""
    path = Path(workdir) / "metrics.jsonl"
    last = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        entry = json.loads(line)
        if entry.get("split") == "train":
            last = entry
    return {k: float(last[k]) for k in keys if k in last}


def with_train_log(record: dict, keys: Sequence[str]) -> dict:
    """`record` with `train_log` (:func:`last_train_log` of its run), added to its file when it lacks one and the
    run's folder still holds the log."""
    if "train_log" not in record:
        log = last_train_log(Path(record["_folder"]) / "work", keys)
        if log:
            record = {**record, "train_log": log}
            save(record, record["_folder"])
    return record


def distinct(records: Iterable[Mapping[str, Any]], path: str | Any) -> list[Any]:
    """The distinct values of `path` (a dotted path, or a function of a record) over `records`, in the
    order first seen; lists/dicts compare by value."""
    seen: dict[str, Any] = {}
    for r in records:
        value = path(r) if callable(path) else get(r, path)
        seen.setdefault(json.dumps(value, sort_keys=True, default=str), value)
    return list(seen.values())


def describe(records: Sequence[Mapping[str, Any]], path: str | Any, fmt=str, missing: str = "not recorded") -> str:
    """One value of `path` as text, or every distinct value and "(differs between runs)" when records disagree."""
    values = distinct(records, path)
    text = [missing if v is None else fmt(v) for v in values]
    if not text:
        return missing
    return text[0] if len(text) == 1 else " / ".join(text) + " (differs between runs)"


def _date(stamp: str | None) -> str | None:
    return stamp[:10] if stamp else None


def environment_summary(records: Sequence[Mapping[str, Any]]) -> str:
    """One sentence on when, where and with what the records were made, from the records alone.

    Dates are the runs' UTC start dates; every field lists all distinct values when the records disagree.
    """
    if not records:
        return "No run records."
    dates = sorted(d for d in (_date(r.get("started")) for r in records) if d)
    when = "dates not recorded" if not dates else dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    cpu = describe(records, lambda r: None if get(r, "environment.machine") is None else
                   f"{get(r, 'environment.machine.cpu')}, {get(r, 'environment.machine.cores')} cores, "
                   f"{get(r, 'environment.machine.platform')}")
    dev = describe(records, lambda r: None if get(r, "environment.device") is None else
                   f"{get(r, 'environment.device.count')} {get(r, 'environment.device.backend')} device(s) "
                   f"({get(r, 'environment.device.kind')})")
    ver = describe(records, lambda r: None if get(r, "environment.versions") is None else
                   ", ".join(f"{k} {get(r, f'environment.versions.{k}')}" for k in ("jax", "jaxlib", "flax")))
    git = describe(records, lambda r: None if get(r, "environment.git") is None else
                   get(r, "environment.git.commit") + (" with uncommitted changes" if get(r, "environment.git.dirty")
                                                       else ""))
    loads = [get(r, "environment.machine.load_avg") for r in records]
    loads = [x[0] for x in loads if x]
    load = ""
    if loads:
        low, high = min(loads), max(loads)
        load = f"; 1-min load average at the start of the run(s) {low:.1f}" + (f"–{high:.1f}" if high > low else "")
    return (f"{len(records)} run record(s), started {when} (UTC), on {cpu}; device: {dev}; {ver}; "
            f"git commit {git}{load}.")


# ---------------------------------------------------------------- statistics over seeds
def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (ddof 1; NaN for one value), n); NaN/None values are left out."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if x.size == 0:
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan, int(x.size)


def cell(values: Sequence[float], digits: int = 2, sign: bool = False) -> str:
    """"mean ± std" (sample std over the values), the value alone for one, "" for none."""
    mean, std, n = mean_std(values)
    if n == 0:
        return ""
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f.format(mean) if n == 1 else f"{f.format(mean)} ± {std:.{digits}f}"


@dataclasses.dataclass(frozen=True)
class Paired:
    """A paired comparison over seeds: per-seed differences a - b, their mean and sample std, the paired
    t-test (scipy.stats.ttest_rel, two-sided; NaN below 2 seeds)."""

    seeds: tuple[Any, ...]
    differences: tuple[float, ...]
    mean: float
    std: float
    n: int
    t: float
    p: float


def paired(a: Mapping[Any, float], b: Mapping[Any, float]) -> Paired:
    """`a` and `b` map seed -> value; only seeds present (and finite) in both are paired."""
    seeds = tuple(sorted(s for s in set(a) & set(b)
                         if a[s] is not None and b[s] is not None and np.isfinite(a[s]) and np.isfinite(b[s])))
    x = np.asarray([a[s] for s in seeds], np.float64)
    y = np.asarray([b[s] for s in seeds], np.float64)
    d = x - y
    mean, std, n = mean_std(d.tolist())
    t = p = math.nan
    if n >= 2 and std > 0:  # (identical differences: no variance, the test is undefined: NaN)
        from scipy import stats

        result = stats.ttest_rel(x, y)
        t, p = float(result.statistic), float(result.pvalue)
    return Paired(seeds, tuple(d.tolist()), mean, std, n, t, p)


def paired_cell(result: Paired, digits: int = 2, unit: str = "") -> str:
    """"+0.63 ± 0.46 dB (n = 3, p = 0.12)"; one seed: the difference and "no test"; none: "no common seeds"."""
    unit = f" {unit}" if unit else ""
    if result.n == 0:
        return "no common seeds"
    if result.n == 1:
        return f"{result.mean:+.{digits}f}{unit} (n = 1, no test)"
    p = "p = n/a (no spread)" if math.isnan(result.p) else f"p = {result.p:.2g}" if result.p >= 0.001 else "p < 0.001"
    return f"{result.mean:+.{digits}f} ± {result.std:.{digits}f}{unit} (n = {result.n}, {p})"


# ---------------------------------------------------------------- README sections
def write_section(readme: str | Path, name: str, text: str) -> None:
    """Replace what lies between `<!-- name:begin -->` and `<!-- name:end -->` in `readme` by `text`."""
    readme = Path(readme)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = readme.read_text()
    if content.count(begin) != 1 or content.count(end) != 1 or content.index(begin) > content.index(end):
        raise SystemExit(f"{readme} needs exactly one '{begin}' ... '{end}' pair to write the {name} section")
    head, rest = content.split(begin, 1)
    readme.write_text(head + begin + "\n" + text.rstrip("\n") + "\n" + end + rest.split(end, 1)[1])
