"""Run and step rows as both SQL stores keep them: the columns read, in order, and the
records made from them (``SqliteHistory`` checks a row's types first, as a file may have
been edited by hand; PostgreSQL's typed columns need no check)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from aegis.records import Attempt, Run, RunStatus, StepResult, StepStatus, Verdict

__all__ = ["FULL_STEP", "RUN_COLUMNS", "SUMMARY_COLUMNS", "full_step", "run_record", "summary_step"]

RUN_COLUMNS = (
    "seq, run_id, workflow, status, verdict, started_at, finished_at, duration_ms, trigger,"
    " params, rerun_of"
)
SUMMARY_COLUMNS = "name, type, service, status, duration_ms, error, error_kind, skip_reason, reused"
FULL_STEP = f"{SUMMARY_COLUMNS}, data, attempts"


def summary_step(row: Sequence[Any]) -> StepResult:
    name, type_, service, status, duration_ms, error, error_kind, skip_reason, reused = row[:9]
    return StepResult(
        name=name,
        type=type_,
        service=service,
        status=StepStatus(status),
        duration_ms=float(duration_ms),
        error=error,
        error_kind=error_kind,
        skip_reason=skip_reason,
        reused=bool(reused),
    )


def full_step(row: Sequence[Any]) -> StepResult:
    return replace(
        summary_step(row),
        data=json.loads(row[9]),
        attempts=tuple(Attempt.from_dict(a) for a in json.loads(row[10])),
    )


def run_record(row: Sequence[Any], steps: Iterable[StepResult]) -> Run:
    _, run_id, workflow, status, verdict, started_at, finished_at, duration_ms, trigger = row[:9]
    params = json.loads(row[9])
    return Run(
        run_id=run_id,
        workflow=workflow,
        status=RunStatus(status),
        started_at=started_at,
        trigger=trigger,
        steps=tuple(steps),
        verdict=Verdict(verdict) if verdict else None,
        finished_at=finished_at,
        duration_ms=None if duration_ms is None else float(duration_ms),
        params=params if isinstance(params, dict) else {},
        rerun_of=row[10],
    )
