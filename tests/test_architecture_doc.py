"""The worked example of docs/architecture.md runs as written: it registers, trains and evaluates."""

import re
from pathlib import Path

import jax
import numpy as np
import pytest

from kfjax.methods import registry
from kfjax.train.loop import evaluate, init_train_state
from kfjax.train.mesh import make_mesh, shard_batch, to_host
from kfjax.train.step import make_train_step

DOC = Path(__file__).parents[1] / "docs" / "architecture.md"


@pytest.fixture
def example(monkeypatch):
    """The doc's one-file method, executed as a module, registered in a copy of the registry."""
    registry.names()  # load every method module first, so the copy (dropped afterwards) holds them all
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    code = re.search(r"```python\n# kfjax/methods/denoise.py\n(.*?)```", DOC.read_text(), re.S).group(1)
    namespace: dict = {"__name__": "denoise_example"}
    exec(compile(code, str(DOC), "exec"), namespace)
    return registry.build("denoise", overrides=["data.size=32", "data.batch_size=4", "train.steps=4"])


def test_the_documented_method_trains_and_evaluates(example):
    mesh = make_mesh(jax.devices()[:1])
    batch = example.dataset("train")[np.arange(4)]
    state = init_train_state(example, mesh, example.batch_spec(4))
    step = make_train_step(example.train_step, mesh)
    losses = []
    for _ in range(4):
        state, metrics = step(state, shard_batch(batch, mesh))
        losses.append(float(to_host(metrics)["loss"]))
    assert losses[-1] < losses[0]
    scores = evaluate(example, state, mesh, "val")
    assert set(scores) == {"psnr"} and np.isfinite(scores["psnr"])
