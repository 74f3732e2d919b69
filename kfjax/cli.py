"""The `kfjax` command line.

    kfjax list | train METHOD | eval METHOD | demo | plot WORKDIR | info FILE | infer METHOD

Bad input (missing or corrupt file, wrong shape, NaN, unknown method or config key) prints one line
saying what is wrong and what to do, and exits with code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kfjax.errors import ConfigError, InputError, KfjaxError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _setup_jax(distributed: bool = False) -> None:
    """Persistent compilation cache; multi-process initialisation when asked."""
    import jax

    cache = Path(os.environ.get("KFJAX_CACHE", Path.home() / ".cache" / "kfjax")) / "jax-compile"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except OSError:
        pass  # a read-only home only costs compile time
    if distributed:
        _init_distributed()


def _init_distributed() -> None:
    """`jax.distributed.initialize()` with the coordinator from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID when set, else from the cluster's own environment (SLURM, Open MPI, Cloud TPU, ...)."""
    import jax

    # CPU processes need gloo for cross-process collectives; accelerators ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if "JAX_NUM_PROCESSES" in os.environ:
        kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if "JAX_PROCESS_ID" in os.environ:
        kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    try:
        jax.distributed.initialize(coordinator_address=os.environ.get("JAX_COORDINATOR_ADDRESS"), **kwargs)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(
            f"--distributed could not start ({str(e).splitlines()[0]}); set JAX_COORDINATOR_ADDRESS=host:port, "
            "JAX_NUM_PROCESSES and JAX_PROCESS_ID, or run under a supported cluster manager"
        ) from None


def build_method(name: str, config_file: str | None = None, overrides: list[str] | None = None):
    """Method instance from its name, an optional JSON config file and `key=value` overrides."""
    from kfjax import registry
    from kfjax.config import apply_dict, apply_overrides, load_json

    cls = registry.get(name)
    config = cls.Config()
    if config_file:
        data = load_json(config_file)
        if "config" in data and "method" in data:
            if data["method"] != name:
                raise ConfigError(f"config file '{config_file}' is for method '{data['method']}', not '{name}'")
            data = data["config"]
        config = apply_dict(config, data)
    config = apply_overrides(config, overrides or [])
    return cls(config)


def _method_from_workdir(name: str, workdir: str):
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise InputError(f"'{workdir}' has no config.json; point --workdir at the folder `kfjax train` wrote")
    return build_method(name, str(path))


def cmd_list(args) -> int:
    from kfjax import registry

    for name in registry.names():
        cls = registry.get(name)
        print(f"{name:12s} {cls.description}  [{cls.paper}]")
    return 0


def cmd_train(args) -> int:
    _setup_jax(args.distributed)
    from kfjax.train.loop import train

    method = build_method(args.method, args.config, args.set)
    workdir = args.workdir or str(Path("runs") / args.method)
    result = train(method, workdir, progress=not args.no_progress)
    if result.status == "interrupted":
        return EXIT_INTERRUPTED
    _print_table(result.eval_metrics, f"{args.method} on the validation split")
    return 0


def _print_table(values: dict[str, float], title: str) -> None:
    import jax

    if jax.process_index() != 0 or not values:
        return
    print(f"\n{title}\n")
    print("| metric | value |\n|---|---|")
    for k, v in values.items():
        print(f"| {k} | {v:.4f} |")


def cmd_eval(args) -> int:
    _setup_jax()
    from kfjax.train.loop import evaluate, restore_for_eval

    method = _method_from_workdir(args.method, args.workdir)
    state = restore_for_eval(method, args.workdir)
    values = evaluate(method, state, split=args.split)
    out = Path(args.workdir) / f"eval_{args.split}.json"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"method": args.method, "split": args.split, "metrics": values}, indent=2) + "\n")
    tmp.replace(out)
    _print_table(values, f"{args.method} on the {args.split} split ({out})")
    return 0


def cmd_demo(args) -> int:
    _setup_jax()
    from kfjax.demo import run_demo

    return run_demo(args.workdir, full=args.full, progress=not args.no_progress, extra=args.set)


def cmd_plot(args) -> int:
    from kfjax.train.writers import read_metrics
    from kfjax.viz import metric_curves

    workdir = Path(args.workdir)
    if not workdir.is_dir():
        raise InputError(f"workdir '{workdir}' does not exist; pass the folder `kfjax train` wrote")
    records = read_metrics(workdir)
    if not records:
        raise InputError(f"'{workdir / 'metrics.jsonl'}' is missing or empty; train first, then plot")
    out = Path(args.out) if args.out else workdir / "curves.png"
    if not out.parent.is_dir():
        raise InputError(f"output folder '{out.parent}' does not exist; create it or choose another --out")
    metric_curves(records, out)
    print(f"wrote {out}")
    return 0


