"""The ``verify`` step: re-run only the earlier failures and say which pass now."""

from __future__ import annotations

from pathlib import Path

import pytest
import respx
from conftest import MakeContext

from aegis.demo import DemoServices
from aegis.engine.state import RunState
from aegis.errors import StepError
from aegis.records import StepResult, StepStatus
from aegis.steps import command, http_request, test, verify
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
