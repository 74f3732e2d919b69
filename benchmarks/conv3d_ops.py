"""Where a 3-D U-Net train step spends its time: each 3x3x3 convolution's forward pass, input gradient and
weight gradient, and the 2x max pool, in kfjax, in XLA's own 3-D convolution and in PyTorch, side by side.

The layers are those of the 3-D U-Net of `train_step.py --dims 3` (batch 2; 16 channels at 64^3, 32 at 32^3,
64 at 16^3, 128 at 8^3). kfjax = `kfjax.nn.conv3d.conv_general_dilated` as shipped (on CPU at depth stride 1
one 2-D convolution with the depth taps stacked on its outputs, above `MIN_STACKED_MACS`), compiled with kfjax's
CPU options; kfjax taps = the form kfjax used before (one 2-D convolution per depth tap on the planes it reads,
summed; `kfjax.nn.conv3d._taps`); xla-conv3d = `lax.conv_general_dilated`; torch = `torch.nn.functional.conv3d`
(its backward timed on a kept graph).
Every operation's variants run round-robin, so they see the same machine load: compare ratios.

    python benchmarks/conv3d_ops.py            # print the table
    python benchmarks/conv3d_ops.py --write    # also replace the conv3d_ops section of benchmarks/README.md
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from readme_section import write_section  # noqa: E402

BATCH = 2
LAYERS = ((64, 16), (32, 32), (16, 64), (8, 128))  # (side in voxels, channels in = out)
DN = ("NDHWC", "DHWIO", "NDHWC")


def jax_ops(side: int, channels: int, rng) -> dict[str, dict]:
    """{op: {variant: zero-argument callable}} for the kfjax and XLA variants of one layer."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from jax import lax

    from kfjax.nn import conv3d, max_pool
    from kfjax.train.step import CPU_COMPILER_OPTIONS

    x = jnp.asarray(rng.standard_normal((BATCH, side, side, side, channels), dtype=np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 3, channels, channels), dtype=np.float32) / 30)
    dy = jnp.asarray(rng.standard_normal(x.shape, dtype=np.float32))

    def compiled(f, *args):
        c = jax.jit(f).lower(*args).compile(dict(CPU_COMPILER_OPTIONS))
        return lambda: jax.block_until_ready(c(*args))

    def taps(x, w, window_strides, padding, dimension_numbers):  # SAME, stride 1: pad depth, 2-D convs per tap
        conv2d = functools.partial(lax.conv_general_dilated, window_strides=(1, 1), padding=[(1, 1), (1, 1)],
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return conv3d._taps(jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0))), w, 1, 1, conv2d)

    ops = {"forward": {}, "input gradient": {}, "weight gradient": {}}
    for name, conv in (("kfjax", conv3d.conv_general_dilated), ("kfjax taps", taps),
                       ("xla-conv3d", lax.conv_general_dilated)):
        def fwd(x, w, conv=conv):
            return conv(x, w, (1, 1, 1), "SAME", dimension_numbers=DN)

        ops["forward"][name] = compiled(fwd, x, w)
        ops["input gradient"][name] = compiled(lambda x, w, dy, f=fwd: jax.vjp(lambda v: f(v, w), x)[1](dy), x, w, dy)
        ops["weight gradient"][name] = compiled(lambda x, w, dy, f=fwd: jax.vjp(lambda k: f(x, k), w)[1](dy), x, w, dy)
    pooled = lambda pool: (lambda x: jax.grad(lambda v: jnp.sum(pool(v) ** 2))(x))
    window = lambda v: nn.max_pool(v, (2, 2, 2), strides=(2, 2, 2))
    ops["max pool + gradient"] = {"kfjax": compiled(pooled(max_pool), x), "xla-conv3d": compiled(pooled(window), x)}
    return ops


def torch_ops(side: int, channels: int, rng) -> dict[str, callable]:
    import torch

    x = torch.from_numpy(rng.standard_normal((BATCH, channels, side, side, side), dtype=np.float32)).requires_grad_()
    w = torch.from_numpy(rng.standard_normal((channels, channels, 3, 3, 3), dtype=np.float32) / 30).requires_grad_()
    dy = torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32))
    y = torch.nn.functional.conv3d(x, w, padding=1)

    def pool():
        (torch.nn.functional.max_pool3d(x, 2) ** 2).sum().backward()

    with_grad = lambda inp: (lambda: torch.autograd.grad(y, inp, dy, retain_graph=True))
    return {"forward": lambda: torch.nn.functional.conv3d(x.detach(), w.detach(), padding=1),
            "input gradient": with_grad(x), "weight gradient": with_grad(w), "max pool + gradient": pool}


def round_robin(variants: dict[str, callable], steps: int) -> dict[str, float]:
    """Median seconds per call; one call of every variant per round after one warm-up round."""
    times = {name: [] for name in variants}
    for i in range(steps + 1):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            if i:
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="timed rounds per operation (default 5)")
    p.add_argument("--write", action="store_true", help="replace the conv3d_ops section of benchmarks/README.md")
    args = p.parse_args()
    import flax
    import jax
    import torch

    from kfjax.bench.env import cpu_model

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(threads)
    columns = ("kfjax", "kfjax taps", "xla-conv3d", "torch")
    rows = ["| layer | operation | " + " | ".join(f"{c}, s" for c in columns) + " | "
            + " | ".join(f"{c} / torch" for c in columns[:-1]) + " |", "| --- | --- |" + " ---: |" * 7]
    for side, channels in LAYERS:
        rng = np.random.default_rng(0)
        ours, theirs = jax_ops(side, channels, rng), torch_ops(side, channels, rng)
        for op, variants in ours.items():
            t = round_robin({**variants, "torch": theirs[op]}, args.steps)
            cells = [f"{t[c]:.3f}" if c in t else "-" for c in columns]
            cells += [f"{t[c] / t['torch']:.2f}" if c in t else "-" for c in columns[:-1]]
            rows.append(f"| {side}^3 x {channels} | {op} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    command = " ".join(["python", "benchmarks/conv3d_ops.py", *sys.argv[1:]])
    text = "\n".join(rows + [
        "", f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; command: `{command}`",
        f"- versions: jax {jax.__version__}, flax {flax.__version__}, torch {torch.__version__}, "
        f"python {platform.python_version()}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores; torch threads: {threads}; batch {BATCH}, float32, "
        f"3x3x3 convolutions with as many output as input channels; median of {args.steps} rounds",
        "- max pool + gradient: kfjax = `kfjax.nn.max_pool` (reshape, argmax mask), xla-conv3d column = Flax's "
        "`nn.max_pool` (window reduction, select-and-scatter gradient)"])
    print(text)
    if args.write:
        write_section("conv3d_ops", "3-D convolution, per operation", text)
        print("wrote README.md")


if __name__ == "__main__":
    main()
