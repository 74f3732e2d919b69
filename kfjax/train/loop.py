"""The training loop: knows no method, only the `Method` interface.

    result = train(method, workdir)

creates or resumes the run in `workdir` (config.json, metrics.jsonl, checkpoints/, tb/), trains to
`config.train.steps`, checkpoints every `train.checkpoint_every` steps, at the end and on SIGTERM/SIGINT,
stops with a clear error on a non-finite loss (keeping the last good checkpoint) and evaluates on the
validation split at the end.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from kfjax.config import changed_keys, save_json
from kfjax.data.pipeline import BatchLoader, eval_batches
from kfjax.errors import ConfigError, KfjaxError
from kfjax.metrics import Mean, merge_metrics
from kfjax.train.checkpoint import Checkpointer
from kfjax.train.mesh import check_batch_size, make_mesh, process_slice, replicated, shard_batch, to_host
from kfjax.train.method import Method, spec_of, zeros_like_spec
from kfjax.train.state import TrainState
from kfjax.train.step import check_train_config, engine_extra, make_eval_step, make_predict_step, make_train_step
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
    changed = [k for k in changed_keys(saved.get("config", {}), method.config) if k != "train.steps"]
    if changed:
        raise ConfigError(
            f"workdir '{workdir}' holds a run with other settings ({', '.join(changed)}); "
            "resume with the same settings (only train.steps may change) or use a new --workdir"
        )


def init_train_state(method: Method, mesh, example: dict) -> TrainState:
    """Replicated fresh state built under jit from the seed and the shapes of `example` (arrays or a spec)."""
    spec = spec_of(example)
    key = jax.random.key(method.config.seed)
    def init(k):
        state = method.init(k, zeros_like_spec(spec))
        return state.replace(extra={**state.extra, **engine_extra(method.config.train, state.params)})

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


@dataclasses.dataclass
class _Run:
    """What one training run holds while it goes: state, step function, data, outputs."""

    method: Method
    workdir: Path
    mesh: Any
    state: TrainState
    start: int
    restored: bool
    checkpoints: Checkpointer
    writer: MetricWriter


def _open_run(method: Method, workdir: Path) -> _Run:
    """Check the settings, write config.json, build (or restore) the replicated state."""
    cfg = method.config
    if not method.trainable:
        raise ConfigError(f"'{method.name}' has nothing to train: it optimises each case at evaluation; "
                          f"run `kfjax eval {method.name}`")
    mesh = make_mesh()
    check_batch_size(cfg.data.batch_size, mesh)
    if cfg.train.accumulate > 1 and cfg.data.batch_size % (cfg.train.accumulate * mesh.size):
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be a multiple of train.accumulate="
                          f"{cfg.train.accumulate} x {mesh.size} device(s); change one of them")
    check_train_config(cfg.train)
    state = init_train_state(method, mesh, method.batch_spec(cfg.data.batch_size))  # builds the networks
    if jax.process_index() == 0:  # only a valid run touches the workdir
        _check_workdir_config(workdir, method)
        workdir.mkdir(parents=True, exist_ok=True)
        save_json(cfg, workdir / "config.json", method=method.name)
    checkpoints = Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints)
    restored = checkpoints.restore_latest(state, warn=notice)
    if restored is not None:
        state = restored
        notice(f"resuming from the checkpoint at step {int(to_host(state.step))} in {checkpoints.directory}")
    start = int(to_host(state.step))
    return _Run(method, workdir, mesh, state, start, restored is not None, checkpoints,
                MetricWriter(workdir, resume_step=start))


class _Logger:
    """Averages step metrics between log lines, checks the loss, drives the progress bar."""

    def __init__(self, run: _Run, bar: Progress):
        self.run, self.bar = run, bar
        self.sums: dict[str, float] = {}
        self.count = 0
        self.last = time.perf_counter()
        self.pending: tuple[int, Any] | None = None
        self.last_saved = run.start if run.restored else None
        self.waited = 0.0  # seconds the loop waited for host batches since the last log line

    def settle(self) -> None:
        """Fetch the metrics of the last dispatched step, check them, log them."""
        if self.pending is None:
            return
        step, metrics = self.pending
        self.pending = None
        values = {k: float(v) for k, v in to_host(metrics).items()}
        loss = values.get("loss", 0.0)
        if not np.isfinite(loss):
            kept = (f"the last good checkpoint (step {self.last_saved}) is kept" if self.last_saved
                    else "no checkpoint was written")
            raise TrainingError(f"loss became {loss} at step {step}; {kept} in {self.run.checkpoints.directory}; "
                                "lower optim.lr or check the input data for NaN/Inf")
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        self.bar.update(1, loss=loss)
        cfg = self.run.method.config.train
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            means = {k: v / self.count for k, v in self.sums.items()}
            means["steps_per_s"] = self.count / max(now - self.last, 1e-9)
            means["data_wait_share"] = min(self.waited / max(now - self.last, 1e-9), 1.0)
            self.run.writer.write(step, means)
            self.sums, self.count, self.last, self.waited = {}, 0, now, 0.0

    def save(self) -> None:
        self.settle()
        if self.run.checkpoints.save(self.run.state):
            self.last_saved = int(to_host(self.run.state.step))


def _loader(run: _Run) -> BatchLoader:
    """The method's training batches from the run's step to `train.steps`, this process's rows only."""
    method, cfg = run.method, run.method.config
    data = method.dataset("train")
    sampler = method.sampler(data, cfg.data.batch_size)
    return BatchLoader(data, sampler, run.start, cfg.train.steps, rows=process_slice(cfg.data.batch_size),
                       transform=method.transform())


