"""`python -m aegis` runs the command-line interface."""

import signal

# Until the CLI takes Ctrl-C over, it ends the process quietly, as it ends other tools.
signal.signal(signal.SIGINT, signal.SIG_DFL)

import sys  # noqa: E402

from aegis.cli import main  # noqa: E402

sys.exit(main())
