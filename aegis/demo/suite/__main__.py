"""``python -m aegis.demo.suite DIR``: copy the sample pytest suite into DIR."""

from __future__ import annotations

import sys
from pathlib import Path

from aegis.demo.suite import install


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m aegis.demo.suite DIR", file=sys.stderr)
        return 2
    try:
        target = install(Path(argv[0]))
    except OSError as exc:
        print(f"cannot copy the sample suite to {argv[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"copied the sample pytest suite to {target}")
    return 0


if __name__ == "__main__":  # pragma: no cover - the module's own entry
    sys.exit(main(sys.argv[1:]))
