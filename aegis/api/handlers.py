"""The API's handlers and its route table (``ROUTES``), one small function per route.

A handler takes the ``ApiContext`` and a ``Request`` whose ``params`` the route has already
validated, and returns a ``Response``; it raises ``HttpError`` or an ``AegisError``
(``NotFound``, ``Conflict``), which the server turns into the JSON error body. Handlers
run in the server's threads: they read history and the event log directly, and hand
anything that touches the engine or the services to the loop thread.

What never changes while the server runs (workflows, the portfolio, the OpenAPI document,
the landing files) is rendered to bytes once, when the context is built.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

from aegis import __version__
from aegis.config.model import Config
from aegis.config.params import ParamError
from aegis.errors import NotFound
from aegis.events import EVENT_TYPES, Event, EventLog
from aegis.history import HistoryStore
from aegis.metrics import CONTENT_TYPE as METRICS_TYPE
from aegis.metrics import Metrics
from aegis.records import Run, RunStatus
from aegis.services import Health

from .routes import Answer, HttpError, Param, Request, Response, Route, Writer, dump_json

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_HEARTBEAT",
    "LANDING_FILES",
    "MAX_WAIT",
    "ROUTES",
    "ApiContext",
    "load_landing",
]

T = TypeVar("T")

MAX_WAIT = 300.0  # seconds a `?wait=` may ask for (DESIGN §7)
DEFAULT_HEARTBEAT = 15.0  # seconds between SSE comments on a quiet stream
DEFAULT_CALL_TIMEOUT = 15.0  # a loop call beyond this means the engine is stuck: 503
# How often a quiet event stream looks at the stop flag: it bounds how long one outlives
# the server's shutdown.
STREAM_POLL = 0.25
MAX_KEY_LENGTH = 255
NEXT_FIRES = 3  # fire times a workflow's schedules show

# The landing page: request path -> (file in package aegis.landing, Content-Type).
# Only these names are ever read, whatever a request asks for.
LANDING_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/base.js": ("base.js", "text/javascript; charset=utf-8"),
    "/insight.js": ("insight.js", "text/javascript; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/styles.css": ("styles.css", "text/css; charset=utf-8"),
}


class Loop(Protocol):
    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T: ...


class Runs(Protocol):
    async def submit(
        self,
        workflow: str,
        *,
        idempotency_key: str | None = None,
        trigger: str = "api",
        params: Mapping[str, object] | None = None,
    ) -> tuple[Run, bool]: ...

    async def wait(self, run_id: str, timeout: float) -> Run: ...

    async def cancel(self, run_id: str) -> Run: ...

    async def rerun(
        self,
        run_id: str,
        *,
        from_failed: bool = False,
        params: Mapping[str, object] | None = None,
        trigger: str = "api",
    ) -> Run: ...

    def get(self, run_id: str) -> Run | None: ...

    def list(
        self,
        workflow: str | None = None,
        status: str | None = None,
        limit: int = 20,
        offset: int = 0,
        *,
        trigger: str | None = None,
        before: str | None = None,
    ) -> tuple[list[Run], int]: ...


class Services(Protocol):
    async def all(self) -> list[Health]: ...

    async def one(self, key: str) -> Health: ...


def load_landing() -> dict[str, bytes]:
    """The landing files by name, read once from the package; missing ones are left out."""
    from importlib.resources import files

    found: dict[str, bytes] = {}
    for name, _ in LANDING_FILES.values():
        try:
            found[name] = files("aegis.landing").joinpath(name).read_bytes()
        except (OSError, ModuleNotFoundError):
            continue
    return found


class ApiContext:
    """What handlers work with: the config, the loop and what lives on it, the event log.

    ``stopping`` is set when the server shuts down: event streams end on it.
    """

    def __init__(
        self,
        config: Config,
        *,
        loop: Loop,
        runs: Runs,
        health: Services,
        events: EventLog,
        landing: Mapping[str, bytes] | None = None,
        openapi: bytes | Callable[[], bytes] = b"{}",
        heartbeat: float = DEFAULT_HEARTBEAT,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        stopping: threading.Event | None = None,
        history: HistoryStore | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        from aegis.config.render import config_to_dict
        from aegis.history.memory import MemoryHistory

        self.config = config
        self.history = history if history is not None else MemoryHistory()
        self.metrics = metrics if metrics is not None else Metrics(config.workflows, ())
        self.loop = loop
        self.runs = runs
        self.health = health
        self.events = events
        self.landing = dict(landing or {})
        # the document is built on its first request: an idle server never needs it
        self._openapi = openapi
        self._openapi_lock = threading.Lock()
        self.heartbeat = heartbeat
        self.call_timeout = call_timeout
        self.stopping = stopping or threading.Event()
        self.started = time.monotonic()
        rendered = config_to_dict(config, redact=True)
        self.services = [_service_card(s) for s in rendered["services"].values()]
        self.workflows = {key: dump_json(w) for key, w in rendered["workflows"].items()}
        self.scheduled = {key: w for key, w in config.workflows.items() if w.schedules}
        self.workflow_list = dump_json({"workflows": list(rendered["workflows"].values())})
        self.portfolio = dump_json(
            {
                "aegis": {key: rendered["aegis"][key] for key in ("name", "tagline")},
                "version": __version__,
                "services": self.services,
            }
        )

    def openapi_document(self) -> bytes:
        """The OpenAPI document, built once when first asked for."""
        with self._openapi_lock:
            if callable(self._openapi):
                self._openapi = self._openapi()
            return self._openapi

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop thread; ``TimeoutError`` after ``timeout`` (or the default)."""
        return self.loop.call(coro, self.call_timeout if timeout is None else timeout)


