"""The method contract: per-group optimisers, per-case methods, restore without data, declared capabilities."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax.config import BaseConfig, BaseDataConfig, OptimConfig, TrainConfig, apply_overrides
from kfjax.data.pipeline import ArrayDataset
from kfjax.errors import ConfigError
from kfjax.methods import registry
from kfjax.train.loop import evaluate, restore_for_eval, train
from kfjax.train.method import Method, PerCaseMethod, Variables, optim_for_group, zeros_like_spec


@dataclasses.dataclass(frozen=True)
class _Config(BaseConfig):
    data: BaseDataConfig = BaseDataConfig(batch_size=4)
    optim: OptimConfig = OptimConfig(lr=0.1)
    train: TrainConfig = TrainConfig(steps=4, checkpoint_every=2, log_every=1)


class _TwoGroups(Method):
    """y = a x + b with `a` and `b` in two groups; its training set can be switched off."""

    name = "two-groups"
    Config = _Config
    groups = ("slope", "offset")
    data_available = True

    def dataset(self, split):
        if not self.data_available:
            raise AssertionError("restore and evaluation of a trained run must not build the training data")
        x = np.linspace(-1, 1, 16, dtype=np.float32)[:, None]
        return ArrayDataset(x=x, y=3 * x + 1)

    def batch_spec(self, batch_size):
        return {k: jax.ShapeDtypeStruct((batch_size, 1), jnp.float32) for k in ("x", "y")}

    def init_variables(self, key, batch):
        return Variables(params={"slope": jnp.zeros(()), "offset": jnp.zeros(())})

    def train_step(self, state, batch, key):
        def loss(p):
            return jnp.mean((p["slope"] * batch["x"] + p["offset"] - batch["y"]) ** 2)

        value, grads = jax.value_and_grad(loss)(state.params)
        return state.apply_gradients(grads), {"loss": value}

    def eval_step(self, state, batch):
        p = state.params
        return {"mse": jnp.mean((p["slope"] * batch["x"] + p["offset"] - batch["y"]) ** 2, axis=1)}


def test_each_group_gets_its_own_optimizer():
    config = apply_overrides(_Config(), ["optim_groups=offset.lr=0,offset.name=sgd"])
    assert optim_for_group(config, "slope", _TwoGroups.groups).lr == 0.1
    assert optim_for_group(config, "offset", _TwoGroups.groups) == OptimConfig(name="sgd", lr=0.0)
    method = _TwoGroups(config)
    state = method.init(jax.random.key(0), method.batch_spec(4))
    batch = method.dataset("train")[np.arange(4)]
    state, _ = method.train_step(state, batch, jax.random.key(1))
    assert float(state.params["slope"]) != 0.0 and float(state.params["offset"]) == 0.0  # lr 0 for "offset"


@pytest.mark.parametrize("entry,message", [("critic.lr=1", "names no parameter group"),
                                           ("slope.momentum=1", "unknown config key 'momentum'"),
                                           ("slope-lr", "not GROUP.FIELD=VALUE")])
def test_bad_group_overrides_fail_when_the_method_is_built(entry, message):
    with pytest.raises(ConfigError, match=message):
        _TwoGroups(apply_overrides(_Config(), [f"optim_groups={entry}"]))


def test_restore_and_evaluate_a_run_without_building_training_data(tmp_path):
    method = _TwoGroups(_Config())
    train(method, tmp_path, progress=False, evaluate_at_end=False)
    fresh = _TwoGroups(_Config())
    fresh.data_available = False
    state = restore_for_eval(fresh, tmp_path)
    assert int(state.step) == 4 and float(state.params["slope"]) != 0.0
    fresh.data_available = True
    assert evaluate(fresh, state)["mse"] < evaluate(fresh, None)["mse"]  # trained beats a fresh state


class _Mean(PerCaseMethod):
    """A per-case 'method': predicts each row's own mean (stands in for deep image prior)."""

    name = "per-case"
    Config = _Config

    def dataset(self, split):
        return ArrayDataset(x=np.arange(8, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32))

    def batch_spec(self, batch_size):
        return {}

    def eval_step(self, state, batch):
        return {"mean": jnp.mean(batch["x"], axis=1)}


def test_a_per_case_method_evaluates_but_does_not_train(tmp_path):
    method = _Mean(_Config())
    assert evaluate(method)["mean"] == pytest.approx(3.5)
    with pytest.raises(ConfigError, match="nothing to train"):
        train(method, tmp_path, progress=False)
    assert not any(tmp_path.iterdir()), "a refused run writes nothing"
    with pytest.raises(ConfigError, match="trains nothing"):
        _Mean(apply_overrides(_Config(), ["optim.lr=1"]))


def test_registered_methods_declare_what_they_are():
    for name in registry.names():
        method = registry.build(name)
        assert method.groups == () if not method.trainable else len(method.groups) >= 1
        spec = method.batch_spec(2)
        assert all(isinstance(s, jax.ShapeDtypeStruct) and s.shape[0] == 2 for s in spec.values())
        if method.trainable:  # the spec holds everything a train step reads (traced, not compiled)
            key = jax.random.key(0)
            state = jax.eval_shape(lambda: method.init(key, zeros_like_spec(spec)))
            _, logs = jax.eval_shape(method.train_step, state, spec, key)
            assert logs["loss"].shape == ()
        if method.inference is not None:
            assert hasattr(method.config, "infer"), f"{name} declares inference but has no infer config"
            assert type(method).infer is not Method.infer
    assert registry.get("dip").trainable is False
    assert registry.get("adn").inference.inputs == ("volume",)
    assert registry.get("di2in").host_metric_names == ("asd",)
