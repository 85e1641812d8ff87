"""The whole API over real HTTP: ``ApiApp`` on an ephemeral loopback port, the engine, the
run manager and the health cache behind it, and the demo services behind those.

Runs started here are recorded in a SQLite history file, as ``aegis serve`` would record
them. Nothing waits by sleeping: tests poll with a deadline, or wait for events.
"""

from __future__ import annotations

import http.client
import io
import json
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from aegis import __version__
from aegis.api.app import ApiApp
from aegis.api.server import AccessLog
from aegis.config import parse_config
from aegis.config.model import Config
from aegis.demo import DemoServices, Fault
from aegis.errors import UsageError
from aegis.history import open_history
from aegis.steps.registry import default_step_types

TIMEOUT = 30.0

CONFIG = """
aegis: {name: Aegis under test, tagline: Over real HTTP}
services:
  qaagent:
    name: QA Agent
    url: "%(qaagent)s"
    features: [Route Discovery, Test Orchestration]
    repo_url: https://example.test/qaagent
  bugalizer: {url: "%(bugalizer)s"}
  ghost: {url: "http://127.0.0.1:1", description: nobody home}
workflows:
  smoke:
    steps: [{type: discover, service: qaagent}]
  pipeline:
    steps:
      - {type: discover, service: qaagent}
      - {type: test, service: qaagent, retries: 1, retry_delay: 0.01}
      - {type: submit_bugs, service: bugalizer, condition: has_failures,
         with: {project_id: web-shop}}
      - {type: verify, service: qaagent, condition: has_failures}
      - {type: report, condition: always}
  slow:
    steps:
      - {type: discover, service: qaagent}
      - {type: test, service: qaagent, timeout: 120}
history: {path: %(history)s}
server: {max_concurrent_runs: %(concurrency)d, max_queued_runs: %(queued)d}
%(extra)s
"""


def make_config(
    tmp_path: Path,
    demo: DemoServices,
    *,
    concurrency: int = 2,
    extra: str = "",
    history: str = "history.db",
    queued: int = 1000,
) -> Config:
    text = CONFIG % {
        "queued": queued,
        "history": history,
        "qaagent": demo.qaagent_url,
        "bugalizer": demo.bugalizer_url,
        "concurrency": concurrency,
        "extra": extra,
    }
    return parse_config(
        textwrap.dedent(text),
        file="aegis.yaml",
        base_dir=tmp_path,
        environ={},
        step_types=default_step_types(),
    )


class Reply:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = {k.lower(): v for k, v in response.getheaders()}
        self.body = response.read()

    @property
    def data(self) -> Any:
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)


class Client:
    """Requests to one server, each on a fresh connection."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "", parts.port or 80
        self.headers = headers or {}

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)

    def send(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Reply:
        conn = self.connect()
        try:
            conn.request(
                method, path, body=body or None, headers={**self.headers, **(headers or {})}
            )
            return Reply(conn.getresponse())
        finally:
            conn.close()

    def get(self, path: str, **options: Any) -> Reply:
        return self.send("GET", path, **options)

    def post(self, path: str, **options: Any) -> Reply:
        return self.send("POST", path, **options)

    def run(self, workflow: str, **options: Any) -> str:
        reply = self.post(f"/api/workflows/{workflow}/run", **options)
        assert reply.status in (200, 202), reply.body
        return str(reply.data["run_id"])

    def status(self, run_id: str) -> str:
        return str(self.get(f"/api/runs/{run_id}").data["status"])

    def in_test_step(self, run_id: str) -> bool:
        """Whether the run's discover step has ended (so a `slow` run hangs in `test`)."""
        return bool(self.get(f"/api/runs/{run_id}").data["steps"])

    def finished(self, run_id: str) -> dict[str, Any]:
        """The run once it has finished (polled with a deadline)."""
        poll(lambda: self.status(run_id) not in ("queued", "running"))
        return self.get(f"/api/runs/{run_id}").data  # type: ignore[no-any-return]


