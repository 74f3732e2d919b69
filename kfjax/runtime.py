"""JAX process set-up: the persistent compilation cache and multi-process initialisation.

    setup_jax()                  # before the first jit: compiled programs are cached on disk
    setup_jax(distributed=True)  # also jax.distributed.initialize() (multi-process runs)

The cache lives in ``$KFJAX_CACHE/jax-compile`` (default ``~/.cache/kfjax/jax-compile``). Scripts and
notebooks call these like the ``kfjax`` command does; nothing here imports the rest of kfjax.
"""

from __future__ import annotations

import os
from pathlib import Path

from kfjax.errors import ConfigError

__all__ = ["cache_dir", "init_distributed", "setup_jax"]


def cache_dir() -> Path:
    """Folder of the persistent compilation cache: ``$KFJAX_CACHE`` (default ``~/.cache/kfjax``) / jax-compile."""
    return Path(os.environ.get("KFJAX_CACHE", Path.home() / ".cache" / "kfjax")) / "jax-compile"


def setup_jax(distributed: bool = False) -> None:
    """Persistent compilation cache; multi-process initialisation (:func:`init_distributed`) when asked."""
    import jax

    cache = cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except OSError:
        pass  # a read-only home only costs compile time
    if distributed:
        init_distributed()


def init_distributed() -> None:
    """`jax.distributed.initialize()` with the coordinator from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID when set, else from the cluster's own environment (SLURM, Open MPI, Cloud TPU, ...).

    Raises:
        ConfigError: the processes could not connect (one line naming the variables to set).
    """
    import jax

    # CPU processes need gloo for cross-process collectives; accelerators ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    for var, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if var in os.environ:
            try:
                kwargs[key] = int(os.environ[var])
            except ValueError:
                raise ConfigError(f"{var}={os.environ[var]!r} is not an integer; set it to a whole number") from None
    try:
        jax.distributed.initialize(coordinator_address=os.environ.get("JAX_COORDINATOR_ADDRESS"), **kwargs)
    except (ValueError, RuntimeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"the distributed run could not start ({first}); set JAX_COORDINATOR_ADDRESS=host:port, "
            "JAX_NUM_PROCESSES and JAX_PROCESS_ID, or run under a supported cluster manager"
        ) from None
