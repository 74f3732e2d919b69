"""`kfjax infer METHOD --workdir DIR --input FILE --out FILE.nii.gz`: apply a trained method to a user's volume.

Inputs are NIfTI files, DICOM series or PNG images: `--input FILE` for a method with one input,
`--input NAME=FILE` (once per input) for several. Only the `infer.*` settings of the run's config may change
(`--set infer.KEY=VALUE`); `--metal-threshold HU` is `--set infer.metal_threshold=HU`. The output is NIfTI
for a method whose `Inference.output` is "volume"; for "landmarks" it is `--out FILE.json` (names, pixel,
voxel and world coordinates) plus an overlay `FILE.png` next to it
(`kfjax.methods.common.landmarks.write_landmarks`); for "images" it is `--out DIR`, a folder the result's
`write(DIR)` fills (created if missing). Every file is written under a temporary name and
renamed, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kfjax.errors import ConfigError, InputError
from kfjax.runtime import setup_jax


def add_parser(sub) -> None:
    inf = sub.add_parser("infer", help="apply a trained method to a volume or image (NIfTI, DICOM, PNG)",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    inf.add_argument("method")
    inf.add_argument("--workdir", "--checkpoint", required=True, help="folder of the trained run")
    inf.add_argument("--input", required=True, action="append", metavar="FILE|NAME=FILE",
                     help="input volume; NAME=FILE once per input for a method with several inputs")
    inf.add_argument("--out", required=True,
                     help="output .nii or .nii.gz; landmark methods: .json (+ overlay .png); image methods: a folder")
    inf.add_argument("--set", nargs="*", default=[], metavar="infer.KEY=VALUE",
                     help="inference settings, e.g. infer.metal_threshold=3000 (only infer.* can change)")
    inf.add_argument("--metal-threshold", type=float,
                     help="HU at and above which a voxel is metal (MAR methods; = --set infer.metal_threshold=HU)")
    inf.add_argument("--no-progress", action="store_true")
    inf.set_defaults(func=run)

    # The methods `kfjax infer` applies to, listed under --help only (importing them all costs seconds).
    format_help = inf.format_help

    def format_help_with_methods() -> str:
        if inf.epilog is None:
            inf.epilog = _methods_epilog()
        return format_help()

    inf.format_help = format_help_with_methods


def _methods_epilog() -> str:
    from kfjax.methods import registry

    lines = []
    for name in registry.names():
        spec = registry.get(name).inference
        if spec is not None:
            inputs = " ".join(spec.inputs) if len(spec.inputs) > 1 else spec.inputs[0]
            lines.append(f"  {name:12s} inputs: {inputs:20s} {spec.help}".rstrip())
    return "methods:\n" + "\n".join(lines) if lines else "no registered method has inference"


def infer_overrides(method: str, config, settings: list[str], metal_threshold: float | None) -> list[str]:
    """The `--set` items (only `infer.*` keys) plus `--metal-threshold` as `infer.metal_threshold=X`."""
    from kfjax.config import valid_keys

    for item in settings:
        key = item.partition("=")[0].strip()
        if not key.startswith("infer."):
            raise ConfigError(f"--set '{item}': only infer.* settings can change after training; "
                              f"retrain with `kfjax train {method} --set ...` to change {key or 'others'}")
    overrides = list(settings)
    if metal_threshold is not None:
        if "infer.metal_threshold" not in valid_keys(config):
            raise ConfigError(f"--metal-threshold is for metal artifact reduction; '{method}' does not take it "
                              "(its config has no infer.metal_threshold)")
        value = int(metal_threshold) if float(metal_threshold).is_integer() else metal_threshold
        overrides.append(f"infer.metal_threshold={value}")
    return overrides


def input_files(method: str, names: tuple[str, ...], items: list[str]) -> dict[str, str]:
    """`{input name: path}` from the `--input` items: `FILE` for one input, `NAME=FILE` for each of several."""
    if len(names) == 1:
        if len(items) != 1:
            raise InputError(f"'{method}' takes one input; give --input FILE once")
        name, sep, path = items[0].partition("=")
        files = {names[0]: path if sep and name == names[0] else items[0]}
    else:
        files = {}
        for item in items:
            name, sep, path = item.partition("=")
            if not sep or name not in names:
                raise InputError(f"--input '{item}' is not NAME=FILE with NAME one of {', '.join(names)} "
                                 f"('{method}' takes {len(names)} inputs)")
            if name in files:
                raise InputError(f"--input {name}=... is given twice; give each of {', '.join(names)} once")
            files[name] = path
        missing = [n for n in names if n not in files]
        if missing:
            raise InputError(f"'{method}' also needs --input {missing[0]}=FILE (its inputs: {', '.join(names)})")
    for name, path in files.items():
        if not path:
            raise InputError(f"--input {name} has an empty file name; give a NIfTI file or DICOM folder")
    return files


def run(args) -> int:
    setup_jax()
    from kfjax.io import check_finite, load_volume, save_volume
    from kfjax.methods import registry
    from kfjax.train.loop import restore_for_eval

    cls = registry.get(args.method)
    if cls.inference is None:
        raise ConfigError(f"method '{args.method}' has no inference; `kfjax list` marks the methods "
                          "`kfjax infer` applies to")
    overrides = infer_overrides(args.method, cls.Config(), args.set, args.metal_threshold)
    files = input_files(args.method, tuple(cls.inference.inputs), args.input)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise InputError(f"output folder '{out.parent}' does not exist; create it or choose another --out")
    landmarks, images = cls.inference.output == "landmarks", cls.inference.output == "images"
    if images:
        if out.exists() and not out.is_dir():
            raise InputError(f"--out '{out}' is a file; '{args.method}' writes several images: give a folder")
    elif landmarks and out.suffix.lower() != ".json":
        raise InputError(f"--out '{out}' must end in .json: '{args.method}' writes landmarks as JSON "
                         "(and an overlay PNG next to it)")
    elif not landmarks and not out.name.endswith((".nii", ".nii.gz")):
        raise InputError(f"--out '{out}' must end in .nii or .nii.gz")

    method = registry.from_workdir(args.method, args.workdir, overrides)
    volumes = {}
    for name, path in files.items():
        volumes[name] = load_volume(path)
        check_finite(volumes[name].array, f"input '{path}'")
    state = restore_for_eval(method, args.workdir)
    result = method.infer(state, volumes, progress=not args.no_progress)
    if images:
        written = result.write(out)
        print(f"wrote {', '.join(str(p) for p in written)}")
        return 0
    if landmarks:
        from kfjax.methods.common.landmarks import write_landmarks

        written = write_landmarks(result, out)
        print(f"wrote {written[0]} and {written[1]}")
        return 0
    suffix = ".nii.gz" if out.name.endswith(".nii.gz") else ".nii"
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}{suffix}")
    try:
        save_volume(result, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {out}")
    return 0
