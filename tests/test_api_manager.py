"""RunManager: the real engine against the demo services, with runs held at a gate.

A ``gate`` step waits on an ``asyncio.Event`` the test opens, so a run stays "running"
exactly as long as a test needs it to; nothing here sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeClock, step_type

from aegis.api.manager import CANCELLED_REASON, RunManager
from aegis.config import parse_config
from aegis.config.model import Config
from aegis.demo import DemoServices
from aegis.engine.runner import Engine
from aegis.errors import Conflict, NotFound
from aegis.events import Event, EventBus
from aegis.history import HistoryStore
from aegis.history.memory import MemoryHistory
from aegis.history.sqlite import SqliteHistory
from aegis.records import Run, RunStatus, StepStatus, Verdict
from aegis.steps.base import StepContext, StepType
from aegis.steps.registry import default_step_types

LIMIT = 10.0  # seconds any one wait in a test may take before the test fails


class Gate:
    """A step type that holds each run until ``open`` is set, counting who is inside."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.inside = 0
        self.peak = 0
        self.entered: list[str] = []
        self.cancelled: list[str] = []
        self._changed = asyncio.Condition()

    async def execute(self, ctx: StepContext) -> dict[str, Any]:
        self.entered.append(ctx.run_id)
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        await self._notify()
        try:
            await self.open.wait()
        except asyncio.CancelledError:
            self.cancelled.append(ctx.run_id)
            raise
        finally:
            self.inside -= 1
        return {"gate": "passed"}

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds after a run has entered the gate."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), LIMIT)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


class Stubborn:
    """A step that ignores the first cancellation and waits until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def execute(self, ctx: StepContext) -> dict[str, Any]:
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            await self.release.wait()
        return {}


WORKFLOWS = """
    held:
      steps:
        - {type: gate}
        - {type: test, service: qaagent}
    quick:
      steps:
        - {type: discover, service: qaagent}
        - {type: test, service: qaagent}
        - {type: report, condition: always}
    tested_then_held:
      steps:
        - {type: test, service: qaagent}
        - {type: gate}
    stubborn:
      steps:
        - {type: stubborn}
