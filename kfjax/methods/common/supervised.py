"""The supervised single-group method: one network ("model" group), one loss, optional BatchNorm statistics.

A subclass names its network and says how a batch feeds it and how its outputs are scored:

    class MyMethod(SupervisedMethod):
        def network(self) -> nn.Module: ...                          # built once, cached
        def network_inputs(self, batch) -> tuple: ...                # positional inputs of network.apply
        def loss(self, outputs, batch) -> (scalar, {name: scalar})   # the logs must hold no "loss" key

and gets `init_variables`, `train_step` (gradient of the loss, batch statistics updated when the network
has any) and `apply(variables, batch, train)` (in the step's compute dtype, rematerialised whole when
`model.remat=full`; the config's `model` section extends `kfjax.config.BaseModelConfig`). Used by DI2IN and DuDoNet.
"""

from __future__ import annotations

import abc
import functools
from typing import Any

import flax.linen as nn
import jax

from kfjax.train.method import Method, Variables
from kfjax.train.precision import apply_network
from kfjax.train.state import TrainState


class SupervisedMethod(Method, abc.ABC):
    """One parameter group "model" trained on the gradient of `loss`."""

    @abc.abstractmethod
    def network(self) -> nn.Module:
        """The Flax module (called once; the result is cached)."""

    @abc.abstractmethod
    def network_inputs(self, batch) -> tuple:
        """Positional inputs of the network for a batch (before the `train` flag)."""

    @abc.abstractmethod
    def loss(self, outputs: Any, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar loss, {name: scalar} terms to log) from the training-mode outputs."""

    @functools.cached_property
    def model(self) -> nn.Module:
        return self.network()

    def apply(self, variables, batch, train: bool = False, **kwargs):
        """Network outputs for a batch; `kwargs` go to `module.apply` (e.g. `mutable`)."""
        remat = self.config.model.remat == "full"
        return apply_network(self.model, variables, *self.network_inputs(batch), train=train, remat=remat, **kwargs)

    def init_variables(self, key: jax.Array, batch) -> Variables:
        variables = self.model.init(key, *self.network_inputs(batch), False)
        stats = {"model": variables["batch_stats"]} if "batch_stats" in variables else {}
        return Variables(params={"model": variables["params"]}, batch_stats=stats)

    def _objective(self, params, state: TrainState, batch):
        variables = {**state.variables("model"), "params": params}
        mutable = ["batch_stats"] if "model" in state.batch_stats else []
        outputs, updates = self.apply(variables, batch, True, mutable=mutable)
        loss, terms = self.loss(outputs, batch)
        return loss, (updates, {"loss": loss, **terms})

    def train_step(self, state: TrainState, batch, key: jax.Array):
        grads, (updates, logs) = jax.grad(self._objective, has_aux=True)(state.params["model"], state, batch)
        stats = {"model": updates["batch_stats"]} if "batch_stats" in updates else {}
        return state.apply_gradients({"model": grads}, batch_stats=stats), logs
