"""The ``__main__.py`` of ``aegis.pyz``: choose where shiv unpacks, sweep old unpackings, start.

``build.py`` stores this file in the archive in place of shiv's own two-line ``__main__.py``.
It runs before anything is unpacked, so it uses the standard library only, and it hands over
to shiv's ``_bootstrap`` (shipped in the archive) once the root directory is settled.

Why it exists (DESIGN §9):

* shiv unpacks into ``~/.shiv``. When ``HOME`` is unset, not absolute, or cannot take the
  unpacking (read-only, missing, not a directory), we unpack into a private per-user
  directory under the temp dir instead: ``$TMPDIR/aegis-shiv-<uid>``, mode 0700, refused if
  another user owns it. An explicit ``SHIV_ROOT`` always wins, with no fallback.
* Every build unpacks under a new name (``<archive name>_<build id>``). Older unpackings of
  the same archive are removed, but only when no process uses them: each running process
  holds a shared ``flock`` on ``.<archive name>_<build id>_inuse`` in the root for its whole
  life, and the sweeper removes a build only while it holds that file's exclusive lock. It
  renames the directory away before deleting it, so a crash mid-way never leaves a
  half-deleted unpacking that looks complete. Concurrent extraction of one build is shiv's
  own business (a lock file, a ``.tmp`` directory and an atomic rename).
"""

from __future__ import annotations

if __name__ == "__main__":  # pragma: no cover - runs inside the archive
    # First of all: until the CLI takes Ctrl-C over, it ends the process the way it ends
    # other tools (killed by SIGINT), not with a traceback from whatever was importing.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)

import contextlib
import importlib
import json
import os
import re
import stat
import sys
import zipimport
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

# Aegis runs on CPython 3.10 and newer. Say so before anything else can fail on an older
# one (3.8 and 3.9 would otherwise unpack and then crash with a TypeError); the imports
# above are the standard library's, the same on 3.8.
MIN_PYTHON = (3, 10)


def too_old(major: int, minor: int, micro: int) -> str | None:
    """The refusal for a Python older than ``MIN_PYTHON``, else None."""
    if (major, minor) >= MIN_PYTHON:
        return None
    return f"Aegis needs Python 3.10 or newer (this is {major}.{minor}.{micro})"


REFUSAL = too_old(*sys.version_info[:3])
if REFUSAL:  # pragma: no cover - only an older Python gets here
    sys.stderr.write(REFUSAL + "\n")
    sys.exit(2)

if sys.platform != "win32":  # pragma: no branch
    import fcntl

__all__ = ["main", "pick_root", "sweep"]

# Environment variables that change what shiv's bootstrap does; with any of them set (other
# than SHIV_ROOT, which pick_root honours) the bootstrap runs rather than the fast path.
SHIV_OVERRIDES = (
    "SHIV_INTERPRETER",
    "SHIV_ENTRY_POINT",
    "SHIV_CONSOLE_SCRIPT",
    "SHIV_MODULE",
    "SHIV_FORCE_EXTRACT",
    "SHIV_COMPILE_PYC",
    "SHIV_COMPILE_WORKERS",
    "SHIV_EXTEND_PYTHONPATH",
    "SHIV_PREPEND_PYTHONPATH",
)
ENTRY_POINT = ("aegis.cli", "main")

# Exit status when no directory can take the unpacking (the CLI's "internal" code).
EXIT_NO_ROOT = 70
# A file inside the package that marks a directory as an unpacking of Aegis.
MARKER = Path("site-packages", "aegis", "__init__.py")


class NoRootError(OSError):
    """No candidate directory can take the unpacking; the message lists why for each."""


def build_id_of(archive_path: str) -> str:
    """The build id shiv stored in the archive's ``environment.json``."""
    # zipimport is built in and already loaded; zipfile would import bz2, lzma and more
    data = zipimport.zipimporter(archive_path).get_data("environment.json")
    environment = json.loads(data.decode("utf-8"))
    return str(environment["build_id"])


def archive_name(archive_path: str) -> str:
    """The archive's file name, as shiv's ``cache_path`` derives it (symlinks resolved)."""
    return Path(archive_path).resolve().name


def explicit_root(environ: Mapping[str, str]) -> Path | None:
    """``SHIV_ROOT`` read the way shiv reads it (``$NAME`` means another variable), or None."""
    value = environ.get("SHIV_ROOT", "")
    if value.startswith("$"):
        value = environ.get(value[1:], value[1:])
    return Path(value).expanduser() if value else None


def home_root(environ: Mapping[str, str]) -> Path | None:
    """``$HOME/.shiv``, or None when ``HOME`` is unset, empty or not absolute."""
    home = environ.get("HOME", "")
    return Path(home, ".shiv") if os.path.isabs(home) else None


def private_temp_root(environ: Mapping[str, str]) -> Path:
    """``<temp dir>/aegis-shiv-<uid>``; the temp dir is TMPDIR, TEMP or TMP if it exists."""
    named = (environ.get(key, "") for key in ("TMPDIR", "TEMP", "TMP"))
    base = next((path for path in named if path and os.path.isdir(path)), "")
    user = str(os.geteuid()) if hasattr(os, "geteuid") else "user"
    if not base:
        import tempfile

        base = tempfile.gettempdir()
    return Path(base, f"aegis-shiv-{user}")


