"""Checkpoints: keep the last K, skip a corrupt or partial newest one, stop on a non-finite loss."""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kfjax.config import BaseConfig, BaseDataConfig, OptimConfig, TrainConfig
from kfjax.data.pipeline import ArrayDataset
from kfjax.train.method import Method, Variables
from kfjax.train.checkpoint import Checkpointer
from kfjax.train.loop import TrainingError, train
from kfjax.train.mesh import make_mesh, replicate, to_host
from kfjax.train.state import TrainState


def _state(value: float, step: int) -> TrainState:
    params = {"w": jnp.full((3, 2), value), "b": jnp.zeros(2)}
    state = TrainState.create({"model": params}, {"model": optax.adam(1e-3)}, jax.random.key(0))
    return replicate(state.replace(step=jnp.asarray(step, jnp.int32)), make_mesh())


def test_keep_last_k_and_restore_latest(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2, asynchronous=False)
    for step in (1, 2, 3):
        assert ckpt.save(_state(float(step), step))
    ckpt.wait()
    assert ckpt.steps() == [2, 3]
    assert not ckpt.save(_state(9.0, 3)), "a step is never written twice"
    restored = ckpt.restore_latest(_state(0.0, 0))
    assert int(to_host(restored.step)) == 3
    np.testing.assert_array_equal(to_host(restored.params["model"]["w"]), 3.0)
    assert restored.params["model"]["w"].sharding.is_fully_replicated
    ckpt.close()


@pytest.mark.parametrize("damage", ["truncate", "delete-data"])
def test_corrupt_latest_falls_back_to_previous(tmp_path, damage):
    ckpt = Checkpointer(tmp_path, keep=3, asynchronous=False)
    ckpt.save(_state(1.0, 1))
    ckpt.save(_state(2.0, 2))
    ckpt.close()
    files = [p for p in (tmp_path / "2").rglob("*") if p.is_file() and not p.name.startswith("_CHECKPOINT")]
    assert files
    for p in files:
        if damage == "truncate":
            p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])
        else:
            p.unlink()
    warnings = []
    restored = Checkpointer(tmp_path, asynchronous=False).restore_latest(_state(0.0, 0), warn=warnings.append)
    assert int(to_host(restored.step)) == 1
    np.testing.assert_array_equal(to_host(restored.params["model"]["w"]), 1.0)
    assert len(warnings) == 1 and "checkpoint 2" in warnings[0] and "previous" in warnings[0]


def test_partial_checkpoint_is_ignored(tmp_path):
    ckpt = Checkpointer(tmp_path, asynchronous=False)
    ckpt.save(_state(1.0, 1))
    ckpt.close()
    shutil.copytree(tmp_path / "1", tmp_path / "5.orbax-checkpoint-tmp-123")  # an interrupted write
    restored = Checkpointer(tmp_path, asynchronous=False).restore_latest(_state(0.0, 0))
    assert int(to_host(restored.step)) == 1


@dataclasses.dataclass(frozen=True)
class _Config(BaseConfig):
    data: BaseDataConfig = BaseDataConfig(batch_size=4)
    optim: OptimConfig = OptimConfig(name="sgd", lr=0.1, b1=0.0)
    train: TrainConfig = TrainConfig(steps=10, checkpoint_every=2, log_every=1)


class _DivergingMethod(Method):
    """Linear regression whose loss turns NaN at step 5 (stands in for a diverging run)."""

    name = "diverging"
    Config = _Config

    def dataset(self, split):
        x = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
        return ArrayDataset(x=x, y=x.sum(1, keepdims=True))

    def batch_spec(self, batch_size):
        return {"x": jax.ShapeDtypeStruct((batch_size, 3), jnp.float32),
                "y": jax.ShapeDtypeStruct((batch_size, 1), jnp.float32)}

    def init_variables(self, key, batch):
        return Variables(params={"model": {"w": jnp.zeros((3, 1))}})

    def train_step(self, state, batch, key):
        def loss_fn(p):
            loss = jnp.mean((batch["x"] @ p["w"] - batch["y"]) ** 2)
            return jnp.where(state.step >= 5, jnp.nan, loss)

        loss, grads = jax.value_and_grad(loss_fn)(state.params["model"])
        return state.apply_gradients({"model": grads}), {"loss": loss}

    def eval_step(self, state, batch):
        return {"mse": jnp.mean((batch["x"] @ state.params["model"]["w"] - batch["y"]) ** 2, axis=1)}


def test_nonfinite_loss_stops_with_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match=r"loss became nan at step 6; the last good checkpoint \(step 4\)"):
        train(_DivergingMethod(_Config()), tmp_path, progress=False)
    assert Checkpointer(tmp_path / "checkpoints").steps() == [2, 4]
