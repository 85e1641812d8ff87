"""The archive's ``__main__`` wrapper, in-process: root choice, in-use locks, sweeping.

These tests use plain dicts as the environment and temp dirs as roots; tests/test_build.py
runs the same code for real inside a built archive.
"""

from __future__ import annotations

import compileall
import fcntl
import importlib.util
import io
import json
import os
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import pytest

from aegis import _pyz_main as wrapper

NAME = "aegis.pyz"
OLD = "a" * 64
NEW = "b" * 64


def unpack(root: Path, build: str, name: str = NAME, package: str = "aegis") -> Path:
    """A fake finished unpacking of ``build`` in ``root``."""
    directory = root / f"{name}_{build}"
    (directory / "site-packages" / package).mkdir(parents=True)
    (directory / "site-packages" / package / "__init__.py").write_text("")
    return directory


def can_lock_exclusive(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        return wrapper.try_lock_exclusive(fd)
    finally:
        os.close(fd)


# --- where to unpack -----------------------------------------------------------------------


def test_explicit_root_reads_shiv_root_like_shiv() -> None:
    assert wrapper.explicit_root({}) is None
    assert wrapper.explicit_root({"SHIV_ROOT": ""}) is None
    assert wrapper.explicit_root({"SHIV_ROOT": "/opt/cache"}) == Path("/opt/cache")
    indirect = {"SHIV_ROOT": "$CACHE", "CACHE": "/var/cache/aegis"}
    assert wrapper.explicit_root(indirect) == Path("/var/cache/aegis")
    assert wrapper.explicit_root({"SHIV_ROOT": "$NOPE"}) == Path("NOPE")


def test_home_root_needs_an_absolute_home() -> None:
    assert wrapper.home_root({"HOME": "/home/qa"}) == Path("/home/qa/.shiv")
    assert wrapper.home_root({}) is None
    assert wrapper.home_root({"HOME": ""}) is None
    assert wrapper.home_root({"HOME": "relative"}) is None


def test_private_temp_root_prefers_an_existing_tmpdir(tmp_path: Path) -> None:
    user = f"aegis-shiv-{os.geteuid()}"
    assert wrapper.private_temp_root({"TMPDIR": str(tmp_path)}) == tmp_path / user
    missing = {"TMPDIR": str(tmp_path / "missing"), "TMP": str(tmp_path)}
    assert wrapper.private_temp_root(missing) == tmp_path / user
    fallback = wrapper.private_temp_root({})
    assert fallback.name == user and fallback.parent.is_dir()


def test_candidates_explicit_root_alone_else_home_then_temp(tmp_path: Path) -> None:
    temp = {"TMPDIR": str(tmp_path)}
    private = (tmp_path / f"aegis-shiv-{os.geteuid()}", True)
    assert list(wrapper.candidate_roots({**temp, "SHIV_ROOT": "/r", "HOME": "/h"})) == [
        (Path("/r"), False)
    ]
    assert list(wrapper.candidate_roots({**temp, "HOME": "/h"})) == [
        (Path("/h/.shiv"), False),
        private,
    ]
    assert list(wrapper.candidate_roots(temp)) == [private]


def test_private_dir_is_created_0700_and_tightened_if_ours(tmp_path: Path) -> None:
    path = tmp_path / "private"
    wrapper.ensure_private_dir(path)
    assert path.stat().st_mode & 0o777 == 0o700
    path.chmod(0o755)
    wrapper.ensure_private_dir(path)
    assert path.stat().st_mode & 0o777 == 0o700


def test_private_dir_refuses_a_symlink_or_a_file(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "file").write_text("")
    for name in ("link", "file"):
        with pytest.raises(NotADirectoryError):
            wrapper.ensure_private_dir(tmp_path / name)


def test_private_dir_refuses_another_users_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "planted"
    path.mkdir(mode=0o777)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(path).st_uid + 1)
    with pytest.raises(PermissionError, match="belongs to uid"):
        wrapper.ensure_private_dir(path)


