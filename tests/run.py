"""The whole check, from a fresh clone: `python3 tests/run.py`.

Creates `.venv` (if missing) with the Python running this script, installs the project
with its test extra, then runs ruff, mypy and the test suite with the coverage bars.
Any failing part fails the whole; pytest finding no tests (exit 5) is a failure too.
Extra arguments are passed to pytest (e.g. `python3 tests/run.py -k engine`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"

COVERAGE_OVERALL = 90
# files whose own bar is higher than the overall one
COVERAGE_PER_FILE = {"aegis/cli.py": 95, "aegis/steps/base.py": 95}


def step(title: str, *cmd: str | Path) -> None:
    print(f"\n=== {title}: {' '.join(map(str, cmd))}", flush=True)
    code = subprocess.call([str(c) for c in cmd], cwd=ROOT)
    if code == 5 and "pytest" in map(str, cmd):
        sys.exit("FAILED: pytest collected no tests (exit 5)")
    if code != 0:
        sys.exit(f"FAILED: {title} (exit {code})")


def ensure_environment() -> None:
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    step(
        "install",
        PYTHON,
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "-e",
        ".[test]",
    )


def check_file_coverage(report: Path) -> None:
    files = json.loads(report.read_text())["files"]
    failed = []
    for name, bar in COVERAGE_PER_FILE.items():
        summary = files.get(name, {}).get("summary")
        figure = summary["percent_covered"] if summary else 0.0
        print(f"coverage {name}: {figure:.1f}% (bar {bar}%)")
        if figure < bar:
            failed.append(name)
    if failed:
        sys.exit(f"FAILED: coverage below its bar in {', '.join(failed)}")


def main(pytest_args: list[str]) -> None:
    ensure_environment()
    step("ruff", PYTHON, "-m", "ruff", "check", "aegis", "tests", "build.py")
    step("mypy", PYTHON, "-m", "mypy", "aegis")
    report = ROOT / "coverage.json"
    step(
        "pytest",
        PYTHON,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "--cov=aegis",
        "--cov-branch",
        "--cov-report=term-missing:skip-covered",
        f"--cov-report=json:{report}",
        f"--cov-fail-under={COVERAGE_OVERALL}",
        *pytest_args,
    )
    check_file_coverage(report)
    print("\nall checks passed")


if __name__ == "__main__":
    main(sys.argv[1:])
