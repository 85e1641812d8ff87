"""``LoopThread``: one asyncio loop in a daemon thread, for callers that are threads.

The API's ``http.server`` handlers run in threads of their own; the engine, the run
manager and the health cache live on one asyncio loop. A handler hands a coroutine over
and waits for its answer::

    loop_thread = LoopThread()
    loop_thread.start()
    run, created = loop_thread.call(manager.submit("smoke"), timeout=10)
    ...
    loop_thread.stop()

Why it is built this way:

* ``call`` from the loop's own thread would wait for a result only that thread can
  produce, so it raises ``RuntimeError`` rather than hang.
* A coroutine handed over while the loop is stopping is either run to its end or
  cancelled: ``stop`` refuses new work first, and the thread cancels whatever is left
  before it closes the loop, so no caller waits for a future that can never complete.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["DEFAULT_STOP_TIMEOUT", "LoopThread"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_STOP_TIMEOUT = 5.0
# Time for the thread to close the loop after its tasks have ended or been given up on.
_JOIN_MARGIN = 1.0


class LoopThread:
    """An asyncio event loop running in a daemon thread of its own."""

    def __init__(self, name: str = "aegis-loop") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._grace = DEFAULT_STOP_TIMEOUT

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop; raises ``RuntimeError`` before ``start``."""
        if self._loop is None:
            raise RuntimeError(f"{self.name}: not started")
        return self._loop

    @property
    def running(self) -> bool:
        """Whether coroutines are accepted: started and not stopping."""
        return self._loop is not None and not self._stopping

    def start(self) -> None:
        """Start the thread; returns once its loop is running. Raises ``RuntimeError``
        if this object was started before (a stopped loop thread is not restarted)."""
        ready = threading.Event()
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"{self.name}: already started")
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._thread = threading.Thread(
                target=self._run, args=(loop, ready), name=self.name, daemon=True
            )
            self._thread.start()
        ready.wait()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception).

        Raises ``TimeoutError`` after ``timeout`` seconds, having cancelled ``coro``;
        ``RuntimeError`` when called from the loop's own thread or when the loop is not
        running.
        """
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(f"{self.name}: call() from the loop's own thread would deadlock")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            # Before 3.11 this is not the builtin TimeoutError; callers catch only that.
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g}s") from None

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop and return at once with its future.

        Raises ``RuntimeError`` when the loop is not running.
        """
        with self._lock:
            if not self.running:
                coro.close()  # never awaited: close it so Python does not warn
                raise RuntimeError(f"{self.name}: not running")
            return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Cancel the loop's tasks, give them up to ``timeout`` seconds to end, close
        the loop and join the thread. Stopping twice, or before ``start``, does nothing.
        Raises ``RuntimeError`` when called from the loop's own thread."""
        if threading.current_thread() is self._thread:
            raise RuntimeError(f"{self.name}: stop() from the loop's own thread")
        with self._lock:
            thread = self._thread
            if thread is None or self._stopping:
                return
            self._stopping = True
            self._grace = timeout
        self.loop.call_soon_threadsafe(self.loop.stop)
        thread.join(timeout + _JOIN_MARGIN)
        if thread.is_alive():  # pragma: no cover - a task blocking the thread itself
            log.warning("%s: the loop thread did not end within %gs", self.name, timeout)

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)  # the first callback: the loop is running by then
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(self._cancel_remaining())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _cancel_remaining(self) -> None:
        this = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not this]
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self._grace)
        if pending:
            log.warning("%s: %d task(s) ignored cancellation", self.name, len(pending))
