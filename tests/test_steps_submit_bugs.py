"""The ``submit_bugs`` step: one bugalizer report per open failure, each filed exactly once,
against the reference bugalizer over real loopback HTTP."""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import MakeContext
from fakes import FakeClock

from aegis.config.model import (
    Config,
    Identity,
    ServiceSpec,
    StepSpec,
    WorkflowSpec,
    frozen_mapping,
)
from aegis.demo import DemoServices, Fault
from aegis.engine.runner import Engine
from aegis.engine.state import RunState
from aegis.errors import StepError
from aegis.records import Run, StepStatus
from aegis.steps import bugalizer
from aegis.steps.base import StepContext, StepType
from aegis.steps.registry import default_step_types
from aegis.steps.submit_bugs import STEP, check_params, report_body

PARAMS = {"project_id": "web-shop", "severity": "high"}
POST = "/api/v1/reports"


def open_failures(*failures: dict[str, Any]) -> RunState:
    state = RunState()
    for failure in failures:
        state.open_failures[failure["test"]] = failure
    return state


TWO = open_failures(
    {"test": "test_checkout", "message": "AssertionError: total 100 != 90"},
    {"test": "test_login", "message": "TimeoutError: 5.2 s"},
)


def bugs_context(make_context: MakeContext, url: str, **kw: Any) -> StepContext:
    kw.setdefault("state", TWO)
    kw.setdefault("params", PARAMS)
    return make_context("submit_bugs", url, service="bugalizer", **kw)


def failing_tests(count: int) -> StepType:
    """An in-process test step reporting ``count`` failing tests."""

    async def execute(ctx: StepContext) -> dict[str, Any]:
        failures = [{"test": f"test_{n}[case {n}]", "message": f"boom {n}"} for n in range(count)]
        return {"total": count, "passed": 0, "failed": count, "failures": failures}

    return StepType(name="failing", execute=execute, needs_service=False)


def bug_config(
    demo: DemoServices, count: int = 2, key_env: str | None = None, **bugs: Any
) -> Config:
    params = {"project_id": "web-shop", **bugs.pop("params", {})}
    steps = (
        StepSpec("failing", "tests", params=frozen_mapping({"count": count})),
        StepSpec(
            "submit_bugs",
            "bugs",
            service="bugalizer",
            retry_delay=0.01,
            params=frozen_mapping(params),
            **bugs,
        ),
    )
    service = ServiceSpec("bugalizer", "Bugalizer", demo.bugalizer_url, api_key_env=key_env)
    return Config(
        services=frozen_mapping({"bugalizer": service}),
        workflows=frozen_mapping({"wf": WorkflowSpec("wf", "WF", steps)}),
        identity=Identity(public_url="https://aegis.example/"),
    )


async def run_bugs(
    demo: DemoServices, count: int = 2, environ: dict[str, str] | None = None, **bugs: Any
) -> Run:
    types = {**default_step_types(), "failing": failing_tests(count)}
    engine = Engine(
        bug_config(demo, count, **bugs), types, environ=environ or {}, clock=FakeClock()
    )
    return await engine.run("wf")


def one_report_per_test(demo: DemoServices, count: int) -> None:
    fingerprints = [
        next(label for label in r["labels"] if label.startswith(bugalizer.FINGERPRINT_LABEL))
        for r in demo.bugalizer.reports
    ]
    assert len(fingerprints) == len(set(fingerprints)) == count


# --------------------------------------------------------------------------- filing


