"""Checkpoints through orbax's CheckpointManager: periodic, final and on SIGTERM/SIGINT; keep the last K.

Only the pytree part of a TrainState is written (step, params, optimizer states, batch statistics, key);
the optimizer transforms are rebuilt from the config. Restoring tries the newest checkpoint first and
falls back to older ones when a checkpoint is corrupt or incomplete, saying which one it skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import jax
import orbax.checkpoint as ocp

from kfjax.train.state import TrainState

log = logging.getLogger("kfjax")


class Checkpointer:
    """`directory/<step>/` checkpoints of a TrainState."""

    def __init__(self, directory: str | Path, keep: int = 3, asynchronous: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, state: TrainState, force: bool = True) -> bool:
        """Write `state` under its step (asynchronously); returns False if that step is already saved."""
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return False
        return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore_latest(
        self, target: TrainState, warn: Callable[[str], None] = log.warning
    ) -> TrainState | None:
        """Newest readable checkpoint restored into the structure and shardings of `target`, or None.

        A checkpoint that fails to restore (corrupt, partial) is reported through `warn` and skipped.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        for step in reversed(self.steps()):
            try:
                return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
            except Exception as e:  # orbax/tensorstore raise many kinds for damaged files
                reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                warn(f"checkpoint {step} in {self.directory} is unreadable ({reason}); trying the previous one")
        return None

    def wait(self) -> None:
        """Block until asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