def device_batches(loader, mesh, depth: int = 2):
    """`(step, device batch, seconds waited for the host batch)`: the next `depth` batches are already
    sharded onto the devices (transfers overlap the running step)."""
    pending: collections.deque = collections.deque()
    batches = iter(loader)
    done = False
    while True:
        waited = 0.0
        while not done and len(pending) < depth:
            start = time.perf_counter()
            item = next(batches, None)
            waited += time.perf_counter() - start
            if item is None:
                done = True
            else:
                pending.append((item[0], shard_batch(item[1], mesh)))
        if not pending:
            return
        step, batch = pending.popleft()
        yield step, batch, waited


class _Profiler:
    """A `jax.profiler` trace of `steps` steps after two warm-up steps, into `directory` (None: off)."""

    WARMUP = 2

    def __init__(self, directory: Path | None, first_step: int, steps: int):
        self.directory, self.steps = directory, steps
        self.start_at = first_step + self.WARMUP
        self.active = False

    def before(self, step: int) -> None:
        if self.directory is not None and step == self.start_at and not self.active:
            jax.profiler.start_trace(str(self.directory))
            self.active = True

    def after(self, step: int, state) -> None:
        if self.active and step + 1 >= self.start_at + self.steps:
            self.stop(state)

    def stop(self, state) -> None:
        if self.active:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False
            notice(f"profile of {self.steps} steps written to {self.directory} (open it in TensorBoard or Perfetto)")

    def close(self) -> None:
        """Stop a trace left open by an error (what was recorded is written)."""
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")


def _out_of_memory(error: Exception, run: _Run) -> TrainingError | None:
    """A one-line TrainingError for a device out-of-memory error (None for any other error)."""
    if not any(marker in str(error) for marker in OOM_MARKERS):
        return None
    cfg = run.method.config
    kept = f"the last checkpoint in {run.checkpoints.directory} is kept"
    return TrainingError(
        f"the train step ran out of device memory ({type(error).__name__}); {kept}; lower data.batch_size "
        f"(now {cfg.data.batch_size}), set model.remat=blocks, train.compute_dtype=bfloat16 "
        f"(now {cfg.train.compute_dtype}) or train.accumulate=2 or more (now {cfg.train.accumulate})")


