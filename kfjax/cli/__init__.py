"""The `kfjax` command line: one module per subcommand, `main` in :mod:`kfjax.cli.main`.

    kfjax list | train METHOD | eval METHOD | demo | plot WORKDIR | info FILE | infer METHOD | data ... | drr CT

Nothing in the library imports this package; it sits on top of :mod:`kfjax.methods` and calls library
functions with explicit arguments (never an argparse Namespace).
"""

from kfjax.cli.main import main

__all__ = ["main"]
