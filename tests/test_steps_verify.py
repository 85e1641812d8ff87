"""The ``verify`` step: re-run only the earlier failures and say which pass now."""

from __future__ import annotations

import pytest
import respx
from conftest import MakeContext

from aegis.demo import DemoServices
from aegis.engine.state import RunState
from aegis.errors import StepError
from aegis.records import StepResult, StepStatus
from aegis.steps import test, verify
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
    assert (STEP.name, STEP.needs_service, STEP.params) == ("verify", True, frozenset({"path"}))
    assert STEP.check_params is not None and STEP.check_params({"path": "x"})
    assert verify.STEP.description
