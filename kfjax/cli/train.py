"""`kfjax train METHOD`: train a method in a run folder, resuming from its latest checkpoint."""

from __future__ import annotations

from pathlib import Path

from kfjax.cli._common import EXIT_INTERRUPTED, print_table
from kfjax.runtime import setup_jax


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a method (resumes from the latest checkpoint in --workdir)")
    t.add_argument("method")
    t.add_argument("--config", help="JSON file with config fields (e.g. a previous run's config.json)")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. optim.lr=1e-4")
    t.add_argument("--workdir", help="run folder (default runs/METHOD)")
    t.add_argument("--distributed", action="store_true", help="multi-process run: jax.distributed.initialize()")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--profile", metavar="DIR", help="write a jax.profiler trace of train.profile_steps steps "
                   "after two warm-up steps to DIR (TensorBoard / Perfetto)")
    t.set_defaults(func=run)


def run(args) -> int:
    setup_jax(distributed=args.distributed)
    from kfjax.methods import registry
    from kfjax.train.loop import train

    method = registry.build(args.method, args.config, args.set)
    workdir = args.workdir or str(Path("runs") / args.method)
    result = train(method, workdir, progress=not args.no_progress, profile=args.profile)
    if result.status == "interrupted":
        return EXIT_INTERRUPTED
    print_table(result.eval_metrics, f"{args.method} on the validation split")
    return 0
