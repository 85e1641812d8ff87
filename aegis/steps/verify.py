"""``verify``: re-run only the tests that failed earlier in the run.

Three ways to re-run them, chosen by ``with:``:

- none of the keys below: the Aegis contract, ``POST /api/runs`` with ``verify_only``;
- ``run`` or ``shell`` (with ``junit``): a local program, as a ``command`` step runs it,
  given the ids with ``${{ failures[].test }}``;
- ``tests`` (with ``method``, ``path``, …): any request, as an ``http`` step sends it.

Whichever it is, ``verified`` lists the re-run tests no longer reported failing and
``still_failing`` the ones that are. With no open failures nothing runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aegis.steps import command, http_request
from aegis.steps.base import StepContext, StepType, check_path
from aegis.steps.test import DEFAULT_PATH, EXPECT, test_results

__all__ = ["STEP", "check_params", "form"]


def form(params: Mapping[str, Any]) -> str:
    """``command``, ``http`` or ``contract``: how a ``verify`` step re-runs the tests."""
    if "run" in params or "shell" in params:
        return "command"
    if "tests" in params or "method" in params:
        return "http"
    return "contract"


def check_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems with ``with:``, for the form its keys choose."""
    chosen = form(params)
    if chosen == "contract":
        return check_path(params)
    own = command.PARAMS if chosen == "command" else http_request.PARAMS
    way = "running a program" if chosen == "command" else "a request"
    problems = [
        (key, f"not used when verify re-runs the tests by {way}")
        for key in params
        if key not in own
    ]
    if chosen == "command":
        problems += command.check_params(params)
        if "junit" not in params:
            problems.append(
                ("junit", "required with run/shell: the JUnit files to read results from")
            )
        return problems
    return (
        problems
        + http_request.check_params(params)
        + http_request.check_tests(params.get("tests"), required=True)
    )


def _nothing_to_verify() -> dict[str, Any]:
    return {
        "total": 0,
        "passed": 0,
        "failed": 0,
        "failures": [],
        "verified": [],
        "still_failing": [],
    }


async def execute(ctx: StepContext) -> dict[str, Any]:
    """Re-run the open failures the chosen way; add ``verified`` and ``still_failing``."""
    test_ids = list(ctx.state.open_failures)
    if not test_ids:
        return _nothing_to_verify()
    chosen = form(ctx.spec.params)
    if chosen == "command":
        results = await command.run_command(ctx)
    elif chosen == "http":
        results = await http_request.call(ctx, tests_required=True)
    else:
        results = await _contract(ctx, test_ids)
    failing = {str(failure["test"]) for failure in results["failures"]}
    return {
        **results,
        "verified": [test_id for test_id in test_ids if test_id not in failing],
        "still_failing": [test_id for test_id in test_ids if test_id in failing],
    }


async def _contract(ctx: StepContext, test_ids: list[str]) -> dict[str, Any]:
    """``POST /api/runs`` ``{"verify_only": true, "tests": [...]}``."""
    from aegis.steps import http

    body = {"verify_only": True, "tests": test_ids}
    answer = await http.request_json(ctx, "POST", DEFAULT_PATH, json=body, expect=EXPECT)
    return test_results(ctx, answer)


STEP = StepType(
    name="verify",
    execute=execute,
    needs_service=lambda params: form(params) != "command",
    params=frozenset({"path"}) | command.PARAMS | http_request.PARAMS,
    check_params=check_params,
    description="Re-run only the tests that failed earlier in the run and report which pass now.",
)
