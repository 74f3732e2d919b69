"""Fan-beam adjoint: kfjax against ASTRA CPU's `line_fanflat` backprojector, with a roofline-style count.

Workload: the fan-flat 360 row of `ct_projector.py` (256² image, 360 views over 360°, 512 bins of 1.5 mm,
source 512 mm and detector 256 mm from the centre), float32. Timed round-robin in one process, one call of
each in turn, median of `--repeats` after a warm-up: kfjax's adjoint at batch 1 and batch 8, the adjoint of
an earlier revision of `kfjax/physics/projector.py` (`--baseline`, default `HEAD`, read with `git show`), and
ASTRA's backprojection of one image. Then the counts per view (bytes moved, FLOPs, gathered bytes) for both
kfjax versions, the machine's memory bandwidth from a numpy copy of a large array, and the time that bandwidth
alone would take.

    python benchmarks/fan_adjoint.py                      # against git HEAD's projector
    python benchmarks/fan_adjoint.py --baseline none      # current code and ASTRA only
    python benchmarks/fan_adjoint.py --presets            # also the arc-detector presets, against the baseline
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import subprocess
import sys
import time
import types

import numpy as np

from ct_projector import geometries, phantom
from readme_section import write_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_revision(revision: str):
    """`kfjax.physics.projector` as it is in git `revision`, as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{revision}:kfjax/physics/projector.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType(f"projector_at_{revision}")
    exec(compile(source, f"{revision}:kfjax/physics/projector.py", "exec"), module.__dict__)
    return module


def bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Copy bandwidth in GB/s (bytes read + bytes written), best of `repeats` numpy copies."""
    src = np.ones(megabytes * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def counts(g, batch: int, taps: int, kind: str) -> dict[str, float]:
    """Per view: bytes that must cross the memory hierarchy once, FLOPs, bytes gathered from the view's table.

    `kind` "rows": per tap a gather of (w, A, B, C) and of the values from zero-padded tables (one row for a
    single column); "columns": a gather of (major, a, b, w) and one of the values, two `where` on the major
    axis and a range test per tap.
    """
    h, w = g.image_shape
    pixels = h * w
    f = 4  # bytes per float32 / int32
    table_row = 4 + batch
    per_view = {
        "accumulator read+write": 2 * f * batch * pixels,
        "pixel coordinates (x, y, column, row)": 4 * f * pixels,
        "first-bin index (write, read)": (2 if kind == "rows" else 0) * f * pixels,
        "view table (rays + sinogram row)": (g.n_det + (2 * taps if kind == "rows" else 0)) * table_row * f,
    }
    index_flops = 16  # pixel_to_bin: 2 rotations (4 FMA), depth, divide, scale, floor, clip
    if kind == "rows":
        tap_flops = 7 + 2 * batch  # 2 FMA for the plane, abs, subtract, max; FMA per column
    else:
        tap_flops = 13 + 2 * batch  # + 2 selects, compare, range test, select, clip, the tent's 1 - |.|
    return {
        "bytes": float(sum(per_view.values())),
        "flops": float(pixels * (index_flops + taps * tap_flops)),
        "gathered": float(pixels * taps * table_row * f),
        "taps": taps,
        **{k: float(v) for k, v in per_view.items()},
    }


def kfjax_nonzeros(g, views) -> float:
    """Mean number of (pixel, bin) pairs with a nonzero adjoint weight per view, over `views`."""
    import jax.numpy as jnp

    from kfjax.physics import projector
    from kfjax.physics.rays import fan_reach

    reach = fan_reach(g)
    taps = max(1, math.ceil(2 * reach * (1 + 1e-6)))
    (table,) = projector._fan_rows(g, jnp.zeros((g.n_views, g.n_det, 1), jnp.float32), taps)
    columns, rows, x, y = projector._pixel_grid(g, jnp.float32)
    total = 0
    for v in views:
        first = projector._first_bin(g, x, y, jnp.float32(g.angles()[v]), reach, taps)
        for m in range(taps):
            ray = table[v][first + m]
            weight = ray[..., 0] - jnp.abs(ray[..., 1] + ray[..., 2] * columns + ray[..., 3] * rows)
            total += int(jnp.sum(weight > 0))
    return total / len(views)


def astra_nonzeros(g, views) -> float:
    """Mean number of nonzeros per view of ASTRA's `line_fanflat` matrix, over `views`."""
    import astra

    from kfjax.physics.conventions import astra_volume_window, to_astra_vectors

    kind, vectors = to_astra_vectors(g)
    n = g.image_shape[0]
    volume = astra.create_vol_geom(n, n, *astra_volume_window(g))
    geometry = astra.create_proj_geom(kind, g.n_det, vectors[views])
    proj_id = astra.create_projector("line_fanflat", geometry, volume)
    matrix_id = astra.projector.matrix(proj_id)
    nonzeros = astra.matrix.get(matrix_id).nnz
    astra.matrix.delete(matrix_id)
    astra.projector.delete(proj_id)
    return nonzeros / len(views)