async def test_files_one_report_per_failure(make_context: MakeContext, demo: DemoServices) -> None:
    ctx = bugs_context(make_context, demo.bugalizer_url, workflow="full_pipeline", run_id="r-42")
    data = await STEP.execute(ctx)
    reports = demo.bugalizer.reports
    assert data["report_ids"] == [r["id"] for r in reports]
    assert all(re.fullmatch("[0-9a-f]{16}", r["id"]) for r in reports)
    assert (data["submitted"], data["reused"], data["adopted"], data["errors"]) == (2, [], [], [])
    assert data["bug_reports"] == {
        "test_checkout": reports[0]["id"],
        "test_login": reports[1]["id"],
    }
    assert data["bug_tracker"] == {
        "service": "bugalizer",
        "path": "/api/v1/reports",
        "project_id": "web-shop",
        "close_fixed": True,
    }
    sent = next(call.json for call in demo.bugalizer.calls if call.method == "POST")
    fp = bugalizer.fingerprint("web-shop", "full_pipeline", "test_checkout")
    assert sent == {
        "project_id": "web-shop",
        "title": "[aegis] test_checkout failed",
        "description": "AssertionError: total 100 != 90\n\n"
        "Test: test_checkout\nWorkflow: full_pipeline\nRun: r-42",
        "reporter": "aegis",
        "severity": "high",
        "steps_to_reproduce": [
            "Run the Aegis workflow full_pipeline (aegis run full_pipeline)",
            "Look at the result of the test test_checkout",
        ],
        "expected_behavior": "The test test_checkout passes.",
        "actual_behavior": "AssertionError: total 100 != 90",
        "labels": ["aegis", "full_pipeline", fp, "aegis:run:r-42"],
    }


async def test_no_failures_no_calls(make_context: MakeContext, demo: DemoServices) -> None:
    ctx = bugs_context(make_context, demo.bugalizer_url, state=RunState())
    data = await STEP.execute(ctx)
    assert (data["submitted"], data["report_ids"], data["errors"]) == (0, [], [])
    assert demo.bugalizer.calls == []


async def test_bugalizer_fields_and_extra_labels_can_be_set(
    make_context: MakeContext, demo: DemoServices
) -> None:
    params = {
        "project_id": "web-shop",
        "environment": "staging",
        "url": "https://shop.example/checkout",
        "feature_area": "checkout",
        "analysis_mode": "hold",
        "labels": ["nightly"],
    }
    await STEP.execute(bugs_context(make_context, demo.bugalizer_url, params=params))
    report = demo.bugalizer.reports[0]
    assert (report["environment"], report["url"], report["feature_area"]) == (
        "staging",
        "https://shop.example/checkout",
        "checkout",
    )
    assert (report["analysis_mode"], report["severity"]) == ("hold", "medium")
    assert report["labels"][-1] == "nightly"


async def test_api_key_reaches_bugalizer(make_context: MakeContext) -> None:
    with DemoServices(api_key="k") as demo:
        ctx = bugs_context(
            make_context, demo.bugalizer_url, api_key_env="BUG_KEY", environ={"BUG_KEY": "k"}
        )
        assert (await STEP.execute(ctx))["submitted"] == 2
        assert {call.headers["x-api-key"] for call in demo.bugalizer.calls} == {"k"}


def test_report_body_bounds_and_escapes(make_context: MakeContext) -> None:
    ctx = bugs_context(make_context, "http://svc.test")
    body = report_body(ctx, "t" * 600, {"test": "t" * 600, "message": "m" * 9000})
    assert len(body["title"]) == 500
    assert body["title"].startswith("[aegis] ttt") and body["title"].endswith("…")
    assert len(body["actual_behavior"]) == 4000
    assert "Test: " + "t" * 600 in body["description"]  # whole, past the title's cut
    hostile = report_body(ctx, "t\x1b[2J\n", {"test": "t", "message": "m"})
    assert hostile["title"] == "[aegis] t\\x1b[2J\\n failed"


@pytest.mark.parametrize("message", [None, "", "   ", 42])
def test_report_body_without_a_message(make_context: MakeContext, message: Any) -> None:
    body = report_body(bugs_context(make_context, "http://svc.test"), "t", {"message": message})
    assert body["actual_behavior"] == "The test failed."


async def test_ids_that_differ_after_the_title_cut_are_two_reports(demo: DemoServices) -> None:
    run = await run_bugs(demo, count=2)
    assert run.steps[1].status is StepStatus.SUCCEEDED
    first, second = demo.bugalizer.reports
    assert "Test: test_0[case 0]" in first["description"]
    assert "Test: test_1[case 1]" in second["description"]
    assert "Run record: https://aegis.example/#run=" + run.run_id in first["description"]


