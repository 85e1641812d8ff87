"""Events across processes with PostgreSQL: one table of every process's events, and every
replica's event log fed from it.

The bus stays in-process and synchronous: the engine's loop must never wait on a
database. ``EventSink`` is a bus listener that only queues the event; a thread of its own
writes the queue in batches, one transaction each, into ``events`` and, for each webhook
that wants an event, a row of ``webhook_outbox`` (``aegis.webhook_outbox`` delivers it),
then ``NOTIFY aegis_events``. Writers take a transaction-scoped advisory lock before
their ids are drawn, so ids are committed in the order they are numbered: a reader that
has seen id N never later finds a smaller id appear, and ``id > last seen`` misses
nothing. A batch that fails is kept and written again once the server answers; the
``(origin, local_id)`` key makes a batch whose commit was lost in flight a no-op the
second time. While the server cannot be reached, at most ``MAX_QUEUED`` events wait
in memory; newer ones are dropped and counted, and the count is logged when it answers
again (so an outage costs at most the events past that bound, never a run).

``EventFeed`` gives a process's ``EventLog`` everything in ``events``: its own events
come back through the table too, so every replica's log holds the same events under the
same (the table's) ids, and ``?after=`` pages and SSE resumes work behind a load
balancer. It holds a connection that ``LISTEN``s; it waits on that connection's socket
(``select``), and on a wake-up or after ``POLL`` seconds reads what is newer than the
last id it saw. At start it loads the newest events (as many as the log holds), so a
restarted server does not begin empty.

Retention: each sink deletes, every ``RETENTION_EVERY`` seconds and in batches of
``DELETE_BATCH`` rows, events older than ``history.max_age`` (when set) and those more
than ``KEEP_EVENTS`` ids (or ``event_log_size``, if larger) behind the newest. The
table is a window for live views and paging, not an archive: runs and their steps are
the record.

``share_events`` wires the three for a process (see its docstring); ``Outage`` makes one
warning of an outage however many threads notice it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from aegis.config.model import Config, WebhookSpec
from aegis.events import Event, EventBus, EventLog
from aegis.records import age_cutoff

from .pg_connect import PgConnection, PgTarget, connect, describe_error, driver_errors
from .pg_schema import SEARCH_PATH, migrate

if TYPE_CHECKING:
    from aegis.webhook_outbox import OutboxDelivery

__all__ = [
    "CHANNEL",
    "KEEP_EVENTS",
    "MAX_QUEUED",
    "EventFeed",
    "EventSink",
    "Link",
    "Outage",
    "SharedEvents",
    "new_origin",
    "retry_wait",
    "share_events",
]

CHANNEL = "aegis_events"
EVENTS_LOCK = 0x6165676973 + 1  # pg_advisory_xact_lock key of event writers
MAX_QUEUED = 10_000  # events a sink holds while the server cannot be reached
BATCH = 500  # events per transaction
POLL = 1.0  # seconds between reads when no NOTIFY came
RETRY_FIRST, RETRY_MAX = 0.25, 5.0  # seconds before reconnecting, doubled up to the max
KEEP_EVENTS = 100_000  # ids kept behind the newest
RETENTION_EVERY = 60.0  # seconds between retention passes
DELETE_BATCH = 1000  # rows per retention statement
DELETE_ROUNDS = 20  # statements per pass at most; the rest waits for the next pass
FEED_PAGE = 1000  # events read per query

log = logging.getLogger("aegis.events")


def new_origin() -> str:
    """A name for this process that no other process has: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Outage:
    """One warning per outage of the server, however many threads notice it.

    Each thread says ``failed(name, exc)`` or ``ok(name)``; the warning goes out when the
    first fails while none was failing, and the outage ends when all are ok again.
    """

    def __init__(self, target: PgTarget, warn: Callable[[str], None]) -> None:
        self._target = target
        self._warn = warn
        self._failing: set[str] = set()
        self._lock = threading.Lock()

    def failed(self, name: str, exc: BaseException) -> None:
        with self._lock:
            first = not self._failing
            self._failing.add(name)
        if first:
            self._warn(
                f"PostgreSQL at {self._target.display()} does not answer"
                f" ({describe_error(exc)}): events and webhook deliveries wait and are"
                " retried"
            )
        else:
            log.debug("%s: PostgreSQL does not answer: %s", name, describe_error(exc))

    def ok(self, name: str) -> None:
        with self._lock:
            if name not in self._failing:
                return
            self._failing.discard(name)
            ended = not self._failing
        if ended:
            log.info("PostgreSQL at %s answers again", self._target.display())

    @property
    def down(self) -> bool:
        with self._lock:
            return bool(self._failing)


