"""``MemoryHistory``: runs kept in a dict of this process, lost when it ends.

It backs ``history: {path: ":memory:"}``, ``aegis run --no-history``, the tests, and every
``SqliteHistory`` whose file has failed.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from aegis.history import (
    HistoryStore,
    OutcomeList,
    RunList,
    TestList,
    Warn,
    matching_run_id,
)
from aegis.history.test_history import TestTally
from aegis.records import Run, StepResult, age_cutoff

__all__ = ["PRUNE_BATCH", "MemoryHistory"]

# The most runs one round of pruning by age removes: a run's path never waits for more.
PRUNE_BATCH = 200


@dataclass
class _Entry:
    seq: int
    run: Run
    # Steps of a run still going, by name in order of first report; None once finished,
    # when ``run.steps`` holds them exactly as the engine gave them.
    steps: dict[str, StepResult] | None

    def record(self) -> Run:
        if self.steps is None:
            return self.run
        return replace(self.run, steps=tuple(self.steps.values()))

    @property
    def key(self) -> tuple[str, int]:
        return self.run.started_at, self.seq


class MemoryHistory(HistoryStore):
    """A thread-safe in-process store; ``max_runs`` (0: unlimited) applies per workflow,
    ``max_age`` (seconds, 0: unlimited) to every run, by ``clock`` (unix seconds)."""

    def __init__(
        self,
        *,
        max_runs: int = 0,
        max_age: float = 0.0,
        warn: Warn | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_runs = max_runs
        self.max_age = max_age
        self._clock = clock
        self._fires: dict[tuple[str, str], float] = {}
        self.warn = warn  # nothing here can fail, but every store takes one
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        # (started_at, seq, run_id) ascending, so newest-first listing walks it backwards.
        self._order: list[tuple[str, int, str]] = []
        self._seqs = itertools.count()
        self._tests = TestTally()

    def start(self, run: Run) -> None:
        with self._lock:
            self._put(run, {s.name: s for s in run.steps})

    def update_step(self, run_id: str, step: StepResult) -> None:
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is None:
                return
            if entry.steps is None:  # a step reported after the end: rebuild the dict
                entry.steps = {s.name: s for s in entry.run.steps}
            entry.steps[step.name] = step

    def finish(self, run: Run) -> None:
        with self._lock:
            self._put(run, None)
            if run.status.finished:
                self._tests.record(run)
            self._prune(run.workflow)
        self.prune_aged(PRUNE_BATCH)

    def prune_aged(self, limit: int) -> int:
        if self.max_age <= 0:
            return 0
        cutoff = age_cutoff(self._clock(), self.max_age)
        with self._lock:
            # _order is oldest first: the walk stops at the first run young enough
            doomed: list[_Entry] = []
            for started_at, _, run_id in self._order:
                if started_at >= cutoff or len(doomed) >= limit:
                    break
                if self._entries[run_id].run.status.finished:
                    doomed.append(self._entries[run_id])
            for entry in doomed:
                self._unlink(entry)
        return len(doomed)

    def last_fire(self, workflow: str, schedule: str) -> float | None:
        with self._lock:
            return self._fires.get((workflow, schedule))

    def claim_fire(self, workflow: str, schedule: str, at: float) -> bool:
        with self._lock:
            if self._fires.get((workflow, schedule), -math.inf) >= at:
                return False
            self._fires[(workflow, schedule)] = at
            return True

    def get(self, run_id: str) -> Run | None:
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is not None:
                return entry.record()
            found = matching_run_id(run_id, self._entries)
            return self._entries[found].record() if found is not None else None

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
        limit, offset = max(limit, 0), max(offset, 0)
        found: RunList = []
        with self._lock:
            end = len(self._order)
            if before is not None:
                below = self._entries.get(before)
                if below is None:
                    return []
                end = bisect.bisect_left(self._order, (*below.key, before))
            matching = self._matching(workflow, status, trigger, end)
            for entry in itertools.islice(matching, offset, offset + limit):
                found.append(entry.record())
        return found

    def count(
        self, workflow: str | None = None, status: str | None = None, *, trigger: str | None = None
    ) -> int:
        with self._lock:
            return sum(1 for _ in self._matching(workflow, status, trigger))

    def tests(
        self, workflow: str | None = None, *, flaky: bool = False, limit: int = 50
    ) -> TestList:
        with self._lock:
            return self._tests.tests(workflow, flaky, limit)

    def test(self, test_id: str) -> TestList:
        with self._lock:
            return self._tests.test(test_id)

    def test_outcomes(self, test_id: str, limit: int = 50) -> OutcomeList:
        with self._lock:
            return self._tests.outcomes(test_id, limit)

    def failing_counts(self, run_ids: Sequence[str]) -> dict[str, int]:
        with self._lock:
            return self._tests.failing_counts(list(run_ids))

    def close(self) -> None:
        """Nothing to release: the runs stay readable until the store is dropped."""

    def _put(self, run: Run, steps: dict[str, StepResult] | None) -> None:
        old = self._entries.get(run.run_id)
        if old is None:
            entry = _Entry(next(self._seqs), run, steps)
        else:
            self._unlink(old)
            entry = _Entry(old.seq, run, steps)
        self._entries[run.run_id] = entry
        bisect.insort(self._order, (*entry.key, run.run_id))

    def _unlink(self, entry: _Entry) -> None:
        del self._order[bisect.bisect_left(self._order, (*entry.key, entry.run.run_id))]
        del self._entries[entry.run.run_id]

    def _matching(
        self,
        workflow: str | None,
        status: str | None,
        trigger: str | None = None,
        end: int | None = None,
    ) -> Iterator[_Entry]:
        """The runs matching, newest first, among the ``end`` oldest (all by default)."""
        stop = len(self._order) if end is None else end
        for index in range(stop - 1, -1, -1):
            run_id = self._order[index][2]
            entry = self._entries[run_id]
            if workflow is not None and entry.run.workflow != workflow:
                continue
            if status is not None and entry.run.status.value != status:
                continue
            if trigger is not None and entry.run.trigger != trigger:
                continue
            yield entry

    def _prune(self, workflow: str) -> None:
        if self.max_runs <= 0:
            return
        finished = [e for e in self._matching(workflow, None) if e.run.status.finished]
        doomed = finished[self.max_runs :]
        for entry in doomed:
            self._unlink(entry)
        if doomed:
            self._tests.forget({entry.run.run_id for entry in doomed})