# --------------------------------------------------------------------------- exactly once


async def test_a_report_stored_before_the_connection_dropped_is_adopted(
    demo: DemoServices,
) -> None:
    demo.bugalizer.inject(POST, Fault(mode="drop", processed=True, method="POST", after=1))
    run = await run_bugs(demo, count=3, retries=1)
    bugs = run.steps[1]
    assert bugs.status is StepStatus.SUCCEEDED
    assert [a.error_kind for a in bugs.attempts] == ["connection", None]
    one_report_per_test(demo, 3)
    assert sorted(bugs.data["report_ids"]) == sorted(r["id"] for r in demo.bugalizer.reports)
    assert bugs.data["adopted"] == [demo.bugalizer.reports[1]["id"]]
    assert bugs.data["errors"][0].startswith("test_1[case 1]: ")


async def test_a_report_answered_after_the_timeout_is_adopted(demo: DemoServices) -> None:
    demo.bugalizer.inject(POST, Fault(status=None, delay=1.0, method="POST"))
    run = await run_bugs(demo, count=2, retries=1, timeout=0.3)
    bugs = run.steps[1]
    assert [a.error_kind for a in bugs.attempts] == ["timeout", None]
    one_report_per_test(demo, 2)
    assert sorted(bugs.data["report_ids"]) == sorted(r["id"] for r in demo.bugalizer.reports)
    assert bugs.data["errors"] == ["test_0[case 0]: no answer before the attempt ended"]


async def test_many_failures_under_a_short_timeout_are_each_filed_once(
    demo: DemoServices,
) -> None:
    # every attempt is cut while sending; each next one looks up what the cut one stored
    demo.bugalizer.inject(POST, Fault(status=None, delay=0.05, method="POST", times=None))
    run = await run_bugs(demo, count=40, retries=30, timeout=0.3)
    bugs = run.steps[1]
    assert bugs.status is StepStatus.SUCCEEDED and len(bugs.attempts) > 2
    one_report_per_test(demo, 40)
    assert len(bugs.data["report_ids"]) == bugs.data["submitted"] == 40


async def test_a_second_run_reuses_the_open_reports(demo: DemoServices) -> None:
    first = await run_bugs(demo, count=2)
    second = await run_bugs(demo, count=2)
    assert len(demo.bugalizer.reports) == 2
    assert second.steps[1].data["submitted"] == 0
    assert second.steps[1].data["reused"] == first.steps[1].data["report_ids"]
    assert second.steps[1].data["bug_reports"] == first.steps[1].data["bug_reports"]
    third = await run_bugs(demo, count=2, params={"on_existing": "file"})
    assert third.steps[1].data["submitted"] == 2 and len(demo.bugalizer.reports) == 4


async def test_a_closed_report_is_not_reused(demo: DemoServices) -> None:
    first = await run_bugs(demo, count=1)
    [report_id] = first.steps[1].data["report_ids"]
    with demo.bugalizer._lock:  # a person closed it meanwhile
        demo.bugalizer._reports[report_id]["status"] = "closed"
    second = await run_bugs(demo, count=1)
    assert second.steps[1].data["submitted"] == 1 and len(demo.bugalizer.reports) == 2


# --------------------------------------------------------------------------- failing


async def test_a_failed_step_records_what_it_filed(demo: DemoServices) -> None:
    demo.bugalizer.inject(POST, Fault(503, method="POST", after=1, times=None))
    run = await run_bugs(demo, count=3)
    bugs = run.steps[1]
    assert bugs.status is StepStatus.FAILED
    assert bugs.error == (
        "2 bug reports not filed yet: HTTP 503 from bugalizer: injected fault: HTTP 503"
    )
    assert bugs.data["submitted"] == 1
    assert bugs.data["report_ids"] == [demo.bugalizer.reports[0]["id"]]
    assert bugs.data["errors"] == [
        "test_1[case 1]: HTTP 503 from bugalizer: injected fault: HTTP 503",
        "test_2[case 2]: not sent after an earlier failure",
    ]


