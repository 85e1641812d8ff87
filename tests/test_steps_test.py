"""The ``test`` step: POST /api/runs with the discovered routes → the four test counts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import respx
from conftest import MakeContext

from aegis.demo import DemoServices, Fault
from aegis.engine.state import RunState
from aegis.errors import StepError
from aegis.steps.discover import check_path
from aegis.steps.test import STEP

RUNS = "http://svc.test/api/runs"


async def test_runs_the_demo_suite(make_context: MakeContext, demo: DemoServices) -> None:
    data = await STEP.execute(make_context("test", demo.qaagent_url))
    assert (data["total"], data["passed"], data["failed"]) == (10, 8, 2)
    assert [f["test"] for f in data["failures"]] == [
        "test_checkout_applies_discount",
        "test_api_login_rate_limit",
    ]
    assert all(f["message"] for f in data["failures"])
    assert set(data) == {"total", "passed", "failed", "failures"}
    assert demo.qaagent.calls[-1].json == {"routes": []}


async def test_sends_the_routes_discovered_earlier(
    make_context: MakeContext, demo: DemoServices
) -> None:
    state = RunState()
    state.routes = [{"method": "GET", "path": "/"}]
    await STEP.execute(make_context("test", demo.qaagent_url, state=state))
    assert demo.qaagent.calls[-1].json == {"routes": [{"method": "GET", "path": "/"}]}


async def test_with_path_selects_a_suite(make_context: MakeContext, demo: DemoServices) -> None:
    ctx = make_context("test", demo.qaagent_url, params={"path": "/api/runs?suite=api"})
    data = await STEP.execute(ctx)
    assert (data["total"], data["failed"]) == (4, 1)


async def test_a_flaky_answer_fails_one_attempt_only(
    make_context: MakeContext, demo: DemoServices
) -> None:
    demo.qaagent.inject("/api/runs", Fault(status=502))
    ctx = make_context("test", demo.qaagent_url, service="qaagent")
    with pytest.raises(StepError) as caught:
        await STEP.execute(ctx)
    assert (caught.value.kind, caught.value.status_code) == ("http", 502)
    assert (await STEP.execute(ctx))["total"] == 10


async def test_a_slow_service_is_cut_off_by_the_engine_timeout(
    make_context: MakeContext, demo: DemoServices
) -> None:
    demo.qaagent.inject("/api/runs", Fault(status=None, delay=30))
    ctx = make_context("test", demo.qaagent_url)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(STEP.execute(ctx), 0.2)
    assert (await STEP.execute(ctx))["total"] == 10  # the client is still usable


async def test_201_is_accepted(make_context: MakeContext, respx_mock: respx.Router) -> None:
    answer = {"total": 1, "passed": 1, "failed": 0, "failures": [], "run_id": "r"}
    respx_mock.post(RUNS).respond(201, json=answer)
    assert await STEP.execute(make_context("test")) == {
        "total": 1,
        "passed": 1,
        "failed": 0,
        "failures": [],
    }


GOOD: dict[str, Any] = {"total": 2, "passed": 1, "failed": 1, "failures": [{"test": "t"}]}


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"total": None}, "'total' should be an integer >= 0, got null"),
        ({"passed": "1"}, "'passed' should be an integer >= 0, got '1'"),
        ({"failed": False}, "'failed' should be an integer >= 0, got False"),
        ({"failures": "t"}, "'failures' should be a list, got 't'"),
        ({"failures": ["t"]}, "failures[0] should be an object with a 'test' id, got 't'"),
        ({"failures": [{"test": "a"}, {"message": "m"}]},
         "failures[1] should be an object with a 'test' id, got {'message': 'm'}"),
        ({"failures": [{"test": ""}]}, "failures[0] should be an object with a 'test' id"),
        ({"failures": [{"test": 3}]}, "failures[0] should be an object with a 'test' id"),
    ],
)  # fmt: skip
async def test_wrong_shape_is_kind_protocol(
    make_context: MakeContext, respx_mock: respx.Router, changes: dict[str, Any], problem: str
) -> None:
    respx_mock.post(RUNS).respond(200, json={**GOOD, **changes})
    with pytest.raises(StepError) as caught:
        await STEP.execute(make_context("test"))
    assert caught.value.kind == "protocol"
    assert caught.value.message.startswith(f"unexpected answer from svc: {problem}")


async def test_a_missing_count_is_kind_protocol(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    respx_mock.post(RUNS).respond(200, json={"passed": 1, "failed": 0, "failures": []})
    with pytest.raises(StepError, match="'total' should be an integer >= 0, got nothing"):
        await STEP.execute(make_context("test"))


def test_step_type_metadata() -> None:
    assert (STEP.name, STEP.needs_service, STEP.params) == ("test", True, frozenset({"path"}))
    assert STEP.check_params is check_path
    assert STEP.description
