"""The training loop: knows no method, only the `Method` interface.

    result = train(method, workdir)

creates or resumes the run in `workdir` (config.json, metrics.jsonl, checkpoints/, tb/), trains to
`config.train.steps`, checkpoints every `train.checkpoint_every` steps, at the end and on SIGTERM/SIGINT,
stops with a clear error on a non-finite loss (keeping the last good checkpoint) and evaluates on the
validation split at the end.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from kfjax.config import save_json, to_dict
from kfjax.data.pipeline import BatchLoader, EpochSampler, eval_batches
from kfjax.errors import ConfigError, KfjaxError
from kfjax.methods.base import Method
from kfjax.metrics import Mean, merge_metrics
from kfjax.train.checkpoint import Checkpointer
from kfjax.train.mesh import check_batch_size, make_mesh, process_slice, replicated, shard_batch, to_host
from kfjax.train.state import TrainState
from kfjax.train.step import make_eval_step, make_predict_step, make_train_step
from kfjax.train.writers import MetricWriter, Progress


class TrainingError(KfjaxError):
    """Training cannot go on (non-finite loss, ...)."""


@dataclasses.dataclass
class TrainResult:
    """How a run ended: status is "completed" or "interrupted" (by SIGTERM/SIGINT, after a checkpoint)."""

    state: TrainState
    status: str
    eval_metrics: dict[str, float]


def notice(message: str) -> None:
    """One line to stderr from process 0."""
    if jax.process_index() == 0:
        print(f"kfjax: {message}", file=sys.stderr, flush=True)


def _check_workdir_config(workdir: Path, method: Method) -> None:
    """Resuming with another method or other settings (except train.steps) would mix two runs."""
    path = workdir / "config.json"
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"'{path}' is damaged; delete it or use a new --workdir") from None
    if saved.get("method") != method.name:
        raise ConfigError(
            f"workdir '{workdir}' holds a '{saved.get('method')}' run, not '{method.name}'; use a new --workdir"
        )
    old, new = saved.get("config", {}), to_dict(method.config)
    old.get("train", {}).pop("steps", None)
    new["train"].pop("steps", None)
    if old != new:
        changed = sorted(_diff_keys(old, new))
        raise ConfigError(
            f"workdir '{workdir}' holds a run with other settings ({', '.join(changed)}); "
            "resume with the same settings (only train.steps may change) or use a new --workdir"
        )


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def init_train_state(method: Method, mesh, example: dict[str, np.ndarray]) -> TrainState:
    """Replicated fresh state built under jit from the seed and the example batch's shapes."""
    shapes = {k: (v.shape, v.dtype) for k, v in example.items()}

    def init(key):
        batch = {k: jnp.zeros(s, d) for k, (s, d) in shapes.items()}
        return method.init(key, batch)

    key = jax.random.key(method.config.seed)
    return jax.jit(init, out_shardings=replicated(mesh))(key)


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checkpoints and returns at the next step boundary."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(
    method: Method,
    workdir: str | Path,
    *,
    progress: bool = True,
    evaluate_at_end: bool = True,
) -> TrainResult:
    """Train `method` in `workdir`, resuming from its latest readable checkpoint."""
    cfg = method.config
    workdir = Path(workdir)
    mesh = make_mesh()
    global_batch = cfg.data.batch_size
    check_batch_size(global_batch, mesh)
    rows = process_slice(global_batch)
    total = cfg.train.steps
    train_data = method.dataset("train")
    sampler = EpochSampler(len(train_data), global_batch, cfg.seed)
    if jax.process_index() == 0:  # only a valid run touches the workdir
        _check_workdir_config(workdir, method)
        workdir.mkdir(parents=True, exist_ok=True)
        save_json(cfg, workdir / "config.json", method=method.name)
    state = init_train_state(method, mesh, train_data[sampler.indices(0)[rows]])
    checkpoints = Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints)
    restored = checkpoints.restore_latest(state, warn=notice)
    if restored is not None:
        state = restored
        notice(f"resuming from the checkpoint at step {int(to_host(state.step))} in {checkpoints.directory}")
    start = int(to_host(state.step))

    train_step = make_train_step(method.train_step, mesh)
    writer = MetricWriter(workdir, resume_step=start)
    bar = Progress(start, total, enabled=progress)
    loader = BatchLoader(train_data, sampler, start, total, rows=rows)
    sums: dict[str, float] = {}
    count = 0
    last_log = time.perf_counter()
    pending: tuple[int, Any] | None = None
    last_saved = start if restored is not None else None
    status = "completed"

    def settle() -> None:
        """Fetch the metrics of the last dispatched step, check them, log them."""
        nonlocal pending, count, last_log, sums
        if pending is None:
            return
        step, metrics = pending
        pending = None
        values = {k: float(v) for k, v in to_host(metrics).items()}
        loss = values.get("loss", 0.0)
        if not np.isfinite(loss):
            kept = f"the last good checkpoint (step {last_saved}) is kept" if last_saved else "no checkpoint was written"
            raise TrainingError(
                f"loss became {loss} at step {step}; {kept} in {checkpoints.directory}; "
                "lower optim.lr or check the input data for NaN/Inf"
            )
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        bar.update(1, loss=loss)
        if step % cfg.train.log_every == 0 or step == total:
            now = time.perf_counter()
            means = {k: v / count for k, v in sums.items()}
            means["steps_per_s"] = count / max(now - last_log, 1e-9)
            writer.write(step, means)
            sums, count, last_log = {}, 0, now

    def save() -> None:
        nonlocal last_saved
        settle()
        if checkpoints.save(state):
            last_saved = int(to_host(state.step))

    try:
        with _StopFlag() as stop:
            for step, batch in loader:
                state, metrics = train_step(state, shard_batch(batch, mesh))
                settle()
                pending = (step + 1, metrics)
                if (step + 1) % cfg.train.checkpoint_every == 0:
                    save()
                if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < total:
                    settle()
                    writer.write(step + 1, evaluate(method, state, mesh, "val"), split="val")
                if _should_stop(stop, step + 1, cfg.train.log_every):
                    status = "interrupted"
                    break
            settle()
            save()
            checkpoints.wait()
        if status == "interrupted":
            notice(f"stopped by signal at step {int(to_host(state.step))}; checkpoint saved; "
                   "run the same command to resume")
            return TrainResult(state, status, {})
        eval_metrics = {}
        if evaluate_at_end:
            eval_metrics = evaluate(method, state, mesh, "val")
            writer.write(int(to_host(state.step)), eval_metrics, split="val")
        return TrainResult(state, status, eval_metrics)
    finally:
        loader.close()
        bar.close()
        checkpoints.close()
        writer.close()