def test_pick_root_uses_a_writable_home(tmp_path: Path) -> None:
    environ = {"HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path)}
    root, fd = wrapper.pick_root(environ, NAME, NEW)
    try:
        assert root == tmp_path / "home" / ".shiv"
        assert fd is not None and wrapper.is_same_file(fd, wrapper.inuse_path(root, NAME, NEW))
    finally:
        assert fd is not None
        os.close(fd)


def test_pick_root_falls_back_when_home_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    environ = {"HOME": str(blocker / "home"), "TMPDIR": str(tmp_path)}
    root, fd = wrapper.pick_root(environ, NAME, NEW)
    assert fd is not None
    os.close(fd)
    assert root == tmp_path / f"aegis-shiv-{os.geteuid()}"


def test_pick_root_uses_a_read_only_root_that_already_has_this_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unpack(tmp_path / "root", NEW)

    def read_only(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(wrapper, "claim", read_only)
    assert wrapper.pick_root({"SHIV_ROOT": str(tmp_path / "root")}, NAME, NEW) == (
        tmp_path / "root",
        None,
    )


def test_pick_root_fails_with_every_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    (tmp_path / f"aegis-shiv-{os.geteuid()}").write_text("")  # temp root taken by a file
    environ = {"HOME": str(blocker), "TMPDIR": str(tmp_path)}
    with pytest.raises(wrapper.NoRootError) as caught:
        wrapper.pick_root(environ, NAME, NEW)
    message = str(caught.value)
    assert str(blocker / ".shiv") in message
    assert f"aegis-shiv-{os.geteuid()}" in message
    assert message.endswith("set SHIV_ROOT to a writable directory")


def test_explicit_root_has_no_fallback(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    environ = {"SHIV_ROOT": str(blocker / "root"), "TMPDIR": str(tmp_path)}
    with pytest.raises(wrapper.NoRootError, match="Not a directory"):
        wrapper.pick_root(environ, NAME, NEW)
    assert not (tmp_path / f"aegis-shiv-{os.geteuid()}").exists()


# --- in-use locks and sweeping -------------------------------------------------------------


def test_claim_holds_a_shared_lock_that_blocks_the_sweeper(tmp_path: Path) -> None:
    fd = wrapper.claim(tmp_path, False, NAME, OLD)
    other = wrapper.claim(tmp_path, False, NAME, OLD)  # shared: a second process may run too
    path = wrapper.inuse_path(tmp_path, NAME, OLD)
    assert not can_lock_exclusive(path)
    os.close(fd)
    assert not can_lock_exclusive(path)
    os.close(other)
    assert can_lock_exclusive(path)


def test_claim_starts_over_when_a_sweeper_removed_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter([False, True])
    monkeypatch.setattr(wrapper, "is_same_file", lambda fd, path: next(answers))
    os.close(wrapper.claim(tmp_path, False, NAME, OLD))
    assert next(answers, None) is None


def test_claim_closes_its_file_when_locking_is_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[int] = []
    real_open = os.open

    def tracking_open(*args: object, **kwargs: object) -> int:
        fd = real_open(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(fd)
        return fd

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(wrapper, "lock_shared", interrupted)
    with pytest.raises(KeyboardInterrupt):
        wrapper.claim(tmp_path, False, NAME, OLD)
    with pytest.raises(OSError):
        os.fstat(opened[0])


def test_lock_shared_runs_unlocked_where_flock_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    os.close(wrapper.claim(tmp_path, False, NAME, OLD))


def test_old_build_ids_are_other_aegis_builds_of_this_name(tmp_path: Path) -> None:
    unpack(tmp_path, OLD)
    unpack(tmp_path, NEW)
    unpack(tmp_path, "c" * 64, package="someone_else")  # another app's archive, same name
    unpack(tmp_path, "d" * 64, name="other.pyz")
    (tmp_path / f".{NAME}_{'e' * 64}_inuse").write_text("")  # a half-done build of ours
    (tmp_path / f"{NAME}_{'e' * 64}.tmp").mkdir()
    (tmp_path / f"{NAME}_notahash").mkdir()
    assert wrapper.old_build_ids(tmp_path, NAME, NEW) == {OLD, "e" * 64}


def test_sweep_removes_unused_old_builds_and_keeps_used_ones(tmp_path: Path) -> None:
    unpack(tmp_path, OLD)
    (tmp_path / f"{NAME}_{OLD}.tmp").mkdir()
    (tmp_path / f".{NAME}_{OLD}_lock").write_text("")
    busy = "c" * 64
    unpack(tmp_path, busy)
    held = wrapper.claim(tmp_path, False, NAME, busy)
    mine = wrapper.claim(tmp_path, False, NAME, NEW)
    unpack(tmp_path, NEW)
    (tmp_path / f".{NAME}_trash-0123-deadbeef").mkdir()  # a crashed sweeper's leftover
    try:
        wrapper.sweep(tmp_path, NAME, NEW)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [
                f"{NAME}_{busy}",
                f".{NAME}_{busy}_inuse",
                f"{NAME}_{NEW}",
                f".{NAME}_{NEW}_inuse",
            ]
        )
    finally:
        os.close(held)
        os.close(mine)
    wrapper.sweep(tmp_path, NAME, NEW)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{NAME}_{NEW}_inuse", f"{NAME}_{NEW}"]


def test_retire_leaves_a_lock_file_it_lost_to_another_sweeper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unpack(tmp_path, OLD)
    monkeypatch.setattr(wrapper, "is_same_file", lambda fd, path: False)
    assert wrapper.retire(tmp_path, NAME, OLD) == []
    assert (tmp_path / f"{NAME}_{OLD}").is_dir()


def test_sweep_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrapper.sweep(tmp_path / "missing", NAME, NEW)
    unpack(tmp_path, OLD)

    def failing(*args: object) -> list[Path]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(wrapper, "retire", failing)
    wrapper.sweep(tmp_path, NAME, NEW)
    assert (tmp_path / f"{NAME}_{OLD}").is_dir()


# --- handing over to shiv ------------------------------------------------------------------


def fake_archive(path: Path, build: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("environment.json", json.dumps({"build_id": build}))
    return path


def test_archive_identity(tmp_path: Path) -> None:
    archive = fake_archive(tmp_path / "aegis.pyz", NEW)
    (tmp_path / "aegis").symlink_to(archive)
    assert wrapper.build_id_of(str(archive)) == NEW
    assert wrapper.archive_name(str(tmp_path / "aegis")) == "aegis.pyz"


def test_use_root_makes_shiv_unpack_there() -> None:
    calls = []

    def cache_path(archive: object, root_dir: str | None, build_id: str) -> Path:
        calls.append(root_dir)
        return Path(root_dir or "~/.shiv", f"x_{build_id}")

    bootstrap = types.SimpleNamespace(cache_path=cache_path)
    wrapper.use_root(bootstrap, Path("/chosen"))
    assert bootstrap.cache_path(None, None, NEW) == Path("/chosen", f"x_{NEW}")
    assert calls == ["/chosen"]


def test_main_sweeps_then_hands_over_to_the_bootstrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = fake_archive(tmp_path / "aegis.pyz", NEW)
    root = tmp_path / "root"
    unpack(root, OLD)
    seen: list[Path] = []
    bootstrap = types.ModuleType("_bootstrap")
    bootstrap.cache_path = lambda archive, root_dir, build_id: Path(root_dir, build_id)  # type: ignore[attr-defined]
    bootstrap.bootstrap = lambda: seen.append(bootstrap.cache_path(None, None, NEW))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "_bootstrap", bootstrap)
    assert wrapper.main(str(archive), {"SHIV_ROOT": str(root)}) == 0
    assert seen == [root / NEW]
    assert not (root / f"{NAME}_{OLD}").exists()


def test_main_runs_an_unpacked_build_directly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path: no shiv bootstrap once this build is unpacked, unless SHIV_* asks."""
    archive = fake_archive(tmp_path / "aegis.pyz", NEW)
    root = tmp_path / "root"
    site_packages = unpack(root, NEW) / "site-packages"
    (site_packages / "extra.pth").write_text("extra-dir\n")
    (site_packages / "extra-dir").mkdir()
    entry = types.ModuleType("fake_cli")
    entry.main = lambda: 7  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_cli", entry)
    monkeypatch.setattr(wrapper, "ENTRY_POINT", ("fake_cli", "main"))
    bootstrap = types.ModuleType("_bootstrap")
    bootstrap.bootstrap = lambda: pytest.fail("the bootstrap ran")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "_bootstrap", bootstrap)
    monkeypatch.setattr(sys, "path", ["/x/zipapp", "/usr/lib/python3/site-packages", "/y"])
    assert wrapper.main(str(archive), {"SHIV_ROOT": str(root)}) == 7
    # ours, and what its .pth adds, before the interpreter's site-packages
    assert sys.path == [
        "/x/zipapp",
        str(site_packages),
        str(site_packages / "extra-dir"),
        "/usr/lib/python3/site-packages",
        "/y",
    ]
    seen: list[str] = []
    bootstrap.bootstrap = lambda: seen.append("bootstrap")  # type: ignore[attr-defined]
    bootstrap.cache_path = lambda archive, root_dir, build_id: Path(root_dir, build_id)  # type: ignore[attr-defined]
    environ = {"SHIV_ROOT": str(root), "SHIV_INTERPRETER": "1"}
    assert wrapper.main(str(archive), environ) == 0
    assert seen == ["bootstrap"]


def test_main_reports_no_root_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = fake_archive(tmp_path / "aegis.pyz", NEW)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert wrapper.main(str(archive), {"SHIV_ROOT": str(blocker / "r")}) == 70
    assert stderr.getvalue().startswith("aegis: no directory to unpack into (")


def test_is_same_file_notices_an_unlinked_or_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "inuse"
    path.write_text("")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert wrapper.is_same_file(fd, path)
        path.unlink()
        assert not wrapper.is_same_file(fd, path)
        path.write_text("")
        assert not wrapper.is_same_file(fd, path)
    finally:
        os.close(fd)


def test_site_packages_are_dropped_from_the_path_but_pythonpath_stays(tmp_path: Path) -> None:
    site_dir, other = tmp_path / "site-packages", tmp_path / "mine"
    site_dir.mkdir()
    other.mkdir()
    link = tmp_path / "link"
    link.symlink_to(site_dir)
    path = ["", "/archive.pyz", str(other), str(site_dir), str(link), "/lib/python3"]

    kept = wrapper.without_site_packages(path, [str(site_dir)])
    assert kept == ["", "/archive.pyz", str(other), "/lib/python3"]
    assert wrapper.without_site_packages(path, []) == path


def test_site_directories_name_this_interpreters_site_packages() -> None:
    import site

    found = wrapper.site_directories()
    assert set(site.getsitepackages()) <= set(found)


def one_module_site_packages(tmp_path: Path) -> Path:
    site_packages = tmp_path / "site-packages"
    site_packages.mkdir()
    (site_packages / "mod.py").write_text("X = 1\n")
    return site_packages


def test_an_unpacked_build_is_compiled_once_for_each_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site_packages = one_module_site_packages(tmp_path)
    compiled: list[str] = []
    real = compileall.compile_dir

    def counting(directory: str, **options: Any) -> bool:
        compiled.append(directory)
        return bool(real(directory, **options))

    monkeypatch.setattr(compileall, "compile_dir", counting)
    wrapper.compile_for_this_python(site_packages)
    wrapper.compile_for_this_python(site_packages)  # the marker says it is done
    assert compiled == [str(site_packages)]
    assert Path(importlib.util.cache_from_source(str(site_packages / "mod.py"))).exists()
    assert (site_packages / f".compiled-{sys.implementation.cache_tag}").exists()


def test_an_unpacked_build_this_user_cannot_write_is_not_compiled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site_packages = one_module_site_packages(tmp_path)
    monkeypatch.setattr(wrapper.os, "access", lambda path, mode: False)
    wrapper.compile_for_this_python(site_packages)
    assert not (site_packages / "__pycache__").exists()
    assert not list(site_packages.glob(".compiled-*"))


def test_a_python_older_than_3_10_is_refused_in_plain_words() -> None:
    from aegis._pyz_main import too_old

    assert too_old(3, 9, 18) == "Aegis needs Python 3.10 or newer (this is 3.9.18)"
    assert too_old(2, 7, 18) == "Aegis needs Python 3.10 or newer (this is 2.7.18)"
    assert too_old(3, 10, 0) is None and too_old(4, 0, 0) is None
