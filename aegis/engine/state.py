"""What a run knows about its own earlier steps, kept as running aggregates.

Conditions, the steps that build on earlier ones (``test`` reuses discovered routes,
``verify`` and ``submit_bugs`` use open failures, ``verify`` the bug reports filed for
them) and ``report`` read this instead of
scanning earlier results, so every per-step operation is O(1) in the number of earlier
steps. A batch's results are added only when the whole batch has ended: results of a
batch are visible to later batches only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from aegis.failures import TestLedger
from aegis.records import StepResult, StepStatus, test_counts

__all__ = ["RECENT_STEPS", "RunState"]

# How many of the latest step results ``recent`` keeps (the report step lists these).
RECENT_STEPS = 100


class RunState:
    """Running aggregates over the ended, earlier steps of one run."""

    def __init__(self) -> None:
        self.step_count = 0
        self.status_counts: dict[str, int] = {s.value: 0 for s in StepStatus}
        self.total_duration_ms = 0.0
        self.any_failed = False
        self.has_test_failures = False
        self.last_counts: tuple[int, int] | None = None
        self.routes: list[Any] | None = None
        # which reported tests still fail: the verdict and ``verify`` read this
        self.tests = TestLedger()
        # test id -> failure record, in the order first seen; verify removes what it fixed
        self.open_failures: dict[str, dict[str, Any]] = self.tests.open_failures
        self.recent: deque[StepResult] = deque(maxlen=RECENT_STEPS)
        # test id -> the bug report open for it, and where those reports are kept: from
        # any step whose data has `bug_reports` and `bug_tracker` (submit_bugs does)
        self.bug_reports: dict[str, str] = {}
        self.bug_tracker: dict[str, Any] | None = None

    def add_batch(self, results: Iterable[StepResult]) -> None:
        for result in results:
            self.add(result)

    def add(self, result: StepResult) -> None:
        self.step_count += 1
        self.status_counts[result.status.value] += 1
        self.total_duration_ms += result.duration_ms
        self.recent.append(result)
        if result.skipped:
            return
        if result.failed:
            self.any_failed = True
        data = result.data
        counts = test_counts(data)
        if counts is not None:
            self.last_counts = counts
        failures = data.get("failures")
        if (counts is not None and counts[1] > 0) or failures:
            self.has_test_failures = True
        self.tests.add(result)
        routes = data.get("routes")
        if isinstance(routes, list):
            self.routes = routes
        reports = data.get("bug_reports")
        tracker = data.get("bug_tracker")
        if isinstance(reports, dict) and isinstance(tracker, dict):
            self.bug_reports.update({str(test): str(report) for test, report in reports.items()})
            self.bug_tracker = tracker
