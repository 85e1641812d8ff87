"""The built ``aegis.pyz``: what is inside it, and that it runs everywhere DESIGN §9 says.

One session build (from a snapshot of the package, so edits elsewhere cannot race the
comparisons) serves most tests; a few build again: to compare bytes, to change the content,
and from a bare Python that has to fetch shiv itself. Every run gets its own unpack root.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version
from pyz_helpers import (
    BUILD_PY,
    PYTHONS,
    ROOT,
    RUN_TIMEOUT,
    base_environ,
    build_id,
    build_pyz,
    load_build_module,
    require_python,
    run_pyz,
    snapshot_project,
    unavailable,
    unpackings,
)

from aegis import __version__

pytestmark = pytest.mark.pyz

MAX_SIZE = 2_000_000
RUNTIME_DISTS = {
    "anyio",
    "asn1crypto",
    "certifi",
    "cronsim",
    "exceptiongroup",
    "h11",
    "httpcore",
    "httpx",
    "idna",
    "jmespath",
    "pg8000",
    "python-dateutil",
    "pyyaml",
    "scramp",
    "six",
    "sniffio",
    "socksio",
    "typing-extensions",
    "tzdata",
}
INVALID_CONFIG = "servces: {}\n"


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    """A loopback HTTP server answering 200 to GET, for httpx inside the archive."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join()


def entries(pyz: Path) -> list[str]:
    with zipfile.ZipFile(pyz) as archive:
        return archive.namelist()


def environment_json(pyz: Path) -> dict[str, object]:
    with zipfile.ZipFile(pyz) as archive:
        data: dict[str, object] = json.loads(archive.read("environment.json"))
    return data


def bundled(pyz: Path) -> dict[str, tuple[Version, str]]:
    """Each bundled distribution by canonical name: its version and its METADATA text."""
    found: dict[str, tuple[Version, str]] = {}
    with zipfile.ZipFile(pyz) as archive:
        for name in archive.namelist():
            if name.endswith(".dist-info/METADATA"):
                metadata = archive.read(name).decode()
                dist = re.search(r"^Name: (\S+)", metadata, re.M)
                version = re.search(r"^Version: (\S+)", metadata, re.M)
                assert dist and version, name
                found[canonicalize_name(dist.group(1))] = (Version(version.group(1)), metadata)
    return found


def private_root(tmpdir: Path) -> Path:
    return tmpdir / f"aegis-shiv-{os.geteuid()}"


