"""Test history in the SQLite file: the SQL behind ``SqliteHistory``'s test methods.

The rules are those of ``aegis.history.test_history`` (read its docstring). Three tables,
made on open (``CREATE ... IF NOT EXISTS``, so a file from before them gains them and
older versions of aegis ignore them)::

    tests          one row per (workflow, test_id): runs, failures, flips, last outcome,
                   last failure and last pass; ordered reads sort these rows only
    test_outcomes  the outcomes worth showing, by test id and by run (pruned with it)
    test_runs      the runs counted (a run finished twice is counted once) and their
                   failing test count, which the trends read

Finishing a run costs one statement per test it mentioned plus two for the passes of the
rest of its workflow's tests, whatever the number of runs stored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from aegis.history.test_history import (
    PASSED,
    PASSED_ON_RERUN,
    RunTests,
    TestOutcome,
    TestRecord,
    run_tests,
)
from aegis.records import Run

__all__ = [
    "SCHEMA",
    "failing_counts",
    "forget",
    "outcomes",
    "record",
    "test_records",
    "tests",
]

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tests (
        workflow TEXT NOT NULL,
        test_id TEXT NOT NULL,
        runs INTEGER NOT NULL,
        failures INTEGER NOT NULL,
        flips INTEGER NOT NULL,
        last_outcome TEXT NOT NULL,
        last_run TEXT NOT NULL,
        last_seen_at TEXT NOT NULL,
        last_failure_at TEXT,
        last_failure_run TEXT,
        last_message TEXT,
        last_pass_at TEXT,
        last_pass_run TEXT,
        PRIMARY KEY (workflow, test_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS tests_by_id ON tests (test_id)",
    """CREATE TABLE IF NOT EXISTS test_outcomes (
        test_id TEXT NOT NULL,
        workflow TEXT NOT NULL,
        run_id TEXT NOT NULL,
        started_at TEXT NOT NULL,
        outcome TEXT NOT NULL,
        message TEXT,
        bug_report TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS test_outcomes_by_test ON test_outcomes (test_id, started_at)",
    "CREATE INDEX IF NOT EXISTS test_outcomes_by_run ON test_outcomes (run_id)",
    """CREATE TABLE IF NOT EXISTS test_runs (
        run_id TEXT PRIMARY KEY,
        failing INTEGER NOT NULL
    ) WITHOUT ROWID""",
)

_COLUMNS = (
    "workflow, test_id, runs, failures, flips, last_outcome, last_run, last_seen_at,"
    " last_failure_at, last_failure_run, last_message, last_pass_at, last_pass_run"
)
_UPSERT = f"""INSERT INTO tests ({_COLUMNS}) VALUES (?, ?, 1, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (workflow, test_id) DO UPDATE SET
        runs = runs + 1, failures = failures + 1, flips = flips + excluded.flips,
        last_outcome = excluded.last_outcome, last_run = excluded.last_run,
        last_seen_at = excluded.last_seen_at, last_failure_at = excluded.last_failure_at,
        last_failure_run = excluded.last_failure_run, last_message = excluded.last_message,
        last_pass_at = coalesce(excluded.last_pass_at, last_pass_at),
        last_pass_run = coalesce(excluded.last_pass_run, last_pass_run)"""
# The first pass after a failure is an outcome worth keeping; the passes after it are not.
_RECOVERED = f"""INSERT INTO test_outcomes
    SELECT test_id, workflow, ?, ?, '{PASSED}', NULL, NULL FROM tests
    WHERE workflow = ? AND last_run != ? AND last_outcome != '{PASSED}'"""
_PASSED = f"""UPDATE tests SET runs = runs + 1, flips = flips + (last_outcome != '{PASSED}'),
    last_outcome = '{PASSED}', last_run = ?, last_seen_at = ?, last_pass_at = ?,
    last_pass_run = ? WHERE workflow = ? AND last_run != ?"""
_OUTCOME = "INSERT INTO test_outcomes VALUES (?, ?, ?, ?, ?, ?, ?)"
_FLAKY_ORDER = "CAST(flips AS REAL) / runs DESC, flips DESC, failures DESC, workflow, test_id"
_ORDER = "failures DESC, workflow, test_id"


