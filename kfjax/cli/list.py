"""`kfjax list`: the registered methods with description and paper; marks per-case methods and `kfjax infer`."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="registered methods")
    p.set_defaults(func=run)


def run(args) -> int:
    from kfjax.methods import registry

    rows = []
    for name in registry.names():
        cls = registry.get(name)
        marks = ([] if cls.trainable else ["per-case"]) + ([] if cls.inference is None else ["infer"])
        rows.append((name, ",".join(marks), cls))
    width = max((len(name) for name, _, _ in rows), default=0)
    for name, marks, cls in rows:
        print(f"{name:{width}s} {marks:15s} {cls.description}  [{cls.paper}]")
    if any(marks for _, marks, _ in rows):
        print("\nper-case: optimises each case at evaluation, nothing to train (`kfjax eval NAME`); "
              "infer: `kfjax infer NAME` applies a trained run to your files")
    return 0
