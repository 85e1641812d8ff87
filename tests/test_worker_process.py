"""``aegis serve`` replicas and ``aegis worker``s as real processes on one PostgreSQL
database: many runs through both replicas, workers killed and stopped mid-run, schedules
fired once per tick. Runs are held at a loopback endpoint until the test releases them;
nothing sleeps to synchronise (conditions are polled with generous deadlines)."""

from __future__ import annotations

import http.client
import io
import itertools
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from postgres_server import PASSWORD, PostgresServer
from test_api_http import poll
from worker_helpers import Loopback, Proc, call, environ, processes, start, write_config

from aegis.cli import main
from aegis.history.pg_connect import PgTarget

LEASE = 2.0  # the configs' history.lease


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    service = Loopback()
    try:
        yield service
    finally:
        service.close()


def status(server: Proc, run_id: str) -> str:
    return str(call(f"{server.found}/api/runs/{run_id}")[1]["status"])


def queue_rows(postgres: PostgresServer, pg_url: str, where: str = "true") -> list[str]:
    database = PgTarget.parse(pg_url).database
    out = postgres.sql(f"SELECT run_id FROM aegis.queue WHERE {where} ORDER BY 1", database)
    return out.split()


def test_two_replicas_and_two_workers_run_each_run_once(
    tmp_path: Path, pg_url: str, postgres: PostgresServer, loopback: Loopback
) -> None:
    config = write_config(tmp_path, pg_url, loopback.url)
    config.write_text(config.read_text() + "event_log_size: 2000\n")
    replicas = [start(config, "serve", tmp_path) for _ in range(2)]
    workers = [start(config, "worker", tmp_path) for _ in range(2)]
    with processes(*replicas, *workers):
        # 200 keys, each posted once, and 50 of them again to the other replica
        posts = [(i % 2, f"key-{i}") for i in range(200)]
        posts += [((i + 1) % 2, f"key-{i}") for i in range(0, 200, 4)]

        def post(job: tuple[int, str]) -> tuple[str, str]:
            replica, key = job
            url = f"{replicas[replica].found}/api/workflows/quick/run"
            code, answer = call(url, "POST", {}, **{"Idempotency-Key": key})
            assert code in (200, 202), answer
            return key, answer["run_id"]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, posts))
        by_key: dict[str, set[str]] = {}
        for key, run_id in answers:
            by_key.setdefault(key, set()).add(run_id)
        assert len(by_key) == 200 and all(len(ids) == 1 for ids in by_key.values())

        # the queue's part: every run claimed, run once and taken out of the queue
        poll(lambda: loopback.hits >= 200 and queue_rows(postgres, pg_url) == [], timeout=90)
        assert loopback.hits == 200  # each run's step ran once

        def finished() -> int:
            page = call(f"{replicas[0].found}/api/runs?workflow=quick&status=succeeded")[1]
            return int(page["total"])

        # the records': each run recorded succeeded, once
        poll(lambda: finished() == 200, timeout=30)
        page = call(f"{replicas[1].found}/api/runs?workflow=quick&limit=1")[1]
        assert page["total"] == 200  # none queued, running or failed, none twice

        # the events: every run's, whichever process ran it, in both replicas' logs alike
        run_ids = {run_id for ids in by_key.values() for run_id in ids}

        def events(replica: Proc) -> list[tuple[int, str, str]]:
            seen: list[tuple[int, str, str]] = []
            while True:
                after = seen[-1][0] if seen else 0
                url = f"{replica.found}/api/events?limit=1000&after={after}"
                page = call(url)[1]["events"]
                if not page:
                    return seen
                seen += [(e["id"], e["type"], e["run_id"]) for e in page]

        def ended(replica: Proc) -> set[str]:
            return {run for _, kind, run in events(replica) if kind == "workflow.completed"}

        poll(lambda: all(ended(r) >= run_ids for r in replicas), timeout=30)
        first, second = events(replicas[0]), events(replicas[1])
        assert first == second
        for kind in ("workflow.started", "step.started", "step.completed"):
            assert {run for _, k, run in first if k == kind} >= run_ids, kind
        errors = [p.stderr() for p in (*workers, *replicas)]
        assert not any("deadlock" in text or "refused" in text for text in errors), errors
        for proc in (*workers, *replicas):
            proc.process.send_signal(signal.SIGTERM)
        for proc in (*workers, *replicas):
            assert proc.wait() == 0, proc.stderr()
            assert "Traceback" not in proc.stderr()


