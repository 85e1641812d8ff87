"""Workers on one loop against the real PostgreSQL server: a worker cut off loses its runs
to another (interrupted, or requeued), and learns it lost them when it comes back; and
``aegis worker`` in this process, stopped by a real SIGTERM."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from postgres_server import PostgresServer
from test_api_http import poll
from worker_helpers import Loopback, call, write_config

from aegis.api import shared_runs
from aegis.api.app import ApiApp
from aegis.api.shared_runs import SharedRunManager
from aegis.cli import main
from aegis.config import load_config
from aegis.config.model import Config
from aegis.errors import Conflict, NotFound
from aegis.events import EventBus
from aegis.history.memory import MemoryHistory
from aegis.history.pg_connect import PgTarget
from aegis.history.pg_queue import PgQueue
from aegis.records import RunStatus
from aegis.steps.registry import default_step_types
from aegis.worker import Worker, end_record

LIMIT = 20.0


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    service = Loopback()
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
async def queue(pg_url: str) -> AsyncIterator[PgQueue]:
    opened = await asyncio.to_thread(PgQueue.open, PgTarget.parse(pg_url))
    try:
        yield opened
    finally:
        await asyncio.to_thread(opened.close)


async def until(check: Any) -> None:
    async def wait() -> None:
        while not await asyncio.to_thread(check):
            await asyncio.sleep(0.02)

    await asyncio.wait_for(wait(), LIMIT)


def worker(config: Config, history: MemoryHistory, queue: PgQueue, **options: Any) -> Worker:
    options.setdefault("lease", 1.0)
    options.setdefault("slots", 4)
    return Worker(
        config,
        default_step_types(),
        history,
        queue,
        bus=EventBus(),
        environ={},
        poll=0.05,
        **options,
    )


async def test_a_worker_cut_off_loses_its_runs(
    tmp_path: Path, pg_url: str, loopback: Loopback, queue: PgQueue
) -> None:
    config = load_config(write_config(tmp_path, pg_url, loopback.url))
    history = MemoryHistory()
    runs = SharedRunManager(config, default_step_types(), history, queue, bus=EventBus())
    lost, _ = await runs.submit("slow")
    again, _ = await runs.submit("slow_requeue")
    first = worker(config, history, queue)
    cut_off = asyncio.ensure_future(first.run())
    await until(lambda: loopback.blocked == 2)
    cut_off.cancel()  # it stops renewing, its runs still going
    await asyncio.gather(cut_off, return_exceptions=True)
    assert sorted(first.running()) == sorted([lost.run_id, again.run_id])
    second = worker(config, history, queue, slots=1)
    reaping = asyncio.ensure_future(second.run())
    await until(lambda: history.get(lost.run_id).status == RunStatus.INTERRUPTED)  # type: ignore[union-attr]
    await until(lambda: loopback.blocked == 3)  # the requeued run runs again, on the second
    back = asyncio.ensure_future(first.run())  # the first comes back, learns it lost both
    await until(lambda: first.active() == 0)
    loopback.release()
    await until(lambda: history.get(again.run_id).status == RunStatus.SUCCEEDED)  # type: ignore[union-attr]
    assert history.get(lost.run_id).status == RunStatus.INTERRUPTED  # type: ignore[union-attr]
    for one, task in ((first, back), (second, reaping)):
        await one.stop(1)
        await task
    assert await asyncio.to_thread(queue.workers) == []


async def test_a_cancel_reaches_a_run_that_never_began(
    tmp_path: Path, pg_url: str, loopback: Loopback, queue: PgQueue
) -> None:
    config = load_config(write_config(tmp_path, pg_url, loopback.url))
    history = MemoryHistory()
    runs = SharedRunManager(config, default_step_types(), history, queue, bus=EventBus())
    run, _ = await runs.submit("slow")
    claimed = await asyncio.to_thread(queue.claim, "gone", 1, -1.0)  # a dead worker's claim
    assert [c.run_id for c in claimed] == [run.run_id]
    await asyncio.to_thread(queue.request_cancel, run.run_id)
    reaper = worker(config, history, queue)
    reaping = asyncio.ensure_future(reaper.run())
    await until(lambda: history.get(run.run_id).status == RunStatus.CANCELLED)  # type: ignore[union-attr]
    await reaper.stop()
    await reaping


def test_aegis_worker_runs_until_sigterm(tmp_path: Path, pg_url: str, loopback: Loopback) -> None:
    extra = """
    ticking:
      schedule: {every: 1h}
      steps: [{type: http, service: svc, with: {path: /ok}}]
    """
    path = write_config(tmp_path, pg_url, loopback.url, extra, max_concurrent_runs=1)
    replica = ApiApp(load_config(path), environ={}).start()
    err = io.StringIO()
    try:
        call(f"{replica.url}/api/workflows/slow/run", "POST", {})  # the replica's one slot
        poll(lambda: loopback.blocked == 1)
        quick = call(f"{replica.url}/api/workflows/quick/run", "POST", {})[1]["run_id"]

        def then_stop() -> None:
            poll(lambda: "working on" in err.getvalue())
            poll(lambda: call(f"{replica.url}/api/runs/{quick}")[1]["status"] == "succeeded")
            os.kill(os.getpid(), signal.SIGTERM)

        stopper = threading.Thread(target=then_stop)
        stopper.start()
        code = main(["--config", str(path), "worker", "--drain-timeout", "1"], stderr=err)
        stopper.join()
        assert code == 0, err.getvalue()
        assert "aegis: stopping (draining up to 1s)" in err.getvalue()
    finally:
        loopback.release()
        replica.stop(timeout=1)


def test_a_negative_drain_timeout_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "aegis.yaml"
    config.write_text('history: {url: "postgresql://a@127.0.0.1:1/x"}\nworkflows: {}\n')
    err = io.StringIO()
    assert main(["--config", str(config), "worker", "--drain-timeout", "-1"], stderr=err) == 2
    assert "--drain-timeout must be 0 or more seconds" in err.getvalue()


async def test_one_key_sent_at_once_to_two_replicas_makes_one_run(
    tmp_path: Path, pg_url: str, loopback: Loopback, queue: PgQueue
) -> None:
    config = load_config(write_config(tmp_path, pg_url, loopback.url))
    history = MemoryHistory()
    replicas = [
        SharedRunManager(config, default_step_types(), history, queue, bus=EventBus())
        for _ in range(2)
    ]
    sent = [replicas[i % 2].submit("quick", idempotency_key="same") for i in range(8)]
    answers = await asyncio.gather(*sent)
    assert len({run.run_id for run, _ in answers}) == 1
    assert sorted(new for _, new in answers) == [False] * 7 + [True]


async def test_a_key_whose_run_was_never_recorded_is_taken_over(
    tmp_path: Path,
    pg_url: str,
    loopback: Loopback,
    queue: PgQueue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shared_runs, "EARLIER_GRACE", 0.1)
    config = load_config(write_config(tmp_path, pg_url, loopback.url))
    runs = SharedRunManager(config, default_step_types(), MemoryHistory(), queue, bus=EventBus())
    await asyncio.to_thread(queue.claim_key, "quick", "k", "ghost", 60)  # its submitter died
    run, new = await runs.submit("quick", idempotency_key="k")
    assert new and run.run_id != "ghost"
    again, new = await runs.submit("quick", idempotency_key="k")
    assert again.run_id == run.run_id and not new


async def test_a_run_that_ended_before_its_worker_died_is_not_run_again(
    tmp_path: Path, pg_url: str, loopback: Loopback, queue: PgQueue
) -> None:
    config = load_config(write_config(tmp_path, pg_url, loopback.url))
    history = MemoryHistory()
    runs = SharedRunManager(config, default_step_types(), history, queue, bus=EventBus())
    run, _ = await runs.submit("slow_requeue")
    await asyncio.to_thread(queue.claim, "gone", 1, -1.0)  # died before removing the row
    spec = config.workflows["slow_requeue"]
    history.finish(end_record(spec, run, RunStatus.SUCCEEDED, "done", run.started_at))
    reaper = worker(config, history, queue)
    reaping = asyncio.ensure_future(reaper.run())
    await until(lambda: not queue.contains(run.run_id))
    await reaper.stop()
    await reaping
    assert loopback.hits == 0
    assert history.get(run.run_id).status == RunStatus.SUCCEEDED  # type: ignore[union-attr]


async def test_a_worker_rides_out_a_database_outage(
    tmp_path: Path,
    pg_url: str,
    postgres: PostgresServer,
    loopback: Loopback,
    queue: PgQueue,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = load_config(write_config(tmp_path, pg_url, loopback.url))
    history = MemoryHistory()
    runs = SharedRunManager(config, default_step_types(), history, queue, bus=EventBus())
    run, _ = await runs.submit("slow")
    steady = worker(config, history, queue, target=PgTarget.parse(pg_url))
    working = asyncio.ensure_future(steady.run())
    await until(lambda: loopback.blocked == 1)
    # the test server commits asynchronously and pause() is a crash: checkpoint first
    await asyncio.to_thread(postgres.sql, "CHECKPOINT")
    await asyncio.to_thread(postgres.pause)
    try:
        await until(lambda: "the queue cannot be reached" in caplog.text)
    finally:
        await asyncio.to_thread(postgres.resume)
    assert steady.running() == [run.run_id]  # the run went on meanwhile
    loopback.release()
    await until(lambda: not queue.contains(run.run_id))
    assert history.get(run.run_id).status == RunStatus.SUCCEEDED  # type: ignore[union-attr]
    await steady.stop()
    await working


async def test_a_run_outside_the_queue_cannot_be_cancelled(
    tmp_path: Path, pg_url: str, loopback: Loopback, queue: PgQueue
) -> None:
    config = load_config(write_config(tmp_path, pg_url, loopback.url))
    history = MemoryHistory()
    runs = SharedRunManager(config, default_step_types(), history, queue, bus=EventBus())
    run, _ = await runs.submit("slow")
    await asyncio.to_thread(queue.remove, run.run_id)  # as an `aegis run` of its own is
    with pytest.raises(Conflict, match="outside the queue"):
        await runs.cancel(run.run_id)
    with pytest.raises(NotFound):
        await runs.cancel("nope")


async def test_a_worker_begun_or_stopped_while_the_database_is_away(
    tmp_path: Path,
    pg_url: str,
    postgres: PostgresServer,
    loopback: Loopback,
    queue: PgQueue,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = load_config(write_config(tmp_path, pg_url, loopback.url))
    history = MemoryHistory()
    runs = SharedRunManager(config, default_step_types(), history, queue, bus=EventBus())
    quick, _ = await runs.submit("quick")
    await asyncio.to_thread(postgres.sql, "CHECKPOINT")  # pause() is a crash
    await asyncio.to_thread(postgres.pause)
    try:
        late = worker(config, history, queue)
        working = asyncio.ensure_future(late.run())
        await until(lambda: "the queue cannot be reached" in caplog.text)
    finally:
        await asyncio.to_thread(postgres.resume)
    await until(lambda: history.get(quick.run_id).status == RunStatus.SUCCEEDED)  # type: ignore[union-attr]
    await until(lambda: [w["id"] for w in queue.workers()] == [late.id])  # at its upkeep
    slow, _ = await runs.submit("slow")
    await until(lambda: loopback.blocked == 1)
    await asyncio.to_thread(postgres.sql, "CHECKPOINT")
    await asyncio.to_thread(postgres.pause)
    try:
        await late.stop()  # no exception: the run is taken back when its lease runs out
        await working
        assert "cannot hand back 1 run(s)" in caplog.text
    finally:
        await asyncio.to_thread(postgres.resume)
    assert await asyncio.to_thread(queue.contains, slow.run_id)
