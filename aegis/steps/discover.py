"""``discover``: ask the service which routes the application under test has."""

from __future__ import annotations

from typing import Any

from aegis.steps.base import StepContext, StepType, check_path

__all__ = ["STEP"]

DEFAULT_PATH = "/api/routes"


async def execute(ctx: StepContext) -> dict[str, Any]:
    """``GET /api/routes`` → ``routes`` and ``route_count``."""
    from aegis.steps import http

    body = http.require_object(ctx, await http.request_json(ctx, "GET", DEFAULT_PATH))
    routes = http.require_list(ctx, body, "routes")
    return {"routes": routes, "route_count": len(routes)}


STEP = StepType(
    name="discover",
    execute=execute,
    params=frozenset({"path"}),
    check_params=check_path,
    description="Ask a QA service for the routes of the application under test.",
)
