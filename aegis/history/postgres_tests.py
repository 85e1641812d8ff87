"""Test history in PostgreSQL: the SQL behind ``PostgresHistory``'s test methods.

The rules are those of ``aegis.history.test_history`` and the statements mirror
``aegis.history.sqlite_tests`` one for one, so both stores count a run the same way. The
tables are part of schema version 1 (``aegis.history.pg_schema``)::

    tests          one row per (workflow, test_id): runs, failures, flips, last outcome,
                   last failure and last pass; ordered reads sort these rows only
    test_outcomes  the outcomes worth showing (``id``: order of recording, the tie-break
                   SQLite's rowid is), by test id and by run (pruned with it)
    test_runs      the runs counted (a run finished twice is counted once) and their
                   failing test count, which the trends read

Every function takes a pg8000 native connection inside the caller's transaction, and a
``text`` function that makes a string storable (PostgreSQL refuses NUL characters and
lone surrogates).
"""

from __future__ import annotations

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

__all__ = ["failing_counts", "outcomes", "record", "record_all", "test_records", "tests"]

_COLUMNS = (
    "workflow, test_id, runs, failures, flips, last_outcome, last_run, last_seen_at,"
    " last_failure_at, last_failure_run, last_message, last_pass_at, last_pass_run"
)
_UPSERT = f"""INSERT INTO tests ({_COLUMNS}) VALUES (:workflow, :test_id, 1, 1, :flips,
        :outcome, :run, :at, :at, :run, :message, :pass_at, :pass_run)
    ON CONFLICT (workflow, test_id) DO UPDATE SET
        runs = tests.runs + 1, failures = tests.failures + 1,
        flips = tests.flips + excluded.flips,
        last_outcome = excluded.last_outcome, last_run = excluded.last_run,
        last_seen_at = excluded.last_seen_at, last_failure_at = excluded.last_failure_at,
        last_failure_run = excluded.last_failure_run, last_message = excluded.last_message,
        last_pass_at = coalesce(excluded.last_pass_at, tests.last_pass_at),
        last_pass_run = coalesce(excluded.last_pass_run, tests.last_pass_run)"""
_OUTCOME_COLUMNS = "test_id, workflow, run_id, started_at, outcome, message, bug_report"
# The first pass after a failure is an outcome worth keeping; the passes after it are not.
_RECOVERED = f"""INSERT INTO test_outcomes ({_OUTCOME_COLUMNS})
    SELECT test_id, workflow, :run, :at, '{PASSED}', NULL, NULL FROM tests
    WHERE workflow = :workflow AND last_run <> :run AND last_outcome <> '{PASSED}'
    ORDER BY test_id"""
_PASSED = f"""UPDATE tests SET runs = runs + 1,
    flips = flips + CASE WHEN last_outcome <> '{PASSED}' THEN 1 ELSE 0 END,
    last_outcome = '{PASSED}', last_run = :run, last_seen_at = :at, last_pass_at = :at,
    last_pass_run = :run WHERE workflow = :workflow AND last_run <> :run"""
_OUTCOME = f"""INSERT INTO test_outcomes ({_OUTCOME_COLUMNS})
    VALUES (:test_id, :workflow, :run_id, :started_at, :outcome, :message, :bug_report)"""
_FLAKY_ORDER = (
    "CAST(flips AS double precision) / runs DESC, flips DESC, failures DESC, workflow, test_id"
)
_ORDER = "failures DESC, workflow, test_id"

Text = Callable[[str], str]


def record(db: Any, run: Run, text: Text) -> None:
    """Count finished ``run`` in the test history, once."""
    record_all(db, [run], text)


def record_all(db: Any, runs: Sequence[Run], text: Text) -> None:
    """Count finished ``runs`` in the test history, each once; the runs that reported no
    tests (a queue cancelled at shutdown) in one statement."""
    untested = []
    for run in runs:
        found = run_tests(run)
        if found is None:
            untested.append(text(run.run_id))
            continue
        counted = db.run(
            "INSERT INTO test_runs (run_id, failing) VALUES (:run_id, :failing)"
            " ON CONFLICT (run_id) DO NOTHING RETURNING 1",
            run_id=text(run.run_id),
            failing=found.failing,
        )
        if counted:  # none: counted already
            _apply(db, found, text)
    if untested:
        db.run(
            "INSERT INTO test_runs (run_id, failing)"
            " SELECT unnest(CAST(:ids AS text[])), -1 ON CONFLICT (run_id) DO NOTHING",
            ids=untested,
        )


def _apply(db: Any, found: RunTests, text: Text) -> None:
    run = found.run
    run_id, at, workflow = text(run.run_id), text(run.started_at), text(run.workflow)
    for outcome in found.mentioned.values():
        rerun = outcome.outcome == PASSED_ON_RERUN
        db.run(
            _UPSERT,
            workflow=workflow,
            test_id=text(outcome.test_id),
            flips=int(rerun),
            outcome=outcome.outcome,
            run=run_id,
            at=at,
            message=_opt(outcome.message, text),
            pass_at=at if rerun else None,
            pass_run=run_id if rerun else None,
        )
        db.run(_OUTCOME, **_outcome_values(outcome, text))
    db.run(_RECOVERED, run=run_id, at=at, workflow=workflow)
    db.run(_PASSED, run=run_id, at=at, workflow=workflow)


def _opt(value: str | None, text: Text) -> str | None:
    return None if value is None else text(value)


def _outcome_values(outcome: TestOutcome, text: Text) -> dict[str, Any]:
    return {
        "test_id": text(outcome.test_id),
        "workflow": text(outcome.workflow),
        "run_id": text(outcome.run_id),
        "started_at": text(outcome.started_at),
        "outcome": outcome.outcome,
        "message": _opt(outcome.message, text),
        "bug_report": _opt(outcome.bug_report, text),
    }


def tests(db: Any, workflow: str | None, flaky: bool, limit: int) -> list[TestRecord]:
    where = []
    if workflow is not None:
        where.append("workflow = :workflow")
    if flaky:
        where.append("flips > 0")
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    order = _FLAKY_ORDER if flaky else _ORDER
    sql = f"SELECT {_COLUMNS} FROM tests{clause} ORDER BY {order} LIMIT :limit"
    params: dict[str, Any] = {"limit": max(limit, 0)}
    if workflow is not None:
        params["workflow"] = workflow
    return [TestRecord(*row) for row in db.run(sql, **params)]


def test_records(db: Any, test_id: str) -> list[TestRecord]:
    sql = f"SELECT {_COLUMNS} FROM tests WHERE test_id = :test_id ORDER BY workflow"
    return [TestRecord(*row) for row in db.run(sql, test_id=test_id)]


def outcomes(db: Any, test_id: str, limit: int) -> list[TestOutcome]:
    sql = (
        f"SELECT {_OUTCOME_COLUMNS} FROM test_outcomes WHERE test_id = :test_id"
        " ORDER BY started_at DESC, id DESC LIMIT :limit"
    )
    return [TestOutcome(*row) for row in db.run(sql, test_id=test_id, limit=max(limit, 0))]


def failing_counts(db: Any, run_ids: Sequence[str]) -> dict[str, int]:
    if not run_ids:
        return {}
    sql = (
        "SELECT run_id, failing FROM test_runs"
        " WHERE run_id = ANY(CAST(:ids AS text[])) AND failing >= 0"
    )
    return {row[0]: int(row[1]) for row in db.run(sql, ids=list(run_ids))}
