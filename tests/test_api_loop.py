"""LoopThread: coroutines from plain threads run on one loop in a thread of its own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
import warnings
from collections.abc import Iterator

import pytest

from aegis.api.loop import LoopThread

LIMIT = 10.0  # seconds any one wait in a test may take before the test fails


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    thread.start()
    yield thread
    thread.stop()


async def where() -> str:
    return threading.current_thread().name


async def fail() -> None:
    raise ValueError("from the loop")


def test_start_returns_with_the_loop_running_in_a_daemon_thread(loop_thread: LoopThread) -> None:
    assert loop_thread.loop.is_running()
    assert loop_thread.running
    threads = [t for t in threading.enumerate() if t.name == "aegis-loop"]
    assert len(threads) == 1 and threads[0].daemon


def test_call_runs_the_coroutine_on_the_loop_thread(loop_thread: LoopThread) -> None:
    assert loop_thread.call(where()) == "aegis-loop"
    assert loop_thread.call(where(), timeout=LIMIT) == "aegis-loop"


def test_call_raises_what_the_coroutine_raises(loop_thread: LoopThread) -> None:
    with pytest.raises(ValueError, match="from the loop"):
        loop_thread.call(fail())


def test_call_from_many_threads_at_once(loop_thread: LoopThread) -> None:
    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return 2 * n

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: loop_thread.call(double(n), timeout=LIMIT), range(50)))

    assert results == [2 * n for n in range(50)]


def test_call_past_its_timeout_cancels_the_coroutine(loop_thread: LoopThread) -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError, match=r"no answer within 0\.05s"):
        loop_thread.call(forever(), timeout=0.05)
    assert cancelled.wait(LIMIT)


def test_submit_returns_a_future_at_once(loop_thread: LoopThread) -> None:
    go = threading.Event()

    async def after_go() -> str:
        await asyncio.get_running_loop().run_in_executor(None, go.wait, LIMIT)
        return "done"

    future = loop_thread.submit(after_go())
    assert not future.done()
    go.set()
    assert future.result(LIMIT) == "done"


def test_submit_from_the_loop_thread_is_allowed(loop_thread: LoopThread) -> None:
    async def schedule() -> concurrent.futures.Future[str]:
        return loop_thread.submit(where())

    assert loop_thread.call(schedule()).result(LIMIT) == "aegis-loop"


def test_call_from_the_loop_thread_raises_instead_of_deadlocking(
    loop_thread: LoopThread, recwarn: pytest.WarningsRecorder
) -> None:
    async def nested() -> str:
        return loop_thread.call(where(), timeout=LIMIT)

    with pytest.raises(RuntimeError, match="would deadlock"):
        loop_thread.call(nested(), timeout=LIMIT)
    gc.collect()
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_stop_from_the_loop_thread_raises(loop_thread: LoopThread) -> None:
    async def stop() -> None:
        loop_thread.stop()

    with pytest.raises(RuntimeError, match="stop\\(\\) from the loop's own thread"):
        loop_thread.call(stop(), timeout=LIMIT)
    assert loop_thread.running


def test_stop_cancels_what_is_left_closes_the_loop_and_ends_the_thread() -> None:
    loop_thread = LoopThread(name="stopping-loop")
    loop_thread.start()
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    left = loop_thread.submit(forever())
    loop_thread.stop()

    assert cancelled.is_set()
    assert left.cancelled()
    assert loop_thread.loop.is_closed()
    assert not loop_thread.running
    assert not [t for t in threading.enumerate() if t.name == "stopping-loop"]


def test_stop_is_idempotent_and_work_after_it_is_refused(
    recwarn: pytest.WarningsRecorder,
) -> None:
    loop_thread = LoopThread()
    loop_thread.start()
    loop_thread.stop()
    loop_thread.stop()

    with pytest.raises(RuntimeError, match="not running"):
        loop_thread.call(where())
    with pytest.raises(RuntimeError, match="not running"):
        loop_thread.submit(where())
    gc.collect()
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_before_start_there_is_no_loop_and_stop_does_nothing() -> None:
    loop_thread = LoopThread()

    assert not loop_thread.running
    with pytest.raises(RuntimeError, match="aegis-loop: not started"):
        _ = loop_thread.loop
    with pytest.raises(RuntimeError, match="not running"):
        loop_thread.call(where())
    loop_thread.stop()


def test_a_loop_thread_starts_once(loop_thread: LoopThread) -> None:
    with pytest.raises(RuntimeError, match="already started"):
        loop_thread.start()


def test_stop_gives_up_on_a_task_that_ignores_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop_thread = LoopThread()
    loop_thread.start()
    entered = threading.Event()
    release = asyncio.Event()

    async def stubborn() -> None:
        entered.set()
        while True:
            try:
                await release.wait()
                return
            except asyncio.CancelledError:
                continue

    loop_thread.submit(stubborn())
    assert entered.wait(LIMIT)
    with caplog.at_level(logging.WARNING, logger="aegis.api.loop"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        loop_thread.stop(timeout=0.05)

    assert "aegis-loop: 1 task(s) ignored cancellation" in caplog.text
    assert loop_thread.loop.is_closed()
