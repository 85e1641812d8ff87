"""The ``submit_bugs`` step: one bugalizer report per open failure, never one filed twice."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import respx
from conftest import MakeContext

from aegis.demo import DemoServices, Fault
from aegis.engine.state import RunState
from aegis.errors import StepError
from aegis.steps.base import StepContext
from aegis.steps.submit_bugs import STEP, check_params, report_body

REPORTS = "http://svc.test/api/v1/reports"
PARAMS = {"project_id": "web-shop", "severity": "high"}


def open_failures(*failures: dict[str, Any]) -> RunState:
    state = RunState()
    for failure in failures:
        state.open_failures[failure["test"]] = failure
    return state


TWO = open_failures(
    {"test": "test_checkout", "message": "AssertionError: total 100 != 90"},
    {"test": "test_login", "message": "TimeoutError: 5.2 s"},
)


def bugs_context(make_context: MakeContext, url: str = "http://svc.test", **kw: Any) -> StepContext:
    kw.setdefault("state", TWO)
    kw.setdefault("params", PARAMS)
    return make_context("submit_bugs", url, service="bugalizer", **kw)


def filed(report_id: str) -> httpx.Response:
    return httpx.Response(201, json={"id": report_id, "status": "new"})


async def test_files_one_report_per_failure(make_context: MakeContext, demo: DemoServices) -> None:
    ctx = bugs_context(make_context, demo.bugalizer_url, workflow="full_pipeline", run_id="r-42")
    data = await STEP.execute(ctx)
    assert data == {
        "submitted": 2,
        "report_ids": ["BUG-0001", "BUG-0002"],
        "bug_reports": {"test_checkout": "BUG-0001", "test_login": "BUG-0002"},
        "errors": [],
    }
    first = demo.bugalizer.calls[0].json
    assert first == {
        "project_id": "web-shop",
        "title": "[aegis] test_checkout failed",
        "description": "AssertionError: total 100 != 90\n\nWorkflow: full_pipeline\nRun: r-42",
        "reporter": "aegis",
        "severity": "high",
        "steps_to_reproduce": [
            "Run the Aegis workflow 'full_pipeline' (aegis run full_pipeline)",
            "Look at the result of test 'test_checkout'",
        ],
        "expected_behavior": "Test test_checkout passes.",
        "actual_behavior": "AssertionError: total 100 != 90",
        "labels": ["aegis", "full_pipeline"],
    }
    assert [r["title"] for r in demo.bugalizer.reports] == [
        "[aegis] test_checkout failed",
        "[aegis] test_login failed",
    ]


async def test_no_failures_no_reports(make_context: MakeContext, demo: DemoServices) -> None:
    ctx = bugs_context(make_context, demo.bugalizer_url, state=RunState())
    assert await STEP.execute(ctx) == {
        "submitted": 0,
        "report_ids": [],
        "bug_reports": {},
        "errors": [],
    }
    assert demo.bugalizer.calls == []


async def test_severity_defaults_to_medium(make_context: MakeContext, demo: DemoServices) -> None:
    ctx = bugs_context(make_context, demo.bugalizer_url, params={"project_id": "web-shop"})
    await STEP.execute(ctx)
    assert {r["severity"] for r in demo.bugalizer.reports} == {"medium"}


async def test_api_key_reaches_bugalizer(make_context: MakeContext) -> None:
    with DemoServices(api_key="k") as demo:
        ctx = bugs_context(
            make_context, demo.bugalizer_url, api_key_env="BUG_KEY", environ={"BUG_KEY": "k"}
        )
        assert (await STEP.execute(ctx))["submitted"] == 2
        assert demo.bugalizer.calls[0].headers["x-api-key"] == "k"


async def test_unknown_project_stops_at_the_first_report(
    make_context: MakeContext, demo: DemoServices
) -> None:
    ctx = bugs_context(make_context, demo.bugalizer_url, params={"project_id": "nope"})
    with pytest.raises(StepError) as caught:
        await STEP.execute(ctx)
    assert (caught.value.kind, caught.value.status_code) == ("http", 404)
    assert caught.value.message == (
        "2 bug reports not filed yet: HTTP 404 from bugalizer: Project 'nope' not found"
    )
    assert len(demo.bugalizer.calls) == 1


async def test_a_retry_resends_only_what_was_not_accepted(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    route = respx_mock.post(REPORTS)
    route.side_effect = [
        filed("B1"),
        httpx.Response(503, headers={"Retry-After": "3"}, json={"detail": "busy"}),
        filed("B2"),
    ]
    ctx = bugs_context(make_context)
    with pytest.raises(StepError) as caught:
        await STEP.execute(ctx)
    error = caught.value
    assert (error.kind, error.status_code, error.retry_after) == ("http", 503, 3.0)
    assert error.message == "1 bug report not filed yet: HTTP 503 from bugalizer: busy"

    data = await STEP.execute(ctx)  # the engine's next attempt: same context, same scratch

    assert data["report_ids"] == ["B1", "B2"]
    assert data["errors"] == ["test_login: HTTP 503 from bugalizer: busy"]
    titles = [json.loads(call.request.content)["title"] for call in route.calls]
    assert titles == [
        "[aegis] test_checkout failed",
        "[aegis] test_login failed",
        "[aegis] test_login failed",
    ]


async def test_a_rejected_report_does_not_stop_the_others(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    invalid = {"detail": [{"loc": ["body", "title"], "msg": "Field required", "type": "missing"}]}
    route = respx_mock.post(REPORTS)
    route.side_effect = [httpx.Response(422, json=invalid), filed("B2")]
    ctx = bugs_context(make_context)
    with pytest.raises(StepError) as caught:
        await STEP.execute(ctx)
    assert caught.value.message == (
        "1 bug report not filed yet: HTTP 422 from bugalizer: body.title: Field required"
    )
    assert ctx.scratch["accepted"] == {"test_login": "B2"}


async def test_a_timeout_keeps_what_was_accepted_before_it(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    never = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        await never.wait()
        raise AssertionError("unreachable")

    route = respx_mock.post(REPORTS)
    route.side_effect = [filed("B1"), hang]  # type: ignore[list-item]
    ctx = bugs_context(make_context)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(STEP.execute(ctx), 0.1)

    assert ctx.scratch["accepted"] == {"test_checkout": "B1"}

    route.side_effect = [filed("B2")]
    assert (await STEP.execute(ctx))["report_ids"] == ["B1", "B2"]
    assert json.loads(route.calls.last.request.content)["title"] == "[aegis] test_login failed"


@pytest.mark.parametrize(
    "answer",
    [{"status": "new"}, {"id": ""}, {"id": True}, {"id": None}, ["B1"]],
)
async def test_an_accepted_report_without_id_is_kind_protocol(
    make_context: MakeContext, respx_mock: respx.Router, answer: Any
) -> None:
    respx_mock.post(REPORTS).respond(201, json=answer)
    with pytest.raises(StepError) as caught:
        await STEP.execute(bugs_context(make_context))
    assert caught.value.kind == "protocol"
    assert caught.value.message.startswith("2 bug reports not filed yet: unexpected answer")


async def test_numeric_report_ids_are_kept_as_strings(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    respx_mock.post(REPORTS).side_effect = [
        httpx.Response(201, json={"id": 7}),
        httpx.Response(201, json={"id": 8}),
    ]
    assert (await STEP.execute(bugs_context(make_context)))["report_ids"] == ["7", "8"]


def test_report_body_bounds_title_and_message(make_context: MakeContext) -> None:
    ctx = bugs_context(make_context)
    body = report_body(ctx, "t" * 600, {"test": "t" * 600, "message": "m" * 9000})
    assert len(body["title"]) == 500
    assert body["title"].startswith("[aegis] ttt") and body["title"].endswith("…")
    assert len(body["actual_behavior"]) == 4000


@pytest.mark.parametrize("message", [None, "", "   ", 42])
def test_report_body_without_a_message(make_context: MakeContext, message: Any) -> None:
    body = report_body(bugs_context(make_context), "t", {"test": "t", "message": message})
    assert body["actual_behavior"] == "The test failed."


async def test_reports_are_accepted_by_the_real_validation(
    make_context: MakeContext, demo: DemoServices
) -> None:
    long_id = "test_" + "x" * 700
    ctx = bugs_context(make_context, demo.bugalizer_url, state=open_failures({"test": long_id}))
    assert (await STEP.execute(ctx))["submitted"] == 1


async def test_a_failing_bugalizer_can_be_retried_over_http(
    make_context: MakeContext, demo: DemoServices
) -> None:
    demo.bugalizer.inject("/api/v1/reports", Fault(status=500, times=1))
    ctx = bugs_context(make_context, demo.bugalizer_url)
    with pytest.raises(StepError):
        await STEP.execute(ctx)
    assert (await STEP.execute(ctx))["submitted"] == 2
    assert len(demo.bugalizer.reports) == 2


@pytest.mark.parametrize(
    ("params", "problems"),
    [
        ({"project_id": "p"}, []),
        ({"project_id": "p", "severity": "critical", "path": "/v2/reports"}, []),
        ({}, [("project_id", "required: the bugalizer project to file reports in")]),
        ({"project_id": "  "}, [("project_id", "expected a non-empty string, got '  '")]),
        ({"project_id": 5}, [("project_id", "expected a non-empty string, got 5")]),
        (
            {"project_id": "p", "severity": "urgent"},
            [("severity", "expected one of critical, high, medium, low, got 'urgent'")],
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
    assert STEP.params == {"path", "project_id", "severity"}
    assert STEP.check_params is check_params
    assert STEP.description
