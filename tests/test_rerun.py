"""Rerunning a run, from scratch or from its failed step: the engine over the reference
services (which count every request), history, the run manager, the API and the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from aegis.api.app import ApiApp
from aegis.api.manager import RunManager
from aegis.cli import main
from aegis.config import parse_config
from aegis.config.model import Config
from aegis.demo import DemoServices, Fault
from aegis.engine.rerun import carried_steps
from aegis.engine.runner import Engine
from aegis.errors import Conflict, NotFound
from aegis.events import EventBus
from aegis.history.memory import MemoryHistory
from aegis.history.sqlite import SqliteHistory
from aegis.records import Run, RunStatus, StepStatus
from aegis.steps.registry import default_step_types

# Five steps; the third files bugs and fails while the bug tracker is down.
WORKFLOW = """
services:
  qaagent: {url: "%(qaagent)s"}
  bugalizer: {url: "%(bugalizer)s"}
workflows:
  five:
    steps:
      - {type: discover, service: qaagent}
      - {type: test, service: qaagent}
      # on_existing: file, so the clean run compared below files its own reports
      - {type: submit_bugs, service: bugalizer, condition: has_failures,
         with: {project_id: web-shop, on_existing: file}}
      - {type: verify, service: qaagent, condition: has_failures}
      - {type: report, condition: always}
