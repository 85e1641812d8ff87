"""Runs and steps as PostgreSQL rows: what ``PostgresHistory`` writes and reads back.

The columns and their text are those of the SQLite file (``aegis.history.sqlite``), so
a run reads back equal to the record written (``aegis.history.rows`` reads both).
PostgreSQL's ``text`` holds neither NUL characters nor lone surrogates; ``text``
replaces them (a record is never lost for one).
A run's steps travel as one JSON parameter (``steps_json``) that the server unpacks with
``json_to_recordset``: a run of 500 steps is one statement, not 500.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from aegis.records import Run, StepResult

__all__ = ["run_values", "runs_json", "steps_json", "text"]


def text(value: str) -> str:
    """``value`` as PostgreSQL can store it."""
    if value.isascii() and "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _opt(value: str | None) -> str | None:
    return None if value is None else text(value)


def _json(value: Any) -> str:
    try:
        return text(json.dumps(value, separators=(",", ":"), default=str))
    except (ValueError, RecursionError) as exc:  # circular or absurdly deep data
        return json.dumps({"unstorable": f"{type(exc).__name__}: {exc}"})


def run_values(run: Run) -> dict[str, Any]:
    """The run row's parameters (the ``:name`` of each column)."""
    return {
        "run_id": text(run.run_id),
        "workflow": text(run.workflow),
        "status": run.status.value,
        "verdict": run.verdict.value if run.verdict else None,
        "started_at": text(run.started_at),
        "finished_at": _opt(run.finished_at),
        "duration_ms": None if run.duration_ms is None else float(run.duration_ms),
        "trigger": text(run.trigger),
        "params": _json(run.params),
        "rerun_of": _opt(run.rerun_of),
    }


def runs_json(runs: Iterable[Run]) -> str:
    """The rows of ``runs`` as one JSON array, in order."""
    return json.dumps([run_values(run) for run in runs], separators=(",", ":"))


def steps_json(runs: Iterable[tuple[str, Iterable[StepResult]]]) -> str:
    """The steps of several runs as one JSON array of rows, in report order; each row's
    ``run`` is its run's id (as stored)."""
    rows = [
        {
            "run": run,
            "name": text(step.name),
            "type": text(step.type),
            "service": _opt(step.service),
            "status": step.status.value,
            "duration_ms": _finite(step.duration_ms),
            "error": _opt(step.error),
            "error_kind": _opt(step.error_kind),
            "skip_reason": _opt(step.skip_reason),
            "reused": bool(step.reused),
            "data": _json(step.data),
            "attempts": _json([a.to_dict() for a in step.attempts]),
        }
        for run, steps in runs
        for step in steps
    ]
    return json.dumps(rows, separators=(",", ":"), default=str)


def _finite(value: float) -> float:
    # NaN and the infinities are not JSON, which json_to_recordset reads
    number = float(value)
    return number if math.isfinite(number) else 0.0
