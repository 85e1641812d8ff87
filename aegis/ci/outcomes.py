"""The tests a run reported on, each with its final outcome.

A ``test`` step reports failures; a later ``verify`` step re-runs them and reports which
pass now (``verified``) and which still fail (its ``failures``). The outcome of a test is
what the last step that mentioned it said, so a test fixed during the run is not shown
as failing, and one that is still failing carries the newest message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aegis.records import Run, StepResult

__all__ = ["TestOutcome", "is_infrastructure", "test_outcomes"]

# Where the tests of a step without a service ran (a `command`, a `verify` that runs one):
# one name for them all, so a `verify` re-running a `command` step's tests is matched.
LOCAL = "local"
# Error kinds that mean the step could not do its job, rather than the job going badly.
INFRASTRUCTURE_KINDS = frozenset({"timeout", "connection", "protocol", "cancelled"})


@dataclass(frozen=True)
class TestOutcome:
    """One test a step reported as failing, and where it stands at the end of the run."""

    __test__ = False  # not a pytest class, whatever its name

    test_id: str
    service: str
    failing: bool
    message: str
    step: str  # the last step that reported on it
    duration_s: float
    details: dict[str, Any]


def is_infrastructure(step: StepResult) -> bool:
    """Whether a failed step failed on infrastructure (timeout, connection, protocol)."""
    return step.status.value == "cancelled" or step.error_kind in INFRASTRUCTURE_KINDS


def test_outcomes(run: Run) -> list[TestOutcome]:
    """Every test reported failing by some step, in the order first reported."""
    outcomes: dict[tuple[str, str], TestOutcome] = {}
    for step in run.steps:
        if step.skipped or not step.data:
            continue
        service = step.service or LOCAL
        for failure in _failures(step.data):
            test_id = str(failure["test"])
            outcomes[(service, test_id)] = TestOutcome(
                test_id=test_id,
                service=service,
                failing=True,
                message=_message(failure),
                step=step.name,
                duration_s=_seconds(failure),
                details=failure,
            )
        for test_id in _ids(step.data.get("verified")):
            key = (service, test_id)
            if key in outcomes:
                earlier = outcomes[key]
                outcomes[key] = TestOutcome(
                    test_id=test_id,
                    service=service,
                    failing=False,
                    message=f"failed in an earlier step, passes when {step.name!r} re-ran it",
                    step=step.name,
                    duration_s=earlier.duration_s,
                    details=earlier.details,
                )
    return list(outcomes.values())


def _failures(data: dict[str, Any]) -> list[dict[str, Any]]:
    failures = data.get("failures")
    if not isinstance(failures, list):
        return []
    return [f for f in failures if isinstance(f, dict) and f.get("test") not in (None, "")]


def _ids(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


def _message(failure: dict[str, Any]) -> str:
    message = failure.get("message")
    return str(message) if message not in (None, "") else "reported failing"


def _seconds(failure: dict[str, Any]) -> float:
    for key, scale in (("duration_ms", 1000.0), ("duration_s", 1.0), ("duration", 1.0)):
        value = failure.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value) / scale
    return 0.0
