"""Webhooks with PostgreSQL: an outbox table, delivered once by whichever process claims a row.

With several replicas (and ``aegis run`` on other hosts) sharing one database, an
in-process dispatcher per process would deliver each event once per replica, and lose
what was queued when a process stopped. Instead, the transaction that writes an event
(``aegis.history.pg_events.EventSink``) also writes one ``webhook_outbox`` row per
webhook that wants it (``enqueue``): the body as ``WebhookDispatcher`` sends it (the
event with its table id), its signature when the webhook has a secret, a delivery id
and the URL. A row carries all its delivery needs, so any process can deliver it, also
one whose config does not name that webhook, and no secret is stored.

``OutboxDelivery`` is a thread that claims due rows (``FOR UPDATE SKIP LOCKED``, so two
deliverers never claim the same row) under a lease on the server's clock, POSTs each
with ``aegis.webhooks.attempt`` (the same headers, timeout, answer handling and transport
as the dispatcher), and records the outcome: ``delivered_at``; or, after a retryable
failure, one more attempt due after the dispatcher's backoff (``backoff``, then
doubled), until ``attempts`` were made and the row is marked ``failed``. A deliverer
that dies mid-delivery leaves its claim to expire; the row is then claimed again, so a
row is delivered once unless a process died between the POST and recording it (then
the receiver may see its delivery id twice). Unlike the dispatcher, a failing receiver
holds up nothing: its retries are rows with a later ``next_at``, so there is no
"one attempt while down" rule and no per-webhook queue bound; delivery order per
receiver is not guaranteed across replicas.

Delivered and failed rows are deleted after ``KEEP_DONE`` seconds by the deliverers of
``aegis serve``. A deliverer limited to one ``origin`` (``aegis run``'s) claims only its
own process's rows, and its ``close`` waits for them, up to a timeout; what is left
then stays in the outbox for a server to deliver.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from aegis.config.model import WebhookSpec
from aegis.events import Event
from aegis.history.pg_connect import PgConnection, PgTarget, driver_errors
from aegis.history.pg_events import Link, Outage, retry_wait
from aegis.webhooks import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BACKOFF,
    DEFAULT_TIMEOUT,
    HttpxTransport,
    Transport,
    attempt,
    delivery_headers,
    encode_event,
    hook_label,
    retry_delay,
    sign,
    wants,
)

__all__ = ["CLAIM_BATCH", "KEEP_DONE", "OutboxDelivery", "enqueue"]

CLAIM_BATCH = 10  # rows claimed at once
POLL = 1.0  # seconds between looks for due rows when not woken
KEEP_DONE = 24 * 3600.0  # seconds delivered and failed rows are kept
CLEAN_EVERY = 300.0  # seconds between deletions of old rows
CLEAN_BATCH = 1000
NOW = "CAST(extract(epoch FROM clock_timestamp()) AS float8)"  # the server's clock

log = logging.getLogger("aegis.webhooks")


def enqueue(
    connection: PgConnection,
    hooks: Sequence[WebhookSpec],
    events: Sequence[Event],
    *,
    origin: str,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> int:
    """Add a row for every event and webhook that wants it (in the caller's
    transaction); how many were added comes back."""
    columns: dict[str, list[Any]] = {
        name: [] for name in ("hook", "url", "delivery", "signature", "event", "type", "run")
    }
    bodies: list[str] = []
    for event in events:
        body = encode_event(event)  # once: every webhook signs the same bytes
        for index, spec in enumerate(hooks):
            if not wants(spec, event.type):
                continue
            columns["hook"].append(hook_label(index, spec))
            columns["url"].append(spec.url)
            columns["delivery"].append(new_id())
            columns["signature"].append(sign(spec.secret, body) if spec.secret else None)
            columns["event"].append(event.id)
            columns["type"].append(event.type)
            columns["run"].append(event.run_id)
            bodies.append(body.decode("ascii"))
    if not bodies:
        return 0
    connection.run(
        "INSERT INTO webhook_outbox (origin, hook, url, delivery_id, signature, event_id,"
        " event_type, run_id, body, created_at, next_at)"
        f" SELECT :origin, *, {NOW}, {NOW} FROM unnest(CAST(:hook AS text[]),"
        " CAST(:url AS text[]), CAST(:delivery AS text[]), CAST(:signature AS text[]),"
        " CAST(:event AS bigint[]), CAST(:type AS text[]), CAST(:run AS text[]),"
        " CAST(:body AS text[]))",
        origin=origin,
        body=bodies,
        **columns,
    )
    return len(bodies)


class _Row:
    __slots__ = ("attempts", "body", "delivery", "hook", "id", "run", "signature", "type", "url")

    def __init__(self, row: Sequence[Any]) -> None:
        (self.id, self.hook, self.url, self.delivery, self.signature, self.type, self.run,
         self.body, self.attempts) = row  # fmt: skip


class OutboxDelivery:
    """Delivers due outbox rows from a thread of its own; see the module docstring.

    ``worker`` names this deliverer in its claims; ``origin``, when given, limits it to
    the rows of that process. ``lease`` (seconds a claim lasts) defaults to enough for
    a whole batch of attempts that time out. ``timeout``, ``attempts``, ``backoff`` and
    ``transport`` are the dispatcher's.
    """

    def __init__(
        self,
        target: PgTarget,
        *,
        worker: str,
        outage: Outage,
        origin: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        lease: float | None = None,
        batch: int = CLAIM_BATCH,
        poll: float = POLL,
        transport: Callable[[], Transport] = HttpxTransport,
    ) -> None:
        self.worker = worker
        self.origin = origin
        self.timeout = timeout
        self.attempts = max(attempts, 1)
        self.backoff = backoff
        self.batch = max(batch, 1)
        self.lease = timeout * self.batch + 30 if lease is None else lease
        self._poll = poll
        self._link = Link(target)
        self._outage = outage
        self._open_transport = transport
        self._transport: Transport | None = None
        self._changed = threading.Condition()
        self._woken = False
        self._closing = False
        self._left: int | None = None  # this origin's undone rows, after the last pass
        self._started = 0  # passes begun
        self._counted = 0  # the number of the pass that counted ``_left``
        self._delivered = 0
        self._failed = 0
        self._failing: set[str] = set()  # webhooks in a streak of failed rows
        self._next_clean = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> OutboxDelivery:
        self._thread = threading.Thread(target=self._run, name="aegis-outbox", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        """Look for due rows now (new rows were written)."""
        with self._changed:
            self._woken = True
            self._changed.notify_all()

    def counts(self) -> tuple[int, int]:
        """Rows this deliverer delivered, and rows it marked failed, so far."""
        with self._changed:
            return self._delivered, self._failed

    def close(self, timeout: float) -> bool:
        """Stop. A deliverer limited to an origin first waits (up to ``timeout`` seconds)
        until none of that origin's rows is left undone. Claims not finished are given
        back. True when nothing of its own was left."""
        deadline = time.monotonic() + max(timeout, 0)
        done = True
        with self._changed:
            if self.origin is not None:  # a pass begun from now on sees every row written
                after = self._started
                self._woken = True
                self._changed.notify_all()
                done = self._changed.wait_for(
                    lambda: self._counted > after and self._left == 0, max(timeout, 0)
                )
            self._closing = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(max(deadline - time.monotonic(), 0))
        if not done:
            left = "some" if self._left is None else str(self._left)
            log.warning(
                "%s webhook deliveries not done within %g s; they stay in the outbox for"
                " aegis serve to deliver",
                left,
                timeout,
            )
        # a thread still in an attempt gives its claims back when the attempt ends
        return done and (self._thread is None or not self._thread.is_alive())

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        failures = 0
        try:
            while not self._is_closing():
                try:
                    wait = self._pass()
                except driver_errors() as exc:
                    self._link.drop()
                    self._outage.failed("outbox", exc)
                    failures += 1
                    wait = retry_wait(failures)
                except Exception:  # a bug: say so, and look again later
                    log.exception("delivering webhooks from the outbox failed")
                    self._link.drop()
                    wait = self._poll
                else:
                    failures = 0
                    self._outage.ok("outbox")
                with self._changed:
                    if not self._woken:
                        self._changed.wait_for(lambda: self._woken or self._closing, wait)
                    self._woken = False
        finally:
            self._release()
            if self._transport is not None:
                self._transport.close()

    def _is_closing(self) -> bool:
        with self._changed:
            return self._closing

    def _pass(self) -> float:
        """Claim and deliver what is due; the seconds until more is due (at most POLL)."""
        with self._changed:
            self._started += 1
            number = self._started
        connection = self._link.get()
        while not self._is_closing():
            rows = self._claim(connection)
            for row in rows:
                if self._is_closing():
                    break
                self._deliver(connection, row)
            if len(rows) < self.batch:
                break
        self._clean(connection)
        left, due_in = connection.run(
            f"SELECT count(*), min(next_at) - {NOW} FROM webhook_outbox"
            " WHERE delivered_at IS NULL AND failed IS NULL"
            " AND (CAST(:origin AS text) IS NULL OR origin = :origin)",
            origin=self.origin,
        )[0]
        with self._changed:
            self._left, self._counted = int(left), number
            self._changed.notify_all()
        if due_in is None:
            return self._poll
        return min(max(float(due_in), 0.01), self._poll)

    def _claim(self, connection: PgConnection) -> list[_Row]:
        rows = connection.run(
            f"UPDATE webhook_outbox SET claimed_by = :worker, claimed_until = {NOW} + :lease"
            " WHERE id IN (SELECT id FROM webhook_outbox"
            f" WHERE delivered_at IS NULL AND failed IS NULL AND next_at <= {NOW}"
            f" AND (claimed_until IS NULL OR claimed_until < {NOW})"
            " AND (CAST(:origin AS text) IS NULL OR origin = :origin)"
            " ORDER BY next_at, id LIMIT :n FOR UPDATE SKIP LOCKED)"
            " RETURNING id, hook, url, delivery_id, signature, event_type, run_id, body,"
            " attempts",
            worker=self.worker,
            lease=float(self.lease),
            origin=self.origin,
            n=self.batch,
        )
        return sorted((_Row(r) for r in rows), key=lambda r: int(r.id))

    def _deliver(self, connection: PgConnection, row: _Row) -> None:
        if self._transport is None:
            self._transport = self._open_transport()
        headers = delivery_headers(row.type, row.delivery, row.signature)
        body = row.body.encode("ascii")
        failure, retryable = attempt(self._transport, row.url, body, headers, self.timeout)
        made = int(row.attempts) + 1
        if not failure:
            self._record(connection, row, f"delivered_at = {NOW}", made=made)
            self._succeeded(row)
        elif retryable and made < self.attempts:
            delay = retry_delay(self.backoff, made)
            self._record(connection, row, f"next_at = {NOW} + :delay", made=made, delay=delay)
            log.debug("%s: %s delivery %s: %s; retried in %g s", row.hook, row.type,
                      row.delivery, failure, delay)  # fmt: skip
        else:
            self._record(connection, row, "failed = :failure", made=made, failure=failure)
            self._dropped(row, failure, made, retryable)

    def _record(self, connection: PgConnection, row: _Row, change: str, **params: Any) -> None:
        connection.run(
            f"UPDATE webhook_outbox SET {change}, attempts = :made, claimed_by = NULL,"
            " claimed_until = NULL WHERE id = :id AND claimed_by = :worker",
            id=row.id,
            worker=self.worker,
            **params,
        )

    def _succeeded(self, row: _Row) -> None:
        with self._changed:
            self._delivered += 1
            streak = row.hook in self._failing
            self._failing.discard(row.hook)
        if streak:
            log.warning("%s: answering again", row.hook)

    def _dropped(self, row: _Row, failure: str, made: int, retryable: bool) -> None:
        with self._changed:
            self._failed += 1
            streak = row.hook in self._failing
            self._failing.add(row.hook)
        if streak:  # one line per streak; the rest at debug level
            log.debug("%s: %s delivery dropped: %s", row.hook, row.type, failure)
            return
        tries = f"{made} {'attempt' if made == 1 else 'attempts'}"
        log.warning(
            "%s: %s delivery %s (run %s) dropped after %s: %s",
            row.hook,
            row.type,
            row.delivery,
            row.run,
            tries,
            failure,
        )

    def _clean(self, connection: PgConnection) -> None:
        """Delete old delivered and failed rows (``aegis serve``'s deliverers only)."""
        if self.origin is not None or time.monotonic() < self._next_clean:
            return
        self._next_clean = time.monotonic() + CLEAN_EVERY
        connection.run(
            "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox"
            f" WHERE (delivered_at IS NOT NULL OR failed IS NOT NULL)"
            f" AND created_at < {NOW} - :keep LIMIT :n)",
            keep=KEEP_DONE,
            n=CLEAN_BATCH,
        )

    def _release(self) -> None:
        """Give back the claims not finished, so another deliverer need not wait for
        their lease."""
        try:
            connection = self._link.get()
            connection.run(
                "UPDATE webhook_outbox SET claimed_by = NULL, claimed_until = NULL"
                " WHERE claimed_by = :worker AND delivered_at IS NULL AND failed IS NULL",
                worker=self.worker,
            )
        except driver_errors():
            log.debug("giving back the outbox claims failed", exc_info=True)
        finally:
            self._link.drop()
