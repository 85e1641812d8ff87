"""The ``report`` step: a summary of the run from its aggregates, without HTTP."""

from __future__ import annotations

from conftest import MakeContext

from aegis.engine.state import RECENT_STEPS, RunState
from aegis.records import StepResult, StepStatus
from aegis.records import test_counts as counts_of
from aegis.steps.report import STEP, step_line


def result(name: str, status: StepStatus, **fields: object) -> StepResult:
    return StepResult(name, name.split("-")[0], "qaagent", status, **fields)  # type: ignore[arg-type]


async def test_empty_run(make_context: MakeContext) -> None:
    data = await STEP.execute(make_context("report", None))
    assert data == {
        "step_count": 0,
        "status_counts": {"succeeded": 0, "failed": 0, "skipped": 0, "cancelled": 0},
        "duration_ms": 0.0,
        "tests": None,
        "open_failure_count": 0,
        "steps": [],
        "steps_omitted": 0,
    }


async def test_summarises_earlier_steps(make_context: MakeContext) -> None:
    state = RunState()
    counts = {"total": 10, "passed": 8, "failed": 2}
    failures = [{"test": "a", "message": "x"}, {"test": "b", "message": "y"}]
    state.add_batch(
        [
            result("discover", StepStatus.SUCCEEDED, duration_ms=12.4, data={"route_count": 6}),
            result(
                "test",
                StepStatus.SUCCEEDED,
                duration_ms=812.0,
                data={**counts, "failures": failures},
            ),
            result("submit_bugs", StepStatus.FAILED, duration_ms=30.2, error="HTTP 404 from b"),
            result("submit_bugs-2", StepStatus.SUCCEEDED, data={"submitted": 2, "other": True}),
            result("custom", StepStatus.SUCCEEDED, data={"route_count": True}),
            result("verify", StepStatus.SKIPPED, skip_reason="condition has_failures: no"),
            result("other", StepStatus.SKIPPED),
        ]
    )
    data = await STEP.execute(make_context("report", None, state=state))
    assert data["step_count"] == 7
    assert data["status_counts"] == {"succeeded": 4, "failed": 1, "skipped": 2, "cancelled": 0}
    assert data["duration_ms"] == 854.6
    assert data["tests"] == {"total": 10, "passed": 8, "failed": 2}
    assert data["open_failure_count"] == 2
    assert data["steps"] == [
        "discover: succeeded in 12 ms, 6 routes",
        "test: succeeded in 812 ms, 8/10 passed",
        "submit_bugs: failed in 30 ms: HTTP 404 from b",
        "submit_bugs-2: succeeded in 0 ms, 2 bug reports filed",
        "custom: succeeded in 0 ms",
        "verify: skipped (condition has_failures: no)",
        "other: skipped",
    ]
    assert data["steps_omitted"] == 0


async def test_lines_are_bounded_however_long_the_run(make_context: MakeContext) -> None:
    state = RunState()
    for index in range(RECENT_STEPS + 50):
        state.add(result(f"step-{index}", StepStatus.SUCCEEDED))
    data = await STEP.execute(make_context("report", None, state=state))
    assert len(data["steps"]) == RECENT_STEPS
    assert data["steps"][0] == "step-50: succeeded in 0 ms"
    assert data["steps_omitted"] == 50


async def test_its_own_data_is_not_taken_for_test_results(make_context: MakeContext) -> None:
    state = RunState()
    state.add(result("test", StepStatus.SUCCEEDED, data={"total": 3, "passed": 3, "failed": 0}))
    data = await STEP.execute(make_context("report", None, state=state))
    assert counts_of(data) is None
    state.add(result("report", StepStatus.SUCCEEDED, data=data))
    assert state.last_counts == (3, 0)
    assert not state.has_test_failures


def test_step_line_of_a_cancelled_step() -> None:
    line = step_line(result("test", StepStatus.CANCELLED, duration_ms=5.0, error="cancelled"))
    assert line == "test: cancelled in 5 ms: cancelled"


def test_step_type_metadata() -> None:
    assert (STEP.name, STEP.needs_service, STEP.params) == ("report", False, frozenset())
    assert STEP.description
