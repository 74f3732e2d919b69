"""DuDoNet train-step benchmark: steps/s on 1 and 4 (fake CPU) devices and the share of the Radon inversion layer.

ADN geometry (256², 320 views, 197 arc bins) by default, batch 8, the default DuDoNet networks (16-128
channels), phantom data (the step does not depend on the data). The RIL share is the time of the layer's
forward + backward alone (FBP of the batch and its VJP, a forward projection) over the time of the step.

    python benchmarks/dudonet_step.py            # print the table
    python benchmarks/dudonet_step.py --write    # also replace the dudonet_step section of benchmarks/README.md

Device counts other than the default run in a subprocess with XLA's fake host devices, which share the same
cores: they measure the cost of sharding, not a speed-up.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

from readme_section import write_section


def measure(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from kfjax.methods.registry import build as build_method
    from kfjax.physics.fbp import fbp
    from kfjax.train.loop import init_train_state
    from kfjax.train.mesh import make_mesh, shard_batch
    from kfjax.train.step import make_train_step

    method = build_method(
        "dudonet", overrides=["data.source=phantom", f"data.geometry={args.geometry}", f"data.batch_size={args.batch}"]
    )
    mesh = make_mesh()
    rng = np.random.default_rng(0)
    batch = {
        k: (rng.random(v.shape) * (0.2 if len(v.shape) > 1 else 0)).astype(v.dtype)
        for k, v in method.batch_spec(args.batch).items()
    }
    state = init_train_state(method, mesh, batch)
    step = make_train_step(method.train_step, mesh)
    sharded = shard_batch(batch, mesh)

    def timed(fn, n):
        out = []
        for _ in range(n):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            out.append(time.perf_counter() - start)
        return float(np.median(out))

    holder = {"state": state}

    def one_step():
        holder["state"], logs = step(holder["state"], sharded)
        return logs

    compile_s = timed(one_step, 1)
    step_s = timed(one_step, args.repeats)
    geometry = method.geometry()
    ril = jax.jit(jax.value_and_grad(lambda s: jnp.sum(fbp(s, geometry) ** 2)))
    sino = jnp.asarray(batch["li_sinogram"])
    timed(lambda: ril(sino), 1)
    ril_s = timed(lambda: ril(sino), args.repeats)
    return {
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "compile_s": compile_s,
        "step_s": step_s,
        "ril_s": ril_s,
        "kind": jax.devices()[0].device_kind,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--geometry", default="adn")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 4], help="fake CPU device counts")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    rows = []
    for n in args.devices:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--geometry",
            args.geometry,
            "--batch",
            str(args.batch),
            "--repeats",
            str(args.repeats),
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    import jax

    lines = [
        (
            f"`python benchmarks/dudonet_step.py --write` ({datetime.date.today()}, {platform.machine()}, "
            f"{os.cpu_count()} cores, jax {jax.__version__}; geometry {args.geometry}, batch {args.batch}, "
            f"median of {args.repeats})"
        ),
        "",
        "| devices | steps/s | step s | first call s (compile) | RIL fwd+bwd s | RIL share of the step |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['devices']} {r['backend']} ({r['kind']}) | {1 / r['step_s']:.2f} | {r['step_s']:.2f} | "
            f"{r['compile_s']:.1f} | {r['ril_s']:.3f} | {r['ril_s'] / r['step_s']:.0%} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("dudonet_step", "DuDoNet train step", text)


if __name__ == "__main__":
    main()