class Link:
    """One thread's own connection, made (and the schema brought up to date) when first
    needed and made again after a failure; ``listen`` names a channel to ``LISTEN`` on."""

    def __init__(self, target: PgTarget, *, listen: str | None = None) -> None:
        self.target = target
        self._listen = listen
        self._connection: PgConnection | None = None
        self.socket: socket.socket | None = None

    def get(self) -> PgConnection:
        if self._connection is None:
            connection, sock = connect(self.target)
            try:
                migrate(connection)
                connection.run(SEARCH_PATH)
                if self._listen is not None:
                    connection.run(f"LISTEN {self._listen}")
            except BaseException:
                _close_quietly(connection)
                raise
            self._connection, self.socket = connection, sock
        return self._connection

    def drop(self) -> None:
        connection, self._connection, self.socket = self._connection, None, None
        if connection is not None:
            _close_quietly(connection)


def _close_quietly(connection: PgConnection) -> None:
    try:
        connection.close()
    except Exception:
        log.debug("closing a PostgreSQL connection failed", exc_info=True)


def retry_wait(failures: int) -> float:
    """Seconds before reconnecting after ``failures`` failures in a row."""
    return float(min(RETRY_FIRST * 2 ** min(max(failures - 1, 0), 10), RETRY_MAX))


# --------------------------------------------------------------------------- writing


class EventSink:
    """A bus listener that writes events (and their webhooks' outbox rows) to PostgreSQL
    from a thread of its own; see the module docstring. ``start`` the thread, subscribe
    the sink, ``close(timeout)`` to flush."""

    def __init__(
        self,
        target: PgTarget,
        *,
        origin: str,
        outage: Outage,
        hooks: Sequence[WebhookSpec] = (),
        written: Callable[[], None] | None = None,
        max_age: float = 0.0,
        keep: int = KEEP_EVENTS,
        max_queued: int = MAX_QUEUED,
        retention_every: float = RETENTION_EVERY,
    ) -> None:
        self.origin = origin
        self._retention_every = retention_every
        self._link = Link(target)
        self._outage = outage
        self._hooks = tuple(hooks)
        self._written = written
        self._max_age = max_age
        self._keep = max(keep, 1)
        self._max_queued = max(max_queued, 1)
        self._queue: deque[Event] = deque()
        self._changed = threading.Condition()
        self._busy = False  # a batch is being written
        self._closing = False
        self._dropped = 0  # events not queued because the queue was full
        self._reported = 0
        self._thread: threading.Thread | None = None
        self._next_retention = 0.0

    def start(self) -> EventSink:
        self._thread = threading.Thread(target=self._run, name="aegis-event-sink", daemon=True)
        self._thread.start()
        return self

    def __call__(self, event: Event) -> None:
        """The bus listener: queue ``event``, at once."""
        with self._changed:
            if self._closing:
                return
            if len(self._queue) >= self._max_queued:
                self._dropped += 1
                return
            self._queue.append(event)
            self._changed.notify_all()

    @property
    def pending(self) -> int:
        with self._changed:
            return len(self._queue) + (1 if self._busy else 0)

    def close(self, timeout: float) -> bool:
        """Stop taking events; wait up to ``timeout`` seconds for the queued ones to be
        written. True when all were; otherwise the rest are lost, and a warning says
        how many."""
        deadline = time.monotonic() + max(timeout, 0)
        with self._changed:
            self._closing = True
            self._changed.notify_all()
            done = self._changed.wait_for(
                lambda: not self._queue and not self._busy, max(timeout, 0)
            )
            left = len(self._queue)
            self._queue.clear()
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(max(deadline - time.monotonic(), 0))
        if not done and left:
            log.warning("%d events not written to PostgreSQL: not done within %g s", left, timeout)
        self._report_dropped()
        if self._thread is None or not self._thread.is_alive():
            self._link.drop()
        return done

    def _report_dropped(self) -> None:
        with self._changed:
            more, self._reported = self._dropped - self._reported, self._dropped
        if more:
            log.warning(
                "%d events were not written to PostgreSQL: %d were waiting already",
                more,
                self._max_queued,
            )

    def _run(self) -> None:
        failures = 0
        while True:
            with self._changed:
                self._changed.wait_for(
                    lambda: self._queue or self._closing, self._until_retention()
                )
                if self._closing and not self._queue:
                    return
                batch = [self._queue[i] for i in range(min(len(self._queue), BATCH))]
                self._busy = bool(batch)
            try:
                if self._until_retention() <= 0:  # also when events never stop coming
                    self._retain()
                if batch:
                    self._write(batch)
            except driver_errors() as exc:
                self._link.drop()
                self._outage.failed("sink", exc)
                failures += 1
                with self._changed:
                    self._busy = False
                    # until the retry, or until close gives up on what is queued
                    self._changed.wait_for(
                        lambda: self._closing and not self._queue, retry_wait(failures)
                    )
                continue
            except Exception:  # a bug must not stop later writes; this batch is dropped
                log.exception("writing events to PostgreSQL failed")
            failures = 0
            self._outage.ok("sink")
            with self._changed:
                for _ in batch:
                    if self._queue:
                        self._queue.popleft()
                self._busy = False
                self._changed.notify_all()
            self._report_dropped()
            if batch and self._written is not None:
                self._written()

    def _until_retention(self) -> float:
        return max(self._next_retention - time.monotonic(), 0.0)

    def _write(self, batch: list[Event]) -> None:
        connection = self._link.get()
        connection.run("START TRANSACTION")
        try:
            connection.run("SELECT pg_advisory_xact_lock(:key)", key=EVENTS_LOCK)
            rows = connection.run(
                "INSERT INTO events (origin, local_id, type, emitted_at, run_id, workflow,"
                " data) SELECT :origin, * FROM unnest(CAST(:ids AS bigint[]),"
                " CAST(:kinds AS text[]), CAST(:times AS text[]), CAST(:runs AS text[]),"
                " CAST(:workflows AS text[]), CAST(:data AS text[]))"
                " ON CONFLICT (origin, local_id) DO NOTHING RETURNING id, local_id",
                origin=self.origin,
                ids=[e.id for e in batch],
                kinds=[e.type for e in batch],
                times=[e.timestamp for e in batch],
                runs=[e.run_id for e in batch],
                workflows=[e.workflow for e in batch],
                data=[_dump(e.data) for e in batch],
            )
            if rows:
                stored = {int(local): int(new) for new, local in rows}
                written = [replace(e, id=stored[e.id]) for e in batch if e.id in stored]
                if self._hooks:
                    from aegis.webhook_outbox import enqueue

                    enqueue(connection, self._hooks, written, origin=self.origin)
                newest = max(stored.values())
                connection.run("SELECT pg_notify(:channel, :newest)", channel=CHANNEL,
                               newest=str(newest))  # fmt: skip
            connection.run("COMMIT")
        except BaseException:
            try:
                connection.run("ROLLBACK")
            except Exception:
                self._link.drop()
            raise

    def _retain(self) -> None:
        """One retention pass (see the module docstring)."""
        self._next_retention = time.monotonic() + self._retention_every
        connection = self._link.get()
        for _ in range(DELETE_ROUNDS):
            connection.run(
                "DELETE FROM events WHERE id IN (SELECT id FROM events"
                " WHERE id <= (SELECT max(id) FROM events) - :keep ORDER BY id LIMIT :n)",
                keep=self._keep,
                n=DELETE_BATCH,
            )
            if connection.row_count < DELETE_BATCH:
                break
        if self._max_age <= 0:
            return
        cutoff = age_cutoff(time.time(), self._max_age)
        for _ in range(DELETE_ROUNDS):
            connection.run(
                "DELETE FROM events WHERE id IN (SELECT id FROM events"
                " WHERE emitted_at < :cutoff ORDER BY id LIMIT :n)",
                cutoff=cutoff,
                n=DELETE_BATCH,
            )
            if connection.row_count < DELETE_BATCH:
                break


