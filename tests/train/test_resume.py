"""`kfjax train` killed (SIGKILL) or stopped (SIGTERM) mid-run resumes to the same parameters."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from kfjax.methods.registry import build
from kfjax.train.loop import restore_for_eval
from kfjax.train.mesh import to_host
from kfjax.train.writers import read_metrics

pytestmark = pytest.mark.slow

STEPS = 150
SETTINGS = ["data.size=16", "data.n_train=64", "data.n_val=8", "data.batch_size=4", "model.channels=4,8",
            f"train.steps={STEPS}", "train.checkpoint_every=5", "train.log_every=5", "train.keep_checkpoints=2"]


def _command(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "kfjax", "train", "di2in", "--workdir", str(workdir), "--no-progress",
            "--set", *SETTINGS]


def _checkpoint_steps(workdir: Path) -> list[int]:
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists())


def _start_and_wait_for_checkpoint(workdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(_command(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not _checkpoint_steps(workdir):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    return proc


def _final_params(workdir: Path):
    method = build("di2in", str(workdir / "config.json"))
    state = restore_for_eval(method, workdir)
    assert int(to_host(state.step)) == STEPS
    return to_host(state.params), to_host(state.batch_stats)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_command(workdir), check=True, capture_output=True)
    return _final_params(workdir)


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_sigkill_then_resume_matches_uninterrupted(reference, tmp_path):
    proc = _start_and_wait_for_checkpoint(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = _checkpoint_steps(tmp_path)
    assert saved and saved[-1] < STEPS, "the run must have been killed mid-way"
    resumed = subprocess.run(_command(tmp_path), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from the checkpoint at step {saved[-1]}" in resumed.stderr
    _assert_same(_final_params(tmp_path), reference)
    logged = [r["step"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert logged == list(range(5, STEPS + 1, 5)), "steps logged after the checkpoint are not duplicated"


def test_sigterm_saves_then_resume_matches(reference, tmp_path):
    proc = _start_and_wait_for_checkpoint(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopped by signal at step" in err and "run the same command to resume" in err
    stopped_at = int(err.split("stopped by signal at step ")[1].split(";")[0])
    assert _checkpoint_steps(tmp_path)[-1] == stopped_at < STEPS
    resumed = subprocess.run(_command(tmp_path), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same(_final_params(tmp_path), reference)
