"""Test doubles for what the engine takes from outside: the clock and step types."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from aegis.config.model import Config, ServiceSpec, StepSpec, WorkflowSpec, frozen_mapping
from aegis.engine.clock import Clock
from aegis.steps.base import StepContext, StepType


class FakeClock(Clock):
    """Time that moves only when slept on (or advanced); records every sleep."""

    def __init__(self, randoms: list[float] | None = None) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []
        self._randoms = list(randoms or [])

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=self.t)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def random(self) -> float:
        return self._randoms.pop(0) if self._randoms else 0.5


class ManualClock(FakeClock):
    """Time that moves only when the test advances it; a sleeper wakes once its time is due."""

    def __init__(self) -> None:
        super().__init__()
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        woken = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.t + seconds, woken))
        await woken

    def advance(self, seconds: float) -> None:
        self.t += seconds
        for due, woken in list(self._sleepers):
            if due <= self.t:
                self._sleepers.remove((due, woken))
                if not woken.done():
                    woken.set_result(None)


def step_type(
    name: str,
    execute: Callable[[StepContext], Awaitable[dict[str, Any]]],
    *,
    needs_service: bool = False,
) -> StepType:
    return StepType(name=name, execute=execute, needs_service=needs_service)


def step(type: str, name: str | None = None, **fields: Any) -> StepSpec:
    params = frozen_mapping(fields.pop("params", None))
    return StepSpec(type=type, name=name or type, params=params, **fields)


def config(*steps: StepSpec, timeout: float | None = None, key: str = "wf") -> Config:
    workflow = WorkflowSpec(key=key, name=key, steps=tuple(steps), timeout=timeout)
    service = ServiceSpec(key="svc", name="Service", url="http://127.0.0.1:9")
    return Config(
        services=frozen_mapping({"svc": service}), workflows=frozen_mapping({key: workflow})
    )