def test_a_killed_workers_runs_are_interrupted_or_requeued_within_the_lease(
    tmp_path: Path, pg_url: str, postgres: PostgresServer, loopback: Loopback
) -> None:
    serving = write_config(tmp_path, pg_url, loopback.url, max_concurrent_runs=1)
    working = write_config(tmp_path, pg_url, loopback.url, name="worker.yaml")
    server = start(serving, "serve", tmp_path)
    with processes(server):
        post = f"{server.found}/api/workflows/%s/run"
        held = call(post % "slow", "POST", {})[1]["run_id"]  # fills the replica's one slot
        poll(lambda: loopback.blocked == 1)
        lost = [call(post % "slow", "POST", {})[1]["run_id"] for _ in range(2)]
        again = [call(post % "slow_requeue", "POST", {})[1]["run_id"] for _ in range(2)]
        worker = start(working, "worker", tmp_path)
        with processes(worker):
            poll(lambda: loopback.blocked == 5)
            assert queue_rows(postgres, pg_url, f"claimed_by = '{worker.found}'") == sorted(
                lost + again
            )
            worker.process.kill()
            killed = time.monotonic()
            poll(lambda: all(status(server, r) == "interrupted" for r in lost))
            assert time.monotonic() - killed < LEASE + 5
            run = call(f"{server.found}/api/runs/{lost[0]}")[1]
            assert run["steps"][0]["status"] in ("cancelled", "skipped")
            poll(lambda: all(status(server, r) == "queued" for r in again))
            assert time.monotonic() - killed < LEASE + 5
        loopback.release()
        poll(lambda: all(status(server, r) == "succeeded" for r in [held, *again]))
        assert queue_rows(postgres, pg_url) == []


def test_a_stopped_worker_drains_then_hands_back(
    tmp_path: Path, pg_url: str, loopback: Loopback
) -> None:
    serving = write_config(tmp_path, pg_url, loopback.url, max_concurrent_runs=1)
    working = write_config(tmp_path, pg_url, loopback.url, name="worker.yaml")
    server = start(serving, "serve", tmp_path)
    with processes(server):
        post = f"{server.found}/api/workflows/%s/run"
        call(post % "slow", "POST", {})
        poll(lambda: loopback.blocked == 1)
        drained = call(post % "slow", "POST", {})[1]["run_id"]
        patient = start(working, "worker", tmp_path, "--drain-timeout", "30")
        with processes(patient):
            poll(lambda: status(server, drained) == "running")
            patient.process.send_signal(signal.SIGTERM)
            poll(lambda: "aegis: stopping" in patient.stderr())
            assert patient.process.poll() is None  # waiting for its run
            loopback.release()
            assert patient.wait() == 0
        assert status(server, drained) == "succeeded"
        loopback.released.clear()
        before = loopback.blocked
        call(post % "slow", "POST", {})  # the replica's slot again
        poll(lambda: loopback.blocked == before + 1)
        handed = call(post % "slow", "POST", {})[1]["run_id"]
        impatient = start(working, "worker", tmp_path, "--drain-timeout", "0.2")
        with processes(impatient):
            poll(lambda: status(server, handed) == "running")
            impatient.process.send_signal(signal.SIGTERM)
            assert impatient.wait() == 0, impatient.stderr()
        assert status(server, handed) == "interrupted"
        loopback.release()


def test_two_replicas_fire_each_tick_once(tmp_path: Path, pg_url: str, loopback: Loopback) -> None:
    extra = """
    ticking:
      schedule: {every: 1s}
      steps: [{type: http, service: svc, with: {path: /ok}}]
    """
    config = write_config(tmp_path, pg_url, loopback.url, extra)
    replicas = [start(config, "serve", tmp_path) for _ in range(2)]
    with processes(*replicas):

        def fired() -> list[dict[str, object]]:
            url = f"{replicas[1].found}/api/runs?workflow=ticking&limit=100"
            return list(call(url)[1]["runs"])

        poll(lambda: len(fired()) >= 10, timeout=30)
        runs = fired()
        for proc in replicas:
            proc.process.send_signal(signal.SIGTERM)
            assert proc.wait() == 0, proc.stderr()
    assert {r["trigger"] for r in runs} == {"schedule"}
    # one run per tick: two runs of one tick would start within milliseconds of each other
    times = sorted(
        datetime.fromisoformat(str(r["started_at"]).replace("Z", "+00:00")).timestamp()
        for r in runs
    )
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(times) >= 10 and min(gaps) > 0.5, gaps


def test_a_worker_needs_a_postgresql_history(tmp_path: Path) -> None:
    config = tmp_path / "aegis.yaml"
    config.write_text("workflows: {}\n")
    err = io.StringIO()
    code = main(["--config", str(config), "worker"], stdout=io.StringIO(), stderr=err)
    assert code == 2
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and "needs a PostgreSQL history (history.url" in lines[0]


def test_a_worker_says_when_its_database_cannot_be_used(tmp_path: Path) -> None:
    config = tmp_path / "aegis.yaml"
    config.write_text('history: {url: "postgresql://aegis:hunter2@127.0.0.1:1/x"}\nworkflows: {}\n')
    err = io.StringIO()
    code = main(["worker", "--config", str(config)], stdout=io.StringIO(), stderr=err)
    assert code == 2
    assert "cannot use postgresql://aegis:***@127.0.0.1:1/x" in err.getvalue()
    assert "hunter2" not in err.getvalue() and len(err.getvalue().splitlines()) == 1


def test_aegis_worker_has_help() -> None:
    out = io.StringIO()
    assert main(["worker", "--help"], stdout=out) == 0
    assert "--drain-timeout" in out.getvalue() and "--config" in out.getvalue()


