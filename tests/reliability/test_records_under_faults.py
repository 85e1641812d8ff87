"""Records lost or wrong: history under a lock held by another process, a file deleted or
replaced mid-run, damaged rows, runs of another container, shutdown with a huge queue,
absurd retries, and a SIGTERM while webhook deliveries are waited for.

Processes are ``python -m aegis`` from this checkout, as in ``test_crashes.py``; the
faults are made by other real processes (a SQLite lock holder) and real files.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_api_http import poll
from test_crashes import (
    RUN_LINE,
    TEST_STEP,
    TIMEOUT,
    aegis,
    environ,
    read_until,
    spawn,
    start_server,
    stop_server,
    write_config,
)

from aegis.demo import DemoServices, Fault
from aegis.history.sqlite import SqliteHistory

AREA = "Crashes and shared storage"
TEST_LINE = re.compile(re.escape(TEST_STEP))

# Another process that takes the file's write lock when told, holds it, and lets go.
LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
sys.stdin.readline()
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))  # the fault: the lock is held this long
db.execute("COMMIT")
print("released", flush=True)
"""

# Two more workflows for write_config (its `workflows` lines go under an indented key).
LIMITED = (
    "  limited: {timeout: 2, steps: [{type: discover, service: qaagent},"
    " {type: test, service: qaagent, timeout: 120}]}\n" + " " * 8 + "  guarded: {steps:"
    " [{type: discover, service: qaagent}, {type: test, service: qaagent, timeout: 3}]}"
)


@pytest.fixture
def stalled(demo: DemoServices) -> Iterator[DemoServices]:
    demo.qaagent.inject("/api/runs", Fault(status=None, delay=120, times=None))
    yield demo