def _service_card(service: dict[str, Any]) -> dict[str, Any]:
    keys = ("key", "name", "description", "url", "features", "repo_url", "docs_url")
    return {key: service[key] for key in keys}


def _ok(data: bytes) -> Response:
    return Response(200, data)


def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, dump_json(data), headers=headers or {})


# -------------------------------------------------------------------------- the server


def health(ctx: ApiContext, request: Request) -> Response:
    uptime = round(time.monotonic() - ctx.started, 3)
    return _json(200, {"status": "ok", "version": __version__, "uptime_s": uptime})


def openapi(ctx: ApiContext, request: Request) -> Response:
    return _ok(ctx.openapi_document())


def metrics(ctx: ApiContext, request: Request) -> Response:
    return Response(200, ctx.metrics.render(), METRICS_TYPE)


def landing_file(ctx: ApiContext, request: Request) -> Response:
    name, content_type = LANDING_FILES[request.path]
    body = ctx.landing.get(name)
    if body is None:
        raise HttpError(404, f"the landing page file {name} is not installed")
    return Response(200, body, content_type, {"X-Content-Type-Options": "nosniff"})


# ------------------------------------------------------------------------ services


def list_services(ctx: ApiContext, request: Request) -> Response:
    checked = {h.key: h.to_dict() for h in ctx.call(ctx.health.all())}
    cards = [{**card, "health": checked.get(card["key"])} for card in ctx.services]
    return _json(200, {"services": cards})


def service_health(ctx: ApiContext, request: Request) -> Response:
    key = request.params["key"]
    if key not in ctx.config.services:
        known = ", ".join(sorted(ctx.config.services)) or "none"
        raise NotFound(f"unknown service '{key}' (known: {known})")
    checked = ctx.call(ctx.health.one(key))
    return _json(200, {"key": key, **checked.to_dict()})


def portfolio(ctx: ApiContext, request: Request) -> Response:
    return _ok(ctx.portfolio)


# ----------------------------------------------------------------------- workflows


def _workflow(ctx: ApiContext, key: str) -> bytes:
    found = ctx.workflows.get(key)
    if found is None:
        known = ", ".join(sorted(ctx.workflows)) or "none"
        raise NotFound(f"unknown workflow '{key}' (known: {known})")
    return found


def list_workflows(ctx: ApiContext, request: Request) -> Response:
    return _ok(ctx.workflow_list)


def get_workflow(ctx: ApiContext, request: Request) -> Response:
    key = request.params["key"]
    found = _workflow(ctx, key)
    spec = ctx.scheduled.get(key)
    if spec is None:
        return _ok(found)
    from aegis.records import format_timestamp
    from aegis.schedules import next_fires

    now = datetime.now(timezone.utc)
    workflow = json.loads(found)
    for shown, schedule in zip(workflow["schedule"], spec.schedules, strict=True):
        ticks = next_fires(schedule, now, NEXT_FIRES)
        shown["next_fires"] = [format_timestamp(tick) for tick in ticks]
    return _json(200, workflow)


