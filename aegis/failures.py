"""Which tests a run found failing, and which of them are still open at the end.

A step reports tests when its data has the test-result shape: integer ``total`` and
``failed`` counts and a ``failures`` list of ``{"test": id, "message": ...}`` objects,
whatever the step's type. A step whose data lists ``verified`` test ids (``verify``) says
those tests of its service pass now. A test is *open* when some step reported it failing
and no later step of its service verified it; a step that counts more failing tests than
it names leaves the rest open too, as they can never be verified by name.

The verdict, the terminal's "Failing tests", JUnit, the GitHub annotations and step
summary, and the ``workflow.completed`` event all read this one ledger, so they agree.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from aegis.records import StepResult, test_counts

__all__ = ["LOCAL", "TestLedger", "TestOutcome", "reported_failures"]

# Where the tests of a step without a service ran (a `command`, a `verify` that runs a
# program): one name for them all, so such a `verify` re-running them is matched.
LOCAL = "local"


@dataclass(frozen=True)
class TestOutcome:
    """One test a step reported as failing, and where it stands now."""

    __test__ = False  # not a pytest class, whatever its name

    test_id: str
    service: str
    failing: bool
    message: str
    step: str  # the last step that reported on it
    duration_s: float
    details: dict[str, Any]


class TestLedger:
    """The tests reported failing so far, keyed by service and test id, in order first seen.

    Each ``add`` costs what the step reported, not what earlier steps did.
    """

    __test__ = False

    def __init__(self) -> None:
        self._outcomes: dict[tuple[str, str], TestOutcome] = {}
        self._open_ids: Counter[str] = Counter()
        self.open_count = 0
        # test id -> the newest failure record, for steps that act on open failures
        self.open_failures: dict[str, dict[str, Any]] = {}
        # tests counted by steps that ran them first (re-runs, which list ``verified``, excluded)
        self.total: int | None = None

    def add(self, step: StepResult) -> None:
        """Take in what a finished step reported about tests, if anything."""
        data = step.data
        if step.skipped or not data:
            return
        service = step.service or LOCAL
        named = reported_failures(data)
        for failure in named:
            self._fail(service, str(failure["test"]), step.name, failure)
        counts = test_counts(data)
        if counts is not None:
            unnamed = counts[1] - len(named)
            if unnamed > 0:
                self._fail_unnamed(service, step.name, unnamed)
            if "verified" not in data:
                self.total = (self.total or 0) + counts[0]
        verified = data.get("verified")
        for test_id in verified if isinstance(verified, list) else ():
            self._pass(service, str(test_id), step.name)

    def outcomes(self) -> list[TestOutcome]:
        """Every test reported failing, open or since verified, in the order first seen."""
        return list(self._outcomes.values())

    def still_failing(self) -> list[TestOutcome]:
        """The open ones."""
        return [outcome for outcome in self._outcomes.values() if outcome.failing]

    def _fail(self, service: str, test_id: str, step: str, failure: dict[str, Any]) -> None:
        key = (service, test_id)
        earlier = self._outcomes.get(key)
        if earlier is None or not earlier.failing:
            self.open_count += 1
            self._open_ids[test_id] += 1
        message = failure.get("message")
        self._outcomes[key] = TestOutcome(
            test_id=test_id,
            service=service,
            failing=True,
            message=str(message) if message not in (None, "") else "reported failing",
            step=step,
            duration_s=_seconds(failure),
            details=failure,
        )
        self.open_failures[test_id] = failure

    def _fail_unnamed(self, service: str, step: str, count: int) -> None:
        plural = "s" if count != 1 else ""
        test_id = f"{count} failing test{plural} that step {step!r} did not name"
        # a key no other report can reach: unnamed tests cannot be verified
        key = (service, f"\0{len(self._outcomes)}")
        self.open_count += 1
        self._outcomes[key] = TestOutcome(
            test_id=test_id,
            service=service,
            failing=True,
            message=f"{step!r} counted {count} more failing test{plural} than it listed",
            step=step,
            duration_s=0.0,
            details={},
        )

    def _pass(self, service: str, test_id: str, step: str) -> None:
        key = (service, test_id)
        earlier = self._outcomes.get(key)
        if earlier is None or not earlier.failing:
            return
        self.open_count -= 1
        self._open_ids[test_id] -= 1
        if self._open_ids[test_id] <= 0:
            del self._open_ids[test_id]
            self.open_failures.pop(test_id, None)
        self._outcomes[key] = replace(
            earlier,
            failing=False,
            message=f"failed in an earlier step, passes when {step!r} re-ran it",
            step=step,
        )


def reported_failures(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The failure objects in step data that name their test."""
    failures = data.get("failures")
    if not isinstance(failures, list):
        return []
    return [f for f in failures if isinstance(f, dict) and f.get("test") not in (None, "")]


def _seconds(failure: dict[str, Any]) -> float:
    for key, scale in (("duration_ms", 1000.0), ("duration_s", 1.0), ("duration", 1.0)):
        value = failure.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value) / scale
    return 0.0
