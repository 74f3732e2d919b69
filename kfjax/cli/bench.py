"""`kfjax bench METHOD | physics`: time a method's jitted train step, or the physics operators, on this machine.

    kfjax bench di2in --set model.channels=16,32 --batch 8 --steps 20 --json di2in.json
    kfjax bench physics --geometries adn:256 --sizes 200 --batch 32 --compare old.json

Prints a table (and, with --compare, the new/old ratio of median times per matching row); --json writes the
document described in `kfjax.bench` (written under a temporary name, then renamed). Bad input (unknown method
or key, a missing or corrupt --compare file, a non-positive --steps or --batch) is one line and exit code 2.
"""

from __future__ import annotations

from kfjax.errors import ConfigError
from kfjax.runtime import setup_jax

PHYSICS = "physics"


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="time a method's train step, or the physics operators (`kfjax bench physics`)")
    p.add_argument("target", metavar="METHOD|physics", help="a method of `kfjax list`, or 'physics'")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="method config overrides")
    p.add_argument("--batch", type=int, help="global batch (method: data.batch_size; physics: images or DRR poses)")
    p.add_argument("--steps", type=int, help="timed calls after 2 warm-up calls (default 20 method, 10 physics)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON (schema: `kfjax.bench`)")
    p.add_argument("--compare", metavar="FILE", help="a previous --json file: print new/old median time per row")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--geometries", nargs="+", metavar="SPEC",
                   help="physics: CT geometries PRESET or PRESET:VIEWS (default adn dudonet)")
    p.add_argument("--sizes", nargs="+", type=int, metavar="N",
                   help="physics: DRR detector sides (default 128 256 512)")
    p.add_argument("--volume", nargs=3, type=int, metavar=("X", "Y", "Z"),
                   help="physics: DRR volume voxels (default the chest CT's 512 512 133)")
    p.add_argument("--tiny", action="store_true", help="physics: the smallest sizes (a few seconds on a CPU)")
    p.set_defaults(func=run)


def _check_arguments(args) -> None:
    for name in ("batch", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be a positive integer, got {value}")
    physics_only = [f"--{n}" for n in ("geometries", "sizes", "volume") if getattr(args, n) is not None]
    physics_only += ["--tiny"] if args.tiny else []
    if args.target == PHYSICS and args.set:
        raise ConfigError("--set applies to a method, not to `kfjax bench physics`")
    if args.target != PHYSICS and physics_only:
        raise ConfigError(f"{', '.join(physics_only)} apply to `kfjax bench physics`, not to a method")


def _physics_rows(args, progress: bool) -> list[dict]:
    from kfjax.bench.physics import TINY, Suite, bench_physics

    suite = TINY if args.tiny else Suite()
    return bench_physics(
        sizes=suite.sizes if args.sizes is None else args.sizes,
        batch=args.batch or suite.batch,
        steps=args.steps or suite.steps,
        progress=progress,
        geometries=suite.geometries if args.geometries is None else args.geometries,
        volume=suite.volume if args.volume is None else tuple(args.volume),
    )


def run(args) -> int:
    setup_jax()
    from kfjax.bench import report
    from kfjax.bench.method import STEPS, bench_method

    _check_arguments(args)
    out = report.check_output(args.json) if args.json else None
    kind = "physics" if args.target == PHYSICS else "method"
    baseline = report.load(args.compare) if args.compare else None
    if baseline is not None and baseline["kind"] != kind:
        raise ConfigError(f"--compare {args.compare} holds a {baseline['kind']} benchmark; this run is a {kind} one")
    progress = not args.no_progress
    if kind == "physics":
        rows = _physics_rows(args, progress)
    else:
        rows = [bench_method(args.target, args.set, args.batch, args.steps or STEPS, progress)]
    doc = report.document(kind, rows)
    if out is not None:
        report.save(doc, out)
    print(report.env_line(doc), "", report.markdown(doc), sep="\n")
    if baseline is not None:
        print(f"\nnew / old median time against {args.compare} (below 1: faster now)\n")
        print(report.compare_table(report.compare(baseline, doc)))
    return 0
