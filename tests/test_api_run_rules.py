"""RunManager's rules per workflow (`concurrency`, a schedule's `overlap`) and its queue
bound, with runs held at a gate step the test opens; nothing sleeps to synchronise."""

from __future__ import annotations

import asyncio
import itertools
import textwrap
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import step_type

from aegis.api.manager import QUEUE_RETRY_AFTER, RunManager
from aegis.config import parse_config
from aegis.errors import Conflict, QueueFull
from aegis.events import Event, EventBus
from aegis.history.memory import MemoryHistory
from aegis.records import RunStatus
from aegis.steps.base import StepContext

LIMIT = 10.0


class Gate:
    """Holds every run at its step until ``open`` is set; records who went in, in order."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.entered: list[str] = []
        self.inside = 0
        self.peak = 0
        self.changed = asyncio.Event()

    async def execute(self, ctx: StepContext) -> dict[str, Any]:
        self.entered.append(ctx.run_id)
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        self.changed.set()
        try:
            await self.open.wait()
        finally:
            self.inside -= 1
        return {}

    async def until(self, check: Callable[[], bool]) -> None:
        async def wait() -> None:
            while not check():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), LIMIT)


@pytest.fixture
async def managers(tmp_path: Path) -> AsyncIterator[Callable[..., tuple[RunManager, Gate]]]:
    made: list[tuple[RunManager, Gate]] = []

    def make(concurrency: str = "null", **options: Any) -> tuple[RunManager, Gate]:
        gate = Gate()
        types = {"gate": step_type("gate", gate.execute)}
        text = textwrap.dedent(f"""
            workflows:
              held:
                concurrency: {concurrency}
                steps: [{{type: gate}}]
              free:
                steps: [{{type: gate}}]
            """)
        cfg = parse_config(text, file="t.yaml", base_dir=tmp_path, environ={}, step_types=types)
        bus = EventBus()
        events: list[Event] = options.pop("events", [])
        bus.subscribe(events.append)
        options.setdefault("max_concurrent", 10)
        manager = RunManager(cfg, types, MemoryHistory(), bus=bus, environ={}, **options)
        made.append((manager, gate))
        return manager, gate

    yield make
    for manager, gate in made:
        gate.open.set()
        await manager.shutdown()


async def submit_five(manager: RunManager, **options: Any) -> list[Any]:
    return await asyncio.gather(
        *(manager.submit("held", **options) for _ in range(5)), return_exceptions=True
    )


async def test_limit_one_skip_five_triggers_give_one_run_and_four_refusals(
    managers: Callable[..., tuple[RunManager, Gate]],
) -> None:
    events: list[Event] = []
    manager, gate = managers("{limit: 1, on_conflict: skip}", events=events)
    outcomes = await submit_five(manager)
    accepted = [o[0] for o in outcomes if isinstance(o, tuple)]
    refused = [o for o in outcomes if isinstance(o, Conflict)]
    assert len(accepted) == 1 and len(refused) == 4
    first = accepted[0].run_id
    assert all(exc.run_id == first for exc in refused)
    assert all(f"run {first} is" in str(exc) and "limit is 1" in str(exc) for exc in refused)
    skipped = [e for e in events if e.type == "run.skipped"]
    assert len(skipped) == 4
    assert skipped[0].workflow == "held"
    assert skipped[0].data["blocking_run"] == first
    assert skipped[0].data["rule"] == "concurrency"
    # once it has finished, the next trigger starts
    gate.open.set()
    assert (await manager.wait(first, LIMIT)).status is RunStatus.SUCCEEDED
    run, created = await manager.submit("held")
    assert created and (await manager.wait(run.run_id, LIMIT)).status is RunStatus.SUCCEEDED


async def test_limit_one_queue_runs_five_triggers_one_after_another(
    managers: Callable[..., tuple[RunManager, Gate]],
) -> None:
    manager, gate = managers("{limit: 1, on_conflict: queue}")
    outcomes = await submit_five(manager)
    ids = [o[0].run_id for o in outcomes]
    await gate.until(lambda: len(gate.entered) == 1)
    # another workflow is not held back by the one at its limit
    other, _ = await manager.submit("free")
    await gate.until(lambda: other.run_id in gate.entered)
    assert manager.queued() == 4
    gate.open.set()
    finished = [await manager.wait(run_id, LIMIT) for run_id in ids]
    assert [r.status for r in finished] == [RunStatus.SUCCEEDED] * 5
    assert [r for r in gate.entered if r != other.run_id] == ids  # in the order triggered
    for before, after in itertools.pairwise(finished):
        assert before.finished_at is not None and before.finished_at <= after.started_at


async def test_cancel_running_replaces_the_run_in_the_way(
    managers: Callable[..., tuple[RunManager, Gate]],
) -> None:
    manager, gate = managers("{limit: 1, on_conflict: cancel_running}")
    first, _ = await manager.submit("held")
    await gate.until(lambda: first.run_id in gate.entered)
    second, _ = await manager.submit("held")
    assert (await manager.wait(first.run_id, LIMIT)).status is RunStatus.CANCELLED
    await gate.until(lambda: second.run_id in gate.entered)
    gate.open.set()
    assert (await manager.wait(second.run_id, LIMIT)).status is RunStatus.SUCCEEDED


async def test_a_schedule_overlap_skip_refuses_while_a_run_goes(
    managers: Callable[..., tuple[RunManager, Gate]],
) -> None:
    events: list[Event] = []
    manager, gate = managers(events=events)
    first, _ = await manager.submit("free", trigger="api")
    with pytest.raises(Conflict) as refused:
        await manager.submit("free", trigger="schedule", overlap="skip")
    assert refused.value.run_id == first.run_id
    assert [e.data["rule"] for e in events if e.type == "run.skipped"] == ["overlap"]
    queued, _ = await manager.submit("free", trigger="schedule", overlap="queue")
    await gate.until(lambda: first.run_id in gate.entered)
    assert queued.run_id not in gate.entered  # waits for the one going
    gate.open.set()
    assert (await manager.wait(queued.run_id, LIMIT)).trigger == "schedule"


async def test_past_max_queued_runs_the_queue_refuses_with_a_wait(
    managers: Callable[..., tuple[RunManager, Gate]],
) -> None:
    manager, _ = managers(max_concurrent=1, max_queued=2)
    for _ in range(3):  # one running, two waiting
        await manager.submit("free")
    with pytest.raises(QueueFull) as full:
        await manager.submit("free")
    assert full.value.retry_after == QUEUE_RETRY_AFTER
    assert "queue is full (2 runs wait)" in str(full.value)
    assert manager.queued() == 2


def test_over_http_a_refusal_is_409_naming_the_run_and_a_full_queue_429(
    tmp_path: Path,
) -> None:
    import http.client
    import json
    from urllib.parse import urlsplit

    from aegis.api.app import ApiApp

    gate = threading.Event()

    async def held(ctx: StepContext) -> dict[str, Any]:
        while not gate.is_set():
            await asyncio.sleep(0.01)
        return {}

    types = {"gate": step_type("gate", held)}
    text = textwrap.dedent("""
        workflows:
          held:
            concurrency: {limit: 1, on_conflict: skip}
            steps: [{type: gate}]
          free:
            steps: [{type: gate}]
        history: {path: ":memory:"}
        server: {max_concurrent_runs: 1, max_queued_runs: 1}
        """)
    config = parse_config(text, file="t.yaml", base_dir=tmp_path, environ={}, step_types=types)

    def post(url: str, path: str) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        try:
            conn.request("POST", path)
            reply = conn.getresponse()
            headers = {k.lower(): v for k, v in reply.getheaders()}
            return reply.status, headers, json.loads(reply.read())
        finally:
            conn.close()

    try:
        with ApiApp(config, environ={}, port=0, step_types=types) as app:
            status, _, first = post(app.url, "/api/workflows/held/run")
            assert status == 202
            status, _, refused = post(app.url, "/api/workflows/held/run")
            assert status == 409
            assert refused["error"]["code"] == "conflict"
            assert refused["error"]["run_id"] == first["run_id"]
            assert "limit is 1" in refused["error"]["message"]
            status, _, _ = post(app.url, "/api/workflows/free/run")  # waits: one slot
            assert status == 202
            status, headers, full = post(app.url, "/api/workflows/free/run")
            assert status == 429 and headers["retry-after"] == "5"
            assert full["error"]["code"] == "too_many_requests"
            assert "the run queue is full (1 runs wait)" in full["error"]["message"]
            events = app.ctx.events.list(type="run.skipped")
            assert [e.data["blocking_run"] for e in events] == [first["run_id"]]
    finally:
        gate.set()


async def test_cancel_running_also_cancels_a_run_still_queued(
    managers: Callable[..., tuple[RunManager, Gate]],
) -> None:
    manager, gate = managers("{limit: 1, on_conflict: cancel_running}", max_concurrent=1)
    busy, _ = await manager.submit("free")
    await gate.until(lambda: busy.run_id in gate.entered)
    first, _ = await manager.submit("held")  # waits for the only slot
    second, _ = await manager.submit("held")
    cancelled = await manager.wait(first.run_id, LIMIT)
    assert cancelled.status is RunStatus.CANCELLED and first.run_id not in gate.entered
    gate.open.set()
    assert (await manager.wait(second.run_id, LIMIT)).status is RunStatus.SUCCEEDED
