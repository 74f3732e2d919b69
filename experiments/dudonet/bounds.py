"""What a perfect sinogram network could give DuDoNet: upper bounds per metal size, resolution and target.

No training. For every test pair of `mar-ct` (the real chest CT's test slices x the 10 test masks) at 64²,
128² and 256² (the ADN geometry and its half and quarter), the images below are scored outside the metal
(PSNR on μ clipped to [0, 0.05] 1/mm and mapped to [0, 1], as every MAR table here) against both targets:
the metal-free μ ("image") and the CNN-MAR reference reconstruction ("reference": the FBP of the metal-free
polychromatic, beam-hardening corrected sinogram).

    LI                     FBP of the LI sinogram (the network's input image)
    perfect trace, RIL     the LI sinogram with the metal trace replaced by the target's own sinogram (the
                           monochromatic one for "image", the reference one for "reference"), through
                           DuDoNet's Radon inversion layer (rebinning FBP): a perfect SE-Net without IE-Net
    perfect trace, FBP     the same sinogram through the direct fan-beam FBP
    whole target, RIL      the target's whole sinogram through the Radon inversion layer
    whole target, FBP      the same through the direct FBP: what reconstruction alone loses at this sampling
                           (the blur ceiling of any sinogram-domain method); for the reference target this is
                           the target itself (PSNR ∞), and the RIL row measures the rebinning's own loss

    python experiments/dudonet/bounds.py --write     # compute what is missing, write the README section

Each geometry saves a run record in `runs/bounds/<geometry>/record.json` (settings, times, machine, metrics);
finished geometries are reused. The section is built from the records only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import records  # noqa: E402  (experiments/records.py)

GEOMETRIES = {"adn_quarter": 64, "adn_half": 128, "adn": 256}
TARGETS = {"image": ("gt_image", "gt_sinogram"), "reference": ("ref_image", "ref_sinogram")}
BOUNDS = ("LI", "perfect trace, RIL", "perfect trace, FBP", "whole target, RIL", "whole target, FBP")
GROUPS = 5


def bound_images(a: dict, geometry, target: str, batch: int = 8) -> dict[str, np.ndarray]:
    """`{bound: (N, H, W, 1) μ}` for one target, computed in batches."""
    import jax
    import jax.numpy as jnp

    from kfjax.physics.fbp import fbp

    _, sinogram_key = TARGETS[target]
    direct = jax.jit(lambda s: fbp(s, geometry))
    ril = jax.jit(lambda s: fbp(s, geometry, fan_method="rebin"))
    out = {name: [] for name in BOUNDS}
    for start in range(0, len(a["li_sinogram"]), batch):
        rows = slice(start, start + batch)
        li, trace, truth = (jnp.asarray(a[k][rows]) for k in ("li_sinogram", "metal_trace", sinogram_key))
        perfect = jnp.where(trace > 0, truth, li)
        for name, image in (("LI", a["li_image"][rows]), ("perfect trace, RIL", ril(perfect)),
                            ("perfect trace, FBP", direct(perfect)), ("whole target, RIL", ril(truth)),
                            ("whole target, FBP", direct(truth))):
            out[name].append(np.asarray(image))
    return {k: np.concatenate(v) for k, v in out.items()}


def measure(geometry_name: str) -> dict:
    """The record of one geometry: PSNR per bound, target and size group, and overall."""
    import jax.numpy as jnp

    from kfjax.config import to_dict
    from kfjax.data.mar import mar_data
    from kfjax.methods.common.mar import unit_scores
    from kfjax.methods.registry import build as build_method
    from kfjax.units import to_unit_range

    clock = records.Clock()
    method = build_method("dudonet", overrides=[f"data.geometry={geometry_name}"])
    settings = {"geometry": geometry_name, "source": "ct", "split": "test", "material": "Ti",
                "dudonet_settings": to_dict(method.config)}
    a = mar_data("test", "ct", geometry=geometry_name, slice_step=1)
    metrics = {}
    for target, (image_key, _) in TARGETS.items():
        images = bound_images(a, method.geometry(), target)
        truth = to_unit_range(jnp.asarray(a[image_key]))
        metal = jnp.asarray(a["metal_mask"], jnp.float32)
        for name, image in images.items():
            psnr = np.asarray(unit_scores(to_unit_range(jnp.asarray(image)), truth, metal)["psnr"])
            metrics[f"{target}|{name}|all"] = float(np.mean(psnr))
            for g in range(GROUPS):
                metrics[f"{target}|{name}|g{g}"] = float(np.mean(psnr[a["size_group"] == g]))
    return records.make(method="bounds", variant=geometry_name, seed=None, settings=settings, metrics=metrics,
                        clock=clock, data={"n_test": int(len(a["size_group"]))})


def table(found: list[dict]) -> str:
    lines = ["| size | target | bound | PSNR g0 | g1 | g2 | g3 | g4 | all |", "|---|---|---|---|---|---|---|---|---|"]
    for record in found:
        size = GEOMETRIES.get(record["variant"], record["variant"])
        for target in TARGETS:
            for name in BOUNDS:
                m = record["metrics"]
                keys = [f"{target}|{name}|g{g}" for g in range(GROUPS)] + [f"{target}|{name}|all"]
                cells = ["∞" if m[k] is None else f"{m[k]:.2f}" for k in keys]  # None: saved inf
                lines.append(f"| {size}² | {target} | {name} | " + " | ".join(cells) + " |")
    n = records.describe(found, "data.n_test")
    lines += ["", f"Test pairs per size: {n} (test slices x 10 masks; g0 = largest metal ... g4 = smallest). "
              + records.environment_summary(found)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=list(GEOMETRIES))
    parser.add_argument("--runs", default=str(HERE / "runs" / "bounds"))
    parser.add_argument("--readme", default=str(HERE / "README.md"))
    parser.add_argument("--write", action="store_true", help="replace the bounds section of the README")
    args = parser.parse_args()
    found = []
    for geometry in args.geometries:
        folder = Path(args.runs) / geometry
        if not records.exists(folder):
            records.save(measure(geometry), folder)
            print(f"{geometry}: measured", flush=True)
        found.append(records.load(folder))
    text = table(found)
    print(text)
    if args.write:
        records.write_section(args.readme, "bounds", text)


if __name__ == "__main__":
    main()
