"""``python -m aegis.demo``: serve the reference services until Ctrl-C."""

import sys

from aegis.demo import main

sys.exit(main())
