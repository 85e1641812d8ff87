"""The engine's semantics (DESIGN §3), with in-process step types and an injectable clock."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fakes import FakeClock, ManualClock, config, step, step_type

from aegis.engine.retry import MAX_RETRY_WAIT, RETRY_AFTER_CAP
from aegis.engine.runner import Engine, batches
from aegis.errors import NotFound, StepError
from aegis.events import Event, EventBus
from aegis.history.memory import MemoryHistory
from aegis.records import RunStatus, StepStatus, Verdict
from aegis.steps.base import StepContext


def flaky(failures: list[StepError], data: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    """A step that raises each of ``failures`` in turn, then succeeds with ``data``."""
    calls: list[int] = []

    async def execute(ctx: StepContext) -> dict[str, Any]:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return dict(data or {"ok": True})

    execute.calls = calls  # type: ignore[attr-defined]
    return execute


async def ok(ctx: StepContext) -> dict[str, Any]:
    return {"ok": True}


async def sleeper(ctx: StepContext) -> dict[str, Any]:
    await asyncio.sleep(float(ctx.spec.params.get("seconds", 60)))
    return {"slept": True}


async def reports_failures(ctx: StepContext) -> dict[str, Any]:
    return {"total": 3, "passed": 2, "failed": 1, "failures": [{"test": "t1", "message": "no"}]}


async def reports_all_passing(ctx: StepContext) -> dict[str, Any]:
    return {"total": 3, "passed": 3, "failed": 0, "failures": []}


async def broken(ctx: StepContext) -> dict[str, Any]:
    raise ValueError("bug in step")


def http_error(status: int, retry_after: float | None = None) -> StepError:
    return StepError("http", f"HTTP {status} from svc", status_code=status, retry_after=retry_after)


def engine(cfg, types, clock=None, history=None, bus=None):  # type: ignore[no-untyped-def]
    return Engine(
        cfg,
        {t.name: t for t in types},
        history=history if history is not None else MemoryHistory(),
        bus=bus,
        clock=clock or FakeClock(),
    )


async def test_fails_twice_then_succeeds_with_doubling_waits() -> None:
    clock = FakeClock()
    execute = flaky([http_error(503), http_error(503)])
    cfg = config(step("flaky", retries=2, retry_delay=1.5))
    run = await engine(cfg, [step_type("flaky", execute)], clock).run("wf")
    result = run.steps[0]
    assert result.status is StepStatus.SUCCEEDED
    assert [a.success for a in result.attempts] == [False, False, True]
    assert [a.status_code for a in result.attempts] == [503, 503, None]
    assert clock.sleeps == [1.5, 3.0]
    assert run.status is RunStatus.SUCCEEDED and run.verdict is Verdict.PASSED


async def test_retries_exhausted_fails_the_step_with_last_error() -> None:
    clock = FakeClock()
    cfg = config(step("flaky", retries=1), step("after", condition="on_success"))
    types = [step_type("flaky", flaky([http_error(500), http_error(502)])), step_type("after", ok)]
    run = await engine(cfg, types, clock).run("wf")
    first, second = run.steps
    assert first.status is StepStatus.FAILED
    assert (first.error, first.error_kind) == ("HTTP 502 from svc", "http")
    assert len(first.attempts) == 2
    assert second.skipped and "earlier step failed" in (second.skip_reason or "")
    assert run.status is RunStatus.FAILED and run.verdict is Verdict.FAILED


async def test_backoff_is_capped_by_max_retry_delay() -> None:
    clock = FakeClock()
    errors = [http_error(500) for _ in range(4)]
    cfg = config(step("flaky", retries=4, retry_delay=1, max_retry_delay=3))
    await engine(cfg, [step_type("flaky", flaky(errors))], clock).run("wf")
    assert clock.sleeps == [1, 2, 3, 3]


async def test_jitter_varies_each_wait_within_its_fraction() -> None:
    clock = FakeClock(randoms=[0.0, 1.0])
    errors = [http_error(500), http_error(500)]
    cfg = config(step("flaky", retries=2, retry_delay=10, retry_jitter=0.1))
    await engine(cfg, [step_type("flaky", flaky(errors))], clock).run("wf")
    assert clock.sleeps == pytest.approx([9.0, 22.0])


async def test_retry_after_replaces_backoff_and_is_capped() -> None:
    clock = FakeClock()
    errors = [http_error(429, retry_after=7), http_error(503, retry_after=120)]
    cfg = config(step("flaky", retries=2, retry_delay=1, max_retry_delay=30))
    await engine(cfg, [step_type("flaky", flaky(errors))], clock).run("wf")
    assert clock.sleeps == [7, 30]


async def test_retry_after_without_max_retry_delay_is_still_capped() -> None:
    # The service picks Retry-After; a day-long one must not park the run for a day.
    clock = FakeClock()
    errors = [http_error(503, retry_after=86_400), http_error(429, retry_after=5)]
    cfg = config(step("flaky", retries=2, retry_delay=1))
    await engine(cfg, [step_type("flaky", flaky(errors))], clock).run("wf")
    assert clock.sleeps == [RETRY_AFTER_CAP, 5]


async def test_a_configured_max_retry_delay_may_allow_longer_retry_after() -> None:
    clock = FakeClock()
    errors = [http_error(503, retry_after=300)]
    cfg = config(step("flaky", retries=1, retry_delay=1, max_retry_delay=600))
    await engine(cfg, [step_type("flaky", flaky(errors))], clock).run("wf")
    assert clock.sleeps == [300]


@pytest.mark.parametrize(
    ("retry_on", "error", "attempts"),
    [
        (("5xx",), http_error(503), 2),
        (("5xx",), http_error(404), 1),
        (("429",), http_error(429), 2),
        (("timeout", "connection"), StepError("connection", "refused"), 2),
        (("timeout",), StepError("protocol", "bad json"), 1),
        (("4xx",), StepError("connection", "refused"), 1),
        (None, StepError("protocol", "bad json"), 2),
        # by default a 4xx is final, but for those that may pass when sent again
        (None, http_error(401), 1),
        (None, http_error(404), 1),
        (None, http_error(422), 1),
        (None, http_error(408), 2),
        (None, http_error(425), 2),
        (None, http_error(429), 2),
        (None, http_error(503), 2),
        (("4xx",), http_error(401), 2),
    ],
)
async def test_retry_on_retries_only_matching_failures(
    retry_on: tuple[str, ...] | None, error: StepError, attempts: int
) -> None:
    cfg = config(step("flaky", retries=1, retry_on=retry_on))
    run = await engine(cfg, [step_type("flaky", flaky([error]))]).run("wf")
    assert len(run.steps[0].attempts) == attempts


async def test_a_failed_step_records_the_data_its_last_attempt_carried() -> None:
    errors = [
        StepError("connection", "reset", data={"done": ["a"]}),
        StepError("connection", "reset", data={"done": ["a", "b"]}),
    ]
    cfg = config(step("flaky", retries=1), step("after", condition="on_failure"))
    types = [step_type("flaky", flaky(errors)), step_type("after", ok)]
    run = await engine(cfg, types).run("wf")
    failed = run.steps[0]
    assert failed.status is StepStatus.FAILED and failed.data == {"done": ["a", "b"]}
    assert run.to_dict()["steps"][0]["data"] == {"done": ["a", "b"]}


async def test_an_attempt_cut_by_its_timeout_records_the_steps_progress() -> None:
    async def slow_after_one(ctx: StepContext) -> dict[str, Any]:
        ctx.progress["filed"] = ["r1"]
        await asyncio.sleep(60)
        return {}

    cfg = config(step("slow", timeout=0.2))
    run = await Engine(cfg, {"slow": step_type("slow", slow_after_one)}).run("wf")
    result = run.steps[0]
    assert (result.error_kind, result.data) == ("timeout", {"filed": ["r1"]})


async def test_slow_step_times_out_with_kind_timeout() -> None:
    cfg = config(step("slow", timeout=0.3))
    began = time.monotonic()
    run = await Engine(cfg, {"slow": step_type("slow", sleeper)}).run("wf")
    elapsed = time.monotonic() - began
    result = run.steps[0]
    assert (result.status, result.error_kind) == (StepStatus.FAILED, "timeout")
    assert result.error == "timed out after 0.3s"
    assert 0.25 <= elapsed < 2.0
    assert run.status is RunStatus.FAILED


async def test_deadline_cuts_off_a_running_attempt() -> None:
    cfg = config(step("slow", timeout=30, deadline=0.3, retries=3))
    began = time.monotonic()
    run = await Engine(cfg, {"slow": step_type("slow", sleeper)}).run("wf")
    assert time.monotonic() - began < 2.0
    result = run.steps[0]
    assert result.error_kind == "timeout"
    assert "step deadline of 0.3s reached" in (result.error or "")
    assert len(result.attempts) == 1


async def test_deadline_stops_a_wait_that_would_pass_it() -> None:
    clock = FakeClock()

    async def slow_failure(ctx: StepContext) -> dict[str, Any]:
        clock.advance(3)
        raise http_error(500)

    cfg = config(step("flaky", retries=5, retry_delay=1, deadline=10))
    run = await engine(cfg, [step_type("flaky", slow_failure)], clock).run("wf")
    result = run.steps[0]
    # attempts run 0-3, 4-7 (after a 1 s wait) and 9-12 (after 2 s); the 4 s wait after
    # the third would end past the deadline at 10, so it is never begun
    assert clock.sleeps == [1, 2]
    assert len(result.attempts) == 3
    assert "no retry: step deadline of 10s reached" in (result.error or "")


async def test_parallel_steps_run_together() -> None:
    cfg = config(*(step("slow", f"s{i}", parallel=True, params={"seconds": 0.4}) for i in range(3)))
    began = time.monotonic()
    run = await Engine(cfg, {"slow": step_type("slow", sleeper)}).run("wf")
    elapsed = time.monotonic() - began
    assert [s.status for s in run.steps] == [StepStatus.SUCCEEDED] * 3
    assert elapsed < 1.0  # one after another would take 1.2 s


def test_batches_group_consecutive_parallel_steps() -> None:
    specs = [
        step("a"),
        step("b", parallel=True),
        step("c", parallel=True),
        step("d"),
        step("e", parallel=True),
    ]
    grouped = [[s.name for _, s in batch] for batch in batches(specs)]
    assert grouped == [["a"], ["b", "c"], ["d"], ["e"]]


async def test_batch_results_are_visible_to_later_batches_only() -> None:
    seen: list[bool] = []

    async def look(ctx: StepContext) -> dict[str, Any]:
        seen.append(ctx.state.has_test_failures)
        return {}

    cfg = config(
        step("fail", parallel=True),
        step("look", "look-1", parallel=True),
        step("look", "look-2"),
    )
    types = [step_type("fail", reports_failures), step_type("look", look)]
    await engine(cfg, types).run("wf")
    assert seen == [False, True]


@pytest.mark.parametrize(
    ("first", "condition", "runs"),
    [
        (ok, None, True),
        (ok, "always", True),
        (ok, "on_success", True),
        (ok, "on_failure", False),
        (broken, "on_success", False),
        (broken, "on_failure", True),
        (broken, "always", True),
        (reports_failures, "has_failures", True),
        (reports_all_passing, "has_failures", False),
        (ok, "has_failures", False),
    ],
)
async def test_conditions(first: Any, condition: str | None, runs: bool) -> None:
    cfg = config(step("first"), step("second", condition=condition))
    types = [step_type("first", first), step_type("second", ok)]
    run = await engine(cfg, types).run("wf")
    second = run.steps[1]
    assert (second.status is StepStatus.SUCCEEDED) is runs
    assert second.skipped is (not runs)
    if not runs:
        assert second.skip_reason and condition in second.skip_reason


async def test_skipped_steps_do_not_count_for_conditions() -> None:
    cfg = config(
        step("first", condition="on_failure"),
        step("second", condition="has_failures"),
        step("third", condition="on_success"),
    )
    types = [
        step_type("first", reports_failures),
        step_type("second", broken),
        step_type("third", ok),
    ]
    run = await engine(cfg, types).run("wf")
    assert [s.status for s in run.steps] == [
        StepStatus.SKIPPED,
        StepStatus.SKIPPED,
        StepStatus.SUCCEEDED,
    ]


async def test_a_step_that_raises_is_a_failed_attempt_and_the_run_goes_on() -> None:
    cfg = config(step("broken", retries=1), step("after", condition="always"))
    run = await engine(cfg, [step_type("broken", broken), step_type("after", ok)]).run("wf")
    first, second = run.steps
    assert (first.error_kind, first.error) == ("error", "ValueError: bug in step")
    assert len(first.attempts) == 2
    assert second.status is StepStatus.SUCCEEDED
    assert run.status is RunStatus.FAILED


async def test_a_step_returning_a_non_dict_is_an_error() -> None:
    async def wrong(ctx: StepContext) -> Any:
        return ["not", "a", "dict"]

    run = await engine(config(step("wrong")), [step_type("wrong", wrong)]).run("wf")
    assert run.steps[0].error_kind == "error"
    assert "returned list" in (run.steps[0].error or "")


async def test_failing_tests_fail_the_verdict_not_the_run() -> None:
    run = await engine(config(step("t")), [step_type("t", reports_failures)]).run("wf")
    assert run.status is RunStatus.SUCCEEDED
    assert run.verdict is Verdict.FAILED


async def test_workflow_timeout_cancels_running_and_skips_the_rest() -> None:
    cfg = config(step("fast"), step("slow"), step("never"), timeout=0.3)
    history = MemoryHistory()
    types = [step_type("fast", ok), step_type("slow", sleeper), step_type("never", ok)]
    began = time.monotonic()
    run = await engine(cfg, types, clock=None, history=history).run("wf")
    assert time.monotonic() - began < 2.0
    fast, slow, never = run.steps
    assert run.status is RunStatus.TIMED_OUT and run.verdict is Verdict.FAILED
    assert fast.status is StepStatus.SUCCEEDED
    assert slow.status is StepStatus.CANCELLED and slow.error == "workflow timeout after 0.3s"
    assert slow.attempts[0].error == "cancelled"
    assert never.skipped and never.skip_reason == "workflow timeout after 0.3s"
    stored = history.get(run.run_id)
    assert stored is not None and stored.status is RunStatus.TIMED_OUT


def stubborn(entered: asyncio.Event, cleaning: asyncio.Event, gate: asyncio.Event):  # type: ignore[no-untyped-def]
    """A step that waits forever and, once cancelled, takes until ``gate`` to clean up."""

    async def execute(ctx: StepContext) -> dict[str, Any]:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaning.set()
            await gate.wait()
            raise
        return {}

    return execute


async def bounded(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), 10)


async def test_a_cancel_before_the_workflow_timeout_is_recorded_cancelled() -> None:
    clock, history = ManualClock(), MemoryHistory()
    entered, cleaning, gate = asyncio.Event(), asyncio.Event(), asyncio.Event()
    cfg = config(step("s"), step("after"), timeout=5)
    types = [step_type("s", stubborn(entered, cleaning, gate)), step_type("after", ok)]
    task = asyncio.ensure_future(engine(cfg, types, clock, history).run("wf", run_id="r1"))
    await bounded(entered)
    task.cancel()
    await bounded(cleaning)
    clock.advance(10)  # the timeout passes while the step is still cleaning up
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    run = history.get("r1")
    assert run is not None and run.status is RunStatus.CANCELLED
    assert run.steps[0].error == "run cancelled"
    assert run.steps[1].skip_reason == "run cancelled"


async def test_a_cancel_after_the_workflow_timeout_is_recorded_timed_out() -> None:
    clock, history, bus = ManualClock(), MemoryHistory(), EventBus()
    events: list[Event] = []
    bus.subscribe(events.append)
    entered, cleaning, gate = asyncio.Event(), asyncio.Event(), asyncio.Event()
    cfg = config(step("s"), step("after"), timeout=5)
    types = [step_type("s", stubborn(entered, cleaning, gate)), step_type("after", ok)]
    task = asyncio.ensure_future(engine(cfg, types, clock, history, bus).run("wf", run_id="r2"))
    await bounded(entered)
    clock.advance(5)  # the timeout fires first ...
    await bounded(cleaning)
    task.cancel()  # ... then a cancel arrives while the step cleans up
    gate.set()
    with pytest.raises(asyncio.CancelledError):  # the caller's cancel is not swallowed
        await task
    run = history.get("r2")
    assert run is not None and run.status is RunStatus.TIMED_OUT
    assert run.steps[0].error == "workflow timeout after 5s"
    assert run.steps[1].skip_reason == "workflow timeout after 5s"
    assert events[-1].data["reason"] == "workflow timeout after 5s"


async def sleeping(clock: ManualClock) -> None:
    while not clock.sleeps:
        await asyncio.sleep(0)


async def test_a_timeout_due_after_the_last_step_ended_changes_nothing() -> None:
    clock, bus = ManualClock(), EventBus()
    events: list[Event] = []
    bus.subscribe(events.append)

    async def last(ctx: StepContext) -> dict[str, Any]:
        await asyncio.wait_for(sleeping(clock), 10)  # the timer has started to wait
        clock.advance(5)  # it is due as the last step returns
        return {"ok": True}

    cfg = config(step("last"), timeout=5)
    run = await engine(cfg, [step_type("last", last)], clock, bus=bus).run("wf")
    assert run.status is RunStatus.SUCCEEDED and run.verdict is Verdict.PASSED
    assert events[-1].type == "workflow.completed" and events[-1].data["reason"] is None


async def test_cancelled_run_is_recorded_then_cancellation_propagates() -> None:
    history = MemoryHistory()
    started = asyncio.Event()

    async def blocking(ctx: StepContext) -> dict[str, Any]:
        started.set()
        await asyncio.sleep(60)
        return {}

    cfg = config(step("block"), step("later"))
    eng = engine(cfg, [step_type("block", blocking), step_type("later", ok)], history=history)
    task = asyncio.ensure_future(eng.run("wf", run_id="r1"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stored = history.get("r1")
    assert stored is not None
    assert stored.status is RunStatus.CANCELLED
    assert [s.status for s in stored.steps] == [StepStatus.CANCELLED, StepStatus.SKIPPED]
    assert stored.steps[1].skip_reason == "run cancelled"


async def test_run_is_recorded_at_start_and_each_step_as_it_ends() -> None:
    history = MemoryHistory()
    seen: list[tuple[str, int]] = []

    async def peek(ctx: StepContext) -> dict[str, Any]:
        stored = history.get(ctx.run_id)
        assert stored is not None
        seen.append((stored.status.value, len(stored.steps)))
        return {}

    cfg = config(step("peek", "p1"), step("peek", "p2"))
    run = await engine(cfg, [step_type("peek", peek)], history=history).run("wf")
    assert seen == [("running", 0), ("running", 1)]
    assert history.get(run.run_id) == run


async def test_a_broken_history_never_breaks_a_run() -> None:
    class Broken:
        def __getattr__(self, name: str) -> Any:
            def fail(*args: Any) -> None:
                raise OSError("disk on fire")

            return fail

    run = await engine(config(step("ok")), [step_type("ok", ok)], history=Broken()).run("wf")
    assert run.status is RunStatus.SUCCEEDED


async def test_events_tell_the_story_of_a_run_in_order() -> None:
    bus = EventBus()
    events: list[Event] = []
    bus.subscribe(events.append)
    bus.subscribe(lambda event: 1 / 0)  # a broken listener disturbs nothing
    cfg = config(step("flaky", retries=1, retry_delay=2), step("after", condition="always"))
    types = [step_type("flaky", flaky([http_error(500), http_error(500)])), step_type("after", ok)]
    run = await engine(cfg, types, bus=bus).run("wf")
    assert [e.type for e in events] == [
        "workflow.started",
        "step.started",
        "step.retrying",
        "step.completed",
        "failure.detected",
        "step.started",
        "step.completed",
        "workflow.completed",
    ]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert {e.run_id for e in events} == {run.run_id}
    retrying = events[2].data
    assert (retrying["attempt"], retrying["wait_s"], retrying["error_kind"]) == (1, 2, "http")
    done = events[-1].data
    assert (done["status"], done["verdict"]) == ("failed", "failed")
    assert done["steps"]["failed"] == 1


async def test_unknown_workflow_is_not_found_and_not_recorded() -> None:
    history = MemoryHistory()
    with pytest.raises(NotFound, match=r"unknown workflow 'nope'.*known: wf"):
        await engine(config(step("ok")), [step_type("ok", ok)], history=history).run("nope")
    assert history.list() == []


async def test_run_json_carries_attempts_and_durations() -> None:
    clock = FakeClock()

    async def timed(ctx: StepContext) -> dict[str, Any]:
        clock.advance(0.25)
        return {"total": 1, "passed": 1, "failed": 0, "failures": []}

    run = await engine(config(step("timed")), [step_type("timed", timed)], clock).run("wf")
    body = run.to_dict()
    assert body["status"] == "succeeded" and body["verdict"] == "passed"
    assert body["started_at"] == "2026-01-01T00:16:40.000Z"
    assert body["duration_ms"] == 250.0
    (only,) = body["steps"]
    assert only["duration_ms"] == 250.0
    assert only["attempts"][0]["success"] is True
    assert only["attempts"][0]["duration_ms"] == 250.0


async def test_a_run_whose_client_cannot_open_is_still_recorded_as_failed() -> None:
    history = MemoryHistory()

    def no_client() -> Any:
        raise OSError("no sockets left")

    cfg = config(step("http"), step("after"))
    types = {
        "http": step_type("http", ok, needs_service=True),
        "after": step_type("after", ok),
    }
    run = await Engine(cfg, types, history=history, clock=FakeClock(), open_client=no_client).run(
        "wf"
    )
    assert run.status is RunStatus.FAILED and run.verdict is Verdict.FAILED
    assert [s.skip_reason for s in run.steps] == ["run aborted: OSError: no sockets left"] * 2
    assert history.get(run.run_id) == run


async def test_no_attempt_starts_once_an_overshooting_wait_passed_the_deadline() -> None:
    class LateClock(FakeClock):
        async def sleep(self, seconds: float) -> None:
            await super().sleep(seconds)
            self.advance(5)  # a loaded machine wakes the sleeper late

    clock = LateClock()
    cfg = config(step("flaky", retries=3, retry_delay=1, deadline=4))
    run = await engine(cfg, [step_type("flaky", flaky([http_error(500)] * 4))], clock).run("wf")
    result = run.steps[0]
    assert len(result.attempts) == 1
    assert result.error == "HTTP 500 from svc (no retry: step deadline of 4s reached)"


def test_run_ids_are_twelve_random_hex_digits() -> None:
    from aegis.engine.runner import new_run_id

    ids = {new_run_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 12 and int(i, 16) >= 0 for i in ids)


def test_the_system_clock_stamps_attempts_with_the_current_millisecond() -> None:
    from datetime import datetime, timezone

    from aegis.engine.clock import SystemClock
    from aegis.records import format_timestamp

    clock = SystemClock()
    before = format_timestamp(datetime.now(timezone.utc))
    stamp = clock.timestamp()
    after = format_timestamp(clock.now())
    assert before <= stamp <= after and stamp.endswith("Z") and len(stamp) == 24


async def test_a_thousand_retries_end_in_the_step_record_with_every_attempt() -> None:
    # 2**1024 does not fit a float: the wait after attempt 1,025 once aborted the run and
    # recorded the step that had made 1,024 attempts as skipped.
    clock = FakeClock()
    errors = [http_error(500) for _ in range(1101)]
    cfg = config(step("flaky", retries=1100, retry_delay=0.5))
    run = await engine(cfg, [step_type("flaky", flaky(errors))], clock).run("wf")
    result = run.steps[0]
    assert result.status is StepStatus.FAILED and len(result.attempts) == 1101
    assert run.status is RunStatus.FAILED
    assert max(clock.sleeps) == MAX_RETRY_WAIT


class BrokenRandom(FakeClock):
    def random(self) -> float:
        raise ArithmeticError("no randomness today")


async def test_a_failure_between_attempts_ends_as_the_steps_error() -> None:
    cfg = config(step("flaky", retries=3, retry_jitter=0.5), step("after", condition="always"))
    types = [step_type("flaky", flaky([http_error(500)] * 4)), step_type("after", ok)]
    run = await engine(cfg, types, BrokenRandom()).run("wf")
    first, after = run.steps
    assert first.status is StepStatus.FAILED and len(first.attempts) == 1
    assert first.error == "HTTP 500 from svc (no retry: ArithmeticError: no randomness today)"
    assert after.status is StepStatus.SUCCEEDED and run.status is RunStatus.FAILED
