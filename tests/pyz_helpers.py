"""Helpers for the tests that build ``aegis.pyz`` and run it in subprocesses.

Interpreters are looked up on PATH and, because pyenv's shims for a non-global version are
on PATH but refuse to run, in pyenv's versions directory too; each candidate must actually
run and report the version asked for. A missing interpreter skips the test with a reason,
or fails it when CI is set: no test is ever skipped silently.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_PY = ROOT / "build.py"
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
# A cold start unpacks ~1 MB; generous for a loaded CI machine, still bounded.
RUN_TIMEOUT = 120
BUILD_TIMEOUT = 600


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail when CI is set (CI must run everything)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def _reports(python: str, version: str) -> bool:
    try:
        found = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return found.returncode == 0 and found.stdout.strip() == version


@functools.cache
def find_python(version: str) -> str | None:
    """A working ``python<version>`` executable, or None."""
    name = f"python{version}"
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates = [
        shutil.which(name),
        *sorted(glob.glob(os.path.join(pyenv_root, "versions", f"{version}.*", "bin", name))),
        f"/usr/bin/{name}",
        f"/usr/local/bin/{name}",
    ]
    for candidate in candidates:
        if candidate and os.path.exists(candidate) and _reports(candidate, version):
            return candidate
    return None


def require_python(version: str) -> str:
    python = find_python(version)
    if python is None:
        unavailable(f"python{version} is not installed (looked on PATH and in pyenv)")
    return python


def base_environ(**overrides: str | None) -> dict[str, str]:
    """A small environment for the archive: PATH, locale and PYENV_ROOT, plus ``overrides``.

    HOME, SHIV_* and PYTHON* variables of the test process never leak in; an override of
    None leaves the variable out.
    """
    env = {
        key: os.environ[key]
        for key in ("PATH", "LANG", "LC_ALL", "PYENV_ROOT")
        if key in os.environ
    }
    for key, value in overrides.items():
        if value is not None:
            env[key] = value
    return env


def run_pyz(
    python: str | None,
    pyz: Path,
    args: Sequence[str],
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the archive with ``python`` (or through its shebang when None)."""
    cmd = [str(pyz), *args] if python is None else [python, str(pyz), *args]
    return subprocess.run(
        cmd,
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def build_pyz(out: Path, *args: str, python: Sequence[str] | None = None) -> Path:
    """Run build.py (by default with this interpreter) to write ``out``; fails the test on error."""
    cmd = [*(python or [sys.executable]), str(BUILD_PY), "--out", str(out), *args]
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    assert done.returncode == 0, f"build failed:\n{done.stdout}\n{done.stderr}"
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("built ") and "bytes" in last, done.stdout
    return out


def snapshot_project(target: Path) -> Path:
    """Copy the repo's aegis package to ``target`` (a tree others cannot edit mid-test)."""
    shutil.copytree(
        ROOT / "aegis", target / "aegis", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return target


def load_build_module() -> types.ModuleType:
    """build.py as a module, for its helpers."""
    spec = importlib.util.spec_from_file_location("aegis_build_script", BUILD_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_id(pyz: Path) -> str:
    with zipfile.ZipFile(pyz) as archive:
        return str(json.loads(archive.read("environment.json"))["build_id"])


def unpackings(root: Path) -> list[str]:
    """Names of the unpacked builds (shiv's ``<name>_<build id>`` directories) in ``root``."""
    if not root.is_dir():
        return []
    return sorted(
        entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
