"""Records of what happened: a ``Run`` holds ``StepResult``s, each holding ``Attempt``s.

Records are frozen; the engine builds a new one with ``dataclasses.replace`` as a run
progresses. ``to_dict`` gives the run JSON of the public contract (the API, ``aegis run
--json`` and history share it) and ``from_dict`` reads it back.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, TypeVar

__all__ = [
    "Attempt",
    "Run",
    "RunStatus",
    "StepResult",
    "StepStatus",
    "Verdict",
    "age_cutoff",
    "current_timestamp",
    "format_timestamp",
    "make_record",
    "test_counts",
]


class RunStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class StepStatus(str, enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class Verdict(str, enum.Enum):
    PASSED = "passed"
    FAILED = "failed"


def format_timestamp(moment: datetime) -> str:
    """UTC ISO 8601 with milliseconds and a ``Z``: ``2026-01-01T10:00:00.000Z``."""
    global _last_second
    if moment.tzinfo is not timezone.utc:
        moment = moment.astimezone(timezone.utc)
    # The engine stamps every attempt and event: the text up to the second is kept from
    # the last call (one tuple, so threads can share it), and strftime is avoided.
    second = moment.timestamp() // 1
    cached, prefix = _last_second
    if second != cached:
        prefix = moment.isoformat()[:19]
        _last_second = (second, prefix)
    return f"{prefix}.{moment.microsecond // 1000:03d}Z"


_last_second: tuple[float, str] = (math.nan, "")
_last_milli: tuple[int, str] = (-1, "")


def current_timestamp() -> str:
    """``format_timestamp`` of the present moment. The engine asks many times per
    millisecond, so the text of the last millisecond is reused."""
    global _last_milli
    milli = time.time_ns() // 1_000_000
    cached, text = _last_milli
    if milli != cached:
        second, rest = divmod(milli, 1000)
        moment = datetime.fromtimestamp(second, timezone.utc).replace(microsecond=rest * 1000)
        text = format_timestamp(moment)
        _last_milli = (milli, text)
    return text


def age_cutoff(now: float, max_age: float) -> str:
    """The timestamp text before which a record is older than ``max_age`` seconds at
    ``now`` (unix seconds); record timestamps compare as text in time order."""
    return format_timestamp(datetime.fromtimestamp(now - max_age, timezone.utc))


_R = TypeVar("_R")
# Per record class: its plain defaults, and the fields whose default is a factory.
_DEFAULTS: dict[type, tuple[dict[str, Any], tuple[tuple[str, Callable[[], Any]], ...]]] = {}


def make_record(cls: type[_R], /, **values: Any) -> _R:
    """``cls(**values)`` for a frozen record, on the engine's hot path.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``; the
    engine makes two records per step, and that was a sixth of its cost. This fills the
    record's ``__dict__`` at once, defaults included, and gives the same record (the
    records have no ``__post_init__``). ``values`` must name fields of ``cls`` only.
    """
    found = _DEFAULTS.get(cls)
    if found is None:
        plain = {f.name: f.default for f in fields(cls) if f.default is not MISSING}  # type: ignore[arg-type]
        made = tuple(
            (f.name, f.default_factory)
            for f in fields(cls)  # type: ignore[arg-type]
            if f.default_factory is not MISSING
        )
        found = _DEFAULTS[cls] = (plain, made)
    record = object.__new__(cls)
    state = record.__dict__
    state.update(found[0])
    for name, factory in found[1]:
        if name not in values:
            state[name] = factory()
    state.update(values)
    return record


def test_counts(data: dict[str, Any]) -> tuple[int, int] | None:
    """``(total, failed)`` when step data reports test counts, else ``None``."""
    failed = data.get("failed")
    if isinstance(failed, int) and not isinstance(failed, bool):
        total = data.get("total")
        return (total if isinstance(total, int) else 0), failed
    return None


@dataclass(frozen=True)
class Attempt:
    """One try of a step."""

    attempt: int
    started_at: str
    duration_ms: float
    success: bool
    error: str | None = None
    error_kind: str | None = None
    status_code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "started_at": self.started_at,
            "duration_ms": self.duration_ms,
            "success": self.success,
            "error": self.error,
            "error_kind": self.error_kind,
            "status_code": self.status_code,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attempt:
        return cls(
            attempt=data["attempt"],
            started_at=data["started_at"],
            duration_ms=data["duration_ms"],
            success=data["success"],
            error=data.get("error"),
            error_kind=data.get("error_kind"),
            status_code=data.get("status_code"),
        )


@dataclass(frozen=True)
class StepResult:
    """The outcome of one step of a run."""

    name: str
    type: str
    service: str | None
    status: StepStatus
    duration_ms: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
    attempts: tuple[Attempt, ...] = ()
    error: str | None = None
    error_kind: str | None = None
    skip_reason: str | None = None
    reused: bool = False  # carried over from the run this one reran (`--from-failed`)

    @property
    def skipped(self) -> bool:
        return self.status is StepStatus.SKIPPED

    @property
    def failed(self) -> bool:
        return self.status in (StepStatus.FAILED, StepStatus.CANCELLED)

    def to_dict(self, *, summary: bool = False) -> dict[str, Any]:
        """The step JSON; ``summary`` leaves out ``data`` and ``attempts``."""
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "service": self.service,
            "status": self.status.value,
            "skipped": self.skipped,
            "skip_reason": self.skip_reason,
            "error": self.error,
            "error_kind": self.error_kind,
            "duration_ms": self.duration_ms,
            "reused": self.reused,
        }
        if not summary:
            out["data"] = self.data
            out["attempts"] = [a.to_dict() for a in self.attempts]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepResult:
        return cls(
            name=data["name"],
            type=data["type"],
            service=data.get("service"),
            status=StepStatus(data["status"]),
            duration_ms=data.get("duration_ms", 0.0),
            data=data.get("data") or {},
            attempts=tuple(Attempt.from_dict(a) for a in data.get("attempts") or ()),
            error=data.get("error"),
            error_kind=data.get("error_kind"),
            skip_reason=data.get("skip_reason"),
            reused=bool(data.get("reused", False)),
        )


@dataclass(frozen=True)
class Run:
    """One run of a workflow. ``verdict`` and ``finished_at`` are set when it ends."""

    run_id: str
    workflow: str
    status: RunStatus
    started_at: str
    trigger: str = "cli"
    steps: tuple[StepResult, ...] = ()
    verdict: Verdict | None = None
    finished_at: str | None = None
    duration_ms: float | None = None
    # the params it ran with, secret ones as "***" (aegis.config.params.shown_params)
    params: dict[str, Any] = field(default_factory=dict)
    rerun_of: str | None = None  # the run this one reran

    def to_dict(self, *, summary: bool = False) -> dict[str, Any]:
        """The run JSON; ``summary`` leaves out each step's ``data`` and ``attempts``."""
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "status": self.status.value,
            "verdict": self.verdict.value if self.verdict else None,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_ms": self.duration_ms,
            "trigger": self.trigger,
            "params": self.params,
            "rerun_of": self.rerun_of,
            "steps": [s.to_dict(summary=summary) for s in self.steps],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Run:
        verdict = data.get("verdict")
        return cls(
            run_id=data["run_id"],
            workflow=data["workflow"],
            status=RunStatus(data["status"]),
            started_at=data["started_at"],
            trigger=data.get("trigger", "cli"),
            steps=tuple(StepResult.from_dict(s) for s in data.get("steps") or ()),
            verdict=Verdict(verdict) if verdict else None,
            finished_at=data.get("finished_at"),
            duration_ms=data.get("duration_ms"),
            params=dict(data.get("params") or {}),
            rerun_of=data.get("rerun_of"),
        )
