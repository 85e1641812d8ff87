"""One answer to "which tests still fail": the verdict and every output agree on it."""

from __future__ import annotations

import io
from typing import Any

from fakes import config, step, step_type

from aegis.ci.github import annotation_lines, step_summary
from aegis.ci.junit import junit_xml
from aegis.console import Console, render_run
from aegis.engine.runner import Engine
from aegis.events import Event, EventBus
from aegis.failures import TestLedger
from aegis.history.memory import MemoryHistory
from aegis.records import RunStatus, StepResult, StepStatus, Verdict
from aegis.steps.base import StepContext


def reports(*failing: str, total: int = 5, verified: list[str] | None = None):  # type: ignore[no-untyped-def]
    """A step type reporting the test-result shape, with ``failing`` tests failing."""

    async def execute(ctx: StepContext) -> dict[str, Any]:
        data: dict[str, Any] = {
            "total": total,
            "passed": total - len(failing),
            "failed": len(failing),
            "failures": [{"test": t, "message": f"{t} broke"} for t in failing],
        }
        if verified is not None:
            data["verified"] = verified
        return data

    return execute


async def run_with_events(cfg, types):  # type: ignore[no-untyped-def]
    bus = EventBus()
    events: list[Event] = []
    bus.subscribe(events.append)
    engine = Engine(cfg, {t.name: t for t in types}, history=MemoryHistory(), bus=bus)
    run = await engine.run("wf")
    (completed,) = [e for e in events if e.type == "workflow.completed"]
    return run, completed


async def test_parallel_steps_each_count_and_every_output_agrees() -> None:
    cfg = config(step("two", parallel=True), step("none", parallel=True))
    types = [step_type("two", reports("t1", "t2")), step_type("none", reports())]
    run, completed = await run_with_events(cfg, types)

    assert run.status is RunStatus.SUCCEEDED and run.verdict is Verdict.FAILED
    assert (completed.data["verdict"], completed.data["tests_failed"]) == ("failed", 2)
    assert completed.data["tests_total"] == 10

    out = io.StringIO()
    render_run(Console(out, {}), run)
    listed = out.getvalue().split("Failing tests:\n")[1].splitlines()
    assert listed == ["  - t1: t1 broke", "  - t2: t2 broke"]

    assert b'failures="2"' in junit_xml(run)
    tests = [line for line in annotation_lines(run) if "failing on" in line]
    assert len(tests) == 2
    assert "**Still failing: 2 tests**" in step_summary(run)


async def test_the_order_of_parallel_steps_does_not_change_the_verdict() -> None:
    cfg = config(step("none", parallel=True), step("two", parallel=True))
    types = [step_type("two", reports("t1", "t2")), step_type("none", reports())]
    run, completed = await run_with_events(cfg, types)
    assert run.verdict is Verdict.FAILED and completed.data["tests_failed"] == 2


async def test_a_later_passing_test_step_does_not_close_failures_a_verify_does() -> None:
    cfg = config(step("fails"), step("passes"))
    types = [step_type("fails", reports("t1")), step_type("passes", reports())]
    run, _ = await run_with_events(cfg, types)
    assert run.verdict is Verdict.FAILED

    cfg = config(step("fails", service="svc"), step("verify_all", service="svc"))
    types = [
        step_type("fails", reports("t1")),
        step_type("verify_all", reports(total=1, verified=["t1"])),
    ]
    run, completed = await run_with_events(cfg, types)
    assert run.verdict is Verdict.PASSED and completed.data["tests_failed"] == 0
    assert completed.data["tests_total"] == 5  # the re-run counts no new tests


async def test_no_test_results_means_no_test_counts() -> None:
    async def quiet(ctx: StepContext) -> dict[str, Any]:
        return {"ok": True}

    run, completed = await run_with_events(config(step("q")), [step_type("q", quiet)])
    assert run.verdict is Verdict.PASSED
    assert (completed.data["tests_total"], completed.data["tests_failed"]) == (None, None)


def result(name: str, service: str | None, **data: Any) -> StepResult:
    return StepResult(name, "t", service, StepStatus.SUCCEEDED, data=data)


def test_a_verify_closes_only_its_own_services_tests() -> None:
    ledger = TestLedger()
    ledger.add(result("a", "one", total=1, failed=1, failures=[{"test": "x"}]))
    ledger.add(result("b", "two", total=1, failed=1, failures=[{"test": "x"}]))
    assert (ledger.open_count, list(ledger.open_failures)) == (2, ["x"])
    ledger.add(result("v", "one", total=1, failed=0, failures=[], verified=["x", "unknown"]))
    assert (ledger.open_count, list(ledger.open_failures)) == (1, ["x"])
    ledger.add(result("w", "two", total=1, failed=0, failures=[], verified=["x"]))
    assert (ledger.open_count, ledger.open_failures) == (0, {})
    assert [o.failing for o in ledger.outcomes()] == [False, False]


def test_failing_tests_a_step_counts_but_does_not_name_stay_open() -> None:
    ledger = TestLedger()
    ledger.add(result("t", "svc", total=4, failed=3, failures=[{"test": "x"}]))
    assert ledger.open_count == 2
    (named, unnamed) = ledger.still_failing()
    assert named.test_id == "x" and named.message == "reported failing"
    assert unnamed.test_id == "2 failing tests that step 't' did not name"
    ledger.add(result("v", "svc", total=1, failed=0, failures=[], verified=["x"]))
    assert ledger.open_count == 1
