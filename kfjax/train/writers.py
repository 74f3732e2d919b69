"""Where training metrics go: metrics.jsonl always, TensorBoard when tensorboardX is installed, and a
tqdm progress bar with loss, steps/s and ETA. Only process 0 writes."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import jax
from tqdm import tqdm


def _scalar(v: Any) -> float:
    return float(v)


class MetricWriter:
    """Append `{"step": s, "split": ..., name: value}` lines to workdir/metrics.jsonl (+ TensorBoard)."""

    def __init__(self, workdir: str | Path, resume_step: int = 0, tensorboard: bool = True):
        """Records after `resume_step` (logged by a run that died before its next checkpoint) are dropped."""
        self.enabled = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        if self.enabled:
            kept = [r for r in read_metrics(workdir) if r.get("step", 0) <= resume_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            tmp.replace(self.path)
        self._file = open(self.path, "a") if self.enabled else None
        self._tb = None
        if self.enabled and tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                pass
            else:
                self._tb = SummaryWriter(str(Path(workdir) / "tb"))

    def write(self, step: int, values: Mapping[str, Any], split: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, "time": round(time.time(), 3)}
        record.update({k: _scalar(v) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                value = _scalar(v)
                if math.isfinite(value):
                    self._tb.add_scalar(f"{split}/{k}", value, int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


class Progress:
    """tqdm bar over steps showing the latest loss; tqdm itself shows steps/s and ETA."""

    def __init__(self, start: int, total: int, enabled: bool = True, desc: str = "train"):
        self.bar = tqdm(
            total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True,
            disable=not enabled or jax.process_index() != 0, smoothing=0.1,
            mininterval=0.2 if sys.stderr.isatty() else 30.0,  # logs and CI get a line every 30 s
        )

    def update(self, n: int = 1, **values: float) -> None:
        if values:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """All records of workdir/metrics.jsonl (a damaged trailing line is ignored)."""
    records = []
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
