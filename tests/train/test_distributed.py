"""Two processes on localhost (2 fake CPU devices each) train like one process with 4 devices."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from kfjax.methods.registry import build
from kfjax.train.loop import restore_for_eval
from kfjax.train.mesh import to_host

pytestmark = pytest.mark.slow

SETTINGS = ["data.size=16", "data.n_train=32", "data.n_val=8", "data.batch_size=8", "model.channels=4,8",
            "train.steps=6", "train.checkpoint_every=3", "train.log_every=3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra)
    return env


def _train(workdir: Path, env: dict[str, str], distributed: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kfjax", "train", "di2in", "--workdir", str(workdir), "--no-progress",
           "--set", *SETTINGS]
    if distributed:
        cmd.insert(4, "--distributed")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_match_one(tmp_path):
    single = _train(tmp_path / "single", _env(4), distributed=False)
    out, err = single.communicate(timeout=600)
    assert single.returncode == 0, err

    port = _free_port()
    procs = [
        _train(tmp_path / "multi", _env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                        JAX_PROCESS_ID=str(i)), distributed=True)
        for i in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    assert "| dice |" in results[0][0], "process 0 prints the table"
    assert "| dice |" not in results[1][0], "only process 0 prints"

    method = build("di2in", str(tmp_path / "single" / "config.json"))
    a = to_host(restore_for_eval(method, tmp_path / "single").params)
    b = to_host(restore_for_eval(method, tmp_path / "multi").params)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    lines_single = (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()
    lines_multi = (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
    assert len(lines_single) == len(lines_multi), "one writer in the multi-process run"
