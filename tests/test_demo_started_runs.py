"""The reference qaagent's start-and-poll API (``aegis.demo.started_runs``)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from aegis.demo import DemoServices, QaAgent


@pytest.fixture
def client(demo: DemoServices) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo.qaagent_url, timeout=10) as c:
        yield c


def test_start_poll_findings(client: httpx.Client) -> None:
    started = client.post("/api/branches/feat%2Fx%20%C3%BC/run-tests", json={"suite": "api"})
    assert started.status_code == 202
    assert started.json() == {"run_id": "tr-1", "branch": "feat/x ü", "status": "queued"}
    too_soon = client.get("/api/runs/tr-1/findings")
    assert too_soon.status_code == 409
    running = client.get("/api/runs/tr-1").json()
    assert running == {"run_id": "tr-1", "branch": "feat/x ü", "suite": "api", "status": "running"}
    done = client.get("/api/runs/tr-1").json()
    assert done["status"] == "completed"
    assert done["summary"] == {"total": 4, "passed": 3, "failed": 1}
    findings = client.get("/api/runs/tr-1/findings").json()
    assert findings["findings"] == [
        {
            "test_id": "test_api_login_rate_limit",
            "title": "test_api_login_rate_limit failed",
            "message": "TimeoutError: POST /api/login took 5.2 s (limit 2 s)",
        }
    ]


def test_a_rerun_of_given_tests(client: httpx.Client, demo: DemoServices) -> None:
    demo.qaagent.started.polls_until_done = 0
    body = {"tests": ["test_api_login_rate_limit", "nope"]}
    run_id = client.post("/api/branches/main/run-tests", json=body).json()["run_id"]
    assert client.get(f"/api/runs/{run_id}").json()["summary"] == {
        "total": 2,
        "passed": 1,
        "failed": 1,
    }


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/api/branches/main/run-tests", None, 405),
        ("POST", "/api/runs/tr-1", None, 405),
        ("GET", "/api/runs/tr-9", None, 404),
        ("GET", "/api/runs/tr-9/findings", None, 404),
        ("POST", "/api/branches/main/run-tests", [1], 422),
        ("POST", "/api/branches/main/run-tests", {"suite": 3}, 422),
        ("POST", "/api/branches/main/run-tests", {"suite": "nope"}, 422),
    ],
)
def test_bad_requests(
    client: httpx.Client, method: str, path: str, body: object, status: int
) -> None:
    assert client.request(method, path, json=body).status_code == status


def test_a_start_with_no_body_runs_everything(client: httpx.Client) -> None:
    assert client.post("/api/branches/main/run-tests").status_code == 202


def test_the_api_key_is_checked() -> None:
    agent = QaAgent(api_key="k").start()
    try:
        with httpx.Client(base_url=agent.url) as c:
            assert c.get("/api/runs/tr-1").status_code == 401
            assert c.get("/api/runs/tr-1", headers={"X-API-Key": "k"}).status_code == 404
    finally:
        agent.stop()
