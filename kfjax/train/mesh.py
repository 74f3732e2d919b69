"""The device mesh and the placement of batches and state on it.

kfjax trains data-parallel over a 1-D mesh with axis "data" spanning every device of every process.
A global batch is split along its first axis (`P("data")`); the train state is replicated (`P()`).
In a multi-process run each process loads only its own slice of the global batch
(`process_slice`), and `shard_batch` assembles the global array from those slices.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from kfjax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """1-D mesh named "data" over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis over the mesh."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over devices and processes."""
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ConfigError(
            f"batch size {global_batch_size} does not divide over {devices} devices; "
            f"set data.batch_size to a multiple of {devices}"
        )


def process_slice(global_batch_size: int) -> slice:
    """Rows of the global batch this process loads (contiguous, like the device order of the mesh)."""
    per_process = global_batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def shard_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host arrays holding this process's rows -> global arrays sharded `P("data")`."""
    sharding = data_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Host or device pytree -> the same values replicated on every device of the mesh.

    Every process must pass the same values (true for a state built from the same seed).
    """
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
    """Replicated (or fully addressable) device pytree -> numpy, without cross-process transfers."""

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.sharding.is_fully_replicated:
                raise ValueError("to_host needs a replicated array in a multi-process run")
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree.map(get, tree)
