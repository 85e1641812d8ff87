"""The run queue in PostgreSQL: what every replica and worker sharing a database agrees on.

With SQLite the queue is a deque in one process (``aegis.api.manager``). With PostgreSQL
any ``aegis serve`` may accept a run and any worker may run it, so the queue is the table
``queue`` and every decision about it is one statement or one short transaction here:

* **Enqueue** inserts a row, not yet ``ready``: the submitter writes the run's ``queued``
  record next and only then marks the row ready, so no worker can start a run (and
  record it ``running``) before its ``queued`` record lands and overwrites that.
* **Idempotency keys** live in ``idempotency_keys`` (unique per workflow), so a key
  repeated to another replica, or after a restart, finds the first run. A key older than
  the TTL is taken over by the new run (one ``INSERT ... ON CONFLICT ... WHERE``).
* **Concurrency rules** are decided under a transaction-scoped advisory lock per workflow
  (``pg_advisory_xact_lock``): a ``skip`` check and its insert, and a claim's count of
  the workflow's claimed runs, are then atomic across processes. A claim takes the
  locks of every workflow it may claim, in one sorted order, so claimers never deadlock.
* **Claims** pick the oldest ready rows with ``FOR UPDATE SKIP LOCKED``: two workers never
  wait on, or take, the same row. A claim is a lease (``lease_until``); the worker renews
  it every third of its length, and a lease that runs out means the worker is gone.
* **Time is the server's** (``clock_timestamp()``), so the hosts' clocks never matter.
* **NOTIFY** on ``aegis_queue`` wakes idle workers as a run is enqueued, and on
  ``aegis_cancel`` tells the worker of a claimed run that its cancel was asked for.
  ``Waker`` LISTENs on a connection of its own, waiting on its socket with ``select``.

Every method blocks on the database: callers on an event loop use ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aegis.history.pg_connect import PgConnection, PgPool, PgTarget, connect
from aegis.history.pg_schema import SEARCH_PATH, migrate

__all__ = [
    "CANCEL_CHANNEL",
    "NOW",
    "QUEUE_CHANNEL",
    "Claim",
    "Enqueued",
    "PgQueue",
    "Waker",
]

log = logging.getLogger(__name__)

NOW = "extract(epoch from clock_timestamp())"  # the server's clock, in unix seconds
QUEUE_CHANNEL = "aegis_queue"
CANCEL_CHANNEL = "aegis_cancel"
# The advisory lock of a workflow's concurrency decisions: one key space of our own.
_WORKFLOW_LOCK = "SELECT pg_advisory_xact_lock(hashtext('aegis.workflow:' || :workflow))"
# A row never made ready for this long belongs to a submitter that died: it goes anyway.
STRANDED_AFTER = 60.0
# How many waiting rows a claim looks at per free slot (rows of full workflows are passed).
_LOOK_AHEAD = 4


@dataclass(frozen=True)
class Claim:
    """A queued run, as a worker claims (or a reaper hands back) it."""

    run_id: str
    workflow: str
    params: dict[str, object]
    reuse: dict[int, dict[str, Any]] | None
    trigger: str
    rerun_of: str | None
    cancel_requested: bool = False


@dataclass(frozen=True)
class Enqueued:
    """What ``enqueue`` did: ``run_id`` inserted, or the run in the way (``blocking``)
    or the earlier run of the same idempotency key (``earlier``)."""

    run_id: str | None = None
    blocking: str | None = None
    going: int = 0  # the workflow's runs queued or claimed, when blocked
    full: bool = False  # refused: max_queued runs wait already


class PgQueue:
    """The queue tables of the database ``pool`` connects to (migrated on creation)."""

    def __init__(self, pool: PgPool) -> None:
        self.pool = pool
        with pool.connection() as connection:
            migrate(connection)

    @classmethod
    def open(cls, target: PgTarget, *, size: int = 4) -> PgQueue:
        """The queue of ``target``'s database over a pool of ``size`` connections."""
        return cls(PgPool(target, size, setup=(SEARCH_PATH,)))

    def close(self) -> None:
        self.pool.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[PgConnection]:
        with self.pool.connection() as connection:
            connection.run("START TRANSACTION")
            try:
                yield connection
                connection.run("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    connection.run("ROLLBACK")
                raise

    def _run(self, sql: str, **params: Any) -> list[list[Any]]:
        with self.pool.connection() as connection:
            return connection.run(sql, **params)  # type: ignore[no-any-return]

    # ------------------------------------------------------------ idempotency

    def claim_key(self, workflow: str, key: str, run_id: str, ttl: float) -> str | None:
        """Bind ``key`` of ``workflow`` to ``run_id``, unless a binding younger than
        ``ttl`` seconds exists: then the run it names comes back."""
        taken = self._run(
            f"""INSERT INTO idempotency_keys (workflow, key, run_id, created_at)
                VALUES (:workflow, :key, :run_id, {NOW})
                ON CONFLICT (workflow, key) DO UPDATE
                    SET run_id = EXCLUDED.run_id, created_at = EXCLUDED.created_at
                    WHERE idempotency_keys.created_at < {NOW} - :ttl
                RETURNING run_id""",
            workflow=workflow,
            key=key,
            run_id=run_id,
            ttl=ttl,
        )
        if taken:
            return None
        rows = self._run(
            "SELECT run_id FROM idempotency_keys WHERE workflow = :workflow AND key = :key",
            workflow=workflow,
            key=key,
        )
        return str(rows[0][0]) if rows else None

    def forget_key(self, workflow: str, key: str, run_id: str) -> None:
        """Drop ``key``'s binding to ``run_id`` (its run was never queued)."""
        self._run(
            "DELETE FROM idempotency_keys WHERE workflow = :w AND key = :k AND run_id = :r",
            w=workflow,
            k=key,
            r=run_id,
        )

    def expire_keys(self, ttl: float, limit: int = 1000) -> int:
        """Remove up to ``limit`` keys older than ``ttl``; how many went comes back."""
        rows = self._run(
            f"""DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys
                WHERE created_at < {NOW} - :ttl LIMIT :limit) RETURNING 1""",
            ttl=ttl,
            limit=limit,
        )
        return len(rows)

    # ---------------------------------------------------------------- enqueue

    def enqueue(
        self,
        run_id: str,
        workflow: str,
        *,
        params: dict[str, object],
        trigger: str,
        rerun_of: str | None = None,
        reuse: dict[int, dict[str, Any]] | None = None,
        limit: int | None = None,
        skip_at: int | None = None,
        max_queued: int | None = None,
    ) -> Enqueued:
        """Insert ``run_id`` (not yet ready) unless ``max_queued`` runs wait already
        (``full``) or ``skip_at`` runs of ``workflow`` are queued or claimed (then the
        oldest of them comes back as ``blocking``). ``limit`` is how many of the
        workflow's runs may be claimed at once while this one is."""
        with self._transaction() as connection:
            if max_queued is not None:
                waiting = connection.run(
                    "SELECT count(*) FROM (SELECT 1 FROM queue WHERE claimed_by IS NULL"
                    " LIMIT :n) AS w",
                    n=max_queued,
                )
                if int(waiting[0][0]) >= max_queued:
                    return Enqueued(full=True)
            if skip_at is not None or limit is not None:
                connection.run(_WORKFLOW_LOCK, workflow=workflow)
            if skip_at is not None:
                going = connection.run(
                    "SELECT run_id, count(*) OVER () FROM queue WHERE workflow = :workflow"
                    " ORDER BY enqueued_at, run_id LIMIT 1",
                    workflow=workflow,
                )
                if going and int(going[0][1]) >= skip_at:
                    return Enqueued(blocking=str(going[0][0]), going=int(going[0][1]))
            connection.run(
                f"""INSERT INTO queue (run_id, workflow, enqueued_at, params, reuse, trigger,
                    rerun_of, ready, concurrency_limit)
                    VALUES (:run_id, :workflow, {NOW}, :params, :reuse, :trigger, :rerun_of,
                    false, :limit)""",
                run_id=run_id,
                workflow=workflow,
                params=json.dumps(params),
                reuse=None if reuse is None else json.dumps(reuse),
                trigger=trigger,
                rerun_of=rerun_of,
                limit=limit,
            )
        return Enqueued(run_id=run_id)

    def take(
        self,
        run_id: str,
        workflow: str,
        *,
        worker: str,
        lease: float,
        params: dict[str, object],
        limit: int,
        count_waiting: bool,
    ) -> tuple[str | None, int]:
        """Claim a row for ``run_id``, run by ``worker`` itself (``aegis run``), when fewer
        than ``limit`` of ``workflow``'s runs are claimed (with ``count_waiting``: queued
        or claimed). Returns (None, 0) when taken, else the oldest run in the way and how
        many there are. The row is never ready: no other worker claims it."""
        with self._transaction() as connection:
            connection.run(_WORKFLOW_LOCK, workflow=workflow)
            which = "" if count_waiting else " AND claimed_by IS NOT NULL"
            going = connection.run(
                f"SELECT run_id, count(*) OVER () FROM queue WHERE workflow = :workflow{which}"
                " ORDER BY enqueued_at, run_id LIMIT 1",
                workflow=workflow,
            )
            if going and int(going[0][1]) >= limit:
                return str(going[0][0]), int(going[0][1])
            connection.run(
                f"""INSERT INTO queue (run_id, workflow, enqueued_at, params, trigger, ready,
                    concurrency_limit, claimed_by, lease_until, claims)
                    VALUES (:run_id, :workflow, {NOW}, :params, 'cli', false, :limit,
                    :worker, {NOW} + :lease, 1)""",
                run_id=run_id,
                workflow=workflow,
                params=json.dumps(params),
                limit=limit,
                worker=worker,
                lease=lease,
            )
        return None, 0

    def ready(self, run_id: str) -> None:
        """Let workers claim ``run_id`` (its record is written), and wake them."""
        with self.pool.connection() as connection:
            connection.run("UPDATE queue SET ready = true WHERE run_id = :r", r=run_id)
            connection.run(f"NOTIFY {QUEUE_CHANNEL}")

    def oldest_of(self, workflow: str, count: int) -> list[tuple[str, bool]]:
        """The oldest ``count`` runs of ``workflow`` in the queue: (run id, claimed)."""
        rows = self._run(
            "SELECT run_id, claimed_by IS NOT NULL FROM queue WHERE workflow = :workflow"
            " ORDER BY enqueued_at, run_id LIMIT :count",
            workflow=workflow,
            count=max(count, 0),
        )
        return [(str(r[0]), bool(r[1])) for r in rows]

    def queued_count(self) -> int:
        """How many runs wait to be claimed, in all."""
        return int(self._run("SELECT count(*) FROM queue WHERE claimed_by IS NULL")[0][0])

    def contains(self, run_id: str) -> bool:
        """Whether ``run_id`` is in the queue (waiting or claimed)."""
        return bool(self._run("SELECT 1 FROM queue WHERE run_id = :r", r=run_id))

    # ------------------------------------------------------------------ claim

    def claim(self, worker: str, slots: int, lease: float) -> list[Claim]:
        """Claim up to ``slots`` ready runs for ``worker``, oldest first, each for
        ``lease`` seconds; a run whose workflow has its ``concurrency_limit`` of runs
        claimed already is passed over (runs behind it may go)."""
        if slots < 1:
            return []
        with self._transaction() as connection:
            rows = connection.run(
                """SELECT run_id, workflow, params, reuse, trigger, rerun_of,
                    concurrency_limit FROM queue WHERE claimed_by IS NULL AND ready
                    ORDER BY enqueued_at, run_id LIMIT :n FOR UPDATE SKIP LOCKED""",
                n=slots * _LOOK_AHEAD,
            )
            limited = sorted({str(r[1]) for r in rows if r[6] is not None})
            room: dict[str, int] = {}
            for workflow in limited:  # one order for every claimer: no deadlock
                connection.run(_WORKFLOW_LOCK, workflow=workflow)
                claimed = connection.run(
                    "SELECT count(*) FROM queue WHERE workflow = :w AND claimed_by IS NOT NULL",
                    w=workflow,
                )
                room[workflow] = int(claimed[0][0])
            taken: list[Claim] = []
            for run_id, workflow, params, reuse, trigger, rerun_of, limit in rows:
                if len(taken) >= slots:
                    break
                if limit is not None:
                    if room[workflow] >= int(limit):
                        continue
                    room[workflow] += 1
                taken.append(
                    Claim(
                        run_id=run_id,
                        workflow=workflow,
                        params=json.loads(params),
                        reuse=None if reuse is None else _reuse(json.loads(reuse)),
                        trigger=trigger,
                        rerun_of=rerun_of,
                    )
                )
            if taken:
                connection.run(
                    f"""UPDATE queue SET claimed_by = :worker, lease_until = {NOW} + :lease,
                        claims = claims + 1 WHERE run_id = ANY(:ids)""",
                    worker=worker,
                    lease=lease,
                    ids=[c.run_id for c in taken],
                )
        return taken

    def renew(self, worker: str, lease: float) -> dict[str, bool]:
        """Extend every lease ``worker`` holds; returns its runs still claimed, each with
        whether its cancel was asked for. Also marks the worker seen."""
        rows = self._run(
            f"""UPDATE queue SET lease_until = {NOW} + :lease WHERE claimed_by = :worker
                RETURNING run_id, cancel_requested""",
            worker=worker,
            lease=lease,
        )
        self._run(f"UPDATE workers SET seen_at = {NOW} WHERE id = :id", id=worker)
        return {str(r[0]): bool(r[1]) for r in rows}

    def finish(self, run_id: str, worker: str) -> None:
        """The run ended under ``worker``'s claim: its row goes."""
        self._run("DELETE FROM queue WHERE run_id = :r AND claimed_by = :w", r=run_id, w=worker)

    def remove(self, run_id: str) -> None:
        """Drop ``run_id``'s row, whoever holds it."""
        self._run("DELETE FROM queue WHERE run_id = :r", r=run_id)

    def release(self, run_id: str, worker: str) -> bool:
        """Hand a claimed run back to the queue (``on_interrupt: requeue``), not ready
        until its ``queued`` record is written (``ready``); false if ``worker`` no longer
        held it."""
        rows = self._run(
            """UPDATE queue SET claimed_by = NULL, lease_until = NULL, cancel_requested = false,
               ready = false WHERE run_id = :r AND claimed_by = :w RETURNING 1""",
            r=run_id,
            w=worker,
        )
        return bool(rows)

    # ----------------------------------------------------------------- cancel

    def request_cancel(self, run_id: str) -> str | None:
        """Cancel ``run_id``: a waiting run is removed (``"queued"``, its end is the
        caller's to record); a claimed one is flagged and its worker told (``"claimed"``);
        ``None`` if it is not in the queue."""
        removed = self._run(
            "DELETE FROM queue WHERE run_id = :r AND claimed_by IS NULL RETURNING 1", r=run_id
        )
        if removed:
            return "queued"
        flagged = self._run(
            "UPDATE queue SET cancel_requested = true WHERE run_id = :r RETURNING 1", r=run_id
        )
        if not flagged:
            return None
        self._run(f"NOTIFY {CANCEL_CHANNEL}")
        return "claimed"

    # ------------------------------------------------------------------- reap

    def reap(self, requeue: Sequence[str]) -> tuple[list[Claim], list[Claim]]:
        """Take back the runs whose lease ran out (their worker is gone): those of the
        workflows in ``requeue`` (unless their cancel was asked for) wait again, not ready
        until the caller has recorded them ``queued`` (``ready``); the rest leave the
        queue. Returns (requeued, removed); recording them is the caller's.
        Rows never made ready by a submitter that died are made ready."""
        with self._transaction() as connection:
            expired = connection.run(
                f"""SELECT run_id, workflow, params, reuse, trigger, rerun_of, cancel_requested
                    FROM queue WHERE claimed_by IS NOT NULL AND lease_until < {NOW}
                    FOR UPDATE SKIP LOCKED"""
            )
            claims = [
                Claim(
                    run_id=r[0],
                    workflow=r[1],
                    params=json.loads(r[2]),
                    reuse=None if r[3] is None else _reuse(json.loads(r[3])),
                    trigger=r[4],
                    rerun_of=r[5],
                    cancel_requested=bool(r[6]),
                )
                for r in expired
            ]
            again = [c for c in claims if c.workflow in requeue and not c.cancel_requested]
            gone = [c for c in claims if c not in again]
            if again:
                connection.run(
                    """UPDATE queue SET claimed_by = NULL, lease_until = NULL, ready = false
                       WHERE run_id = ANY(:ids)""",
                    ids=[c.run_id for c in again],
                )
            if gone:
                connection.run(
                    "DELETE FROM queue WHERE run_id = ANY(:ids)", ids=[c.run_id for c in gone]
                )
            connection.run(
                f"UPDATE queue SET ready = true WHERE NOT ready AND enqueued_at < {NOW} - :after",
                after=STRANDED_AFTER,
            )
        return again, gone

    # ---------------------------------------------------------------- workers

    def register(self, worker: str, *, host: str, pid: int, kind: str, slots: int) -> None:
        """Record ``worker`` (``kind``: ``serve`` or ``worker``) as running, seen now."""
        self._run(
            f"""INSERT INTO workers (id, host, pid, kind, started_at, seen_at, max_concurrent)
                VALUES (:id, :host, :pid, :kind, {NOW}, {NOW}, :slots)
                ON CONFLICT (id) DO UPDATE SET seen_at = EXCLUDED.seen_at""",
            id=worker,
            host=host,
            pid=pid,
            kind=kind,
            slots=slots,
        )

    def draining(self, worker: str) -> None:
        """Mark ``worker`` as stopping: it claims no more."""
        self._run("UPDATE workers SET draining = true WHERE id = :id", id=worker)

    def forget(self, worker: str) -> None:
        """``worker`` has stopped: its row goes."""
        self._run("DELETE FROM workers WHERE id = :id", id=worker)

    def forget_silent(self, older_than: float) -> int:
        """Remove workers not seen for ``older_than`` seconds; how many went."""
        rows = self._run(
            f"DELETE FROM workers WHERE seen_at < {NOW} - :age RETURNING 1", age=older_than
        )
        return len(rows)

    def workers(self) -> list[dict[str, Any]]:
        """Every registered worker, with how long ago it was last seen (seconds)."""
        rows = self._run(
            f"""SELECT id, host, pid, kind, max_concurrent, draining, {NOW} - seen_at,
                (SELECT count(*) FROM queue WHERE claimed_by = workers.id)
                FROM workers ORDER BY started_at, id"""
        )
        keys = ("id", "host", "pid", "kind", "max_concurrent", "draining", "seen_ago", "runs")
        return [dict(zip(keys, row, strict=True)) for row in rows]


def _reuse(raw: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(index): step for index, step in raw.items()}


class Waker:
    """A thread that LISTENs on the queue's channels and calls ``wake(channel)`` for each
    notification. A lost connection is made again after ``retry`` seconds; meanwhile the
    workers' polling carries on, so a missed notification only costs latency."""

    def __init__(
        self, target: PgTarget, wake: Callable[[str], None], *, retry: float = 1.0
    ) -> None:
        self._target = target
        self._wake = wake
        self._retry = retry
        self._stop = threading.Event()
        self._bell, self._ring = socket.socketpair()  # wakes the select at stop
        self._thread = threading.Thread(target=self._serve, name="aegis-queue-waker", daemon=True)

    def start(self) -> Waker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._ring.send(b"x")
        self._thread.join(timeout=5)
        self._bell.close()
        self._ring.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # the database went away: poll until it is back
                log.debug("queue listener lost its connection (%s)", exc)
            self._stop.wait(self._retry)

    def _listen(self) -> None:
        connection, sock = connect(self._target)
        try:
            connection.run(f"LISTEN {QUEUE_CHANNEL}")
            connection.run(f"LISTEN {CANCEL_CHANNEL}")
            while not self._stop.is_set():
                readable, _, _ = select.select([sock, self._bell], [], [], 5.0)
                if sock in readable:
                    connection.run("SELECT 1")  # reads the notifications that came
                while connection.notifications:
                    _, channel, _ = connection.notifications.popleft()
                    self._wake(str(channel))
        finally:
            with contextlib.suppress(Exception):
                connection.close()
