"""Events across processes through a real PostgreSQL server: every replica's log holds
every process's events under the same ids, ``after=`` pages across replicas, a restart
loads the newest, two API servers show each other's events over real HTTP (list and
SSE), and a server that stops for a while costs one warning and no event.

Nothing sleeps to synchronise: each test polls a condition with a generous deadline.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import pytest
from fakes import config as fake_config
from fakes import step, step_type
from postgres_server import PASSWORD, PostgresServer

from aegis.api.app import ApiApp
from aegis.config.model import Config, HistorySpec, WebhookSpec
from aegis.events import Event, EventBus, EventLog
from aegis.history.memory import MemoryHistory
from aegis.history.pg_connect import PgTarget, connect
from aegis.history.pg_events import EventSink, Outage, SharedEvents, share_events
from aegis.history.pg_schema import SEARCH_PATH, migrate
from aegis.steps.base import StepContext

WAIT = 20.0  # ceiling for waiting on a condition; never reached when things work


def until(check: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def pg_config(url: str, **changes: Any) -> Config:
    return dataclasses.replace(fake_config(), history=HistorySpec(url=url), **changes)


def sql(url: str, statement: str, **params: Any) -> list[list[Any]]:
    connection, _ = connect(PgTarget.parse(url))
    try:
        migrate(connection)  # the processes may not have made the tables yet
        connection.run(SEARCH_PATH)
        return connection.run(statement, **params)  # type: ignore[no-any-return]
    finally:
        connection.close()


class Process:
    """One process's events: its bus and, for a replica, its log fed from the database."""

    def __init__(self, url: str, *, log_size: int = 100, replica: bool = True) -> None:
        self.bus = EventBus()
        self.warnings: list[str] = []
        self.log = EventLog(log_size) if replica else None
        self.shared: SharedEvents = share_events(
            pg_config(url, event_log_size=log_size),
            self.bus,
            environ={},
            warn=self.warnings.append,
            log=self.log,
            deliver=None,
        )

    def events(self) -> list[Event]:
        assert self.log is not None
        return self.log.list(limit=1000)

    def close(self) -> None:
        assert self.shared.close(WAIT)


@pytest.fixture
def processes(pg_url: str) -> Iterator[Callable[..., Process]]:
    made: list[Process] = []

    def make(**options: Any) -> Process:
        made.append(Process(pg_url, **options))
        return made[-1]

    yield make
    for process in made:
        process.shared.close(1.0)


def summary(events: list[Event]) -> list[tuple[int, str, str, dict[str, Any]]]:
    return [(e.id, e.type, e.run_id, e.data) for e in events]


def test_every_replica_holds_every_process_events_under_the_same_ids(
    processes: Callable[..., Process],
) -> None:
    a, b, cli = processes(), processes(), processes(replica=False)
    for n in range(4):
        for name, process in (("a", a), ("b", b), ("cli", cli)):
            process.bus.emit("step.started", f"run-{name}", "wf", n=n)
    until(lambda: len(a.events()) == 12 and len(b.events()) == 12, "12 events in both logs")
    assert summary(a.events()) == summary(b.events())
    ids = [e.id for e in a.events()]
    assert ids == sorted(ids) and len(set(ids)) == 12
    for run in ("run-a", "run-b", "run-cli"):  # each process's own order is kept
        assert [e.data["n"] for e in a.events() if e.run_id == run] == [0, 1, 2, 3]
    # a client pages behind a load balancer: one page from a, the next from b
    first = a.log.list(limit=5, after=0) if a.log else []
    second = b.log.list(limit=5, after=first[-1].id) if b.log else []
    third = a.log.list(limit=5, after=second[-1].id) if a.log else []
    assert [e.id for e in first + second + third] == ids
    assert a.warnings == b.warnings == cli.warnings == []


def test_a_restarted_replica_starts_with_the_newest_events(
    processes: Callable[..., Process],
) -> None:
    cli = processes(replica=False)
    for n in range(8):
        cli.bus.emit("step.completed", "run-1", "wf", n=n)
    cli.close()
    replica = processes(log_size=5)
    until(lambda: len(replica.events()) == 5, "the newest 5 loaded")
    assert [e.data["n"] for e in replica.events()] == [3, 4, 5, 6, 7]
    replica.bus.emit("workflow.completed", "run-2", "wf")
    until(lambda: replica.events()[-1].run_id == "run-2", "its own event comes back")
    assert [e.data.get("n") for e in replica.events()] == [4, 5, 6, 7, None]


def test_a_batch_written_twice_is_stored_once(pg_url: str) -> None:
    target = PgTarget.parse(pg_url)
    events = [EventBus().emit("step.started", "run-1", "wf", n=n) for n in range(3)]
    for _ in range(2):  # the same origin sending the same events again: a lost commit
        sink = EventSink(target, origin="host:1:abc", outage=Outage(target, print)).start()
        for event in events:
            sink(event)
        assert sink.close(WAIT)
    assert sql(pg_url, "SELECT count(*) FROM events") == [[1]]


def test_retention_keeps_the_newest_ids_and_drops_old_events(pg_url: str) -> None:
    target = PgTarget.parse(pg_url)
    long_ago = datetime.now(timezone.utc) - timedelta(days=2)
    old = EventBus(now=lambda: long_ago)
    sink = EventSink(
        target, origin="o", outage=Outage(target, print), max_age=3600, keep=4,
        retention_every=0.05,
    ).start()  # fmt: skip
    try:
        for n in range(3):
            sink(old.emit("step.started", "old", "wf", n=n))
        new = EventBus()
        for n in range(6):
            sink(dataclasses.replace(new.emit("step.started", "new", "wf", n=n), id=100 + n))
        until(
            lambda: (
                sql(pg_url, "SELECT run_id, count(*) FROM events GROUP BY run_id") == [["new", 4]]
            ),
            "the old events and all but the newest 4 ids gone",
        )
    finally:
        sink.close(WAIT)


