"""`python -m kfjax` is the `kfjax` command."""

import sys

from kfjax.cli import main

sys.exit(main())
