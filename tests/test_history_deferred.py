"""DeferredHistory opens its store on first use; history_problem spots bad files early."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from aegis.history import HistoryStore
from aegis.history.deferred import DeferredHistory, history_problem
from aegis.history.memory import MemoryHistory
from aegis.records import Run, RunStatus, StepResult, StepStatus

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def run(run_id: str = "r1") -> Run:
    return Run(run_id, "wf", RunStatus.RUNNING, "2026-01-01T00:00:00.000Z")


def test_a_new_file_in_a_writable_directory_is_fine(tmp_path: Path) -> None:
    assert history_problem(str(tmp_path / "h.db")) is None


def test_an_empty_file_and_a_database_are_fine(tmp_path: Path) -> None:
    (tmp_path / "empty.db").write_bytes(b"")
    assert history_problem(str(tmp_path / "empty.db")) is None
    sqlite3.connect(tmp_path / "real.db").execute("create table t(a)").connection.close()
    assert history_problem(str(tmp_path / "real.db")) is None


def test_problems_that_show_without_opening(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello, not a database")
    assert history_problem(str(tmp_path / "notes.txt")) == "it is not a SQLite database"
    assert history_problem(str(tmp_path)) == "it is a directory"
    missing = tmp_path / "nowhere" / "h.db"
    assert history_problem(str(missing)) == f"directory {missing.parent} does not exist"
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert history_problem(str(blocker / "h.db"))  # a file where the directory should be


@pytest.mark.skipif(ROOT, reason="root may write anything")
def test_unwritable_files_and_directories(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "ro.db").execute("create table t(a)").connection.close()
    os.chmod(tmp_path / "ro.db", 0o444)
    assert history_problem(str(tmp_path / "ro.db")) == "it is not writable"
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert history_problem(str(locked / "h.db")) == f"directory {locked} is not writable"


class Counting:
    """An opener that counts how often it is called."""

    def __init__(self) -> None:
        self.opened: list[MemoryHistory] = []
        self.lock = threading.Lock()

    def __call__(self) -> HistoryStore:
        with self.lock:
            store = MemoryHistory()
            self.opened.append(store)
            return store


def test_nothing_is_opened_until_first_use_then_once() -> None:
    opener = Counting()
    store = DeferredHistory(opener)
    assert not store.opened and opener.opened == []
    store.start(run())
    store.update_step("r1", StepResult("s", "noop", None, StepStatus.SUCCEEDED))
    store.finish(run())
    assert store.get("r1") is not None
    assert [r.run_id for r in store.list("wf", None, 10, 0)] == ["r1"]
    assert store.count("wf") == 1
    assert len(opener.opened) == 1 and store.opened


def test_threads_racing_to_the_first_use_open_it_once() -> None:
    opener = Counting()
    store = DeferredHistory(opener)
    barrier = threading.Barrier(8)

    def use(i: int) -> None:
        barrier.wait(10)
        store.start(run(f"r{i}"))

    threads = [threading.Thread(target=use, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(opener.opened) == 1 and store.count() == 8


def test_closing_an_unused_store_opens_nothing_and_later_use_stays_in_memory() -> None:
    opener = Counting()
    store = DeferredHistory(opener)
    store.close()
    store.start(run())  # after close: recorded nowhere durable, and no error
    assert opener.opened == [] and store.count() == 1
    store.close()


def test_closing_closes_the_opened_store() -> None:
    closed: list[bool] = []

    class Store(MemoryHistory):
        def close(self) -> None:
            closed.append(True)

    store = DeferredHistory(Store)
    store.count()
    store.close()
    assert closed == [True]
