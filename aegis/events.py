"""Events: what the engine announces while a run goes on.

The engine emits ``workflow.started``, ``step.started``, ``step.retrying``,
``step.completed``, ``failure.detected`` and ``workflow.completed`` on an ``EventBus``.
Listeners (the CLI's progress lines, later the event log, webhooks and SSE) subscribe to
it. A listener that raises is logged and otherwise ignored: it never disturbs a run.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aegis.records import format_timestamp

__all__ = ["EVENT_TYPES", "Event", "EventBus", "Listener"]

EVENT_TYPES = (
    "workflow.started",
    "step.started",
    "step.retrying",
    "step.completed",
    "failure.detected",
    "workflow.completed",
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


class EventBus:
    """Numbers events in order and hands each to every listener, synchronously."""

    def __init__(self, now: Callable[[], datetime] | None = None) -> None:
        self._ids = itertools.count(1)
        self._listeners: list[Listener] = []
        self._now = now or (lambda: datetime.now(timezone.utc))

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add ``listener``; returns a function that removes it again."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def emit(self, type: str, run_id: str, workflow: str, /, **data: Any) -> Event:
        event = Event(next(self._ids), type, format_timestamp(self._now()), run_id, workflow, data)
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener %r failed on %s", listener, type)
        return event
