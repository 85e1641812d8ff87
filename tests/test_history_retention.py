"""History by age (`history.max_age`), reruns' fields and schedule ticks in both stores,
and SQLite files written before those columns existed."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pg_history import pg_history_database, pg_history_url  # noqa: F401 (fixtures)
from test_history import finished, make_run, make_step, stamp

from aegis.history import HistoryStore
from aegis.history.memory import PRUNE_BATCH, MemoryHistory
from aegis.history.sqlite import SqliteHistory
from aegis.records import RunStatus

# stamp(0) is 2026-01-01T10:00:00Z; the stores' clocks are set relative to it
T0 = 1767261600.0

MakeStore = Callable[..., HistoryStore]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    opened: list[HistoryStore] = []
    warnings: list[str] = []
    pg_url = request.getfixturevalue("pg_history_url") if request.param == "postgres" else ""

    def make(**options: object) -> HistoryStore:
        store: HistoryStore
        if request.param == "memory":
            store = MemoryHistory(warn=warnings.append, **options)  # type: ignore[arg-type]
        elif request.param == "postgres":
            from aegis.history.postgres import PostgresHistory

            store = PostgresHistory.open(pg_url, warn=warnings.append, **options)  # type: ignore[arg-type]
        else:
            store = SqliteHistory(tmp_path / "h.db", warn=warnings.append, **options)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
    assert warnings == []


def test_prune_aged_removes_finished_runs_older_than_max_age_oldest_first(
    make_store: MakeStore,
) -> None:
    now = [T0 + 100]
    store = make_store(max_age=50.0, clock=lambda: now[0])
    for second in (10, 20, 30, 40):
        store.start(make_run(f"run{second:09d}", at=second))
    for second in (10, 20, 40):
        store.finish(finished(make_run(f"run{second:09d}", at=second)))
    store.prune_aged(10)  # (memory prunes as runs finish; SQLite in a thread, or here)
    # older than 50 s: all four, but the one still running stays
    assert [r.run_id for r in store.list()] == ["run000000030"]
    now[0] = T0 + 1000
    assert store.prune_aged(10) == 0  # the one running is never removed
    store.finish(finished(make_run("run000000030", at=30)))
    store.prune_aged(10)
    assert store.list() == []


def test_prune_aged_goes_in_batches(make_store: MakeStore) -> None:
    now = [T0]
    store = make_store(max_age=60.0, clock=lambda: now[0])
    for second in range(5):
        store.finish(finished(make_run(f"old{second:09d}", at=second)))
    store.finish(finished(make_run("new000000001", at=59)))
    now[0] = T0 + 65
    assert store.prune_aged(2) == 2
    assert store.count() == 4
    assert store.prune_aged(10) == 3
    assert [r.run_id for r in store.list()] == ["new000000001"]
    assert store.prune_aged(10) == 0


def test_without_max_age_nothing_is_pruned_by_age(make_store: MakeStore) -> None:
    store = make_store(clock=lambda: T0 + 10**6)
    store.finish(finished(make_run("kept00000001")))
    assert store.prune_aged(PRUNE_BATCH) == 0
    assert store.count() == 1


def test_rerun_fields_and_schedule_ticks_are_kept(make_store: MakeStore) -> None:
    store = make_store()
    reused = replace(make_step("discover"), reused=True)
    run = replace(make_run("rerun0000001", steps=(reused,)), rerun_of="first0000001")
    store.start(run)
    store.update_step(run.run_id, make_step("test"))
    live = store.get(run.run_id)
    assert live is not None and live.rerun_of == "first0000001"
    assert [s.reused for s in live.steps] == [True, False]
    store.finish(finished(run, steps=(reused, make_step("test"))))
    (listed,) = store.list()
    assert listed.rerun_of == "first0000001"
    assert [s.reused for s in listed.steps] == [True, False]
    assert store.last_fire("w", "every 60s") is None
    assert store.claim_fire("w", "every 60s", 120.0)
    assert store.claim_fire("w", "every 60s", 180.0)
    assert not store.claim_fire("w", "every 60s", 180.0)  # that tick is taken
    assert not store.claim_fire("w", "every 60s", 120.0)
    assert store.claim_fire("w", "cron * * * * * UTC", 60.0)
    assert store.last_fire("w", "every 60s") == 180.0


V1_SCHEMA = (
    """CREATE TABLE runs (seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE,
    workflow TEXT NOT NULL, status TEXT NOT NULL, verdict TEXT, started_at TEXT NOT NULL,
    finished_at TEXT, duration_ms REAL, trigger TEXT NOT NULL, owner_host TEXT NOT NULL,
    owner_pid INTEGER NOT NULL, owner_token TEXT NOT NULL, heartbeat_at REAL NOT NULL)""",
    """CREATE TABLE steps (run_seq INTEGER NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL,
    service TEXT, status TEXT NOT NULL, duration_ms REAL NOT NULL, error TEXT,
    error_kind TEXT, skip_reason TEXT, data TEXT NOT NULL, attempts TEXT NOT NULL)""",
    "INSERT INTO runs VALUES (1, 'older0000001', 'w', 'succeeded', 'passed',"
    f" '{stamp(0)}', '{stamp(1)}', 5.0, 'cli', 'h', 1, 't', 0)",
    "INSERT INTO steps VALUES (1, 'report', 'report', NULL, 'succeeded', 1.0, NULL, NULL,"
    " NULL, '{}', '[]')",
    "PRAGMA user_version = 1",
)


def older_file(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        for statement in V1_SCHEMA:
            db.execute(statement)
    return path


def test_a_file_from_before_reruns_is_read_only_as_it_is(tmp_path: Path) -> None:
    path = older_file(tmp_path / "h.db")
    with SqliteHistory(path, read_only=True) as store:
        run = store.get("older0000001")
        assert run is not None and run.rerun_of is None and not run.steps[0].reused
        assert [r.run_id for r in store.list()] == ["older0000001"]
        assert store.last_fire("w", "every 60s") is None
    with sqlite3.connect(path) as db:  # untouched
        assert "rerun_of" not in {row[1] for row in db.execute("PRAGMA table_info(runs)")}


def test_a_file_from_before_reruns_gets_the_new_columns_when_written(tmp_path: Path) -> None:
    path = older_file(tmp_path / "h.db")
    with SqliteHistory(path) as store:
        old = store.get("older0000001")
        assert old is not None and old.status is RunStatus.SUCCEEDED and old.rerun_of is None
        new = replace(make_run("newer0000001"), rerun_of="older0000001")
        store.finish(finished(new, steps=(replace(make_step("test"), reused=True),)))
        assert store.claim_fire("w", "every 60s", 60.0)
    with SqliteHistory(path, read_only=True) as again:
        run = again.get("newer0000001")
        assert run is not None and run.rerun_of == "older0000001" and run.steps[0].reused
        assert again.last_fire("w", "every 60s") == 60.0


def test_a_short_lived_store_prunes_a_batch_when_it_closes(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    store = SqliteHistory(path, max_age=3600.0, clock=lambda: T0 + 7200)
    store.finish(finished(make_run("old000000001")))  # two hours old
    assert store.count() == 1  # the pruner's first round is minutes away
    store.close()
    with SqliteHistory(path, read_only=True) as again:
        assert again.count() == 0
