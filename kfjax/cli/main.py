"""The `kfjax` command: the parser of every subcommand and the one-line error handling.

    kfjax list | train METHOD | eval METHOD | demo | plot WORKDIR | info FILE | infer METHOD | data ... | drr CT
    kfjax register CT --xray FILE ... --geometry FILE

Bad input (missing or corrupt file, wrong shape, NaN, unknown method or config key) prints one line
saying what is wrong and what to do, and exits with code 2; `--debug` shows the traceback. An interrupt
exits with code 130.
"""

from __future__ import annotations

import argparse
import sys

from kfjax.cli import bench, data, demo, drr, info, infer, plot, register, train
from kfjax.cli import eval as eval_command
from kfjax.cli import list as list_command
from kfjax.cli._common import EXIT_BAD_INPUT, EXIT_INTERRUPTED
from kfjax.errors import KfjaxError

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "main", "parser"]

# In the order `kfjax --help` lists them; each module has `add_parser(subparsers)`.
SUBCOMMANDS = (list_command, train, eval_command, demo, plot, info, infer, data, drr, register, bench)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kfjax", description="Knowledge-fusion methods of medical image analysis in JAX.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); returns the exit code."""
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