def _train_steps(run: _Run, logger: _Logger, loader: BatchLoader, profiler: _Profiler) -> str:
    """Step until the loader ends or a signal arrives; checkpoints and periodic evaluation on the way."""
    cfg = run.method.config.train
    train_step = make_train_step(run.method.train_step, run.mesh, cfg)
    with _StopFlag() as stop:
        for step, batch, waited in device_batches(loader, run.mesh):
            logger.waited += waited
            profiler.before(step)
            try:
                run.state, metrics = train_step(run.state, batch)
                logger.settle()
            except jax.errors.JaxRuntimeError as e:
                raise (_out_of_memory(e, run) or e) from None
            logger.pending = (step + 1, metrics)
            profiler.after(step, run.state)
            if (step + 1) % cfg.checkpoint_every == 0:
                logger.save()
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
                logger.settle()
                run.writer.write(step + 1, evaluate(run.method, run.state, run.mesh, "val"), split="val")
            if _should_stop(stop, step + 1, cfg.log_every):
                return "interrupted"
    return "completed"


def train(
    method: Method,
    workdir: str | Path,
    *,
    progress: bool = True,
    evaluate_at_end: bool = True,
    profile: str | Path | None = None,
) -> TrainResult:
    """Train `method` in `workdir`, resuming from its latest readable checkpoint.

    `profile`: a folder for a `jax.profiler` trace of `train.profile_steps` steps after two warm-up steps.
    """
    run = _open_run(method, Path(workdir))
    bar = Progress(run.start, method.config.train.steps, enabled=progress)
    logger = _Logger(run, bar)
    loader = _loader(run)
    profiler = _Profiler(None if profile is None else Path(profile), run.start, method.config.train.profile_steps)
    try:
        status = _train_steps(run, logger, loader, profiler)
        profiler.stop(run.state)
        logger.save()
        run.checkpoints.wait()
        if status == "interrupted":
            notice(f"stopped by signal at step {int(to_host(run.state.step))}; checkpoint saved; "
                   "run the same command to resume")
            return TrainResult(run.state, status, {})
        eval_metrics = {}
        if evaluate_at_end:
            eval_metrics = evaluate(method, run.state, run.mesh, "val")
            run.writer.write(int(to_host(run.state.step)), eval_metrics, split="val")
        return TrainResult(run.state, status, eval_metrics)
    finally:
        profiler.close()
        loader.close()
        bar.close()
        run.checkpoints.close()
        run.writer.close()


def _should_stop(stop: _StopFlag, step: int, every: int) -> bool:
    """Single process: the flag. Several processes: agree at log boundaries so all stop at one step."""
    if jax.process_count() == 1:
        return stop.signal is not None
    if step % every:
        return False
    flags = multihost_utils.process_allgather(np.int32(stop.signal is not None))
    return bool(np.any(flags))


def evaluate(method: Method, state: TrainState | None = None, mesh=None, split: str = "val") -> dict[str, float]:
    """Exact means over the whole split of the method's per-example metrics (jitted and host-side).

    `state` None: a fresh state from the config's seed (what a per-case method, which trains nothing, uses).
    """
    mesh = mesh or make_mesh()
    if state is None:
        state = init_train_state(method, mesh, method.batch_spec(method.config.data.batch_size))
    state = state.for_evaluation()
    cfg = method.config
    batch_size = cfg.train.eval_batch_size or cfg.data.batch_size
    check_batch_size(batch_size, mesh)
    rows = process_slice(batch_size)
    eval_step = make_eval_step(method.eval_step, mesh)
    host = bool(method.host_metric_names)
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
    """Latest readable checkpoint of `workdir` as a replicated state (for eval/infer/demo); builds no data."""
    mesh = make_mesh()
    batch_size = method.config.train.eval_batch_size or method.config.data.batch_size
    state = init_train_state(method, mesh, method.batch_spec(batch_size))
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise ConfigError(f"no checkpoints in '{workdir}'; train first with `kfjax train {method.name} --workdir {workdir}`")
    restored = Checkpointer(directory, asynchronous=False).restore_latest(state, warn=notice)
    if restored is None:
        raise ConfigError(f"no readable checkpoint in '{directory}'; train again with `kfjax train {method.name}`")
    return restored.for_evaluation()
