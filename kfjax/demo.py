"""`kfjax demo`: the main job, end to end in a few minutes on a laptop CPU.

Until the DuDoNet issue takes this over, the demo trains DI2IN on procedural organ phantoms, prints a
table (Dice, surface distance of the trained network against a threshold baseline) and writes a PNG panel
and the checkpoint to its workdir. `--full` runs the method's default (longer) schedule.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from kfjax import metrics
from kfjax.cli import build_method
from kfjax.train.loop import evaluate, notice, train
from kfjax.viz import image_panel

QUICK = ["train.steps=150", "data.n_train=256", "data.n_val=32", "train.checkpoint_every=50"]


def _threshold_baseline(dataset) -> dict[str, float]:
    """Best single global intensity threshold on the validation images (Otsu-free, oracle-chosen)."""
    batch = dataset[np.arange(len(dataset))]
    image, label = batch["image"], batch["label"]
    best = {"dice": -1.0}
    for t in np.linspace(0.4, 0.8, 17):
        d = float(np.mean(np.asarray(metrics.dice((image > t).astype(np.float32), label))[:, 0]))
        if d > best["dice"]:
            best = {"dice": d, "threshold": float(t)}
    return best


def run_demo(workdir: str | Path, full: bool = False, progress: bool = True) -> int:
    workdir = Path(workdir)
    method = build_method("di2in", overrides=[] if full else QUICK)
    notice(f"demo: DI2IN organ segmentation on procedural phantoms, {method.config.train.steps} steps, "
           f"{jax.device_count()} {jax.default_backend()} device(s); workdir {workdir}")
    result = train(method, workdir, progress=progress, evaluate_at_end=False)
    if result.status != "completed":
        return 130
    scores = evaluate(method, result.state, split="val")
    baseline = _threshold_baseline(method.dataset("val"))
    print("\n| method (validation phantoms) | Dice | ASD (px) |\n|---|---|---|")
    print(f"| intensity threshold (best on val, t={baseline['threshold']:.2f}) | {baseline['dice']:.4f} | - |")
    print(f"| DI2IN ({method.config.train.steps} steps) | {scores['dice']:.4f} | {scores['asd']:.3f} |")

    val = method.dataset("val")
    batch = val[np.arange(4)]
    probability = np.asarray(jax.jit(method.predict)(result.state, {"image": batch["image"]})["probability"])
    rows = [[batch["image"][i, ..., 0], batch["label"][i, ..., 0], probability[i, ..., 0]] for i in range(4)]
    if method.config.data.spatial_dims == 3:
        rows = [[a[a.shape[0] // 2] for a in row] for row in rows]
    panel = image_panel(rows, ["phantom", "organ (truth)", "DI2IN probability"], workdir / "demo.png",
                        cmaps=["gray", "viridis", "viridis"], vrange=[None, (0, 1), (0, 1)])
    print(f"\nwrote {panel} and the checkpoint in {workdir / 'checkpoints'}")
    return 0
