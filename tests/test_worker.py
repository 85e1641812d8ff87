"""Two ``aegis serve`` replicas in one process on one PostgreSQL database: runs posted to
either are claimed by either's worker, and every rule holds across them (real HTTP on
loopback, the real server; runs held at a loopback endpoint the test releases)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_api_http import poll
from worker_helpers import Loopback, call, write_config

from aegis.api.app import ApiApp
from aegis.config import load_config, parse_config
from aegis.config.model import DEFAULT_LEASE, Config
from aegis.errors import ConfigError, UsageError

Apps = Callable[..., ApiApp]


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    service = Loopback()
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
def apps(tmp_path: Path, pg_url: str, loopback: Loopback) -> Iterator[Apps]:
    started: list[ApiApp] = []

    def make(extra: str = "", **server: Any) -> ApiApp:
        config = load_config(write_config(tmp_path, pg_url, loopback.url, extra, **server))
        app = ApiApp(config, environ={}).start()
        started.append(app)
        return app

    try:
        yield make
    finally:
        loopback.release()  # runs still held end at once
        for app in started:
            app.stop(timeout=1)


def post(app: ApiApp, workflow: str, query: str = "", **headers: str) -> tuple[int, Any]:
    return call(f"{app.url}/api/workflows/{workflow}/run{query}", "POST", {}, **headers)


def status(app: ApiApp, run_id: str) -> str:
    return str(call(f"{app.url}/api/runs/{run_id}")[1]["status"])


def test_a_run_posted_to_one_replica_is_run_and_seen_by_both(apps: Apps) -> None:
    a, b = apps(), apps()
    code, run = post(a, "quick", "?wait=20")
    assert code == 200 and run["status"] == "succeeded", run
    assert call(f"{b.url}/api/runs/{run['run_id']}")[1]["steps"][0]["status"] == "succeeded"
    page = call(f"{b.url}/api/runs?workflow=quick")[1]
    assert page["total"] == 1


def test_a_replica_pages_the_shared_history_by_keyset(apps: Apps) -> None:
    a, b = apps(), apps()
    ids = [post(a, "quick", "?wait=20")[1]["run_id"] for _ in range(3)]
    newest = call(f"{b.url}/api/history?limit=1")[1]
    assert [r["run_id"] for r in newest["runs"]] == ids[-1:] and newest["total"] == 3
    older = call(f"{b.url}/api/history?limit=5&before={ids[-1]}")[1]
    assert [r["run_id"] for r in older["runs"]] == ids[-2::-1]


def test_an_idempotency_key_holds_across_replicas(apps: Apps) -> None:
    a, b = apps(), apps()
    first = post(a, "quick", **{"Idempotency-Key": "build-7"})[1]
    again = post(b, "quick", **{"Idempotency-Key": "build-7"})[1]
    assert again["run_id"] == first["run_id"]
    other = post(b, "quick", **{"Idempotency-Key": "build-8"})[1]
    assert other["run_id"] != first["run_id"]


def test_cancel_from_the_other_replica(apps: Apps, loopback: Loopback) -> None:
    a, b = apps(max_concurrent_runs=1), apps(max_concurrent_runs=1)
    ids = [post(a, "slow")[1]["run_id"] for _ in range(3)]
    poll(lambda: loopback.blocked == 2)
    queued = [i for i in ids if status(b, i) == "queued"]
    assert len(queued) == 1
    code, run = call(f"{b.url}/api/runs/{queued[0]}/cancel", "POST", {})
    assert code == 202 and run["status"] == "cancelled"
    running = [i for i in ids if i not in queued]
    for run_id in running:  # wherever it runs
        code, run = call(f"{b.url}/api/runs/{run_id}/cancel", "POST", {})
        assert code == 202 and run["status"] == "cancelled", run
        assert run["steps"][0]["status"] == "cancelled"
    code, refused = call(f"{a.url}/api/runs/{running[0]}/cancel", "POST", {})
    assert code == 409 and "already finished" in refused["error"]["message"]


def test_skip_refuses_a_run_going_on_another_replica(apps: Apps, loopback: Loopback) -> None:
    a, b = apps(), apps()
    code, first = post(a, "one")
    assert code == 202
    code, refused = post(b, "one")
    assert code == 409 and refused["error"]["run_id"] == first["run_id"], refused
    assert "concurrency limit is 1" in refused["error"]["message"]
    loopback.release()
    poll(lambda: status(b, first["run_id"]) == "succeeded")
    # nothing in the way once its worker has taken it out of the queue (just after its
    # record says it ended): a refused trigger starts nothing, so trying again is safe
    poll(lambda: post(b, "one")[0] == 202)


def test_queue_runs_one_at_a_time_across_replicas(apps: Apps, loopback: Loopback) -> None:
    a, b = apps(), apps()
    first = post(a, "lined")[1]["run_id"]
    second = post(b, "lined")[1]["run_id"]
    poll(lambda: loopback.blocked == 1)
    assert status(a, second) == "queued" and loopback.blocked == 1
    loopback.release()
    poll(lambda: status(a, second) == "succeeded")
    assert status(b, first) == "succeeded"


def test_the_bound_counts_the_shared_queue(apps: Apps, loopback: Loopback) -> None:
    a, b = apps(max_concurrent_runs=1, max_queued_runs=1), apps(max_concurrent_runs=1)
    post(a, "slow")
    post(b, "slow")
    poll(lambda: loopback.blocked == 2)
    assert post(b, "slow")[0] == 202  # waits
    code, refused = post(a, "slow")
    assert code == 429 and "queue is full" in refused["error"]["message"]


def test_cancel_running_replaces_the_run_on_the_other_replica(
    apps: Apps, loopback: Loopback
) -> None:
    extra = """
    latest:
      concurrency: {limit: 1, on_conflict: cancel_running}
      steps: [{type: http, service: svc, timeout: 60, with: {path: /block}}]
    """
    a, b = apps(extra), apps(extra)
    old = post(a, "latest")[1]["run_id"]
    poll(lambda: loopback.blocked == 1)
    new = post(b, "latest")[1]["run_id"]
    assert status(a, old) == "cancelled"
    loopback.release()
    poll(lambda: status(a, new) == "succeeded")


def test_a_rerun_on_the_other_replica(apps: Apps) -> None:
    a, b = apps(), apps()
    first = post(a, "quick", "?wait=20")[1]
    code, rerun = call(f"{b.url}/api/runs/{first['run_id']}/rerun", "POST", {})
    assert code == 202, rerun
    poll(lambda: status(a, rerun["run_id"]) == "succeeded")
    assert call(f"{a.url}/api/runs/{rerun['run_id']}")[1]["rerun_of"] == first["run_id"]


def test_a_stopping_replica_hands_its_runs_back(apps: Apps, loopback: Loopback) -> None:
    a = apps(max_concurrent_runs=2)
    kept = post(a, "slow")[1]["run_id"]
    again = post(a, "slow_requeue")[1]["run_id"]
    poll(lambda: loopback.blocked == 2)
    a.stop(timeout=0.2)
    b = apps()
    assert status(b, kept) == "interrupted"
    loopback.release()
    poll(lambda: status(b, again) == "succeeded")


def test_an_unreachable_database_is_one_line(tmp_path: Path, loopback: Loopback) -> None:
    url = "postgresql://aegis:hunter2@127.0.0.1:1/nothing"
    config = load_config(write_config(tmp_path, url, loopback.url))
    with pytest.raises(UsageError) as caught:
        ApiApp(config, environ={}).start()
    message = str(caught.value)
    assert message.startswith("history: cannot use postgresql://aegis:***@127.0.0.1:1/nothing")
    assert "hunter2" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("history: {lease: 0.5s}", "history.lease: expected a duration of at least 1s"),
        ("history: {lease: soon}", "history.lease: expected a duration"),
        ("workflows: {w: {on_interrupt: retry, steps: [{type: report}]}}",
         "workflows.w.on_interrupt: unknown on_interrupt 'retry'"),
        ("workflows: {w: {on_interrupt: 3, steps: [{type: report}]}}",
         "workflows.w.on_interrupt: expected a on_interrupt (one of: interrupted, requeue)"),
    ],
)  # fmt: skip
def test_the_new_keys_are_checked(tmp_path: Path, section: str, problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(section, file="aegis.yaml", base_dir=tmp_path, environ={})
    assert f"aegis.yaml: {problem}" in str(error.value)


def test_the_new_keys_and_their_defaults(tmp_path: Path) -> None:
    def parse(text: str) -> Config:
        return parse_config(text, file="aegis.yaml", base_dir=tmp_path, environ={})

    step = "steps: [{type: report}]"
    text = f"workflows: {{w: {{on_interrupt: requeue, {step}}}, v: {{{step}}}}}"
    config = parse(text + "\nhistory: {lease: 1m}")
    assert config.history.lease == 60.0
    assert config.workflows["w"].on_interrupt == "requeue"
    assert config.workflows["v"].on_interrupt == "interrupted"
    assert parse("workflows: {}").history.lease == DEFAULT_LEASE == 30.0
