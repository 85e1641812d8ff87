"""The ``verify`` step: re-run only the earlier failures and say which pass now."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import respx
from conftest import MakeContext

from aegis.config.model import Config, ServiceSpec, StepSpec, WorkflowSpec, frozen_mapping
from aegis.demo import DemoServices, Fault
from aegis.engine.runner import Engine
from aegis.engine.state import RunState
from aegis.errors import StepError
from aegis.records import Run, StepResult, StepStatus
from aegis.steps import bugalizer, command, http_request, test, verify
from aegis.steps.registry import default_step_types
from aegis.steps.verify import STEP


def state_with_failures(*test_ids: str) -> RunState:
    state = RunState()
    failures = [{"test": test_id, "message": "boom"} for test_id in test_ids]
    data = {"total": 10, "passed": 10 - len(failures), "failed": len(failures)}
    state.add(
        StepResult(
            "test", "test", "qaagent", StepStatus.SUCCEEDED, data={**data, "failures": failures}
        )
    )
    return state


async def test_nothing_to_verify_makes_no_call(
    make_context: MakeContext, demo: DemoServices
) -> None:
    data = await STEP.execute(make_context("verify", demo.qaagent_url))
    assert data == {
        "total": 0,
        "passed": 0,
        "failed": 0,
        "failures": [],
        "verified": [],
        "still_failing": [],
    }
    assert demo.qaagent.calls == []


async def test_reruns_only_the_earlier_failures(
    make_context: MakeContext, demo: DemoServices
) -> None:
    state = RunState()
    tested = await test.STEP.execute(make_context("test", demo.qaagent_url, state=state))
    state.add(StepResult("test", "test", "qaagent", StepStatus.SUCCEEDED, data=tested))

    data = await STEP.execute(make_context("verify", demo.qaagent_url, state=state))

    assert demo.qaagent.calls[-1].json == {
        "verify_only": True,
        "tests": ["test_checkout_applies_discount", "test_api_login_rate_limit"],
    }
    assert (data["total"], data["passed"], data["failed"]) == (2, 1, 1)
    assert data["verified"] == ["test_api_login_rate_limit"]
    assert data["still_failing"] == ["test_checkout_applies_discount"]
    state.add(StepResult("verify", "verify", "qaagent", StepStatus.SUCCEEDED, data=data))
    assert list(state.open_failures) == ["test_checkout_applies_discount"]
    assert state.last_counts == (2, 1)


async def test_a_failure_the_service_adds_is_neither_verified_nor_still_failing(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    answer = {"total": 2, "passed": 1, "failed": 1, "failures": [{"test": "other"}]}
    respx_mock.post("http://svc.test/api/runs").respond(200, json=answer)
    data = await STEP.execute(make_context("verify", state=state_with_failures("a")))
    assert (data["verified"], data["still_failing"]) == (["a"], [])


async def test_wrong_shape_is_kind_protocol(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    respx_mock.post("http://svc.test/api/runs").respond(200, json={"ok": True})
    with pytest.raises(StepError) as caught:
        await STEP.execute(make_context("verify", state=state_with_failures("a")))
    assert caught.value.kind == "protocol"


async def test_service_down_is_kind_connection(
    make_context: MakeContext, demo: DemoServices
) -> None:
    demo.qaagent.stop()
    ctx = make_context("verify", demo.qaagent_url, state=state_with_failures("a"))
    with pytest.raises(StepError) as caught:
        await STEP.execute(ctx)
    assert caught.value.kind == "connection"


def test_step_type_metadata() -> None:
    assert STEP.name == "verify"
    assert STEP.params == {"path"} | command.PARAMS | http_request.PARAMS
    assert STEP.check_params is not None and STEP.check_params({"path": "x"})
    assert verify.STEP.description


# --------------------------------------------------------------------------- closing bugs


def pipeline(demo: DemoServices, **bugs: object) -> Config:
    steps = (
        StepSpec("test", "test", service="qaagent"),
        StepSpec(
            "submit_bugs",
            "bugs",
            service="bugalizer",
            condition="has_failures",
            params=frozen_mapping({"project_id": "web-shop", **bugs}),
        ),
        StepSpec("verify", "verify", service="qaagent", condition="has_failures"),
    )
    services = {
        "qaagent": ServiceSpec("qaagent", "QA Agent", demo.qaagent_url),
        "bugalizer": ServiceSpec("bugalizer", "Bugalizer", demo.bugalizer_url),
    }
    return Config(
        services=frozen_mapping(services),
        workflows=frozen_mapping({"wf": WorkflowSpec("wf", "WF", steps)}),
    )


async def run_pipeline(demo: DemoServices, **bugs: object) -> Run:
    return await Engine(pipeline(demo, **bugs), default_step_types(), environ={}).run("wf")


def status_of(demo: DemoServices, report_id: str) -> tuple[str, str | None]:
    report = next(r for r in demo.bugalizer.reports if r["id"] == report_id)
    return report["status"], report["resolution_reason"]


async def test_a_fixed_test_has_its_bug_closed(demo: DemoServices) -> None:
    run = await run_pipeline(demo)
    bugs, check = run.steps[1], run.steps[2]
    fixed = bugs.data["bug_reports"]["test_api_login_rate_limit"]
    still = bugs.data["bug_reports"]["test_checkout_applies_discount"]
    assert check.status is StepStatus.SUCCEEDED
    assert check.data["bug_updates"] == [
        {
            "test": "test_api_login_rate_limit",
            "report_id": fixed,
            "from": "submitted",
            "status": "closed",
        }
    ]
    reason = f"Aegis run {run.run_id} (workflow wf) found the test passing"
    assert status_of(demo, fixed) == ("closed", reason)
    assert status_of(demo, still) == ("submitted", None)
    patches = [c for c in demo.bugalizer.calls if c.method == "PATCH"]
    assert [c.json["status"] for c in patches] == ["triaged", "closed"]


async def test_a_bug_from_an_earlier_run_is_closed_too(demo: DemoServices) -> None:
    first = await run_pipeline(demo, close_fixed=False)
    earlier = first.steps[1].data["bug_reports"]["test_api_login_rate_limit"]
    assert first.steps[2].data["bug_updates"][0]["note"] == "left open: close_fixed is false"
    assert status_of(demo, earlier)[0] == "submitted"
    second = await run_pipeline(demo)
    assert second.steps[1].data["reused"] == first.steps[1].data["report_ids"]
    assert second.steps[2].data["bug_updates"][0]["report_id"] == earlier
    assert status_of(demo, earlier)[0] == "closed"
    assert len(demo.bugalizer.reports) == 2  # two runs, each bug filed once


@pytest.mark.parametrize(
    ("status", "update"),
    [
        ("triaged", {"from": "triaged", "status": "closed"}),
        (
            "fix_approved",
            {
                "from": "fix_approved",
                "status": "fix_approved",
                "note": "bugalizer allows no move from 'fix_approved' to 'closed'",
            },
        ),
    ],
)
async def test_a_bug_moves_as_far_as_the_state_machine_allows(
    demo: DemoServices, status: str, update: dict[str, str]
) -> None:
    first = await run_pipeline(demo, close_fixed=False)
    report_id = first.steps[1].data["bug_reports"]["test_api_login_rate_limit"]
    with demo.bugalizer._lock:  # a person moved it meanwhile
        demo.bugalizer._reports[report_id]["status"] = status
    run = await run_pipeline(demo)
    [found] = run.steps[2].data["bug_updates"]
    assert found == {"test": "test_api_login_rate_limit", "report_id": report_id, **update}


async def test_failing_to_close_is_data_not_a_failure(demo: DemoServices) -> None:
    demo.bugalizer.inject("*", Fault(503, method="PATCH", times=None))
    run = await run_pipeline(demo)
    check = run.steps[2]
    assert check.status is StepStatus.SUCCEEDED
    [update] = check.data["bug_updates"]
    assert update["status"] == "submitted"
    assert update["note"] == (
        "could not move it to 'triaged': HTTP 503 from bugalizer: injected fault: HTTP 503"
    )


async def test_an_unreadable_bug_is_noted(demo: DemoServices) -> None:
    demo.bugalizer.inject("*", Fault(500, method="GET", times=None))
    run = await run_pipeline(demo, on_existing="file")
    [update] = run.steps[2].data["bug_updates"]
    assert update["note"] == "HTTP 500 from bugalizer: injected fault: HTTP 500"


async def test_closing_stops_at_its_time_budget(demo: DemoServices) -> None:
    demo.bugalizer.inject("*", Fault(status=None, mode="stall", method="GET", times=None))
    config = pipeline(demo, on_existing="file")
    steps = list(config.workflows["wf"].steps)
    steps[2] = dataclasses.replace(steps[2], timeout=0.5)
    workflow = dataclasses.replace(config.workflows["wf"], steps=tuple(steps))
    config = dataclasses.replace(config, workflows=frozen_mapping({"wf": workflow}))
    run = await Engine(config, default_step_types(), environ={}).run("wf")
    check = run.steps[2]
    assert check.status is StepStatus.SUCCEEDED
    assert check.data["bug_updates"][0]["note"] == "not done: out of time"


async def test_bugs_of_an_unknown_service_are_left_open(
    make_context: MakeContext, demo: DemoServices
) -> None:
    state = state_with_failures("test_api_login_rate_limit")
    state.bug_reports["test_api_login_rate_limit"] = "abc"
    state.bug_tracker = {"service": "gone", "path": "/api/v1/reports", "project_id": "p"}
    data = await STEP.execute(make_context("verify", demo.qaagent_url, state=state))
    assert data["bug_updates"] == [
        {
            "test": "test_api_login_rate_limit",
            "report_id": "abc",
            "note": "left open: service 'gone' is not configured",
        }
    ]


async def test_an_already_closed_bug_is_left_as_it_is(
    make_context: MakeContext, demo: DemoServices
) -> None:
    ctx = make_context("verify", demo.bugalizer_url, service="bugalizer")
    assert ctx.service is not None
    tracker = bugalizer.Tracker(ctx.service, bugalizer.REPORTS_PATH, "web-shop")
    report_id = await bugalizer.file_report(
        ctx,
        tracker,
        {"project_id": "web-shop", "title": "t", "description": "d", "reporter": "r"},
    )
    with demo.bugalizer._lock:
        demo.bugalizer._reports[report_id]["status"] = "closed"
    outcome = await bugalizer.close_report(ctx, tracker, report_id, "fixed")
    assert outcome == {
        "report_id": report_id,
        "from": "closed",
        "status": "closed",
        "note": "already closed",
    }


# ------------------------------------------------------------------ any source of tests


async def test_verify_by_request_reruns_the_failures_it_is_given(
    make_context: MakeContext, demo: DemoServices
) -> None:
    failing = ["test_checkout_applies_discount", "test_api_login_rate_limit"]
    params = {
        "method": "POST",
        "path": "/api/branches/{branch}/run-tests",
        "path_params": {"branch": "main"},
        "json": {"tests": failing},  # as `${{ failures[].test }}` resolves
        "expect": 202,
        "tests": {"failures": "`[]`"},
    }
    ctx = make_context(
        "verify", demo.qaagent_url, params=params, state=state_with_failures(*failing)
    )
    data = await STEP.execute(ctx)
    assert demo.qaagent.calls[-1].json == {"tests": failing}
    assert (data["verified"], data["still_failing"]) == (failing, [])


async def test_verify_by_request_reads_the_failures_from_the_answer(
    make_context: MakeContext, demo: DemoServices
) -> None:
    failing = ["test_checkout_applies_discount", "test_api_login_rate_limit"]
    params = {
        "method": "POST",
        "path": "/api/runs",
        "json": {"verify_only": True, "tests": failing},
        "tests": {"total": "total", "failures": "failures"},
    }
    ctx = make_context(
        "verify", demo.qaagent_url, params=params, state=state_with_failures(*failing)
    )
    data = await STEP.execute(ctx)
    assert (data["total"], data["passed"], data["failed"]) == (2, 1, 1)
    assert data["verified"] == ["test_api_login_rate_limit"]
    assert data["still_failing"] == ["test_checkout_applies_discount"]


async def test_verify_by_program_without_failures_runs_nothing(
    make_context: MakeContext, tmp_path: Path
) -> None:
    params = {"run": ["touch", str(tmp_path / "ran")], "junit": "*.xml"}
    data = await STEP.execute(make_context("verify", None, params=params))
    assert data["verified"] == [] and not (tmp_path / "ran").exists()


def test_verify_checks_the_keys_of_the_way_it_reruns() -> None:
    assert verify.form({}) == "contract"
    assert verify.form({"shell": "x"}) == "command"
    assert verify.form({"tests": {}}) == "http"
    assert verify.check_params({"path": "nope"}) == [
        ("path", "expected a path starting with '/', got 'nope'")
    ]
    assert verify.check_params({"run": ["pytest"], "path": "/x"}) == [
        ("path", "not used when verify re-runs the tests by running a program"),
        ("junit", "required with run/shell: the JUnit files to read results from"),
    ]
    assert verify.check_params({"method": "POST", "path": "/x", "cwd": "."}) == [
        ("cwd", "not used when verify re-runs the tests by a request"),
        ("tests", "required: how the answer maps to test results"),
    ]


def test_only_the_program_form_goes_without_a_service() -> None:
    assert not STEP.service_needed({"run": ["pytest"], "junit": "x"})
    assert STEP.service_needed({"tests": {"failures": "f"}})
    assert STEP.service_needed({})


def test_config_needs_a_service_only_for_the_forms_that_send(tmp_path: Path) -> None:
    import io

    from aegis.cli import main

    config = tmp_path / "aegis.yaml"
    config.write_text(
        "workflows:\n  wf:\n    steps:\n"
        "      - {type: verify, with: {run: [pytest], junit: out.xml}}\n"
        "      - {type: verify}\n"
    )
    err = io.StringIO()
    assert main(["config", "validate", str(config)], stdout=io.StringIO(), stderr=err) == 1
    problems = [line for line in err.getvalue().splitlines() if "steps[" in line]
    assert len(problems) == 1
    assert (
        "workflows.wf.steps[1].service: missing; step type 'verify' needs a service"
        in (problems[0])
    )
