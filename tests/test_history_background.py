"""``BackgroundWrites``: writes made by a thread of their own, in order, never blocking
the caller; and, through ``run_workflow``, a run whose history file another process has
locked ends on time and is recorded whole once the lock goes."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fakes import config, step, step_type
from test_history import finished, make_run, make_step

from aegis.config.model import HistorySpec
from aegis.history import Write, open_recording_history
from aegis.history.background import MAX_BATCH, BackgroundWrites
from aegis.history.memory import MemoryHistory
from aegis.history.sqlite import SqliteHistory
from aegis.records import RunStatus, StepStatus
from aegis.runs import run_workflow
from aegis.steps.base import StepContext


def test_writes_return_at_once_while_the_file_is_locked_and_land_when_it_frees(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.db"
    writes = BackgroundWrites(SqliteHistory(path))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    run = make_run("locked000001")
    began = time.monotonic()
    writes.start(run)
    writes.update_step(run.run_id, make_step("discover"))
    done = finished(run, steps=(make_step("discover"), make_step("test")))
    writes.finish(done)
    assert time.monotonic() - began < 0.5
    assert writes.get(run.run_id) == done  # from the queue, not the file
    assert not writes.flush(timeout=0.2)  # still waiting for the lock

    other.execute("COMMIT")
    other.close()
    writes.close()
    with SqliteHistory(path) as store:
        assert store.get(run.run_id) == done


def test_a_run_queued_only_with_steps_is_read_from_the_store_until_applied() -> None:
    store = MemoryHistory()
    store.start(make_run("known0000001"))
    with BackgroundWrites(store) as writes:
        writes.update_step("known0000001", make_step("discover"))
        writes.flush()
        got = writes.get("known0000001")
        assert got is not None and [s.name for s in got.steps] == ["discover"]


def test_steps_queued_after_a_start_show_in_get() -> None:
    gate = threading.Event()

    class Slow(MemoryHistory):
        def write_all(self, writes: Sequence[Write]) -> None:
            gate.wait(10)
            super().write_all(writes)

    with BackgroundWrites(Slow()) as writes:
        run = make_run("slow00000001")
        writes.start(run)
        writes.update_step(run.run_id, make_step("discover", status=StepStatus.FAILED))
        writes.update_step(run.run_id, make_step("discover"))
        writes.update_step(run.run_id, make_step("test"))
        got = writes.get(run.run_id)
        assert got is not None
        assert [(s.name, s.status) for s in got.steps] == [
            ("discover", StepStatus.SUCCEEDED),
            ("test", StepStatus.SUCCEEDED),
        ]
        gate.set()
        assert [r.run_id for r in writes.list()] == [run.run_id]  # waits for the writes
        assert writes.count() == 1


def test_a_failing_write_is_logged_once_and_recording_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Flaky(MemoryHistory):
        failures = 2

        def write_all(self, writes: Sequence[Write]) -> None:
            if self.failures:
                self.failures -= 1
                raise OSError("disk on fire")
            super().write_all(writes)

    store = Flaky()
    with caplog.at_level(logging.ERROR, "aegis.history.background"):
        writes = BackgroundWrites(store)
        writes.start(make_run("lost00000001"))
        writes.flush()
        writes.start(make_run("lost00000002"))
        writes.flush()
        writes.start(make_run("kept00000001"))
        writes.close()
    assert [r.message for r in caplog.records] == [
        "history store failed on 1 write(s); recording goes on"
    ]
    assert [r.run_id for r in store.list()] == ["kept00000001"]
    writes.finish(finished(make_run("late00000001")))  # after close: written at once
    assert store.get("late00000001") is not None


def test_writes_that_piled_up_are_applied_in_order_in_few_batches() -> None:
    batches: list[int] = []
    gate = threading.Event()

    class Counting(MemoryHistory):
        def write_all(self, writes: Sequence[Write]) -> None:
            gate.wait(10)  # the first batch waits (a lock) while the rest queue up
            batches.append(len(writes))
            super().write_all(writes)

    store = Counting()
    writes = BackgroundWrites(store)
    runs = [make_run(f"run{n:09d}", at=n) for n in range(3000)]
    for run in runs:
        writes.start(run)
        writes.finish(finished(run))
    gate.set()
    writes.close()
    assert sum(batches) == 6000 and len(batches) <= 8 and max(batches) == MAX_BATCH
    assert store.count(status="succeeded") == 3000


# ----------------------------------------------------- a run on a locked file

LOCKER = r"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
sys.stdin.readline()
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))  # the fault: another process holds the lock this long
db.execute("COMMIT")
"""


def test_a_run_on_a_file_locked_mid_run_ends_on_time_and_is_recorded_whole(
    tmp_path: Path,
) -> None:
    # The lock is taken after the file is open and the run has begun (the first step
    # takes it), so the next write meets it; written on the loop, that write froze the
    # workflow timer until the lock went: a `timeout: 2` run ended after 5 s.
    path = tmp_path / "history.db"
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path), "4"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    async def take_lock(ctx: StepContext) -> dict[str, Any]:
        def ask() -> str:
            assert locker.stdin is not None and locker.stdout is not None
            locker.stdin.write("go\n")
            locker.stdin.flush()
            return locker.stdout.readline()

        return {"locker": (await asyncio.to_thread(ask)).strip()}

    async def hang(ctx: StepContext) -> dict[str, Any]:
        await asyncio.sleep(60)
        return {}

    base = config(step("take_lock"), step("hang"), timeout=2)
    cfg = replace(base, history=HistorySpec(path=str(path)))
    SqliteHistory(path).close()
    warnings: list[str] = []
    try:
        began = time.monotonic()
        run = run_workflow(
            cfg,
            "wf",
            environ={},
            warn=warnings.append,
            step_types={
                "take_lock": step_type("take_lock", take_lock),
                "hang": step_type("hang", hang),
            },
        )
        waited = time.monotonic() - began
    finally:
        locker.wait(30)
    assert run.status is RunStatus.TIMED_OUT
    assert run.steps[0].data == {"locker": "locked"}
    assert run.duration_ms is not None and 1700 <= run.duration_ms <= 2300
    assert waited >= 3.5  # the process waited for the lock to write the record
    with SqliteHistory(path) as store:
        recorded = store.get(run.run_id)
    assert recorded is not None and recorded.to_dict() == run.to_dict()
    assert warnings == []


def test_the_recording_store_of_a_file_is_opened_by_its_writer(tmp_path: Path) -> None:
    store = open_recording_history(HistorySpec(path=str(tmp_path / "h.db")), warn=print)
    assert isinstance(store, BackgroundWrites)
    store.close()
    memory = open_recording_history(HistorySpec(path=":memory:"), warn=print)
    assert isinstance(memory, MemoryHistory)
