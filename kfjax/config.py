"""Configs: frozen dataclasses, dotted overrides with type checks, and a JSON round trip.

A method's config is a tree of frozen dataclasses with one comment per field. Users change it with
`--set optim.lr=1e-4 data.batch_size=8` or a JSON file holding any subset of the tree; both are checked
against the field types, and an unknown key is an error listing the valid keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, Iterable

from kfjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser of one parameter group (Adam/AdamW with an optional schedule)."""

    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3  # peak learning rate
    b1: float = 0.9  # Adam beta1
    b2: float = 0.999  # Adam beta2
    weight_decay: float = 0.0  # adamw: decoupled decay; adam, sgd: L2 added to the gradient (PyTorch's)
    schedule: str = "constant"  # constant | cosine | step
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    decay_every: int = 0  # step schedule: multiply lr by decay_factor every this many steps
    decay_factor: float = 0.5  # step schedule factor
    grad_clip: float = 0.0  # clip the global gradient norm to this value (0: off)
    clip_scope: str = "group"  # group: one norm over the group's gradient | module: one per top-level submodule


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Length of the run, logging, evaluation and checkpointing."""

    steps: int = 1000  # total optimisation steps
    log_every: int = 20  # write metrics.jsonl / TensorBoard every this many steps
    eval_every: int = 0  # evaluate on the validation split every this many steps (0: only at the end)
    checkpoint_every: int = 200  # save a checkpoint every this many steps (and always at the end)
    keep_checkpoints: int = 3  # keep the last K checkpoints
    eval_batch_size: int = 0  # global eval batch (0: same as data.batch_size)
    compute_dtype: str = "float32"  # float32 | bfloat16 | float16: activations and convolutions (parameters stay float32)
    accumulate: int = 1  # micro-batches per step: the update of a batch this many times larger, in one jitted step
    ema_decay: float = 0.0  # parameter EMA decay (e.g. 0.999), used for evaluation and inference when > 0
    profile_steps: int = 10  # with `kfjax train --profile DIR`: steps traced after two warm-up steps


@dataclasses.dataclass(frozen=True)
class BaseDataConfig:
    """Data settings every method has; a method's `DataConfig` extends it."""

    batch_size: int = 8  # global batch size (split over all devices and processes)


REMAT_MODES = ("none", "blocks", "full")


@dataclasses.dataclass(frozen=True)
class BaseModelConfig:
    """Network settings the engine reads; a method's `ModelConfig` extends it (field `model`)."""

    remat: str = "none"  # none | blocks (recompute each conv block in the backward pass) | full (the whole network)

    def __post_init__(self):
        if self.remat not in REMAT_MODES:
            raise ConfigError(f"model.remat '{self.remat}' is not one of {', '.join(REMAT_MODES)}")


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Settings every method has; a method's config extends it and narrows `data` to its own DataConfig."""

    seed: int = 0  # seeds initialisation, data order and per-step keys
    data: BaseDataConfig = BaseDataConfig()
    optim: OptimConfig = OptimConfig()  # optimiser of every parameter group (before optim_groups)
    optim_groups: tuple[str, ...] = ()  # per-group overrides GROUP.FIELD=VALUE, e.g. discriminator.lr=1e-4
    train: TrainConfig = TrainConfig()


def to_dict(config: Any) -> dict[str, Any]:
    """Dataclass tree -> plain dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def save_json(config: Any, path: str | Path, **extra: Any) -> None:
    """Write `{**extra, "config": ...}` to `path` (atomically)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**extra, "config": to_dict(config)}, indent=2) + "\n")
    tmp.replace(path)


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a config JSON file; a missing or malformed file is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; pass the path of a JSON config file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file '{path}' is not valid JSON ({e}); fix or regenerate it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a JSON object of config fields")
    return data


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def valid_keys(config: Any, prefix: str = "") -> list[str]:
    """All dotted leaf keys of a config tree."""
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys += valid_keys(value, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown_key(key: str, config: Any) -> ConfigError:
    keys = valid_keys(config)
    close = difflib.get_close_matches(key, keys, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}; valid keys: {', '.join(keys)}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert `value` (from JSON or a command-line string) to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"config key '{key}' cannot be {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            text = value.strip().strip("()[]")
            value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list like 1,2,3, got {value!r}")
        item_type = args[0] if args else str
        return tuple(_coerce(v, item_type, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}' expects true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value))
        except ValueError:
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
        return str(value)
    raise ConfigError(f"config key '{key}' has an unsupported type {tp}")


def replace_path(config: Any, key: str, value: Any, _full: str | None = None, _root: Any = None) -> Any:
    """Return a copy of `config` with dotted `key` set to `value` (type-checked)."""
    full = _full or key
    root = _root or config
    head, _, rest = key.partition(".")
    types_ = _field_types(type(config))
    if head not in types_:
        raise _unknown_key(full, root)
    current = getattr(config, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise _unknown_key(full, root)
        new = replace_path(current, rest, value, full, root)
    elif dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{full}' is a section; set its fields, e.g. {valid_keys(current)[0]}")
        new = current
        for k, v in value.items():
            new = replace_path(new, k, v, f"{full}.{k}", root)
    else:
        new = _coerce(value, types_[head], full)
    return dataclasses.replace(config, **{head: new})


def apply_overrides(config: Any, overrides: Iterable[str]) -> Any:
    """Apply `key=value` strings, e.g. `["optim.lr=1e-4", "data.batch_size=8"]`."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not key=value; write e.g. optim.lr=1e-4")
        config = replace_path(config, key.strip(), value.strip())
    return config


def changed_keys(saved: dict[str, Any], config: Any) -> list[str]:
    """Dotted keys where `saved` (a `to_dict` of an earlier config) differs from `config`; a field the saved
    dict predates counts as its default, a field it has that `config` no longer has counts as changed."""
    try:
        saved = to_dict(apply_dict(type(config)(), dict(saved)))
    except ConfigError:  # a key the config no longer has: compare the dicts as they are
        pass
    return _dict_diff(saved, to_dict(config))


def _dict_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in _dict_diff(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def apply_dict(config: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """Apply a nested dict (from JSON) on top of `config`."""
    for key, value in values.items():
        config = replace_path(config, prefix + key, value)
    return config
