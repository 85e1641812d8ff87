"""The event bus and the event log."""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime, timezone

import pytest

from aegis.events import Event, EventBus, EventLog


def test_bus_numbers_events_and_survives_a_broken_listener() -> None:
    bus = EventBus()
    seen: list[int] = []
    bus.subscribe(lambda e: 1 / 0)
    unsubscribe = bus.subscribe(lambda e: seen.append(e.id))
    first = bus.emit("step.started", "r", "w", step="s")
    unsubscribe()
    bus.emit("step.completed", "r", "w")
    assert seen == [first.id] and first.to_dict()["data"] == {"step": "s"}
    assert first.timestamp.endswith("Z")


def test_emit_builds_the_same_frozen_event_as_its_constructor() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    event = EventBus(now=lambda: moment).emit("step.started", "r", "w", step="s")

    expected = Event(1, "step.started", "2026-01-02T03:04:05.678Z", "r", "w", {"step": "s"})
    assert event == expected
    assert vars(event).keys() == {f.name for f in dataclasses.fields(Event)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.type = "other"  # type: ignore[misc]


def test_log_keeps_the_latest_and_filters() -> None:
    bus, log = EventBus(), EventLog(size=3)
    bus.subscribe(log.append)
    for kind in ("step.started", "step.completed", "step.started", "step.completed"):
        bus.emit(kind, "r", "w")
    assert [e.id for e in log.list()] == [2, 3, 4]
    assert [e.id for e in log.list(type="step.started")] == [3]
    assert [e.id for e in log.list(after=3)] == [4]
    assert [e.id for e in log.list(limit=1)] == [4]
    assert log.list(limit=0) == []


def test_after_pages_forward_and_limit_alone_gives_the_newest() -> None:
    bus, log = EventBus(), EventLog(size=100)
    bus.subscribe(log.append)
    for _ in range(60):
        bus.emit("step.started", "r", "w")
    assert [e.id for e in log.list(after=50, limit=3)] == [51, 52, 53]
    assert [e.id for e in log.list(limit=3)] == [58, 59, 60]
    seen: list[int] = []
    after = 0
    while page := log.list(after=after, limit=7):
        seen += [e.id for e in page]
        after = page[-1].id
    assert seen == list(range(1, 61))


def test_wait_after_wakes_when_a_newer_event_arrives() -> None:
    bus, log = EventBus(), EventLog()
    bus.subscribe(log.append)
    assert log.wait_after(0, timeout=0.01) == []
    started = threading.Event()

    def emit_later() -> None:
        started.wait()
        bus.emit("workflow.started", "r", "w")

    thread = threading.Thread(target=emit_later)
    thread.start()
    started.set()
    events = log.wait_after(0, timeout=30)
    thread.join()
    assert [e.type for e in events] == ["workflow.started"]


def test_log_drops_events_older_than_max_age() -> None:
    moments = iter(datetime(2026, 1, 1, 0, 0, s, tzinfo=timezone.utc) for s in (0, 5, 20, 59))
    bus = EventBus(now=lambda: next(moments))
    clock = [datetime(2026, 1, 1, 0, 0, 10, tzinfo=timezone.utc).timestamp()]
    log = EventLog(size=10, max_age=10.0, clock=lambda: clock[0])
    bus.subscribe(log.append)
    bus.emit("step.started", "r", "w")  # 00:00:00, as old as allowed at 00:00:10
    bus.emit("step.started", "r", "w")  # 00:00:05
    assert [e.id for e in log.list()] == [1, 2]
    clock[0] += 10  # 00:00:20
    bus.emit("step.started", "r", "w")
    assert [e.id for e in log.list()] == [3]
    clock[0] += 3600  # the newest stays, however old
    bus.emit("step.started", "r", "w")
    assert [e.id for e in log.list()] == [4]
