"""`kfjax demo`: the main job. DuDoNet metal artifact reduction on real CT, end to end, in minutes on a CPU.

Fetches the real chest CT once (falls back to procedural anatomy with a one-line notice when offline),
trains the image-domain baseline and DuDoNet at a quarter of the ADN geometry (64², 80 views) for 1,000
steps each on a new simulated metal mask, position and noise every step (the polychromatic CNN-MAR
simulator inside the jitted step), against the CNN-MAR reference reconstruction, with X_LI and X̂ from one
reconstruction operator (`DUAL_DOMAIN`: the settings under which experiments/dudonet finds the dual-domain
gain). Prints PSNR/SSIM outside the metal on the held-out slices (uncorrected, LI, image-only, DuDoNet;
overall and per metal size group) and writes `demo.png` (images and sinograms of one test case) plus both
checkpoints to the workdir. `--full` uses the full ADN geometry (256², 320 views) and the method's default
schedule.
"""

from __future__ import annotations

from pathlib import Path

from kfjax import units
from kfjax.cli._common import EXIT_INTERRUPTED
from kfjax.errors import DataError
from kfjax.runtime import setup_jax

# where the dual-domain gain shows (experiments/dudonet, "Fresh masks, the reference target ..."): scored
# against the reference reconstruction, a new metal mask every step, one reconstruction operator for X_LI and X̂
DUAL_DOMAIN = [
    "data.masks=fresh",
    "data.target=reference",
    "model.li_source=ril",
    "model.ril_method=direct",
    "model.se_padding=circular_rows",
    "loss.sinogram_mean=sinogram",
    "optim.clip_scope=module",
]
QUICK = [  # the CPU scale: a quarter of the ADN geometry, 1,000 steps of batch 4 for each network
    "data.geometry=adn_quarter",
    "data.batch_size=4",
    "train.steps=1000",
    "train.checkpoint_every=500",
    "train.log_every=50",
    "optim.lr=1e-3",
    "optim.schedule=cosine",
    "optim.decay_every=0",
]
VARIANTS = (("image", "image-only U-Net"), ("dual", "DuDoNet"))


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="the main job: a short end-to-end run with a table and a PNG panel")
    d.add_argument("--workdir", default="kfjax-demo")
    d.add_argument("--full", action="store_true", help="the full geometry and schedule (for a GPU)")
    d.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra DuDoNet config overrides")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=run)


def run(args) -> int:
    setup_jax()
    return run_demo(args.workdir, full=args.full, progress=not args.no_progress, extra=args.set)


def _source() -> str:
    """`"ct"` when the real chest CT is cached or can be fetched, else "phantom" (with a notice)."""
    from kfjax.data import sources
    from kfjax.train.loop import notice

    try:
        sources.fetch("chest-ct")
        return "ct"
    except DataError as error:
        notice(f"demo: the real chest CT is not available ({error}); using procedural CT anatomy instead")
        return "phantom"


