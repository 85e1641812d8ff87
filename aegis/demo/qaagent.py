"""The reference qaagent: discovers routes and runs (or re-runs) a fixed set of tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aegis.demo.service import (
    DEFAULT_HOST,
    BadRequest,
    DemoService,
    Handler,
    Request,
    Response,
    error_response,
    invalid,
)
from aegis.demo.started_runs import StartedRuns

__all__ = ["ROUTES", "TESTS", "DemoTest", "QaAgent"]


@dataclass(frozen=True)
class DemoTest:
    """A test the demo qaagent knows. ``message`` is set for a test that fails on a full
    run; ``flaky`` tests pass when re-run alone (``verify_only``)."""

    id: str
    suite: str
    route: str
    message: str | None = None
    flaky: bool = False


ROUTES: tuple[dict[str, str], ...] = (
    {"method": "GET", "path": "/", "name": "home", "risk": "low"},
    {"method": "GET", "path": "/api/products", "name": "list products", "risk": "low"},
    {"method": "GET", "path": "/api/products/{id}", "name": "product detail", "risk": "low"},
    {"method": "POST", "path": "/api/cart", "name": "add to cart", "risk": "medium"},
    {"method": "POST", "path": "/api/checkout", "name": "checkout", "risk": "high"},
    {"method": "POST", "path": "/api/login", "name": "login", "risk": "high"},
)

TESTS: tuple[DemoTest, ...] = (
    DemoTest("test_home_page_loads", "web", "/"),
    DemoTest("test_product_list_renders", "web", "/api/products"),
    DemoTest("test_product_detail_renders", "web", "/api/products/{id}"),
    DemoTest("test_cart_add_item", "web", "/api/cart"),
    DemoTest(
        "test_checkout_applies_discount",
        "web",
        "/api/checkout",
        message="AssertionError: expected total 90.00 with code SAVE10, got 100.00",
    ),
    DemoTest("test_login_redirects_home", "web", "/api/login"),
    DemoTest("test_api_products_json", "api", "/api/products"),
    DemoTest(
        "test_api_login_rate_limit",
        "api",
        "/api/login",
        message="TimeoutError: POST /api/login took 5.2 s (limit 2 s)",
        flaky=True,
    ),
    DemoTest("test_api_cart_requires_session", "api", "/api/cart"),
    DemoTest("test_api_checkout_validates_card", "api", "/api/checkout"),
)


class QaAgent(DemoService):
    """The demo QA agent: ``GET /api/routes`` and ``POST /api/runs`` (also ``verify_only``),
    and the start-and-poll API of ``aegis.demo.started_runs``."""

    name = "qaagent"

    def __init__(
        self, host: str = DEFAULT_HOST, port: int = 0, *, api_key: str | None = None
    ) -> None:
        super().__init__(host, port, api_key=api_key)
        self._runs = 0
        self.started = StartedRuns(self._full_run, self._rerun)

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {"/api/routes": {"GET": self._routes}, "/api/runs": {"POST": self._run}}

    def _dispatch(self, request: Request) -> Response:
        # the start-and-poll API (aegis/demo/started_runs.py) has paths with parameters
        if not self.started.handles(request.path):
            return super()._dispatch(request)
        if not self._authorized(request):
            return error_response(401, "Invalid or missing API key")
        return self.started.answer(request)

    def _routes(self, request: Request) -> Response:
        return Response(200, {"routes": [dict(route) for route in ROUTES]})

    def _run(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise BadRequest(422, invalid(["body"], "Input should be an object", "dict_type"))
        if body.get("verify_only"):
            return self._answer(self._rerun(body.get("tests")))
        routes = body.get("routes", [])
        if not isinstance(routes, list):
            raise BadRequest(
                422, invalid(["body", "routes"], "Input should be a valid list", "list_type")
            )
        return self._answer(self._full_run(request.query.get("suite", [None])[0]))

    def _full_run(self, suite: str | None) -> list[tuple[str, str | None]]:
        chosen = [test for test in TESTS if suite in (None, test.suite)]
        if not chosen:
            raise BadRequest(422, {"detail": f"unknown suite {suite!r}"})
        return [(test.id, test.message) for test in chosen]

    def _rerun(self, test_ids: Any) -> list[tuple[str, str | None]]:
        if not isinstance(test_ids, list) or not all(isinstance(t, str) for t in test_ids):
            raise BadRequest(
                422, invalid(["body", "tests"], "Input should be a list of test ids", "list_type")
            )
        known = {test.id: test for test in TESTS}
        outcomes: list[tuple[str, str | None]] = []
        for test_id in test_ids:
            test = known.get(test_id)
            if test is None:
                outcomes.append((test_id, "no such test"))
            else:
                outcomes.append((test_id, None if test.flaky else test.message))
        return outcomes

    def _answer(self, outcomes: list[tuple[str, str | None]]) -> Response:
        with self._lock:
            self._runs += 1
            run_id = f"run-{self._runs}"
        failures = [{"test": t, "message": m} for t, m in outcomes if m is not None]
        return Response(
            200,
            {
                "run_id": run_id,
                "total": len(outcomes),
                "passed": len(outcomes) - len(failures),
                "failed": len(failures),
                "failures": failures,
            },
        )
