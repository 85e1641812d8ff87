"""Test history: what every finished run said about each test, kept per test id.

A run *reports tests* when one of its steps carries test counts (``test``, ``verify``).
For such a run, each test of its workflow gets one outcome:

    failed             reported failing and still failing at the end of the run
    passed_on_rerun    reported failing, then a ``verify`` found it passing (a flip)
    passed             not reported failing: every test seen failing before in this
                       workflow and not mentioned now passed (a flip if it had failed)

A flip is a failure followed by a pass with no change in between that Aegis could see:
a ``verify`` pass in the same run, or a pass in the next run. ``flakiness`` is flips per
run seen; a test that always fails (broken) has many failures and no flips.

The stores keep a summary row per (workflow, test id), updated as each run finishes, and
the outcomes worth showing (failures, passes on re-run, the first pass after a failure),
so reading the test list never scans step data. ``TestTally`` is the in-memory version;
``sqlite_tests`` does the same in SQL.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from aegis.records import Run, test_counts

__all__ = [
    "FAILED",
    "PASSED",
    "PASSED_ON_RERUN",
    "RECENT_OUTCOMES",
    "RunTests",
    "TestOutcome",
    "TestRecord",
    "TestTally",
    "run_tests",
]

FAILED = "failed"
PASSED = "passed"
PASSED_ON_RERUN = "passed_on_rerun"
RECENT_OUTCOMES = 50  # outcomes kept per test in memory; the file keeps its runs' all


@dataclass(frozen=True)
class TestRecord:
    """The summary of one test id in one workflow."""

    __test__ = False  # not a pytest class, whatever its name

    workflow: str
    test_id: str
    runs: int
    failures: int
    flips: int
    last_outcome: str
    last_run: str
    last_seen_at: str
    last_failure_at: str | None = None
    last_failure_run: str | None = None
    last_message: str | None = None
    last_pass_at: str | None = None
    last_pass_run: str | None = None

    @property
    def flakiness(self) -> float:
        """Flips per run seen, 0 to 1 (rounded to 3 places)."""
        return round(self.flips / self.runs, 3) if self.runs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_id": self.test_id,
            "workflow": self.workflow,
            "runs": self.runs,
            "failures": self.failures,
            "flips": self.flips,
            "flakiness": self.flakiness,
            "last_outcome": self.last_outcome,
            "last_run": self.last_run,
            "last_seen_at": self.last_seen_at,
            "last_failure": _moment(self.last_failure_at, self.last_failure_run),
            "last_pass": _moment(self.last_pass_at, self.last_pass_run),
            "last_message": self.last_message,
        }


def _moment(at: str | None, run_id: str | None) -> dict[str, str] | None:
    return None if at is None or run_id is None else {"at": at, "run_id": run_id}


@dataclass(frozen=True)
class TestOutcome:
    """What one run said about one test; ``bug_report`` is the id filed for it, if any."""

    __test__ = False

    test_id: str
    workflow: str
    run_id: str
    started_at: str
    outcome: str
    message: str | None = None
    bug_report: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_id": self.test_id,
            "workflow": self.workflow,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "outcome": self.outcome,
            "message": self.message,
            "bug_report": self.bug_report,
        }


@dataclass(frozen=True)
class RunTests:
    """What a finished run says about tests: the ones it mentioned, and its failing count."""

    run: Run
    mentioned: dict[str, TestOutcome]

    @property
    def failing(self) -> int:
        return sum(1 for o in self.mentioned.values() if o.outcome == FAILED)


def run_tests(run: Run) -> RunTests | None:
    """The tests ``run`` reported on, or ``None`` when no step of it reported tests."""
    reported = False
    mentioned: dict[str, TestOutcome] = {}
    reports: dict[str, str] = {}
    for step in run.steps:
        if step.skipped or not step.data:
            continue
        data = step.data
        if test_counts(data) is not None:
            reported = True
        for failure in _list(data.get("failures")):
            if isinstance(failure, dict) and failure.get("test") not in (None, ""):
                test_id = str(failure["test"])
                message = failure.get("message")
                mentioned[test_id] = _outcome(run, test_id, FAILED, message)
        for test_id in map(str, _list(data.get("verified"))):
            if test_id in mentioned:
                mentioned[test_id] = replace(mentioned[test_id], outcome=PASSED_ON_RERUN)
        filed = data.get("bug_reports")
        if isinstance(filed, dict):
            reports.update({str(k): str(v) for k, v in filed.items()})
    if not reported:
        return None
    for test_id, report in reports.items():
        if test_id in mentioned:
            mentioned[test_id] = replace(mentioned[test_id], bug_report=report)
    return RunTests(run, mentioned)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _outcome(run: Run, test_id: str, outcome: str, message: object = None) -> TestOutcome:
    text = message if isinstance(message, str) and message else None
    return TestOutcome(test_id, run.workflow, run.run_id, run.started_at, outcome, text)


def passed(run: Run, test_id: str) -> TestOutcome:
    """The outcome of a known test ``run`` did not mention."""
    return _outcome(run, test_id, PASSED)


def sort_key(flaky: bool) -> Any:
    """How test lists are ordered: by flakiness (``flaky``), else by failures; then id."""
    if flaky:
        return lambda r: (-r.flakiness, -r.flips, -r.failures, r.workflow, r.test_id)
    return lambda r: (-r.failures, r.workflow, r.test_id)


class TestTally:
    """Test history in memory (not thread-safe: ``MemoryHistory`` holds its lock)."""

    __test__ = False

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], TestRecord] = {}
        self._outcomes: dict[str, deque[TestOutcome]] = {}
        self._counted: dict[str, int | None] = {}  # run id -> failing count (None: no tests)

    def record(self, run: Run) -> None:
        """Count finished ``run`` once (a run finished again is not counted twice)."""
        if run.run_id in self._counted:
            return
        found = run_tests(run)
        self._counted[run.run_id] = None if found is None else found.failing
        if found is None:
            return
        for outcome in found.mentioned.values():
            self._apply(outcome)
        for (workflow, test_id), record in list(self._records.items()):
            if workflow == run.workflow and test_id not in found.mentioned:
                if record.last_outcome != PASSED:
                    self._keep(passed(run, test_id))
                self._records[workflow, test_id] = replace(
                    record,
                    runs=record.runs + 1,
                    flips=record.flips + (record.last_outcome != PASSED),
                    last_outcome=PASSED,
                    last_run=run.run_id,
                    last_seen_at=run.started_at,
                    last_pass_at=run.started_at,
                    last_pass_run=run.run_id,
                )

    def _apply(self, outcome: TestOutcome) -> None:
        key = (outcome.workflow, outcome.test_id)
        old = self._records.get(key)
        rerun = outcome.outcome == PASSED_ON_RERUN
        new = TestRecord(
            workflow=outcome.workflow,
            test_id=outcome.test_id,
            runs=1 + (old.runs if old else 0),
            failures=1 + (old.failures if old else 0),
            flips=int(rerun) + (old.flips if old else 0),
            last_outcome=outcome.outcome,
            last_run=outcome.run_id,
            last_seen_at=outcome.started_at,
            last_failure_at=outcome.started_at,
            last_failure_run=outcome.run_id,
            last_message=outcome.message,
            last_pass_at=outcome.started_at if rerun else (old.last_pass_at if old else None),
            last_pass_run=outcome.run_id if rerun else (old.last_pass_run if old else None),
        )
        self._records[key] = new
        self._keep(outcome)

    def _keep(self, outcome: TestOutcome) -> None:
        kept = self._outcomes.setdefault(outcome.test_id, deque(maxlen=RECENT_OUTCOMES))
        kept.append(outcome)

    def forget(self, run_ids: set[str]) -> None:
        """Drop the outcomes of pruned runs (the summaries keep counting them)."""
        for run_id in run_ids:
            self._counted.pop(run_id, None)
        for test_id, kept in list(self._outcomes.items()):
            left = deque((o for o in kept if o.run_id not in run_ids), maxlen=RECENT_OUTCOMES)
            if left:
                self._outcomes[test_id] = left
            else:
                del self._outcomes[test_id]

    def tests(self, workflow: str | None, flaky: bool, limit: int) -> list[TestRecord]:
        found = [
            r
            for r in self._records.values()
            if (workflow is None or r.workflow == workflow) and (not flaky or r.flips > 0)
        ]
        return sorted(found, key=sort_key(flaky))[: max(limit, 0)]

    def test(self, test_id: str) -> list[TestRecord]:
        return sorted((r for r in self._records.values() if r.test_id == test_id),
                      key=lambda r: r.workflow)  # fmt: skip

    def outcomes(self, test_id: str, limit: int) -> list[TestOutcome]:
        kept = self._outcomes.get(test_id, ())
        newest = sorted(kept, key=lambda o: o.started_at, reverse=True)
        return list(itertools.islice(newest, max(limit, 0)))

    def failing_counts(self, run_ids: list[str]) -> dict[str, int]:
        counts = {run_id: self._counted.get(run_id) for run_id in run_ids}
        return {run_id: count for run_id, count in counts.items() if count is not None}