def _panel(methods, states, path: Path) -> Path:
    """Images and sinograms of the test case with the largest metal."""
    import jax
    import matplotlib.pyplot as plt
    import numpy as np

    from kfjax.viz import save_figure

    test = methods["dual"].dataset("test")
    index = int(np.flatnonzero(test.arrays["size_group"] == 0)[0])
    batch = test[np.array([index])]
    outputs = {mode: jax.jit(m.predict)(states[mode], batch) for mode, m in methods.items()}
    reference = methods["dual"].config.data.target == "reference"
    truth, truth_sino = (batch["ref_image"], batch["ref_sinogram"]) if reference else (batch["gt_image"],
                                                                                       batch["gt_sinogram"])
    name = "reference" if reference else "ground truth"
    images = [
        (name, truth),
        ("metal-affected", batch["ma_image"]),
        ("LI", batch["li_image"]),
        ("image-only U-Net", outputs["image"]["x_out"]),
        ("DuDoNet", outputs["dual"]["x_out"]),
    ]
    sinos = [
        ("LI sinogram", batch["li_sinogram"]),
        ("metal trace", batch["metal_trace"]),
        ("DuDoNet sinogram", outputs["dual"]["y_out"]),
        (f"{name} sinogram", truth_sino),
        (f"|DuDoNet - {name}| image", np.abs(np.asarray(outputs["dual"]["x_out"]) - truth)),
    ]
    fig, axes = plt.subplots(2, 5, figsize=(13, 5.6))
    for ax, (title, image) in zip(axes[0], images):
        ax.imshow(np.asarray(image)[0, ..., 0], cmap="gray", vmin=0.0, vmax=1.6)  # μ/μ_water: water = 1
        ax.set_title(title, fontsize=9)
    for ax, (title, image) in zip(axes[1], sinos):
        ax.imshow(
            np.asarray(image)[0, ..., 0],
            cmap="magma" if "|" in title else "gray",
            aspect="auto",
            vmax=0.3 if "|" in title else None,
        )
        ax.set_title(title, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("metal artifact reduction on a held-out slice (images: μ / μ_water, window 0-1.6)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def run_demo(workdir: str | Path, full: bool = False, progress: bool = True, extra: list[str] | None = None) -> int:
    """Train and compare; returns the exit code. `extra` overrides are appended (tests use a tiny setup)."""
    import jax

    from kfjax.methods import registry
    from kfjax.train.loop import evaluate, notice, train

    workdir = Path(workdir)
    source = "phantom" if any(o == "data.source=phantom" for o in extra or []) else _source()
    overrides = DUAL_DOMAIN + ([] if full else QUICK) + [f"data.source={source}"] + list(extra or [])
    methods, states, scores = {}, {}, {}
    for mode, label in VARIANTS:
        method = registry.build("dudonet", overrides=overrides + [f"model.mode={mode}"])
        cfg = method.config
        notice(
            f"demo: {label}, {cfg.train.steps} steps, {cfg.data.geometry} geometry, "
            f"{'real chest CT' if source == 'ct' else 'procedural anatomy'}, {jax.device_count()} "
            f"{jax.default_backend()} device(s); workdir {workdir / mode}"
        )
        result = train(method, workdir / mode, progress=progress, evaluate_at_end=False)
        if result.status != "completed":
            return EXIT_INTERRUPTED
        methods[mode], states[mode] = method, result.state
        scores[mode] = evaluate(method, result.state, split="test")
    n_test = len(methods["dual"].dataset("test"))
    s = scores["dual"]
    reference = methods["dual"].config.data.target == "reference"
    target = ("the reference reconstruction (FBP of the metal-free polychromatic sinogram)" if reference
              else "the metal-free image")
    print(
        f"\nHeld-out test slices x 10 metal masks ({n_test} cases): PSNR (dB) / SSIM against {target}, "
        f"outside the metal, μ in [0, {units.MU_RANGE:g}] 1/mm mapped to [0, 1]\n"
    )
    print("| method | PSNR | SSIM | " + " | ".join(f"PSNR g{g}" for g in range(5)) + " |\n|---|---|---|" + "---|" * 5)
    rows = [("uncorrected", s, "ma_"), ("linear interpolation (LI)", s, "li_")]
    rows += [(f"{label} ({methods[mode].config.train.steps} steps)", scores[mode], "") for mode, label in VARIANTS]
    for label, values, prefix in rows:
        prefix += "ref_" if reference else ""
        groups = " | ".join(f"{values[f'{prefix}psnr_g{g}']:.2f}" for g in range(5))
        print(f"| {label} | {values[prefix + 'psnr']:.2f} | {values[prefix + 'ssim']:.4f} | {groups} |")
    print("\ng0 = the largest metal ... g4 = the smallest (2 of the 10 test masks each)")
    panel = _panel(methods, states, workdir / "demo.png")
    print(f"\nwrote {panel} and the checkpoints in {workdir / 'dual'} and {workdir / 'image'}")
    return 0
