"""Method registry: `@register` fills a dict from name to Method class; unknown names get close matches."""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, TypeVar

from kfjax.errors import ConfigError

T = TypeVar("T", bound=type)

_METHODS: dict[str, type] = {}

# Modules that register methods when imported (imported lazily, on the first lookup).
METHOD_MODULES = ("kfjax.methods.di2in", "kfjax.methods.dudonet", "kfjax.methods.cyclegan", "kfjax.methods.adn")


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


def get(name: str) -> type:
    """Method class registered under `name`."""
    _load_all()
    if name not in _METHODS:
        close = difflib.get_close_matches(name, _METHODS, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"unknown method '{name}'; {hint}`kfjax list` shows the {len(_METHODS)} methods")
    return _METHODS[name]
