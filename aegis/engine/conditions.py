"""Step conditions: whether a step runs, judged over the results of earlier batches."""

from __future__ import annotations

from collections.abc import Callable

from aegis.engine.state import RunState

__all__ = ["CONDITIONS", "skip_reason"]

# condition name -> (test over earlier results, why the step is skipped when it is false)
CONDITIONS: dict[str, tuple[Callable[[RunState], bool], str]] = {
    "always": (lambda state: True, ""),
    "on_success": (
        lambda state: not state.any_failed,
        "condition on_success: an earlier step failed",
    ),
    "on_failure": (lambda state: state.any_failed, "condition on_failure: no earlier step failed"),
    "has_failures": (
        lambda state: state.has_test_failures,
        "condition has_failures: no earlier step reported failing tests",
    ),
}


def skip_reason(condition: str | None, state: RunState) -> str | None:
    """Why a step with ``condition`` is skipped now, or ``None`` if it runs.

    Raises ``KeyError`` for an unknown condition (the config validator rejects those).
    """
    if condition is None:
        return None
    holds, reason = CONDITIONS[condition]
    return None if holds(state) else reason