def cmd_info(args) -> int:
    import numpy as np

    from kfjax.io import load_volume

    volume = load_volume(args.path)
    a = volume.array
    finite = np.isfinite(a)
    print(f"file     {args.path}")
    print(f"shape    {a.shape}  dtype {a.dtype}")
    print(f"spacing  {tuple(round(float(s), 4) for s in volume.spacing)} mm")
    print(f"range    [{a[finite].min() if finite.any() else 'n/a'}, {a[finite].max() if finite.any() else 'n/a'}]")
    if not finite.all():
        print(f"warning  {int((~finite).sum())} NaN/Inf values")
    print("affine   " + np.array2string(volume.affine, precision=4, suppress_small=True).replace("\n", "\n         "))
    return 0


def cmd_infer(args) -> int:
    import inspect

    _setup_jax()
    from kfjax.io import check_finite, load_volume, save_volume
    from kfjax.train.loop import restore_for_eval

    method = _method_from_workdir(args.method, args.workdir)
    if not hasattr(method, "infer_volume"):
        raise ConfigError(f"method '{args.method}' has no volume inference")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise InputError(f"output folder '{out.parent}' does not exist; create it or choose another --out")
    if not out.name.endswith((".nii", ".nii.gz")):
        raise InputError(f"--out '{out}' must end in .nii or .nii.gz")
    volume = load_volume(args.input)
    check_finite(volume.array, f"input '{args.input}'")
    state = restore_for_eval(method, args.workdir)
    extra = {} if args.metal_threshold is None else {"metal_threshold": args.metal_threshold}
    if extra and "metal_threshold" not in inspect.signature(method.infer_volume).parameters:
        raise ConfigError(f"--metal-threshold is for metal artifact reduction; '{args.method}' does not take it")
    result = method.infer_volume(state, volume, progress=not args.no_progress, **extra)
    save_volume(result, out)
    print(f"wrote {out}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kfjax", description="Knowledge-fusion methods of medical image analysis in JAX.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="registered methods").set_defaults(func=cmd_list)

    t = sub.add_parser("train", help="train a method (resumes from the latest checkpoint in --workdir)")
    t.add_argument("method")
    t.add_argument("--config", help="JSON file with config fields (e.g. a previous run's config.json)")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. optim.lr=1e-4")
    t.add_argument("--workdir", help="run folder (default runs/METHOD)")
    t.add_argument("--distributed", action="store_true", help="multi-process run: jax.distributed.initialize()")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate the latest checkpoint of a run; prints and writes a metrics table")
    e.add_argument("method")
    e.add_argument("--workdir", required=True)
    e.add_argument("--split", default="val", choices=["val", "test"])
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="the main job: a short end-to-end run with a table and a PNG panel")
    d.add_argument("--workdir", default="kfjax-demo")
    d.add_argument("--full", action="store_true", help="the full geometry and schedule (for a GPU)")
    d.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra DuDoNet config overrides")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo)

    pl = sub.add_parser("plot", help="PNG loss/metric curves of a run")
    pl.add_argument("workdir")
    pl.add_argument("--out", help="PNG path (default WORKDIR/curves.png)")
    pl.set_defaults(func=cmd_plot)

    i = sub.add_parser("info", help="shape, spacing, range and affine of a NIfTI file or DICOM series")
    i.add_argument("path")
    i.set_defaults(func=cmd_info)

    inf = sub.add_parser("infer", help="apply a trained method to a volume (NIfTI or DICOM) and write NIfTI")
    inf.add_argument("method")
    inf.add_argument("--workdir", "--checkpoint", required=True, help="folder of the trained run")
    inf.add_argument("--input", required=True)
    inf.add_argument("--out", required=True)
    inf.add_argument("--metal-threshold", type=float, help="HU at and above which a voxel is metal (MAR methods)")
    inf.add_argument("--no-progress", action="store_true")
    inf.set_defaults(func=cmd_infer)
    from kfjax.data.commands import add_data_parser
    add_data_parser(sub)
    from kfjax.physics.drr_command import add_parser as add_drr_parser
    add_drr_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except KfjaxError as e:
        if args.debug:
            raise
        print(f"kfjax: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("kfjax: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
