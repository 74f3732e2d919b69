"""Training engine: the method contract, state, mesh and shardings, jitted step factories, checkpoints, loop."""

from kfjax.train.checkpoint import Checkpointer
from kfjax.train.mesh import make_mesh, replicate, shard_batch, to_host
from kfjax.train.method import BaseConfig, BaseDataConfig, Inference, Method, PerCaseMethod, Variables
from kfjax.train.state import TrainState
from kfjax.train.step import make_eval_step, make_predict_step, make_train_step

__all__ = ["BaseConfig", "BaseDataConfig", "Checkpointer", "Inference", "Method", "PerCaseMethod", "TrainState",
           "Variables", "make_eval_step", "make_mesh", "make_predict_step", "make_train_step", "replicate",
           "shard_batch", "to_host"]
