"""Time and chance, injectable so tests of backoff and deadlines need no real waiting."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime, timezone

from aegis.records import current_timestamp, format_timestamp

__all__ = ["Clock", "SystemClock"]


class Clock:
    """What the engine asks of time: a monotonic reading, the wall time, sleep, jitter."""

    def monotonic(self) -> float:
        raise NotImplementedError

    def now(self) -> datetime:
        raise NotImplementedError

    def timestamp(self) -> str:
        """``now()`` as a record's timestamp text."""
        return format_timestamp(self.now())

    async def sleep(self, seconds: float) -> None:
        raise NotImplementedError

    def random(self) -> float:
        """A number in [0, 1) for retry jitter."""
        raise NotImplementedError


class SystemClock(Clock):
    """The real clock."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    # the builtin itself: the engine reads it four times per step
    monotonic = staticmethod(time.monotonic)

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def timestamp(self) -> str:
        return current_timestamp()  # every attempt asks: the same text within a millisecond

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def random(self) -> float:
        return self._rng.random()