def test_a_cli_run_records_in_postgresql_and_its_live_events_reach_a_replicas_stream(
    tmp_path: Path, pg_url: str, loopback: Loopback
) -> None:
    config = write_config(tmp_path, pg_url, loopback.url)
    (replica,) = replicas = [start(config, "serve", tmp_path)]
    with processes(*replicas):
        host, port = replica.found.removeprefix("http://").split(":")
        stream = http.client.HTTPConnection(host, int(port), timeout=30)
        stream.request("GET", "/api/events/stream")
        answer = stream.getresponse()
        assert answer.status == 200
        # the run is held at its step until the replica has streamed its start
        cli = subprocess.Popen(
            [sys.executable, "-m", "aegis", "--config", str(config), "run", "slow", "--json"],
            cwd=tmp_path,
            env=environ(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            seen: list[dict[str, Any]] = []
            while not any(e["type"] == "step.started" for e in seen):
                line = answer.readline().decode()
                assert line, "the stream ended"
                if line.startswith("data: "):
                    seen.append(json.loads(line.removeprefix("data: ")))
            run_id = seen[-1]["run_id"]
            assert cli.poll() is None  # live: seen while the CLI run is still going
            loopback.release()
            out, err = cli.communicate(timeout=60)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.communicate()
            stream.close()
        assert cli.returncode == 0, err
        assert json.loads(out)["run_id"] == run_id
        assert [e["type"] for e in seen if e["run_id"] == run_id][:2] == [
            "workflow.started",
            "step.started",
        ]
        record = call(f"{replica.found}/api/runs/{run_id}")[1]
        assert (record["status"], record["trigger"]) == ("succeeded", "cli")
        assert "Traceback" not in err and PASSWORD not in err + out


def cli_run(config: Path, tmp_path: Path, workflow: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aegis", "--config", str(config), "run", workflow, "--json"],
        cwd=tmp_path,
        env=environ(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_runs_keep_a_concurrency_rule_with_the_replicas(
    tmp_path: Path, pg_url: str, loopback: Loopback
) -> None:
    """`skip`: a CLI run held at its step blocks a replica's trigger (409) and another CLI
    run (exit 4), both naming it; `queue`: the second CLI run waits, then runs."""
    config = write_config(tmp_path, pg_url, loopback.url)
    (replica,) = replicas = [start(config, "serve", tmp_path)]
    with processes(*replicas):
        first = cli_run(config, tmp_path, "one")
        waiting = None
        try:
            poll(lambda: loopback.blocked == 1, timeout=30)
            held = queue_run_of(replica, "one")
            code, answer = call(f"{replica.found}/api/workflows/one/run", "POST", {})
            assert code == 409 and answer["error"]["run_id"] == held, answer
            second = cli_run(config, tmp_path, "one")
            out, err = second.communicate(timeout=60)
            assert second.returncode == 4, err
            assert "not started: workflow 'one' has 1 run(s) going" in err and held in err
            assert out == "" and "Traceback" not in err
            # queue: a second run of `lined` waits for the first's slot
            lined = cli_run(config, tmp_path, "lined")
            poll(lambda: loopback.blocked == 2, timeout=30)
            waiting = Proc(cli_run(config, tmp_path, "lined"), "")  # its stderr read as it comes
            poll(lambda: "waiting to start: workflow 'lined'" in waiting.stderr(), timeout=30)
            assert loopback.blocked == 2  # it has not started
            loopback.release()
            outputs = [p.communicate(timeout=60) for p in (first, lined)]
            assert waiting.wait(60) == 0, waiting.stderr()
            assert waiting.process.stdout is not None
            outputs.append((waiting.process.stdout.read(), waiting.stderr()))
        finally:
            loopback.release()
            for process in (first, None if waiting is None else waiting.process):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
        assert [p.returncode for p in (first, lined)] == [0, 0], outputs
        ran = [json.loads(out) for out, _ in outputs]
        assert ran[2]["started_at"] >= ran[1]["finished_at"]  # one after the other
        assert queue_rows_via(replica) == 0


def queue_run_of(replica: Proc, workflow: str) -> str:
    runs = call(f"{replica.found}/api/runs?workflow={workflow}&status=running")[1]["runs"]
    assert len(runs) == 1, runs
    return str(runs[0]["run_id"])


def queue_rows_via(replica: Proc) -> int:
    return int(call(f"{replica.found}/api/runs?status=running")[1]["total"])


def test_a_cli_run_goes_ahead_without_its_rule_when_the_database_is_away(
    tmp_path: Path, loopback: Loopback
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path, f"postgresql://qa:{PASSWORD}@127.0.0.1:{port}/qa", loopback.url)
    loopback.release()
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(config), "run", "one", "--quiet"], stdout=out, stderr=err,
                environ={})  # fmt: skip
    assert code == 0, err.getvalue()
    assert "the concurrency rule of 'one' is not applied to this run" in err.getvalue()
    assert PASSWORD not in err.getvalue() and "Traceback" not in err.getvalue()
