"""The user path on a trained run: ``kfjax register --method point2`` on test cases exported as a user's files.

    python experiments/registration/user_path.py --write                 # chest, the first seed's run, 8 cases
    python experiments/registration/user_path.py --subject head --write

Each of the first ``--cases`` test cases of ``run.py``'s benchmark is written out the way a user has it: the
CT the DRRs are rendered from as a HU NIfTI (``kfjax.units.mu_to_hu`` of the subject's μ volume), both X-rays as
NIfTI line integrals, the C-arm geometry JSON (extrinsic form) and the start as a pose JSON. ``kfjax register``
then runs on those files with the run's checkpoint (``--method point2``, then with ``--refine``), in this
process, as a user would call it. Per case, the record keeps the mTRE (mm, the subject's target points) of:
the evaluation path of ``run.py`` (``Point2Method.predict``: POIs from the subject's bone labels), the command
(POIs from the CT's voxels of at least 250 HU, ``scene_for``), the command with ``--refine``, and the largest
difference between the command's pose and ``Point2Method.estimate`` on the same ``scene_for`` scene in this
process (the command must be that computation). Written into ``runs/<settings>/user-path/`` and the README's
``user_path_<subject>`` section.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import records  # noqa: E402  (experiments/records.py)
import run as benchmark  # noqa: E402  (experiments/registration/run.py: its settings and helpers)


def export(folder: Path, method, cases: dict, k: int) -> dict:
    """Case ``k`` as a user's files in ``folder``: ct.nii.gz (HU), view<v>.nii.gz (line integrals, one slice
    (W, H, 1) per view), geometry.json, start.json. Returns their paths."""
    import nibabel as nib

    from kfjax.units import MU_WATER_DRR, mu_to_hu

    s, cam = method.subject, method.camera
    nib.save(nib.Nifti1Image(np.asarray(mu_to_hu(s.volume, MU_WATER_DRR), np.float32), s.affine),
             folder / "ct.nii.gz")
    views = []
    for v, image in enumerate(np.asarray(cases["xray"][k])):
        views.append(folder / f"view{v + 1}.nii.gz")
        nib.save(nib.Nifti1Image(image.T[..., None].astype(np.float32), np.eye(4)), views[-1])
    geometry = {"sdd": cam.sdd, "pixel_spacing": cam.dx, "detector": [cam.height, cam.width],
                "views": [{"extrinsic": np.asarray(e, np.float64).tolist()} for e in method.extrinsics]}
    (folder / "geometry.json").write_text(json.dumps(geometry))
    (folder / "start.json").write_text(json.dumps({"transform": np.asarray(cases["init_transform"][k],
                                                                          np.float64).tolist()}))
    return {"ct": folder / "ct.nii.gz", "views": views, "geometry": folder / "geometry.json",
            "start": folder / "start.json"}


def register(files: dict, checkpoint: Path, out: Path, *extra: str) -> np.ndarray:
    """``kfjax register`` on ``files`` with the run in ``checkpoint``: the pose (4, 4) it writes."""
    from kfjax.cli import main

    argv = ["register", str(files["ct"]), *[a for v in files["views"] for a in ("--xray", str(v))],
            "--geometry", str(files["geometry"]), "--init", str(files["start"]), "--method", "point2",
            "--checkpoint", str(checkpoint), "--voxel", "0", "--out", str(out), *extra]
    if main(argv) != 0:
        raise SystemExit(f"kfjax register failed on {files['ct'].parent}")
    return np.asarray(json.loads((out / "pose.json").read_text())["transform"], np.float64)


def run(args) -> dict:
    from kfjax.config import to_dict
    from kfjax.train.loop import restore_for_eval

    seed = args.seeds[0]
    method = benchmark.build(seed, args)
    run_folder = benchmark.settings_folder(args) / f"point2-s{seed}"
    checkpoint = run_folder / "work"
    if not records.exists(run_folder) or not (checkpoint / "config.json").exists():
        raise SystemExit(f"no finished point2 run with its checkpoint in {run_folder}; run run.py first")
    folder = benchmark.settings_folder(args) / "user-path"
    clock = records.Clock()
    state = restore_for_eval(method, checkpoint)
    cases = benchmark.first_cases(method.dataset("test").arrays, args.cases)
    evaluation, _ = benchmark.predict(method, state, cases)
    rows = {"evaluation": [], "command": [], "command_refined": [], "command_vs_estimate": []}
    # the command's scene of the exported CT (one scene: estimate compiles once for every case)
    scene = method.scene_for(method.subject.volume, method.subject.affine, method.subject.centre, method.camera,
                             method.extrinsics)
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.cases):
            case = Path(tmp) / f"case{k}"
            case.mkdir()
            files = export(case, method, cases, k)
            pose = register(files, checkpoint, case / "point2")
            refined = register(files, checkpoint, case / "refined", "--refine")
            direct = np.asarray(method.estimate(state, scene, cases["xray"][k], cases["init_transform"][k])[
                "transform"], np.float64)
            one = {key: value[k:k + 1] for key, value in cases.items()}
            for name, t in (("evaluation", evaluation[k]), ("command", pose), ("command_refined", refined)):
                rows[name].append(float(benchmark.mtre(method, t[None], one)[0]))
            rows["command_vs_estimate"].append(float(np.max(np.abs(pose - direct))))
            print(f"case {k}: evaluation {rows['evaluation'][-1]:.2f} mm, command {rows['command'][-1]:.2f} mm, "
                  f"refined {rows['command_refined'][-1]:.2f} mm", file=sys.stderr)
    record = records.make(method="point2", variant="user-path", seed=seed, settings=to_dict(method.config),
                          metrics=rows, clock=clock, data={"cases": args.cases, "checkpoint": str(
                              checkpoint.relative_to(HERE) if checkpoint.is_relative_to(HERE) else checkpoint)})
    folder.mkdir(parents=True, exist_ok=True)
    records.save(record, folder)
    return records.load(folder)


def table(record: dict) -> str:
    m = record["metrics"]
    lines = ["| case | evaluation path (mm) | `kfjax register --method point2` (mm) | + `--refine` (mm) | "
             "max \\|command − estimate\\| |", "|---|---|---|---|---|"]
    for k in range(len(m["command"])):
        lines.append(f"| {k} | {m['evaluation'][k]:.2f} | {m['command'][k]:.2f} | {m['command_refined'][k]:.2f} | "
                     f"{m['command_vs_estimate'][k]:.1e} |")
    lines.append(f"| median | {np.median(m['evaluation']):.2f} | {np.median(m['command']):.2f} | "
                 f"{np.median(m['command_refined']):.2f} | |")
    lines += ["", f"mTRE per test case (the first {record['data']['cases']}, the "
              f"{records.describe([record], 'settings.data.subject')} benchmark), the run "
              f"`{record['data']['checkpoint']}` (seed {record['seed']}). The last column compares the command's "
              "pose matrix with `Point2Method.estimate` on the same scene in one process.", "",
              records.environment_summary([record])]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchmark.benchmark_arguments(p)  # --seeds: the first seed's run is used
    p.add_argument("--cases", type=int, default=8, help="test cases exported and registered")
    p.add_argument("--write", action="store_true", help="replace the user_path_<subject> section of the README")
    args = p.parse_args()
    from kfjax.runtime import setup_jax

    setup_jax()
    folder = benchmark.settings_folder(args) / "user-path"
    record = records.load(folder) if records.exists(folder) else run(args)
    text = table(record)
    print(text)
    if args.write:
        records.write_section(args.readme, f"user_path_{args.subject}", text)


if __name__ == "__main__":
    main()