# ------------------------------------------------------------------ two API servers


async def ok(ctx: StepContext) -> dict[str, Any]:
    return {"ok": True}


def api_app(url: str) -> ApiApp:
    cfg = pg_config(url, workflows=fake_config(step("ok")).workflows)
    return ApiApp(
        cfg,
        environ={},
        port=0,
        history=MemoryHistory(),
        step_types={"ok": step_type("ok", ok)},
        heartbeat=0.2,
    ).start()


def request(app: ApiApp, method: str, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(app.url).port, timeout=WAIT)
    try:
        conn.request(method, path)
        reply = conn.getresponse()
        assert reply.status in (200, 201, 202), reply.status
        return json.loads(reply.read())
    finally:
        conn.close()


def sse_until(app: ApiApp, after: int, check: Callable[[dict[str, Any]], bool]) -> list[int]:
    """The ids the SSE stream sends from ``after`` until an event passes ``check``."""
    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(app.url).port, timeout=WAIT)
    try:
        conn.request("GET", f"/api/events/stream?after={after}")
        reply = conn.getresponse()
        ids: list[int] = []
        while True:
            line = reply.readline()
            assert line, "the stream ended"
            if line.startswith(b"id: "):
                ids.append(int(line[4:]))
            if line.startswith(b"data: ") and check(json.loads(line[6:])):
                return ids
    finally:
        conn.close()


def test_two_api_servers_show_each_others_events(pg_url: str) -> None:
    one, two = api_app(pg_url), api_app(pg_url)
    try:
        run = request(one, "POST", "/api/workflows/wf/run?wait=20")
        run_id = run["run_id"]

        def done_on(app: ApiApp) -> list[dict[str, Any]]:
            events = request(app, "GET", "/api/events?limit=100")["events"]
            return [e for e in events if e["run_id"] == run_id]

        until(lambda: [e["type"] for e in done_on(two)][-1:] == ["workflow.completed"],
              "the run's last event on the other server")  # fmt: skip
        assert done_on(two) == done_on(one)
        assert [e["type"] for e in done_on(two)] == [
            "workflow.started", "step.started", "step.completed", "workflow.completed",
        ]  # fmt: skip
        first = done_on(two)[0]["id"]
        ids = sse_until(two, first - 1, lambda e: e["type"] == "workflow.completed")
        assert ids == [e["id"] for e in done_on(one)]
    finally:
        one.stop()
        two.stop()


# ------------------------------------------------------------------ an outage


def test_a_server_that_stops_costs_one_warning_and_no_event(
    postgres: PostgresServer, processes: Callable[..., Process]
) -> None:
    replica = processes()
    replica.bus.emit("workflow.started", "run-1", "wf")
    until(lambda: len(replica.events()) == 1, "the first event")
    # The test server commits asynchronously and pause() is a crash: without a
    # checkpoint its last commits (and sequence values) could be lost, as they could
    # not be on a server with synchronous_commit on.
    postgres.sql("CHECKPOINT")
    postgres.pause()
    try:
        began = time.monotonic()
        for n in range(5):
            replica.bus.emit("step.started", "run-1", "wf", n=n)
        assert time.monotonic() - began < 0.5  # the bus never waits on the database
        until(lambda: replica.warnings, "the warning")
    finally:
        postgres.resume()
    until(lambda: len(replica.events()) == 6, "the events emitted while it was down")
    assert [e.data.get("n") for e in replica.events()] == [None, 0, 1, 2, 3, 4]
    assert len(replica.warnings) == 1
    assert "does not answer" in replica.warnings[0]
    assert PASSWORD not in replica.warnings[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_while_unreachable_events_wait_within_a_bound_and_losses_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = PgTarget.parse(f"postgresql://aegis:{PASSWORD}@127.0.0.1:{closed_port()}/none")
    warnings: list[str] = []
    outage = Outage(target, warnings.append)
    sink = EventSink(target, origin="o", outage=outage, max_queued=3).start()
    bus = EventBus()
    bus.subscribe(sink)
    caplog.set_level(logging.WARNING, "aegis")
    for n in range(5):
        bus.emit("step.started", "run-1", "wf", n=n)
    until(lambda: outage.down, "the outage noticed")
    assert sink.pending == 3
    assert not sink.close(0.2)
    sink(bus.emit("step.started", "run-1", "wf"))  # after close: not taken
    assert sink.pending == 0
    assert len(warnings) == 1 and PASSWORD not in warnings[0]
    assert "Connection refused" in warnings[0] or "refused" in warnings[0].lower()
    assert caplog.messages == [
        "3 events not written to PostgreSQL: not done within 0.2 s",
        "2 events were not written to PostgreSQL: 3 were waiting already",
    ]


def test_aegis_run_without_a_server_leaves_its_deliveries_to_the_outbox(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"postgresql://aegis:{PASSWORD}@127.0.0.1:{closed_port()}/none"
    warnings: list[str] = []
    cfg = pg_config(url, webhooks=(WebhookSpec("http://127.0.0.1:9/hook"),))
    shared = share_events(cfg, EventBus(), environ={}, warn=warnings.append, deliver="own")
    caplog.set_level(logging.WARNING, "aegis")
    began = time.monotonic()
    assert not shared.close(0.3)
    assert time.monotonic() - began < WAIT / 2
    assert shared.counts() == (0, 0)
    assert "stay in the outbox" in caplog.text
    assert len(warnings) == 1 and PASSWORD not in caplog.text + warnings[0]