def candidate_roots(environ: Mapping[str, str]) -> Iterator[tuple[Path, bool]]:
    """Roots to try in order, each with whether it must be a private (0700, owned) directory."""
    explicit = explicit_root(environ)
    if explicit is not None:
        yield explicit, False
        return
    home = home_root(environ)
    if home is not None:
        yield home, False
    yield private_temp_root(environ), True


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700, or accept it if it is a real directory we own.

    Raises ``OSError`` when it is a symlink or not a directory, or when another user owns it
    (someone could otherwise plant code for us to run in a shared temp dir).
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"{path} is not a directory")
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise PermissionError(f"{path} belongs to uid {info.st_uid}, not to us")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)


def inuse_path(root: Path, name: str, build_id: str) -> Path:
    """The file whose shared lock says "a process runs this build"."""
    return root / f".{name}_{build_id}_inuse"


def unpacked_dir(root: Path, name: str, build_id: str) -> Path:
    """Where shiv unpacks this build (its ``cache_path``)."""
    return root / f"{name}_{build_id}"


def is_same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a sweeper may have unlinked it)."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino)


def lock_shared(fd: int) -> None:
    """Block until we hold a shared lock on ``fd``.

    Where there is no flock (Windows, a file system without lock support) we run without
    it; a sweeper cannot take the exclusive lock there either, so it removes nothing.
    """
    if sys.platform == "win32":  # pragma: no cover
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        return


