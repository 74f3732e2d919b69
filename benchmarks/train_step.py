"""Train-step benchmark: the same U-Net step in kfjax and in PyTorch, side by side in one run.

2-D U-Net: 4 levels, channels (32, 64, 128, 256), GroupNorm(8), ReLU, two 3x3 convs per level, 2x2 max-pool,
nearest x2 upsample + 3x3 conv (or pixel shuffle), concat skips, 1x1 output conv. Batch 8 of 128x128x1,
MSE loss, Adam(1e-3). The torch model starts from kfjax's initial weights, so the first losses must agree.
`--dims 3`: the same U-Net in 3-D (3x3x3 convs), channels (16, 32, 64, 128), batch 2 of 64x64x64x1, nearest
upsampling; its second kfjax variant computes the 3-D convolutions with XLA's own 3-D convolution instead of
kfjax's 2-D form of them (`kfjax.nn.conv3d`).

    python benchmarks/train_step.py            # print the tables
    python benchmarks/train_step.py --write    # also replace the train_step section of benchmarks/README.md
    python benchmarks/train_step.py --dims 3 --write   # the train_step_3d section

The kfjax-vs-torch steps run round-robin (one step of each variant in turn), so on a shared machine every
variant sees the same load; compare ratios, not absolute times. The data-parallel scaling over 1, 2 and 4
fake CPU devices needs one process per device count: the script re-runs itself with --jax-only --devices N.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = Path(__file__).with_name("README.md")
LR, SEED = 1e-3, 0
SHAPES = {2: dict(channels=(32, 64, 128, 256), batch=8, size=128),  # per number of spatial dimensions
          3: dict(channels=(16, 32, 64, 128), batch=2, size=64)}
DIMS = 2  # set from --dims in main() before anything is built
# kfjax compiles its CPU steps with XLA's YNNPACK convolution fusions off (kfjax.train.step.compiler_options):
# their weight-gradient convolutions are several times slower than XLA's own (Eigen) ones. The "ynn" variant
# is the same kfjax step with KFJAX_CPU_YNN=1, i.e. XLA's default, to show what that choice is worth.
YNN = "ynn"
XLA3D = "xla-conv3d"  # the 3-D variant with lax.conv_general_dilated in place of kfjax.nn.conv3d
TAPS = "taps"  # the 3-D variant with kfjax.nn.conv3d's tap sum at depth stride 1 too (its form before stacking)
AUTOGRAD = "autograd"  # the 3-D variant with the stacked form's shifted sum differentiated by JAX, not by hand


def shape(key: str):
    return SHAPES[DIMS][key]


def section() -> str:
    return "train_step" if DIMS == 2 else "train_step_3d"


def make_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    dims = (shape("batch"), *(shape("size"),) * DIMS, 1)
    x = rng.standard_normal(dims, dtype=np.float32)
    y = rng.standard_normal(dims, dtype=np.float32)
    return x, y


def kfjax_variant(upsample: str, variant: str, x: np.ndarray, y: np.ndarray):
    """Build and compile the kfjax step: (run_one_step, first_call_s, n_params, numpy init params, loss,
    XLA temp bytes per sample).

    variant: "" (kfjax as it ships), YNN (XLA's default CPU convolutions), XLA3D (XLA's own 3-D convolutions),
    TAPS (one 2-D convolution per depth tap, summed, also at depth stride 1) or AUTOGRAD (the stacked form with
    JAX's own gradient of its shifted sum in place of the hand-written one).
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from kfjax.nn import UNet, blocks, conv3d
    from kfjax.train.mesh import make_mesh, replicate, shard_batch
    from kfjax.train.state import TrainState
    from kfjax.train.step import make_train_step

    model = UNet(out_channels=1, channels=shape("channels"), norm="group", act="relu", upsample=upsample)
    blocks.Conv = nn.Conv if variant == XLA3D else conv3d.Conv  # read when the model traces
    stacked, tap_sum = conv3d._stacked, conv3d._shifted_tap_sum
    if variant == TAPS:
        conv3d._stacked = lambda x, rhs, conv2d: conv3d._taps(x, rhs, 1, 1, conv2d)
    if variant == AUTOGRAD:
        conv3d._shifted_tap_sum = tap_sum.fun  # the same function without its custom gradient
    params = model.init(jax.random.key(SEED), x[:1])["params"]
    host_params = jax.tree.map(np.asarray, params)

    def step_fn(state, batch, key):
        variables = state.variables("model")

        def loss_fn(p):
            pred = model.apply({**variables, "params": p}, batch["x"], train=True)
            return jnp.mean((pred - batch["y"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(variables["params"])
        return state.apply_gradients({"model": grads}), {"loss": loss}

    mesh = make_mesh()
    state = TrainState.create(params={"model": params}, tx={"model": optax.adam(LR)}, rng=jax.random.key(SEED))
    holder = {"state": replicate(state, mesh)}
    batch = shard_batch({"x": x, "y": y}, mesh)
    if variant == YNN:
        os.environ["KFJAX_CPU_YNN"] = "1"
    try:
        train_step = make_train_step(step_fn, mesh)
    finally:
        os.environ.pop("KFJAX_CPU_YNN", None)

    t0 = time.perf_counter()
    compiled = train_step.lower(holder["state"], batch).compile()
    blocks.Conv, conv3d._stacked, conv3d._shifted_tap_sum = conv3d.Conv, stacked, tap_sum

    def run() -> float:
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready((holder["state"], metrics))
        return float(metrics["loss"])

    loss = run()
    first = time.perf_counter() - t0
    memory = compiled.memory_analysis()  # None where the backend does not report it
    temp = memory.temp_size_in_bytes / shape("batch") if memory is not None else float("nan")
    return run, first, sum(p.size for p in jax.tree.leaves(params)), host_params, loss, temp


def torch_unet(upsample: str):
    """kfjax's UNet written in torch (channels-first), layer for layer and parameter for parameter."""
    import torch
    from torch import nn

    conv_nd = nn.Conv2d if DIMS == 2 else nn.Conv3d
    max_pool = nn.functional.max_pool2d if DIMS == 2 else nn.functional.max_pool3d
    channels = shape("channels")

    def double(cin: int, cout: int) -> nn.Sequential:  # two ConvNormAct blocks; no conv bias before a norm
        return nn.Sequential(conv_nd(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(8, cout, eps=1e-5),
                             nn.ReLU(), conv_nd(cout, cout, 3, padding=1, bias=False),
                             nn.GroupNorm(8, cout, eps=1e-5), nn.ReLU())

    class Up(nn.Module):
        def __init__(self, cin: int, cout: int):
            super().__init__()
            self.shuffle = upsample == "pixelshuffle"
            self.conv = conv_nd(cin, cout * 4 if self.shuffle else cout, 3, padding=1)

        def forward(self, x):
            if not self.shuffle:
                return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
            x = self.conv(x)
            b, c, h, w = x.shape  # depth-to-space with kfjax's channel order (row offset, col offset, channel)
            return x.view(b, 2, 2, c // 4, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, c // 4, 2 * h, 2 * w)

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            ins = (1, *channels[:-1])
            self.down = nn.ModuleList(double(i, o) for i, o in zip(ins, channels))
            levels = list(reversed(range(len(channels) - 1)))
            self.up = nn.ModuleList(Up(channels[i + 1], channels[i]) for i in levels)
            self.dec = nn.ModuleList(double(2 * channels[i], channels[i]) for i in levels)
            self.out = conv_nd(channels[0], 1, 1)

        def forward(self, x):
            skips = []
            for i, block in enumerate(self.down):
                x = block(x)
                if i < len(self.down) - 1:
                    skips.append(x)
                    x = max_pool(x, 2)
            for up, block, skip in zip(self.up, self.dec, reversed(skips)):
                x = block(torch.cat([up(x), skip], dim=1))
            return self.out(x)

    return UNet()


def load_kfjax_params(model, params) -> None:
    """Copy kfjax's (Flax) initial parameters into the torch model ((D)HWIO kernels -> OI(D)HW)."""
    import torch

    def tensor(a):
        return torch.from_numpy(np.array(a))  # a writable, contiguous copy

    def conv(m, p):
        m.weight.data.copy_(tensor(p["kernel"].transpose(DIMS + 1, DIMS, *range(DIMS))))
        if "bias" in p:
            m.bias.data.copy_(tensor(p["bias"]))

    def double(seq, p):
        for k, (ci, ni) in enumerate(((0, 1), (3, 4))):
            conv(seq[ci], p[f"ConvNormAct_{k}"]["Conv_0"])
            gn = p[f"ConvNormAct_{k}"]["Norm_0"]["GroupNorm_0"]
            seq[ni].weight.data.copy_(tensor(gn["scale"]))
            seq[ni].bias.data.copy_(tensor(gn["bias"]))

    for i, seq in enumerate(model.down):
        double(seq, params[f"DoubleConv_{i}"])
    for j, (up, seq) in enumerate(zip(model.up, model.dec)):
        conv(up.conv, params[f"Upsample_{j}"]["Conv_0"])
        double(seq, params[f"DoubleConv_{len(model.down) + j}"])
    conv(model.out, params["Conv_0"])


def torch_variant(upsample: str, params, x: np.ndarray, y: np.ndarray):
    import torch

    model = torch_unet(upsample)
    load_kfjax_params(model, params)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    xt, yt = (torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1))) for a in (x, y))

    def run() -> float:
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((model(xt) - yt) ** 2)
        loss.backward()
        opt.step()
        return loss.item()  # torch runs eagerly: the step is done when this returns

    t0 = time.perf_counter()
    loss = run()
    return run, time.perf_counter() - t0, sum(p.numel() for p in model.parameters()), loss


def measure(variants: dict, warmup: int, steps: int) -> dict[str, list[float]]:
    """Round-robin: each round runs one step of every variant, so all see the same machine load."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    times = {name: [] for name in variants}
    for _ in range(steps):
        for name, run in variants.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return times


def jax_only(args) -> None:
    """Child process: kfjax step on `--devices` fake CPU devices (XLA_FLAGS is set before jax is imported)."""
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
    import jax

    assert jax.device_count() == args.devices, jax.devices()
    x, y = make_data()
    variants, out = {}, {"devices": args.devices}
    for name, variant in (("kfjax", ""), (f"kfjax {YNN}", YNN)):
        variants[name], out[f"{name} first"], *_ = kfjax_variant("nearest", variant, x, y)
    for name, times in measure(variants, args.warmup, args.scale_steps).items():
        out[name] = float(np.median(times))
    print(json.dumps(out))


def scaling(args) -> list[dict]:
    rows = []
    for n in (1, 2, 4):
        cmd = [sys.executable, __file__, "--jax-only", "--devices", str(n), "--warmup", str(args.warmup),
               "--scale-steps", str(args.scale_steps)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  {n} device(s): {rows[-1]['kfjax']:.2f} / {rows[-1][f'kfjax {YNN}']:.2f} s/step", flush=True)
    return rows


def cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.machine())


def report(args, results, rows, threads, losses) -> str:
    import flax
    import jax
    import torch

    torch_med = {up: np.median(results[f"torch {up}"]["times"]) for up in args.upsample}
    out = ["| variant | first call, s (incl. compile) | median step, s | steps/s | time / torch's "
           "| XLA temp memory, MiB per sample |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        med = float(np.median(r["times"]))
        ratio = med / torch_med[name.split()[-1]]
        temp = f"{r['temp'] / 2**20:.0f}" if "temp" in r else "-"
        out.append(f"| {name} | {r['first']:.1f} | {med:.2f} | {1 / med:.3f} | {ratio:.2f} | {temp} |")
    if rows:
        out += ["", f"kfjax step (nearest) over fake CPU devices, global batch {shape('batch')}, one process per row, "
                "both variants round-robin:", "",
                "| fake CPU devices | per-device batch | kfjax: s/step | steps/s | kfjax ynn: s/step | steps/s "
                "| first call, s (kfjax / ynn) |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            out.append(f"| {r['devices']} | {shape('batch') // r['devices']} | {r['kfjax']:.2f} | {1 / r['kfjax']:.3f} | "
                       f"{r[f'kfjax {YNN}']:.2f} | {1 / r[f'kfjax {YNN}']:.3f} | "
                       f"{r['kfjax first']:.1f} / {r[f'kfjax {YNN} first']:.1f} |")
    command = " ".join(["python", "benchmarks/train_step.py", *sys.argv[1:]])
    out += ["", f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
            f"- command: `{command}`",
            f"- versions: jax {jax.__version__}, flax {flax.__version__}, torch {torch.__version__}, "
            f"python {platform.python_version()}",
            f"- CPU: {cpu_model()}, {os.cpu_count()} cores; torch threads: {threads}; JAX: one CPU device "
            f"unless stated",
            f"- steps: median of {args.steps} timed steps per variant, run round-robin after "
            f"{args.warmup} warm-up step(s); scaling rows: median of {args.scale_steps} steps",
            f"- seeds: numpy data and Flax init {SEED}, TrainState key {SEED}; torch starts from the same "
            f"weights: first-step loss {losses}",
            "- kfjax = the step as `make_train_step` compiles it (on CPU: XLA option "
            "`xla_cpu_experimental_ynn_fusion_type=''`, YNNPACK convolution fusions off); kfjax ynn = the same "
            "step with `KFJAX_CPU_YNN=1`, XLA's default convolutions" if DIMS == 2 else
            f"- shapes: channels {shape('channels')}, batch {shape('batch')} of {shape('size')}^3 x 1; kfjax = "
            "the step as `make_train_step` compiles it, 3-D convolutions as 2-D ones (`kfjax.nn.conv3d`: at "
            f"depth stride 1 one 2-D convolution with the depth taps stacked on its outputs, the shifted sum of "
            f"the taps with a hand-written gradient); kfjax {AUTOGRAD} = the same with JAX's own gradient of that "
            f"sum; kfjax {TAPS} = the same step with one 2-D convolution per depth tap on the planes it reads, "
            f"summed (kfjax's form before the stacked one); kfjax {XLA3D} = the same step with XLA's own 3-D "
            "convolution"]
    return "\n".join(out)


def write_readme(text: str) -> None:
    old = README.read_text() if README.exists() else "# Benchmarks\n"
    begin, end = f"<!-- {section()}:begin -->", f"<!-- {section()}:end -->"
    text = f"{begin}\n{text}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + text + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    README.write_text(new)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, default=2, choices=[2, 3], help="2-D (default) or 3-D U-Net")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (default 10)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first call (default 1)")
    p.add_argument("--scale-steps", type=int, default=5, help="timed steps per device count (default 5)")
    p.add_argument("--upsample", nargs="+", default=["nearest", "pixelshuffle"], choices=["nearest", "pixelshuffle"])
    p.add_argument("--no-scaling", action="store_true", help="skip the 1/2/4 fake-device runs")
    p.add_argument("--write", action="store_true", help="replace the train_step section of benchmarks/README.md")
    p.add_argument("--jax-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    global DIMS
    DIMS = args.dims
    if DIMS == 3:  # torch has no 3-D pixel shuffle; the fake-device rows are the 2-D benchmark's
        args.upsample, args.no_scaling = ["nearest"], True
    sys.path.insert(0, str(ROOT))
    if args.jax_only:
        return jax_only(args)
    if importlib.util.find_spec("torch") is None:
        print("torch is not installed; this benchmark needs it: pip install 'kfjax[bench]'", file=sys.stderr)
        sys.exit(2)
    import torch

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(threads)
    x, y = make_data()
    variants, results, losses = {}, {}, {}
    for up in args.upsample:
        others = [YNN] if DIMS == 2 else [AUTOGRAD, TAPS, XLA3D]
        for name, variant in ((f"kfjax {up}", ""), *((f"kfjax {o} {up}", o) for o in others)):
            run, first, n_jax, params, loss, temp = kfjax_variant(up, variant, x, y)
            variants[name], results[name] = run, {"first": first, "temp": temp}
            losses[name] = loss
            print(f"{name}: first call {first:.1f} s", flush=True)
        run, first, n_torch, loss = torch_variant(up, params, x, y)
        assert n_jax == n_torch, f"parameter counts differ: kfjax {n_jax}, torch {n_torch}"
        assert abs(loss - losses[f"kfjax {up}"]) < 1e-3 * abs(loss), (loss, losses)
        variants[f"torch {up}"], results[f"torch {up}"], losses[f"torch {up}"] = run, {"first": first}, loss
        print(f"torch {up}: first call {first:.1f} s; {n_jax} parameters in both", flush=True)
    for name, times in measure(variants, args.warmup, args.steps).items():
        results[name]["times"] = times
    rows = [] if args.no_scaling else scaling(args)
    loss_text = ", ".join(f"{k} {v:.5f}" for k, v in losses.items()
                          if not any(o in k for o in (YNN, AUTOGRAD, TAPS, XLA3D)))
    text = report(args, results, rows, threads, loss_text)
    print(text)
    if args.write:
        write_readme(text)
        print(f"wrote {README.name}")


if __name__ == "__main__":
    main()
