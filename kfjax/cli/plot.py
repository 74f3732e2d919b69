"""`kfjax plot WORKDIR`: PNG loss/metric curves of a run."""

from __future__ import annotations

from pathlib import Path

from kfjax.errors import InputError


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="PNG loss/metric curves of a run")
    p.add_argument("workdir")
    p.add_argument("--out", help="PNG path (default WORKDIR/curves.png)")
    p.set_defaults(func=run)


def run(args) -> int:
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
