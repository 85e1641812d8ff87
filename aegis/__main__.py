"""`python -m aegis` runs the command-line interface."""

import sys

from aegis.cli import main

sys.exit(main())
