"""``report``: summarise the run so far, from the run's aggregates, without any HTTP."""

from __future__ import annotations

from typing import Any

from aegis.records import StepResult, test_counts
from aegis.steps.base import StepContext, StepType

__all__ = ["STEP", "step_line"]


async def execute(ctx: StepContext) -> dict[str, Any]:
    """Counts per step status, total duration, the last test counts and one line per step.

    Reads only ``ctx.state``'s running aggregates and its bounded ``recent`` window, so
    the cost does not grow with the number of earlier steps. Keys are chosen so that the
    report's own data is never mistaken for test results (no top-level ``failed``).
    """
    state = ctx.state
    lines = [step_line(result) for result in state.recent]
    return {
        "step_count": state.step_count,
        "status_counts": dict(state.status_counts),
        "duration_ms": round(state.total_duration_ms, 1),
        "tests": _tests(state.last_counts),
        "open_failure_count": state.tests.open_count,
        "steps": lines,
        "steps_omitted": state.step_count - len(lines),
    }


def _tests(counts: tuple[int, int] | None) -> dict[str, int] | None:
    if counts is None:
        return None
    total, failed = counts
    return {"total": total, "passed": max(total - failed, 0), "failed": failed}


def step_line(result: StepResult) -> str:
    """One line about a finished step, e.g. ``test: succeeded in 812 ms, 8/10 passed``."""
    line = f"{result.name}: {result.status.value}"
    if result.skipped:
        return f"{line} ({result.skip_reason})" if result.skip_reason else line
    line += f" in {result.duration_ms:.0f} ms"
    if result.error:
        return f"{line}: {result.error}"
    return line + "".join(_highlights(result.data))


def _highlights(data: dict[str, Any]) -> list[str]:
    """What a built-in step's data says in a few words (other steps' data adds nothing)."""
    parts = []
    counts = test_counts(data)
    if counts is not None:
        total, failed = counts
        parts.append(f", {total - failed}/{total} passed")
    for key, noun in (("route_count", "routes"), ("submitted", "bug reports filed")):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            parts.append(f", {value} {noun}")
    return parts


STEP = StepType(
    name="report",
    execute=execute,
    needs_service=False,
    params=frozenset(),
    description="Summarise the run so far: step statuses, durations and test counts.",
)
