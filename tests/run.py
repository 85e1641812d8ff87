"""The whole check, from a fresh clone: `python3 tests/run.py`.

Creates `.venv` (if missing), installs the project with its test extra, then runs ruff,
mypy and the test suite with the coverage bars. The suite includes the reliability tests,
which rewrite docs/RELIABILITY.md; in a git checkout the rewritten file must equal the
committed one, so the published table cannot drift from what the tests observe.

The suite runs on Python 3.12 or 3.13 when one is installed (`AEGIS_TEST_PYTHON` names
another): CPython 3.11 stops reporting lines of the frames that were waiting while anyio
opened a connection, so coverage under-reports there. The built file is tested on every
supported Python either way (tests/test_build.py, tests/test_cli_process.py).
Any failing part fails the whole; pytest finding no tests (exit 5) is a failure too.
Extra arguments are passed to pytest (e.g. `python3 tests/run.py -k engine`).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
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


def version_of(python: str | Path) -> str | None:
    try:
        done = subprocess.run(
            [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def test_python() -> str:
    """The interpreter for the venv: $AEGIS_TEST_PYTHON, else 3.12/3.13 if any, else this one."""
    chosen = os.environ.get("AEGIS_TEST_PYTHON")
    if chosen:
        return chosen
    pyenv = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    for version in ("3.12", "3.13"):
        name = f"python{version}"
        candidates = [
            shutil.which(name),
            *sorted(glob.glob(f"{pyenv}/versions/{version}.*/bin/{name}")),
        ]
        for candidate in filter(None, candidates):
            if version_of(candidate) == version:
                return candidate
    return sys.executable


def ensure_environment() -> None:
    python = test_python()
    wanted = version_of(python)
    if not PYTHON.exists() or version_of(PYTHON) != wanted:
        print(f"creating {VENV} with {python} (Python {wanted})", flush=True)
        subprocess.check_call([python, "-m", "venv", "--clear", str(VENV)])
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


def tree_status() -> set[str] | None:
    """``git status --porcelain`` lines of the checkout, or None outside one."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return None
    found = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return set(found.splitlines())


def check_tree_untouched(before: set[str] | None) -> None:
    """Tests write only to temporary or ignored paths: the tree is as it was before them.

    docs/RELIABILITY.md, which the reliability tests rewrite, is checked on its own.
    """
    after = tree_status()
    if before is None or after is None:
        return
    touched = sorted(line for line in after - before if not line.endswith("docs/RELIABILITY.md"))
    if touched:
        sys.exit(
            "FAILED: the tests changed files of the checkout (they must write only to tmp or"
            " ignored paths):\n  " + "\n  ".join(touched)
        )
    print("the checkout is as the tests found it")


def check_reliability_report() -> None:
    """docs/RELIABILITY.md is written by the reliability tests; it must match the commit."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return
    name = "docs/RELIABILITY.md"
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if changed:
        subprocess.call(["git", "--no-pager", "diff", "--stat", "--", name], cwd=ROOT)
        sys.exit(
            f"FAILED: {name} differs from what the reliability tests observed now; "
            "review the change and commit the regenerated file"
        )
    print(f"{name}: matches what the reliability tests observed")


def main(pytest_args: list[str]) -> None:
    ensure_environment()
    step("ruff", PYTHON, "-m", "ruff", "check", "aegis", "tests", "build.py")
    step("mypy", PYTHON, "-m", "mypy", "aegis")
    report = ROOT / "coverage.json"
    before = tree_status()
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
    check_tree_untouched(before)
    check_reliability_report()
    print("\nall checks passed")


if __name__ == "__main__":
    main(sys.argv[1:])
