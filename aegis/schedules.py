"""Schedules: when each workflow's ticks fall, and the ``Scheduler`` that fires them.

``workflows.KEY.schedule`` holds ``ScheduleSpec``s: a cron expression in a time zone, or a
fixed interval. The ticks of a cron schedule come from cronsim, which evaluates
expressions as Debian's cron does, DST transitions included (a time skipped by the spring
change fires at the first minute after it; a time repeated in autumn fires once); the
ticks of ``every: 15m`` are the multiples of the interval since the Unix epoch, so they
fall alike in every process and after every restart. Time zones come from ``zoneinfo``,
which falls back to the bundled ``tzdata`` package where the system has no zone files.

``Scheduler`` runs on the API's loop (``aegis serve``) and fires each tick through the
same path as the API, ``RunManager.submit`` with ``trigger="schedule"`` and the
schedule's ``overlap`` rule. With SQLite only one server per history file fires:
``ScheduleLock`` is an ``flock`` on a file beside the history file, tried again at each
tick, so another server takes over when the one holding it stops. Each tick is also
claimed in the history store before it fires (``claim_fire``: granted once per tick
across the processes sharing the store), which keeps the last tick fired of each
schedule for ``catch_up: last`` and is what a shared database store builds on to fire
each tick once across replicas.

cronsim and zoneinfo are imported only when a schedule is evaluated: loading a config
without schedules, and ``aegis --version``, never pay for them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import IO, Any, Protocol

from aegis.config.model import ScheduleSpec, WorkflowSpec
from aegis.engine.clock import Clock
from aegis.errors import Conflict

__all__ = [
    "MAX_SLEEP",
    "ScheduleLock",
    "Scheduler",
    "cron_problem",
    "next_fires",
    "previous_fire",
    "timezone_problem",
]

log = logging.getLogger(__name__)

# The longest the scheduler sleeps at once: a wall clock that jumps (a suspended laptop,
# a corrected clock) is noticed within this many seconds.
MAX_SLEEP = 30.0


def cron_problem(expression: str) -> str | None:
    """What is wrong with a cron expression, in cronsim's words; ``None`` if it is valid."""
    from cronsim import CronSim, CronSimError

    try:
        CronSim(expression, datetime.now(timezone.utc))
    except CronSimError as exc:
        return f"invalid cron expression {expression!r}: {exc}"
    return None


def timezone_problem(name: str) -> str | None:
    """Why ``name`` is not an IANA time zone; ``None`` if it is one."""
    try:
        _zone(name)
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        return f"unknown time zone {name!r} (expected an IANA name like Europe/Berlin)"
    return None


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def next_fires(spec: ScheduleSpec, after: datetime, count: int = 1) -> list[datetime]:
    """The next ``count`` ticks of ``spec`` strictly after ``after`` (aware), in UTC."""
    if spec.every is not None:
        every = spec.every
        first = (math.floor(after.timestamp() / every) + 1) * every
        return [_utc(first + i * every) for i in range(count)]
    from cronsim import CronSim

    ticks = CronSim(spec.cron or "", after.astimezone(_zone(spec.timezone)))
    return [next(ticks).astimezone(timezone.utc) for _ in range(count)]


def previous_fire(spec: ScheduleSpec, now: datetime) -> datetime:
    """The latest tick of ``spec`` at or before ``now`` (aware), in UTC."""
    if spec.every is not None:
        return _utc(math.floor(now.timestamp() / spec.every) * spec.every)
    from cronsim import CronSim

    # cronsim's reverse iteration starts below its start, at whole minutes: start a minute
    # later so that a tick at `now` counts, and pass over one after it
    start = (now + timedelta(minutes=1)).astimezone(_zone(spec.timezone))
    for tick in CronSim(spec.cron or "", start, reverse=True):
        if tick <= now:
            return tick.astimezone(timezone.utc)
    raise AssertionError("unreachable: cronsim iterates without end")  # pragma: no cover


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


class FireLog(Protocol):
    """Where the last tick fired of each schedule is kept (the history store)."""

    def last_fire(self, workflow: str, schedule: str) -> float | None: ...

    def claim_fire(self, workflow: str, schedule: str, at: float) -> bool: ...


# Fires one tick: (workflow, schedule) -> the submission; refusals are its business.
Fire = Callable[[str, ScheduleSpec], Awaitable[object]]


@dataclass
class _Entry:
    workflow: str
    spec: ScheduleSpec
    next_at: datetime | None = None