def poll(check: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    """``check()`` once it is truthy, looking every 20 ms; fails after ``timeout`` seconds."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {timeout}s: {check}")
        pause.wait(0.02)


class Served:
    def __init__(self, app: ApiApp, log: io.StringIO) -> None:
        self.app = app
        self.log = log
        self.client = Client(app.url)


@pytest.fixture
def serve(tmp_path: Path, demo: DemoServices) -> Iterator[Callable[..., Served]]:
    """Starts ``ApiApp``s on the demo services (stopped after the test, before the demo)."""
    apps: list[ApiApp] = []

    def start(
        *, concurrency: int = 2, extra: str = "", queued: int = 1000, **options: Any
    ) -> Served:
        log = io.StringIO()
        app = ApiApp(
            make_config(tmp_path, demo, concurrency=concurrency, extra=extra, queued=queued),
            environ={},
            port=0,
            access_log=AccessLog(log),
            **options,
        ).start()
        apps.append(app)
        return Served(app, log)

    yield start
    for app in apps:
        app.stop()


@pytest.fixture
def api(serve: Callable[..., Served]) -> Served:
    return serve()


@pytest.fixture
def client(api: Served) -> Client:
    return api.client


@pytest.fixture
def stalled(demo: DemoServices) -> DemoServices:
    """Every test call hangs (until the services stop), so `slow` runs stay running."""
    demo.qaagent.inject("/api/runs", Fault(status=None, delay=120, times=None))
    return demo


# ------------------------------------------------------------------------- reading


def test_health(client: Client) -> None:
    data = client.get("/health").data
    assert data["status"] == "ok" and data["version"] == __version__
    assert data["uptime_s"] >= 0


def test_landing_page_from_the_package(client: Client) -> None:
    page = client.get("/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    packaged = (Path(__file__).parent.parent / "aegis" / "landing" / "index.html").read_bytes()
    assert page.body == packaged
    assert client.get("/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/styles.css").headers["content-type"].startswith("text/css")
    assert client.get("/favicon.ico").status == 404


def test_services_with_cached_health(client: Client) -> None:
    services = client.get("/api/services").data["services"]
    assert [s["key"] for s in services] == ["qaagent", "bugalizer", "ghost"]
    qaagent, bugalizer, ghost = services
    assert qaagent["name"] == "QA Agent"
    assert qaagent["features"] == ["Route Discovery", "Test Orchestration"]
    assert qaagent["repo_url"] == "https://example.test/qaagent"
    assert qaagent["health"]["status"] == "up" and qaagent["health"]["latency_ms"] > 0
    assert bugalizer["health"]["status"] == "up"
    assert ghost["health"]["status"] == "down" and ghost["health"]["error"]
    assert set(ghost["health"]) == {
        "status",
        "latency_ms",
        "error",
        "checked_at",
        "service_status",
    }
    again = client.get("/api/services").data["services"]
    assert again[0]["health"]["checked_at"] == qaagent["health"]["checked_at"]  # cached


def test_a_live_service_check(client: Client, demo: DemoServices) -> None:
    before = len(demo.qaagent.calls)
    live = client.get("/api/services/qaagent/health").data
    assert live["key"] == "qaagent" and live["status"] == "up"
    assert len(demo.qaagent.calls) == before + 1
    assert client.get("/api/services/ghost/health").data["status"] == "down"
    missing = client.get("/api/services/nope/health")
    assert missing.status == 404 and "unknown service 'nope'" in missing.data["error"]["message"]


def test_portfolio(client: Client) -> None:
    data = client.get("/api/portfolio").data
    assert data["aegis"] == {"name": "Aegis under test", "tagline": "Over real HTTP"}
    assert data["version"] == __version__
    assert [s["key"] for s in data["services"]] == ["qaagent", "bugalizer", "ghost"]
    assert all("health" not in s for s in data["services"])


def test_workflows(client: Client) -> None:
    workflows = client.get("/api/workflows").data["workflows"]
    assert [w["key"] for w in workflows] == ["smoke", "pipeline", "slow"]
    pipeline = client.get("/api/workflows/pipeline").data
    assert pipeline == workflows[1]
    bugs = pipeline["steps"][2]
    assert bugs["condition"] == "has_failures" and bugs["with"] == {"project_id": "web-shop"}
    assert pipeline["steps"][1]["retries"] == 1 and pipeline["steps"][1]["timeout"] == 30.0
    assert client.get("/api/workflows/nope").status == 404


def test_openapi_is_served(client: Client) -> None:
    document = client.get("/api/openapi.json").data
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "Aegis under test API"
    assert "/api/workflows/{key}/run" in document["paths"]


# ---------------------------------------------------------------------------- runs


def test_a_run_through_the_api(client: Client, tmp_path: Path) -> None:
    reply = client.post("/api/workflows/smoke/run")
    assert reply.status == 202
    run_id = reply.data["run_id"]
    assert reply.data == {"run_id": run_id, "status": "queued", "url": f"/api/runs/{run_id}"}
    assert reply.headers["location"] == f"/api/runs/{run_id}"
    run = client.finished(run_id)
    assert run["status"] == "succeeded" and run["trigger"] == "api"
    assert run["steps"][0]["data"]["route_count"] == 6
    assert run["steps"][0]["attempts"][0]["success"] is True
    page = client.get("/api/runs").data
    assert page["total"] == 1 and (page["limit"], page["offset"]) == (20, 0)
    assert page["runs"][0]["run_id"] == run_id
    assert "attempts" not in page["runs"][0]["steps"][0]
    assert client.get("/api/history").data == page
    assert client.get("/api/workflows/smoke/history").data["total"] == 1
    assert client.get("/api/workflows/pipeline/history").data["total"] == 0
    assert client.get("/api/workflows/nope/history").status == 404
    assert client.get(f"/api/runs/{run_id[:6]}").data["run_id"] == run_id  # a prefix will do
    assert client.get(f"/api/runs/{run_id[:2].upper()}").data["run_id"] == run_id  # any case
    with open_history(make_history_spec(tmp_path), warn=print) as store:  # the CLI's view
        assert store.get(run_id) is not None and store.get(run_id).trigger == "api"  # type: ignore[union-attr]


def make_history_spec(tmp_path: Path) -> Any:
    from aegis.config.model import HistorySpec

    return HistorySpec(path=str(tmp_path / "history.db"))


def test_wait_answers_200_with_the_finished_run(client: Client, demo: DemoServices) -> None:
    reply = client.post("/api/workflows/pipeline/run?wait=30")
    assert reply.status == 200 and "location" not in reply.headers
    run = reply.data
    assert run["status"] == "succeeded" and run["verdict"] == "failed"  # tests still fail
    assert [s["name"] for s in run["steps"]] == [
        "discover",
        "test",
        "submit_bugs",
        "verify",
        "report",
    ]
    assert run["steps"][2]["data"]["submitted"] == 2 and len(demo.bugalizer.reports) == 2


def test_wait_shorter_than_the_run_answers_202(client: Client, stalled: DemoServices) -> None:
    reply = client.post("/api/workflows/slow/run?wait=0.2")
    assert reply.status == 202 and reply.data["status"] == "running"


def test_filters(client: Client) -> None:
    client.post("/api/workflows/smoke/run?wait=30")
    client.post("/api/workflows/pipeline/run?wait=30")
    assert client.get("/api/runs?workflow=smoke").data["total"] == 1
    assert client.get("/api/runs?status=succeeded").data["total"] == 2
    assert client.get("/api/runs?status=failed").data["total"] == 0
    page = client.get("/api/runs?limit=1&offset=1").data
    assert page["total"] == 2 and page["runs"][0]["workflow"] == "smoke"  # newest first
    assert client.get("/api/runs?limit=0").status == 400


def test_idempotency_keys(client: Client) -> None:
    key = {"Idempotency-Key": "ci-build-42"}
    first = client.post("/api/workflows/smoke/run", headers=key)
    again = client.post("/api/workflows/smoke/run", headers=key)
    assert first.status == 202 and again.status in (200, 202)
    assert again.data["run_id"] == first.data["run_id"]
    assert again.headers["idempotent-replayed"] == "true"
    client.finished(first.data["run_id"])
    done = client.post("/api/workflows/smoke/run", headers=key)
    assert done.status == 200 and done.data["run_id"] == first.data["run_id"]
    assert done.data["status"] == "succeeded"
    other = client.post("/api/workflows/smoke/run", headers={"Idempotency-Key": "ci-build-43"})
    assert other.data["run_id"] != first.data["run_id"]
    client.finished(other.data["run_id"])
    assert client.get("/api/runs").data["total"] == 2
    long_key = client.post("/api/workflows/smoke/run", headers={"Idempotency-Key": "k" * 256})
    assert long_key.status == 400


def test_forty_runs_at_once(serve: Callable[..., Served], tmp_path: Path) -> None:
    client = serve(concurrency=4).client

    def start(_: int) -> Reply:
        return client.post("/api/workflows/smoke/run")

    with ThreadPoolExecutor(40) as pool:
        replies = list(pool.map(start, range(40)))
    assert [r.status for r in replies] == [202] * 40
    run_ids = {r.data["run_id"] for r in replies}
    assert len(run_ids) == 40
    poll(lambda: client.get("/api/runs?status=succeeded").data["total"] == 40)
    listed = client.get("/api/runs?limit=100").data
    assert listed["total"] == 40 and {r["run_id"] for r in listed["runs"]} == run_ids
    with open_history(make_history_spec(tmp_path), warn=print) as store:
        assert store.count("smoke", "succeeded") == 40


def test_queueing_respects_max_concurrent_runs(client: Client, stalled: DemoServices) -> None:
    first, second, third = (client.run("slow") for _ in range(3))
    poll(lambda: client.in_test_step(first) and client.in_test_step(second))
    assert client.status(third) == "queued"
    assert client.get("/api/runs?status=queued").data["total"] == 1
    assert client.get("/api/runs?status=running").data["total"] == 2
    # a queued run cancelled never starts
    cancelled = client.post(f"/api/runs/{third}/cancel")
    assert cancelled.status == 202 and cancelled.data["status"] == "cancelled"
    assert {s["status"] for s in cancelled.data["steps"]} == {"skipped"}
    # a running one cancelled frees its slot for the next in line
    fourth = client.run("slow")
    assert client.status(fourth) == "queued"
    running = client.post(f"/api/runs/{first}/cancel").data
    assert running["status"] == "cancelled"
    assert [s["status"] for s in running["steps"]] == ["succeeded", "cancelled"]
    poll(lambda: client.status(fourth) == "running")
    for run_id in (second, fourth):
        assert client.post(f"/api/runs/{run_id}/cancel").status == 202


def test_cancel_answers(client: Client) -> None:
    done = client.post("/api/workflows/smoke/run?wait=30").data
    finished = client.post(f"/api/runs/{done['run_id']}/cancel")
    assert finished.status == 409 and finished.data["error"]["code"] == "conflict"
    assert "already finished" in finished.data["error"]["message"]
    assert client.post("/api/runs/nope1234/cancel").status == 404
    assert client.get("/api/runs/nope1234").status == 404


def test_a_restarted_server_serves_the_old_runs(serve: Callable[..., Served]) -> None:
    first = serve()
    run = first.client.post("/api/workflows/smoke/run?wait=30").data
    first.app.stop()
    second = serve()
    assert second.client.get(f"/api/runs/{run['run_id']}").data == run
    assert second.client.get("/api/history").data["runs"][0]["run_id"] == run["run_id"]


def test_stopping_cancels_running_runs_and_answers_waiting_requests(
    serve: Callable[..., Served], stalled: DemoServices, tmp_path: Path
) -> None:
    served = serve()
    client = served.client
    replies: list[Reply] = []
    waiter = threading.Thread(
        target=lambda: replies.append(client.post("/api/workflows/slow/run?wait=120"))
    )
    waiter.start()
    run_id = poll(lambda: [r["run_id"] for r in client.get("/api/runs").data["runs"]])[0]
    poll(lambda: client.status(run_id) == "running")
    queued = client.run("slow")
    third = client.run("slow")
    began = time.monotonic()
    served.app.stop()
    waiter.join(TIMEOUT)
    assert time.monotonic() - began < 5
    (reply,) = replies
    assert reply.status == 200 and reply.data["status"] == "cancelled"
    with open_history(make_history_spec(tmp_path), warn=print) as store:
        statuses = {rid: store.get(rid).status.value for rid in (run_id, queued, third)}  # type: ignore[union-attr]
    assert set(statuses.values()) == {"cancelled"}


def test_stopping_with_twenty_thousand_queued_runs_records_every_one_cancelled(
    serve: Callable[..., Served], stalled: DemoServices, tmp_path: Path
) -> None:
    # Each queued run's cancellation was one transaction on the loop: the shutdown ran
    # out of time with most of them still `queued` (later marked `interrupted`).
    served = serve(concurrency=1, queued=20_000)
    manager, loop = served.app._part("runs"), served.app._part("loop")

    async def submit_many() -> list[str]:
        return [(await manager.submit("slow"))[0].run_id for _ in range(20_000)]

    ids = loop.call(submit_many(), 120)
    poll(lambda: served.client.status(ids[0]) == "running")
    began = time.monotonic()
    served.app.stop()
    assert time.monotonic() - began < 30
    with open_history(make_history_spec(tmp_path), warn=print) as store:
        assert store.count() == 20_000
        assert store.count(status="cancelled") == 20_000


# -------------------------------------------------------------------------- events


def test_events_after_a_run(client: Client) -> None:
    run = client.post("/api/workflows/smoke/run?wait=30").data
    events = client.get("/api/events").data["events"]
    assert [e["type"] for e in events] == [
        "workflow.started",
        "step.started",
        "step.completed",
        "workflow.completed",
    ]
    assert {e["run_id"] for e in events} == {run["run_id"]}
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    done = client.get("/api/events?type=workflow.completed").data["events"]
    assert [e["data"]["status"] for e in done] == ["succeeded"]
    page = client.get(f"/api/events?after={ids[0]}&limit=2").data["events"]
    assert [e["id"] for e in page] == ids[1:3]  # forward from the id, not the newest
    newest = client.get("/api/events?limit=2").data["events"]
    assert [e["id"] for e in newest] == ids[-2:]


def read_sse(
    client: Client, headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPConnection, Iterator[dict[str, Any]]]:
    """Open the event stream; the iterator yields each message as {id, event, data}."""
    conn = client.connect()
    conn.request("GET", "/api/events/stream", headers=headers or {})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream"

    def messages() -> Iterator[dict[str, Any]]:
        fields: dict[str, Any] = {}
        while True:
            line = response.readline()
            if not line:
                return
            text = line.decode().rstrip("\n")
            if not text:
                if "event" in fields:
                    yield fields
                fields = {}
            elif not text.startswith(":"):
                name, _, value = text.partition(": ")
                fields[name] = json.loads(value) if name == "data" else value

    return conn, messages()


def test_sse_shows_a_run_as_it_happens(client: Client) -> None:
    conn, messages = read_sse(client)
    try:
        run_id = client.run("smoke")
        seen = []
        for message in messages:
            seen.append(message)
            if message["event"] == "workflow.completed":
                break
        assert [m["event"] for m in seen] == [
            "workflow.started",
            "step.started",
            "step.completed",
            "workflow.completed",
        ]
        assert all(m["data"]["run_id"] == run_id for m in seen)
        assert [int(m["id"]) for m in seen] == [m["data"]["id"] for m in seen]
    finally:
        conn.close()
    # resuming from the first id sends the rest at once
    conn, messages = read_sse(client, {"Last-Event-ID": seen[0]["id"]})
    try:
        assert next(messages)["id"] == seen[1]["id"]
    finally:
        conn.close()


def test_sse_heartbeats(serve: Callable[..., Served]) -> None:
    client = serve(heartbeat=0.05).client
    conn = client.connect()
    conn.request("GET", "/api/events/stream")
    response = conn.getresponse()
    try:
        assert response.readline() == b"retry: 2000\n"
        assert response.readline() == b"\n"
        assert response.readline() == b": heartbeat\n"
    finally:
        conn.close()


# ---------------------------------------------------------------- auth and errors


def test_auth_with_the_real_server(serve: Callable[..., Served]) -> None:
    served = serve(extra="auth: {api_key: t0p-s3cret}")
    client = served.client
    refused = client.post("/api/workflows/smoke/run")
    assert refused.status == 401 and refused.headers["www-authenticate"] == 'Bearer realm="aegis"'
    assert client.post("/api/workflows/smoke/run", headers={"X-API-Key": "nope"}).status == 401
    by_header = client.run("smoke", headers={"X-API-Key": "t0p-s3cret"})
    by_bearer = client.run("smoke", headers={"Authorization": "Bearer t0p-s3cret"})
    assert by_header != by_bearer
    cancel = client.post(f"/api/runs/{by_header}/cancel")
    assert cancel.status == 401
    for path in ["/api/openapi.json", "/api/portfolio", "/api/workflows", "/api/runs"]:
        assert b"t0p-s3cret" not in client.get(path).body
    assert "t0p-s3cret" not in served.log.getvalue()
    assert '"POST /api/workflows/smoke/run" 401' in served.log.getvalue()


@pytest.mark.parametrize(
    "path", ["/../aegis/cli.py", "/%2e%2e/%2e%2e/etc/passwd", "/%252e%252e/history.db", "/..\\x"]
)
def test_dot_dot_paths_on_the_real_server(client: Client, path: str) -> None:
    reply = client.get(path)
    assert reply.status == 404 and reply.data["error"]["code"] == "not_found"


def test_method_not_allowed(client: Client) -> None:
    reply = client.send("PUT", "/api/workflows/smoke")
    assert reply.status == 405 and reply.headers["allow"] == "GET, HEAD"
    assert reply.data["error"]["code"] == "method_not_allowed"


# ---------------------------------------------------------------------- lifecycle


def test_the_app_lifecycle(tmp_path: Path, demo: DemoServices) -> None:
    app = ApiApp(make_config(tmp_path, demo), environ={}, port=0)
    with pytest.raises(RuntimeError, match="not started"):
        app.url  # noqa: B018
    with app:
        assert app.url.startswith("http://127.0.0.1:")
        with pytest.raises(RuntimeError, match="already started"):
            app.start()
        taken = app.server.server_address[1]
        clash = ApiApp(make_config(tmp_path, demo), environ={}, host="127.0.0.1", port=taken)
        with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{taken}"):
            clash.start()
        clash.stop()  # nothing left running: stopping again is harmless
    app.stop()


def test_an_unwritable_history_falls_back_to_memory(tmp_path: Path, demo: DemoServices) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = make_config(tmp_path, demo, history=f"{blocker}/history.db")
    warnings: list[str] = []
    with ApiApp(config, environ={}, port=0, warn=warnings.append) as app:
        client = Client(app.url)
        assert client.post("/api/workflows/smoke/run?wait=30").data["status"] == "succeeded"
        assert client.get("/api/history").data["total"] == 1
    assert len(warnings) == 1 and "keeping this run's history in memory" in warnings[0]
    with ApiApp(config, environ={}, port=0) as quiet:  # warnings go nowhere by default
        assert Client(quiet.url).get("/health").status == 200


def test_a_healthy_history_file_is_opened_on_first_use(tmp_path: Path, demo: DemoServices) -> None:
    """An idle server does not load SQLite; a file that is no database warns at start."""
    from aegis.history.background import BackgroundWrites
    from aegis.history.deferred import DeferredHistory

    with ApiApp(make_config(tmp_path, demo), environ={}, port=0) as app:
        writes = app._part("history")
        assert isinstance(writes, BackgroundWrites)  # no store call on the loop
        store = writes.store
        assert isinstance(store, DeferredHistory) and not store.opened
        assert Client(app.url).get("/health").status == 200
        assert not store.opened
        assert Client(app.url).get("/api/history").data["total"] == 0
        assert store.opened and (tmp_path / "history.db").exists()
    (tmp_path / "notes.db").write_text("not a database")
    warnings: list[str] = []
    config = make_config(tmp_path, demo, history="notes.db")
    with ApiApp(config, environ={}, port=0, warn=warnings.append) as app:
        assert len(warnings) == 1 and "notes.db" in warnings[0]  # before any request


def test_stopping_goes_on_when_a_part_fails(
    tmp_path: Path,
    demo: DemoServices,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from aegis.api.health import HealthCache

    async def broken(self: Any) -> None:
        raise RuntimeError("cannot close")

    from aegis.history.memory import MemoryHistory

    class Store(MemoryHistory):
        closed = False

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(HealthCache, "close", broken)
    store = Store()
    app = ApiApp(make_config(tmp_path, demo), environ={}, port=0, history=store).start()
    app.stop()
    assert "stopping the API server" in caplog.text
    assert store.closed  # closed all the same
