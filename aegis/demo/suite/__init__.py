"""A small, real pytest suite that ``aegis demo`` runs through a ``command`` step.

The files beside this one are the suite: ``test_shop.py`` tests a toy shop, with one test
that fails (a discount that is never applied) and one that is flaky (it fails the first
time it runs in a directory and passes after). ``install`` copies them into a directory,
since a suite writes there (its JUnit file, the flaky test's mark) and the package may be
read-only; this module is not part of the suite.
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["SUITE_FILES", "install"]

SUITE_FILES = ("pytest.ini", "test_shop.py")


def install(target: Path) -> Path:
    """Copy the suite into ``target`` (created if need be) and return it."""
    target.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).parent
    for name in SUITE_FILES:
        shutil.copyfile(here / name, target / name)
    return target
