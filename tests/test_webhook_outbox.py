"""The webhook outbox on a real PostgreSQL server, delivering to a real receiver on
loopback: two deliverers deliver each row once, signed; a failing receiver is retried;
a dead deliverer's claim returns after its lease; rows outlive their deliverer; and
``aegis run`` delivers its own run's webhooks through the outbox before it returns.

Nothing sleeps to synchronise: each test polls a condition with a generous deadline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fakes import config as fake_config
from fakes import step, step_type
from test_pg_events import WAIT, sql, until
from test_webhooks import SECRET, Logs, Receiver

from aegis.config.model import HistorySpec, WebhookSpec
from aegis.events import EventBus, EventLog
from aegis.history.pg_connect import PgTarget
from aegis.history.pg_events import EventSink, Outage, share_events
from aegis.runs import run_workflow
from aegis.steps.base import StepContext
from aegis.webhook_outbox import OutboxDelivery


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def logs() -> Iterator[Logs]:
    handler, logger = Logs(), logging.getLogger("aegis.webhooks")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def write_events(
    url: str, hooks: tuple[WebhookSpec, ...], count: int, origin: str = "cli:1:a"
) -> None:
    """``count`` events of one process written with their outbox rows, nothing delivered."""
    target = PgTarget.parse(url)
    sink = EventSink(target, origin=origin, outage=Outage(target, print), hooks=hooks).start()
    bus = EventBus()
    bus.subscribe(sink)
    for n in range(count):
        bus.emit("step.completed", "run-1", "wf", n=n)
    assert sink.close(WAIT)


def deliverer(url: str, worker: str, **options: Any) -> OutboxDelivery:
    target = PgTarget.parse(url)
    options.setdefault("backoff", 0.05)
    return OutboxDelivery(target, worker=worker, outage=Outage(target, print), **options).start()


def undone(url: str) -> int:
    rows = sql(
        url, "SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL AND failed IS NULL"
    )
    return int(rows[0][0])


def test_two_deliverers_deliver_each_row_once_and_signed(pg_url: str, receiver: Receiver) -> None:
    hooks = (WebhookSpec(receiver.url("/hook"), secret=SECRET),)
    write_events(pg_url, hooks, 40)
    one, two = deliverer(pg_url, "one", batch=3), deliverer(pg_url, "two", batch=3)
    try:
        until(lambda: undone(pg_url) == 0, "every row delivered")
    finally:
        assert one.close(WAIT) and two.close(WAIT)
    got = receiver.on("/hook")
    assert len(got) == 40
    assert len({r.headers["x-aegis-delivery"] for r in got}) == 40
    assert sorted(r.event["data"]["n"] for r in got) == list(range(40))
    assert all(r.signature_ok(SECRET) for r in got)
    assert all(r.headers["x-aegis-event"] == "step.completed" for r in got)
    # the body's id is the event's id in the table, as /api/events shows it
    ids = [row[0] for row in sql(pg_url, "SELECT id FROM events ORDER BY id")]
    assert sorted(r.event["id"] for r in got) == ids
    delivered = one.counts()[0] + two.counts()[0]
    assert delivered == 40 and one.counts()[1] == two.counts()[1] == 0


def test_a_failing_receiver_is_retried_and_the_row_delivered_once(
    pg_url: str, receiver: Receiver
) -> None:
    receiver.answers["/flaky"] = [503, 503]
    write_events(pg_url, (WebhookSpec(receiver.url("/flaky")),), 1)
    one = deliverer(pg_url, "one")
    try:
        until(lambda: undone(pg_url) == 0, "the row delivered")
    finally:
        one.close(WAIT)
    got = receiver.on("/flaky")
    assert len(got) == 3 and len({r.headers["x-aegis-delivery"] for r in got}) == 1
    assert "x-aegis-signature" not in got[0].headers
    assert sql(pg_url, "SELECT attempts, failed FROM webhook_outbox") == [[3, None]]
    assert one.counts() == (1, 0)


def test_a_receiver_that_keeps_failing_is_given_up_with_one_warning(
    pg_url: str, receiver: Receiver, logs: Logs
) -> None:
    receiver.answers["/down"] = [500] * 6
    receiver.answers["/gone"] = [404, 404]
    write_events(
        pg_url, (WebhookSpec(receiver.url("/down")), WebhookSpec(receiver.url("/gone"))), 2
    )
    one = deliverer(pg_url, "one")
    try:
        until(lambda: undone(pg_url) == 0, "every row given up")
    finally:
        one.close(WAIT)
    assert len(receiver.on("/down")) == 6 and len(receiver.on("/gone")) == 2  # 4xx: no retry
    failed = sql(pg_url, "SELECT hook, attempts, failed FROM webhook_outbox ORDER BY id")
    assert [(attempts, why) for _, attempts, why in failed] == [
        (3, "HTTP 500"), (1, "HTTP 404"), (3, "HTTP 500"), (1, "HTTP 404"),
    ]  # fmt: skip
    assert one.counts() == (0, 4)
    assert len(logs.warnings) == 2  # one per webhook's streak
    assert all("dropped after" in w for w in logs.warnings)


def test_a_webhook_answering_again_is_said_and_filters_are_kept(
    pg_url: str, receiver: Receiver, logs: Logs
) -> None:
    receiver.answers["/hook"] = [404]
    only_ends = WebhookSpec(receiver.url("/ends"), events=("workflow.completed",))
    write_events(pg_url, (WebhookSpec(receiver.url("/hook")), only_ends), 2)
    one = deliverer(pg_url, "one")
    try:
        until(lambda: undone(pg_url) == 0, "both rows done")
    finally:
        one.close(WAIT)
    assert receiver.on("/ends") == [] and one.counts() == (1, 1)
    assert [w.split(": ", 1)[1].split(" delivery")[0] for w in logs.warnings] == [
        "step.completed",
        "answering again",
    ]


def test_a_dead_deliverers_claim_returns_after_its_lease(pg_url: str, receiver: Receiver) -> None:
    write_events(pg_url, (WebhookSpec(receiver.url("/hook")),), 1)
    # a deliverer that claimed the row and died: its lease ends in a second
    sql(
        pg_url,
        "UPDATE webhook_outbox SET claimed_by = 'dead',"
        " claimed_until = extract(epoch FROM clock_timestamp()) + 1",
    )
    claimed = time.monotonic()
    one = deliverer(pg_url, "one", poll=0.1)
    try:
        receiver.wait_count("/hook", 1)
        assert time.monotonic() - claimed >= 0.9  # not before the lease ended
    finally:
        one.close(WAIT)
    assert len(receiver.on("/hook")) == 1


def test_rows_outlive_their_deliverer(pg_url: str, receiver: Receiver) -> None:
    receiver.answers["/hook"] = [503]
    write_events(pg_url, (WebhookSpec(receiver.url("/hook")),), 1)
    first = deliverer(pg_url, "first", backoff=3600)  # its retry would be an hour away
    try:
        receiver.wait_count("/hook", 1)
        until(lambda: sql(pg_url, "SELECT attempts FROM webhook_outbox") == [[1]], "recorded")
    finally:
        first.close(WAIT)
    sql(pg_url, "UPDATE webhook_outbox SET next_at = 0")  # the hour has passed
    write_events(pg_url, (WebhookSpec(receiver.url("/hook")),), 1, origin="cli:2:b")
    second = deliverer(pg_url, "second")  # a restarted server
    try:
        until(lambda: undone(pg_url) == 0, "both rows delivered")
    finally:
        second.close(WAIT)
    assert [r.event["id"] for r in receiver.on("/hook")] == [1, 1, 2]
    assert second.counts() == (2, 0)


def test_a_deliverer_for_one_origin_leaves_other_rows_alone(
    pg_url: str, receiver: Receiver
) -> None:
    write_events(pg_url, (WebhookSpec(receiver.url("/other")),), 2, origin="cli:9:z")
    write_events(pg_url, (WebhookSpec(receiver.url("/mine")),), 2, origin="cli:1:a")
    own = deliverer(pg_url, "cli:1:a", origin="cli:1:a")
    assert own.close(WAIT)  # waits for its own rows
    assert len(receiver.on("/mine")) == 2 and receiver.on("/other") == []
    assert undone(pg_url) == 2


# ------------------------------------------------------------------ aegis run


async def ok(ctx: StepContext) -> dict[str, Any]:
    return {"ok": True}


def test_aegis_run_delivers_its_webhooks_through_the_outbox(
    pg_url: str, receiver: Receiver
) -> None:
    cfg = dataclasses.replace(
        fake_config(step("ok"), step("ok", "ok-2")),
        history=HistorySpec(url=pg_url),
        webhooks=(WebhookSpec(receiver.url("/run"), secret=SECRET),),
    )
    warnings: list[str] = []
    run = run_workflow(
        cfg, "wf", record=False, environ={}, warn=warnings.append,
        step_types={"ok": step_type("ok", ok)},
    )  # fmt: skip
    got = receiver.on("/run")  # no waiting: run_workflow waited for its rows
    assert sorted(r.event["type"] for r in got) == sorted(
        ["workflow.started", "step.started", "step.completed", "step.started",
         "step.completed", "workflow.completed"]
    )  # fmt: skip
    assert {r.event["run_id"] for r in got} == {run.run_id}
    assert all(r.signature_ok(SECRET) for r in got)
    assert undone(pg_url) == 0 and warnings == []
    stored = sql(pg_url, "SELECT count(*) FROM events WHERE run_id = :run", run=run.run_id)
    assert stored == [[6]]
    bodies = sql(pg_url, "SELECT body FROM webhook_outbox ORDER BY event_id")
    assert [json.loads(b)["type"] for (b,) in bodies][-1] == "workflow.completed"


def test_a_server_delivers_the_rows_of_a_run_elsewhere(pg_url: str, receiver: Receiver) -> None:
    hooks = (WebhookSpec(receiver.url("/elsewhere"), events=("workflow.completed",)),)
    server_log = EventLog(10)
    server = share_events(  # aegis serve: its config names no webhook
        dataclasses.replace(fake_config(), history=HistorySpec(url=pg_url)),
        EventBus(), environ={}, warn=print, log=server_log,
    )  # fmt: skip
    cli_bus = EventBus()
    cli = share_events(  # aegis run on another host, which does not deliver
        dataclasses.replace(fake_config(), history=HistorySpec(url=pg_url), webhooks=hooks),
        cli_bus, environ={}, warn=print, deliver=None,
    )  # fmt: skip
    try:
        cli_bus.emit("workflow.started", "run-9", "wf")
        cli_bus.emit("workflow.completed", "run-9", "wf", status="passed")
        got = receiver.wait_count("/elsewhere", 1)
        assert got[0].event == server_log.list()[-1].to_dict()
        until(lambda: server.counts() == (1, 0), "counted")
    finally:
        assert cli.close(WAIT) and server.close(WAIT)
