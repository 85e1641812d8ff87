"""Crashes and broken history files: what a killed process or an unusable SQLite file
leaves behind, seen through real ``aegis`` processes on real files.

Processes are ``python -m aegis`` from this checkout. A run that must stay in its test
step meets a demo qaagent whose ``/api/runs`` hangs until the services stop; readiness is
read from the processes' own output, never waited for by sleeping.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_api_http import Client, poll

from aegis.cli import main
from aegis.demo import DemoServices, Fault

AREA = "Crashes and shared storage"

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60
SERVING = re.compile(r"aegis: serving on (http://\S+) \(Ctrl-C to stop\)")
RUN_LINE = re.compile(r"aegis: running \w+ \(run (\w+), ")
TEST_STEP = "> test on qaagent"


def environ(home: Path) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL") if k in os.environ}
    return {**env, "HOME": str(home), "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}


def write_config(
    directory: Path, demo: DemoServices, history: str = "history.db", workflows: str = ""
) -> Path:
    """``workflows``: more workflows, as lines of YAML indented by two spaces."""
    path = directory / "aegis.yaml"
    path.write_text(
        textwrap.dedent(f"""
        services:
          qaagent: {{url: "{demo.qaagent_url}"}}
        workflows:
        {workflows}
          smoke:
            steps: [{{type: discover, service: qaagent}}]
          broken:
            steps: [{{type: discover, service: qaagent, with: {{path: /missing}}}}]
          slow:
            steps:
              - {{type: discover, service: qaagent}}
              - {{type: test, service: qaagent, timeout: 120}}
        history: {{path: "{history}"}}
        server: {{host: 127.0.0.1, port: 0, max_concurrent_runs: 1}}
        """)
    )
    return path


def aegis(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One `aegis` command to its end; no process of ours ever shows a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "aegis", "--config", str(config), *args],
        env=environ(config.parent),
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    return done


def spawn(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aegis", "--config", str(config), *args],
        env=environ(config.parent),
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# The stderr lines `read_until` has read, by pid, so that none is lost to the test.
READ: dict[int, list[str]] = {}


def read_until(process: subprocess.Popen[str], pattern: re.Pattern[str]) -> re.Match[str]:
    """The first stderr line of ``process`` matching ``pattern`` (lines before it are read
    and kept in ``READ``)."""
    assert process.stderr is not None
    for line in process.stderr:
        READ.setdefault(process.pid, []).append(line)
        found = pattern.search(line)
        if found:
            return found
    process.kill()
    pytest.fail(f"never printed {pattern.pattern!r} (exit {process.wait()})")


def start_run_in_test_step(config: Path) -> tuple[subprocess.Popen[str], str]:
    """`aegis run slow` in its test step; the process and its run id."""
    process = spawn(config, "run", "slow", "--json")
    run_id = read_until(process, RUN_LINE).group(1)
    read_until(process, re.compile(re.escape(TEST_STEP)))
    return process, run_id


def start_server(config: Path) -> tuple[subprocess.Popen[str], Client]:
    process = spawn(config, "serve")
    return process, Client(read_until(process, SERVING).group(1))


def stop_server(process: subprocess.Popen[str]) -> str:
    """SIGTERM, then its whole stderr; it must exit 0 without a traceback."""
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=TIMEOUT)
    err = "".join(READ.pop(process.pid, [])) + rest
    assert process.returncode == 0, err
    assert "Traceback" not in err, err
    return err


def steps_of(run: dict[str, Any]) -> str:
    return ", ".join(f"{s['name']} {s['status']}" for s in run["steps"]) or "none"


@pytest.fixture
def stalled(demo: DemoServices) -> Iterator[DemoServices]:
    demo.qaagent.inject("/api/runs", Fault(status=None, delay=120, times=None))
    yield demo


# ------------------------------------------------------------------------- killed


def test_sigkill_of_serve_mid_run(reliability: Any, tmp_path: Path, stalled: DemoServices) -> None:
    config = write_config(tmp_path, stalled)
    process, client = start_server(config)
    try:
        running = client.run("slow")
        poll(lambda: client.in_test_step(running))
        queued = client.run("slow")  # max_concurrent_runs: 1, so it waits its turn
        assert client.status(queued) == "queued"
    finally:
        process.kill()
        _, killed_err = process.communicate(timeout=TIMEOUT)
    assert "Traceback" not in killed_err

    process, client = start_server(config)
    try:
        first = client.get(f"/api/runs/{running}").data
        second = client.get(f"/api/runs/{queued}").data
        interrupted = client.get("/api/runs?status=interrupted").data["total"]
        stalled.qaagent.clear_faults()
        fresh = client.post("/api/workflows/smoke/run?wait=30").data
    finally:
        stop_server(process)
    assert first["status"] == "interrupted" and first["trigger"] == "api"
    assert [(s["name"], s["status"]) for s in first["steps"]] == [("discover", "succeeded")]
    assert second["status"] == "interrupted" and second["steps"] == []
    assert interrupted == 2 and fresh["status"] == "succeeded"
    reliability.record(
        "SIGKILL of `aegis serve` with one run in a step and one queued, then a restart",
        expected="both runs `interrupted`; the running one keeps the steps that had ended; "
        "the restarted server runs new ones",
        observed=f"running run {first['status']} with steps: {steps_of(first)}; "
        f"queued run {second['status']} with steps: {steps_of(second)}; "
        f"a new run {fresh['status']}",
    )


def test_sigkill_of_aegis_run(reliability: Any, tmp_path: Path, stalled: DemoServices) -> None:
    config = write_config(tmp_path, stalled)
    killed, killed_id = start_run_in_test_step(config)
    alive, alive_id = start_run_in_test_step(config)  # another live run on the same file
    killed.kill()
    _, err = killed.communicate(timeout=TIMEOUT)
    assert "Traceback" not in err

    listed = aegis(config, "history", "--json")
    runs = {r["run_id"]: r for r in json.loads(listed.stdout)["runs"]}
    dead = json.loads(aegis(config, "history", "show", killed_id, "--json").stdout)
    alive.send_signal(signal.SIGTERM)
    out, err = alive.communicate(timeout=TIMEOUT)
    assert alive.returncode == 130 and "Traceback" not in err
    assert dead["status"] == "interrupted"
    assert [(s["name"], s["status"]) for s in dead["steps"]] == [("discover", "succeeded")]
    assert runs[alive_id]["status"] == "running"  # a live run of another process: untouched
    assert json.loads(out)["status"] == "cancelled"
    reliability.record(
        "SIGKILL of `aegis run` in its second step while another `aegis run` shares the file",
        expected="the killed run `interrupted` with its finished steps; the live one untouched",
        observed=f"killed run {dead['status']} with steps: {steps_of(dead)}; "
        f"the other {runs[alive_id]['status']} until SIGTERM made it "
        f"{json.loads(out)['status']}",
    )


# ------------------------------------------------------------ unusable history files


def _garbage(path: Path, fill: Callable[[], None]) -> str:
    path.write_bytes(bytes(range(256)) * 20)
    return "file is not a database"


def _truncated(path: Path, fill: Callable[[], None]) -> str:
    fill()
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size // 2)
    return "database disk image is malformed"


def _directory(path: Path, fill: Callable[[], None]) -> str:
    path.mkdir()
    return "it is a directory"


def _file_in_the_way(path: Path, fill: Callable[[], None]) -> str:
    path.parent.parent.mkdir()
    path.parent.write_text("a file, not a directory\n")
    return "a file is in the way"


Breaker = Callable[[Path, Callable[[], None]], str]
BROKEN: dict[str, tuple[str, Breaker]] = {
    "garbage bytes": ("history.db", _garbage),
    "a truncated SQLite file": ("history.db", _truncated),
    "a directory in its place": ("history.db", _directory),
    "a file where its directory should be": ("d/sub/history.db", _file_in_the_way),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_history_file(
    reliability: Any, tmp_path: Path, demo: DemoServices, case: str
) -> None:
    relative, breaker = BROKEN[case]
    path = tmp_path / relative
    config = write_config(tmp_path, demo, relative)

    def fill() -> None:  # a few runs recorded in a good file
        for _ in range(3):
            assert aegis(config, "run", "smoke").returncode == 0

    reason = breaker(path, fill)
    passed = aegis(config, "run", "smoke", "--json")
    failed = aegis(config, "run", "broken", "--json")
    warning = f"aegis: warning: history: cannot write {path} ("
    for done in (passed, failed):
        assert warning in done.stderr and reason in done.stderr, done.stderr
        assert done.stderr.count("aegis: warning:") == 1
    assert (passed.returncode, json.loads(passed.stdout)["status"]) == (0, "succeeded")
    assert (failed.returncode, json.loads(failed.stdout)["status"]) == (3, "failed")
    reliability.record(
        f"history file: {case}",
        expected="one warning naming the file and the reason; the run goes on in memory; "
        "the exit code is the run's",
        observed=f"warning names the file ({reason}); exit {passed.returncode} for a passing "
        f"run, {failed.returncode} for a failing one; no traceback",
    )


@pytest.fixture
def make_unwritable() -> Iterator[Callable[[Path], None]]:
    """Makes a file or directory unwritable for this user, root included (``chattr +i``)."""
    done: list[Path] = []

    def make(path: Path) -> None:
        if os.geteuid() != 0:
            path.chmod(0o555 if path.is_dir() else 0o444)
        else:
            chattr = shutil.which("chattr")
            if chattr is None:
                pytest.skip("running as root without chattr: nothing is unwritable")
            found = subprocess.run([chattr, "+i", str(path)], capture_output=True, check=False)
            if found.returncode != 0:
                pytest.skip(f"running as root and chattr +i fails here: {found.stderr!r}")
        done.append(path)

    yield make
    for path in done:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=False)
        else:
            path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.mark.parametrize("what", ["the file", "its directory"])
def test_unwritable_history(
    reliability: Any,
    tmp_path: Path,
    demo: DemoServices,
    make_unwritable: Callable[[Path], None],
    what: str,
) -> None:
    directory = tmp_path / "store"
    directory.mkdir()
    config = write_config(tmp_path, demo, "store/history.db")
    earlier = json.loads(aegis(config, "run", "smoke", "--json").stdout)["run_id"]
    make_unwritable(directory / "history.db" if what == "the file" else directory)

    done = aegis(config, "run", "smoke", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "succeeded"
    assert f"aegis: warning: history: cannot write {directory / 'history.db'} (" in done.stderr
    # what was recorded before is still listed and shown, without a warning
    listed = aegis(config, "history", "--json")
    shown = aegis(config, "history", "show", earlier, "--json")
    assert listed.returncode == 0 and shown.returncode == 0
    assert [r["run_id"] for r in json.loads(listed.stdout)["runs"]] == [earlier]
    assert json.loads(shown.stdout)["run_id"] == earlier
    assert "warning" not in listed.stderr + shown.stderr, listed.stderr
    reliability.record(
        f"history: {what} not writable",
        expected="`run` warns once naming the file and runs in memory; "
        "`history` and `history show` still read the file",
        observed=f"run exit {done.returncode} with one warning; history lists "
        f"{len(json.loads(listed.stdout)['runs'])} earlier run, show finds it",
    )


def test_history_locked_forever(
    reliability: Any, tmp_path: Path, demo: DemoServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aegis.history.sqlite as sqlite_history

    config = write_config(tmp_path, demo)
    path = tmp_path / "history.db"
    earlier = json.loads(aegis(config, "run", "smoke", "--json").stdout)["run_id"]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            f"db = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        # The default busy timeout is 10 s; a short one keeps the test quick.
        monkeypatch.setattr(sqlite_history, "DEFAULT_BUSY_TIMEOUT", 0.3)
        out, err = io.StringIO(), io.StringIO()
        code = main(["--config", str(config), "run", "smoke", "--json"], stdout=out, stderr=err)
        listed, listed_err = io.StringIO(), io.StringIO()
        main(["--config", str(config), "history", "--json"], stdout=listed, stderr=listed_err)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(TIMEOUT)
    assert code == 0 and json.loads(out.getvalue())["status"] == "succeeded"
    warning = f"aegis: warning: history: cannot write {path} (database is locked"
    assert warning in err.getvalue() and "Traceback" not in err.getvalue(), err.getvalue()
    assert [r["run_id"] for r in json.loads(listed.getvalue())["runs"]] == [earlier]
    with sqlite3.connect(path) as db:  # the lock is gone: the file is whole and unchanged
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (1,)
    reliability.record(
        "history file locked for good by another process (an open exclusive transaction)",
        expected="after the busy timeout, one warning naming the file; the run goes on in "
        "memory; `history` still reads the file",
        observed=f"run exit {code} with the warning 'database is locked'; history lists "
        f"the {len(json.loads(listed.getvalue())['runs'])} earlier run",
    )


def test_serve_on_a_broken_history_file(
    reliability: Any, tmp_path: Path, demo: DemoServices
) -> None:
    path = tmp_path / "history.db"
    _garbage(path, lambda: None)
    config = write_config(tmp_path, demo)
    process, client = start_server(config)
    try:
        runs = [client.post("/api/workflows/smoke/run?wait=30").data for _ in range(3)]
        listed = client.get("/api/runs").data
    finally:
        err = stop_server(process)
    assert [r["status"] for r in runs] == ["succeeded"] * 3
    assert listed["total"] == 3
    warning = f"aegis: warning: history: cannot write {path} (file is not a database)"
    assert err.count("aegis: warning:") == 1 and warning in err, err
    assert path.read_bytes() == bytes(range(256)) * 20  # left as it was found
    reliability.record(
        "`aegis serve` on a history file that is not a database",
        expected="one warning naming the file; runs work and are listed from memory; "
        "the file is left untouched",
        observed=f"one warning; {len(runs)} runs succeeded, {listed['total']} listed; "
        "file unchanged",
    )


KILLS = 16


def test_sigkill_at_random_moments(reliability: Any, tmp_path: Path, demo: DemoServices) -> None:
    demo.qaagent.inject("*", Fault(status=None, delay=0.04, times=None))
    steps = ", ".join(["{type: discover, service: qaagent}"] * 8)
    config = write_config(tmp_path, demo, workflows=f"  many: {{steps: [{steps}]}}")
    chance = random.Random(20261124)
    pause = threading.Event()
    for _ in range(KILLS):
        process = spawn(config, "run", "many", "--quiet")
        pause.wait(chance.uniform(0.1, 0.9))  # the moment of the kill: startup to the end
        process.kill()
        process.communicate(timeout=TIMEOUT)
    listed = json.loads(aegis(config, "history", "--json", "--limit", "100").stdout)["runs"]
    with sqlite3.connect(tmp_path / "history.db") as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    statuses = {run["status"] for run in listed}
    counts = {s: sum(run["status"] == s for run in listed) for s in sorted(statuses)}
    print(f"\nrandom kills: {KILLS} kills, {len(listed)} runs recorded: {counts}")
    assert integrity == "ok" and statuses <= {"succeeded", "interrupted"}, statuses
    for run in listed:
        if run["status"] == "interrupted":  # the steps that ended, in order, all succeeded
            names = [s["name"] for s in run["steps"]]
            assert names == [
                f"discover-{i}" if i > 1 else "discover" for i in range(1, len(names) + 1)
            ], names
    reliability.record(
        f"SIGKILL of `aegis run` at {KILLS} random moments of an 8-step run",
        expected="the file stays intact; every recorded run is finished or `interrupted` "
        "with the steps that ended",
        observed=f"integrity {integrity}; every recorded run succeeded or was interrupted; "
        "interrupted runs keep their ended steps in order",
    )
