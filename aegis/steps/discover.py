"""``discover``: ask the service which routes the application under test has."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aegis.steps.base import StepContext, StepType

__all__ = ["STEP", "check_path"]

DEFAULT_PATH = "/api/routes"


def check_path(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The problem with ``with.path``, if any: it must be a string starting with ``/``."""
    path = params.get("path")
    if path is None or (isinstance(path, str) and path.startswith("/")):
        return []
    return [("path", f"expected a path starting with '/', got {path!r}")]


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