async def test_a_timed_out_last_attempt_records_what_it_filed(demo: DemoServices) -> None:
    demo.bugalizer.inject(POST, Fault(status=None, mode="stall", method="POST", after=1))
    run = await run_bugs(demo, count=3, timeout=0.3)
    bugs = run.steps[1]
    assert (bugs.status, bugs.error_kind) == (StepStatus.FAILED, "timeout")
    assert bugs.data["submitted"] == 1
    assert bugs.data["errors"] == [
        "test_1[case 1]: not sent before the attempt ended",
        "test_2[case 2]: not sent before the attempt ended",
    ]


@pytest.mark.parametrize(
    ("environ", "hint"),
    [
        ({}, "the key variable BUG_KEY is not set"),
        ({"BUG_KEY": "wrong"}, "check the key in BUG_KEY, which is set"),
    ],
)
async def test_a_wrong_key_fails_at_once_naming_the_variable(
    environ: dict[str, str], hint: str
) -> None:
    with DemoServices(api_key="right") as demo:
        run = await run_bugs(demo, environ=environ, key_env="BUG_KEY", retries=3)
        bugs = run.steps[1]
        assert len(bugs.attempts) == 1
        assert bugs.error == (
            "2 bug reports not filed yet: HTTP 401 from bugalizer: "
            f"Invalid or missing API key ({hint})"
        )
        assert len(demo.bugalizer.calls) == 1


async def test_a_key_missing_from_the_config_is_named(
    make_context: MakeContext,
) -> None:
    with DemoServices(api_key="right") as demo:
        with pytest.raises(StepError) as caught:
            await STEP.execute(bugs_context(make_context, demo.bugalizer_url))
        assert caught.value.message.endswith(
            "(service 'bugalizer' sends no key: give it an api_key_env)"
        )


async def test_unknown_project_stops_at_the_first_report(demo: DemoServices) -> None:
    run = await run_bugs(demo, retries=2, params={"project_id": "nope", "on_existing": "file"})
    bugs = run.steps[1]
    assert len(bugs.attempts) == 1 and bugs.attempts[0].status_code == 404
    assert bugs.error == (
        "2 bug reports not filed yet: HTTP 404 from bugalizer: Project 'nope' not found "
        f"(check with.project_id 'nope' and that {demo.bugalizer_url} serves /api/v1/reports)"
    )
    assert len(demo.bugalizer.calls) == 1


async def test_a_body_shape_422_stops_the_step(demo: DemoServices) -> None:
    refused = {
        "detail": [{"loc": ["body", "reporter"], "msg": "Field required", "type": "missing"}]
    }
    demo.bugalizer.inject(POST, Fault(422, payload=refused, method="POST", times=None))
    run = await run_bugs(demo, count=3, retries=2)
    bugs = run.steps[1]
    assert len(bugs.attempts) == 1
    assert bugs.error == (
        "3 bug reports not filed yet: HTTP 422 from bugalizer: body.reporter: Field required "
        "(the report's shape was refused; every report would be)"
    )
    assert len([c for c in demo.bugalizer.calls if c.method == "POST"]) == 1


async def test_a_report_refused_alone_does_not_stop_the_others(demo: DemoServices) -> None:
    demo.bugalizer.inject(POST, Fault(413, method="POST"))
    run = await run_bugs(demo, count=3)
    bugs = run.steps[1]
    assert bugs.status is StepStatus.FAILED and bugs.data["submitted"] == 2
    assert (
        bugs.error
        == "1 bug report not filed yet: HTTP 413 from bugalizer: injected fault: HTTP 413"
    )


@pytest.mark.parametrize("answer", [{"status": "submitted"}, {"id": ""}, {"id": True}, ["B1"]])
async def test_an_accepted_report_without_id_is_kind_protocol(
    make_context: MakeContext, demo: DemoServices, answer: Any
) -> None:
    demo.bugalizer.inject(POST, Fault(201, payload=answer, method="POST"))
    with pytest.raises(StepError) as caught:
        await STEP.execute(bugs_context(make_context, demo.bugalizer_url))
    assert caught.value.kind == "protocol"
    assert caught.value.message.startswith("2 bug reports not filed yet: unexpected answer")