# ----------------------------------------------------------------------------- runs


def _param_refusal(exc: ParamError) -> HttpError:
    """400 naming each param that cannot be taken, with its type and choices."""
    problems = [problem.to_dict() for problem in exc.problems]
    return HttpError(400, str(exc), extra={"params": problems})


def start_run(ctx: ApiContext, request: Request) -> Response:
    key = request.params["key"]
    _workflow(ctx, key)
    params = _run_params(_json_body(request) or {})
    idempotency_key = request.params["Idempotency-Key"]
    try:
        run, created = ctx.call(
            ctx.runs.submit(key, idempotency_key=idempotency_key, trigger="api", params=params)
        )
    except ParamError as exc:
        raise _param_refusal(exc) from None
    wait = request.params["wait"]
    if wait is not None and not run.status.finished:
        run = ctx.call(ctx.runs.wait(run.run_id, wait), timeout=wait + ctx.call_timeout)
    headers = {} if created else {"Idempotent-Replayed": "true"}
    if run.status.finished:
        return _json(200, run.to_dict(), headers)
    url = f"/api/runs/{run.run_id}"
    accepted = {"run_id": run.run_id, "status": run.status.value, "url": url}
    return _json(202, accepted, {"Location": url, **headers})


def _json_body(request: Request) -> dict[str, Any] | None:
    """The body as a JSON object (``None`` when empty); ``HttpError`` 400 otherwise."""
    if not request.body.strip():
        return None
    try:
        data = json.loads(request.body)
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise HttpError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # [[[[... thousands deep: the parser gives up on the stack
        raise HttpError(400, "the request body is JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise HttpError(400, "the request body must be a JSON object")
    return data


def _run_params(body: dict[str, Any]) -> dict[str, Any]:
    """The ``params`` object of a run request (``{}`` when absent)."""
    if "params" not in body:
        return {}
    params = body["params"]
    if not isinstance(params, dict):
        raise HttpError(400, "'params' must be a JSON object of param names to values")
    return params


def _run_page(ctx: ApiContext, request: Request, workflow: str | None) -> Response:
    p = request.params
    # ``before`` (a run id) pages by keyset: the runs older than that one, no offset walked
    keyset = {"before": p["before"]} if p["before"] else {}
    runs, total = ctx.runs.list(
        workflow, p["status"], p["limit"], p["offset"], trigger=p["trigger"], **keyset
    )
    page = {
        "runs": [run.to_dict(summary=True) for run in runs],
        "total": total,
        "limit": p["limit"],
        "offset": p["offset"],
    }
    return _json(200, page)


def list_runs(ctx: ApiContext, request: Request) -> Response:
    return _run_page(ctx, request, request.params["workflow"])


def workflow_history(ctx: ApiContext, request: Request) -> Response:
    key = request.params["key"]
    _workflow(ctx, key)
    return _run_page(ctx, request, key)


def get_run(ctx: ApiContext, request: Request) -> Response:
    run_id = request.params["run_id"]
    run = ctx.runs.get(run_id)
    if run is None:
        raise NotFound(f"unknown run '{run_id}'")
    return _json(200, run.to_dict())


def cancel_run(ctx: ApiContext, request: Request) -> Response:
    run = ctx.call(ctx.runs.cancel(request.params["run_id"]))
    return _json(202, run.to_dict())


def rerun_run(ctx: ApiContext, request: Request) -> Response:
    body = _json_body(request) or {}
    from_failed = body.get("from_failed", False)
    if not isinstance(from_failed, bool):
        raise HttpError(400, "'from_failed' must be true or false")
    params = _run_params(body)
    try:
        run = ctx.call(
            ctx.runs.rerun(request.params["run_id"], from_failed=from_failed, params=params)
        )
    except ParamError as exc:
        raise _param_refusal(exc) from None
    url = f"/api/runs/{run.run_id}"
    accepted = {"run_id": run.run_id, "status": run.status.value, "url": url}
    return _json(202, accepted, {"Location": url})


def workflow_trends(ctx: ApiContext, request: Request) -> Response:
    """The last ``limit`` finished runs of a workflow, oldest first: what the charts draw."""
    key = request.params["key"]
    _workflow(ctx, key)
    limit = request.params["limit"]
    runs = [run for run in ctx.history.list(key, limit=limit) if run.status.finished]
    failing = ctx.history.failing_counts([run.run_id for run in runs])
    points = [
        {
            "run_id": run.run_id,
            "started_at": run.started_at,
            "status": run.status.value,
            "verdict": run.verdict.value if run.verdict else None,
            "duration_ms": run.duration_ms,
            "failing_tests": failing.get(run.run_id),
        }
        for run in reversed(runs)
    ]
    return _json(200, {"workflow": key, "limit": limit, "runs": points})


# ---------------------------------------------------------------------------- tests


def list_tests(ctx: ApiContext, request: Request) -> Response:
    p = request.params
    flaky = p["flaky"] == "true"
    found = ctx.history.tests(p["workflow"], flaky=flaky, limit=p["limit"])
    return _json(200, {"tests": [t.to_dict() for t in found], "flaky": flaky})


def get_test(ctx: ApiContext, request: Request) -> Response:
    test_id = request.params["test_id"]
    summaries = ctx.history.test(test_id)
    if not summaries:
        raise NotFound(f"no test '{test_id}' in history")
    outcomes = ctx.history.test_outcomes(test_id, request.params["limit"])
    return _json(
        200,
        {
            "test_id": test_id,
            "workflows": [t.to_dict() for t in summaries],
            "outcomes": [{**o.to_dict(), "run_url": f"/api/runs/{o.run_id}"} for o in outcomes],
        },
    )


# --------------------------------------------------------------------------- events


def list_events(ctx: ApiContext, request: Request) -> Response:
    p = request.params
    events = ctx.events.list(limit=p["limit"], type=p["type"], after=p["after"])
    return _json(200, {"events": [e.to_dict() for e in events]})


def stream_events(ctx: ApiContext, request: Request) -> Response:
    """Server-Sent Events from ``Last-Event-ID`` (or ``after``; by default from now on)."""
    resume = request.params["Last-Event-ID"]
    after = request.params["after"] if resume is None else resume
    latest = ctx.events.list(limit=1)
    newest = latest[-1].id if latest else 0
    # An id beyond the newest comes from an earlier server process, whose ids have
    # started again from 1: resume from now rather than wait for ids that never come.
    # With PostgreSQL the ids are the database's and never start again: such an id was
    # given by a replica whose feed is ahead of this one's, so what follows it is waited for.
    restarted = after is not None and after > newest and ctx.config.history.url is None
    start = newest if after is None or restarted else after

    def stream(write: Writer) -> None:
        _stream(ctx, write, start)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return Response(200, content_type="text/event-stream", headers=headers, stream=stream)


def _stream(ctx: ApiContext, out: Writer, after: int) -> None:
    """Events as they come, a heartbeat when quiet, until the server stops or the client
    goes: it closed, or it has not read for a while (looked at every ``STREAM_POLL``, so
    a client that left holds no thread and no buffers for long)."""
    out.write(b"retry: 2000\n\n")
    quiet_since = time.monotonic()
    while not ctx.stopping.is_set() and not out.gone():
        wait = min(STREAM_POLL, max(quiet_since + ctx.heartbeat - time.monotonic(), 0.0))
        events = ctx.events.wait_after(after, wait)
        if events:
            out.write(b"".join(sse_message(event) for event in events))
            after = events[-1].id
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= ctx.heartbeat:
            out.write(b": heartbeat\n\n")
            quiet_since = time.monotonic()


def sse_message(event: Event) -> bytes:
    """One event as an SSE message: ``id:``, ``event:`` and one ``data:`` line of JSON."""
    # dump_json escapes newlines inside strings, so the data is always a single line
    data = dump_json(event.to_dict())
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, event.type.encode(), data)


