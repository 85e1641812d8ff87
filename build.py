#!/usr/bin/env python3
"""Build ``dist/aegis.pyz``, the single-file Aegis, with shiv (DESIGN §9).

    python build.py [--out PATH] [--project DIR] [--build-dir DIR]

Works with any Python 3.10+ and nothing else installed: when shiv cannot be imported, it is
installed into a private virtual environment under ``build/`` (made once, reused after).

What goes in: the ``aegis`` package with all its files (package data too) and the pinned
runtime dependencies below, as pure Python. The result runs on CPython 3.10 to 3.13 whatever
Python built it, and two builds of one tree are byte-identical (``SOURCE_DATE_EPOCH``, by
default the time of the last git commit). The archive's ``__main__.py`` is replaced by
``aegis/_pyz_main.py``, which picks a usable unpack directory and removes old unpackings
before handing over to shiv's bootstrap.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

# An older Python is refused in the words the built file uses (aegis/_pyz_main.py).
MIN_PYTHON = (3, 10)
if sys.version_info[:2] < MIN_PYTHON:
    THIS = ".".join(str(part) for part in sys.version_info[:3])
    sys.stderr.write(f"Aegis needs Python 3.10 or newer (this is {THIS})\n")
    sys.exit(2)

HERE = Path(__file__).resolve().parent
ENTRY_POINT = "aegis.cli:main"
SHEBANG = "/usr/bin/env python3"
SHIV_REQUIREMENT = "shiv==1.0.8"
# 1980-01-01T00:00:00Z, the earliest time a zip entry can carry.
FALLBACK_EPOCH = 315532800

# The runtime dependencies (httpx with its SOCKS support, jmespath, pyyaml, sniffio for
# httpcore, cronsim for schedules and tzdata for their time zones where the system has none) and
# everything they pull in, pinned, so that a build does not change under us. pip runs with
# --no-deps on this full list because the backports that anyio needs on older Pythons
# (exceptiongroup below 3.11, typing_extensions below 3.15) are skipped by a resolver
# running on a newer Python, and the file must run on 3.10 whichever Python built it.
# tests/test_build.py checks every Requires-Dist of these for 3.10 to 3.13.
RUNTIME = (
    "anyio==4.16.0",
    "asn1crypto==1.5.1",
    "certifi==2026.10.19.post1",
    "cronsim==2.6",
    "exceptiongroup==1.3.2",
    "h11==0.16.0",
    "httpcore==1.0.9",
    "httpx==0.28.1",
    "idna==3.20",
    "jmespath==1.1.0",
    "pg8000==1.31.5",
    "python-dateutil==3.0.0",
    "pyyaml==6.0.4",
    "scramp==1.4.17",
    "six==1.17.0",
    "sniffio==1.3.1",
    "socksio==1.0.0",
    "typing_extensions==4.16.0",
    "tzdata==2026.6",
)
# Wheels are chosen for the oldest Python we support, so pip rejects a pin that dropped it.
# The platform matters only to PyYAML, whose compiled module is stripped anyway: fixing it
# makes the build the same on any machine.
WHEEL_TARGET = (
    "--python-version", "3.10",
    "--implementation", "cp",
    "--abi", "cp310",
    "--platform", "manylinux2014_x86_64",
)  # fmt: skip

COMPILED = {".so", ".pyd", ".dylib", ".dll", ".pyc", ".pyo"}
# What a dist-info keeps: what importlib.metadata reads, and the licenses.
DIST_INFO_KEEP = ("METADATA", "licenses", "LICENSE", "LICENCE", "COPYING", "NOTICE", "AUTHORS")


def log(message: str) -> None:
    print(f"build: {message}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str | Path], env: Mapping[str, str] | None = None) -> None:
    """Run a command, or exit with its status (its own output says why)."""
    code = subprocess.call([str(part) for part in cmd], env=env)
    if code != 0:
        sys.exit(f"build: failed (exit {code}): {' '.join(map(str, cmd))}")


def source_date_epoch(environ: Mapping[str, str], project: Path) -> int:
    """SOURCE_DATE_EPOCH if set, else the last git commit's time, else 1980-01-01."""
    if environ.get("SOURCE_DATE_EPOCH"):
        return int(environ["SOURCE_DATE_EPOCH"])
    try:
        found = subprocess.run(
            ["git", "-C", str(project), "log", "-1", "--format=%ct"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:  # no git on this machine
        return FALLBACK_EPOCH
    stamp = found.stdout.strip()
    return max(int(stamp), FALLBACK_EPOCH) if found.returncode == 0 and stamp else FALLBACK_EPOCH


def venv_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def can_import(python: Path | str, module: str) -> bool:
    code = f"import {module}"
    return subprocess.call([str(python), "-c", code], stderr=subprocess.DEVNULL) == 0


def shiv_python(build_dir: Path) -> str:
    """A Python that can run shiv (and pip): this one, or the private build environment."""
    if importlib.util.find_spec("shiv") is not None:
        return sys.executable
    env_dir = build_dir / "shiv-env"
    python = venv_python(env_dir)
    if not (python.exists() and can_import(python, "shiv")):
        log(f"shiv is not importable here: installing {SHIV_REQUIREMENT} into {env_dir}")
        try:
            venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
        except (OSError, subprocess.CalledProcessError) as error:
            sys.exit(
                f"build: cannot create {env_dir} with pip ({error}); install shiv"
                " (pip install shiv) or this Python's venv module (Debian: python3-venv)"
            )
        run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             SHIV_REQUIREMENT], env=pip_environ())  # fmt: skip
    return str(python)


