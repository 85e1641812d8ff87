"""The SQL of ``PostgresHistory``: one statement per thing it does, and the reads and
writes made of them (each given a connection inside the store's transaction), kept apart
from the store's logic so each can be read (and ``EXPLAIN``ed by the tests) on its own.

Listings are written for the indexes of ``aegis.history.pg_schema``: each filter
combination is a prefix of one index ordered ``started_at DESC, seq DESC``, so the server
reads one page of index entries with no sort step; ``before`` is the row comparison
``(started_at, seq) < (...)``, which the same index seeks. Counts sum ``run_counts``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aegis.history import SHOWN_MATCHES, RunList, matching_run_id
from aegis.history.owners import Owner
from aegis.history.pg_rows import runs_json, steps_json, text
from aegis.history.rows import (
    FULL_STEP,
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    full_step,
    run_record,
    summary_step,
)
from aegis.records import Run, RunStatus, StepResult

__all__ = [
    "CLAIM_FIRE",
    "FIND",
    "FIND_PREFIX",
    "HEARTBEAT",
    "LAST_FIRE",
    "MARK_INTERRUPTED",
    "PRUNE",
    "PRUNE_AGED",
    "SAVE_RUNS",
    "SAVE_STEP",
    "STEPS_OF",
    "SUMMARIES",
    "UNFINISHED_ROWS",
    "count",
    "count_sql",
    "find_run",
    "list_sql",
    "mark_interrupted",
    "page",
    "prune",
    "save_heartbeat",
    "save_runs",
    "save_step",
]

_RUN_FIELDS = (
    "run_id text, workflow text, status text, verdict text, started_at text,"
    " finished_at text, duration_ms double precision, trigger text, params text,"
    " rerun_of text"
)
_RUN_NAMES = (
    "run_id, workflow, status, verdict, started_at, finished_at, duration_ms, trigger,"
    " params, rerun_of"
)
_STEP_FIELDS = (
    "name text, type text, service text, status text, duration_ms double precision,"
    " error text, error_kind text, skip_reason text, reused boolean, data text,"
    " attempts text"
)
_STEP_NAMES = "name, type, service, status, duration_ms, error, error_kind, skip_reason, reused"
_STEP_ROWS = f"""ROWS FROM (json_to_recordset(CAST(:steps AS json)) AS (run text, {_STEP_FIELDS}))
        WITH ORDINALITY AS s(run, {_STEP_NAMES}, data, attempts, n)"""
# Many runs (their run ids distinct) and their steps in one statement, in order; the seq
# of each comes back. Sub-statements share one snapshot: the DELETE sees only the steps
# stored before, never those the INSERT adds.
SAVE_RUNS = f"""WITH saved AS (
        INSERT INTO runs ({_RUN_NAMES}, owner_host, owner_pid, owner_token, heartbeat_at)
        SELECT {_RUN_NAMES}, :host, :pid, :token, :now
        FROM ROWS FROM (json_to_recordset(CAST(:runs AS json)) AS ({_RUN_FIELDS}))
            WITH ORDINALITY AS r({_RUN_NAMES}, n)
        ORDER BY n
        ON CONFLICT (run_id) DO UPDATE SET workflow = excluded.workflow,
            status = excluded.status, verdict = excluded.verdict,
            started_at = excluded.started_at, finished_at = excluded.finished_at,
            duration_ms = excluded.duration_ms, trigger = excluded.trigger,
            params = excluded.params, rerun_of = excluded.rerun_of
        RETURNING run_id, seq),
    cleared AS (DELETE FROM steps WHERE run_seq IN (SELECT seq FROM saved)),
    added AS (INSERT INTO steps (run_seq, {_STEP_NAMES}, data, attempts)
        SELECT saved.seq, {_STEP_NAMES}, data, attempts
        FROM {_STEP_ROWS} JOIN saved ON saved.run_id = s.run
        ORDER BY n)
    SELECT run_id, seq FROM saved"""
# One step: it replaces the step of its name, else it is added.
SAVE_STEP = f"""WITH updated AS (
        UPDATE steps SET ({_STEP_NAMES}, data, attempts) = (
            SELECT {_STEP_NAMES}, data, attempts FROM {_STEP_ROWS})
        WHERE run_seq = :seq AND name = :name RETURNING 1)
    INSERT INTO steps (run_seq, {_STEP_NAMES}, data, attempts)
    SELECT :seq, {_STEP_NAMES}, data, attempts FROM {_STEP_ROWS}
    WHERE NOT EXISTS (SELECT 1 FROM updated)"""
FIND = f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = :run_id"
FIND_PREFIX = (
    f"SELECT {RUN_COLUMNS} FROM runs WHERE lower(run_id) LIKE :pattern"
    f" ORDER BY run_id LIMIT {SHOWN_MATCHES + 1}"
)
STEPS_OF = f"SELECT {FULL_STEP} FROM steps WHERE run_seq = :seq ORDER BY id"
SUMMARIES = (
    f"SELECT run_seq, {SUMMARY_COLUMNS} FROM steps"
    " WHERE run_seq = ANY(CAST(:seqs AS bigint[])) ORDER BY id"
)
# Pruned runs take their steps along (ON DELETE CASCADE) and their test outcomes here.
_FORGET = """, forgotten AS (DELETE FROM test_outcomes WHERE run_id IN
        (SELECT run_id FROM doomed)),
    uncounted AS (DELETE FROM test_runs WHERE run_id IN (SELECT run_id FROM doomed))
    DELETE FROM runs WHERE seq IN (SELECT seq FROM doomed)"""
PRUNE = (
    """WITH doomed AS (SELECT seq, run_id FROM runs WHERE workflow = :workflow
        AND status NOT IN ('queued', 'running')
        ORDER BY started_at DESC, seq DESC OFFSET :keep)"""
    + _FORGET
)
PRUNE_AGED = (
    """WITH doomed AS (SELECT seq, run_id FROM runs WHERE started_at < :cutoff
        AND status NOT IN ('queued', 'running') ORDER BY started_at, seq LIMIT :limit)"""
    + _FORGET
    + " RETURNING 1"
)
LAST_FIRE = (
    "SELECT fired_at FROM schedule_fires WHERE workflow = :workflow AND schedule = :schedule"
)
CLAIM_FIRE = """INSERT INTO schedule_fires (workflow, schedule, fired_at)
    VALUES (:workflow, :schedule, :at)
    ON CONFLICT (workflow, schedule) DO UPDATE SET fired_at = excluded.fired_at
    WHERE schedule_fires.fired_at < excluded.fired_at
    RETURNING 1"""
_NOT_QUEUED = "NOT EXISTS (SELECT 1 FROM queue q WHERE q.run_id = runs.run_id)"
UNFINISHED_ROWS = f"""SELECT seq, run_id, owner_host, owner_pid, owner_token, heartbeat_at
    FROM runs WHERE status IN ('queued', 'running') AND {_NOT_QUEUED}"""
MARK_INTERRUPTED = f"""UPDATE runs SET status = 'interrupted', verdict = 'failed',
        finished_at = :finished_at
    WHERE seq = :seq AND status IN ('queued', 'running') AND heartbeat_at = :heartbeat_at
        AND {_NOT_QUEUED}
    RETURNING 1"""
# Also undoes a wrong `interrupted` (another host whose clock runs far ahead of ours).
# A run whose record moved on elsewhere (a queued run that a worker of another process
# started or finished) is left as it is: only the status this process wrote is renewed.
HEARTBEAT = """UPDATE runs SET heartbeat_at = :now, status = h.status, verdict = NULL,
        finished_at = NULL
    FROM unnest(CAST(:seqs AS bigint[]), CAST(:statuses AS text[])) AS h(seq, status)
    WHERE runs.seq = h.seq AND runs.status IN (h.status, 'interrupted')"""


def _where(workflow: bool, status: bool, trigger: bool) -> list[str]:
    names = ("workflow = :workflow", "status = :status", "trigger = :trigger")
    return [name for name, on in zip(names, (workflow, status, trigger), strict=True) if on]


def list_sql(workflow: bool, status: bool, trigger: bool, before: bool) -> str:
    where = _where(workflow, status, trigger)
    if before:
        where.append(
            "(started_at, seq) < (SELECT started_at, seq FROM runs WHERE run_id = :before)"
        )
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return (
        f"SELECT {RUN_COLUMNS} FROM runs{clause}"
        " ORDER BY started_at DESC, seq DESC LIMIT :limit OFFSET :offset"
    )


def count_sql(workflow: bool, status: bool, trigger: bool) -> str:
    """The total of the count rows matching the filters, and how many rows were summed."""
    where = _where(workflow, status, trigger)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT coalesce(sum(n), 0), count(*) FROM run_counts{clause}"


# When a count sums more rows than this, the reader folds them (one process at a time:
# the others skip it rather than wait or deadlock on the rows being folded).
COMPACT_AFTER = 256
COMPACT_LOCK = 0x6165676973 + 2  # pg_try_advisory_xact_lock key
COMPACT_COUNTS = f"""WITH folding AS (SELECT pg_try_advisory_xact_lock({COMPACT_LOCK}) AS mine),
    gone AS (DELETE FROM run_counts WHERE (SELECT mine FROM folding)
        RETURNING workflow, status, trigger, n)
    INSERT INTO run_counts SELECT workflow, status, trigger, sum(n) FROM gone
        GROUP BY workflow, status, trigger HAVING sum(n) <> 0"""


# ------------------------------------------------------------------ reads


def find_run(db: Any, run_id: str) -> Run | None:
    rows = db.run(FIND, run_id=text(run_id))
    if not rows:
        wanted = text(run_id).lower()
        pattern = wanted.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        by_id = {row[1]: row for row in db.run(FIND_PREFIX, pattern=pattern)}
        found = matching_run_id(run_id, by_id)
        if found is None:
            return None
        rows = [by_id[found]]
    row = rows[0]
    steps = [full_step(step) for step in db.run(STEPS_OF, seq=row[0])]
    return run_record(row, steps)


def page(
    db: Any,
    workflow: str | None,
    status: str | None,
    limit: int,
    offset: int,
    trigger: str | None,
    before: str | None,
) -> RunList:
    params = _filters(workflow, status, trigger)
    sql = list_sql(workflow is not None, status is not None, trigger is not None, bool(before))
    if before:
        params["before"] = text(before)
    rows = db.run(sql, **params, limit=limit, offset=offset)
    if not rows:
        return []
    steps: dict[int, list[StepResult]] = {}
    for step_row in db.run(SUMMARIES, seqs=[row[0] for row in rows]):
        steps.setdefault(step_row[0], []).append(summary_step(step_row[1:]))
    return [run_record(row, steps.get(row[0], ())) for row in rows]


def count(db: Any, workflow: str | None, status: str | None, trigger: str | None) -> int:
    params = _filters(workflow, status, trigger)
    sql = count_sql(workflow is not None, status is not None, trigger is not None)
    total, summed = db.run(sql, **params)[0]
    if summed > COMPACT_AFTER:
        db.run(COMPACT_COUNTS)
    return int(total)


def _filters(workflow: str | None, status: str | None, trigger: str | None) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if workflow is not None:
        found["workflow"] = text(workflow)
    if status is not None:
        found["status"] = text(status.value if isinstance(status, RunStatus) else status)
    if trigger is not None:
        found["trigger"] = text(trigger)
    return found


# ----------------------------------------------------------------- writes


def save_runs(db: Any, runs: Sequence[Run], owner: Owner, now: float) -> list[int]:
    """Insert or overwrite the rows of ``runs`` (their run ids distinct; seq and owner
    kept for those already stored) and their steps, in one statement whatever their
    number; their seqs, in order."""
    rows = db.run(
        SAVE_RUNS,
        runs=runs_json(runs),
        steps=steps_json((text(run.run_id), run.steps) for run in runs),
        host=owner.host,
        pid=owner.pid,
        token=owner.token,
        now=now,
    )
    by_id = {row[0]: int(row[1]) for row in rows}
    return [by_id[text(run.run_id)] for run in runs]


def save_step(db: Any, seq: int, step: StepResult) -> None:
    """Record ``step`` of run ``seq``, replacing the step of its name if there is one."""
    db.run(SAVE_STEP, seq=seq, name=text(step.name), steps=steps_json([("", (step,))]))


def prune(db: Any, workflow: str, keep: int) -> None:
    """Remove the finished runs of ``workflow`` past the newest ``keep``."""
    db.run(PRUNE, workflow=text(workflow), keep=keep)


def save_heartbeat(db: Any, live: Sequence[tuple[int, str]], now: float) -> None:
    """Refresh the heartbeat of runs (seq, status) still going."""
    db.run(HEARTBEAT, now=now, seqs=[seq for seq, _ in live], statuses=[s for _, s in live])


def mark_interrupted(db: Any, rows: Sequence[Sequence[Any]], finished_at: str) -> list[str]:
    """Mark ``interrupted`` the runs of ``rows`` (from ``UNFINISHED_ROWS``) still as they
    were read (same heartbeat, not queued); the ids of those marked."""
    marked = []
    for seq, run_id, *_, heartbeat_at in rows:
        if db.run(MARK_INTERRUPTED, finished_at=finished_at, seq=seq, heartbeat_at=heartbeat_at):
            marked.append(run_id)
    return marked
