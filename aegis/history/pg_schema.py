"""The PostgreSQL schema, its versions, and the migrations that bring a database up to date.

Everything Aegis keeps lives in the PostgreSQL schema ``aegis`` (so a database shared
with other programs is never touched outside it); every connection sets
``search_path`` to it (``SEARCH_PATH``).

``migrate`` runs on every open. It takes a transaction-scoped advisory lock first, so two
processes starting together apply each migration once, one after the other; reads the
version from ``schema_version``; refuses a database written by a newer Aegis (raising
``SchemaError`` with both versions, and changing nothing); and applies each missing
migration in the same transaction as its new version number, so a failure leaves the
database as it was.

Version 1 holds:

    runs            one row per run, as the SQLite file's (``seq`` is the order of
                    recording and the keyset of listings; times are the records' ISO text)
    steps           one row per ended step (``id``: report order; a name may repeat)
    run_counts      runs per (workflow, status, trigger), kept by statement-level
                    triggers on ``runs``, so a page's total is a sum over a few rows,
                    not a count of the table
    schedule_fires  the last tick claimed of each schedule (a tick fires once in all)
    tests, test_outcomes, test_runs   the test history, as in the SQLite file
    queue           runs waiting or claimed: the real params, a rerun's carried steps,
                    the trigger, whether it may be claimed yet (``ready``: its record is
                    written), and the claim (``claimed_by``, ``lease_until`` on the
                    server's clock)
    idempotency_keys   (workflow, key) → run id, shared by every process
    workers         the processes that claim runs, and when each was last seen
    events          every event of every process (``origin``: which one emitted it,
                    ``local_id``: its number there, so a retried batch is not doubled)
    webhook_outbox  one row per event and webhook, delivered once by whichever claims it;
                    a row carries its URL, body and signature, so any process delivers it
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["MIGRATIONS", "SCHEMA", "SCHEMA_VERSION", "SEARCH_PATH", "SchemaError", "migrate"]

SCHEMA = "aegis"
SEARCH_PATH = f"SET search_path TO {SCHEMA}"
# pg_advisory_xact_lock key for migrations: "aegis" in ASCII, as one bigint
MIGRATION_LOCK = 0x6165676973

_V1 = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    """CREATE TABLE runs (
        seq bigserial PRIMARY KEY,
        run_id text NOT NULL UNIQUE,
        workflow text NOT NULL,
        status text NOT NULL,
        verdict text,
        started_at text NOT NULL,
        finished_at text,
        duration_ms double precision,
        trigger text NOT NULL,
        params text NOT NULL DEFAULT '{}',
        rerun_of text,
        owner_host text NOT NULL DEFAULT '',
        owner_pid integer NOT NULL DEFAULT 0,
        owner_token text NOT NULL DEFAULT '',
        heartbeat_at double precision NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX runs_newest ON runs (started_at DESC, seq DESC)",
    "CREATE INDEX runs_by_workflow ON runs (workflow, started_at DESC, seq DESC)",
    "CREATE INDEX runs_by_status ON runs (status, started_at DESC, seq DESC)",
    "CREATE INDEX runs_by_workflow_status ON runs (workflow, status, started_at DESC, seq DESC)",
    "CREATE INDEX runs_by_trigger ON runs (trigger, started_at DESC, seq DESC)",
    "CREATE INDEX runs_by_id_prefix ON runs (lower(run_id) text_pattern_ops)",
    """CREATE TABLE steps (
        id bigserial PRIMARY KEY,
        run_seq bigint NOT NULL REFERENCES runs (seq) ON DELETE CASCADE,
        name text NOT NULL,
        type text NOT NULL,
        service text,
        status text NOT NULL,
        duration_ms double precision NOT NULL,
        error text,
        error_kind text,
        skip_reason text,
        reused boolean NOT NULL DEFAULT false,
        data text NOT NULL,
        attempts text NOT NULL
    )""",
    # not unique: a finished run may report two steps of one name, and keeps both
    "CREATE INDEX steps_by_run ON steps (run_seq, name)",
    # Counts are deltas, only ever inserted: writers never lock a shared counter row, so
    # runs recorded at once by several processes cannot deadlock on their counts (an
    # upserted counter per group did, as two transactions moved runs between the same
    # groups in opposite orders). Readers sum; ``COMPACT_COUNTS`` folds the rows again.
    """CREATE TABLE run_counts (
        workflow text NOT NULL,
        status text NOT NULL,
        trigger text NOT NULL,
        n bigint NOT NULL
    )""",
    "CREATE INDEX run_counts_by_group ON run_counts (workflow, status, trigger)",
    # Statement-level, on transition tables: a statement adds its runs per group at once
    # (an INSERT ... SELECT of a million runs costs one row per group, not a million),
    # and an UPDATE that moves no run between groups (a heartbeat) adds nothing.
    """CREATE FUNCTION count_runs() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO run_counts SELECT workflow, status, trigger, count(*)
                FROM new_rows GROUP BY workflow, status, trigger;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO run_counts SELECT workflow, status, trigger, -count(*)
                FROM old_rows GROUP BY workflow, status, trigger;
        ELSE
            INSERT INTO run_counts SELECT workflow, status, trigger, sum(n) FROM (
                    SELECT workflow, status, trigger, 1 AS n FROM new_rows
                    UNION ALL SELECT workflow, status, trigger, -1 FROM old_rows) moved
                GROUP BY workflow, status, trigger HAVING sum(n) <> 0;
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER runs_inserted AFTER INSERT ON runs REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION count_runs()""",
    """CREATE TRIGGER runs_updated AFTER UPDATE ON runs
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION count_runs()""",
    """CREATE TRIGGER runs_deleted AFTER DELETE ON runs REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION count_runs()""",
    """CREATE TABLE schedule_fires (
        workflow text NOT NULL,
        schedule text NOT NULL,
        fired_at double precision NOT NULL,
        PRIMARY KEY (workflow, schedule)
    )""",
    """CREATE TABLE tests (
        workflow text NOT NULL,
        test_id text NOT NULL,
        runs integer NOT NULL,
        failures integer NOT NULL,
        flips integer NOT NULL,
        last_outcome text NOT NULL,
        last_run text NOT NULL,
        last_seen_at text NOT NULL,
        last_failure_at text,
        last_failure_run text,
        last_message text,
        last_pass_at text,
        last_pass_run text,
        PRIMARY KEY (workflow, test_id)
    )""",
    "CREATE INDEX tests_by_id ON tests (test_id)",
    """CREATE TABLE test_outcomes (
        id bigserial PRIMARY KEY,
        test_id text NOT NULL,
        workflow text NOT NULL,
        run_id text NOT NULL,
        started_at text NOT NULL,
        outcome text NOT NULL,
        message text,
        bug_report text
    )""",
    "CREATE INDEX test_outcomes_by_test ON test_outcomes (test_id, started_at)",
    "CREATE INDEX test_outcomes_by_run ON test_outcomes (run_id)",
    """CREATE TABLE test_runs (
        run_id text PRIMARY KEY,
        failing integer NOT NULL
    )""",
    """CREATE TABLE queue (
        run_id text PRIMARY KEY,
        workflow text NOT NULL,
        enqueued_at double precision NOT NULL,
        params text NOT NULL DEFAULT '{}',
        reuse text,
        trigger text NOT NULL DEFAULT 'api',
        rerun_of text,
        ready boolean NOT NULL DEFAULT true,
        concurrency_limit integer,
        claimed_by text,
        lease_until double precision,
        cancel_requested boolean NOT NULL DEFAULT false,
        claims integer NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX queue_waiting ON queue (enqueued_at, run_id) WHERE claimed_by IS NULL",
    "CREATE INDEX queue_leases ON queue (lease_until) WHERE claimed_by IS NOT NULL",
    """CREATE TABLE idempotency_keys (
        workflow text NOT NULL,
        key text NOT NULL,
        run_id text NOT NULL,
        created_at double precision NOT NULL,
        PRIMARY KEY (workflow, key)
    )""",
    "CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at)",
    """CREATE TABLE workers (
        id text PRIMARY KEY,
        host text NOT NULL,
        pid integer NOT NULL,
        kind text NOT NULL,
        started_at double precision NOT NULL,
        seen_at double precision NOT NULL,
        max_concurrent integer NOT NULL,
        draining boolean NOT NULL DEFAULT false
    )""",
    """CREATE TABLE events (
        id bigserial PRIMARY KEY,
        origin text NOT NULL,
        local_id bigint NOT NULL,
        type text NOT NULL,
        emitted_at text NOT NULL,
        run_id text NOT NULL,
        workflow text NOT NULL,
        data text NOT NULL,
        UNIQUE (origin, local_id)
    )""",
    "CREATE INDEX events_by_time ON events (emitted_at)",
    """CREATE TABLE webhook_outbox (
        id bigserial PRIMARY KEY,
        hook text NOT NULL,
        url text NOT NULL,
        origin text NOT NULL,
        delivery_id text NOT NULL,
        signature text,
        event_id bigint,
        event_type text NOT NULL,
        run_id text NOT NULL,
        body text NOT NULL,
        created_at double precision NOT NULL,
        next_at double precision NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        claimed_by text,
        claimed_until double precision,
        delivered_at double precision,
        failed text
    )""",
    "CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at)"
    " WHERE delivered_at IS NULL AND failed IS NULL",
    "CREATE INDEX webhook_outbox_done ON webhook_outbox (created_at)"
    " WHERE delivered_at IS NOT NULL OR failed IS NOT NULL",
)

# (version, statements): each applied once, in order, in the transaction that records it.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = ((1, _V1),)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_VERSION_TABLE = f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_version (
    version integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


class SchemaError(Exception):
    """The database cannot be used by this Aegis (the message says why)."""


def migrate(connection: Any) -> int:
    """Bring the database ``connection`` is on up to ``SCHEMA_VERSION``; the version it
    had comes back (0 for a new one). Raises ``SchemaError`` for a newer database, with
    nothing changed."""
    connection.run("START TRANSACTION")
    try:
        connection.run("SELECT pg_advisory_xact_lock(:key)", key=MIGRATION_LOCK)
        connection.run(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        connection.run(_VERSION_TABLE)
        rows = connection.run(f"SELECT max(version) FROM {SCHEMA}.schema_version")
        found = int(rows[0][0] or 0)
        if found > SCHEMA_VERSION:
            raise SchemaError(
                f"written by a newer aegis: schema version {found}, this one reads up to"
                f" {SCHEMA_VERSION}"
            )
        connection.run(SEARCH_PATH)
        for version, statements in MIGRATIONS:
            if version <= found:
                continue
            for statement in statements:
                connection.run(statement)
            connection.run(f"INSERT INTO {SCHEMA}.schema_version (version) VALUES (:v)", v=version)
        connection.run("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):  # a failed connection: the server rolls back
            connection.run("ROLLBACK")
        raise
    return found
