"""The tests a run reported on, each with its final outcome.

A ``test`` step reports failures; a later ``verify`` step re-runs them and reports which
pass now (``verified``) and which still fail (its ``failures``). What counts as open is
decided in one place, ``aegis.failures.TestLedger``, which the engine's verdict reads too;
this replays a finished run's steps through it.
"""

from __future__ import annotations

from aegis.failures import TestLedger, TestOutcome
from aegis.records import Run, StepResult

__all__ = ["TestOutcome", "is_infrastructure", "test_outcomes"]

# Error kinds that mean the step could not do its job, rather than the job going badly.
INFRASTRUCTURE_KINDS = frozenset({"timeout", "connection", "protocol", "cancelled"})


def is_infrastructure(step: StepResult) -> bool:
    """Whether a failed step failed on infrastructure (timeout, connection, protocol)."""
    return step.status.value == "cancelled" or step.error_kind in INFRASTRUCTURE_KINDS


def test_outcomes(run: Run) -> list[TestOutcome]:
    """Every test reported failing by some step, in the order first reported."""
    ledger = TestLedger()
    for step in run.steps:
        ledger.add(step)
    return ledger.outcomes()