class Locker:
    def __init__(self, path: Path, seconds: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(path), str(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def lock(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "locked\n"

    def released(self) -> None:
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "released\n"
        self.process.wait(TIMEOUT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def read_json(process: subprocess.Popen[str]) -> str:
    """The ``--json`` output of ``process`` once it is whole, while the process goes on."""
    assert process.stdout is not None
    text = ""
    while not text.endswith("\n}\n"):
        piece = process.stdout.read(1)
        assert piece, f"stdout closed after {text!r}"
        text += piece
    return text


def read_history(path: Path) -> SqliteHistory:
    return SqliteHistory(path, read_only=True)


# ------------------------------------------------------------- a lock held 5 s


def test_a_timeout_2_run_on_a_file_locked_for_5_s_ends_at_2_s(
    reliability: Any, tmp_path: Path, stalled: DemoServices
) -> None:
    config = write_config(tmp_path, stalled, workflows=LIMITED)
    path = tmp_path / "history.db"
    assert aegis(config, "run", "smoke").returncode == 0  # the file exists, with a run
    locker = Locker(path, 5)
    try:
        process = spawn(config, "run", "limited", "--json")
        read_until(process, RUN_LINE)
        read_until(process, TEST_LINE)  # the run is in its hanging test step
        locker.lock()
        assert process.stdout is not None
        printed = json.loads(read_json(process))  # printed before the lock goes
        still_locked = locker.process.poll() is None
        locker.released()
        _, err = process.communicate(timeout=TIMEOUT)
    finally:
        locker.close()
    assert process.returncode == 3 and "Traceback" not in err, err
    assert printed["status"] == "timed_out" and still_locked
    assert 1700 <= printed["duration_ms"] <= 2300, printed["duration_ms"]
    with read_history(path) as store:
        recorded = store.get(printed["run_id"])
    assert recorded is not None and recorded.to_dict() == printed
    reliability.record(
        "`aegis run` of a `timeout: 2` workflow while another process holds the history "
        "file's write lock for 5 s (taken mid-run)",
        expected="ends `timed_out` at 2 ± 0.3 s; its record is complete once the lock goes",
        observed="timed_out, recorded duration within 2 ± 0.3 s, result printed while the "
        "lock was still held; the file holds the run, steps and all, after",
    )


def test_serve_answers_202_for_every_run_while_the_file_is_locked(
    reliability: Any, tmp_path: Path, demo: DemoServices
) -> None:
    config = write_config(tmp_path, demo)
    path = tmp_path / "history.db"
    process, client = start_server(config)
    locker = Locker(path, 5)
    try:
        first = client.post("/api/workflows/smoke/run?wait=30")
        assert first.status == 200, first.body  # the file is open
        locker.lock()
        answers, slowest = [], 0.0
        for _ in range(5):
            began = time.monotonic()
            answers.append(client.post("/api/workflows/smoke/run"))
            slowest = max(slowest, time.monotonic() - began)
        ids = [reply.data["run_id"] for reply in answers]
        found = [client.get(f"/api/runs/{run_id}").status for run_id in ids]
        locker.released()
        poll(
            lambda: all(client.status(run_id) == "succeeded" for run_id in ids) or None,
            timeout=TIMEOUT,
        )
        listed = client.get("/api/history?limit=10").data
    finally:
        locker.close()
        stop_server(process)
    assert [reply.status for reply in answers] == [202] * 5
    assert slowest < 2 and found == [200] * 5
    assert listed["total"] == 6
    with read_history(path) as store:
        assert store.count(status="succeeded") == 6
    reliability.record(
        "`aegis serve` accepting 5 runs while another process holds the history file's "
        "write lock for 5 s",
        expected="202 for every accepted run at once (never 503 or 'not started'); each "
        "readable at once; all recorded once the lock goes",
        observed="5 of 5 answered 202 within 2 s, each found by GET /api/runs; all 6 runs "
        "succeeded in the file after the lock went",
    )


# ------------------------------------------------------- shutdown, huge queue


def test_stop_with_100000_queued_runs_records_each_cancelled(
    reliability: Any, tmp_path: Path, stalled: DemoServices
) -> None:
    from aegis.api.app import ApiApp
    from aegis.config import parse_config
    from aegis.steps.registry import default_step_types

    text = f"""
        services:
          qaagent: {{url: "{stalled.qaagent_url}"}}
        workflows:
          slow:
            steps: [{{type: test, service: qaagent, timeout: 120}}]
        history: {{path: history.db}}
        server: {{max_concurrent_runs: 1, max_queued_runs: 200000}}
    """
    config = parse_config(
        textwrap.dedent(text),
        file="aegis.yaml",
        base_dir=tmp_path,
        environ={},
        step_types=default_step_types(),
    )
    app = ApiApp(config, environ={}, port=0).start()
    manager, loop, history = app._part("runs"), app._part("loop"), app._part("history")

    async def submit_many() -> int:
        for _ in range(100_000):
            await manager.submit("slow")
        return manager.queued()

    queued = loop.call(submit_many(), 600)
    history.flush()  # accepted over time, as through the API: their rows are written
    began = time.monotonic()
    app.stop()  # what SIGTERM and Ctrl-C run in `aegis serve`
    took = time.monotonic() - began
    with read_history(tmp_path / "history.db") as store:
        counts = {s: store.count(status=s) for s in ("cancelled", "queued", "interrupted")}
    assert queued == 99_999 and counts == {"cancelled": 100_000, "queued": 0, "interrupted": 0}
    assert took < 30, took
    reliability.record(
        "`aegis serve` stopped with 100,000 runs queued behind one running",
        expected="every run recorded `cancelled` (one batched write), stopped within 30 s",
        observed="100,000 of 100,000 cancelled, none left queued or interrupted; stopped "
        "within 30 s",
    )


# ------------------------------------------------- the file deleted or replaced


@pytest.mark.parametrize("replacement", ["deleted", "a directory"])
def test_history_file_gone_mid_run(
    reliability: Any, tmp_path: Path, stalled: DemoServices, replacement: str
) -> None:
    config = write_config(tmp_path, stalled, workflows=LIMITED)
    path = tmp_path / "history.db"
    assert aegis(config, "run", "smoke").returncode == 0
    process = spawn(config, "run", "guarded", "--json")
    run_id = read_until(process, RUN_LINE).group(1)
    read_until(process, TEST_LINE)

    def discover_recorded() -> bool:  # so no write is under way as the file goes
        with read_history(path) as store:
            found = store.get(run_id)
            return found is not None and len(found.steps) == 1

    poll(discover_recorded, timeout=TIMEOUT)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if replacement == "a directory":
        path.mkdir()
    out, err = process.communicate(timeout=TIMEOUT)
    run = json.loads(out)
    assert process.returncode == 3 and run["status"] == "failed", err
    assert "Traceback" not in err
    assert err.count("history: ") == 1, err
    if replacement == "deleted":
        assert "was deleted while in use; the runs going and those after them" in err
        with read_history(path) as store:
            recorded = store.get(run["run_id"])
            assert recorded is not None and recorded.to_dict() == run
            assert store.count() == 1  # the earlier run went with the old file
        where = "the new file at the same path holds the run whole"
    else:
        assert "was replaced by something that is not a file while in use" in err
        assert "keeping the rest of this process's history in memory" in err
        where = "the run is kept in memory and printed whole"
    reliability.record(
        f"history file {replacement} while a run is in its test step",
        expected="noticed, one warning; the run's record goes to a new file or to memory, "
        "saying which",
        observed=f"one warning naming the path and what happened; {where}",
    )


# ------------------------------------------------------------------ damaged rows


def test_damaged_rows_are_skipped_everywhere(
    reliability: Any, tmp_path: Path, demo: DemoServices
) -> None:
    config = write_config(tmp_path, demo)
    for _ in range(3):
        assert aegis(config, "run", "smoke").returncode == 0
    with sqlite3.connect(tmp_path / "history.db") as db:
        seqs = [row[0] for row in db.execute("SELECT seq FROM runs ORDER BY seq")]
        db.execute("UPDATE runs SET duration_ms = 'abc' WHERE seq = ?", (seqs[0],))
        db.execute("UPDATE runs SET run_id = X'00ff' WHERE seq = ?", (seqs[1],))
    listed = aegis(config, "history", "--json")
    table = aegis(config, "history")
    process, client = start_server(config)
    try:
        page = client.get("/api/history")
    finally:
        stop_server(process)
    assert listed.returncode == 0 and table.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)["runs"]) == 1
    assert "skipping damaged records" in listed.stderr
    assert page.status == 200 and len(page.data["runs"]) == 1
    reliability.record(
        "history rows with a wrong-typed value (`duration_ms = 'abc'`, a BLOB run id)",
        expected="those rows skipped with the damaged-record warning; listings still work",
        observed="`aegis history` (table and --json) exit 0 listing the 1 sound run with "
        "the warning; GET /api/history answers 200 with it",
    )


# ------------------------------------------------- runs of another container


def test_a_live_run_in_another_pid_namespace_is_not_marked_interrupted(
    reliability: Any, tmp_path: Path, stalled: DemoServices
) -> None:
    unshare = shutil.which("unshare")
    prefix = [unshare or "unshare", "--pid", "--fork", "--mount-proc"]
    if unshare is None or subprocess.run([*prefix, "true"], check=False).returncode != 0:
        pytest.skip("cannot make a pid namespace here")
    config = write_config(tmp_path, stalled, workflows=LIMITED)
    boxed = subprocess.Popen(
        [*prefix, sys.executable, "-m", "aegis", "--config", str(config), "run", "guarded"],
        env=environ(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = read_until(boxed, RUN_LINE).group(1)
    read_until(boxed, TEST_LINE)
    assert aegis(config, "run", "smoke").returncode == 0  # opens the file: looks for the dead
    during = {
        r["run_id"]: r["status"]
        for r in json.loads(aegis(config, "history", "--json").stdout)["runs"]
    }
    boxed.communicate(timeout=TIMEOUT)
    after = {
        r["run_id"]: r["status"]
        for r in json.loads(aegis(config, "history", "--json").stdout)["runs"]
    }
    assert during[run_id] == "running" and after[run_id] == "failed"
    reliability.record(
        "a run going in another pid namespace (a container with the same hostname) while "
        "this host's `aegis run` opens the shared file",
        expected="never marked `interrupted`: the owner's pid namespace is part of its identity",
        observed="still `running` after the other process opened the file; it ended "
        "`failed` by its own step timeout",
    )


# ---------------------------------------------------------------- absurd retries


def test_retries_past_the_bound_and_a_thousand_retries(reliability: Any, tmp_path: Path) -> None:
    import asyncio

    from fakes import FakeClock, config, step, step_type

    from aegis.engine.runner import Engine
    from aegis.errors import StepError

    path = tmp_path / "aegis.yaml"
    path.write_text("workflows: {w: {steps: [{type: report, retries: 1025}]}}\n")
    checked = aegis(path, "config", "validate")
    assert checked.returncode == 1
    assert "workflows.w.steps[0].retries: expected an integer from 0 to 100, got 1025" in (
        checked.stderr
    )

    async def failing(ctx: Any) -> dict[str, Any]:
        raise StepError("http", "HTTP 500 from svc", status_code=500)

    engine = Engine(
        config(step("failing", retries=1100, retry_delay=1)),
        {"failing": step_type("failing", failing)},
        clock=FakeClock(),
    )
    run = asyncio.run(engine.run("wf"))
    (result,) = run.steps
    assert result.status.value == "failed" and len(result.attempts) == 1101
    reliability.record(
        "`retries: 1025` in a config, and an engine asked for 1,100 retries",
        expected="validation refuses it naming the key and the bound; waits between "
        "attempts never overflow, and every attempt stays in the step's record",
        observed="config validate exit 1 'expected an integer from 0 to 100, got 1025'; "
        "1,101 attempts recorded on a failed step",
    )


# ----------------------------------------------------- SIGTERM at the exit wait


def test_sigterm_while_waiting_on_webhooks_keeps_every_output(
    reliability: Any, tmp_path: Path
) -> None:
    with socket.socket() as silent:  # connections complete in the backlog, never answered
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        path = tmp_path / "aegis.yaml"
        path.write_text(
            "workflows: {quick: {steps: [{type: report}]}}\n"
            "history: {path: history.db}\n"
            f"webhooks: [{{url: 'http://127.0.0.1:{silent.getsockname()[1]}/hook'}}]\n"
        )
        junit = tmp_path / "junit.xml"
        process = spawn(path, "run", "quick", "--json", "--junit", str(junit))
        out = read_json(process)  # the whole --json output, written before the wait
        process.send_signal(signal.SIGTERM)
        rest, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0 and "Traceback" not in err, err
    assert json.loads(out + rest)["status"] == "succeeded"
    assert junit.read_text().startswith("<?xml")
    reliability.record(
        "SIGTERM while `aegis run --json --junit` waits on a webhook receiver that never answers",
        expected="every output written before the wait; the signal ends the wait, not the output",
        observed="exit 0 with the whole --json output and the JUnit file",
    )
