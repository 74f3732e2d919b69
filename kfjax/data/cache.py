"""The cache of derived datasets: deterministic arrays computed from the real sources, with a manifest.

Each derived set (:class:`DerivedSet`) is built by a function of its sources and parameters only. The
result is cached in ``$KFJAX_DATA/derived/<name>/<key>.npz`` next to ``<key>.json``, a manifest holding
the parameters, the sha256 of every input file (from the source registry, which
:func:`kfjax.data.sources.fetch` verifies), the builder version and the sha256 of the ``.npz``. A set is
rebuilt when any of these differ or the cached file is missing or corrupt. Files are written to a
temporary name and renamed; the manifest is renamed last, so a killed build leaves nothing that would be
read as valid.

The modules that define sets (:mod:`kfjax.data.ct`, :mod:`kfjax.data.mr`, :mod:`kfjax.data.mar`) register
them here at import; :mod:`kfjax.data.derived` imports them all and is the public entry point.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kfjax.data import sources
from kfjax.errors import DataError, InputError

__all__ = ["DerivedSet", "DERIVED", "register", "get_derived", "build", "derived_dir", "cached_builds"]


@dataclass(frozen=True)
class DerivedSet:
    """One derived dataset.

    Attributes:
        name: name used by ``kfjax data`` and :func:`build`.
        sources: names of the sources it is computed from.
        description: one line: what it is, shapes and units.
        defaults: parameter name -> default value (JSON types); the only parameters accepted.
        builder: ``builder(**params) -> (arrays, meta)``, arrays a dict of numpy arrays, meta JSON-able.
        version: bumped when the builder's output changes; part of the cache key.
        compress: store the ``.npz`` compressed (label maps) or not (float images, fast to load).
    """

    name: str
    sources: tuple[str, ...]
    description: str
    defaults: dict[str, Any] = field(hash=False)
    builder: Callable[..., tuple[dict[str, np.ndarray], dict]] = field(hash=False)
    version: int = 1
    compress: bool = False


DERIVED: dict[str, DerivedSet] = {}


def register(ds: DerivedSet) -> DerivedSet:
    """Add ``ds`` to :data:`DERIVED` (modules defining sets call this at import)."""
    DERIVED[ds.name] = ds
    return ds


def get_derived(name: str) -> DerivedSet:
    """The registered set ``name``; DataError with close matches if there is none."""
    if name in DERIVED:
        return DERIVED[name]
    close = difflib.get_close_matches(name, list(DERIVED) + list(sources.SOURCES), n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise DataError(f"unknown derived dataset '{name}'; {hint}derived sets: {', '.join(DERIVED)}")


def derived_dir() -> Path:
    """Folder of the derived caches: ``$KFJAX_DATA/derived``."""
    return sources.data_dir() / "derived"


def _input_hashes(names: tuple[str, ...]) -> dict[str, str]:
    """``"source/file" -> sha256`` of every input file, from the source registry."""
    return {f"{n}/{Path(p).name}": sha for n in names for p, sha in sources.get_source(n).files.items()}


def _resolve(ds: DerivedSet, params: dict[str, Any]) -> dict[str, Any]:
    """Defaults updated by ``params``; InputError naming the valid keys for an unknown one."""
    unknown = sorted(set(params) - set(ds.defaults))
    if unknown:
        raise InputError(f"'{ds.name}' has no parameter {', '.join(unknown)}; valid: {', '.join(ds.defaults)}")
    out = dict(ds.defaults)
    for k, v in params.items():
        default = ds.defaults[k]
        try:
            if isinstance(default, (list, tuple)):
                v = [float(x) for x in v]
            elif isinstance(default, bool):
                if not isinstance(v, (bool, int, np.bool_)):
                    raise ValueError(v)
                v = bool(v)
            elif isinstance(default, (int, float)):
                if isinstance(default, int) and float(v) != int(float(v)):
                    raise ValueError(v)
                v = type(default)(float(v))
        except (TypeError, ValueError):
            raise InputError(f"'{ds.name}' parameter {k}={v!r} is not like its default {default!r}") from None
        out[k] = v
    return out


def _read_cached(data: Path, manifest: Path, expect: dict) -> tuple[dict, dict] | None:
    """The cached (arrays, meta) if manifest and file match ``expect``, else None (and stale files removed)."""
    try:
        info = json.loads(manifest.read_text())
        if any(info.get(k) != v for k, v in expect.items()) or sources.sha256_file(data) != info["sha256"]:
            raise ValueError("stale or corrupt")
        with np.load(data, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return arrays, info["meta"]
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        data.unlink(missing_ok=True)
        manifest.unlink(missing_ok=True)
        return None


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary name in the same folder, then rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build(name: str, **params) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and meta of derived set ``name`` with ``params``, from the cache or built and cached.

    Raises:
        DataError: unknown set, data folder not writable, a source cannot be fetched. InputError: bad parameter.
    """
    ds = get_derived(name)
    params = _resolve(ds, params)
    expect = {"name": ds.name, "version": ds.version, "params": params, "inputs": _input_hashes(ds.sources)}
    key = hashlib.sha256(json.dumps(expect, sort_keys=True).encode()).hexdigest()[:16]
    sources._writable_root()
    folder = derived_dir() / ds.name
    folder.mkdir(parents=True, exist_ok=True)
    data, manifest = folder / f"{key}.npz", folder / f"{key}.json"
    if data.is_file() and manifest.is_file():
        cached = _read_cached(data, manifest, expect)
        if cached is not None:
            return cached
    arrays, meta = ds.builder(**params)
    save = np.savez_compressed if ds.compress else np.savez

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: savez would add ".npz" to a temporary path
            save(f, **arrays)

    _write_atomic(data, write)
    info = dict(expect, sha256=sources.sha256_file(data), meta=meta)
    _write_atomic(manifest, lambda tmp: tmp.write_text(json.dumps(info, indent=1)))
    return arrays, meta


def cached_builds(name: str) -> list[dict]:
    """Manifests of the cached builds of ``name`` (parameters and meta), newest first."""
    folder = derived_dir() / get_derived(name).name
    found = []
    for m in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            found.append(json.loads(m.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return found
