"""PostgresHistory against a real PostgreSQL server: what the shared contract tests
(tests/test_history.py, _tests.py, _retention.py run it too) do not cover: migrations,
ticks claimed once, owners and crashes, the plans of listings, failures, the CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from postgres_server import PASSWORD, PostgresServer
from test_history import finished, make_run, make_step

from aegis.config.model import HistorySpec
from aegis.history import HistoryStore, HistoryUnavailable, open_history, open_recording_history
from aegis.history.memory import MemoryHistory
from aegis.history.owners import Owner
from aegis.history.pg_connect import PgTarget, connect
from aegis.history.pg_statements import list_sql
from aegis.history.postgres import PostgresHistory
from aegis.records import RunStatus

Warnings = list[str]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def sql(url: str, statement: str, **params: Any) -> Any:
    connection, _ = connect(PgTarget.parse(url))
    try:
        return connection.run(statement, **params)
    finally:
        connection.close()


@pytest.fixture
def opened(pg_url: str) -> Iterator[Callable[..., PostgresHistory]]:
    """Opens stores on the test's database; closes them after it."""
    stores: list[PostgresHistory] = []

    def open_store(**options: Any) -> PostgresHistory:
        store = PostgresHistory.open(pg_url, **options)
        stores.append(store)
        return store

    yield open_store
    for store in stores:
        store.close()


# ------------------------------------------------------------------ migrations


def versions(url: str) -> list[int]:
    return [row[0] for row in sql(url, "SELECT version FROM aegis.schema_version")]


def test_a_fresh_database_gets_schema_version_one(opened: Any, pg_url: str) -> None:
    opened()
    assert versions(pg_url) == [1]
    opened()  # and a second open changes nothing
    assert versions(pg_url) == [1]


def test_stores_opening_at_once_migrate_once(pg_url: str) -> None:
    errors: list[BaseException] = []
    stores: list[PostgresHistory] = []
    go = threading.Barrier(4)

    def open_one() -> None:
        go.wait()
        try:
            stores.append(PostgresHistory.open(pg_url))
        except BaseException as exc:  # pragma: no cover - what the test looks for
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert errors == [] and len(stores) == 4
    assert versions(pg_url) == [1]


def test_a_database_of_a_newer_aegis_is_refused_and_left_alone(pg_url: str) -> None:
    sql(pg_url, "CREATE SCHEMA aegis")
    sql(pg_url, "CREATE TABLE aegis.schema_version (version integer NOT NULL)")
    sql(pg_url, "INSERT INTO aegis.schema_version VALUES (99)")

    with pytest.raises(HistoryUnavailable) as raised:
        PostgresHistory.open(pg_url)

    message = str(raised.value)
    assert "written by a newer aegis: schema version 99, this one reads up to 1" in message
    assert "postgresql://aegis:***@127.0.0.1" in message and PASSWORD not in message
    assert versions(pg_url) == [99]
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'aegis'"
    assert sql(pg_url, tables) == [[1]]


# ---------------------------------------------------------------------- ticks