history: {path: history.db}
"""


def make_config(demo: DemoServices, tmp_path: Path) -> Config:
    text = WORKFLOW % {"qaagent": demo.qaagent_url, "bugalizer": demo.bugalizer_url}
    (tmp_path / "aegis.yaml").write_text(text)
    types = default_step_types()
    return parse_config(text, file="aegis.yaml", base_dir=tmp_path, environ={}, step_types=types)


def full_runs(demo: DemoServices) -> int:
    """Test runs the qaagent was asked for (verify's reruns of failing tests aside)."""
    return sum(
        1
        for c in demo.qaagent.calls
        if c.path == "/api/runs" and not (c.json or {}).get("verify_only")
    )


def discoveries(demo: DemoServices) -> int:
    return sum(1 for c in demo.qaagent.calls if c.path == "/api/routes")


async def failed_at_third_step(demo: DemoServices, engine: Engine) -> Run:
    demo.bugalizer.inject("/api/v1/reports", Fault(status=503, times=1))
    run = await engine.run("five")
    assert [s.status for s in run.steps][:3] == [
        StepStatus.SUCCEEDED,
        StepStatus.SUCCEEDED,
        StepStatus.FAILED,
    ]
    return run


async def test_from_failed_reuses_the_first_steps_and_ends_as_a_clean_run(
    demo: DemoServices, tmp_path: Path
) -> None:
    config = make_config(demo, tmp_path)
    types = default_step_types()
    store = SqliteHistory(tmp_path / "history.db")
    engine = Engine(config, types, history=store, bus=EventBus())
    failed = await failed_at_third_step(demo, engine)
    calls = (discoveries(demo), full_runs(demo))
    # the service has recovered: rerun from the failed step
    old = store.get(failed.run_id)
    assert old is not None
    reuse = carried_steps(config.workflows["five"], old)
    assert sorted(reuse) == [0, 1]
    rerun = await engine.run("five", rerun_of=failed.run_id, reuse=reuse)
    assert (discoveries(demo), full_runs(demo)) == calls  # steps 1-2 were not run again
    assert rerun.rerun_of == failed.run_id
    assert [s.reused for s in rerun.steps] == [True, True, False, False, False]
    assert rerun.steps[1].data == failed.steps[1].data
    assert rerun.steps[1].attempts == failed.steps[1].attempts
    # the same as a clean run: same statuses, verdict, bugs filed, report
    clean = await engine.run("five")
    assert [s.status for s in rerun.steps] == [s.status for s in clean.steps]
    assert (rerun.status, rerun.verdict) == (clean.status, clean.verdict)
    assert rerun.status is RunStatus.SUCCEEDED
    assert rerun.steps[2].data["submitted"] == clean.steps[2].data["submitted"] > 0
    for key in ("step_count", "status_counts", "tests", "open_failure_count"):
        assert rerun.steps[4].data[key] == clean.steps[4].data[key], key
    # history keeps the link and the marks
    stored = store.get(rerun.run_id)
    assert stored is not None and stored.rerun_of == failed.run_id
    assert [s.reused for s in stored.steps] == [True, True, False, False, False]
    listed = store.list(limit=3)
    assert [r.rerun_of for r in listed] == [None, failed.run_id, None]
    assert [s.reused for s in listed[1].steps][:2] == [True, True]
    store.close()


async def test_a_plain_rerun_runs_every_step_again(demo: DemoServices, tmp_path: Path) -> None:
    config = make_config(demo, tmp_path)
    engine = Engine(config, default_step_types(), history=MemoryHistory())
    failed = await failed_at_third_step(demo, engine)
    before = discoveries(demo)
    rerun = await engine.run("five", rerun_of=failed.run_id)
    assert discoveries(demo) == before + 1
    assert not any(s.reused for s in rerun.steps)
    assert rerun.to_dict()["rerun_of"] == failed.run_id


def test_carry_over_stops_at_a_step_renamed_since() -> None:
    from dataclasses import replace

    from aegis.config.model import StepSpec, WorkflowSpec
    from aegis.records import StepResult

    def ok(name: str) -> StepResult:
        return StepResult(name=name, type="report", service=None, status=StepStatus.SUCCEEDED)

    steps = tuple(StepSpec(type="report", name=n) for n in ("a", "b", "c"))
    workflow = WorkflowSpec(key="w", name="w", steps=steps)
    run = Run("r1", "w", RunStatus.FAILED, "2026-01-01T00:00:00.000Z", steps=(ok("a"), ok("b")))
    assert sorted(carried_steps(workflow, run)) == [0, 1]  # c never ran: it runs
    renamed = replace(workflow, steps=(steps[0], replace(steps[1], name="B"), steps[2]))
    assert sorted(carried_steps(renamed, run)) == [0]
    whole = replace(run, steps=(ok("a"), ok("b"), ok("c")))
    with pytest.raises(Conflict, match="no failed, skipped or unreached step to rerun from"):
        carried_steps(workflow, whole)


async def test_the_manager_refuses_to_rerun_a_run_still_going_or_unknown(
    demo: DemoServices, tmp_path: Path
) -> None:
    config = make_config(demo, tmp_path)
    history = MemoryHistory()
    queued = Run("abcdef", "five", RunStatus.QUEUED, "2026-01-01T00:00:00.000Z")
    history.start(queued)
    manager = RunManager(
        config, default_step_types(), history, bus=EventBus(), max_concurrent=1, environ={}
    )
    with pytest.raises(Conflict, match="is queued; rerun it once it has finished"):
        await manager.rerun("abcdef")
    with pytest.raises(NotFound):
        await manager.rerun("nothere")
    gone = Run("fedcba", "old", RunStatus.FAILED, "2026-01-01T00:00:00.000Z")
    history.finish(gone)
    with pytest.raises(Conflict, match="which the config no longer has"):
        await manager.rerun("fedcba")
    await manager.shutdown()


def http(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        data = None if body is None else json.dumps(body)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


def finished(url: str, run_id: str) -> dict[str, Any]:
    import threading
    import time

    deadline = time.monotonic() + 20
    while True:
        status, run = http(url, "GET", f"/api/runs/{run_id}")
        if status == 200 and run["status"] not in ("queued", "running"):
            return run  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, run
        threading.Event().wait(0.02)


def test_rerun_through_the_api(demo: DemoServices, tmp_path: Path) -> None:
    config = make_config(demo, tmp_path)
    demo.bugalizer.inject("/api/v1/reports", Fault(status=503, times=1))
    with ApiApp(config, environ={}, port=0) as app:
        status, accepted = http(app.url, "POST", "/api/workflows/five/run")
        assert status == 202
        failed = finished(app.url, accepted["run_id"])
        assert failed["status"] == "failed"
        calls = (discoveries(demo), full_runs(demo))
        status, again = http(
            app.url, "POST", f"/api/runs/{failed['run_id']}/rerun", {"from_failed": True}
        )
        assert status == 202 and again["url"] == f"/api/runs/{again['run_id']}"
        rerun = finished(app.url, again["run_id"])
        assert rerun["rerun_of"] == failed["run_id"] and rerun["status"] == "succeeded"
        assert [s["reused"] for s in rerun["steps"]] == [True, True, False, False, False]
        assert (discoveries(demo), full_runs(demo)) == calls
        status, error = http(app.url, "POST", f"/api/runs/{failed['run_id']}/rerun", [])
        assert status == 400
        status, error = http(
            app.url, "POST", f"/api/runs/{failed['run_id']}/rerun", {"from_failed": "yes"}
        )
        assert (status, error["error"]["message"]) == (400, "'from_failed' must be true or false")
        status, error = http(app.url, "POST", "/api/runs/nothere/rerun", {"params": []})
        assert status == 400
        status, error = http(app.url, "POST", "/api/runs/nothere/rerun")
        assert (status, error["error"]["code"]) == (404, "not_found")


def test_rerun_on_the_command_line(demo: DemoServices, tmp_path: Path) -> None:
    make_config(demo, tmp_path)
    config_path = str(tmp_path / "aegis.yaml")
    demo.bugalizer.inject("/api/v1/reports", Fault(status=503, times=1))
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", config_path, "run", "five", "--json"], stdout=out, stderr=err)
    assert code == 3, err.getvalue()
    failed = json.loads(out.getvalue())
    calls = (discoveries(demo), full_runs(demo))
    out = io.StringIO()
    junit = tmp_path / "out" / "rerun.xml"
    argv = ["--config", config_path, "rerun", failed["run_id"][:8], "--from-failed", "--json"]
    argv += ["--junit", str(junit)]
    err = io.StringIO()
    code = main(argv, stdout=out, stderr=err, environ={})
    assert code == 1, err.getvalue()  # as a clean run: verify leaves a test failing
    assert "  = discover succeeded before: reused, not run again" in err.getvalue()
    rerun = json.loads(out.getvalue())
    assert rerun["rerun_of"] == failed["run_id"]
    assert [s["reused"] for s in rerun["steps"]] == [True, True, False, False, False]
    assert (discoveries(demo), full_runs(demo)) == calls
    assert "<testsuite" in junit.read_text()
    err = io.StringIO()
    assert main(["--config", config_path, "rerun", "nothere"], stderr=err, environ={}) == 2
    assert "no run 'nothere'" in err.getvalue()
    out = io.StringIO()
    code = main(["--config", config_path, "rerun", failed["run_id"], "--quiet"], stdout=out)
    assert code == 1 and "five" in out.getvalue()
