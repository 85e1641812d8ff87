"""Events: what the engine announces while a run goes on.

The engine emits ``workflow.started``, ``step.started``, ``step.retrying``,
``step.completed``, ``failure.detected`` and ``workflow.completed`` on an ``EventBus``.
Listeners (the CLI's progress lines, later the event log, webhooks and SSE) subscribe to
it. A listener that raises is logged and otherwise ignored: it never disturbs a run.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aegis.records import age_cutoff, current_timestamp, format_timestamp, make_record

__all__ = ["EVENT_TYPES", "Event", "EventBus", "EventLog", "Listener"]

EVENT_TYPES = (
    "workflow.started",
    "step.started",
    "step.retrying",
    "step.completed",
    "failure.detected",
    "workflow.completed",
    "run.skipped",
)

log = logging.getLogger("aegis.events")


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    timestamp: str
    run_id: str
    workflow: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "timestamp": self.timestamp,
            "run_id": self.run_id,
            "workflow": self.workflow,
            "data": self.data,
        }


Listener = Callable[[Event], None]
EventList = list[Event]  # named: EventLog.list shadows `list` inside the class


class EventBus:
    """Numbers events in order and hands each to every listener, synchronously."""

    def __init__(self, now: Callable[[], datetime] | None = None) -> None:
        self._ids = itertools.count(1)
        self._listeners: list[Listener] = []
        self._now = now

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add ``listener``; returns a function that removes it again."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def emit(self, type: str, run_id: str, workflow: str, /, **data: Any) -> Event:
        event = make_record(  # two events per step: see make_record
            Event,
            id=next(self._ids),
            type=type,
            timestamp=current_timestamp() if self._now is None else format_timestamp(self._now()),
            run_id=run_id,
            workflow=workflow,
            data=data,
        )
        if not self._listeners:
            return event
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener %r failed on %s", listener, type)
        return event


class EventLog:
    """The most recent events, in a ring of ``size`` (and none older than ``max_age``
    seconds, when given); safe to read from other threads.

    Subscribe it to a bus (``bus.subscribe(log.append)``). Readers page with ``after``
    (an event id) and may block in ``wait_after`` until something newer arrives.
    """

    def __init__(
        self, size: int = 100, *, max_age: float = 0.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._events: deque[Event] = deque(maxlen=max(size, 1))
        self._changed = threading.Condition()
        self._max_age = max_age  # seconds; older events are dropped as new ones come
        self._clock = clock

    def append(self, event: Event) -> None:
        with self._changed:
            self._events.append(event)
            if self._max_age > 0:
                cutoff = age_cutoff(self._clock(), self._max_age)
                while len(self._events) > 1 and self._events[0].timestamp < cutoff:
                    self._events.popleft()
            self._changed.notify_all()

    def list(
        self, *, limit: int = 100, type: str | None = None, after: int | None = None
    ) -> EventList:
        """Up to ``limit`` events of ``type``, oldest first.

        With ``after`` (an event id) they are the first ``limit`` newer than it, so a client
        pages forward without a gap; without it, the newest ``limit``.
        """
        with self._changed:
            events = [
                e
                for e in self._events
                if (after is None or e.id > after) and (type is None or e.type == type)
            ]
        if limit <= 0:
            return []
        return events[:limit] if after is not None else events[-limit:]

    def wait_after(self, after: int, timeout: float) -> EventList:
        """Events newer than ``after``, waiting up to ``timeout`` seconds for the first."""
        with self._changed:
            self._changed.wait_for(
                lambda: bool(self._events) and self._events[-1].id > after, timeout
            )
            return [e for e in self._events if e.id > after]