async def test_numeric_report_ids_are_kept_as_strings(
    make_context: MakeContext, demo: DemoServices
) -> None:
    demo.bugalizer.inject(POST, Fault(201, payload={"id": 7}, method="POST", times=2))
    data = await STEP.execute(bugs_context(make_context, demo.bugalizer_url))
    assert data["report_ids"] == ["7", "7"]


async def test_unreadable_open_reports_fail_the_attempt(
    make_context: MakeContext, demo: DemoServices
) -> None:
    demo.bugalizer.inject(POST, Fault(200, payload={"reports": 3}, method="GET"))
    with pytest.raises(StepError) as caught:
        await STEP.execute(bugs_context(make_context, demo.bugalizer_url))
    assert caught.value.kind == "protocol"
    assert caught.value.data is not None
    assert caught.value.data["errors"] == [
        "test_checkout: not sent: the open reports could not be read",
        "test_login: not sent: the open reports could not be read",
    ]


def test_report_body_hides_secrets_before_cutting(make_context: MakeContext) -> None:
    from dataclasses import replace

    from aegis.secrets import Redactor

    key = "k3y-5ecret-0123456789"
    base = bugs_context(make_context, "http://bugs.test")
    ctx = replace(base, redactor=Redactor([key]))
    body = report_body(ctx, "t" * 480 + key, {"test": "t", "message": "m" * 3990 + key})
    for text in (body["title"], body["actual_behavior"], body["description"]):
        assert key[:8] not in text


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("params", "problems"),
    [
        ({"project_id": "p"}, []),
        ({"project_id": "p", "severity": "critical", "path": "/v2/reports"}, []),
        (
            {
                "project_id": "p",
                "labels": ["a"],
                "analysis_mode": "local_only",
                "on_existing": "file",
                "close_fixed": False,
                "environment": "ci",
            },
            [],
        ),
        ({}, [("project_id", "required: the bugalizer project to file reports in")]),
        ({"project_id": "  "}, [("project_id", "expected a non-empty string, got '  '")]),
        ({"project_id": 5}, [("project_id", "expected a non-empty string, got 5")]),
        (
            {"project_id": "p" * 101},
            [("project_id", "at most 100 characters (bugalizer's limit), got 101")],
        ),
        (
            {"project_id": "p", "severity": "urgent"},
            [("severity", "expected one of critical, high, medium, low, got 'urgent'")],
        ),
        (
            {"project_id": "p", "analysis_mode": "cloud", "on_existing": "merge"},
            [
                ("analysis_mode", "expected one of auto, local_only, hold, got 'cloud'"),
                ("on_existing", "expected one of skip, file, got 'merge'"),
            ],
        ),
        (
            {"project_id": "p", "labels": "x", "close_fixed": "no", "url": 3},
            [
                ("labels", "expected a list of non-empty strings, got 'x'"),
                ("close_fixed", "expected true or false, got 'no'"),
                ("url", "expected a string, got 3"),
            ],
        ),
        (
            {"project_id": "p", "path": "v2"},
            [("path", "expected a path starting with '/', got 'v2'")],
        ),
    ],
)
def test_check_params(params: dict[str, Any], problems: list[tuple[str, str]]) -> None:
    assert check_params(params) == problems


def test_step_type_metadata() -> None:
    assert STEP.name == "submit_bugs" and STEP.needs_service
    assert "on_existing" in STEP.params and "close_fixed" in STEP.params
    assert STEP.check_params is check_params
    assert STEP.description


async def test_an_attempt_cut_while_reading_open_reports_records_what_is_pending(
    demo: DemoServices,
) -> None:
    demo.bugalizer.inject(POST, Fault(status=None, mode="stall", method="GET"))
    run = await run_bugs(demo, count=2, timeout=0.3)
    bugs = run.steps[1]
    assert (bugs.error_kind, bugs.data["submitted"]) == ("timeout", 0)
    assert bugs.data["errors"] == [
        "test_0[case 0]: not sent before the attempt ended",
        "test_1[case 1]: not sent before the attempt ended",
    ]
