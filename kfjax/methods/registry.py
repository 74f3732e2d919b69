"""Method registry: `@register` fills a dict from name to Method class; `build` makes one from a config.

    method = build("dudonet", overrides=["data.batch_size=4"])
    method = from_workdir("dudonet", "runs/dudonet")      # the config a run saved
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Callable, TypeVar

from kfjax.config import apply_dict, apply_overrides, load_json
from kfjax.errors import ConfigError, InputError
from kfjax.train.method import Method

T = TypeVar("T", bound=type)

_METHODS: dict[str, type[Method]] = {}

# Modules that register methods when imported (imported lazily, on the first lookup).
METHOD_MODULES = ("kfjax.methods.di2in", "kfjax.methods.dudonet", "kfjax.methods.cyclegan", "kfjax.methods.adn",
                  "kfjax.methods.dip", "kfjax.methods.lsdn", "kfjax.methods.pix2pix", "kfjax.methods.self_inverse",
                  "kfjax.methods.self_inverse_unpaired", "kfjax.methods.landmark_i2i", "kfjax.methods.sac",
                  "kfjax.methods.dqn_landmark", "kfjax.methods.mtl_view_landmark", "kfjax.methods.u2net",
                  "kfjax.methods.di2in_an", "kfjax.methods.xray_decomposition",
                  "kfjax.methods.ice_contouring", "kfjax.methods.point2",
                  "kfjax.methods.pose_regression")


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a Method available as `kfjax train NAME`."""

    def add(cls: T) -> T:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method '{name}' is registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return add


def _load_all() -> None:
    for module in METHOD_MODULES:
        importlib.import_module(module)


def names() -> list[str]:
    """Registered method names, sorted."""
    _load_all()
    return sorted(_METHODS)


def get(name: str) -> type[Method]:
    """Method class registered under `name`."""
    _load_all()
    if name not in _METHODS:
        close = difflib.get_close_matches(name, _METHODS, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"unknown method '{name}'; {hint}`kfjax list` shows the {len(_METHODS)} methods")
    return _METHODS[name]


def build(name: str, config_file: str | Path | None = None, overrides: list[str] | None = None) -> Method:
    """Method instance from its name, an optional JSON config file and `key=value` overrides."""
    cls = get(name)
    config = cls.Config()
    if config_file:
        data = load_json(config_file)
        if "config" in data and "method" in data:
            if data["method"] != name:
                raise ConfigError(f"config file '{config_file}' is for method '{data['method']}', not '{name}'")
            data = data["config"]
        config = apply_dict(config, data)
    config = apply_overrides(config, overrides or [])
    return cls(config)


def from_workdir(name: str, workdir: str | Path, overrides: list[str] | None = None) -> Method:
    """The method a `kfjax train` run folder holds (its config.json), with optional overrides on top."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise InputError(f"'{workdir}' has no config.json; point --workdir at the folder `kfjax train` wrote")
    return build(name, path, overrides)