# ---------------------------------------------------------------------- the table


def _key(what: str) -> Param:
    return Param("key", "path", description=f"the {what}'s key in the config", required=True)


RUN_ID = Param("run_id", "path", description="a run id (or a unique prefix of one)", required=True)
RUN_FILTERS = (
    Param("status", enum=tuple(s.value for s in RunStatus), description="only runs in this status"),
    Param("limit", type="integer", minimum=1, maximum=1000, default=20, description="page size"),
    Param("offset", type="integer", minimum=0, default=0, description="runs to skip"),
    Param("trigger", max_length=100, description="only runs started by this trigger (api, cli…)"),
    Param(
        "before",
        max_length=200,
        description="only runs older than this run (its exact id): the next page after a "
        "page ending with it, faster than `offset` deep in a long history",
    ),
)
WORKFLOW_FILTER = Param("workflow", description="only runs of this workflow")
JSON_ERRORS = (400,)

ROUTES: tuple[Route, ...] = (
    Route("GET", "/", landing_file, "The landing page",
          (Answer(200, "index.html", media="text/html"),), errors=(404,), tag="landing",
          operation="landing_page"),
    Route("GET", "/index.html", landing_file, "The landing page",
          (Answer(200, "index.html", media="text/html"),), errors=(404,), tag="landing",
          operation="landing_index"),
    Route("GET", "/base.js", landing_file, "The landing page's shared script",
          (Answer(200, "base.js", media="text/javascript"),), errors=(404,), tag="landing",
          operation="landing_base_script"),
    Route("GET", "/insight.js", landing_file, "The landing page's charts, actions and tests",
          (Answer(200, "insight.js", media="text/javascript"),), errors=(404,), tag="landing",
          operation="landing_insight_script"),
    Route("GET", "/app.js", landing_file, "The landing page's script",
          (Answer(200, "app.js", media="text/javascript"),), errors=(404,), tag="landing",
          operation="landing_script"),
    Route("GET", "/styles.css", landing_file, "The landing page's styles",
          (Answer(200, "styles.css", media="text/css"),), errors=(404,), tag="landing",
          operation="landing_styles"),
    Route("GET", "/health", health, "Liveness of this server",
          (Answer(200, "the server is up", "ServerHealth"),), tag="server"),
    Route("GET", "/api/openapi.json", openapi, "This document",
          (Answer(200, "the OpenAPI 3.1 description of every route", "OpenApi"),), tag="server"),
    Route("GET", "/metrics", metrics, "Metrics in the Prometheus text format",
          (Answer(200, "counters, gauges and histograms (text format 0.0.4)",
                  media="text/plain"),), tag="server"),
    Route("GET", "/api/services", list_services, "Services with their (cached) health",
          (Answer(200, "every configured service", "ServiceList"),), tag="services"),
    Route("GET", "/api/services/{key}/health", service_health, "A live health check",
          (Answer(200, "the service's health now", "ServiceHealth"),),
          params=(_key("service"),), errors=(404,), tag="services"),
    Route("GET", "/api/portfolio", portfolio, "Identity and service metadata",
          (Answer(200, "what the landing page shows", "Portfolio"),), tag="services"),
    Route("GET", "/api/workflows", list_workflows, "Workflow definitions",
          (Answer(200, "every workflow, steps with all their settings", "WorkflowList"),),
          tag="workflows"),
    Route("GET", "/api/workflows/{key}", get_workflow, "One workflow definition",
          (Answer(200, "the workflow", "Workflow"),),
          params=(_key("workflow"),), errors=(404,), tag="workflows"),
    Route("POST", "/api/workflows/{key}/run", start_run, "Start a run",
          (Answer(202, "the run is queued (or still going)", "RunAccepted"),
           Answer(200, "the run finished within `wait` (or had, for a repeated key)", "Run")),
          params=(
              _key("workflow"),
              Param("wait", type="number", exclusive_minimum=0, maximum=MAX_WAIT,
                    description="seconds to wait for the run to finish"),
              Param("Idempotency-Key", "header", max_length=MAX_KEY_LENGTH,
                    description="a key repeated within 24 h returns the first run"),
          ),
          errors=(400, 404, 409, 413, 429), body="RunRequest", tag="runs",
          description="Answers 202 at once; at most `server.max_concurrent_runs` run at "
          "once and the rest queue (at most `server.max_queued_runs`, else 429). A repeated "
          "`Idempotency-Key` never starts a second run. A workflow's `concurrency` rule "
          "with `on_conflict: skip` refuses a run past its limit with 409 naming the run "
          "in the way (`run_id`)."),
    Route("GET", "/api/runs", list_runs, "Runs, newest first",
          (Answer(200, "a page of run summaries", "RunList"),),
          params=(WORKFLOW_FILTER, *RUN_FILTERS), errors=JSON_ERRORS, tag="runs"),
    Route("GET", "/api/runs/{run_id}", get_run, "One run",
          (Answer(200, "the run with its steps and attempts", "Run"),),
          params=(RUN_ID,), errors=(404,), tag="runs"),
    Route("POST", "/api/runs/{run_id}/cancel", cancel_run, "Cancel a run",
          (Answer(202, "the run, cancelled", "Run"),),
          params=(RUN_ID,), errors=(404, 409), tag="runs"),
    Route("POST", "/api/runs/{run_id}/rerun", rerun_run, "Rerun a run",
          (Answer(202, "the new run is queued", "RunAccepted"),),
          params=(RUN_ID,), errors=(400, 404, 409, 413, 429), body="RerunRequest", tag="runs",
          description="A new run of the same workflow, linked by `rerun_of`. With "
          "`from_failed`, the steps before the first failed, skipped or unreached one are "
          "carried over (marked `reused`, not run again)."),
    Route("GET", "/api/history", list_runs, "Recent runs of every workflow",
          (Answer(200, "a page of run summaries", "RunList"),),
          params=(WORKFLOW_FILTER, *RUN_FILTERS), errors=JSON_ERRORS, tag="runs",
          operation="history"),
    Route("GET", "/api/workflows/{key}/history", workflow_history, "Runs of one workflow",
          (Answer(200, "a page of run summaries", "RunList"),),
          params=(_key("workflow"), *RUN_FILTERS), errors=(400, 404), tag="runs"),
    Route("GET", "/api/workflows/{key}/trends", workflow_trends, "Trends of one workflow",
          (Answer(200, "its last finished runs, oldest first: verdict, duration, failing "
                  "tests", "Trends"),),
          params=(_key("workflow"),
                  Param("limit", type="integer", minimum=1, maximum=1000, default=50,
                        description="how many of the latest runs")),
          errors=(400, 404), tag="runs"),
    Route("GET", "/api/tests", list_tests, "Test history",
          (Answer(200, "tests seen failing, with runs, failures, flips and flakiness",
                  "TestList"),),
          params=(
              Param("workflow", description="only tests of this workflow"),
              Param("flaky", enum=("true", "false"), default="false",
                    description="only tests that flipped, most flaky first"),
              Param("limit", type="integer", minimum=1, maximum=1000, default=50,
                    description="at most this many"),
          ),
          errors=JSON_ERRORS, tag="tests"),
    Route("GET", "/api/tests/{test_id}", get_test, "One test's history",
          (Answer(200, "its summary per workflow and its recent outcomes", "TestDetail"),),
          params=(
              Param("test_id", "path", description="a test id (URL-encoded)", required=True),
              Param("limit", type="integer", minimum=1, maximum=1000, default=50,
                    description="at most this many outcomes"),
          ),
          errors=(400, 404), tag="tests"),
    Route("GET", "/api/events", list_events, "Recent events, oldest first",
          (Answer(200, "events from the server's ring buffer", "EventList"),),
          params=(
              Param("limit", type="integer", minimum=1, maximum=1000, default=100,
                    description="at most this many: the first ones after `after` when "
                                "it is given, else the newest"),
              Param("type", enum=EVENT_TYPES, description="only events of this type"),
              Param("after", type="integer", minimum=0,
                    description="only events after this id, oldest first: "
                                "page forward by passing the last id seen"),
          ),
          errors=JSON_ERRORS, tag="events"),
    Route("GET", "/api/events/stream", stream_events, "Events as they happen (SSE)",
          (Answer(200, "an endless text/event-stream: `id:`, `event:`, `data:` per event, "
                  "a `: heartbeat` comment every 15 s", "EventStream",
                  media="text/event-stream"),),
          params=(
              Param("after", type="integer", minimum=0, description="resume after this id"),
              Param("Last-Event-ID", "header", type="integer", minimum=0,
                    description="resume after this id (EventSource sends it)"),
          ),
          errors=JSON_ERRORS, tag="events"),
)  # fmt: skip
