"""The ``discover`` step: GET /api/routes → routes and route_count."""

from __future__ import annotations

from typing import Any

import pytest
import respx
from conftest import MakeContext

from aegis.demo import ROUTES, DemoServices, Fault
from aegis.errors import StepError
from aegis.steps.discover import STEP, check_path


async def test_discovers_the_demo_routes(make_context: MakeContext, demo: DemoServices) -> None:
    data = await STEP.execute(make_context("discover", demo.qaagent_url, service="qaagent"))
    assert data == {"routes": [dict(route) for route in ROUTES], "route_count": len(ROUTES)}
    [call] = demo.qaagent.calls
    assert (call.method, call.path, call.status) == ("GET", "/api/routes", 200)


async def test_with_path_is_sent_as_given(make_context: MakeContext, demo: DemoServices) -> None:
    ctx = make_context("discover", demo.qaagent_url, params={"path": "/api/routes?depth=2"})
    await STEP.execute(ctx)
    assert (demo.qaagent.calls[-1].path, demo.qaagent.calls[-1].query) == (
        "/api/routes",
        "depth=2",
    )


async def test_api_key_from_the_environment(make_context: MakeContext) -> None:
    with DemoServices(api_key="k3y") as demo:
        url = demo.qaagent_url
        ok = make_context("discover", url, api_key_env="QA_KEY", environ={"QA_KEY": "k3y"})
        assert (await STEP.execute(ok))["route_count"] == len(ROUTES)
        unset = make_context("discover", url, service="qaagent", api_key_env="QA_KEY")
        with pytest.raises(StepError) as caught:
            await STEP.execute(unset)
    assert (caught.value.kind, caught.value.status_code) == ("http", 401)
    assert caught.value.message == "HTTP 401 from qaagent: Invalid or missing API key"


async def test_service_error_carries_status_and_retry_after(
    make_context: MakeContext, demo: DemoServices
) -> None:
    demo.qaagent.inject("/api/routes", Fault(status=503, retry_after=2))
    ctx = make_context("discover", demo.qaagent_url, service="qaagent")
    with pytest.raises(StepError) as caught:
        await STEP.execute(ctx)
    error = caught.value
    assert (error.kind, error.status_code, error.retry_after) == ("http", 503, 2.0)
    assert error.message == "HTTP 503 from qaagent: injected fault: HTTP 503"
    assert (await STEP.execute(ctx))["route_count"] == len(ROUTES)  # the fault was for one call


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([], "the answer should be a JSON object, got []"),
        ({"paths": []}, "'routes' should be a list, got nothing (missing)"),
        ({"routes": {"a": 1}}, "'routes' should be a list, got {'a': 1}"),
    ],
)
async def test_wrong_shape_is_kind_protocol(
    make_context: MakeContext, respx_mock: respx.Router, body: Any, problem: str
) -> None:
    respx_mock.get("http://svc.test/api/routes").respond(200, json=body)
    with pytest.raises(StepError) as caught:
        await STEP.execute(make_context("discover"))
    assert caught.value.kind == "protocol"
    assert caught.value.message == f"unexpected answer from svc: {problem}"


@pytest.mark.parametrize(
    ("params", "problems"),
    [
        ({}, []),
        ({"path": "/api/routes?x=1"}, []),
        ({"path": "api/routes"}, [("path", "expected a path starting with '/', got 'api/routes'")]),
        ({"path": 7}, [("path", "expected a path starting with '/', got 7")]),
    ],
)
def test_check_path(params: dict[str, Any], problems: list[tuple[str, str]]) -> None:
    assert check_path(params) == problems


def test_step_type_metadata() -> None:
    assert (STEP.name, STEP.needs_service, STEP.params) == ("discover", True, frozenset({"path"}))
    assert STEP.check_params is check_path
    assert STEP.description