def _dump(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), default=str)


# --------------------------------------------------------------------------- reading


class EventFeed:
    """Appends every event in the table to ``log``, in id order, as they come; see the
    module docstring. ``start`` it, ``close`` it."""

    def __init__(
        self,
        target: PgTarget,
        log: EventLog,
        *,
        outage: Outage,
        size: int,
        poll: float = POLL,
        arrived: Callable[[], None] | None = None,
    ) -> None:
        self._arrived = arrived  # called after new events were appended
        self._link = Link(target, listen=CHANNEL)
        self._log = log
        self._outage = outage
        self._size = max(size, 1)
        self._poll = poll
        self.last: int | None = None  # the newest id appended
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None

    def start(self) -> EventFeed:
        self._thread = threading.Thread(target=self._run, name="aegis-event-feed", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(max(timeout, 0))
        if self._thread is None or not self._thread.is_alive():
            self._link.drop()
            self._wake_r.close()
            self._wake_w.close()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                connection = self._link.get()
                if self.last is None:
                    self._load(connection)
                self._catch_up(connection)
            except driver_errors() as exc:
                self._link.drop()
                self._outage.failed("feed", exc)
                failures += 1
                self._stop.wait(retry_wait(failures))
                continue
            except Exception:  # a bug: say so, and try again on the next round
                log.exception("reading events from PostgreSQL failed")
                self._link.drop()
                self._stop.wait(self._poll)
                continue
            failures = 0
            self._outage.ok("feed")
            self._wait()

    def _wait(self) -> None:
        """Until a NOTIFY (or anything else) arrives on the connection, a ``close``, or
        ``poll`` seconds."""
        sock = self._link.socket
        watched = [self._wake_r] if sock is None else [self._wake_r, sock]
        try:
            select.select(watched, [], [], self._poll)
        except (OSError, ValueError):  # the connection's socket closed under us
            self._stop.wait(self._poll)

    def _load(self, connection: PgConnection) -> None:
        rows = connection.run(
            f"SELECT {_COLUMNS} FROM events ORDER BY id DESC LIMIT :n", n=self._size
        )
        if rows:
            for row in reversed(rows):
                self._log.append(_event(row))
            self.last = int(rows[0][0])
        else:
            self.last = int(connection.run("SELECT coalesce(max(id), 0) FROM events")[0][0])

    def _catch_up(self, connection: PgConnection) -> None:
        assert self.last is not None
        while True:
            rows = connection.run(
                f"SELECT {_COLUMNS} FROM events WHERE id > :after ORDER BY id LIMIT :n",
                after=self.last,
                n=FEED_PAGE,
            )
            connection.notifications.clear()
            for row in rows:
                self._log.append(_event(row))
            if rows:
                self.last = int(rows[-1][0])
                if self._arrived is not None:
                    self._arrived()
            if len(rows) < FEED_PAGE:
                return


_COLUMNS = "id, type, emitted_at, run_id, workflow, data"


def _event(row: Sequence[Any]) -> Event:
    id, type, emitted_at, run_id, workflow, data = row
    try:
        decoded = json.loads(data)
    except ValueError:
        decoded = {}
    return Event(int(id), type, emitted_at, run_id, workflow, decoded)


# --------------------------------------------------------------------------- wiring


class SharedEvents:
    """What ``share_events`` started; ``close(timeout)`` stops it in order."""

    def __init__(
        self,
        sink: EventSink,
        feed: EventFeed | None,
        deliveries: OutboxDelivery | None,
        unsubscribe: Callable[[], None],
    ) -> None:
        self.sink = sink
        self.feed = feed
        self.deliveries = deliveries
        self._unsubscribe: Callable[[], None] | None = unsubscribe

    def counts(self) -> tuple[int, int]:
        """Webhook deliveries made and dropped by this process (for the metrics)."""
        return self.deliveries.counts() if self.deliveries is not None else (0, 0)

    def close(self, timeout: float) -> bool:
        """Stop taking events, write what is queued, wait for this process's deliveries
        (its own rows, for ``aegis run``), then stop reading; all within ``timeout``
        seconds. True when nothing was left undone."""
        deadline = time.monotonic() + max(timeout, 0)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        done = self.sink.close(timeout)
        if self.deliveries is not None:
            done = self.deliveries.close(max(deadline - time.monotonic(), 0)) and done
        if self.feed is not None:
            self.feed.close(max(deadline - time.monotonic(), 0))
        return done


def share_events(
    config: Config,
    bus: EventBus,
    *,
    environ: Any,
    warn: Callable[[str], None],
    log: EventLog | None = None,
    deliver: Literal["all", "own"] | None = "all",
    origin: str | None = None,
) -> SharedEvents:
    """Share ``bus``'s events through the PostgreSQL database ``history.url`` names.

    Every event goes to the table (and, for the config's webhooks, to the outbox);
    ``log``, when given, is fed from the table instead of from the bus. ``deliver``
    says which outbox rows this process delivers: ``"all"`` (``aegis serve``: any
    replica delivers any row), ``"own"`` (``aegis run``: only the rows of its own events,
    waited for at ``close``, so a run's webhooks go out even when no server runs) or
    ``None``. Nothing here waits on the server: an unreachable one is one ``warn``.
    """
    from aegis.webhook_outbox import OutboxDelivery

    url = config.history.url
    assert url is not None, "share_events needs history.url"
    target = PgTarget.parse(url, password_env=config.history.password_env, environ=environ)
    origin = origin or new_origin()
    outage = Outage(target, warn)
    deliveries = None
    if deliver is not None:
        deliveries = OutboxDelivery(
            target, worker=origin, origin=origin if deliver == "own" else None, outage=outage
        ).start()
    sink = EventSink(
        target,
        origin=origin,
        outage=outage,
        hooks=config.webhooks,
        written=deliveries.wake if deliveries is not None else None,
        max_age=config.history.max_age,
        keep=max(KEEP_EVENTS, config.event_log_size),
    ).start()
    feed = None
    if log is not None:
        arrived = deliveries.wake if deliveries is not None else None  # other processes' rows
        feed = EventFeed(
            target, log, outage=outage, size=config.event_log_size, arrived=arrived
        ).start()
    return SharedEvents(sink, feed, deliveries, bus.subscribe(sink))
