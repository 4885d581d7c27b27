"""`python -m lmlab ...` runs the CLI (useful where the `lmlab` script is not installed, e.g. PYTHONPATH=src)."""

import sys

from lmlab.cli import main

sys.exit(main())