def presets(baseline, repeats: int) -> None:
    """Current adjoint against `baseline`'s on the arc-detector presets, batch 1 and 4, round-robin."""
    import jax
    import jax.numpy as jnp

    from kfjax.physics import projector
    from kfjax.physics.geometry import preset

    print()
    print("| preset | batch | kfjax ms | baseline ms | kfjax / baseline | relative L2 difference |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("adn_half", "adn", "dudonet"):
        g = preset(name)
        for batch in (1, 4):
            y = jnp.asarray(np.random.default_rng(0).random((batch, g.n_views, g.n_det, 1), np.float32))
            fns = [jax.jit(lambda s, m=m, g=g: m._adjoint(g, s)) for m in (projector, baseline)]
            ours, theirs = (np.asarray(fn(y)) for fn in fns)
            times = [[], []]
            for _ in range(repeats):
                for fn, t in zip(fns, times):
                    start = time.perf_counter()
                    fn(y).block_until_ready()
                    t.append(time.perf_counter() - start)
            a, b = (float(np.median(t)) * 1e3 for t in times)
            diff = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
            print(f"| {name} | {batch} | {a:.1f} | {b:.1f} | {a / b:.2f} | {diff:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--baseline", default="HEAD", help="git revision of the projector to compare, or 'none'")
    parser.add_argument("--presets", action="store_true", help="also time the arc presets against the baseline")
    args = parser.parse_args()

    import astra
    import jax
    import jax.numpy as jnp

    from kfjax.physics import projector
    from kfjax.physics.conventions import astra_volume_window, to_astra_vectors
    from kfjax.physics.rays import adjoint_taps, bin_reach, fan_reach

    g = geometries()["fan-flat 360"]
    image = phantom()
    n = image.shape[0]
    kind, vectors = to_astra_vectors(g)
    volume = astra.create_vol_geom(n, n, *astra_volume_window(g))
    astra_projector = astra.create_projector(
        "line_fanflat", astra.create_proj_geom(kind, g.n_det, vectors), volume
    )
    sino_id, sino = astra.create_sino(image, astra_projector)
    astra.data2d.delete(sino_id)

    def astra_adjoint():
        data_id, _ = astra.create_backprojection(sino, astra_projector)
        astra.data2d.delete(data_id)

    versions = {"kfjax": projector}
    if args.baseline != "none":
        versions[f"kfjax@{args.baseline}"] = load_revision(args.baseline)
    calls = {}
    for name, module in versions.items():
        for batch in (1, args.batch):
            y = jnp.asarray(np.repeat(sino[None, ..., None], batch, 0).astype(np.float32))
            fn = jax.jit(lambda s, m=module: m._adjoint(g, s))
            fn(y).block_until_ready()
            calls[(name, batch)] = lambda fn=fn, y=y: fn(y).block_until_ready()
    calls[("astra", 1)] = astra_adjoint

    for fn in calls.values():
        fn()
    times = {key: [] for key in calls}
    for _ in range(args.repeats):
        for key, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    median = {key: float(np.median(t)) for key, t in times.items()}
    astra_s = median[("astra", 1)]

    print(
        f"fan-flat 360 adjoint, {g.image_shape[0]}x{g.image_shape[1]}, {g.n_views} views, {g.n_det} bins; "
        f"median of {args.repeats} round-robin after a warm-up; jax {jax.__version__}, astra {astra.__version__}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    )
    print()
    print("| code | batch | ms per call | ms per image | per image / ASTRA |")
    print("|---|---:|---:|---:|---:|")
    for (name, batch), t in median.items():
        print(f"| {name} | {batch} | {t * 1e3:.1f} | {t * 1e3 / batch:.1f} | {t / batch / astra_s:.2f} |")

    taps_now = max(1, math.ceil(2 * fan_reach(g) * (1 + 1e-6)))
    gbs = bandwidth()
    print()
    print(
        f"Window half-width: {fan_reach(g):.4f} bins (widest pixel footprint + margin; bin_reach bound "
        f"{bin_reach(g):.4f}), so {taps_now} taps (bin_reach: {adjoint_taps(g)})"
    )
    print(f"numpy copy bandwidth: {gbs:.1f} GB/s (read + write of a 512 MiB float32 array, best of 5)")
    print()
    print(
        "| code | batch | taps | MB moved / view | MFLOP / view | FLOP / byte | MB gathered / view | "
        "bandwidth-bound ms (all views) | measured ms | measured / bound |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [("kfjax", taps_now, "rows")]
    if args.baseline != "none":
        rows.append((f"kfjax@{args.baseline}", adjoint_taps(g), "columns"))
    for name, taps, kind in rows:
        for batch in (1, args.batch):
            c = counts(g, batch, taps, kind)
            bound_ms = c["bytes"] * g.n_views / (gbs * 1e9) * 1e3
            t = median[(name, batch)] * 1e3
            print(
                f"| {name} | {batch} | {taps} | {c['bytes'] / 1e6:.2f} | {c['flops'] / 1e6:.1f} | "
                f"{c['flops'] / c['bytes']:.1f} | {c['gathered'] / 1e6:.2f} | {bound_ms:.1f} | {t:.1f} | "
                f"{t / bound_ms:.1f} |"
            )
    c = counts(g, 1, taps_now, "rows")
    parts = [k for k in c if k not in ("bytes", "flops", "gathered", "taps")]
    print()
    print("Bytes per view, kfjax batch 1: " + ", ".join(f"{k} {c[k] / 1e3:.0f} kB" for k in parts))
    pixels = g.image_shape[0] * g.image_shape[1]
    views = list(range(7, g.n_views, 23))  # 16 views, none on a multiple of 45°
    ours, theirs = kfjax_nonzeros(g, views), astra_nonzeros(g, views)
    print(
        f"Work per view (mean over views {views}): kfjax evaluates {pixels * taps_now} taps ({taps_now} per pixel), "
        f"{ours:.0f} of them nonzero ({ours / (pixels * taps_now):.0%}); ASTRA line_fanflat matrix has {theirs:.0f} "
        f"nonzeros (kfjax / ASTRA {ours / theirs:.2f})."
    )
    ours_s = median[("kfjax", 1)]
    print(
        f"Time per unit of work at batch 1: kfjax {ours_s / (g.n_views * pixels * taps_now) * 1e9:.2f} ns "
        f"per evaluated tap, {ours_s / (g.n_views * ours) * 1e9:.2f} ns per nonzero; ASTRA "
        f"{astra_s / (g.n_views * theirs) * 1e9:.2f} ns per nonzero."
    )
    if args.presets and args.baseline != "none":
        presets(versions[f"kfjax@{args.baseline}"], max(3, args.repeats // 2))


def write_readme() -> None:
    """`main()` with its printed report also put in the fan_adjoint section of benchmarks/README.md."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        main()
    text = buffer.getvalue().rstrip()
    print(text)
    command = " ".join(["python benchmarks/fan_adjoint.py", *sys.argv[1:], "--write"])
    write_section("fan_adjoint", "Fan-beam adjoint", f"{text}\n\n- command: `{command}`")


if __name__ == "__main__":
    if "--write" in sys.argv:  # replace the fan_adjoint section of benchmarks/README.md with the report
        sys.argv.remove("--write")
        write_readme()
    else:
        main()
