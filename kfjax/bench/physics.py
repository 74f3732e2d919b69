"""Throughput of the physics operators, jitted and batched, in float32, on synthetic inputs (nothing fetched).

Per CT geometry: the forward projector `(B, H, W, 1) -> (B, views, bins, 1)`, its adjoint, FBP (the weighted
fan-beam FBP) and DuDoNet's Radon inversion layer (FBP with `fan_method="rebin"`), on the fan-beam presets
of the metal-artifact data (`kfjax.physics.geometry.preset`). Per detector size: the DRR renderer (Joseph,
cone beam) of B poses around an AP view of a volume on the chest CT's grid.

    rows = bench_physics(sizes=(200,), batch=32, geometries=("adn:256",))   # 256², 256 views; 200² DRRs
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from kfjax.bench.timing import WARMUP, compile_aot, summary, time_calls
from kfjax.errors import ConfigError
from kfjax.physics.carm import CArm, from_diffdrr
from kfjax.physics.drr import make_renderer, principal_axis
from kfjax.physics.fbp import fbp
from kfjax.physics.geometry import PRESETS, FanBeam, preset
from kfjax.physics.projector import make_projector
from kfjax.train.writers import Progress
from kfjax.units import MU_WATER_70KEV, MU_WATER_DRR

SEED = 0  # of the synthetic images and volume
GEOMETRIES = ("adn", "dudonet")  # the MAR presets: ADN's 256² and DuDoNet's 416², 640 views
DRR_SIZES = (128, 256, 512)  # detector sides, pixels
CT_SHAPE = (512, 512, 133)  # voxels of the chest CT the DRR benchmarks use (DiffDRR's example)
CT_VOXEL_MM = (0.703, 0.703, 2.5)  # its voxel size; a smaller `volume` keeps the same extent
SDD_MM = 1020.0  # source to detector (DiffDRR's example)
DETECTOR_MM = 400.0  # detector side
SOURCE_MM = 850.0  # source to isocentre of the AP pose
POSE_SPREAD = 0.2  # the B poses turn about the patient axis by up to ± this many radians from AP


@dataclasses.dataclass(frozen=True)
class Suite:
    """What `kfjax bench physics` runs when an option is not given."""

    geometries: tuple[str, ...] = GEOMETRIES
    sizes: tuple[int, ...] = DRR_SIZES
    volume: tuple[int, int, int] = CT_SHAPE
    batch: int = 8
    steps: int = 10


TINY = Suite(geometries=("adn_quarter",), sizes=(16,), volume=(16, 16, 8), batch=2, steps=3)  # seconds on a CPU


def parse_geometry(spec: str) -> FanBeam:
    """"PRESET" or "PRESET:VIEWS" (the preset with that many views over the same 360°) -> FanBeam."""
    name, _, views = spec.partition(":")
    if name not in PRESETS:
        raise ConfigError(f"unknown geometry '{spec}'; write PRESET or PRESET:VIEWS with PRESET one of "
                          f"{', '.join(PRESETS)} (e.g. adn:256)")
    geometry = preset(name)
    if views:
        if not views.isdigit() or int(views) < 1:
            raise ConfigError(f"geometry '{spec}': the number of views after ':' must be a positive integer")
        geometry = dataclasses.replace(geometry, n_views=int(views))
    return geometry


def _row(op: str, label: str, item: str, batch: int, shape, compiled, steps: int, bar) -> dict:
    """Time `compiled` on its arguments; one physics row (see `kfjax.bench`)."""
    stats = summary(time_calls(compiled.call, steps, bar))
    flops_per_s = None if compiled.flops is None else compiled.flops / stats["median_s"]
    return {
        "key": f"{op} {label} b{batch}",
        "op": op,
        "geometry": label,
        "shape": [int(n) for n in shape],
        "dtype": "float32",
        "batch": batch,
        "item": item,
        "steps": steps,
        "compile_s": compiled.compile_s,
        **stats,
        "items_per_s": batch / stats["median_s"],
        "flops_per_step": compiled.flops,
        "flops_per_s": flops_per_s,
        "xla_temp_bytes": compiled.temp_bytes,
    }


def _bound(compiled, *args):
    """`compiled` with `call` taking no arguments (the timed call)."""
    return dataclasses.replace(compiled, call=lambda: compiled.call(*args))


def _projector_rows(spec: str, batch: int, steps: int, bar) -> list[dict]:
    geometry = parse_geometry(spec)
    forward, adjoint = make_projector(geometry)
    rng = np.random.default_rng(SEED)
    image = jnp.asarray(rng.random((batch, *geometry.image_shape, 1), dtype=np.float32) * MU_WATER_70KEV)
    compiled_forward = compile_aot(jax.jit(forward), image)
    sinogram = compiled_forward.call(image)
    ops = (
        ("adjoint", "backprojections", adjoint),
        ("fbp", "reconstructions", lambda s: fbp(s, geometry)),
        ("ril", "reconstructions", lambda s: fbp(s, geometry, fan_method="rebin")),
    )
    rows = [_row("forward", spec, "projections", batch, image.shape, _bound(compiled_forward, image), steps, bar)]
    for op, item, fn in ops:
        compiled = compile_aot(jax.jit(fn), sinogram)
        rows.append(_row(op, spec, item, batch, sinogram.shape, _bound(compiled, sinogram), steps, bar))
    return rows


def _drr_row(size: int, volume: tuple[int, int, int], batch: int, steps: int, bar) -> dict:
    shape = np.asarray(volume)
    spacing = np.asarray(CT_SHAPE) * np.asarray(CT_VOXEL_MM) / shape  # same extent as the chest CT
    affine = np.diag([*spacing, 1.0]).astype(np.float32)
    affine[:3, 3] = -(shape - 1) / 2 * spacing  # volume centred on the isocentre
    camera = CArm(sdd=SDD_MM, height=size, width=size, dx=DETECTOR_MM / size, dy=DETECTOR_MM / size)
    turn = np.linspace(-POSE_SPREAD, POSE_SPREAD, batch)
    rot = np.stack([turn, np.zeros(batch), np.zeros(batch)], -1)
    xyz = np.tile([0.0, SOURCE_MM, 0.0], (batch, 1))
    extrinsic = from_diffdrr(jnp.asarray(rot, jnp.float32), jnp.asarray(xyz, jnp.float32))
    axes = principal_axis(camera, extrinsic, affine)
    render = make_renderer(camera, axis=int(axes.flat[0]) if np.all(axes == axes.flat[0]) else None)
    mu = jnp.asarray(np.random.default_rng(SEED).random(volume, dtype=np.float32) * MU_WATER_DRR)
    affine = jnp.asarray(affine)
    compiled = compile_aot(jax.jit(render), mu, affine, extrinsic)
    return _row("drr", f"{size}x{size}", "DRRs", batch, volume, _bound(compiled, mu, affine, extrinsic), steps, bar)


def bench_physics(sizes=DRR_SIZES, batch: int = 8, steps: int = 10, progress: bool = True,
                  geometries=GEOMETRIES, volume=CT_SHAPE) -> list[dict]:
    """Rows of forward, adjoint, fbp and ril per geometry spec, then one DRR row per detector size.

    `sizes`: DRR detector sides (pixels); `batch`: images (or DRR poses) per call; `steps`: timed calls
    after 2 warm-up calls; `geometries`: "PRESET" or "PRESET:VIEWS" specs; `volume`: DRR volume voxels (X, Y, Z).
    """
    if steps < 1 or batch < 1:
        raise ConfigError(f"steps and batch must be at least 1, got steps={steps}, batch={batch}")
    if any(int(s) < 1 for s in sizes) or len(volume) != 3 or min(volume) < 2:
        raise ConfigError(f"DRR sizes must be positive and the volume 3 sides of at least 2 voxels, "
                          f"got sizes {list(sizes)}, volume {list(volume)}")
    for spec in geometries:  # every spec fails before any work
        parse_geometry(spec)
    calls = (WARMUP + steps) * (4 * len(geometries) + len(sizes))
    bar = Progress(0, calls, enabled=progress, desc="bench physics")
    rows = []
    try:
        for spec in geometries:
            rows += _projector_rows(spec, batch, steps, bar)
        for size in sizes:
            rows.append(_drr_row(int(size), tuple(int(n) for n in volume), batch, steps, bar))
    finally:
        bar.close()
    return rows
