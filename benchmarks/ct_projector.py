"""CT projector benchmark: kfjax against ASTRA's CPU projectors and scikit-image, side by side in one run.

Workloads (256² Shepp-Logan, float32): parallel beam 180 and 360 views over 180° (367 bins of 1 px), fan beam
with a flat detector, 360 views over 360° (512 bins of 1.5 px, source 512 px and detector 256 px from the
centre). Operations: forward projection, adjoint (backprojection), FBP (ram-lak), forward + gradient of
0.5·‖Ax - y‖² with respect to the image. ASTRA: `linear` (Joseph) for parallel beam, `line_fanflat` for fan
beam (ASTRA CPU has no Joseph fan projector and no fan FBP); scikit-image: `radon`, `iradon`.

    python benchmarks/ct_projector.py            # print the tables
    python benchmarks/ct_projector.py --write    # also replace the ct_projector section of benchmarks/README.md

Needs `pip install -e '.[bench]'` (astra-toolbox with the two NVIDIA runtime wheels it links against, even on
CPU). Every timed call is median of `--repeats` after one warm-up, compile time reported apart; the tools run
round-robin (one call each in turn) so they see the same load on a shared machine: read the ratios. On a
GPU (`--gpu`) the script times batch-32 forward projections of 256² images at 256 views instead.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np
from readme_section import write_section

N = 256


def phantom() -> np.ndarray:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return resize(shepp_logan_phantom(), (N, N)).astype(np.float32)


def geometries():
    from kfjax.physics.geometry import FanBeam, ParallelBeam

    return {
        "parallel 180": ParallelBeam(n_views=180, n_det=367, image_shape=(N, N)),
        "parallel 360": ParallelBeam(n_views=360, n_det=367, image_shape=(N, N)),
        "fan-flat 360": FanBeam(
            n_views=360,
            n_det=512,
            source_distance=512,
            detector_distance=256,
            det_spacing=1.5,
            image_shape=(N, N),
        ),
    }


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def kfjax_ops(g, image: np.ndarray, batch: int):
    """{op: (callable, compile seconds)} for kfjax on `batch` copies of the image."""
    import jax
    import jax.numpy as jnp

    from kfjax.physics.fbp import fbp
    from kfjax.physics.projector import make_projector

    forward, adjoint = make_projector(g)
    x = jnp.asarray(np.repeat(image[None, ..., None], batch, 0))
    y = jax.jit(forward)(x)
    grad = jax.grad(lambda v: 0.5 * jnp.sum((forward(v) - y * 1.01) ** 2))
    ops = {
        "forward": (forward, x),
        "adjoint": (adjoint, y),
        "fbp": (lambda s: fbp(s, g), y),
        "forward+grad": (grad, x),
    }
    out = {}
    for name, (fn, arg) in ops.items():
        compiled = jax.jit(fn)
        compile_s = timed(lambda: compiled(arg).block_until_ready())  # noqa: B023
        out[name] = (lambda c=compiled, a=arg: c(a).block_until_ready(), compile_s)
    return out, np.asarray(y)[0, ..., 0]


def astra_ops(g, image: np.ndarray):
    """{op: callable} for ASTRA CPU, and its sinogram; conventions mapped with kfjax.physics.conventions."""
    import astra

    from kfjax.physics.conventions import astra_volume_window, to_astra_vectors

    kind, vectors = to_astra_vectors(g)
    vol = astra.create_vol_geom(N, N, *astra_volume_window(g))
    if kind == "parallel_vec":  # ASTRA's FBP takes only the plain parallel geometry; same convention (checked below)
        proj = astra.create_proj_geom("parallel", g.det_spacing, g.n_det, g.angles())
    else:
        proj = astra.create_proj_geom(kind, g.n_det, vectors)
    projector = astra.create_projector("linear" if kind == "parallel_vec" else "line_fanflat", proj, vol)
    sino_id, sino = astra.create_sino(image, projector)
    astra.data2d.delete(sino_id)

    def forward():
        data_id, _ = astra.create_sino(image, projector)
        astra.data2d.delete(data_id)

    def adjoint():
        data_id, _ = astra.create_backprojection(sino, projector)
        astra.data2d.delete(data_id)

    ops = {"forward": forward, "adjoint": adjoint}
    if kind == "parallel_vec":
        ops["fbp"] = lambda: _astra_fbp(astra, projector, proj, vol, sino)
    return ops, sino


def _astra_fbp(astra, projector, proj, vol, sino):
    sino_id = astra.data2d.create("-sino", proj, sino)
    rec_id = astra.data2d.create("-vol", vol)
    cfg = astra.astra_dict("FBP")
    cfg["ProjectorId"], cfg["ProjectionDataId"], cfg["ReconstructionDataId"] = (
        projector,
        sino_id,
        rec_id,
    )
    cfg["option"] = {"FilterType": "Ram-Lak"}
    alg = astra.algorithm.create(cfg)
    astra.algorithm.run(alg)
    rec = astra.data2d.get(rec_id)
    astra.algorithm.delete(alg)
    astra.data2d.delete([sino_id, rec_id])
    return rec


def skimage_ops(g, image: np.ndarray):
    from skimage.transform import iradon, radon

    theta = np.degrees(g.angles())
    sino = radon(image, theta)
    return {"forward": lambda: radon(image, theta), "fbp": lambda: iradon(sino, theta)}


def measure(calls: dict[str, callable], repeats: int) -> dict[str, float]:
    """Round-robin: one call of each in turn, `repeats` times after a warm-up; median seconds per name."""
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            times[name].append(timed(fn))
    return {name: float(np.median(t)) for name, t in times.items()}


def cpu_run(args) -> str:
    import astra
    import jax
    import skimage

    image = phantom()
    lines = [
        (
            f"Run {datetime.date.today()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"jax {jax.__version__} ({jax.default_backend()}), astra-toolbox {astra.__version__} "
            f"(CUDA {'on' if astra.use_cuda() else 'off'}), scikit-image {skimage.__version__}, "
            f"numpy {np.__version__}; median of {args.repeats} after a warm-up, ms."
        ),
        "",
        "| workload | op | kfjax (compile s) | ASTRA CPU | kfjax / ASTRA | scikit-image | skimage / kfjax |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    agreement = []
    throughput = []
    for name, g in geometries().items():
        ours, our_sino = kfjax_ops(g, image, 1)
        theirs, astra_sino = astra_ops(g, image)
        calls = {("kfjax", op): fn for op, (fn, _) in ours.items()}
        calls.update({("astra", op): fn for op, fn in theirs.items()})
        if g.kind == "parallel":
            calls.update({("skimage", op): fn for op, fn in skimage_ops(g, image).items()})
        median = measure(calls, args.repeats)
        for op in ("forward", "adjoint", "fbp", "forward+grad"):
            k = median[("kfjax", op)] * 1e3
            a = median.get(("astra", op))
            s = median.get(("skimage", op))
            lines.append(
                f"| {name} | {op} | {k:.1f} ({ours[op][1]:.1f}) | {'' if a is None else f'{a * 1e3:.1f}'} | "
                f"{'' if a is None else f'{k / (a * 1e3):.2f}'} | {'' if s is None else f'{s * 1e3:.1f}'} | "
                f"{'' if s is None else f'{s * 1e3 / k:.1f}'} |"
            )
        rel = np.linalg.norm(our_sino - astra_sino) / np.linalg.norm(astra_sino)
        agreement.append(
            f"{name}: kfjax forward vs ASTRA {'linear' if g.kind == 'parallel' else 'line_fanflat'} "
            f"relative L2 {rel:.2e}"
        )
        batch_ops, _ = kfjax_ops(g, image, args.batch)
        per_batch = measure(
            {"f": batch_ops["forward"][0], "a": batch_ops["adjoint"][0]},
            max(3, args.repeats // 2),
        )
        throughput.append(
            f"| {name} | {args.batch / per_batch['f']:.0f} | {args.batch / per_batch['a']:.0f} | "
            f"{1 / median[('astra', 'forward')]:.0f} | {1 / median[('astra', 'adjoint')]:.0f} |"
        )
    lines += [
        "",
        "Agreement (same geometry through `kfjax.physics.conventions.to_astra_vectors`):",
        "",
    ]
    lines += [f"- {a}" for a in agreement]
    lines += [
        "",
        f"Throughput, images/s (kfjax: one call on a batch of {args.batch}; ASTRA: one image per call):",
        "",
        "| workload | kfjax forward | kfjax adjoint | ASTRA forward | ASTRA adjoint |",
        "|---|---:|---:|---:|---:|",
        *throughput,
    ]
    return "\n".join(lines)


def gpu_run(args) -> str:
    import jax

    from kfjax.physics.geometry import FanBeam, ParallelBeam

    image = phantom()
    rows = [
        "| geometry | batch | forward images/s | adjoint images/s |",
        "|---|---:|---:|---:|",
    ]
    for g in (
        ParallelBeam(n_views=256, n_det=256, image_shape=(N, N)),
        FanBeam(
            n_views=256,
            n_det=256,
            source_distance=512,
            detector_distance=256,
            det_spacing=1.5,
            image_shape=(N, N),
        ),
    ):
        ops, _ = kfjax_ops(g, image, 32)
        median = measure({"f": ops["forward"][0], "a": ops["adjoint"][0]}, args.repeats)
        rows.append(f"| {g.kind} 256 views | 32 | {32 / median['f']:.0f} | {32 / median['a']:.0f} |")
    return f"GPU run {datetime.date.today()}: {jax.devices()[0].device_kind}, jax {jax.__version__}\n\n" + "\n".join(
        rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="time batch-32 projections on the default JAX device",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help="replace the section in benchmarks/README.md",
    )
    args = parser.parse_args()
    text = gpu_run(args) if args.gpu else cpu_run(args)
    command = "python benchmarks/ct_projector.py" + (" --gpu" if args.gpu else "") + " --write"
    text = f"`{command}`\n\n{text}"
    print(text)
    if args.write:
        write_section("ct_projector", "CT projector", text)


if __name__ == "__main__":
    sys.exit(main())