class ScheduleLock:
    """An exclusive ``flock`` on ``path``, taken without waiting and then held until
    ``release``. ``held()`` tries again each time until it has it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def held(self) -> bool:
        if self._file is not None:
            return True
        import fcntl

        try:
            stream = open(self.path, "ab")  # noqa: SIM115 - held open as the lock
        except OSError as exc:
            log.warning("schedules: cannot open the lock file %s (%s)", self.path, exc)
            return False
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            stream.close()
            return False
        self._file = stream
        return True

    def release(self) -> None:
        stream, self._file = self._file, None
        if stream is not None:
            stream.close()  # closing releases the flock


class Scheduler:
    """Fires the ticks of ``workflows``' schedules through ``fire``, by ``clock``.

    ``fires`` keeps the last tick fired of each schedule; ``may_fire`` (the lock) is asked
    before each round of ticks, and while it says no, ticks pass unfired. ``run`` loops
    until cancelled; ``fire_due`` is one round (tests drive it with a fake clock).
    """

    def __init__(
        self,
        workflows: Iterable[WorkflowSpec],
        fire: Fire,
        *,
        clock: Clock,
        fires: FireLog,
        may_fire: Callable[[], bool] = lambda: True,
    ) -> None:
        self._entries = [_Entry(w.key, s) for w in workflows for s in w.schedules]
        self._fire = fire
        self._clock = clock
        self._fires = fires
        self._may_fire = may_fire
        self._started = False

    async def run(self) -> None:
        """Fire ticks as they fall due, until cancelled."""
        while True:
            now = self._clock.now()
            wake = await self.fire_due(now)
            wait = MAX_SLEEP if wake is None else (wake - self._clock.now()).total_seconds()
            await self._clock.sleep(min(max(wait, 0.0), MAX_SLEEP))

    async def fire_due(self, now: datetime) -> datetime | None:
        """Fire every tick due at ``now``; returns when the next one falls."""
        if not self._started:
            self._started = True
            await self._catch_up(now)
        allowed: bool | None = None
        for entry in self._entries:
            if entry.next_at is None:
                entry.next_at = next_fires(entry.spec, now)[0]
                continue
            if entry.next_at > now:
                continue
            tick = entry.next_at
            # a tick long past (the clock jumped) fires once, then the schedule resumes
            entry.next_at = next_fires(entry.spec, max(now, tick))[0]
            if allowed is None:
                allowed = self._allowed()
            if allowed:
                await self._fire_tick(entry, tick)
        return min((e.next_at for e in self._entries if e.next_at is not None), default=None)

    async def _catch_up(self, now: datetime) -> None:
        """``catch_up: last``: fire once for the latest tick missed while no server ran."""
        wanted = [e for e in self._entries if e.spec.catch_up == "last"]
        if not wanted or not self._allowed():
            return
        for entry in wanted:
            last = await self._last_fire(entry)
            missed = previous_fire(entry.spec, now)
            if last is not None and missed.timestamp() > last:
                log.info("schedules: catching up %s (%s)", entry.workflow, entry.spec.key)
                await self._fire_tick(entry, missed)

    async def _fire_tick(self, entry: _Entry, tick: datetime) -> None:
        try:
            # store I/O never runs on the loop (a locked file would freeze every run)
            claimed = await asyncio.to_thread(
                self._fires.claim_fire, entry.workflow, entry.spec.key, tick.timestamp()
            )
        except Exception:  # history never stops a schedule
            log.exception("schedules: cannot record a tick of %s", entry.workflow)
            claimed = True
        if not claimed:  # another process sharing the store fired this tick
            log.info("schedules: %s at %s was fired elsewhere", entry.workflow, tick)
            return
        try:
            await self._fire(entry.workflow, entry.spec)
        except asyncio.CancelledError:
            raise
        except Conflict as exc:  # skipped by a rule: the manager has emitted run.skipped
            log.info("schedules: %s was not started (%s)", entry.workflow, exc)
        except Exception as exc:  # a full queue, a store that failed: worth a warning
            log.warning("schedules: %s was not started (%s)", entry.workflow, exc)

    async def _last_fire(self, entry: _Entry) -> float | None:
        try:
            return await asyncio.to_thread(self._fires.last_fire, entry.workflow, entry.spec.key)
        except Exception:
            log.exception("schedules: cannot read the last tick of %s", entry.workflow)
            return None

    def _allowed(self) -> bool:
        try:
            return self._may_fire()
        except Exception:
            log.exception("schedules: cannot take the schedule lock")
            return False


def lock_path(history_path: str) -> str:
    """The lock file beside a history file."""
    return os.fspath(history_path) + ".schedules.lock"
