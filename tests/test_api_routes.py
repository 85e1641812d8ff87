"""The route table, parameters and handlers, without a server.

Matching has three outcomes (404, 405 with Allow, a match); parameters are validated from
their declarations; handlers are called with stand-ins for the loop, the run manager and
the health cache, so each answer's shape is checked without threads or sockets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import textwrap
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from aegis import __version__
from aegis.api.handlers import (
    LANDING_FILES,
    ROUTES,
    ApiContext,
    load_landing,
    sse_message,
)
from aegis.api.routes import (
    MAX_INTEGER,
    Answer,
    HttpError,
    Match,
    Param,
    Request,
    Response,
    Route,
    Router,
    dump_json,
    json_response,
)
from aegis.config import parse_config
from aegis.config.model import Config
from aegis.errors import Conflict, NotFound
from aegis.events import EventBus, EventLog
from aegis.records import Run, RunStatus, StepResult, StepStatus, Verdict
from aegis.services import Health
from aegis.steps.registry import default_step_types

T = TypeVar("T")

CONFIG = """
aegis: {name: Test Aegis, tagline: Tests all the way down}
services:
  qaagent:
    url: "http://user:hunter2@qa.test"
    name: QA Agent
    description: finds routes
    features: [Discovery]
    api_key_env: QA_KEY
  bugalizer: {url: "http://bugs.test"}
workflows:
  smoke:
    name: Smoke
    steps:
      - {type: discover, service: qaagent, retries: 2, retry_on: [http]}
      - {type: report, condition: always}
  nightly:
    timeout: 60
    steps: [{type: test, service: qaagent, parallel: true, with: {path: /api/runs}}]
