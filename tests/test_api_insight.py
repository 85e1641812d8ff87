"""Test history, trends, metrics and ``auth.protect`` over real HTTP: ``ApiApp`` on a
loopback port in front of the demo services, a SQLite history file behind it."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_api_http import Client, make_config, poll

from aegis.api.app import ApiApp
from aegis.api.server import AccessLog
from aegis.config import parse_config
from aegis.demo import DemoServices, Fault
from aegis.errors import ConfigError
from aegis.steps.registry import default_step_types

FLAKY = "test_api_login_rate_limit"


@pytest.fixture
def serve(tmp_path: Path, demo: DemoServices) -> Iterator[Callable[..., ApiApp]]:
    apps: list[ApiApp] = []

    def start(extra: str = "", concurrency: int = 2) -> ApiApp:
        config = make_config(tmp_path, demo, extra=extra, concurrency=concurrency)
        app = ApiApp(config, environ={}, port=0, access_log=AccessLog(io.StringIO())).start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


def finished_runs(client: Client, workflow: str, count: int) -> list[dict[str, Any]]:
    return [client.finished(client.run(workflow)) for _ in range(count)]


def samples(text: str) -> dict[str, list[Any]]:
    """The samples of each metric family, parsed by prometheus_client's own parser."""
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def total(found: list[Any], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in found
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_the_test_history_names_the_flaky_test_and_the_broken_ones(
    serve: Callable[..., ApiApp],
) -> None:
    client = Client(serve().url)
    runs = finished_runs(client, "pipeline", 3)

    flaky = client.get("/api/tests?flaky=true").data
    every = client.get("/api/tests?workflow=pipeline&limit=100").data["tests"]
    detail = client.get(f"/api/tests/{quote(FLAKY, safe='')}?limit=2").data

    assert [t["test_id"] for t in flaky["tests"]] == [FLAKY] and flaky["flaky"] is True
    assert flaky["tests"][0]["flips"] == 3 and flaky["tests"][0]["flakiness"] == 1.0
    broken = [t for t in every if t["test_id"] != FLAKY]
    assert broken and all(t["failures"] == 3 and t["flips"] == 0 for t in broken)
    assert all(t["last_failure"]["run_id"] == runs[-1]["run_id"] for t in broken)
    outcomes = detail["outcomes"]
    assert [o["run_id"] for o in outcomes] == [runs[2]["run_id"], runs[1]["run_id"]]
    assert {o["outcome"] for o in outcomes} == {"passed_on_rerun"}
    assert all(o["bug_report"] and o["run_url"] == f"/api/runs/{o['run_id']}" for o in outcomes)
    assert detail["workflows"][0]["runs"] == 3
    assert client.get("/api/tests/nothing-like-it").status == 404
    assert client.get("/api/tests?flaky=maybe").status == 400


def test_trends_give_the_last_finished_runs_oldest_first(serve: Callable[..., ApiApp]) -> None:
    client = Client(serve().url)
    runs = finished_runs(client, "pipeline", 3) + finished_runs(client, "smoke", 1)

    trends = client.get("/api/workflows/pipeline/trends?limit=2").data
    smoke = client.get("/api/workflows/smoke/trends").data

    assert [p["run_id"] for p in trends["runs"]] == [runs[1]["run_id"], runs[2]["run_id"]]
    point = trends["runs"][-1]
    assert point["verdict"] == runs[2]["verdict"] and point["status"] == runs[2]["status"]
    assert point["duration_ms"] == runs[2]["duration_ms"]
    assert point["failing_tests"] == len([t for t in client.get("/api/tests").data["tests"]
                                          if t["last_outcome"] == "failed"])  # fmt: skip
    assert smoke["limit"] == 50 and smoke["runs"][0]["failing_tests"] is None  # no tests
    assert client.get("/api/workflows/nope/trends").status == 404


def test_run_lists_filter_by_trigger(serve: Callable[..., ApiApp]) -> None:
    client = Client(serve().url)
    finished_runs(client, "smoke", 2)

    assert client.get("/api/runs?trigger=api").data["total"] == 2
    assert client.get("/api/runs?trigger=cli").data == {
        "runs": [],
        "total": 0,
        "limit": 20,
        "offset": 0,
    }


def test_metrics_parse_and_match_the_history_after_a_mixed_workload(
    serve: Callable[..., ApiApp], demo: DemoServices
) -> None:
    app = serve(concurrency=1)
    client = Client(app.url)
    finished_runs(client, "pipeline", 2)
    finished_runs(client, "smoke", 3)
    demo.qaagent.inject("/api/runs", Fault(status=503, times=1))  # one retry of `test`
    finished_runs(client, "pipeline", 1)
    demo.qaagent.inject("/api/runs", Fault(status=None, delay=60, times=None))
    hanging = client.run("slow")
    queued = client.run("smoke")
    poll(lambda: client.in_test_step(hanging))
    during = samples(client.get("/metrics").body.decode())
    assert total(during["aegis_runs_in_flight"], "aegis_runs_in_flight") == 1
    assert total(during["aegis_runs_queued"], "aegis_runs_queued") == 1
    client.post(f"/api/runs/{queued}/cancel")
    client.post(f"/api/runs/{hanging}/cancel")
    poll(lambda: client.status(hanging) == "cancelled")

    reply = client.get("/metrics")
    found = samples(reply.body.decode())

    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    history = client.get("/api/runs?limit=100").data["runs"]
    started = found["aegis_runs_started"]
    finished = found["aegis_runs_finished"]
    for workflow in ("pipeline", "smoke", "slow"):
        mine = [r for r in history if r["workflow"] == workflow]
        for status in {r["status"] for r in mine}:
            count = sum(r["status"] == status for r in mine)
            assert total(finished, "aegis_runs_finished_total", workflow=workflow,
                         status=status, trigger="api") == count  # fmt: skip
    # the queued run was cancelled before it started: finished, never started
    assert total(started, "aegis_runs_started_total") == len(history) - 1
    assert total(finished, "aegis_runs_finished_total") == len(history)
    steps = [s for r in history for s in r["steps"] if s["status"] != "skipped"]
    durations = found["aegis_step_duration_seconds"]
    assert total(durations, "aegis_step_duration_seconds_count") == len(steps)
    assert total(found["aegis_step_retries"], "aegis_step_retries_total", type="test") == 1
    attempts = sum(
        len(client.get(f"/api/runs/{r['run_id']}").data["steps"][i]["attempts"])
        for r in history
        for i, _ in enumerate(r["steps"])
    )
    assert total(found["aegis_step_attempts"], "aegis_step_attempts_total") == attempts
    assert total(found["aegis_runs_in_flight"], "aegis_runs_in_flight") == 0
    assert total(found["aegis_runs_queued"], "aegis_runs_queued") == 0
    for name in ("aegis_webhook_deliveries", "aegis_webhook_failures", "aegis_history_errors"):
        assert total(found[name], f"{name}_total") == 0
    assert {s.labels["outcome"]: s.value for s in found["aegis_schedule_ticks"]} == {
        "fired": 0,
        "skipped": 0,
    }
    assert "run_id" not in reply.body.decode() and hanging not in reply.body.decode()


def test_webhook_deliveries_and_history_errors_are_counted(
    serve: Callable[..., ApiApp], demo: DemoServices, tmp_path: Path
) -> None:
    (tmp_path / "history.db").mkdir()  # the history file cannot be opened: one warning
    hook = f"webhooks: [{{url: '{demo.bugalizer_url}/nowhere', events: [workflow.completed]}}]"
    client = Client(serve(hook).url)
    finished_runs(client, "smoke", 1)

    def counted() -> dict[str, list[Any]] | None:
        found = samples(client.get("/metrics").body.decode())
        done = total(found["aegis_webhook_failures"], "aegis_webhook_failures_total")
        return found if done else None

    found = poll(counted)
    assert total(found["aegis_webhook_failures"], "aegis_webhook_failures_total") == 1
    assert total(found["aegis_history_errors"], "aegis_history_errors_total") == 1


# -------------------------------------------------------------------- auth.protect

KEY = "k-123"


def test_protect_all_needs_the_key_for_every_read_but_the_page_and_health(
    serve: Callable[..., ApiApp],
) -> None:
    app = serve(f"auth: {{api_key: {KEY}, protect: all}}")
    anonymous = Client(app.url)
    keyed = Client(app.url, {"X-API-Key": KEY})

    for path in ("/api/runs", "/api/tests", "/api/workflows", "/api/events/stream",
                 "/metrics", "/api/openapi.json", "/api/workflows/smoke/trends"):  # fmt: skip
        reply = anonymous.get(path)
        assert reply.status == 401, path
        assert reply.data["error"]["code"] == "unauthorized"
    for path in ("/", "/app.js", "/styles.css", "/health"):
        assert anonymous.get(path).status == 200, path
    assert keyed.get("/api/runs").status == 200
    assert keyed.get("/metrics").status == 200
    document = keyed.get("/api/openapi.json").data
    assert document["paths"]["/api/runs"]["get"]["security"]
    assert "security" not in document["paths"]["/health"]["get"]


def test_protect_writes_is_the_default(serve: Callable[..., ApiApp]) -> None:
    app = serve(f"auth: {{api_key: {KEY}}}")
    anonymous = Client(app.url)

    assert anonymous.get("/api/runs").status == 200
    assert anonymous.post("/api/workflows/smoke/run").status == 401
    document = anonymous.get("/api/openapi.json").data
    assert "security" not in document["paths"]["/api/runs"]["get"]


@pytest.mark.parametrize(
    ("auth", "problem"),
    [
        ("{protect: all}", "aegis.yaml: auth.protect: 'all' needs auth.api_key"),
        ("{api_key: k, protect: reads}", "aegis.yaml: auth.protect: unknown value 'reads'"),
    ],
)
def test_protect_is_validated(auth: str, problem: str) -> None:
    text = f"workflows: {{w: {{steps: [{{type: report}}]}}}}\nauth: {auth}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, file="aegis.yaml", base_dir=Path("."), environ={},
                     step_types=default_step_types())  # fmt: skip
    assert problem in str(caught.value)