def record(db: sqlite3.Connection, run: Run, text: Callable[[str], str]) -> None:
    """Count finished ``run`` in the test history, once. ``text`` makes a string storable
    (SQLite cannot hold lone surrogates)."""
    run_id = text(run.run_id)
    if db.execute("SELECT 1 FROM test_runs WHERE run_id = ?", (run_id,)).fetchone():
        return
    found = run_tests(run)
    db.execute(
        "INSERT INTO test_runs VALUES (?, ?)", (run_id, -1 if found is None else found.failing)
    )
    if found is not None:
        _apply(db, found, text)


def _apply(db: sqlite3.Connection, found: RunTests, text: Callable[[str], str]) -> None:
    run = found.run
    at = run.started_at
    for outcome in found.mentioned.values():
        rerun = outcome.outcome == PASSED_ON_RERUN
        values = (
            run.workflow,
            outcome.test_id,
            int(rerun),
            outcome.outcome,
            run.run_id,
            at,
            at,
            run.run_id,
            outcome.message,
            at if rerun else None,
            run.run_id if rerun else None,
        )
        db.execute(_UPSERT, _storable(values, text))
        db.execute(_OUTCOME, _storable(_outcome_values(outcome), text))
    run_id, at, workflow = text(run.run_id), text(at), text(run.workflow)
    db.execute(_RECOVERED, (run_id, at, workflow, run_id))
    db.execute(_PASSED, (run_id, at, at, run_id, workflow, run_id))


def _storable(values: tuple[Any, ...], text: Callable[[str], str]) -> tuple[Any, ...]:
    return tuple(text(v) if isinstance(v, str) else v for v in values)


def _outcome_values(outcome: TestOutcome) -> tuple[Any, ...]:
    return (
        outcome.test_id,
        outcome.workflow,
        outcome.run_id,
        outcome.started_at,
        outcome.outcome,
        outcome.message,
        outcome.bug_report,
    )


def forget(db: sqlite3.Connection, seqs: Sequence[Sequence[int]]) -> None:
    """Drop the outcomes of the runs about to be pruned (rows of their ``runs.seq``);
    the summaries keep counting them."""
    for table in ("test_outcomes", "test_runs"):
        sql = f"DELETE FROM {table} WHERE run_id = (SELECT run_id FROM runs WHERE seq = ?)"
        db.executemany(sql, seqs)


def tests(
    db: sqlite3.Connection, workflow: str | None, flaky: bool, limit: int
) -> list[TestRecord]:
    where = []
    args: list[Any] = []
    if workflow is not None:
        where.append("workflow = ?")
        args.append(workflow)
    if flaky:
        where.append("flips > 0")
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    order = _FLAKY_ORDER if flaky else _ORDER
    sql = f"SELECT {_COLUMNS} FROM tests{clause} ORDER BY {order} LIMIT ?"
    return [TestRecord(*row) for row in db.execute(sql, (*args, max(limit, 0)))]


def test_records(db: sqlite3.Connection, test_id: str) -> list[TestRecord]:
    sql = f"SELECT {_COLUMNS} FROM tests WHERE test_id = ? ORDER BY workflow"
    return [TestRecord(*row) for row in db.execute(sql, (test_id,))]


def outcomes(db: sqlite3.Connection, test_id: str, limit: int) -> list[TestOutcome]:
    sql = (
        "SELECT test_id, workflow, run_id, started_at, outcome, message, bug_report"
        " FROM test_outcomes WHERE test_id = ? ORDER BY started_at DESC, rowid DESC LIMIT ?"
    )
    return [TestOutcome(*row) for row in db.execute(sql, (test_id, max(limit, 0)))]


def failing_counts(db: sqlite3.Connection, run_ids: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for start in range(0, len(run_ids), 500):
        chunk = run_ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        sql = f"SELECT run_id, failing FROM test_runs WHERE run_id IN ({marks}) AND failing >= 0"
        found.update((row[0], int(row[1])) for row in db.execute(sql, chunk))
    return found
