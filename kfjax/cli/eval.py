"""`kfjax eval METHOD`: metrics of a method over the validation or test split, printed and written as JSON.

A trained method is evaluated from the latest checkpoint of its run (`--workdir`, required). A per-case
method (deep image prior: it optimises each case at evaluation) needs no run: it is built from `--set`
(on top of DIR/config.json when `--workdir DIR` holds one), and `eval_SPLIT.json` goes to `--workdir` if given.
"""

from __future__ import annotations

import json
from pathlib import Path

from kfjax.cli._common import print_table
from kfjax.errors import ConfigError, InputError
from kfjax.runtime import setup_jax


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="evaluate the latest checkpoint of a run (or a per-case method); "
                                    "prints and writes a metrics table")
    e.add_argument("method")
    e.add_argument("--workdir", help="run folder `kfjax train` wrote (required unless the method is per-case); "
                                     "eval_SPLIT.json is written there")
    e.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides on top of the run's config.json, e.g. data.eval_slice_step=2")
    e.add_argument("--split", default="val", choices=["val", "test"])
    e.set_defaults(func=run)


FIXED_AFTER_TRAINING = ("seed", "model.", "loss.", "optim", "train.")
"""Settings a trained run's checkpoint depends on: `kfjax eval` may not change them (train.eval_batch_size may)."""


def _check_eval_overrides(method: str, settings: list[str]) -> None:
    for item in settings:
        key = item.partition("=")[0].strip()
        if key != "train.eval_batch_size" and key.startswith(FIXED_AFTER_TRAINING):
            raise ConfigError(f"--set '{item}': {key} is fixed by the trained run; evaluate with data.* or "
                              f"train.eval_batch_size changes only, or retrain with `kfjax train {method} --set ...`")


def run(args) -> int:
    setup_jax()
    from kfjax.config import to_dict
    from kfjax.methods import registry
    from kfjax.train.loop import evaluate, restore_for_eval

    cls = registry.get(args.method)
    workdir = Path(args.workdir) if args.workdir else None
    record = {"method": args.method, "split": args.split}
    if cls.trainable:
        if workdir is None:
            raise ConfigError(f"'{args.method}' is evaluated from a trained run; give --workdir DIR "
                              f"(the folder `kfjax train {args.method}` wrote)")
        _check_eval_overrides(args.method, args.set)
        method = registry.from_workdir(args.method, workdir, args.set)
        state = restore_for_eval(method, workdir)
    else:
        if workdir is not None and workdir.exists() and not workdir.is_dir():
            raise InputError(f"--workdir '{workdir}' is a file; give a folder for eval_{args.split}.json")
        if workdir is not None and (workdir / "config.json").is_file():
            method = registry.from_workdir(args.method, workdir, args.set)
        else:
            method = registry.build(args.method, overrides=args.set)
        if workdir is not None:
            if not workdir.parent.is_dir():
                raise InputError(f"the folder '{workdir.parent}' of --workdir does not exist; create it first")
            workdir.mkdir(exist_ok=True)
        state = None  # a fresh state from the config's seed: the method optimises each case itself
        record["config"] = to_dict(method.config)
    values = evaluate(method, state, split=args.split)
    title = f"{args.method} on the {args.split} split"
    if workdir is not None:
        out = workdir / f"eval_{args.split}.json"
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({**record, "metrics": values}, indent=2) + "\n")
        tmp.replace(out)
        title += f" ({out})"
    print_table(values, title)
    return 0