def pip_environ() -> dict[str, str]:
    # pip may be told to refuse installs outside a virtualenv; --target is not such an install
    return {**os.environ, "PIP_REQUIRE_VIRTUALENV": "0"}


def fetch_dependencies(python: str, build_dir: Path) -> Path:
    """The runtime dependencies as pip installs them, cached in build/ by their pin list."""
    key = hashlib.sha256(json.dumps([RUNTIME, WHEEL_TARGET]).encode()).hexdigest()[:16]
    cache = build_dir / f"deps-{key}"
    if cache.is_dir():
        return cache
    log(f"installing the runtime dependencies into {cache}")
    build_dir.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{cache.name}.", dir=build_dir))
    try:
        run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--only-binary=:all:", "--no-compile", "--target", partial,
             *WHEEL_TARGET, *RUNTIME], env=pip_environ())  # fmt: skip
        try:
            partial.rename(cache)
        except OSError:  # a concurrent build got there first
            if not cache.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return cache


def is_kept_in_dist_info(name: str) -> bool:
    return name.startswith(DIST_INFO_KEEP)


def prune(site_packages: Path) -> None:
    """Strip what the archive must not or need not carry.

    Compiled extensions go (they pin one Python ABI; PyYAML falls back to pure Python when
    its ``_yaml`` module is missing), so do bytecode and caches, pip's ``bin/`` scripts, and
    the dist-info files nothing reads at run time. Licenses stay.
    """
    shutil.rmtree(site_packages / "bin", ignore_errors=True)
    for path in sorted(site_packages.rglob("*"), reverse=True):
        if path.is_dir() and path.name == "__pycache__":
            shutil.rmtree(path)
        elif path.is_file() and path.suffix in COMPILED:
            path.unlink()
    for dist_info in site_packages.glob("*.dist-info"):
        for item in dist_info.iterdir():
            if is_kept_in_dist_info(item.name):
                continue
            if item.is_dir():
                shutil.rmtree(item)
            else:
                item.unlink()


def package_files(package: Path) -> Iterable[Path]:
    """Every file of the package that belongs in the archive, .py or not.

    Left out: caches and compiled files, and hidden files (editor swap files, .DS_Store).
    """
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(package)
        if any(part == "__pycache__" or part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and path.suffix not in COMPILED:
            yield path


def stage(project: Path, dependencies: Path, site_packages: Path) -> None:
    """Fill ``site_packages`` with the dependencies and the aegis package, modes normalised."""
    shutil.copytree(dependencies, site_packages)
    prune(site_packages)
    package = project / "aegis"
    for source in package_files(package):
        target = site_packages / "aegis" / source.relative_to(package)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    # shiv stores each file's mode; a checkout's umask must not change the archive
    for path in site_packages.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def run_shiv(python: str, site_packages: Path, output: Path, epoch: int) -> None:
    run(
        [python, "-m", "shiv", "--site-packages", site_packages, "--entry-point", ENTRY_POINT,
         "--python", SHEBANG, "--reproducible", "--compile-pyc", "--output-file", output],
        env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)},
    )  # fmt: skip


def replace_main(shiv_output: Path, main_py: bytes, target: Path) -> None:
    """Copy shiv's archive to ``target`` with our ``__main__.py``, reproducibly.

    Keeps the shebang and every entry's name, order and timestamp; sets the same mode and
    maximum compression on every entry.
    """
    with shiv_output.open("rb") as raw:
        shebang = raw.readline()
    with zipfile.ZipFile(shiv_output) as source, target.open("wb") as out:
        out.write(shebang)
        with zipfile.ZipFile(out, "w") as archive:
            for entry in source.infolist():
                data = main_py if entry.filename == "__main__.py" else source.read(entry)
                info = zipfile.ZipInfo(entry.filename, date_time=entry.date_time)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # unix, so external_attr carries the mode
                info.external_attr = 0o100644 << 16
                archive.writestr(info, data, compresslevel=9)
    target.chmod(0o755)


def build(project: Path, out: Path, build_dir: Path, environ: Mapping[str, str]) -> Path:
    """Build the archive at ``out`` from ``project``'s ``aegis`` package; returns ``out``."""
    if not (project / "aegis" / "__init__.py").is_file():
        sys.exit(f"build: {project} has no aegis package")
    python = shiv_python(build_dir)
    dependencies = fetch_dependencies(python, build_dir)
    epoch = source_date_epoch(environ, project)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aegis-build-") as work:
        site_packages = Path(work, "site-packages")
        stage(project, dependencies, site_packages)
        shiv_output = Path(work, "shiv.pyz")
        run_shiv(python, site_packages, shiv_output, epoch)
        main_py = (site_packages / "aegis" / "_pyz_main.py").read_bytes()
        partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
        try:
            replace_main(shiv_output, main_py, partial)
            os.replace(partial, out)  # whole file or nothing at `out`
        finally:
            partial.unlink(missing_ok=True)
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build the single-file aegis.pyz.")
    parser.add_argument(
        "--out", type=Path, default=HERE / "dist" / "aegis.pyz",
        help="where to write the archive (default: dist/aegis.pyz)",
    )  # fmt: skip
    parser.add_argument(
        "--project", type=Path, default=HERE,
        help="the tree whose aegis/ package goes in (default: the one holding build.py)",
    )  # fmt: skip
    parser.add_argument(
        "--build-dir", type=Path, default=HERE / "build",
        help="the private shiv environment and the dependency cache (default: build/)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = build(args.project.resolve(), args.out.resolve(), args.build_dir.resolve(), os.environ)
    size = out.stat().st_size
    shown = os.path.relpath(out) if out.is_relative_to(Path.cwd()) else str(out)
    print(f"built {shown}: {size:,} bytes ({size / 1024 / 1024:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