"""


def make_config(demo: DemoServices, tmp_path: Path, types: dict[str, StepType]) -> Config:
    text = textwrap.dedent(f"""
        services:
          qaagent: {{url: "{demo.qaagent_url}"}}
        workflows:
        """) + textwrap.indent(textwrap.dedent(WORKFLOWS), "  ")
    return parse_config(text, file="t.yaml", base_dir=tmp_path, environ={}, step_types=types)


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate()
    yield gate
    gate.open.set()


@pytest.fixture
def stubborn() -> Iterator[Stubborn]:
    stubborn = Stubborn()
    yield stubborn
    stubborn.release.set()


@pytest.fixture
def types(gate: Gate, stubborn: Stubborn) -> dict[str, StepType]:
    return {
        **default_step_types(),
        "gate": step_type("gate", gate.execute),
        "stubborn": step_type("stubborn", stubborn.execute),
    }


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    warnings: list[str] = []
    opened: HistoryStore
    if request.param == "memory":
        opened = MemoryHistory(warn=warnings.append)
    else:
        opened = SqliteHistory(tmp_path / "history.db", warn=warnings.append)
    yield opened
    opened.close()
    assert warnings == []


@pytest.fixture
def events() -> list[Event]:
    return []


MakeManager = Callable[..., RunManager]


@pytest.fixture
async def make_manager(
    demo: DemoServices,
    tmp_path: Path,
    types: dict[str, StepType],
    store: HistoryStore,
    gate: Gate,
    events: list[Event],
) -> AsyncIterator[MakeManager]:
    """Builds managers over the demo services; each is shut down after the test."""
    made: list[RunManager] = []
    config = make_config(demo, tmp_path, types)

    def make(**options: Any) -> RunManager:
        bus = EventBus()
        bus.subscribe(events.append)
        options.setdefault("max_concurrent", 4)
        options.setdefault("history", store)
        manager = RunManager(config, types, bus=bus, environ={}, **options)
        made.append(manager)
        return manager

    yield make
    gate.open.set()
    for manager in made:
        await manager.shutdown()


def started(events: list[Event]) -> list[str]:
    return [e.run_id for e in events if e.type == "workflow.started"]


def completed(events: list[Event], run_id: str) -> list[dict[str, Any]]:
    return [e.data for e in events if e.type == "workflow.completed" and e.run_id == run_id]


# ------------------------------------------------------------------- queueing


async def test_forty_runs_at_once_run_four_at_a_time_in_order_and_all_are_recorded(
    make_manager: MakeManager,
    gate: Gate,
    store: HistoryStore,
    events: list[Event],
    demo: DemoServices,
) -> None:
    manager = make_manager(max_concurrent=4)

    accepted = await asyncio.gather(*(manager.submit("held") for _ in range(40)))
    ids = [run.run_id for run, _ in accepted]

    assert all(created for _, created in accepted)
    assert {run.status for run, _ in accepted} == {RunStatus.QUEUED}
    assert {run.trigger for run, _ in accepted} == {"api"}
    assert len(set(ids)) == 40
    assert store.count() == 40  # every one is on record before any has started

    await gate.until(lambda: gate.inside == 4)
    assert (manager.active(), manager.queued()) == (4, 36)
    assert (store.count(status="running"), store.count(status="queued")) == (4, 36)
    assert gate.entered == ids[:4]

    gate.open.set()
    finished = await asyncio.gather(*(manager.wait(run_id, LIMIT) for run_id in ids))

    assert [run.status for run in finished] == [RunStatus.SUCCEEDED] * 40
    assert gate.peak == 4
    assert started(events) == ids  # first in, first started
    assert gate.entered == ids
    assert (manager.active(), manager.queued()) == (0, 0)
    assert store.count(status="succeeded") == 40
    for run_id in ids:
        record = store.get(run_id)
        assert record is not None
        assert [s.name for s in record.steps] == ["gate", "test"]
    posts = [c for c in demo.qaagent.calls if c.method == "POST" and c.path == "/api/runs"]
    assert len(posts) == 40


async def test_a_queued_run_is_recorded_at_once_and_starts_when_a_slot_frees(
    make_manager: MakeManager, gate: Gate, store: HistoryStore, events: list[Event]
) -> None:
    manager = make_manager(max_concurrent=1)
    first, _ = await manager.submit("held")
    await gate.until(lambda: gate.inside == 1)
    second, created = await manager.submit("quick", trigger="ci")

    assert created
    on_file = store.get(second.run_id)
    assert on_file is not None
    assert (on_file.status, on_file.trigger, on_file.workflow) == (RunStatus.QUEUED, "ci", "quick")
    assert manager.get(second.run_id) == second
    assert started(events) == [first.run_id]

    gate.open.set()
    done = await manager.wait(second.run_id, LIMIT)

    assert (done.status, done.verdict, done.trigger) == (RunStatus.SUCCEEDED, Verdict.FAILED, "ci")
    assert [s.name for s in done.steps] == ["discover", "test", "report"]
    assert store.get(second.run_id) == done
    assert store.count() == 2


async def test_an_unknown_workflow_is_not_found_and_nothing_is_recorded(
    make_manager: MakeManager, store: HistoryStore
) -> None:
    manager = make_manager()

    with pytest.raises(NotFound, match="unknown workflow 'nope'"):
        await manager.submit("nope")
    assert store.count() == 0


def test_max_concurrent_must_be_at_least_one(make_manager: MakeManager) -> None:
    with pytest.raises(ValueError, match="max_concurrent must be >= 1, got 0"):
        make_manager(max_concurrent=0)


# ---------------------------------------------------------------- idempotency


async def test_a_repeated_idempotency_key_returns_the_first_run(
    make_manager: MakeManager, gate: Gate, store: HistoryStore
) -> None:
    clock = FakeClock()
    manager = make_manager(clock=clock, idempotency_ttl=60)

    first, created = await manager.submit("held", idempotency_key="build-7")
    again, created_again = await manager.submit("held", idempotency_key="build-7")
    await gate.until(lambda: gate.inside == 1)
    running, _ = await manager.submit("held", idempotency_key="build-7")

    assert (created, created_again) == (True, False)
    assert again == first
    assert running.run_id == first.run_id and running.status is RunStatus.RUNNING
    assert store.count() == 1

    gate.open.set()
    await manager.wait(first.run_id, LIMIT)
    clock.advance(59.9)
    done, created = await manager.submit("held", idempotency_key="build-7")
    assert (done.run_id, done.status, created) == (first.run_id, RunStatus.SUCCEEDED, False)


async def test_an_idempotency_key_after_its_ttl_starts_a_new_run(
    make_manager: MakeManager, store: HistoryStore
) -> None:
    clock = FakeClock()
    manager = make_manager(clock=clock, idempotency_ttl=60)
    first, _ = await manager.submit("quick", idempotency_key="a")
    clock.advance(30)
    other, _ = await manager.submit("quick", idempotency_key="b")
    clock.advance(30)

    renewed, created = await manager.submit("quick", idempotency_key="a")
    kept, kept_created = await manager.submit("quick", idempotency_key="b")

    assert created and renewed.run_id != first.run_id
    assert not kept_created and kept.run_id == other.run_id
    assert store.count() == 3


async def test_an_idempotency_key_is_per_workflow(
    make_manager: MakeManager, store: HistoryStore
) -> None:
    manager = make_manager()
    quick, _ = await manager.submit("quick", idempotency_key="k")
    held, created = await manager.submit("held", idempotency_key="k")

    assert created and held.run_id != quick.run_id
    assert store.count() == 2


async def test_only_the_newest_idempotency_keys_are_remembered(
    make_manager: MakeManager, store: HistoryStore
) -> None:
    manager = make_manager(max_idempotency_keys=2)
    first, _ = await manager.submit("quick", idempotency_key="a")
    second, _ = await manager.submit("quick", idempotency_key="b")
    await manager.submit("quick", idempotency_key="c")  # forgets "a", the oldest

    again_b, b_created = await manager.submit("quick", idempotency_key="b")
    again_a, a_created = await manager.submit("quick", idempotency_key="a")

    assert (again_b.run_id, b_created) == (second.run_id, False)
    assert a_created and again_a.run_id != first.run_id
    assert len(manager._keys) == 2


async def test_an_idempotency_key_whose_run_history_dropped_starts_a_new_run(
    make_manager: MakeManager,
) -> None:
    manager = make_manager(history=MemoryHistory(max_runs=1))
    first, _ = await manager.submit("quick", idempotency_key="k")
    await manager.wait(first.run_id, LIMIT)
    later, _ = await manager.submit("quick")
    await manager.wait(later.run_id, LIMIT)  # prunes the first

    again, created = await manager.submit("quick", idempotency_key="k")
    kept, kept_created = await manager.submit("quick", idempotency_key="k")

    assert created and again.run_id not in (first.run_id, later.run_id)
    assert not kept_created and kept.run_id == again.run_id


# ----------------------------------------------------------------------- wait


async def test_wait_returns_the_finished_run(make_manager: MakeManager) -> None:
    manager = make_manager()
    run, _ = await manager.submit("quick")

    done = await manager.wait(run.run_id, LIMIT)

    assert done.status is RunStatus.SUCCEEDED
    assert [s.status for s in done.steps] == [StepStatus.SUCCEEDED] * 3
    assert await manager.wait(run.run_id, 0) == done  # from history now
    assert await manager.wait(run.run_id[:6], 0) == done


async def test_wait_returns_the_current_record_when_time_is_up(
    make_manager: MakeManager, gate: Gate
) -> None:
    manager = make_manager(max_concurrent=1)
    held, _ = await manager.submit("tested_then_held")
    waiting, _ = await manager.submit("quick")
    await gate.until(lambda: gate.inside == 1)

    now = await manager.wait(held.run_id, 0.05)
    queued = await manager.wait(waiting.run_id, -1)

    assert now.status is RunStatus.RUNNING
    assert [(s.name, s.status) for s in now.steps] == [("test", StepStatus.SUCCEEDED)]
    assert queued.status is RunStatus.QUEUED


async def test_wait_for_an_unknown_run_is_not_found(make_manager: MakeManager) -> None:
    with pytest.raises(NotFound, match="unknown run 'nope00000000'"):
        await make_manager().wait("nope00000000", 1)


# --------------------------------------------------------------------- cancel


def assert_cancelled_before_start(run: Run) -> None:
    assert (run.status, run.verdict, run.duration_ms) == (RunStatus.CANCELLED, Verdict.FAILED, 0.0)
    assert run.finished_at is not None
    assert [(s.status, s.skip_reason) for s in run.steps] == [
        (StepStatus.SKIPPED, CANCELLED_REASON)
    ] * len(run.steps)


async def test_cancel_a_queued_run_records_it_without_starting_it(
    make_manager: MakeManager, gate: Gate, store: HistoryStore, events: list[Event]
) -> None:
    manager = make_manager(max_concurrent=1)
    first, _ = await manager.submit("held")
    second, _ = await manager.submit("quick")
    third, _ = await manager.submit("held")
    await gate.until(lambda: gate.inside == 1)

    cancelled = await manager.cancel(second.run_id[:8])

    assert cancelled.run_id == second.run_id
    assert_cancelled_before_start(cancelled)
    assert [s.name for s in cancelled.steps] == ["discover", "test", "report"]
    assert store.get(second.run_id) == cancelled
    assert manager.queued() == 1
    assert completed(events, second.run_id) == [
        {
            "status": "cancelled",
            "verdict": "failed",
            "duration_ms": 0.0,
            "steps": {"succeeded": 0, "failed": 0, "skipped": 3, "cancelled": 0},
            "tests_total": None,
            "tests_failed": None,
            "reason": CANCELLED_REASON,
            "trigger": "api",
        }
    ]

    gate.open.set()
    await manager.wait(third.run_id, LIMIT)
    assert started(events) == [first.run_id, third.run_id]
    with pytest.raises(Conflict, match=f"run {second.run_id} has already finished"):
        await manager.cancel(second.run_id)


async def test_cancel_a_running_run_cancels_its_steps_and_frees_its_slot(
    make_manager: MakeManager, gate: Gate, store: HistoryStore
) -> None:
    manager = make_manager(max_concurrent=1)
    running, _ = await manager.submit("tested_then_held")
    waiting, _ = await manager.submit("quick")
    await gate.until(lambda: gate.inside == 1)

    cancelled = await manager.cancel(running.run_id)

    assert (cancelled.status, cancelled.verdict) == (RunStatus.CANCELLED, Verdict.FAILED)
    assert [(s.name, s.status) for s in cancelled.steps] == [
        ("test", StepStatus.SUCCEEDED),
        ("gate", StepStatus.CANCELLED),
    ]
    assert gate.cancelled == [running.run_id]
    assert store.get(running.run_id) == cancelled
    done = await manager.wait(waiting.run_id, LIMIT)  # the slot went to the next one
    assert done.status is RunStatus.SUCCEEDED


async def test_cancel_just_after_submit_records_a_run_that_never_began(
    make_manager: MakeManager, store: HistoryStore, events: list[Event]
) -> None:
    manager = make_manager()
    run, _ = await manager.submit("quick")  # its task exists but has not run yet

    cancelled = await manager.cancel(run.run_id)

    assert_cancelled_before_start(cancelled)
    assert store.get(run.run_id) == cancelled
    assert started(events) == []
    assert manager.active() == 0


async def test_cancel_a_finished_run_is_a_conflict(make_manager: MakeManager) -> None:
    manager = make_manager()
    run, _ = await manager.submit("quick")
    await manager.wait(run.run_id, LIMIT)

    with pytest.raises(Conflict, match=r"has already finished \(succeeded\)"):
        await manager.cancel(run.run_id)


async def test_cancel_an_unknown_run_is_not_found(make_manager: MakeManager) -> None:
    with pytest.raises(NotFound, match="unknown run 'nope00000000'"):
        await make_manager().cancel("nope00000000")


async def test_cancel_a_run_of_another_process_is_a_conflict(
    make_manager: MakeManager, store: HistoryStore
) -> None:
    other = Run("other0000001", "quick", RunStatus.RUNNING, "2026-01-01T10:00:00.000Z")
    store.start(other)

    with pytest.raises(Conflict, match="is running in another process"):
        await make_manager().cancel("other0000001")


# ------------------------------------------------------------------- shutdown


async def test_shutdown_cancels_every_run_and_records_it(
    make_manager: MakeManager, gate: Gate, store: HistoryStore
) -> None:
    manager = make_manager(max_concurrent=2)
    accepted = [await manager.submit("held") for _ in range(5)]
    ids = [run.run_id for run, _ in accepted]
    await gate.until(lambda: gate.inside == 2)

    await manager.shutdown()

    assert store.count(status="cancelled") == 5
    assert sorted(gate.cancelled) == sorted(ids[:2])
    for run_id in ids[:2]:  # cancelled by the engine, mid-step
        record = store.get(run_id)
        assert record is not None
        assert [s.status for s in record.steps] == [StepStatus.CANCELLED, StepStatus.SKIPPED]
    for run_id in ids[2:]:  # never started
        record = store.get(run_id)
        assert record is not None
        assert_cancelled_before_start(record)
    assert (manager.active(), manager.queued()) == (0, 0)
    with pytest.raises(Conflict, match="not accepting runs"):
        await manager.submit("quick")
    await manager.shutdown()  # twice is harmless


async def test_shutdown_cancels_queued_runs_even_when_history_fails(
    demo: DemoServices,
    tmp_path: Path,
    types: dict[str, StepType],
    gate: Gate,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(MemoryHistory):
        def write_all(self, writes: Any) -> None:
            raise OSError("disk gone")

    events: list[Event] = []
    bus = EventBus()
    bus.subscribe(events.append)
    manager = RunManager(
        make_config(demo, tmp_path, types),
        types,
        Broken(),
        bus=bus,
        max_concurrent=1,
        environ={},
    )
    runs = [(await manager.submit("held"))[0] for _ in range(4)]
    await gate.until(lambda: gate.inside == 1)
    with caplog.at_level(logging.ERROR, logger="aegis.api.manager"):
        await manager.shutdown()
    assert "history store failed to record 3 cancelled runs" in caplog.text
    for run in runs[1:]:  # announced cancelled; nothing more could be kept
        assert completed(events, run.run_id)[0]["status"] == "cancelled"
    assert (manager.active(), manager.queued()) == (0, 0)


async def test_shutdown_gives_up_on_a_run_that_ignores_cancellation(
    make_manager: MakeManager, stubborn: Stubborn, caplog: pytest.LogCaptureFixture
) -> None:
    manager = make_manager()
    run, _ = await manager.submit("stubborn")
    await asyncio.wait_for(stubborn.entered.wait(), LIMIT)

    with caplog.at_level(logging.WARNING, logger="aegis.api.manager"):
        await manager.shutdown(timeout=0.05)

    assert "1 run(s) did not end within 0.05s of shutdown" in caplog.text
    stubborn.release.set()
    assert (await manager.wait(run.run_id, LIMIT)).status.finished


# ---------------------------------------------------------------- reading runs


async def test_get_shows_the_steps_of_a_run_still_going(
    make_manager: MakeManager, gate: Gate, store: HistoryStore
) -> None:
    manager = make_manager()
    run, _ = await manager.submit("tested_then_held")
    await gate.until(lambda: gate.inside == 1)

    live = manager.get(run.run_id)
    by_prefix = manager.get(run.run_id[:5])

    assert live is not None and live.status is RunStatus.RUNNING
    assert [(s.name, s.status) for s in live.steps] == [("test", StepStatus.SUCCEEDED)]
    assert live.steps[0].data["total"] > 0
    assert by_prefix == live
    assert manager.get("nope00000000") is None


async def test_get_and_list_read_finished_runs_from_history(
    make_manager: MakeManager, store: HistoryStore
) -> None:
    manager = make_manager()
    runs = [(await manager.submit(key))[0] for key in ("quick", "quick", "held")]
    for run in runs[:2]:
        await manager.wait(run.run_id, LIMIT)

    assert manager.get(runs[0].run_id) == store.get(runs[0].run_id)
    page, total = manager.list(workflow="quick", limit=1)
    assert total == 2 and len(page) == 1
    assert page[0].run_id in {runs[0].run_id, runs[1].run_id}
    held, total = manager.list(workflow="held", status="running")
    assert total == len(held) <= 1  # it may not have begun yet
    everything, total = manager.list(offset=1)
    assert (len(everything), total) == (2, 3)


async def test_an_ambiguous_prefix_is_not_found(
    make_manager: MakeManager, store: HistoryStore
) -> None:
    for suffix in ("1", "2"):
        store.finish(
            replace(
                Run(
                    f"abcd0000000{suffix}", "quick", RunStatus.SUCCEEDED, "2026-01-01T10:00:00.000Z"
                ),
                verdict=Verdict.PASSED,
            )
        )

    with pytest.raises(NotFound, match="ambiguous"):
        make_manager().get("abcd")


# ------------------------------------------------------- when something breaks


class BrokenHistory(MemoryHistory):
    def start(self, run: Run) -> None:
        raise OSError("disk gone")

    def finish(self, run: Run) -> None:
        raise OSError("disk gone")


async def test_a_broken_history_loses_no_run_that_is_still_going(
    make_manager: MakeManager, gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    manager = make_manager(history=BrokenHistory(), max_concurrent=1)
    with caplog.at_level(logging.ERROR):
        first, _ = await manager.submit("held")
        second, _ = await manager.submit("held")
        await gate.until(lambda: gate.inside == 1)

        assert manager.get(first.run_id) is not None
        cancelled = await manager.cancel(second.run_id)
        gate.open.set()
        done = await manager.wait(first.run_id, LIMIT)

    assert cancelled.status is RunStatus.CANCELLED
    assert done.status is RunStatus.SUCCEEDED
    assert "history store failed to record run" in caplog.text


async def test_a_run_whose_engine_breaks_is_recorded_as_failed(
    make_manager: MakeManager,
    store: HistoryStore,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager = make_manager()

    async def broken(*args: Any, **kwargs: Any) -> Run:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Engine, "run", broken)
    with caplog.at_level(logging.ERROR, logger="aegis.api.manager"):
        run, _ = await manager.submit("quick")
        done = await manager.wait(run.run_id, LIMIT)

    assert (done.status, done.verdict) == (RunStatus.FAILED, Verdict.FAILED)
    assert {s.skip_reason for s in done.steps} == {"run aborted: RuntimeError('a bug')"}
    assert store.get(run.run_id) == done
    assert f"run {run.run_id} ended abnormally" in caplog.text
    assert manager.active() == 0


async def test_a_run_whose_engine_breaks_midway_keeps_the_steps_it_reported(
    make_manager: MakeManager, store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make_manager()

    def broken(*args: Any, **kwargs: Any) -> Run:
        raise RuntimeError("a bug at the end")

    monkeypatch.setattr(Engine, "_finish", broken)
    run, _ = await manager.submit("quick")
    done = await manager.wait(run.run_id, LIMIT)

    assert done.status is RunStatus.FAILED
    assert [(s.name, s.status) for s in done.steps] == [
        ("discover", StepStatus.SUCCEEDED),
        ("test", StepStatus.SUCCEEDED),
        ("report", StepStatus.SUCCEEDED),
    ]
    assert store.get(run.run_id) == done


# ------------------------------------------------------------------ restarting


async def test_runs_outlive_the_manager_in_a_history_file(
    demo: DemoServices, tmp_path: Path, types: dict[str, StepType]
) -> None:
    config = make_config(demo, tmp_path, types)
    path = tmp_path / "shared.db"

    with SqliteHistory(path) as store:
        first = RunManager(config, types, store, bus=EventBus(), max_concurrent=2, environ={})
        run, _ = await first.submit("quick")
        await first.wait(run.run_id, LIMIT)
        await first.shutdown()

    with SqliteHistory(path) as store:
        second = RunManager(config, types, store, bus=EventBus(), max_concurrent=2, environ={})
        again = second.get(run.run_id)
        assert again is not None and again.status is RunStatus.SUCCEEDED
        page, total = second.list()
        assert ([r.run_id for r in page], total) == ([run.run_id], 1)
        await second.shutdown()