def test_a_tick_is_claimed_once_across_stores_and_threads(opened: Any) -> None:
    stores = [opened(), opened()]
    granted: list[bool] = []
    go = threading.Barrier(8)

    def claim(store: HistoryStore) -> None:
        go.wait()
        granted.append(store.claim_fire("nightly", "cron:0 2 * * *", 1000.0))

    threads = [threading.Thread(target=claim, args=(stores[n % 2],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(granted) == [False] * 7 + [True]
    assert stores[1].last_fire("nightly", "cron:0 2 * * *") == 1000.0
    assert not stores[0].claim_fire("nightly", "cron:0 2 * * *", 999.0)  # an earlier tick
    assert stores[0].claim_fire("nightly", "cron:0 2 * * *", 1060.0)
    assert stores[1].last_fire("nightly", "other") is None


# ------------------------------------------------------------ owners, crashes


def test_runs_of_a_dead_owner_are_interrupted_unless_queued(opened: Any, pg_url: str) -> None:
    ghost = Owner("elsewhere", 4242, "rand:x")
    dead = opened(owner=ghost, clock=lambda: 1000.0)
    dead.start(make_run("lost00000001"))
    dead.start(make_run("held00000002"))
    sql(
        pg_url,
        "INSERT INTO aegis.queue (run_id, workflow, enqueued_at) VALUES ('held00000002', 'w', 0)",
    )

    later = opened(stale_after=60.0)  # its clock is now: the ghost's heartbeat is stale

    lost = later.get("lost00000001")
    assert lost is not None and lost.status is RunStatus.INTERRUPTED
    assert later.get("held00000002").status is RunStatus.RUNNING  # type: ignore[union-attr]
    assert later.mark_interrupted() == []
    assert later.count(status="interrupted") == 1 and later.count(status="running") == 1


def test_a_run_going_keeps_its_heartbeat_fresh(opened: Any, pg_url: str) -> None:
    store = opened(heartbeat_interval=0.05)
    store.start(make_run("live00000001"))
    first = sql(pg_url, "SELECT heartbeat_at FROM aegis.runs")[0][0]

    wait_for(lambda: sql(pg_url, "SELECT heartbeat_at FROM aegis.runs")[0][0] > first)
    assert opened(stale_after=0.01).get("live00000001").status is RunStatus.RUNNING  # type: ignore[union-attr]


# -------------------------------------------------------------- listing plans


def test_listings_are_index_scans_without_a_sort_on_a_large_history(
    opened: Any, pg_url: str
) -> None:
    store = opened()
    sql(
        pg_url,
        """INSERT INTO aegis.runs (run_id, workflow, status, started_at, trigger)
        SELECT 'r' || lpad(g::text, 11, '0'), 'w' || (g % 7), 'succeeded',
            to_char(timestamp '2026-01-01' + g * interval '1 second',
                'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), 'cli'
        FROM generate_series(1, 200000) g""",
    )
    sql(pg_url, "ANALYZE aegis.runs")
    connection, _ = connect(PgTarget.parse(pg_url))
    try:
        connection.run("SET search_path TO aegis")
        for workflow, before in ((False, False), (False, True), (True, True)):
            params: dict[str, Any] = {"limit": 20, "offset": 0}
            if workflow:
                params["workflow"] = "w3"
            if before:
                params["before"] = "r00000100000"
            statement = list_sql(workflow, False, False, before)
            plan = "\n".join(r[0] for r in connection.run(f"EXPLAIN {statement}", **params))
            assert "Index Scan" in plan or "Index Only Scan" in plan, plan
            assert "Seq Scan" not in plan and "Sort" not in plan, plan
    finally:
        connection.close()

    assert store.count() == 200000 and store.count("w3") == 28572
    page = store.list(limit=3, before="r00000100000")
    assert [run.run_id for run in page] == ["r00000099999", "r00000099998", "r00000099997"]


# ------------------------------------------------------------------- failures


def test_open_history_on_an_unreachable_server_warns_once_and_keeps_memory(
    postgres: PostgresServer,
) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://aegis:{PASSWORD}@127.0.0.1:{port}/nowhere"
    warnings: Warnings = []

    store = open_history(HistorySpec(url=url), warn=warnings.append)

    assert isinstance(store, MemoryHistory)
    assert len(warnings) == 1 and PASSWORD not in warnings[0]
    assert warnings[0].startswith(
        f"history: cannot write postgresql://aegis:***@127.0.0.1:{port}/nowhere"
        " (Connection refused)"
    )
    assert "keeping this run's history in memory" in warnings[0]


def test_a_wrong_password_is_refused_without_showing_either(postgres: PostgresServer) -> None:
    wrong = "wrong-7c1d93"
    with pytest.raises(HistoryUnavailable) as raised:
        PostgresHistory.open(postgres.url().replace(PASSWORD, wrong))

    message = str(raised.value)
    assert 'password authentication failed for user "aegis"' in message
    assert "postgresql://aegis:***@127.0.0.1:" in message
    assert wrong not in message and PASSWORD not in message


def test_the_password_may_come_from_the_environment(pg_url: str) -> None:
    bare = pg_url.replace(f":{PASSWORD}@", "@")
    warnings: Warnings = []
    spec = HistorySpec(url=bare, password_env="AEGIS_PG_PASSWORD")
    env = {"AEGIS_PG_PASSWORD": PASSWORD}

    with PostgresHistory.open(bare, password_env="AEGIS_PG_PASSWORD", environ=env) as store:
        store.finish(finished(make_run("envpw0000001")))
    with open_history(spec, warn=warnings.append, reading=True, environ=env) as store:
        assert [r.run_id for r in store.list()] == ["envpw0000001"]
    assert warnings == []


def pause(postgres: PostgresServer) -> None:
    """Stop the server. It runs with synchronous_commit off and stops in immediate mode,
    so the last commits are flushed first, or its crash recovery may lose them."""
    postgres.sql("CHECKPOINT")
    postgres.pause()


def test_the_server_going_away_mid_run_keeps_and_later_records_the_run(
    postgres: PostgresServer, pg_url: str
) -> None:
    warnings: Warnings = []
    store = PostgresHistory.open(pg_url, warn=warnings.append, retry_interval=0.0)
    run = make_run("away00000001")
    store.start(run)
    pause(postgres)
    try:
        store.update_step(run.run_id, make_step("discover"))
        done = finished(run, steps=(make_step("discover"), make_step("test")))
        store.finish(done)
        store.start(make_run("away00000002", at=5))

        assert store.degraded and store.pending == 3
        assert store.get(run.run_id) == done
        assert [r.run_id for r in store.list()] == ["away00000002", "away00000001"]
        assert len(warnings) == 1
        assert warnings[0].startswith("history: cannot reach postgresql://aegis:***@127.0.0.1:")
        assert "once the server is back" in warnings[0] and PASSWORD not in warnings[0]
    finally:
        postgres.resume()

    store.finish(finished(make_run("away00000002", at=5)))
    assert not store.degraded and store.pending == 0
    assert "is reachable again" in warnings[-1] and len(warnings) == 2
    store.close()
    with PostgresHistory.open(pg_url) as other:
        assert other.get(run.run_id) == done
        assert other.count(status="succeeded") == 2


def test_the_heartbeat_replays_held_writes_once_the_server_is_back(
    postgres: PostgresServer, pg_url: str
) -> None:
    warnings: Warnings = []
    store = PostgresHistory.open(
        pg_url, warn=warnings.append, retry_interval=0.05, heartbeat_interval=0.05
    )
    store.start(make_run("beat00000001"))
    pause(postgres)
    try:
        store.finish(finished(make_run("beat00000001")))
        wait_for(lambda: store.degraded)
    finally:
        postgres.resume()

    wait_for(lambda: not store.degraded)
    store.close()
    with PostgresHistory.open(pg_url) as other:
        assert other.get("beat00000001").status is RunStatus.SUCCEEDED  # type: ignore[union-attr]


def test_a_refused_statement_costs_its_batch_only(opened: Any, pg_url: str) -> None:
    warnings: Warnings = []
    store = opened(warn=warnings.append)
    sql(pg_url, "ALTER TABLE aegis.runs ADD CONSTRAINT short CHECK (length(workflow) < 10)")

    store.finish(finished(make_run("long00000001", "a-very-long-workflow-name")))
    store.finish(finished(make_run("fine00000002")))

    assert [r.run_id for r in store.list()] == ["fine00000002"]
    assert len(warnings) == 1 and "refused 1 write(s)" in warnings[0]
    assert not store.degraded


# ---------------------------------------------------------------- the CLI


def test_aegis_history_reads_a_postgres_history(tmp_path: Path, pg_url: str) -> None:
    from aegis.cli import main

    with PostgresHistory.open(pg_url) as store:
        for n in range(3):
            store.finish(finished(make_run(f"cli00000000{n}", "smoke", at=n)))
    bare = pg_url.replace(f":{PASSWORD}@", "@")
    config = tmp_path / "aegis.yaml"
    config.write_text(
        f"history: {{url: '{bare}', password_env: PGPW}}\nworkflows:\n"
        "  smoke: {steps: [{type: report}]}\n"
    )
    environ = {"PGPW": PASSWORD}  # the store reads the environment main() is given
    out, err = io.StringIO(), io.StringIO()
    argv = ["--config", str(config), "history", "--json", "--limit", "2"]

    code = main(argv, stdout=out, stderr=err, environ=environ)

    assert (code, err.getvalue()) == (0, "")
    runs = json.loads(out.getvalue())["runs"]
    assert [r["run_id"] for r in runs] == ["cli000000002", "cli000000001"]
    out = io.StringIO()
    assert main(["--config", str(config), "history", "show", "CLI000000000"], stdout=out,
                stderr=err, environ=environ) == 0  # fmt: skip
    assert "cli000000000" in out.getvalue()
    # a run recorded by `aegis run` lands there too
    assert main(["--config", str(config), "run", "smoke", "--quiet"], stdout=io.StringIO(),
                stderr=err, environ=environ) == 0  # fmt: skip
    out = io.StringIO()
    assert main(argv, stdout=out, stderr=err, environ=environ) == 0
    newest = json.loads(out.getvalue())["runs"][0]
    assert newest["workflow"] == "smoke" and newest["status"] == "succeeded"
    assert newest["run_id"] not in {f"cli00000000{n}" for n in range(3)}
    assert "Traceback" not in err.getvalue() and PASSWORD not in err.getvalue()


def test_open_recording_history_writes_to_postgres_in_the_background(pg_url: str) -> None:
    warnings: Warnings = []
    store = open_recording_history(HistorySpec(url=pg_url), warn=warnings.append)
    store.start(make_run("rec000000001"))
    store.finish(finished(make_run("rec000000001")))
    store.close()

    with PostgresHistory.open(pg_url) as other:
        assert other.get("rec000000001").status is RunStatus.SUCCEEDED  # type: ignore[union-attr]
    assert warnings == []


# ---------------------------------------------------------------- the API


def test_api_history_pages_by_before_on_postgres(tmp_path: Path, opened: Any) -> None:
    from test_api_routes import FakeHealth, FakeLoop, body, call, make_config

    from aegis.api.handlers import ApiContext
    from aegis.api.manager import RunManager
    from aegis.events import EventBus, EventLog
    from aegis.steps.registry import default_step_types

    store = opened()
    for n in range(5):
        store.finish(finished(make_run(f"api00000000{n}", "smoke", at=n)))
    config = make_config(tmp_path)
    runs = RunManager(
        config, default_step_types(), store, bus=EventBus(), max_concurrent=1, environ={}
    )
    ctx = ApiContext(config, loop=FakeLoop(), runs=runs, health=FakeHealth(), events=EventLog(10))

    first = body(call(ctx, "GET", "/api/history?limit=2"))
    after = first["runs"][-1]["run_id"]
    second = body(call(ctx, "GET", f"/api/history?limit=2&before={after}"))

    assert [r["run_id"] for r in first["runs"]] == ["api000000004", "api000000003"]
    assert [r["run_id"] for r in second["runs"]] == ["api000000002", "api000000001"]
    assert second["total"] == 5


# ------------------------------------------------------ more failure paths


def test_a_url_that_cannot_be_read_is_refused_without_its_password() -> None:
    warnings: Warnings = []
    url = f"postgresql://aegis:{PASSWORD}@/nodb"  # no host

    store = open_history(HistorySpec(url=url), warn=warnings.append, reading=True)

    assert isinstance(store, MemoryHistory)
    assert warnings == [
        "history: cannot write history.url (it names no host"
        " (postgresql://USER@HOST:PORT/DATABASE)); no runs can be read from it"
    ]


def test_an_unexpected_error_while_opening_names_the_url_without_its_password(
    pg_url: str,
) -> None:
    warnings: Warnings = []
    spec = HistorySpec(url=pg_url.replace(f":{PASSWORD}@", "@"), password_env="PW")

    store = open_history(spec, warn=warnings.append, environ=42)  # type: ignore[arg-type]

    assert isinstance(store, MemoryHistory)
    assert len(warnings) == 1 and "(AttributeError)" in warnings[0]
    assert "postgresql://aegis@127.0.0.1:" in warnings[0]


def test_while_the_server_is_away_reads_answer_from_memory_and_close_says_what_is_lost(
    postgres: PostgresServer, pg_url: str
) -> None:
    warnings: Warnings = []
    store = PostgresHistory.open(pg_url, warn=warnings.append, retry_interval=60.0)
    store.finish(finished(make_run("kept00000001")))
    pause(postgres)
    try:
        assert store.list() == [] and store.count() == 0  # this process's, in memory
        assert store.tests() == [] and store.failing_counts(["kept00000001"]) == {}
        assert store.mark_interrupted() == []
        store.start(make_run("gone00000002"))
        assert store.claim_fire("w", "every 1m", 60.0)  # memory's claim: this process's
        assert [r.run_id for r in store.list()] == ["gone00000002"]
        store.close()
    finally:
        postgres.resume()
    assert "history: cannot reach postgresql://aegis:***@" in warnings[0]
    assert warnings[1].endswith("1 write(s) of this process's history were not recorded")
    assert all(PASSWORD not in warning for warning in warnings)


def test_past_max_pending_held_writes_the_store_stays_in_memory(
    postgres: PostgresServer, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aegis.history.postgres as module

    monkeypatch.setattr(module, "MAX_PENDING", 2)
    warnings: Warnings = []
    store = PostgresHistory.open(pg_url, warn=warnings.append, retry_interval=60.0)
    pause(postgres)
    try:
        for n in range(4):
            store.finish(finished(make_run(f"many0000000{n}", at=n)))
    finally:
        postgres.resume()

    assert store.pending == 0 and store.degraded
    assert "has been unreachable for over 2 writes" in warnings[-1]
    assert store.count() == 4  # in memory
    store.close()


def test_a_refused_read_warns_once_and_answers_empty(opened: Any, pg_url: str) -> None:
    warnings: Warnings = []
    store = opened(warn=warnings.append)
    sql(pg_url, "DROP TABLE aegis.tests")

    assert store.tests() == [] and store.tests(flaky=True) == []
    assert len(warnings) == 1 and 'refused a read (relation "tests" does not exist' in warnings[0]
    assert not store.degraded


def test_runs_older_than_max_age_are_pruned_in_the_background(opened: Any) -> None:
    now = [1767261600.0 + 10_000]  # 2026-01-01T10:00:00Z, plus
    store = opened(max_age=0.2, clock=lambda: now[0])
    store.finish(finished(make_run("old000000001", at=0)))

    wait_for(lambda: store.count() == 0)


def test_only_a_postgresql_history_loads_the_driver(tmp_path: Path) -> None:
    """``config validate`` of a PostgreSQL config and a whole run on a SQLite file never
    import pg8000 (its URL is checked without it)."""
    pg = tmp_path / "pg.yaml"
    pg.write_text("history: {url: 'postgresql://qa@db.invalid/qa'}\n"
                  "workflows: {w: {steps: [{type: report}]}}\n")  # fmt: skip
    lite = tmp_path / "lite.yaml"
    lite.write_text("workflows: {w: {steps: [{type: report}]}}\n")
    script = (
        "import io, sys\n"
        "from aegis.cli import main\n"
        "quiet = dict(stdout=io.StringIO(), stderr=io.StringIO(), environ={})\n"
        f"a = main(['--config', {str(pg)!r}, 'config', 'validate'], **quiet)\n"
        f"b = main(['--config', {str(lite)!r}, 'run', 'w', '--quiet'], **quiet)\n"
        "print(a, b, 'pg8000' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["0", "0", "False"], done.stderr
