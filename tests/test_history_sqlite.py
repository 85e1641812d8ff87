"""SqliteHistory only: the file, crashes of its writers, failures of the file, sharing."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from test_history import finished, make_run, make_step, stamp

import aegis.history.sqlite as sqlite_module
from aegis.history import HistoryUnavailable, Write
from aegis.history.memory import MemoryHistory
from aegis.history.owners import Owner, current_owner, process_state
from aegis.history.sqlite import SqliteHistory
from aegis.records import RunStatus, StepStatus, Verdict, format_timestamp

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_800_000_000.0  # a fixed unix time for stores with a fake clock

# A separate process that records runs on a history file, so that it can be killed
# or left running while the test looks at the file.
#   hold RUN_ID: start RUN_ID, record one step, print "ready", then wait for stdin to
#                close and finish the run
#   many PREFIX N: record N whole runs of three steps each
WORKER = r"""
import sys
from dataclasses import replace
from aegis.history.sqlite import SqliteHistory
from aegis.records import Run, RunStatus, StepResult, StepStatus, Verdict

path, mode, name, *rest = sys.argv[1:]
store = SqliteHistory(path)

def step(label):
    return StepResult(name=label, type=label, service="qaagent",
                      status=StepStatus.SUCCEEDED, duration_ms=1.5, data={"n": 1})

def run(run_id):
    return Run(run_id=run_id, workflow="shared", status=RunStatus.RUNNING,
               started_at="2026-01-01T10:00:00.000Z")

def done(started, steps):
    return replace(started, status=RunStatus.SUCCEEDED, verdict=Verdict.PASSED,
                   steps=steps, finished_at="2026-01-01T10:00:01.000Z", duration_ms=1.0)

if mode == "hold":
    started = run(name)
    store.start(started)
    store.update_step(name, step("discover"))
    print("ready", flush=True)
    sys.stdin.read()
    store.finish(done(started, (step("discover"), step("test"))))
else:
    for n in range(int(rest[0])):
        started = run(f"{name}-{n}")
        store.start(started)
        steps = tuple(step(label) for label in ("discover", "test", "report"))
        for one in steps:
            store.update_step(started.run_id, one)
        store.finish(done(started, steps))
store.close()
"""


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "history.db"


@pytest.fixture
def warnings() -> list[str]:
    return []


@pytest.fixture
def open_store(path: Path, warnings: list[str]) -> Iterator[Callable[..., SqliteHistory]]:
    """Opens stores on ``path`` that warn into ``warnings``; closes them after the test."""
    opened: list[SqliteHistory] = []

    def make(**options: Any) -> SqliteHistory:
        store = SqliteHistory(path, warn=warnings.append, **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def holder(path: Path) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    """Starts workers that hold a run open on ``path``; they are ended after the test."""
    procs: list[subprocess.Popen[str]] = []

    def start(run_id: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), "hold", run_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=worker_env(),
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"  # the run and its first step are on file
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


class Clock:
    """A settable unix clock."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def at(seconds: float) -> str:
    return format_timestamp(datetime.fromtimestamp(seconds, timezone.utc))


def status_of(store: SqliteHistory, run_id: str) -> RunStatus:
    run = store.get(run_id)
    assert run is not None
    return run.status


