"""Matplotlib (Agg) figures saved as PNG, atomically (temporary name, then rename)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write `fig` to `path` as PNG without ever leaving a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def image_panel(
    rows: Sequence[Sequence[np.ndarray]],
    titles: Sequence[str],
    path: str | Path,
    cmaps: Sequence[str] | None = None,
    vrange: Sequence[tuple[float, float] | None] | None = None,
) -> Path:
    """Grid of 2-D images: `rows[r][c]` is `(H, W)`; one title and colormap per column."""
    n_rows, n_cols = len(rows), len(titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.4 * n_cols, 2.4 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = axes[r][c]
            lim = vrange[c] if vrange else None
            ax.imshow(np.asarray(image), cmap=(cmaps[c] if cmaps else "gray"),
                      vmin=lim[0] if lim else None, vmax=lim[1] if lim else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def metric_curves(records: list[dict], path: str | Path) -> Path:
    """One subplot per metric of metrics.jsonl records, train and val splits as separate lines."""
    skip = {"step", "split", "time"}
    names = sorted({k for r in records for k in r if k not in skip})
    cols = min(3, max(len(names), 1))
    n_rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.2 * cols, 3.0 * n_rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for split in sorted({r.get("split", "train") for r in records}):
            points = [(r["step"], r[name]) for r in records if r.get("split", "train") == split and name in r]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if len(points) < 3 else None, label=split)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        if name.startswith(("loss", "bce", "l1", "l2")) and all(
            v > 0 for r in records if name in r for v in [r[name]]
        ):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)
