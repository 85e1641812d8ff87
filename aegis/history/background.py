"""``BackgroundWrites``: a store whose writes are made by a thread of its own.

A SQLite file locked by another process makes a write wait, for up to ``LOCK_ROUNDS``
busy timeouts. Made on the event loop, that wait froze every run of the loop, their
timeouts and the server's answers with them. Here ``start``, ``update_step`` and
``finish`` only queue the write and return; one thread applies the queue in order (so
each run's writes keep theirs), as few ``write_all`` batches as have piled up: shutting
down with 100,000 queued runs records their cancellation in a few transactions.

Until a run's writes are applied, ``get`` answers from the record queued last, so a run
that was accepted or has just ended is never "not found". ``list`` and ``count`` first
wait for the writes queued before them (they are called from the API's request threads
and the CLI, never from a loop), so a listing after a finished run shows it. ``close``
waits for every queued write, then closes the store: a record held up by a lock is
complete once the lock goes.

History never fails a run: a write that raises is logged (once) and the rest go on.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

from aegis.history import HistoryStore, OutcomeList, RunList, TestList, Write
from aegis.records import Run, StepResult

__all__ = ["MAX_BATCH", "BackgroundWrites"]

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # writes per batch: a transaction short enough not to starve readers


@dataclass
class _Pending:
    """A run with writes queued or being applied, and its record as they leave it (None
    while only steps were queued, whose run the store has whole)."""

    record: Run | None = None
    writes: int = 0


class BackgroundWrites(HistoryStore):
    """Writes to ``store`` from a thread of its own, in order; reads go straight to it."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self._changed = threading.Condition()
        self._queue: collections.deque[Write] = collections.deque()
        self._queued = 0  # writes ever queued
        self._applied = 0  # writes ever applied (or given up on)
        self._pending: dict[str, _Pending] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failed = False

    # ----------------------------------------------------------- writes: queued

    def start(self, run: Run) -> None:
        self._put(Write("start", (run,)), run)

    def update_step(self, run_id: str, step: StepResult) -> None:
        self._put(Write("update_step", (run_id, step)), None, step)

    def finish(self, run: Run) -> None:
        self._put(Write("finish", (run,)), run)

    def _put(self, write: Write, record: Run | None, step: StepResult | None = None) -> None:
        with self._changed:
            if self._closed:  # a straggler after close: written here, as a plain store would
                self._apply([write])
                return
            entry = self._pending.setdefault(write.run_id, _Pending())
            if record is not None:
                entry.record = record
            elif entry.record is not None and step is not None:
                entry.record = _with_step(entry.record, step)
            entry.writes += 1
            self._queued += 1
            self._queue.append(write)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._drain, name="aegis-history-writer", daemon=True
                )
                self._thread.start()
            self._changed.notify_all()

    def _drain(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closed:
                    self._changed.wait()
                if not self._queue:
                    return
                size = min(len(self._queue), MAX_BATCH)
                batch = [self._queue.popleft() for _ in range(size)]
            self._apply(batch)
            with self._changed:
                for write in batch:
                    entry = self._pending.get(write.run_id)
                    if entry is not None:
                        entry.writes -= 1
                        if entry.writes == 0:
                            del self._pending[write.run_id]
                self._applied += len(batch)
                self._changed.notify_all()

    def _apply(self, batch: Sequence[Write]) -> None:
        try:
            self.store.write_all(batch)
        except Exception:  # history never fails a run, nor stops recording the next
            if not self._failed:
                log.exception("history store failed on %d write(s); recording goes on", len(batch))
            self._failed = True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the writes queued so far are applied; False if ``timeout`` passed
        first. Writes queued meanwhile are not waited for, so a busy store cannot starve
        a reader."""
        with self._changed:
            target = self._queued
            return self._changed.wait_for(lambda: self._applied >= target, timeout=timeout)

    # ------------------------------------------------------------------ reads

    def get(self, run_id: str) -> Run | None:
        with self._changed:
            entry = self._pending.get(run_id)
            if entry is not None and entry.record is not None:
                return entry.record
        return self.store.get(run_id)

    def list(
        self,
        workflow: str | None = None,
        status: str | None = None,
        limit: int = 20,
        offset: int = 0,
        *,
        trigger: str | None = None,
        before: str | None = None,
    ) -> RunList:
        self.flush()
        return self.store.list(workflow, status, limit, offset, trigger=trigger, before=before)

    def count(
        self, workflow: str | None = None, status: str | None = None, *, trigger: str | None = None
    ) -> int:
        self.flush()
        return self.store.count(workflow, status, trigger=trigger)

    # The test history is filled as runs finish: a reader waits for the finishes queued.

    def tests(
        self, workflow: str | None = None, *, flaky: bool = False, limit: int = 50
    ) -> TestList:
        self.flush()
        return self.store.tests(workflow, flaky=flaky, limit=limit)

    def test(self, test_id: str) -> TestList:
        self.flush()
        return self.store.test(test_id)

    def test_outcomes(self, test_id: str, limit: int = 50) -> OutcomeList:
        self.flush()
        return self.store.test_outcomes(test_id, limit)

    def failing_counts(self, run_ids: Sequence[str]) -> dict[str, int]:
        self.flush()
        return self.store.failing_counts(run_ids)

    # ------------------------------------------------------------------ the rest
    # Neither is a run's write: they go to the store at once (from a thread, never a loop).

    def prune_aged(self, limit: int) -> int:
        return self.store.prune_aged(limit)

    def last_fire(self, workflow: str, schedule: str) -> float | None:
        return self.store.last_fire(workflow, schedule)

    def claim_fire(self, workflow: str, schedule: str, at: float) -> bool:
        return self.store.claim_fire(workflow, schedule, at)

    def close(self) -> None:
        """Apply every queued write, then close the store. Closing twice is harmless."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        self.store.close()


def _with_step(run: Run, step: StepResult) -> Run:
    """``run`` with ``step`` in place of the step of its name, or after the others."""
    steps = [step if s.name == step.name else s for s in run.steps]
    if not any(s.name == step.name for s in run.steps):
        steps.append(step)
    return replace(run, steps=tuple(steps))