def raw(path: Path | str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(sql, params).fetchall()


# ---------------------------------------------------------------------- the file


def test_the_file_is_versioned_and_in_wal_mode(open_store: Callable[..., SqliteHistory]) -> None:
    store = open_store()
    store.finish(finished(make_run("aaaa00000001")))
    store.close()
    again = open_store()  # opening an existing file leaves its schema alone

    assert raw(again.path, "PRAGMA user_version") == [(1,)]
    assert raw(again.path, "PRAGMA journal_mode") == [("wal",)]
    assert again.get("aaaa00000001") is not None


def test_each_row_names_its_owner(open_store: Callable[..., SqliteHistory], path: Path) -> None:
    open_store(clock=Clock()).start(make_run("aaaa00000001"))

    me = current_owner()
    assert raw(path, "SELECT owner_host, owner_pid, owner_token, heartbeat_at FROM runs") == [
        (me.host, me.pid, me.token, T0)
    ]


@pytest.mark.parametrize(
    "sql",
    [
        *sqlite_module._LIST.values(),
        *sqlite_module._COUNT.values(),
        sqlite_module._FIND,
        sqlite_module._PRUNABLE,
        sqlite_module._UNFINISHED_ROWS,
        sqlite_module._STEPS_OF,
    ],
)
def test_every_query_uses_an_index_and_no_sort(
    open_store: Callable[..., SqliteHistory], path: Path, sql: str
) -> None:
    open_store()
    params = [None] * sql.count("?")

    plan = " / ".join(row[-1] for row in raw(path, f"EXPLAIN QUERY PLAN {sql}", *params))

    assert "INDEX" in plan, plan
    assert "TEMP B-TREE" not in plan or "ORDER BY rowid" in sql, plan


def test_listing_reads_steps_of_many_runs_in_chunks(
    open_store: Callable[..., SqliteHistory], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_CHUNK", 3)
    store = open_store()
    for n in range(10):
        store.finish(finished(make_run(f"run{n:09d}", at=n, steps=(make_step("test"),))))

    listed = store.list(limit=10)
    assert len(listed) == 10
    assert all(r.steps == (replace(make_step("test"), data={}, attempts=()),) for r in listed)


def test_the_page_cache_is_bounded_small(open_store: Callable[..., SqliteHistory]) -> None:
    # a server's RSS grew by SQLite's default 2 MiB cache as its history grew (bench/)
    store = open_store()
    assert store._db.execute("PRAGMA cache_size").fetchone()[0] == -sqlite_module.CACHE_KIB
    assert sqlite_module.CACHE_KIB <= 1024


def test_a_page_read_again_unchanged_comes_from_the_cache(
    open_store: Callable[..., SqliteHistory], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store()
    store.finish(finished(make_run("run000000001", at=1)))
    first, total = store.list(limit=5), store.count()
    reads: list[str] = []
    real_page, real_count = store._page, store._count
    monkeypatch.setattr(store, "_page", lambda *a: reads.append("page") or real_page(*a))
    monkeypatch.setattr(store, "_count", lambda *a: reads.append("count") or real_count(*a))

    assert store.list(limit=5) == first and store.count() == total == 1
    assert reads == []
    assert store.list(limit=6) == first  # another page is read
    assert reads == ["page"]


def test_the_page_cache_sees_our_writes_and_other_connections_commits(
    open_store: Callable[..., SqliteHistory],
) -> None:
    store, other = open_store(), open_store()
    assert store.list() == [] and store.count() == 0

    store.finish(finished(make_run("run000000001", at=1)))  # our own write
    assert [r.run_id for r in store.list()] == ["run000000001"]
    other.finish(finished(make_run("run000000002", at=2)))  # another connection's
    assert [r.run_id for r in store.list()] == ["run000000002", "run000000001"]
    assert store.count() == 2
    listed = store.list()
    listed.clear()  # a caller's copy: the cached page is not changed by it
    assert len(store.list()) == 2


def test_text_sqlite_cannot_hold_is_stored_replaced(
    open_store: Callable[..., SqliteHistory],
) -> None:
    store = open_store()
    step = make_step("test", StepStatus.FAILED, error="bad byte \udcff here")
    store.finish(finished(make_run("aaaa00000001", "wf\ud800", steps=(step,))))

    run = store.get("aaaa00000001")
    assert run is not None
    assert (run.workflow, run.steps[0].error) == ("wf?", "bad byte ? here")
    assert store.count(workflow="wf\ud800") == 1


def test_data_that_json_cannot_hold_is_stored_as_a_note(
    open_store: Callable[..., SqliteHistory],
) -> None:
    store = open_store()
    circular: dict[str, Any] = {}
    circular["self"] = circular
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    steps = (make_step("test", data={"when": when}), make_step("verify", data=circular))
    store.finish(finished(make_run("aaaa00000001", steps=steps)))

    run = store.get("aaaa00000001")
    assert run is not None
    assert run.steps[0].data == {"when": str(when)}
    assert run.steps[1].data == {"unstorable": "ValueError: Circular reference detected"}


def test_damaged_records_are_skipped_with_one_warning(
    open_store: Callable[..., SqliteHistory], path: Path, warnings: list[str]
) -> None:
    store = open_store()
    for n in range(3):
        store.finish(finished(make_run(f"run{n:09d}", at=n, steps=(make_step("test"),))))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET status = 'exploded' WHERE run_id = 'run000000000'")
        db.execute("UPDATE steps SET status = 'odd' WHERE run_seq = 2")

    listed = store.list()
    assert [(r.run_id, len(r.steps)) for r in listed] == [("run000000002", 1), ("run000000001", 0)]
    assert store.get("run000000000") is None
    assert store.get("run000000001") is None
    assert warnings == [
        f"history: skipping damaged records in {path} ('odd' is not a valid StepStatus)"
    ]
    assert not store.degraded


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("UPDATE runs SET duration_ms = 'abc' WHERE run_id = 'run000000001'", "duration_ms"),
        ("UPDATE runs SET run_id = X'00ff' WHERE run_id = 'run000000001'", "run_id"),
        ("UPDATE runs SET verdict = X'01' WHERE run_id = 'run000000001'", "verdict"),
        ("UPDATE steps SET duration_ms = 'abc' WHERE run_seq = 2", "duration_ms"),
        ("UPDATE steps SET name = X'00ff' WHERE run_seq = 2", "name"),
    ],
)
def test_a_wrong_typed_value_skips_its_record_with_the_damaged_warning(
    open_store: Callable[..., SqliteHistory],
    path: Path,
    warnings: list[str],
    damage: str,
    reason: str,
) -> None:
    store = open_store()
    for n in range(3):
        store.finish(finished(make_run(f"run{n:09d}", at=n, steps=(make_step("test"),))))
    with sqlite3.connect(path) as db:
        db.execute(damage)

    listed = store.list()
    assert [r.run_id for r in listed if r.run_id != "run000000001"] == [
        "run000000002",
        "run000000000",
    ]
    assert all(len(r.steps) == 1 for r in listed if r.run_id != "run000000001")
    assert all(isinstance(r.duration_ms, float) for r in listed)
    assert store.count() == 3
    assert store.get("run000000001") is None
    assert store.get("run000000000") is not None
    assert len(warnings) == 1 and f"skipping damaged records in {path}" in warnings[0]
    assert reason in warnings[0]


# --------------------------------------------------------- runs of dead owners


def test_a_sigkilled_writer_leaves_an_interrupted_run_with_its_finished_steps(
    holder: Callable[[str], subprocess.Popen[str]],
    open_store: Callable[..., SqliteHistory],
    warnings: list[str],
) -> None:
    proc = holder("crashed00001")
    proc.kill()
    proc.wait()

    store = open_store()
    run = store.get("crashed00001")
    assert run is not None
    assert run.status is RunStatus.INTERRUPTED
    assert run.verdict is Verdict.FAILED
    assert run.finished_at is not None
    assert [s.name for s in run.steps] == ["discover"]
    assert run.steps[0].data == {"n": 1}
    assert store.count(status="interrupted") == 1
    assert warnings == []


def _in_new_pid_namespace() -> list[str]:
    """The command prefix that runs a process in a new pid namespace (as a container
    does), or skips the test where this machine does not allow it."""
    unshare = shutil.which("unshare")
    prefix = [unshare or "unshare", "--pid", "--fork", "--mount-proc"]
    if unshare is None or subprocess.run([*prefix, "true"], check=False).returncode != 0:
        pytest.skip("cannot make a pid namespace here")
    return prefix


def test_a_live_run_of_a_container_sharing_the_hostname_is_never_marked(
    path: Path, open_store: Callable[..., SqliteHistory], warnings: list[str]
) -> None:
    # In its own pid namespace the writer is pid 1; seen from here, pid 1 is another
    # process with another start time, which once made the run look abandoned.
    proc = subprocess.Popen(
        [*_in_new_pid_namespace(), sys.executable, "-c", WORKER, str(path), "hold", "boxed0000001"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=worker_env(),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        store = open_store()
        running = store.get("boxed0000001")
        assert running is not None and running.status is RunStatus.RUNNING
        assert store.mark_interrupted() == []
    finally:
        proc.communicate("", timeout=30)
    assert store.get("boxed0000001").status is RunStatus.SUCCEEDED  # type: ignore[union-attr]
    assert warnings == []


def test_a_run_of_a_live_process_is_never_marked(
    holder: Callable[[str], subprocess.Popen[str]], open_store: Callable[..., SqliteHistory]
) -> None:
    proc = holder("alive0000001")

    store = open_store()
    assert store.mark_interrupted() == []
    run = store.get("alive0000001")
    assert run is not None and run.status is RunStatus.RUNNING

    assert proc.stdin is not None
    proc.stdin.close()  # let it finish its run
    assert proc.wait() == 0
    run = store.get("alive0000001")
    assert run is not None
    assert run.status is RunStatus.SUCCEEDED
    assert [s.name for s in run.steps] == ["discover", "test"]


@pytest.mark.parametrize(("token_is_real", "marked"), [(True, False), (False, True)])
def test_a_live_pid_with_another_start_token_was_reused(
    holder: Callable[[str], subprocess.Popen[str]],
    open_store: Callable[..., SqliteHistory],
    token_is_real: bool,
    marked: bool,
) -> None:
    live = holder("other0000001")  # any live process of this host will do
    real = process_state(live.pid)
    assert real
    token = real if token_is_real else "proc:an-earlier-process"
    writer = open_store(owner=Owner(current_owner().host, live.pid, token))
    writer.start(make_run("reused000001"))
    writer.close()

    expected = RunStatus.INTERRUPTED if marked else RunStatus.RUNNING
    assert status_of(open_store(), "reused000001") is expected  # judged when it opened


def test_our_own_pid_with_another_token_was_an_earlier_process(
    open_store: Callable[..., SqliteHistory],
) -> None:
    me = current_owner()
    earlier = open_store(owner=Owner(me.host, me.pid, "proc:an-earlier-process"))
    earlier.start(make_run("earlier00001"))
    earlier.close()
    ours = open_store()
    ours.start(make_run("ours00000001"))

    assert open_store().mark_interrupted() == []  # the first was marked when `ours` opened
    got = ours.get("earlier00001")
    assert got is not None and got.status is RunStatus.INTERRUPTED
    got = ours.get("ours00000001")
    assert got is not None and got.status is RunStatus.RUNNING


def test_starting_a_queued_run_keeps_its_row_and_owner(
    open_store: Callable[..., SqliteHistory], path: Path
) -> None:
    writer = open_store(clock=Clock(T0))
    writer.start(replace(make_run("queued000001"), status=RunStatus.QUEUED))
    writer.start(make_run("queued000001", at=5))

    me = current_owner()
    assert raw(
        path, "SELECT seq, status, started_at, owner_host, owner_pid, owner_token FROM runs"
    ) == [(1, "running", stamp(5), me.host, me.pid, me.token)]


def test_a_queued_run_of_a_dead_owner_is_interrupted_when_a_store_opens(
    open_store: Callable[..., SqliteHistory],
) -> None:
    me = current_owner()
    dead = open_store(owner=Owner(me.host, me.pid, "proc:an-earlier-process"))
    dead.start(replace(make_run("queued000001"), status=RunStatus.QUEUED))
    dead.close()

    run = open_store().get("queued000001")
    assert run is not None
    assert (run.status, run.verdict) == (RunStatus.INTERRUPTED, Verdict.FAILED)
    assert run.finished_at is not None


def test_a_queued_run_of_a_live_owner_keeps_waiting(
    open_store: Callable[..., SqliteHistory],
) -> None:
    writer = open_store()
    writer.start(replace(make_run("queued000001"), status=RunStatus.QUEUED))

    assert open_store().mark_interrupted() == []
    assert status_of(open_store(), "queued000001") is RunStatus.QUEUED


def test_the_heartbeat_keeps_a_queued_run_alive_and_queued(
    open_store: Callable[..., SqliteHistory], path: Path
) -> None:
    clock = Clock(T0)
    writer = elsewhere(open_store, clock)
    writer.start(replace(make_run("remote000001"), status=RunStatus.QUEUED))
    clock.now = T0 + 100
    writer.heartbeat()

    assert raw(path, "SELECT status, heartbeat_at FROM runs") == [("queued", T0 + 100)]
    assert status_of(open_store(clock=Clock(T0 + 200)), "remote000001") is RunStatus.QUEUED


def elsewhere(open_store: Callable[..., SqliteHistory], clock: Clock) -> SqliteHistory:
    """A store that writes as a process of another host."""
    return open_store(owner=Owner("elsewhere", 4242, "proc:x:1"), clock=clock)


@pytest.mark.parametrize(("age", "marked"), [(60, False), (120, False), (121, True)])
def test_a_run_of_another_host_is_marked_when_its_heartbeat_is_stale(
    open_store: Callable[..., SqliteHistory], age: float, marked: bool
) -> None:
    writer = elsewhere(open_store, Clock(T0))
    writer.start(make_run("remote000001"))
    writer.update_step("remote000001", make_step("discover"))

    reader = open_store(clock=Clock(T0 + age))
    run = reader.get("remote000001")
    assert run is not None
    if marked:
        assert (run.status, run.finished_at) == (RunStatus.INTERRUPTED, at(T0 + age))
        assert [s.name for s in run.steps] == ["discover"]
    else:
        assert (run.status, run.finished_at) == (RunStatus.RUNNING, None)


def test_the_heartbeat_keeps_a_long_run_alive(open_store: Callable[..., SqliteHistory]) -> None:
    clock = Clock(T0)
    writer = elsewhere(open_store, clock)
    writer.start(make_run("remote000001"))
    clock.now = T0 + 100
    writer.heartbeat()

    assert status_of(open_store(clock=Clock(T0 + 200)), "remote000001") is RunStatus.RUNNING
    assert status_of(open_store(clock=Clock(T0 + 221)), "remote000001") is RunStatus.INTERRUPTED


def test_a_finished_run_gets_no_heartbeat(
    open_store: Callable[..., SqliteHistory], path: Path
) -> None:
    clock = Clock(T0)
    writer = elsewhere(open_store, clock)
    run = make_run("remote000001")
    writer.start(run)
    writer.finish(finished(run))
    clock.now = T0 + 100
    writer.heartbeat()

    assert raw(path, "SELECT heartbeat_at FROM runs") == [(T0,)]


def test_the_heartbeat_thread_beats_until_close(
    open_store: Callable[..., SqliteHistory], path: Path
) -> None:
    beat = threading.Event()

    def clock() -> float:
        if threading.current_thread().name == "aegis-history-heartbeat":
            beat.set()
            return T0 + 50
        return T0

    store = open_store(clock=clock, heartbeat_interval=0.01)
    store.start(make_run("aaaa00000001"))
    assert beat.wait(timeout=10)
    store.close()

    assert store._beater is not None and not store._beater.is_alive()
    assert raw(path, "SELECT heartbeat_at FROM runs") == [(T0 + 50,)]


def test_reads_look_for_dead_owners_once_per_interval(
    open_store: Callable[..., SqliteHistory],
) -> None:
    clock = Clock(T0)
    reader = open_store(clock=clock, heartbeat_interval=10)
    writer = elsewhere(open_store, Clock(T0 - 1000))  # its heartbeat is long stale
    writer.start(make_run("remote000001"))

    assert [r.status for r in reader.list()] == [RunStatus.RUNNING]  # swept when it opened
    clock.now = T0 + 10
    assert [r.status for r in reader.list()] == [RunStatus.INTERRUPTED]


def test_the_heartbeat_also_looks_for_dead_owners(
    open_store: Callable[..., SqliteHistory],
) -> None:
    clock = Clock(T0)
    store = open_store(clock=clock)
    elsewhere(open_store, Clock(T0 - 1000)).start(make_run("remote000001"))
    clock.now = T0 + sqlite_module.DEFAULT_HEARTBEAT_INTERVAL
    store.heartbeat()

    assert store.count(status="interrupted") == 1


def test_an_owner_that_beats_while_being_judged_is_not_marked(
    open_store: Callable[..., SqliteHistory], path: Path
) -> None:
    me = current_owner()
    writer = open_store(owner=Owner(me.host, 999_999, "proc:x:1"), clock=Clock(T0))
    writer.start(make_run("racing000001"))

    beats = itertools.count(1)

    def probe(pid: int) -> str | None:
        with sqlite3.connect(path) as db:  # the owner beats just after it was read
            db.execute("UPDATE runs SET heartbeat_at = ?", (T0 + next(beats),))
        return None

    assert open_store(probe=probe).mark_interrupted() == []
    assert raw(path, "SELECT status FROM runs") == [("running",)]


# --------------------------------------------------------- the file failing later


def test_a_connection_lost_mid_run_moves_to_memory_with_one_warning(
    open_store: Callable[..., SqliteHistory], path: Path, warnings: list[str]
) -> None:
    store = open_store()
    run = make_run("aaaa00000001", at=5)
    store.start(run)
    store.update_step(run.run_id, make_step("discover"))
    store._db.close()

    store.update_step(run.run_id, make_step("test"))
    assert warnings == [
        f"history: cannot write {path} (Cannot operate on a closed database.); "
        "keeping the rest of this process's history in memory"
    ]
    assert store.degraded
    got = store.get("aaaa")
    assert got is not None and [s.name for s in got.steps] == ["discover", "test"]

    store.finish(finished(run, steps=(make_step("discover"), make_step("test"))))
    store.start(make_run("bbbb00000001", at=6))
    assert [(r.run_id, r.status) for r in store.list()] == [
        ("bbbb00000001", RunStatus.RUNNING),
        ("aaaa00000001", RunStatus.SUCCEEDED),
    ]
    assert store.count(status="succeeded") == 1
    assert store.get("cccc00000001") is None  # not in memory, and the file is out of reach
    assert store.mark_interrupted() == []
    store.heartbeat()
    assert len(warnings) == 1


def test_a_full_disk_moves_to_memory_and_older_runs_stay_readable(
    open_store: Callable[..., SqliteHistory], path: Path, warnings: list[str]
) -> None:
    store = open_store()
    store.finish(finished(make_run("older0000001", steps=(make_step("test"),))))
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # no room to grow: a full disk
    run = make_run("newer0000001", at=1)
    store.start(run)

    big = make_step("test", data={"blob": "x" * 100_000})
    store.finish(finished(run, steps=(big,)))

    assert len(warnings) == 1 and "(database or disk is full)" in warnings[0]
    got = store.get("newer0000001")
    assert got is not None and got.steps == (big,)
    older = store.get("older0000001")
    assert older is not None and older.steps == (make_step("test"),)


def test_a_read_that_fails_moves_to_memory_with_one_warning(
    open_store: Callable[..., SqliteHistory], path: Path, warnings: list[str]
) -> None:
    store = open_store()
    store.start(make_run("aaaa00000001"))
    store._db.close()

    assert [r.run_id for r in store.list()] == ["aaaa00000001"]  # carried over to memory
    assert warnings == [
        f"history: cannot read {path} (Cannot operate on a closed database.); "
        "keeping the rest of this process's history in memory"
    ]


@pytest.mark.parametrize("action", ["heartbeat", "mark_interrupted", "start"])
def test_upkeep_that_fails_moves_to_memory_with_one_warning(
    open_store: Callable[..., SqliteHistory], warnings: list[str], action: str
) -> None:
    store = open_store()
    store.start(make_run("aaaa00000001"))
    store.close()  # from now on every use of the file fails

    if action == "start":
        store.start(make_run("bbbb00000001"))
    else:
        getattr(store, action)()

    assert len(warnings) == 1 and "Cannot operate on a closed database" in warnings[0]
    assert store.degraded
    assert store.get("aaaa00000001") is not None
    assert store._beater is not None and not store._beater.is_alive()


def test_a_file_locked_too_long_moves_to_memory_instead_of_raising(
    open_store: Callable[..., SqliteHistory], path: Path, warnings: list[str]
) -> None:
    store = open_store(busy_timeout=0.01)
    store.start(make_run("aaaa00000001"))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        store.update_step("aaaa00000001", make_step("test"))
    finally:
        other.close()

    assert len(warnings) == 1 and "(database is locked)" in warnings[0]
    got = store.get("aaaa00000001")
    assert got is not None and [s.name for s in got.steps] == ["test"]


def test_a_busy_file_is_tried_again_until_it_is_free(
    open_store: Callable[..., SqliteHistory],
    path: Path,
    warnings: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    retrying = threading.Event()

    def pause(seconds: float) -> None:
        retrying.set()
        time.sleep(seconds)

    monkeypatch.setattr(sqlite_module, "_pause", pause)
    monkeypatch.setattr(sqlite_module, "LOCK_ROUNDS", 100_000)  # never give up in this test
    store = open_store(busy_timeout=0.01)
    run = make_run("aaaa00000001")
    store.start(run)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    writer = threading.Thread(target=store.finish, args=(finished(run),))
    writer.start()
    try:
        assert retrying.wait(timeout=10)  # the busy timeout passed; it will try again
    finally:
        other.execute("COMMIT")
        other.close()
    writer.join()

    got = store.get("aaaa00000001")
    assert got is not None and got.status is RunStatus.SUCCEEDED
    assert warnings == []


def test_open_reason_names_what_is_wrong(
    open_store: Callable[..., SqliteHistory], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store()
    vague = sqlite3.OperationalError("unable to open database file")

    assert store._open_reason(vague) == "unable to open database file"
    assert store._open_reason(sqlite3.OperationalError("disk I/O error")) == "disk I/O error"
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert store._open_reason(vague) == (
        f"unable to open database file: directory {store.path.rsplit('/', 1)[0]} is not writable"
    )


# ----------------------------------------------------------- unwritable files

# Opens a history through `open_history` as this (maybe unprivileged) process and
# reports what it got.
PROBE = r"""
import json, sys
from aegis.config.model import HistorySpec
from aegis.history import open_history
from aegis.records import Run, RunStatus
warnings = []
store = open_history(HistorySpec(path=sys.argv[1]), warn=warnings.append)
store.start(Run(run_id="probe0000001", workflow="wf", status=RunStatus.RUNNING,
                started_at="2026-01-01T10:00:00.000Z"))
print(json.dumps({"store": type(store).__name__, "warnings": warnings,
                  "runs": [r.run_id for r in store.list()]}))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's own are private to us).

    It holds a readable copy of the package too: the checkout may sit in a private
    directory (CI clones into one) that the unprivileged user cannot enter.
    """
    directory = Path(tempfile.mkdtemp(prefix="aegis-history-"))
    directory.chmod(0o777)
    shutil.copytree(
        ROOT / "aegis", directory / "src" / "aegis", ignore=shutil.ignore_patterns("__pycache__")
    )
    for entry in (directory / "src").rglob("*"):
        entry.chmod(0o755 if entry.is_dir() else 0o644)
    (directory / "src").chmod(0o755)
    yield directory
    directory.chmod(0o700)
    shutil.rmtree(directory)


def open_unprivileged(path: Path, script: str = PROBE) -> dict[str, Any]:
    """Runs ``script`` (PROBE) on ``path`` as a user that file permissions apply to."""
    options: dict[str, Any] = {}
    pythons = [sys.executable]
    if os.geteuid() == 0:  # root ignores permissions: drop to nobody
        options = {"user": 65534, "group": 65534, "extra_groups": []}
        pythons.append("/usr/bin/python3")  # in case nobody cannot reach ours
    for python in pythons:  # pragma: no branch - the loop ends by break or skip
        try:
            done = subprocess.run(
                [python, "-c", script, str(path)],
                capture_output=True,
                text=True,
                env={**worker_env(), "PYTHONPATH": str(path.parent.parent / "src")},
                cwd=path.parent.parent,
                check=False,
                **options,
            )
            break
        except PermissionError:  # pragma: no cover - depends on where Python lives
            continue
    else:  # pragma: no cover
        pytest.skip("no Python that an unprivileged user may run")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_a_read_only_directory_gives_one_warning_and_memory(shared_dir: Path) -> None:
    target = shared_dir / "ro"
    target.mkdir(mode=0o555)
    target.chmod(0o555)

    result = open_unprivileged(target / "history.db")

    assert result == {
        "store": "MemoryHistory",
        "warnings": [
            f"history: cannot write {target / 'history.db'} (unable to open database file: "
            f"directory {target} is not writable); keeping this run's history in memory"
        ],
        "runs": ["probe0000001"],
    }


@pytest.mark.parametrize(("file_mode", "dir_mode"), [(0o444, 0o777), (0o666, 0o555)])
def test_a_read_only_file_gives_one_warning_and_memory(
    shared_dir: Path, file_mode: int, dir_mode: int
) -> None:
    target = shared_dir / "d"
    target.mkdir()
    path = target / "history.db"
    with SqliteHistory(path) as store:
        store.finish(finished(make_run("older0000001")))
    path.chmod(file_mode)
    target.chmod(dir_mode)

    result = open_unprivileged(path)

    assert result == {
        "store": "MemoryHistory",
        "warnings": [
            f"history: cannot write {path} (attempt to write a readonly database); "
            "keeping this run's history in memory"
        ],
        "runs": ["probe0000001"],
    }
    target.chmod(0o777)
    assert raw(path, "SELECT run_id FROM runs") == [("older0000001",)]


# Lists a history as `aegis history` does: opened for reading.
READ_PROBE = r"""
import json, sys
from aegis.config.model import HistorySpec
from aegis.history import open_history
warnings = []
store = open_history(HistorySpec(path=sys.argv[1]), warn=warnings.append, reading=True)
print(json.dumps({"store": type(store).__name__, "warnings": warnings,
                  "runs": [r.run_id for r in store.list()],
                  "shown": getattr(store.get("older0000001"), "status", None) is not None}))
"""


@pytest.mark.parametrize(("file_mode", "dir_mode"), [(0o444, 0o777), (0o444, 0o555)])
def test_a_read_only_file_is_still_listed_when_only_reading(
    shared_dir: Path, file_mode: int, dir_mode: int
) -> None:
    target = shared_dir / "d"
    target.mkdir()
    path = target / "history.db"
    with SqliteHistory(path) as store:
        store.finish(finished(make_run("older0000001")))
    path.chmod(file_mode)
    target.chmod(dir_mode)

    result = open_unprivileged(path, READ_PROBE)

    assert result == {
        "store": "SqliteHistory",
        "warnings": [],
        "runs": ["older0000001"],
        "shown": True,
    }
    target.chmod(0o777)


def test_a_read_only_store_reads_and_never_writes(
    path: Path, open_store: Callable[..., SqliteHistory], warnings: list[str]
) -> None:
    with SqliteHistory(path) as writer:
        writer.finish(finished(make_run("older0000001")))
        writer.start(make_run("going0000001"))
        reader = open_store(read_only=True)
        assert reader.read_only and not reader.degraded
        assert [r.run_id for r in reader.list()] == ["going0000001", "older0000001"]
        assert reader.count(status="running") == 1
        assert reader.mark_interrupted() == []  # marking is a write: never done here
        got = reader.get("older")
        assert got is not None and got.run_id == "older0000001"

        reader.start(make_run("probe0000001"))  # a write falls back to memory, with a warning

    assert reader.degraded and len(warnings) == 1
    assert "attempt to write a readonly database" in warnings[0]
    assert raw(path, "SELECT run_id FROM runs ORDER BY seq") == [
        ("older0000001",),
        ("going0000001",),
    ]


def test_a_read_only_store_reads_past_another_process_write_lock(
    path: Path, open_store: Callable[..., SqliteHistory]
) -> None:
    with SqliteHistory(path) as writer:
        writer.finish(finished(make_run("older0000001")))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        reader = open_store(read_only=True, busy_timeout=0.01)
        assert [r.run_id for r in reader.list()] == ["older0000001"]
    finally:
        holder.close()


@pytest.mark.parametrize(
    ("prepare", "reason"),
    [
        (lambda p: None, "unable to open database file"),
        (lambda p: sqlite3.connect(p).close(), "not an aegis history file"),
        (
            lambda p: sqlite3.connect(p).execute("PRAGMA user_version = 99").connection.close(),
            "written by a newer aegis: schema version 99",
        ),
        (lambda p: p.write_bytes(b"x" * 4096), "file is not a database"),
    ],
    ids=["missing", "empty", "newer", "garbage"],
)
def test_a_read_only_open_of_a_file_it_cannot_read_raises(
    path: Path, prepare: Callable[[Path], object], reason: str
) -> None:
    prepare(path)
    with pytest.raises(HistoryUnavailable) as caught:
        SqliteHistory(path, read_only=True)
    assert reason in str(caught.value) and str(path) in str(caught.value)


def test_opening_waits_one_busy_timeout_not_all_of_them(path: Path) -> None:
    SqliteHistory(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    began = time.monotonic()
    try:
        with pytest.raises(HistoryUnavailable) as caught:
            SqliteHistory(path, busy_timeout=0.5)
    finally:
        holder.close()
    # LOCK_ROUNDS (4) timeouts would be 2 s: a run would wait that long before it starts
    assert time.monotonic() - began < 0.5 * sqlite_module.LOCK_ROUNDS - 0.5
    assert "database is locked: another process has held it for over 0.5 s" in str(caught.value)


# -------------------------------------------------------------- many writers


def test_stores_of_many_threads_share_one_file(path: Path, warnings: list[str]) -> None:
    go = threading.Barrier(5)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            with SqliteHistory(path, warn=warnings.append) as store:
                go.wait()
                for n in range(20):
                    run = make_run(f"t{worker}-{n}", at=n)
                    store.start(run)
                    store.update_step(run.run_id, make_step("discover"))
                    store.list()
                    store.finish(finished(run, steps=(make_step("discover"),)))
        except BaseException as exc:  # pragma: no cover - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert (errors, warnings) == ([], [])
    with SqliteHistory(path) as store:
        assert store.count(status="succeeded") == 100


def test_many_processes_record_every_run_on_one_file(path: Path, warnings: list[str]) -> None:
    SqliteHistory(path).close()  # the file exists, as when a server has it open
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), "many", f"p{n}", "10"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=worker_env(),
        )
        for n in range(6)
    ]
    with SqliteHistory(path, warn=warnings.append) as reader:
        while any(proc.poll() is None for proc in procs):  # a server reading meanwhile
            reader.list(limit=20)
            reader.count()
        outcomes = [(proc.returncode, *proc.communicate()) for proc in procs]

        assert outcomes == [(0, "", "")] * 6
        assert reader.count(workflow="shared", status="succeeded") == 60
        runs = reader.list(limit=100)
        assert sorted(r.run_id for r in runs) == sorted(
            f"p{p}-{n}" for p in range(6) for n in range(10)
        )
        assert all([s.name for s in r.steps] == ["discover", "test", "report"] for r in runs)
    assert warnings == []


def test_a_store_that_failed_keeps_answering_for_runs_of_this_process(
    open_store: Callable[..., SqliteHistory],
) -> None:
    store = open_store()
    store.close()
    store.finish(finished(make_run("aaaa00000001", at=1)))

    assert isinstance(store._memory, MemoryHistory)
    got = store.get("aaaa00000001")
    assert got is not None and got.started_at == stamp(1)


def test_a_bare_file_name_is_opened_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with SqliteHistory("history.db") as store:
        store.finish(finished(make_run("aaaa00000001")))

    assert raw(tmp_path / "history.db", "SELECT run_id FROM runs") == [("aaaa00000001",)]


def test_a_rollback_that_fails_keeps_the_first_error(
    open_store: Callable[..., SqliteHistory],
    warnings: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = open_store()

    def lose_connection(db: sqlite3.Connection, *args: object) -> None:
        db.close()  # mid-transaction, so that the rollback cannot happen either
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_save_start", lose_connection)
    store.start(make_run("aaaa00000001"))

    assert len(warnings) == 1 and "(disk I/O error)" in warnings[0]
    assert store.get("aaaa00000001") is not None


def test_the_heartbeat_undoes_a_wrong_interrupted_mark(
    open_store: Callable[..., SqliteHistory], path: Path
) -> None:
    store = open_store()
    store.start(make_run("aaaa00000001"))
    with sqlite3.connect(path) as db:  # as a host whose clock runs far ahead would do
        db.execute("UPDATE runs SET status = 'interrupted', verdict = 'failed', finished_at = 'x'")

    store.heartbeat()

    assert raw(path, "SELECT status, verdict, finished_at FROM runs") == [("running", None, None)]


def test_a_run_removed_by_another_process_while_it_ran_is_recorded_afresh(
    open_store: Callable[..., SqliteHistory], path: Path
) -> None:
    store = open_store()
    run = make_run("aaaa00000001")
    store.start(run)
    store.update_step(run.run_id, make_step("discover"))
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM runs")
    store.update_step(run.run_id, make_step("test"))
    final = finished(run, steps=(make_step("discover"), make_step("test")))

    store.finish(final)

    assert store.get(run.run_id) == final
    assert raw(path, "SELECT count(*) FROM steps") == [(2,)]
    assert raw(path, "SELECT seq FROM runs") == [(2,)]  # seqs are never reused


# The schema of files written before runs had params (the runs table without `params`).
OLD_RUNS_TABLE = """CREATE TABLE runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE,
    workflow TEXT NOT NULL, status TEXT NOT NULL, verdict TEXT, started_at TEXT NOT NULL,
    finished_at TEXT, duration_ms REAL, trigger TEXT NOT NULL, owner_host TEXT NOT NULL,
    owner_pid INTEGER NOT NULL, owner_token TEXT NOT NULL, heartbeat_at REAL NOT NULL)"""


def _old_file(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute(OLD_RUNS_TABLE)
    for statement in sqlite_module._SCHEMA[1:]:
        if "runs" not in statement.split("(")[0] or "INDEX" in statement:
            db.execute(statement)
    db.execute(
        "INSERT INTO runs (run_id, workflow, status, verdict, started_at, finished_at,"
        " duration_ms, trigger, owner_host, owner_pid, owner_token, heartbeat_at)"
        " VALUES ('old1', 'w', 'succeeded', 'passed', '2026-01-01T10:00:00.000Z',"
        " '2026-01-01T10:00:01.000Z', 1.0, 'cli', 'h', 1, 't', 0)"
    )
    db.execute(f"PRAGMA user_version = {sqlite_module.SCHEMA_VERSION}")
    db.commit()
    db.close()


def test_a_file_from_before_params_opens_read_only_and_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _old_file(path)
    reader = SqliteHistory(path, read_only=True)
    try:
        old = reader.get("old1")
        assert old is not None and old.params == {}
        assert [run.params for run in reader.list()] == [{}]
    finally:
        reader.close()
    store = SqliteHistory(path)  # adds the column
    try:
        assert store.get("old1") is not None
        store.start(replace(make_run("new1"), params={"suite": "full"}))
        new = store.get("new1")
        assert new is not None and new.params == {"suite": "full"}
        assert {run.run_id: run.params for run in store.list()} == {
            "new1": {"suite": "full"},
            "old1": {},
        }
    finally:
        store.close()


# ------------------------------------------------- the file changed under the store


def test_a_deleted_file_is_noticed_and_the_runs_going_go_to_a_new_one(
    open_store: Callable[..., SqliteHistory], path: Path, warnings: list[str]
) -> None:
    store = open_store()
    store.finish(finished(make_run("older0000001")))
    going = make_run("going0000001", at=5)
    store.start(going)
    store.update_step(going.run_id, make_step("discover"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)

    store.update_step(going.run_id, make_step("test"))
    store.finish(finished(going, steps=(make_step("discover"), make_step("test"))))
    store.start(make_run("after0000001", at=9))

    assert warnings == [
        f"history: {path} was deleted while in use; the runs going and those after them "
        "are recorded in a new file there, the earlier ones are not"
    ]
    assert not store.degraded
    with SqliteHistory(path) as fresh:
        assert [r.run_id for r in fresh.list()] == ["after0000001", "going0000001"]
        recorded = fresh.get("going0000001")
        assert recorded is not None and [s.name for s in recorded.steps] == ["discover", "test"]


def test_a_file_replaced_by_a_directory_sends_the_runs_to_memory_saying_so(
    open_store: Callable[..., SqliteHistory], path: Path, warnings: list[str]
) -> None:
    store = open_store()
    going = make_run("going0000001")
    store.start(going)
    store.update_step(going.run_id, make_step("discover"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.mkdir()

    store.finish(finished(going, steps=(make_step("discover"), make_step("test"))))

    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"history: {path} was replaced by something that is not a file while in use and "
        "cannot be opened again ("
    )
    assert warnings[0].endswith("keeping the rest of this process's history in memory")
    assert store.degraded
    recorded = store.get(going.run_id)
    assert recorded is not None and recorded.status is RunStatus.SUCCEEDED
    assert len(recorded.steps) == 2


def test_a_file_replaced_by_another_database_is_written_from_then_on(
    open_store: Callable[..., SqliteHistory], path: Path, tmp_path: Path, warnings: list[str]
) -> None:
    store = open_store()
    store.start(make_run("going0000001"))
    other = tmp_path / "other.db"
    with SqliteHistory(other) as elsewhere:
        elsewhere.finish(finished(make_run("moved0000001")))
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    os.replace(other, path)

    store.finish(finished(make_run("going0000001")))

    assert len(warnings) == 1 and "was replaced by another file while in use" in warnings[0]
    with SqliteHistory(path) as fresh:
        assert {r.run_id: r.status for r in fresh.list()} == {
            "going0000001": RunStatus.SUCCEEDED,
            "moved0000001": RunStatus.SUCCEEDED,
        }


# ------------------------------------------------------------------ batched writes


def test_a_batch_of_writes_is_one_transaction_and_keeps_each_runs_order(
    open_store: Callable[..., SqliteHistory], path: Path
) -> None:
    store = open_store(max_runs=2)
    runs = [make_run(f"batch{n:07d}", at=n) for n in range(4)]
    writes = [Write("start", (run,)) for run in runs]
    writes += [Write("update_step", (runs[0].run_id, make_step("discover")))]
    writes += [Write("finish", (finished(run),)) for run in runs[1:]]
    writes += [Write("finish", (finished(runs[3], RunStatus.FAILED),))]  # twice: last wins
    store.write_all(writes)

    assert {r.run_id: r.status.value for r in store.list()} == {
        "batch0000000": "running",  # still going: never pruned
        "batch0000003": "failed",
        "batch0000002": "succeeded",  # batch0000001 pruned (max_runs: 2)
    }
    got = store.get("batch0000000")
    assert got is not None and [s.name for s in got.steps] == ["discover"]


def test_a_batch_finishing_runs_pruned_meanwhile_records_them_afresh(
    open_store: Callable[..., SqliteHistory], path: Path
) -> None:
    store = open_store()
    runs = [make_run(f"gone{n:08d}", at=n) for n in range(3)]
    store.write_all([Write("start", (run,)) for run in runs])
    with sqlite3.connect(path) as db:  # another process pruned one of them
        db.execute("DELETE FROM runs WHERE run_id = 'gone00000001'")

    store.write_all([Write("finish", (finished(run),)) for run in runs])

    assert store.count(status="succeeded") == 3