def try_lock_exclusive(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` if nobody holds any lock on it; never waits."""
    if sys.platform == "win32":  # pragma: no cover
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def claim(root: Path, private: bool, name: str, build_id: str) -> int:
    """Create ``root`` if needed and hold this build's in-use lock; returns the open fd.

    The fd stays open (and locked) for the life of the process. Raises ``OSError`` when the
    root cannot be created or written, which is also how an unusable HOME shows up.
    """
    if private:
        ensure_private_dir(root)
    else:
        root.mkdir(parents=True, exist_ok=True)
    path = inuse_path(root, name, build_id)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            lock_shared(fd)
            if is_same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        # a sweeper removed the file while we waited for the lock: start over with a new one
        os.close(fd)


def pick_root(environ: Mapping[str, str], name: str, build_id: str) -> tuple[Path, int | None]:
    """The first usable root and the in-use lock held there (None if it is read-only).

    A root we cannot write is still used when this build is already unpacked in it.
    Raises ``NoRootError`` naming every candidate and why it failed.
    """
    problems: list[str] = []
    for root, private in candidate_roots(environ):
        root = Path(os.path.abspath(root))
        try:
            return root, claim(root, private, name, build_id)
        except OSError as error:
            if (unpacked_dir(root, name, build_id) / "site-packages").is_dir():
                return root, None
            problems.append(f"{root}: {error.strerror or error}")
    raise NoRootError(
        "no directory to unpack into (" + "; ".join(problems) + "); set SHIV_ROOT to a"
        " writable directory"
    )


def old_build_ids(root: Path, name: str, build_id: str) -> set[str]:
    """Build ids of other Aegis unpackings of this archive name found in ``root``.

    A build counts as Aegis when our wrapper left its in-use file there, or its unpacking
    holds the ``aegis`` package (so another app's archive of the same name is left alone).
    """
    pattern = re.compile(rf"\.?{re.escape(name)}_([0-9a-f]{{64}})(\.tmp|_lock|_inuse)?")
    found: set[str] = set()
    for entry in os.scandir(root):
        match = pattern.fullmatch(entry.name)
        if match and match.group(1) != build_id:
            found.add(match.group(1))
    return {
        old
        for old in found
        if inuse_path(root, name, old).exists() or (unpacked_dir(root, name, old) / MARKER).exists()
    }


def retire(root: Path, name: str, old_id: str) -> list[Path]:
    """Move an unused build's unpacking out of the way; returns the directories to delete.

    Does nothing (returns ``[]``) while any process holds the build's in-use lock.
    """
    path = inuse_path(root, name, old_id)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not try_lock_exclusive(fd) or not is_same_file(fd, path):
            return []
        trash: list[Path] = []
        for suffix in ("", ".tmp"):
            target = root / f".{name}_trash-{old_id[:16]}{suffix}-{os.urandom(4).hex()}"
            try:
                os.rename(root / f"{name}_{old_id}{suffix}", target)
            except FileNotFoundError:
                continue
            trash.append(target)
        (root / f".{name}_{old_id}_lock").unlink(missing_ok=True)  # shiv's extraction lock
        path.unlink()  # last, still under our lock: starters waiting on it retry
        return trash
    finally:
        os.close(fd)


def sweep(root: Path, name: str, build_id: str) -> None:
    """Remove unpackings of other builds of this archive that no process uses. Never raises."""
    if sys.platform == "win32":  # pragma: no cover
        return
    import shutil

    try:
        for old in sorted(old_build_ids(root, name, build_id)):
            try:
                for directory in retire(root, name, old):
                    shutil.rmtree(directory, ignore_errors=True)
            except OSError:
                continue
        # leftovers of a sweeper that crashed between its rename and its delete
        for entry in os.scandir(root):
            if entry.name.startswith(f".{name}_trash-"):
                shutil.rmtree(entry.path, ignore_errors=True)
    except OSError:
        return


def use_root(bootstrap: Any, root: Path) -> None:
    """Make shiv's bootstrap unpack under ``root`` without exporting SHIV_ROOT to children."""
    original: Callable[[Any, str | None, str], Path] = bootstrap.cache_path

    def cache_path(archive: Any, root_dir: str | None, build_id: str) -> Path:
        return original(archive, str(root), build_id)

    bootstrap.cache_path = cache_path


def site_directories() -> list[str]:
    """This interpreter's site-packages directories, the user's one included."""
    import site

    found = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    if site.ENABLE_USER_SITE:
        found.append(site.getusersitepackages())
    return found


def without_site_packages(path: list[str], site_dirs: list[str]) -> list[str]:
    """``path`` less ``site_dirs``: Aegis runs on what the archive holds, never on what
    happens to be installed beside the interpreter.

    Optional extras found there were imported by our dependencies (httpx loads click,
    pygments and rich for its command line, httpcore loads trio): 6 MB and a dependence on
    the state of the host. ``PYTHONPATH`` entries stay; they are the user's explicit choice.
    """
    dropped = {os.path.realpath(d) for d in site_dirs}
    return [p for p in path if not p or os.path.realpath(p) not in dropped]


def main(archive_path: str, environ: Mapping[str, str]) -> int:
    """Settle the root, sweep, then run shiv's bootstrap, which exits with Aegis's code.

    Returns 70 when no root can be found, and 0 if the bootstrap returns (it does after
    running a script in shiv's interpreter mode, SHIV_INTERPRETER=1).
    """
    name = archive_name(archive_path)
    build_id = build_id_of(archive_path)
    try:
        root, _inuse_fd = pick_root(environ, name, build_id)  # the fd stays open until exit
    except OSError as error:
        sys.stderr.write(f"aegis: {error}\n")
        return EXIT_NO_ROOT
    sweep(root, name, build_id)
    site_packages = unpacked_dir(root, name, build_id) / "site-packages"
    if site_packages.is_dir() and not any(environ.get(v) for v in SHIV_OVERRIDES):
        return run_unpacked(site_packages)
    bootstrap = importlib.import_module("_bootstrap")
    use_root(bootstrap, root)
    bootstrap.bootstrap()
    return 0


def add_site_packages(path: list[str], site_packages: Path) -> list[str]:
    """``path`` with ``site_packages`` (and what its .pth files add) before any other
    site-packages directory, as shiv's bootstrap places it."""
    import site

    length = len(path)
    index = next(
        (i for i, part in enumerate(path) if Path(part).name in ("site-packages", "dist-packages")),
        length,
    )
    saved, sys.path = sys.path, list(path)
    try:
        site.addsitedir(str(site_packages))
        added = sys.path
    finally:
        sys.path = saved
    return added[:index] + added[length:] + added[index:length]


def compile_for_this_python(site_packages: Path) -> None:
    """Bytecode of the unpacked files for the running Python, made once per version.

    shiv compiles them when it unpacks, for the Python that unpacked. Run later by
    another version (python3.10 and python3.12 on one CI host) with
    PYTHONDONTWRITEBYTECODE set, as many images do, the file compiled every module from
    source at every start: ``config validate`` took 107 ms instead of 67, and 2 MB more.
    A marker per version (``.compiled-cpython-311``) makes this a ``stat`` after the
    first time; a directory this user cannot write is left as it is.
    """
    marker = site_packages / f".compiled-{sys.implementation.cache_tag}"
    if marker.exists() or not os.access(site_packages, os.W_OK):
        return
    import compileall

    with contextlib.suppress(OSError):
        compileall.compile_dir(str(site_packages), quiet=2)
        marker.touch()


def run_unpacked(site_packages: Path) -> int:
    """The fast path: this build is unpacked already, so run Aegis from it directly.

    What shiv's bootstrap would do here (put the directory on ``sys.path``, import the
    entry point, call it) without its imports (compileall, hashlib, subprocess, zipfile,
    the interactive console): 10 ms and 1 MB less for every start of the file.
    """
    compile_for_this_python(site_packages)
    sys.path[:] = add_site_packages(sys.path, site_packages)
    module, function = ENTRY_POINT
    entry = getattr(importlib.import_module(module), function)
    return int(entry() or 0)


if __name__ == "__main__":  # pragma: no cover - runs inside the archive
    if not os.environ.get("SHIV_INTERPRETER"):  # a Python shell keeps the host's packages
        sys.path[:] = without_site_packages(sys.path, site_directories())
    sys.exit(main(sys.argv[0], os.environ))
