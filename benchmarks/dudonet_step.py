"""Where a DuDoNet train step spends its time, at 64², 128² and 256² (the ADN geometry and its half and quarter).

Per geometry, one `kfjax bench` train step (batch 8, the default networks, 16-128 channels) of each variant:
the dual-domain model, the image-only model (IE-Net), the sinogram-only model (SE-Net + the Radon inversion
layer), the dual model trained on fresh masks (the polychromatic simulator inside the step), and the RIL's
forward + backward alone (the rebinning FBP of the batch and its VJP). The shares are those times over the
dual step's: IE-Net ≈ image-only, SE-Net + RIL ≈ sinogram-only, simulation = fresh − dual. Every variant of
a geometry runs in one process, in turn: read the ratios.

    python benchmarks/dudonet_step.py            # print the table
    python benchmarks/dudonet_step.py --write    # also replace the dudonet_step section of benchmarks/README.md
"""

from __future__ import annotations

import argparse
import datetime

import jax
import jax.numpy as jnp
import numpy as np
from readme_section import write_section

from kfjax.bench import bench_method
from kfjax.bench.env import environment
from kfjax.bench.timing import summary, time_calls
from kfjax.methods.registry import build as build_method
from kfjax.physics.fbp import fbp

VARIANTS = {"dual": [], "image-only": ["model.mode=image"], "sinogram-only": ["model.mode=sinogram"],
            "dual, fresh masks": ["data.masks=fresh"]}
SIZES = {"adn_quarter": 64, "adn_half": 128, "adn": 256}


def ril_seconds(geometry_name: str, batch: int, steps: int) -> float:
    """Median seconds of the Radon inversion layer's forward + backward on a batch of sinograms."""
    geometry = build_method("dudonet", overrides=[f"data.geometry={geometry_name}"]).geometry()
    ril = jax.jit(jax.value_and_grad(lambda s: jnp.sum(fbp(s, geometry, fan_method="rebin") ** 2)))
    sino = jnp.asarray(np.random.default_rng(0).random((batch, geometry.n_views, geometry.n_det, 1), np.float32))
    return summary(time_calls(lambda: ril(sino), steps))["median_s"]


def geometry_rows(geometry: str, batch: int, steps: int) -> list[str]:
    times = {name: bench_method("dudonet", [f"data.geometry={geometry}", *extra], batch=batch, steps=steps,
                                progress=False)["median_s"] for name, extra in VARIANTS.items()}
    ril = ril_seconds(geometry, batch, steps)
    dual = times["dual"]
    return [f"| {SIZES.get(geometry, geometry)}² ({geometry}) | {dual:.3f} | {times['image-only']:.3f} "
            f"({times['image-only'] / dual:.0%}) | {times['sinogram-only']:.3f} ({times['sinogram-only'] / dual:.0%}) "
            f"| {ril:.3f} ({ril / dual:.0%}) | {times['dual, fresh masks']:.3f} "
            f"({(times['dual, fresh masks'] - dual) / dual:+.0%}) |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--geometries", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    env = environment()
    lines = [f"`python benchmarks/dudonet_step.py --write` ({datetime.date.today()}; {env['cpu']}, "
             f"{env['cores']} cores, {env['device_kind']} x{env['device_count']}, jax {env['jax']}; batch "
             f"{args.batch}, median of {args.steps} steps; in parentheses the share of the dual step)", "",
             "| size | dual step, s | image-only (IE-Net) | sinogram-only (SE-Net + RIL) | RIL fwd+bwd "
             "| dual on fresh masks (simulation) |", "|---|---:|---:|---:|---:|---:|"]
    for geometry in args.geometries:
        lines += geometry_rows(geometry, args.batch, args.steps)
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("dudonet_step", "DuDoNet train step", text)


if __name__ == "__main__":
    main()
