"""Config overrides, type checks, JSON round trip and the registry."""

import dataclasses
import json

import pytest

from kfjax.config import apply_dict, apply_overrides, load_json, save_json, to_dict, valid_keys
from kfjax.errors import ConfigError
from kfjax.methods import registry
from kfjax.methods.di2in import DI2INConfig


def test_overrides_are_typed():
    cfg = apply_overrides(DI2INConfig(), ["optim.lr=1e-4", "data.batch_size=8", "model.channels=8,16,32",
                                          "data.noise=0", "optim.schedule=constant"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.data.batch_size == 8 and isinstance(cfg.data.batch_size, int)
    assert cfg.model.channels == (8, 16, 32)
    assert cfg.data.noise == 0.0
    assert dataclasses.is_dataclass(cfg) and cfg != DI2INConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3


@pytest.mark.parametrize("item, fragment", [
    ("optim.lrr=1", "did you mean optim.lr"),
    ("nothing=1", "valid keys: seed"),
    ("data.batch_size=eight", "expects an integer"),
    ("data.batch_size=2.5", "expects an integer"),
    ("optim.lr=fast", "expects a number"),
    ("optim.lr", "not key=value"),
    ("data=3", "is a section"),
    ("data.size.x=1", "unknown config key"),
])
def test_bad_overrides_name_the_problem(item, fragment):
    with pytest.raises(ConfigError, match=fragment):
        apply_overrides(DI2INConfig(), [item])


def test_json_round_trip(tmp_path):
    cfg = apply_overrides(DI2INConfig(), ["model.channels=4,8", "seed=7"])
    save_json(cfg, tmp_path / "c.json", method="di2in")
    data = load_json(tmp_path / "c.json")
    assert data["method"] == "di2in"
    assert apply_dict(DI2INConfig(), data["config"]) == cfg
    assert to_dict(cfg)["model"]["channels"] == [4, 8]
    assert "train.steps" in valid_keys(cfg)


def test_bad_json_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="JSON object"):
        load_json(tmp_path / "list.json")
    with pytest.raises(ConfigError, match="unknown config key 'optim.nope'"):
        apply_dict(DI2INConfig(), {"optim": {"nope": 1}})


def test_registry():
    assert "di2in" in registry.names()
    assert registry.get("di2in").Config is DI2INConfig
    with pytest.raises(ConfigError, match="did you mean di2in"):
        registry.get("di2n")
