"""``test``: have the service run the tests, over the routes discovered earlier if any."""

from __future__ import annotations

from typing import Any

from aegis.steps.base import StepContext, StepType, check_path

__all__ = ["DEFAULT_PATH", "EXPECT", "STEP", "test_results"]

DEFAULT_PATH = "/api/runs"
# A service that creates a run resource may answer 201 rather than 200.
EXPECT = (200, 201)


def test_results(ctx: StepContext, answer: Any) -> dict[str, Any]:
    """``total``, ``passed``, ``failed`` and ``failures`` from a test run's answer.

    Raises a ``protocol`` ``StepError`` unless the counts are integers >= 0 and
    ``failures`` is a list of objects, each naming its ``test`` by a non-empty string.
    """
    from aegis.steps import http

    body = http.require_object(ctx, answer)
    counts = {key: http.require_count(ctx, body, key) for key in ("total", "passed", "failed")}
    failures = http.require_list(ctx, body, "failures")
    for index, failure in enumerate(failures):
        test_id = failure.get("test") if isinstance(failure, dict) else None
        if not isinstance(test_id, str) or not test_id:
            raise http.protocol_error(
                ctx, f"failures[{index}] should be an object with a 'test' id, got {failure!r:.60}"
            )
    return {**counts, "failures": failures}


async def execute(ctx: StepContext) -> dict[str, Any]:
    """``POST /api/runs`` ``{"routes": [...]}`` → the four test counts."""
    from aegis.steps import http

    routes = ctx.state.routes or []
    answer = await http.request_json(
        ctx, "POST", DEFAULT_PATH, json={"routes": routes}, expect=EXPECT
    )
    return test_results(ctx, answer)


STEP = StepType(
    name="test",
    execute=execute,
    params=frozenset({"path"}),
    check_params=check_path,
    description="Have a QA service run the tests, over the routes discovered earlier if any.",
)