def assert_version(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"aegis {__version__}"
    assert "Traceback" not in done.stderr


# --- what is inside ------------------------------------------------------------------------


def test_archive_is_a_shiv_zipapp_with_our_main(pyz: Path, project: Path) -> None:
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert os.access(pyz, os.X_OK)
    env = environment_json(pyz)
    assert env["entry_point"] == "aegis.cli:main"
    assert env["script"] is None  # -e, not -c
    assert env["reproducible"] is True
    # bytecode is written once, when the archive is unpacked: a host that sets
    # PYTHONDONTWRITEBYTECODE (common in CI images) would otherwise compile every module
    # on every start
    assert env["compile_pyc"] is True
    with zipfile.ZipFile(pyz) as archive:
        assert archive.read("__main__.py") == (project / "aegis" / "_pyz_main.py").read_bytes()
        assert "_bootstrap/__init__.py" in archive.namelist()


def test_archive_entries_carry_the_source_date(pyz: Path) -> None:
    # the snapshot is no git checkout, so the date is the fixed fallback, 1980-01-01
    with zipfile.ZipFile(pyz) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert environment_json(pyz)["built_at"] == "1980-01-01 00:00:00"


def test_source_date_epoch_is_the_env_then_the_last_commit(tmp_path: Path) -> None:
    build = load_build_module()
    assert build.source_date_epoch({"SOURCE_DATE_EPOCH": "1700000000"}, tmp_path) == 1700000000
    assert build.source_date_epoch({}, tmp_path) == build.FALLBACK_EPOCH
    if shutil.which("git") is None:
        unavailable("git is not installed")
    stamp = "1710000000 +0000"
    env = {**os.environ, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run([*git, *args], cwd=tmp_path, env=env, check=True, capture_output=True)
    assert build.source_date_epoch({}, tmp_path) == 1710000000


def test_build_refuses_a_tree_without_the_package(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BUILD_PY), "--project", str(tmp_path), "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "has no aegis package" in done.stderr
    assert not (tmp_path / "x").exists()


def test_archive_has_no_compiled_code_or_caches(pyz: Path) -> None:
    names = entries(pyz)
    compiled = [n for n in names if n.endswith((".so", ".pyd", ".dylib", ".pyc", ".pyo"))]
    assert compiled == []
    assert [n for n in names if "__pycache__" in n] == []
    assert not any(n.startswith("site-packages/bin/") for n in names)
    assert "site-packages/yaml/__init__.py" in names


def test_archive_is_small(pyz: Path) -> None:
    size = pyz.stat().st_size
    assert size <= MAX_SIZE, f"aegis.pyz is {size:,} bytes"


def test_archive_holds_the_package_and_only_the_runtime_dependencies(
    pyz: Path, project: Path
) -> None:
    assert set(bundled(pyz)) == RUNTIME_DISTS
    names = entries(pyz)
    package = {
        p.relative_to(project).as_posix()
        for p in (project / "aegis").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    inside = {
        n.removeprefix("site-packages/") for n in names if n.startswith("site-packages/aegis/")
    }
    assert inside == package


def test_dist_info_keeps_only_metadata_and_licenses(pyz: Path) -> None:
    for name in entries(pyz):
        if ".dist-info/" in name:
            kept = name.split(".dist-info/", 1)[1]
            assert kept == "METADATA" or kept.startswith(("licenses/", "LICEN")), name


@pytest.mark.parametrize("python", PYTHONS)
def test_bundled_requirements_hold_on_every_python(pyz: Path, python: str) -> None:
    """Every Requires-Dist that applies on this Python (no extras) is bundled, in range.

    This is what catches a backport (exceptiongroup, typing_extensions) that a resolver on a
    newer Python would have skipped.
    """
    environment = {"python_version": python, "python_full_version": f"{python}.0", "extra": ""}
    dists = bundled(pyz)
    for owner, (_, metadata) in dists.items():
        requires_python = re.search(r"^Requires-Python: (.+)$", metadata, re.M)
        if requires_python:
            supported = SpecifierSet(requires_python.group(1))
            assert supported.contains(f"{python}.0"), f"{owner} does not support {python}"
        for line in re.findall(r"^Requires-Dist: ([^\r\n]+)", metadata, re.M):
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            wanted = canonicalize_name(requirement.name)
            assert wanted in dists, f"{owner} needs {requirement} on {python}: not bundled"
            assert requirement.specifier.contains(dists[wanted][0], prereleases=True), line


def test_bundled_versions_satisfy_pyproject(pyz: Path) -> None:
    """The pins in build.py stay inside the ranges pyproject.toml declares."""
    try:
        import tomllib
    except ImportError:
        unavailable("tomllib needs Python 3.11+ for the test process")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    dists = bundled(pyz)
    for line in declared:
        requirement = Requirement(line)
        assert requirement.specifier.contains(dists[canonicalize_name(requirement.name)][0])


# --- it runs -------------------------------------------------------------------------------


@pytest.mark.parametrize("python", PYTHONS)
def test_version_runs_on_each_python(pyz: Path, tmp_path: Path, python: str) -> None:
    root = tmp_path / "root"
    done = run_pyz(require_python(python), pyz, ["--version"], base_environ(SHIV_ROOT=str(root)))
    assert_version(done)
    assert unpackings(root) == [f"aegis.pyz_{build_id(pyz)}"]


@pytest.mark.parametrize("python", ["3.8", "3.9"])
def test_an_older_python_is_told_what_is_needed_before_anything_else(
    pyz: Path, tmp_path: Path, python: str
) -> None:
    interpreter = require_python(python)
    micro = subprocess.run(
        [interpreter, "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    refusal = f"Aegis needs Python 3.10 or newer (this is {micro})\n"
    root = tmp_path / "root"
    for args in (["--version"], ["config", "validate", "nowhere.yaml"], ["demo"]):
        done = run_pyz(interpreter, pyz, args, base_environ(SHIV_ROOT=str(root)), cwd=tmp_path)
        assert (done.returncode, done.stdout, done.stderr) == (2, "", refusal)
    assert not root.exists()  # nothing was unpacked
    built = subprocess.run(
        [interpreter, str(BUILD_PY), "--out", str(tmp_path / "old.pyz")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (built.returncode, built.stdout, built.stderr) == (2, "", refusal)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_second_python_gets_its_own_bytecode_once(pyz: Path, tmp_path: Path) -> None:
    # 3.12 unpacks (shiv compiles for 3.12); 3.10 then runs the unpacked build. With
    # PYTHONDONTWRITEBYTECODE it compiled every module from source at every start.
    root = tmp_path / "root"
    env = base_environ(SHIV_ROOT=str(root), PYTHONDONTWRITEBYTECODE="1")
    assert_version(run_pyz(require_python("3.12"), pyz, ["--version"], env))
    site_packages = root / f"aegis.pyz_{build_id(pyz)}" / "site-packages"
    yaml_cache = site_packages / "yaml" / "__pycache__"
    assert not list(yaml_cache.glob("*.cpython-310.pyc"))
    assert_version(run_pyz(require_python("3.10"), pyz, ["--version"], env))
    assert list(yaml_cache.glob("reader.cpython-310.pyc"))
    assert (site_packages / ".compiled-cpython-310").exists()


def test_the_archive_runs_without_the_interpreters_site_packages(pyz: Path, tmp_path: Path) -> None:
    # packages installed beside the interpreter (click, trio, pygments...) were imported
    # as optional extras of httpx and httpcore: 6 MB more for a server's first run
    python = require_python("3.12")
    site_dirs = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = base_environ(SHIV_ROOT=str(tmp_path / "root"), SHIV_ENTRY_POINT="site:_script")
    done = run_pyz(python, pyz, [], env)
    path = done.stdout.split("]")[0]
    assert "site-packages" in path and f"'{site_dirs}'" not in path, done.stdout
    shell = run_pyz(python, pyz, ["-c", "import sys; print(sys.path)"],
                    {**env, "SHIV_INTERPRETER": "1"})  # fmt: skip
    assert site_dirs in shell.stdout  # a Python shell on the archive keeps them


@pytest.mark.parametrize("python", PYTHONS)
def test_config_validate_runs_on_each_python(pyz: Path, tmp_path: Path, python: str) -> None:
    interpreter = require_python(python)
    env = base_environ(SHIV_ROOT=str(tmp_path / "root"))
    good = tmp_path / "aegis.yaml"
    shutil.copyfile(ROOT / "aegis.example.yaml", good)
    done = run_pyz(interpreter, pyz, ["config", "validate", str(good)], env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid" in done.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(INVALID_CONFIG)
    done = run_pyz(interpreter, pyz, ["config", "validate", str(bad)], env, cwd=tmp_path)
    assert done.returncode == 1
    assert "servces" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_the_built_file_alone_serves_the_reference_services_for_the_example(
    pyz: Path, tmp_path: Path
) -> None:
    """``demo --services`` until Ctrl-C, and the example config run against it."""
    import queue
    import signal

    python = require_python("3.12")
    env = base_environ(SHIV_ROOT=str(tmp_path / "root"))
    argv = ["demo", "--services", "--qaagent-port", "0", "--bugalizer-port", "0"]
    services = subprocess.Popen(
        [python, str(pyz), *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    stdout = services.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in stdout])
    reader.start()
    try:
        first = [lines.get(timeout=RUN_TIMEOUT) for _ in range(3)]
        assert first[2] == "Press Ctrl-C to stop.\n", first
        urls = {line.split()[0]: line.split()[1] for line in first[:2]}
        example = shutil.copy(ROOT / "aegis.example.yaml", tmp_path / "aegis.yaml")
        env_run = {**env, "QAAGENT_URL": urls["qaagent"], "BUGALIZER_URL": urls["bugalizer"]}
        done = run_pyz(python, pyz, ["--config", str(example), "run", "smoke", "--json"], env_run)
        assert json.loads(done.stdout)["status"] == "succeeded", done.stderr
    finally:
        services.send_signal(signal.SIGINT)
        code = services.wait(timeout=RUN_TIMEOUT)
        reader.join(RUN_TIMEOUT)
    assert code == 0 and "Traceback" not in (services.stderr.read() if services.stderr else "")


RUNTIME_CHECK = """
import asyncio, json, sys, zoneinfo
from datetime import datetime, timezone
import httpx, yaml
from aegis.config.model import ScheduleSpec
from aegis.schedules import next_fires

async def fetch(url):
    async with httpx.AsyncClient() as client:  # anyio, h11, exceptiongroup on 3.10
        return (await client.get(url)).status_code

async def socks():
    async with httpx.AsyncClient(proxy="socks5://127.0.0.1:1"):  # needs socksio
        return True

print(json.dumps({
    "python": "%d.%d" % sys.version_info[:2],
    "libyaml": yaml.__with_libyaml__,
    "yaml": yaml.safe_load("a: [1, 2]"),
    "status": asyncio.run(fetch(sys.argv[1])),
    "socks": asyncio.run(socks()),
    "shiv_root": __import__("os").environ.get("SHIV_ROOT"),
    "tzpath": list(zoneinfo.TZPATH),  # none: the zones come from the bundled tzdata
    "tick": next_fires(
        ScheduleSpec(cron="0 9 * * *", timezone="America/New_York"),
        datetime(2026, 7, 1, tzinfo=timezone.utc),
    )[0].isoformat(),
}))
"""


@pytest.mark.parametrize("python", PYTHONS)
def test_runtime_is_pure_python_on_each_python(
    pyz: Path, tmp_path: Path, python: str, http_url: str
) -> None:
    env = base_environ(HOME=str(tmp_path / "home"), SHIV_INTERPRETER="1", PYTHONTZPATH="")
    done = run_pyz(require_python(python), pyz, ["-c", RUNTIME_CHECK, http_url], env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "python": python,
        "libyaml": False,
        "yaml": {"a": [1, 2]},
        "status": 200,
        "socks": True,
        "shiv_root": None,  # the root we chose is not exported to child processes
        "tzpath": [],
        "tick": "2026-07-01T13:00:00+00:00",
    }


def test_runs_through_its_shebang(pyz: Path, tmp_path: Path) -> None:
    assert_version(run_pyz(None, pyz, ["--version"], base_environ(SHIV_ROOT=str(tmp_path))))


def test_writable_home_unpacks_into_dot_shiv(pyz: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = base_environ(HOME=str(home), TMPDIR=str(tmp_path))
    assert_version(run_pyz(require_python("3.12"), pyz, ["--version"], env))
    assert unpackings(home / ".shiv") == [f"aegis.pyz_{build_id(pyz)}"]
    assert not private_root(tmp_path).exists()


def test_home_unset_unpacks_into_a_private_temp_dir(pyz: Path, tmp_path: Path) -> None:
    env = base_environ(TMPDIR=str(tmp_path))
    assert "HOME" not in env
    assert_version(run_pyz(require_python("3.12"), pyz, ["--version"], env))
    root = private_root(tmp_path)
    assert unpackings(root) == [f"aegis.pyz_{build_id(pyz)}"]
    info = root.stat()
    assert (info.st_mode & 0o777, info.st_uid) == (0o700, os.geteuid())


@pytest.mark.parametrize("home", ["under-a-file", "a-file", "relative"])
def test_unusable_home_falls_back_to_the_temp_dir(pyz: Path, tmp_path: Path, home: str) -> None:
    # chmod 0555 does not stop root; a path through a regular file fails for everyone
    # (ENOTDIR), which is what a read-only or missing HOME looks like to mkdir.
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    value = {"under-a-file": str(blocker / "home"), "a-file": str(blocker), "relative": "home"}
    env = base_environ(HOME=value[home], TMPDIR=str(tmp_path))
    assert_version(run_pyz(require_python("3.12"), pyz, ["--version"], env, cwd=tmp_path))
    assert unpackings(private_root(tmp_path)) == [f"aegis.pyz_{build_id(pyz)}"]
    assert not (tmp_path / "home").exists()


def test_shiv_root_wins_over_home_and_temp(pyz: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    root = tmp_path / "chosen"
    env = base_environ(HOME=str(home), TMPDIR=str(tmp_path), SHIV_ROOT=str(root))
    assert_version(run_pyz(require_python("3.12"), pyz, ["--version"], env))
    assert unpackings(root) == [f"aegis.pyz_{build_id(pyz)}"]
    assert not (home / ".shiv").exists()
    assert not private_root(tmp_path).exists()


def test_unusable_shiv_root_is_a_clear_error(pyz: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    env = base_environ(SHIV_ROOT=str(blocker / "root"), TMPDIR=str(tmp_path))
    done = run_pyz(require_python("3.12"), pyz, ["--version"], env)
    assert done.returncode == 70
    assert done.stderr.startswith("aegis: no directory to unpack into")
    assert "SHIV_ROOT" in done.stderr
    assert "Traceback" not in done.stderr
    assert not private_root(tmp_path).exists()  # an explicit SHIV_ROOT has no fallback


def test_eight_concurrent_cold_starts_all_succeed(pyz: Path, tmp_path: Path) -> None:
    # the four Pythons twice over, all at once, HOME unset: they race to create the private
    # root and to unpack the same build into it
    interpreters = [require_python(v) for v in PYTHONS] * 2
    env = base_environ(TMPDIR=str(tmp_path))
    processes = [
        subprocess.Popen(
            [python, str(pyz), "--version"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for python in interpreters
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert (process.returncode, out.strip()) == (0, f"aegis {__version__}"), err
    root = private_root(tmp_path)
    assert unpackings(root) == [f"aegis.pyz_{build_id(pyz)}"]
    assert [p.name for p in root.iterdir() if p.name.endswith(".tmp")] == []


# --- builds --------------------------------------------------------------------------------


def test_two_builds_of_one_tree_are_byte_identical(
    pyz: Path, project: Path, tmp_path: Path
) -> None:
    again = build_pyz(tmp_path / "aegis.pyz", "--project", str(project))
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(pyz.read_bytes()).digest()


def test_new_build_removes_the_old_unpacking_once_unused(
    pyz: Path, project: Path, tmp_path: Path
) -> None:
    changed = snapshot_project(tmp_path / "changed")
    data = changed / "aegis" / "_build_probe"
    data.mkdir()
    (data / "page.html").write_text("<p>package data</p>\n")
    (data / ".page.html.swp").write_text("editor junk")
    (data / "__pycache__").mkdir()
    (data / "__pycache__" / "x.cpython-312.pyc").write_bytes(b"junk")
    new = build_pyz(tmp_path / "new" / "aegis.pyz", "--project", str(changed))
    names = entries(new)
    assert "site-packages/aegis/_build_probe/page.html" in names
    assert not [n for n in names if "_build_probe/" in n and not n.endswith("page.html")]
    old_id, new_id = build_id(pyz), build_id(new)
    assert old_id != new_id

    python = require_python("3.12")
    root = tmp_path / "root"
    env = base_environ(SHIV_ROOT=str(root))
    # an old-build process that stays alive: its unpacking must survive the new build's start
    holder = subprocess.Popen(
        [python, str(pyz), "-c", "print('ready', flush=True); import sys; sys.stdin.read()"],
        env={**env, "SHIV_INTERPRETER": "1"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        done = run_pyz(python, new, ["-c", "pass"], {**env, "SHIV_INTERPRETER": "1"})
        assert done.returncode == 0, done.stderr
        assert unpackings(root) == sorted([f"aegis.pyz_{old_id}", f"aegis.pyz_{new_id}"])
    finally:
        holder.communicate(input="", timeout=60)
    assert holder.returncode == 0

    done = run_pyz(python, new, ["-c", "pass"], {**env, "SHIV_INTERPRETER": "1"})
    assert done.returncode == 0, done.stderr
    assert unpackings(root) == [f"aegis.pyz_{new_id}"]
    assert [p.name for p in root.iterdir() if old_id in p.name or "trash" in p.name] == []


def test_build_on_a_bare_python_installs_shiv_privately(
    pyz: Path, project: Path, tmp_path: Path
) -> None:
    """``python3.10 -S`` sees no third-party package: build.py must fetch shiv itself."""
    python = require_python("3.10")
    build_dir = tmp_path / "build"
    fresh = build_pyz(
        tmp_path / "aegis.pyz",
        "--project",
        str(project),
        "--build-dir",
        str(build_dir),
        python=[python, "-S"],
    )
    assert (build_dir / "shiv-env").is_dir()
    # same content, same build id; the bootstrap may differ if the venv has another shiv
    assert build_id(fresh) == build_id(pyz)
    with zipfile.ZipFile(fresh) as a, zipfile.ZipFile(pyz) as b:
        ours = {i.filename: i.CRC for i in a.infolist() if not i.filename.startswith("_boot")}
        theirs = {i.filename: i.CRC for i in b.infolist() if not i.filename.startswith("_boot")}
    ours.pop("environment.json")
    theirs.pop("environment.json")
    assert ours == theirs
    env = base_environ(SHIV_ROOT=str(tmp_path / "root"), SHIV_INTERPRETER="1")
    done = run_pyz(require_python("3.13"), fresh, ["-c", "import aegis, httpx, yaml"], env)
    assert done.returncode == 0, done.stderr
