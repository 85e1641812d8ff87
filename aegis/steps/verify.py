"""``verify``: re-run only the tests that failed earlier in the run."""

from __future__ import annotations

from typing import Any

from aegis.steps.base import StepContext, StepType, check_path
from aegis.steps.test import DEFAULT_PATH, EXPECT, test_results

__all__ = ["STEP"]


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
    """``POST /api/runs`` ``{"verify_only": true, "tests": [...]}`` for the open failures.

    ``verified`` lists the re-run tests the service no longer reports as failing;
    ``still_failing`` the ones it does. With no open failures nothing is sent.
    """
    from aegis.steps import http

    test_ids = list(ctx.state.open_failures)
    if not test_ids:
        return _nothing_to_verify()
    body = {"verify_only": True, "tests": test_ids}
    answer = await http.request_json(ctx, "POST", DEFAULT_PATH, json=body, expect=EXPECT)
    results = test_results(ctx, answer)
    failing = {failure["test"] for failure in results["failures"]}
    return {
        **results,
        "verified": [test_id for test_id in test_ids if test_id not in failing],
        "still_failing": [test_id for test_id in test_ids if test_id in failing],
    }


STEP = StepType(
    name="verify",
    execute=execute,
    params=frozenset({"path"}),
    check_params=check_path,
    description="Re-run only the tests that failed earlier in the run and report which pass now.",
)
