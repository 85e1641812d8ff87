"""A history store opened on first use, for ``aegis serve``.

An idle server has no run to record and nobody reading history; opening SQLite for it
cost 0.6 MB of memory (the library's pages and caches) for nothing. ``DeferredHistory``
opens the real store when a run is first recorded or history first read, and that
opening does what opening always does: mark the runs of dead processes ``interrupted``.

A problem that can be seen without SQLite — a path that is a directory, a file that is
not a SQLite database, a file or directory that cannot be written — is looked for at
once by ``history_problem``, so that the server opens (and warns) at start-up, as
``aegis run`` does, rather than at its first request.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

from aegis.history import HistoryStore, OutcomeList, RunList, TestList, Write
from aegis.records import Run, StepResult

__all__ = ["SQLITE_HEADER", "DeferredHistory", "history_problem"]

# The first 16 bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"


def history_problem(path: str) -> str | None:
    """Why ``path`` cannot be a writable history file, if that shows without opening it."""
    try:
        with open(path, "rb") as stream:
            header = stream.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            return f"directory {directory} does not exist"
        return None if os.access(directory, os.W_OK) else f"directory {directory} is not writable"
    except IsADirectoryError:
        return "it is a directory"
    except OSError as exc:
        return exc.strerror or str(exc)
    if header and header != SQLITE_HEADER:
        return "it is not a SQLite database"
    if not os.access(path, os.W_OK):
        return "it is not writable"
    return None


class DeferredHistory(HistoryStore):
    """Opens the store ``open_store`` makes when first used; thread-safe."""

    def __init__(self, open_store: Callable[[], HistoryStore]) -> None:
        self._open_store = open_store
        self._store: HistoryStore | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def opened(self) -> bool:
        return self._store is not None

    def _get(self) -> HistoryStore:
        store = self._store
        if store is None:
            with self._lock:
                if self._store is None:
                    if self._closed:  # used after close: nothing more reaches the file
                        from aegis.history.memory import MemoryHistory

                        self._store = MemoryHistory()
                    else:
                        self._store = self._open_store()
                store = self._store
        return store

    def start(self, run: Run) -> None:
        self._get().start(run)

    def update_step(self, run_id: str, step: StepResult) -> None:
        self._get().update_step(run_id, step)

    def finish(self, run: Run) -> None:
        self._get().finish(run)

    def write_all(self, writes: Sequence[Write]) -> None:
        self._get().write_all(writes)

    def get(self, run_id: str) -> Run | None:
        return self._get().get(run_id)

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
        return self._get().list(workflow, status, limit, offset, trigger=trigger, before=before)

    def count(
        self, workflow: str | None = None, status: str | None = None, *, trigger: str | None = None
    ) -> int:
        return self._get().count(workflow, status, trigger=trigger)

    def tests(
        self, workflow: str | None = None, *, flaky: bool = False, limit: int = 50
    ) -> TestList:
        return self._get().tests(workflow, flaky=flaky, limit=limit)

    def test(self, test_id: str) -> TestList:
        return self._get().test(test_id)

    def test_outcomes(self, test_id: str, limit: int = 50) -> OutcomeList:
        return self._get().test_outcomes(test_id, limit)

    def failing_counts(self, run_ids: Sequence[str]) -> dict[str, int]:
        return self._get().failing_counts(run_ids)

    def prune_aged(self, limit: int) -> int:
        return self._get().prune_aged(limit) if self.opened else 0

    def last_fire(self, workflow: str, schedule: str) -> float | None:
        return self._get().last_fire(workflow, schedule)

    def claim_fire(self, workflow: str, schedule: str, at: float) -> bool:
        return self._get().claim_fire(workflow, schedule, at)

    def close(self) -> None:
        with self._lock:
            store, self._store = self._store, None
            self._closed = True
        if store is not None:
            store.close()