auth: {api_key: s3cret}
"""


def make_config(tmp_path: Path, text: str = CONFIG) -> Config:
    return parse_config(
        textwrap.dedent(text),
        file="test.yaml",
        base_dir=tmp_path,
        environ={},
        step_types=default_step_types(),
    )


def ok(handler: Any) -> Route:
    return Route("GET", "/x", handler, "x", (Answer(200, "fine"),))


def nothing(ctx: Any, request: Request) -> Response:
    return json_response(200, {})


# --------------------------------------------------------------------------- routing


@pytest.fixture
def router() -> Router:
    return Router(ROUTES)


def test_literal_paths_match(router: Router) -> None:
    found = router.match("GET", "/api/workflows")
    assert found.route.name == "list_workflows" and found.path_params == {}


def test_templates_match_with_decoded_parameters(router: Router) -> None:
    found = router.match("GET", "/api/workflows/smoke%2Dtest/history")
    assert found == Match(found.route, {"key": "smoke-test"})
    assert found.route.name == "workflow_history"
    assert router.match("POST", "/api/runs/abc123/cancel").path_params == {"run_id": "abc123"}


def test_head_is_answered_by_the_get_route(router: Router) -> None:
    assert router.match("HEAD", "/health").route.name == "health"


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/api/workflows/",
        "/api/workflows//history",
        "/api/runs/a/b",
        "/health/",
        "/../health",
        "/api/../health",
        "/%2e%2e/aegis/landing/app.js",
        "/static/../../etc/passwd",
        "\\..\\app.js",
        "/index.html/..",
    ],
)
def test_unknown_paths_are_404(router: Router, path: str) -> None:
    with pytest.raises(HttpError) as caught:
        router.match("GET", path)
    assert caught.value.status == 404 and caught.value.code == "not_found"
    assert router.allowed(path) == []


def test_a_known_path_with_another_method_is_405_with_allow(router: Router) -> None:
    with pytest.raises(HttpError) as caught:
        router.match("DELETE", "/api/runs/abc")
    assert caught.value.status == 405
    assert caught.value.headers == {"Allow": "GET, HEAD"}
    with pytest.raises(HttpError) as post_only:
        router.match("GET", "/api/workflows/smoke/run")
    assert post_only.value.headers == {"Allow": "POST"}
    assert router.allowed("/api/runs/abc/cancel") == ["POST"]


def test_a_table_with_a_route_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        Router([ok(nothing), ok(nothing)])


def test_template_names_must_be_declared() -> None:
    undeclared = Route("GET", "/x/{id}", nothing, "x", (Answer(200, "fine"),))
    with pytest.raises(ValueError, match="path parameters"):
        Router([undeclared])


def test_every_route_of_the_table_has_a_unique_name_and_compiles() -> None:
    names = [route.name for route in ROUTES]
    assert len(names) == len(set(names))
    assert len(Router(ROUTES).routes) == len(ROUTES)
    assert {r.path for r in ROUTES if r.method == "POST"} == {
        "/api/workflows/{key}/run",
        "/api/runs/{run_id}/cancel",
        "/api/runs/{run_id}/rerun",
    }
    assert all(route.auth == (route.method == "POST") for route in ROUTES)


# ------------------------------------------------------------------------ parameters


LIMIT = Param("limit", type="integer", minimum=1, maximum=1000, default=20)
WAIT = Param("wait", type="number", exclusive_minimum=0, maximum=300)


@pytest.mark.parametrize("raw", ["0", "1001", "-1", "+5", "1_0", "5.0", " 5", "1e3", "\u0665", ""])
def test_integers_are_plain_decimals_within_bounds(raw: str) -> None:
    with pytest.raises(HttpError) as caught:
        LIMIT.parse(raw)
    assert caught.value.status == 400
    assert caught.value.message == "query parameter 'limit' must be an integer from 1 to 1000"


@pytest.mark.parametrize(
    "raw",
    ["0", "-1", "300.5", "nan", "inf", "1e3", "1e999", "1e-999", "0x10", "abc", "+5", "1_0", ""],
)
def test_numbers_reject_out_of_range_and_non_decimals(raw: str) -> None:
    with pytest.raises(HttpError, match="must be a number above 0 and at most 300"):
        WAIT.parse(raw)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        # as Python and JavaScript print floats: many decimals, exponents (found by the fuzz)
        ("74.97306956744937", 74.97306956744937),
        ("0.30000000000000004", 0.30000000000000004),
        ("1e-05", 1e-05),
        ("5e-324", 5e-324),
        ("1E2", 100.0),
        ("2.5e+1", 25.0),
    ],
)
def test_numbers_as_languages_print_them(raw: str, value: float) -> None:
    assert WAIT.parse(raw) == value


def test_integers_have_a_bound_even_when_none_is_declared() -> None:
    # Found by the fuzz: 10**22 was refused with 400 while the document allowed it.
    offset = Param("offset", type="integer", minimum=0)
    assert offset.parse(str(MAX_INTEGER)) == MAX_INTEGER
    for raw in [str(MAX_INTEGER + 1), "1" * 65, "9" * 40]:
        with pytest.raises(HttpError, match=f"an integer from 0 to {MAX_INTEGER}"):
            offset.parse(raw)
    assert offset.schema() == {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER}
    assert offset.parse("0007") == 7
    free = Param("n", type="integer")
    assert free.schema()["minimum"] == -MAX_INTEGER and free.parse("-12") == -12


def test_header_values_without_surrounding_blanks() -> None:
    key = Param("Idempotency-Key", "header", max_length=3)
    assert key.parse(" \tabc ") == "abc"
    with pytest.raises(HttpError, match="must be a non-empty string"):
        key.parse(" \t ")
    assert key.schema() == {"type": "string", "minLength": 1, "maxLength": 3, "pattern": "[^ \t]"}
    resume = Param("Last-Event-ID", "header", type="integer", minimum=0)
    assert resume.parse(" 12 ") == 12


def test_good_values_parse() -> None:
    assert LIMIT.parse("1000") == 1000
    assert WAIT.parse("0.5") == 0.5 and WAIT.parse("300") == 300.0
    status = Param("status", enum=("queued", "running"))
    assert status.parse("queued") == "queued"
    with pytest.raises(HttpError, match="must be one of queued, running"):
        status.parse("done")
    key = Param("Idempotency-Key", "header", max_length=3)
    assert key.parse("abc") == "abc"
    with pytest.raises(HttpError, match="header parameter 'Idempotency-Key' must be a non-empty"):
        key.parse("abcd")
    with pytest.raises(HttpError, match=f"an integer from 0 to {MAX_INTEGER}"):
        Param("after", type="integer", minimum=0).parse("-3")
    with pytest.raises(HttpError, match=r"a number above 0$"):
        Param("x", type="number", exclusive_minimum=0).parse("0")


def test_parameter_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="location"):
        Param("x", "cookie")
    with pytest.raises(ValueError, match="type"):
        Param("x", type="boolean")


def test_route_parse_fills_defaults_and_refuses_repeats_and_missing_values() -> None:
    route = Route(
        "GET",
        "/x",
        nothing,
        "x",
        (Answer(200, "fine"),),
        params=(LIMIT, Param("q", required=True), Param("X-Thing", "header")),
    )
    request = Request("GET", "/x", {"q": ["hello"]}, {"X-Thing": "yes"})
    assert route.parse(request) == {"limit": 20, "q": "hello", "X-Thing": "yes"}
    with pytest.raises(HttpError, match="'q' is required"):
        route.parse(Request("GET", "/x", {}))
    with pytest.raises(HttpError, match="given more than once"):
        route.parse(Request("GET", "/x", {"q": ["a", "b"]}))


def test_schemas_of_parameters() -> None:
    assert LIMIT.schema() == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20}
    assert WAIT.schema() == {"type": "number", "maximum": 300, "exclusiveMinimum": 0}
    assert Param("s", enum=("a",)).schema() == {"type": "string", "enum": ["a"]}
    # the server refuses an empty string, so the document says so (found by the fuzz)
    assert Param("s").schema() == {"type": "string", "minLength": 1}


def test_errors_and_json() -> None:
    error = HttpError(418)
    assert (error.code, error.message) == ("http_418", "I'm a Teapot")
    assert HttpError(599).message == "Error"
    body = json.loads(HttpError(500, "boom", extra={"error_id": "x1"}).response().body)
    assert body == {
        "error": {"status": 500, "code": "internal_error", "message": "boom", "error_id": "x1"}
    }
    assert dump_json({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    with pytest.raises(ValueError):
        dump_json(float("nan"))


# ------------------------------------------------------------------ handler stand-ins


class FakeLoop:
    """Runs each coroutine to its end on a fresh loop, in the calling thread."""

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        self.timeouts.append(timeout)
        return asyncio.run(coro)


def a_run(run_id: str, workflow: str = "smoke", status: RunStatus = RunStatus.QUEUED) -> Run:
    finished = status.finished
    steps = (
        StepResult("discover", "discover", "qaagent", StepStatus.SUCCEEDED, 5.0, {"routes": []}),
    )
    return Run(
        run_id=run_id,
        workflow=workflow,
        status=status,
        started_at="2026-01-01T10:00:00.000Z",
        trigger="api",
        steps=steps if finished else (),
        verdict=Verdict.PASSED if finished else None,
        finished_at="2026-01-01T10:00:01.000Z" if finished else None,
        duration_ms=1000.0 if finished else None,
    )


class FakeRuns:
    def __init__(self, finish_on_wait: bool = True) -> None:
        self.runs: dict[str, Run] = {}
        self.keys: dict[str, str] = {}
        self.finish_on_wait = finish_on_wait
        self.listed: list[tuple[Any, ...]] = []

    async def submit(
        self,
        workflow: str,
        *,
        idempotency_key: str | None = None,
        trigger: str = "api",
        params: Any = None,
    ) -> tuple[Run, bool]:
        if idempotency_key in self.keys:
            return self.runs[self.keys[idempotency_key]], False
        run = a_run(f"run{len(self.runs) + 1:04d}", workflow)
        self.runs[run.run_id] = run
        if idempotency_key:
            self.keys[idempotency_key] = run.run_id
        return run, True

    async def wait(self, run_id: str, timeout: float) -> Run:
        if self.finish_on_wait:
            run = self.runs[run_id]
            self.runs[run_id] = a_run(run_id, run.workflow, RunStatus.SUCCEEDED)
        return self.runs[run_id]

    async def cancel(self, run_id: str) -> Run:
        run = self.get(run_id)
        if run is None:
            raise NotFound(f"unknown run '{run_id}'")
        if run.status.finished:
            raise Conflict(f"run {run_id} has already finished")
        self.runs[run_id] = replace(run, status=RunStatus.CANCELLED)
        return self.runs[run_id]

    def get(self, run_id: str) -> Run | None:
        return self.runs.get(run_id)

    def list(
        self,
        workflow: str | None = None,
        status: str | None = None,
        limit: int = 20,
        offset: int = 0,
        *,
        trigger: str | None = None,
    ) -> tuple[list[Run], int]:
        self.listed.append((workflow, status, limit, offset))
        runs = [r for r in self.runs.values() if workflow in (None, r.workflow)]
        runs = [r for r in runs if trigger in (None, r.trigger)]
        return runs[offset : offset + limit], len(runs)


def health_of(key: str, up: bool = True) -> Health:
    return Health(
        key=key,
        name=key,
        url=f"http://{key}.test",
        status="up" if up else "down",
        latency_ms=1.5 if up else None,
        error=None if up else "connection refused",
        checked_at="2026-01-01T10:00:00.000Z",
    )


class FakeHealth:
    async def all(self) -> list[Health]:
        return [health_of("qaagent"), health_of("bugalizer", up=False)]

    async def one(self, key: str) -> Health:
        return health_of(key)


@pytest.fixture
def ctx(tmp_path: Path) -> ApiContext:
    return ApiContext(
        make_config(tmp_path),
        loop=FakeLoop(),
        runs=FakeRuns(),
        health=FakeHealth(),
        events=EventLog(10),
        landing={"index.html": b"<html>", "app.js": b"js"},
        openapi=b'{"openapi":"3.1.0"}',
    )


def call(
    ctx: ApiContext,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> Response:
    """Route and call a handler as the server does, minus HTTP."""
    from urllib.parse import parse_qs

    path, _, query = target.partition("?")
    match = Router(ROUTES).match(method, path)
    request = Request(method, path, parse_qs(query), headers or {}, body, match.path_params)
    request.params = {**match.path_params, **match.route.parse(request)}
    return match.route.handler(ctx, request)


def body(response: Response) -> Any:
    return json.loads(response.body)


def test_health_handler(ctx: ApiContext) -> None:
    answer = body(call(ctx, "GET", "/health"))
    assert answer["status"] == "ok" and answer["version"] == __version__
    assert isinstance(answer["uptime_s"], float)


def test_services_carry_metadata_and_cached_health(ctx: ApiContext) -> None:
    services = body(call(ctx, "GET", "/api/services"))["services"]
    first = services[0]
    assert first == {
        "key": "qaagent",
        "name": "QA Agent",
        "description": "finds routes",
        "url": "http://user:***@qa.test",
        "features": ["Discovery"],
        "repo_url": "",
        "docs_url": "",
        "health": health_of("qaagent").to_dict(),
    }
    assert services[1]["health"]["status"] == "down"


def test_service_health_is_live_and_404_for_unknown(ctx: ApiContext) -> None:
    answer = body(call(ctx, "GET", "/api/services/qaagent/health"))
    assert answer == {"key": "qaagent", **health_of("qaagent").to_dict()}
    with pytest.raises(NotFound, match="unknown service 'nope'"):
        call(ctx, "GET", "/api/services/nope/health")


def test_portfolio(ctx: ApiContext) -> None:
    answer = body(call(ctx, "GET", "/api/portfolio"))
    assert answer["aegis"] == {"name": "Test Aegis", "tagline": "Tests all the way down"}
    assert answer["version"] == __version__
    assert [s["key"] for s in answer["services"]] == ["qaagent", "bugalizer"]
    assert "health" not in answer["services"][0]
    assert "hunter2" not in json.dumps(answer) and "s3cret" not in json.dumps(answer)


def test_workflows_with_every_step_setting(ctx: ApiContext) -> None:
    workflows = body(call(ctx, "GET", "/api/workflows"))["workflows"]
    assert [w["key"] for w in workflows] == ["smoke", "nightly"]
    step = workflows[0]["steps"][0]
    assert step == {
        "name": "discover",
        "type": "discover",
        "service": "qaagent",
        "condition": None,
        "parallel": False,
        "retries": 2,
        "retry_delay": 1.0,
        "max_retry_delay": None,
        "retry_jitter": 0.0,
        "retry_on": ["http"],
        "timeout": 30.0,
        "deadline": None,
        "with": {},
    }
    assert body(call(ctx, "GET", "/api/workflows/nightly"))["timeout"] == 60
    with pytest.raises(NotFound, match=r"unknown workflow 'nope' \(known: nightly, smoke\)"):
        call(ctx, "GET", "/api/workflows/nope")


def test_start_run_answers_202_with_location(ctx: ApiContext) -> None:
    answer = call(ctx, "POST", "/api/workflows/smoke/run")
    assert answer.status == 202
    assert body(answer) == {"run_id": "run0001", "status": "queued", "url": "/api/runs/run0001"}
    assert answer.headers == {"Location": "/api/runs/run0001"}


def test_start_run_with_wait_answers_200_with_the_finished_run(ctx: ApiContext) -> None:
    answer = call(ctx, "POST", "/api/workflows/smoke/run?wait=2.5")
    assert answer.status == 200 and body(answer)["status"] == "succeeded"
    assert "attempts" in body(answer)["steps"][0]
    assert isinstance(ctx.loop, FakeLoop) and ctx.loop.timeouts[-1] == 2.5 + ctx.call_timeout


def test_start_run_with_wait_still_going_answers_202(ctx: ApiContext) -> None:
    assert isinstance(ctx.runs, FakeRuns)
    ctx.runs.finish_on_wait = False
    assert call(ctx, "POST", "/api/workflows/smoke/run?wait=1").status == 202


def test_a_repeated_idempotency_key_returns_the_first_run(ctx: ApiContext) -> None:
    headers = {"Idempotency-Key": "ci-123"}
    first = call(ctx, "POST", "/api/workflows/smoke/run", headers=headers)
    again = call(ctx, "POST", "/api/workflows/smoke/run", headers=headers)
    assert body(first)["run_id"] == body(again)["run_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert isinstance(ctx.runs, FakeRuns) and len(ctx.runs.runs) == 1


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{nope", "not valid JSON"),
        (b"\xff\xfe\xfd", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
    ],
)
def test_start_run_refuses_a_body_that_is_not_a_json_object(
    ctx: ApiContext, payload: bytes, message: str
) -> None:
    with pytest.raises(HttpError, match=message) as caught:
        call(ctx, "POST", "/api/workflows/smoke/run", body=payload)
    assert caught.value.status == 400


def test_start_run_accepts_an_object_or_whitespace(ctx: ApiContext) -> None:
    assert call(ctx, "POST", "/api/workflows/smoke/run", body=b'{"x": 1}').status == 202
    assert call(ctx, "POST", "/api/workflows/smoke/run", body=b"  \n").status == 202


def test_start_run_of_an_unknown_workflow_is_not_found(ctx: ApiContext) -> None:
    with pytest.raises(NotFound):
        call(ctx, "POST", "/api/workflows/nope/run")


def test_run_lists_are_pages_of_summaries(ctx: ApiContext) -> None:
    call(ctx, "POST", "/api/workflows/smoke/run?wait=1")
    call(ctx, "POST", "/api/workflows/nightly/run")
    page = body(call(ctx, "GET", "/api/runs?limit=1&offset=1&status=queued"))
    assert (page["total"], page["limit"], page["offset"]) == (2, 1, 1)
    assert isinstance(ctx.runs, FakeRuns)
    assert ctx.runs.listed[-1] == (None, "queued", 1, 1)
    everything = body(call(ctx, "GET", "/api/history"))
    assert everything["limit"] == 20 and len(everything["runs"]) == 2
    assert "attempts" not in everything["runs"][0]["steps"][0]
    smoke = body(call(ctx, "GET", "/api/workflows/smoke/history"))
    assert [r["workflow"] for r in smoke["runs"]] == ["smoke"]
    assert body(call(ctx, "GET", "/api/runs?workflow=nightly"))["total"] == 1
    with pytest.raises(NotFound):
        call(ctx, "GET", "/api/workflows/nope/history")


def test_get_and_cancel_runs(ctx: ApiContext) -> None:
    call(ctx, "POST", "/api/workflows/smoke/run")
    assert body(call(ctx, "GET", "/api/runs/run0001"))["status"] == "queued"
    cancelled = call(ctx, "POST", "/api/runs/run0001/cancel")
    assert cancelled.status == 202 and body(cancelled)["status"] == "cancelled"
    with pytest.raises(Conflict):
        call(ctx, "POST", "/api/runs/run0001/cancel")
    with pytest.raises(NotFound):
        call(ctx, "GET", "/api/runs/nope")
    with pytest.raises(NotFound):
        call(ctx, "POST", "/api/runs/nope/cancel")


def test_events_filtered_by_type_after_and_limit(ctx: ApiContext) -> None:
    bus = EventBus()
    bus.subscribe(ctx.events.append)
    for index in range(4):
        bus.emit("step.started", f"r{index}", "smoke", step="discover")
        bus.emit("step.completed", f"r{index}", "smoke", step="discover")
    events = body(call(ctx, "GET", "/api/events?type=step.completed&limit=2&after=3"))["events"]
    assert [e["id"] for e in events] == [4, 6]  # forward from after=3, not the newest
    assert events[0]["run_id"] == "r1" and events[0]["data"] == {"step": "discover"}
    with pytest.raises(HttpError, match=r"must be one of workflow\.started"):
        call(ctx, "GET", "/api/events?type=nope")


def test_openapi_and_landing_files_are_served_from_memory(ctx: ApiContext) -> None:
    assert call(ctx, "GET", "/api/openapi.json").body == b'{"openapi":"3.1.0"}'
    page = call(ctx, "GET", "/")
    assert (page.body, page.content_type) == (b"<html>", "text/html; charset=utf-8")
    assert call(ctx, "GET", "/index.html").body == b"<html>"
    assert call(ctx, "GET", "/app.js").content_type == "text/javascript; charset=utf-8"
    with pytest.raises(HttpError, match=r"styles\.css is not installed") as missing:
        call(ctx, "GET", "/styles.css")
    assert missing.value.status == 404


def test_the_landing_files_come_from_the_package() -> None:
    files = load_landing()
    assert set(files) <= {name for name, _ in LANDING_FILES.values()}
    assert files.get("index.html", b"<").lstrip().startswith(b"<")


# ------------------------------------------------------------------------------ SSE


def test_sse_message_format() -> None:
    bus = EventBus()
    event = bus.emit("step.completed", "r1", "smoke", message="two\nlines")
    message = sse_message(event)
    lines = message.decode().split("\n")
    assert lines[:2] == ["id: 1", "event: step.completed"]
    assert lines[2].startswith("data: ") and json.loads(lines[2][6:])["data"] == {
        "message": "two\nlines"
    }
    assert lines[3:] == ["", ""]


def collect_stream(ctx: ApiContext, response: Response, until: Any) -> list[bytes]:
    """Run the stream, stopping the server once ``until(chunks)`` holds."""
    chunks: list[bytes] = []

    class Out:
        def write(self, data: bytes) -> None:
            chunks.append(data)
            if until(chunks):
                ctx.stopping.set()

        def gone(self) -> bool:
            return False

    assert response.stream is not None
    response.stream(Out())
    return chunks


def test_the_stream_sends_new_events_and_heartbeats_until_stopped(ctx: ApiContext) -> None:
    bus = EventBus()
    bus.subscribe(ctx.events.append)
    bus.emit("workflow.started", "old", "smoke")  # before the client came: not sent
    ctx.heartbeat = 0.01
    response = call(ctx, "GET", "/api/events/stream")
    assert response.content_type == "text/event-stream"

    def until(chunks: list[bytes]) -> bool:
        if len(chunks) == 2:  # the heartbeat: now an event
            bus.emit("workflow.completed", "new", "smoke", status="succeeded")
        return len(chunks) == 3

    chunks = collect_stream(ctx, response, until)
    assert chunks[0] == b"retry: 2000\n\n"
    assert chunks[1] == b": heartbeat\n\n"
    assert chunks[2].startswith(b"id: 2\nevent: workflow.completed\n")


@pytest.mark.parametrize(
    ("headers", "query", "first"),
    [
        ({"Last-Event-ID": "1"}, "", 2),
        ({}, "?after=2", 3),
        ({"Last-Event-ID": "2"}, "?after=0", 3),  # the header wins
        ({"Last-Event-ID": "999"}, "", None),  # from an earlier process: from now on
    ],
)
def test_the_stream_resumes_after_an_id(
    ctx: ApiContext, headers: dict[str, str], query: str, first: int | None
) -> None:
    bus = EventBus()
    bus.subscribe(ctx.events.append)
    for _ in range(3):
        bus.emit("step.started", "r", "smoke")
    ctx.heartbeat = 0.01
    response = call(ctx, "GET", "/api/events/stream" + query, headers=headers)
    chunks = collect_stream(ctx, response, lambda chunks: len(chunks) == 2)
    if first is None:
        assert chunks[1] == b": heartbeat\n\n"
    else:
        assert chunks[1].startswith(b"id: %d\n" % first)


def test_with_postgresql_a_resume_beyond_the_newest_waits_for_what_follows(
    ctx: ApiContext,
) -> None:
    # behind a load balancer the client's last id may come from a replica whose feed is
    # ahead of this one's: ids 4 and 5 are not sent again when they arrive here, 6 is
    history = dataclasses.replace(ctx.config.history, url="postgresql://qa@db.internal/qa")
    ctx.config = dataclasses.replace(ctx.config, history=history)
    bus = EventBus()
    bus.subscribe(ctx.events.append)
    for _ in range(3):
        bus.emit("step.started", "r", "smoke")
    ctx.heartbeat = 0.01
    response = call(ctx, "GET", "/api/events/stream", headers={"Last-Event-ID": "5"})

    def until(chunks: list[bytes]) -> bool:
        if len(chunks) == 2:  # a heartbeat: the feed catches up
            for _ in range(3):
                bus.emit("step.started", "r", "smoke")
        return len(chunks) == 3

    chunks = collect_stream(ctx, response, until)
    assert chunks[1] == b": heartbeat\n\n"
    assert chunks[2].startswith(b"id: 6\n") and b"id: 4\n" not in chunks[2]


def test_missing_landing_files_are_left_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib.resources

    (tmp_path / "app.js").write_text("//")
    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)
    assert load_landing() == {"app.js": b"//"}


def test_the_openapi_document_is_built_on_its_first_request_only(tmp_path: Path) -> None:
    built: list[int] = []

    def build() -> bytes:
        built.append(1)
        return b'{"openapi":"3.1.0","built":true}'

    lazy = ApiContext(
        make_config(tmp_path),
        loop=FakeLoop(),
        runs=FakeRuns(),
        health=FakeHealth(),
        events=EventLog(10),
        openapi=build,
    )
    assert built == []  # an idle server never builds it
    for _ in range(3):
        assert call(lazy, "GET", "/api/openapi.json").body == b'{"openapi":"3.1.0","built":true}'
    assert built == [1]