def _should_stop(stop: _StopFlag, step: int, every: int) -> bool:
    """Single process: the flag. Several processes: agree at log boundaries so all stop at one step."""
    if jax.process_count() == 1:
        return stop.signal is not None
    if step % every:
        return False
    flags = multihost_utils.process_allgather(np.int32(stop.signal is not None))
    return bool(np.any(flags))


def evaluate(method: Method, state: TrainState, mesh=None, split: str = "val") -> dict[str, float]:
    """Exact means over the whole split of the method's per-example metrics (jitted and host-side)."""
    mesh = mesh or make_mesh()
    cfg = method.config
    batch_size = cfg.train.eval_batch_size or cfg.data.batch_size
    check_batch_size(batch_size, mesh)
    rows = process_slice(batch_size)
    eval_step = make_eval_step(method.eval_step, mesh)
    host = type(method).host_metrics is not Method.host_metrics
    predict_step = make_predict_step(method.predict, mesh) if host else None
    totals: dict[str, Mean] = {}
    for batch in eval_batches(method.dataset(split), batch_size, rows):
        device_batch = shard_batch(batch, mesh)
        totals = merge_metrics(totals, to_host(eval_step(state, device_batch)))
        if host:
            outputs = multihost_utils.process_allgather(predict_step(state, device_batch), tiled=True)
            full = multihost_utils.process_allgather(batch, tiled=True)
            for name, values in method.host_metrics(full, outputs).items():
                values = np.asarray(values, np.float64)
                ok = (full["_valid"] > 0) & np.isfinite(values)
                totals = merge_metrics(totals, {name: Mean(np.sum(values, where=ok), np.sum(ok))})
    return {name: float(mean.compute()) for name, mean in totals.items()}


def restore_for_eval(method: Method, workdir: str | Path) -> TrainState:
    """Latest readable checkpoint of `workdir` as a replicated state (for eval/infer/demo)."""
    mesh = make_mesh()
    batch_size = method.config.train.eval_batch_size or method.config.data.batch_size
    if hasattr(method, "example_batch"):  # shapes without building a data set
        example = method.example_batch(batch_size)
    else:
        data = method.dataset("val")
        example = data[np.arange(min(batch_size, len(data)))]
    state = init_train_state(method, mesh, example)
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise ConfigError(f"no checkpoints in '{workdir}'; train first with `kfjax train {method.name} --workdir {workdir}`")
    restored = Checkpointer(directory, asynchronous=False).restore_latest(state, warn=notice)
    if restored is None:
        raise ConfigError(f"no readable checkpoint in '{directory}'; train again with `kfjax train {method.name}`")
    return restored
