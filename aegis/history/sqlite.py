"""``SqliteHistory``: runs in one SQLite file that several processes share.

Why it is built this way:

* **Sharing.** Ten CI runs and a server may write one file at once. WAL lets readers go on
  while one process writes. Every write is one short ``BEGIN IMMEDIATE`` transaction, so a
  writer takes the write lock up front instead of upgrading a read lock (which SQLite may
  refuse without waiting). A writer that still finds the file busy after the busy timeout
  tries again, for up to ``LOCK_ROUNDS`` busy timeouts in all, rather than lose a record.
* **Crashes.** The run row is written when the run starts and each step as it ends, so a
  killed process leaves behind what it had done. Each row names its owner: host, pid, and
  a token of the process's start time (so a reused pid is told apart), and the owner
  refreshes ``heartbeat_at`` while it has runs going. A store marks ``interrupted`` only
  the unfinished rows whose owner is gone: on this host, a pid that is not alive or now
  belongs to another process; on another host, a heartbeat older than ``stale_after``.
* **Failure.** A file that cannot be opened raises ``HistoryUnavailable`` (``open_history``
  turns that into one warning). Opening waits for a busy file for one busy timeout only, so
  a file locked for good delays a run by seconds, not minutes. A file that fails later
  makes the store warn once and keep the rest of this process's history in memory, the
  runs still going included.
* **Reading only.** ``read_only=True`` opens the file without writing to it (listing
  commands use it when the file cannot be written): no schema is made, no run is marked
  ``interrupted``, and readers are not blocked by another process's write lock.
* **Scale.** A listing reads one page of run rows through the index matching its filters
  (newest first, no sort step) and only the summary columns of their steps; ``before``
  (a run id) starts the page below that run by ``(started_at, seq)``, which the same
  index seeks, where ``offset`` would walk the rows it skips. Step ``data``
  and ``attempts`` are JSON columns that only ``get`` reads.

Schema, version 1 (``PRAGMA user_version``)::

    runs   seq INTEGER PRIMARY KEY AUTOINCREMENT (order of recording, never reused: the
           tie-break after started_at, and what steps refer to),
           run_id UNIQUE, workflow, status, verdict, started_at, finished_at,
           duration_ms, trigger, owner_host, owner_pid, owner_token,
           heartbeat_at (unix seconds), params (JSON) and rerun_of (both added to
           older files on open, read as {} and NULL from an older file opened read-only)
    steps  run_seq (runs.seq), name, type, service, status, duration_ms, error,
           error_kind, skip_reason, reused (0/1, added to older files on open),
           data (JSON), attempts (JSON); rowid = report order
    schedule_fires  workflow, schedule (ScheduleSpec.key), fired_at (unix seconds):
           the last tick fired of each schedule (made in older files on open)

A file written before ``rerun_of`` and ``reused`` existed and opened read-only is read
with ``NULL`` and ``0`` in their place.

Added later without a version change (``IF NOT EXISTS`` on every open; a read-only
store of an older file reads no test history): the index ``runs_by_trigger`` and the
test history tables of ``aegis.history.sqlite_tests``.

* **Age.** With ``max_age``, a thread removes runs older than it in batches of
  ``PRUNE_BATCH``, each its own short transaction, oldest first through the
  ``started_at`` index: writers of new runs wait for one batch at most.
"""

from __future__ import annotations

import builtins
import json
import logging
import math
import os
import re
import sqlite3
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, TypeVar

from aegis.history import (
    SHOWN_MATCHES,
    HistoryStore,
    HistoryUnavailable,
    OutcomeList,
    RunList,
    TestList,
    Warn,
    Write,
    matching_run_id,
    sqlite_tests,
)
from aegis.history.memory import PRUNE_BATCH, MemoryHistory
from aegis.history.owners import Owner, current_owner, owner_gone, process_state
from aegis.history.rows import (
    FULL_STEP,
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    full_step,
    run_record,
    summary_step,
)
from aegis.records import (
    Run,
    RunStatus,
    StepResult,
    age_cutoff,
    format_timestamp,
)

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_STALE_AFTER",
    "LOCK_ROUNDS",
    "SCHEMA_VERSION",
    "SqliteHistory",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_BUSY_TIMEOUT = 10.0  # seconds SQLite itself waits for a lock
DEFAULT_HEARTBEAT_INTERVAL = 10.0  # also how often reads look for runs of dead owners
DEFAULT_STALE_AFTER = 120.0  # a heartbeat this old means the owner on another host is gone
LOCK_ROUNDS = 4  # give up on a busy file after this many busy timeouts
CACHE_KIB = 512  # SQLite's page cache per connection

_T = TypeVar("_T")
_pause = time.sleep  # replaced by tests that must know when a busy write will retry
_DB_ERRORS = (sqlite3.Error, OSError)
_DECODE_ERRORS = (ValueError, KeyError, TypeError)
_UNFINISHED = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
_CHUNK = 500  # bound parameters per statement, well under SQLite's oldest limit (999)

_FIRES_TABLE = """CREATE TABLE IF NOT EXISTS schedule_fires (
        workflow TEXT NOT NULL,
        schedule TEXT NOT NULL,
        fired_at REAL NOT NULL,
        PRIMARY KEY (workflow, schedule)
    )"""
# Columns added since the first files were written, with what an older file reads as.
_ADDED_COLUMNS = (
    ("runs", "params", "TEXT NOT NULL DEFAULT '{}'", "'{}'"),
    ("runs", "rerun_of", "TEXT", "NULL"),
    ("steps", "reused", "INTEGER NOT NULL DEFAULT 0", "0"),
)
_SCHEMA = (
    """CREATE TABLE runs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL UNIQUE,
        workflow TEXT NOT NULL,
        status TEXT NOT NULL,
        verdict TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        duration_ms REAL,
        trigger TEXT NOT NULL,
        owner_host TEXT NOT NULL,
        owner_pid INTEGER NOT NULL,
        owner_token TEXT NOT NULL,
        heartbeat_at REAL NOT NULL,
        params TEXT NOT NULL DEFAULT '{}',
        rerun_of TEXT
    )""",
    "CREATE INDEX runs_newest ON runs (started_at DESC, seq DESC)",
    "CREATE INDEX runs_by_workflow ON runs (workflow, started_at DESC, seq DESC)",
    "CREATE INDEX runs_by_status ON runs (status, started_at DESC, seq DESC)",
    "CREATE INDEX runs_by_workflow_status ON runs (workflow, status, started_at DESC, seq DESC)",
    """CREATE TABLE steps (
        run_seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        service TEXT,
        status TEXT NOT NULL,
        duration_ms REAL NOT NULL,
        error TEXT,
        error_kind TEXT,
        skip_reason TEXT,
        reused INTEGER NOT NULL DEFAULT 0,
        data TEXT NOT NULL,
        attempts TEXT NOT NULL
    )""",
    "CREATE INDEX steps_by_run ON steps (run_seq, name)",
    _FIRES_TABLE,
)

_ADDED = (
    "CREATE INDEX IF NOT EXISTS runs_by_trigger ON runs (trigger, started_at DESC, seq DESC)",
)

# the columns read back, in the order aegis.history.rows makes records of them
_RUN_COLUMNS, _SUMMARY_COLUMNS, _STEP_COLUMNS = RUN_COLUMNS, SUMMARY_COLUMNS, FULL_STEP

_INSERT_RUN = (
    "INSERT INTO runs (run_id, workflow, status, verdict, started_at, finished_at,"
    " duration_ms, trigger, params, rerun_of, owner_host, owner_pid, owner_token,"
    " heartbeat_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_RUN = (
    "UPDATE runs SET run_id = ?, workflow = ?, status = ?, verdict = ?, started_at = ?,"
    " finished_at = ?, duration_ms = ?, trigger = ?, params = ?, rerun_of = ?"
    " WHERE seq = ?"
)
_INSERT_STEP = (
    f"INSERT INTO steps (run_seq, {_STEP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_STEP = (
    "UPDATE steps SET name = ?, type = ?, service = ?, status = ?, duration_ms = ?, error = ?,"
    " error_kind = ?, skip_reason = ?, reused = ?, data = ?, attempts = ?"
    " WHERE run_seq = ? AND name = ?"
)
_SEQ_OF = "SELECT seq FROM runs WHERE run_id = ?"
_FIND = f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?"
# LIKE is case-insensitive for ASCII; one row more than the error names tells "and more"
_FIND_PREFIX = (
    f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id LIKE ? ESCAPE '\\'"
    f" ORDER BY run_id LIMIT {SHOWN_MATCHES + 1}"
)
_STEPS_OF = f"SELECT {_STEP_COLUMNS} FROM steps WHERE run_seq = ? ORDER BY rowid"
_PRUNABLE = (
    "SELECT seq FROM runs WHERE workflow = ? AND status NOT IN (?, ?)"
    " ORDER BY started_at DESC, seq DESC LIMIT -1 OFFSET ?"
)
_AGED = (
    "SELECT seq FROM runs WHERE started_at < ? AND status NOT IN (?, ?)"
    " ORDER BY started_at, seq LIMIT ?"
)
_LAST_FIRE = "SELECT fired_at FROM schedule_fires WHERE workflow = ? AND schedule = ?"
# A claim changes a row only for a later tick: its row count says whether it was granted.
_CLAIM_FIRE = (
    "INSERT INTO schedule_fires (workflow, schedule, fired_at) VALUES (?, ?, ?)"
    " ON CONFLICT (workflow, schedule) DO UPDATE SET fired_at = excluded.fired_at"
    " WHERE fired_at < excluded.fired_at"
)
_UNFINISHED_ROWS = (
    "SELECT seq, run_id, owner_host, owner_pid, owner_token, heartbeat_at"
    " FROM runs WHERE status IN (?, ?)"
)
_MARK_INTERRUPTED = (
    "UPDATE runs SET status = 'interrupted', verdict = 'failed', finished_at = ?"
    " WHERE seq = ? AND status IN (?, ?) AND heartbeat_at = ?"
)
# Also undoes a wrong `interrupted` (another host whose clock runs far ahead of ours).
_HEARTBEAT = (
    "UPDATE runs SET heartbeat_at = ?, status = ?, verdict = NULL, finished_at = NULL WHERE seq = ?"
)


# One statement per combination of filters (workflow, status, trigger), so each is
# prepared once and uses its index (trigger has none: it narrows what an index found).
def _where(*used: bool) -> str:
    names = ("workflow = ?", "status = ?", "trigger = ?")
    found = [name for name, on in zip(names, used, strict=True) if on]
    return f" WHERE {' AND '.join(found)}" if found else ""


_BOTH = (False, True)
_WHERE = {(w, s, t): _where(w, s, t) for w in _BOTH for s in _BOTH for t in _BOTH}
# ``before`` (a run id): the rows below it in the listing's order, a keyset the index seeks.
_BELOW = "(started_at, seq) < (SELECT started_at, seq FROM runs WHERE run_id = ?)"


def _list(where: str, below: bool) -> str:
    if below:
        where = f"{where} AND {_BELOW}" if where else f" WHERE {_BELOW}"
    order = " ORDER BY started_at DESC, seq DESC LIMIT ? OFFSET ?"
    return f"SELECT {_RUN_COLUMNS} FROM runs{where}{order}"


_LIST = {(*key, below): _list(where, below) for key, where in _WHERE.items() for below in _BOTH}
_COUNT = {key: f"SELECT count(*) FROM runs{where}" for key, where in _WHERE.items()}
# Changes whenever another connection commits to the file (never for our own commits).
_DATA_VERSION = "PRAGMA data_version"
_MAX_CACHED_PAGES = 64


# ----------------------------------------------------------------------- encoding


def _text(value: str) -> str:
    # SQLite stores UTF-8, which cannot hold lone surrogates; no record is lost for one.
    if value.isascii():
        return value
    return value.encode("utf-8", "replace").decode("utf-8")


def _opt(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _json(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), default=str)
    except (ValueError, RecursionError) as exc:  # circular or absurdly deep data
        return json.dumps({"unstorable": f"{type(exc).__name__}: {exc}"})


def _step_values(step: StepResult) -> tuple[Any, ...]:
    return (
        _text(step.name),
        _text(step.type),
        _opt(step.service),
        step.status.value,
        float(step.duration_ms),
        _opt(step.error),
        _opt(step.error_kind),
        _opt(step.skip_reason),
        int(step.reused),
        _json(step.data),
        _json([a.to_dict() for a in step.attempts]),
    )


def _run_values(run: Run) -> tuple[Any, ...]:
    return (
        _text(run.run_id),
        _text(run.workflow),
        run.status.value,
        run.verdict.value if run.verdict else None,
        _text(run.started_at),
        _opt(run.finished_at),
        run.duration_ms,
        _text(run.trigger),
        _json(run.params),
        _opt(run.rerun_of),
    )


_Kinds = tuple[tuple[type, ...], ...]
_NUMBER = (int, float)
_OPTIONAL_TEXT = (str, type(None))
_OPTIONAL_NUMBER = (int, float, type(None))


def _checked(row: Sequence[Any], names: Sequence[str], kinds: _Kinds) -> None:
    """Raises ``TypeError`` naming the first column of ``row`` whose value is not of its
    kind: a value edited by hand (``duration_ms = 'abc'``, a BLOB id) must cost only its
    own record, not every listing that would show it."""
    for value, name, kind in zip(row, names, kinds, strict=False):  # full steps have more
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"{name} is {type(value).__name__} {value!r:.40}")


_STEP_NAMES = _SUMMARY_COLUMNS.split(", ")
_STEP_KINDS: _Kinds = (
    (str,), (str,), _OPTIONAL_TEXT, (str,), _NUMBER, *[_OPTIONAL_TEXT] * 3, (int,)
)  # fmt: skip
_RUN_NAMES = _RUN_COLUMNS.split(", ")
_RUN_KINDS: _Kinds = (
    (int,),  # seq
    (str,),  # run_id
    (str,),  # workflow
    (str,),  # status
    _OPTIONAL_TEXT,  # verdict
    (str,),  # started_at
    _OPTIONAL_TEXT,  # finished_at
    _OPTIONAL_NUMBER,  # duration_ms
    (str,),  # trigger
    (str,),  # params
    _OPTIONAL_TEXT,  # rerun_of
)


def _summary_step(row: Sequence[Any]) -> StepResult:
    _checked(row, _STEP_NAMES, _STEP_KINDS)
    return summary_step(row)


def _full_step(row: Sequence[Any]) -> StepResult:
    _checked(row, _STEP_NAMES, _STEP_KINDS)
    return full_step(row)


def _run(row: Sequence[Any], steps: Iterable[StepResult]) -> Run:
    _checked(row, _RUN_NAMES, _RUN_KINDS)
    return run_record(row, steps)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _rollback(db: sqlite3.Connection) -> None:
    # Keeps the error that made the transaction fail, not one from cleaning up after it.
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _chunks(items: Sequence[_T]) -> Iterable[Sequence[_T]]:
    return (items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK))


# -------------------------------------------------------------------------- store


@dataclass
class _Live:
    """A run this store started and has not finished: what the heartbeat and the
    memory fallback need to know of it."""

    seq: int
    run: Run
    steps: dict[str, StepResult]


class SqliteHistory(HistoryStore):
    """Runs in the SQLite file at ``path``, shared safely with other processes.

    Raises ``HistoryUnavailable`` if the file cannot be opened, created or written. Once
    open it never raises because of the file: when a write or read fails it warns once
    and keeps the rest of this process's history in memory (``get`` still looks in the
    file for older runs if it can).

    ``clock`` (unix seconds), ``owner``, ``probe`` and the intervals are for tests.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_runs: int = 0,
        max_age: float = 0.0,
        warn: Warn | None = None,
        busy_timeout: float | None = None,
        heartbeat_interval: float | None = None,
        stale_after: float | None = None,
        clock: Callable[[], float] = time.time,
        owner: Owner | None = None,
        probe: Callable[[int], str | None] = process_state,
        read_only: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.read_only = read_only
        self.max_runs = max_runs
        self.max_age = max_age
        self._warn = warn
        self._busy_timeout = DEFAULT_BUSY_TIMEOUT if busy_timeout is None else busy_timeout
        self._interval = heartbeat_interval or DEFAULT_HEARTBEAT_INTERVAL
        self._stale_after = DEFAULT_STALE_AFTER if stale_after is None else stale_after
        self._clock = clock
        self._owner = owner or current_owner()
        self._probe = probe
        self._lock = threading.RLock()
        self._live: dict[str, _Live] = {}
        self._memory: MemoryHistory | None = None
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None
        self._pruner: threading.Thread | None = None
        self._old_columns: dict[str, str] = {}  # an older file read-only: column -> literal
        self._last_sweep = -math.inf
        self._warned: set[str] = set()
        # Pages and counts read since the file last changed (see _cached).
        self._pages: dict[tuple[Any, ...], Any] = {}
        self._pages_version: tuple[int, int] = (-1, -1)
        self._own_writes = 0
        self._identity: tuple[int, int] = (-1, -1)  # (device, inode) of the file opened
        self._has_tests = True
        if read_only:
            self._db = self._open_read_only()
            return
        self._db = self._connect()
        try:
            self._prepare()
            self._sweep()
        except BaseException as exc:
            self._db.close()
            if isinstance(exc, _DB_ERRORS):
                raise HistoryUnavailable(self.path, self._open_reason(exc)) from exc
            raise
        if max_age > 0:
            self._pruner = threading.Thread(
                target=self._prune_in_background, name="aegis-history-pruner", daemon=True
            )
            self._pruner.start()

    @property
    def degraded(self) -> bool:
        """Whether the file failed and this store now keeps history in memory."""
        return self._memory is not None

    # ------------------------------------------------------------- the protocol

    def start(self, run: Run) -> None:
        self.write_all([Write("start", (run,))])

    def update_step(self, run_id: str, step: StepResult) -> None:
        self.write_all([Write("update_step", (run_id, step))])

    def finish(self, run: Run) -> None:
        self.write_all([Write("finish", (run,))])

    def write_all(self, writes: Sequence[Write]) -> None:
        """Apply ``writes`` in order in one transaction (pruning once per workflow)."""
        with self._lock:
            memory = self._memory
            if memory is None:
                memory = self._check_file()
            if memory is None:
                try:
                    self._transaction(self._save_all, writes)
                    if any(write.method == "start" for write in writes):
                        self._ensure_heartbeat()
                    return
                except _DB_ERRORS as exc:
                    memory = self._fall_back("write", exc)
            memory.write_all(writes)

    def _write(
        self, action: Callable[..., object], *args: Any, fallback: Callable[[MemoryHistory], None]
    ) -> None:
        """One write other than a run's (pruning, a schedule's claim), in a transaction;
        ``fallback`` does it in memory once the file has failed."""
        with self._lock:
            memory = self._memory
            if memory is None:
                memory = self._check_file()
            if memory is None:
                try:
                    self._transaction(action, *args)
                    return
                except _DB_ERRORS as exc:
                    memory = self._fall_back("write", exc)
            fallback(memory)

    def get(self, run_id: str) -> Run | None:
        return self._read(self._find, run_id, fallback=lambda m: self._get_after_failure(m, run_id))

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
        page = self._cached(
            ("list", workflow, status, limit, offset, trigger, before),
            lambda: self._read(
                self._page,
                workflow,
                status,
                limit,
                offset,
                trigger,
                before,
                fallback=lambda m: m.list(
                    workflow, status, limit, offset, trigger=trigger, before=before
                ),
            ),
        )
        return builtins.list(page)  # the cached list stays the store's own

    def count(
        self, workflow: str | None = None, status: str | None = None, *, trigger: str | None = None
    ) -> int:
        return self._cached(
            ("count", workflow, status, trigger),
            lambda: self._read(
                self._count,
                workflow,
                status,
                trigger,
                fallback=lambda m: m.count(workflow, status, trigger=trigger),
            ),
        )

    def tests(
        self, workflow: str | None = None, *, flaky: bool = False, limit: int = 50
    ) -> TestList:
        return self._cached(
            ("tests", workflow, flaky, limit),
            lambda: self._test_read(
                sqlite_tests.tests,
                workflow,
                flaky,
                limit,
                fallback=lambda m: m.tests(workflow, flaky=flaky, limit=limit),
            ),
        )

    def test(self, test_id: str) -> TestList:
        return self._test_read(
            sqlite_tests.test_records, test_id, fallback=lambda m: m.test(test_id)
        )

    def test_outcomes(self, test_id: str, limit: int = 50) -> OutcomeList:
        return self._test_read(
            sqlite_tests.outcomes,
            test_id,
            limit,
            fallback=lambda m: m.test_outcomes(test_id, limit),
        )

    def failing_counts(self, run_ids: Sequence[str]) -> dict[str, int]:
        return self._test_read(
            sqlite_tests.failing_counts,
            builtins.list(run_ids),
            fallback=lambda m: m.failing_counts(run_ids),
        )

    def _test_read(
        self, query: Callable[..., _T], *args: Any, fallback: Callable[[MemoryHistory], _T]
    ) -> _T:
        """A test history read; a file opened read-only from before test history has
        none, and reads as empty (from a memory store)."""
        if not self._has_tests:
            return fallback(MemoryHistory())
        return self._read(query, *args, fallback=fallback)

    def _cached(self, key: tuple[Any, ...], read: Callable[[], _T]) -> _T:
        """``read()``, or what it gave last time if the file has not changed since.

        The landing page polls the same page of history over and over; a page costs
        hundreds of microseconds to read and decode, checking for a change a few.
        ``PRAGMA data_version`` changes when another connection (another process)
        commits; this store's own writes count in ``_own_writes``.
        """
        with self._lock:
            if self._memory is not None:
                return read()
            try:
                self._sweep_if_due()
                version = (self._own_writes, self._db.execute(_DATA_VERSION).fetchone()[0])
            except _DB_ERRORS:
                return read()  # reading falls back to memory and says why
            if version != self._pages_version or len(self._pages) >= _MAX_CACHED_PAGES:
                self._pages.clear()
                self._pages_version = version
            elif key in self._pages:
                found: _T = self._pages[key]
                return found
            value = read()
            if self._memory is None and self._own_writes == version[0]:
                self._pages[key] = value
            return value

    def prune_aged(self, limit: int) -> int:
        if self.max_age <= 0 or self.read_only:
            return 0
        cutoff = age_cutoff(self._clock(), self.max_age)
        removed: builtins.list[int] = []

        def fallback(memory: MemoryHistory) -> None:
            removed.append(memory.prune_aged(limit))

        self._write(self._save_pruned, cutoff, limit, removed, fallback=fallback)
        return sum(removed)

    def _prune_in_background(self) -> None:
        """Every so often, prune by age a batch at a time until nothing is left to prune."""
        interval = min(max(self.max_age / 4, 0.05), 60.0)
        while not self._stop.wait(interval):
            while self.prune_aged(PRUNE_BATCH) == PRUNE_BATCH and not self._stop.is_set():
                pass

    def last_fire(self, workflow: str, schedule: str) -> float | None:
        def fallback(memory: MemoryHistory) -> float | None:
            return memory.last_fire(workflow, schedule)

        return self._read(self._fired, workflow, schedule, fallback=fallback)

    def claim_fire(self, workflow: str, schedule: str, at: float) -> bool:
        values = (_text(workflow), _text(schedule), at)
        granted: builtins.list[bool] = []

        def claim(db: sqlite3.Connection) -> None:
            granted.append(db.execute(_CLAIM_FIRE, values).rowcount > 0)

        def fallback(memory: MemoryHistory) -> None:
            granted.append(memory.claim_fire(workflow, schedule, at))

        self._write(claim, fallback=fallback)
        return all(granted)

    def close(self) -> None:
        if self._pruner is not None and not self._stop.is_set():
            # a short-lived process (`aegis run`) ends before the first round: prune one
            # batch as it goes, after its run is recorded
            self.prune_aged(PRUNE_BATCH)
        self._stop.set()
        if self._beater is not None:
            self._beater.join()
        if self._pruner is not None:
            self._pruner.join()
        with self._lock:
            self._db.close()

    # ----------------------------------------------------------- owners alive

    def heartbeat(self) -> None:
        """Refresh ``heartbeat_at`` of this store's runs still going, and look for runs of
        dead owners if it is time. The heartbeat thread calls this every interval."""
        with self._lock:
            if self._memory is not None:
                return
            try:
                live = builtins.list(self._live.values())
                if live:
                    self._transaction(self._save_heartbeat, live, self._clock())
                self._sweep_if_due()
            except _DB_ERRORS as exc:
                self._fall_back("write", exc)

    def mark_interrupted(self) -> builtins.list[str]:
        """Mark ``interrupted`` every unfinished run whose owner is gone; their ids come back.

        Opening a store does this, and reads repeat it at most once per heartbeat interval.
        """
        with self._lock:
            if self._memory is not None:
                return []
            try:
                return self._sweep()
            except _DB_ERRORS as exc:
                self._fall_back("write", exc)
                return []

    def _ensure_heartbeat(self) -> None:
        if self._beater is None and not self._stop.is_set():
            self._beater = threading.Thread(
                target=self._beat, name="aegis-history-heartbeat", daemon=True
            )
            self._beater.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            self.heartbeat()

    def _sweep_if_due(self) -> None:
        if self._clock() - self._last_sweep >= self._interval:
            self._sweep()

    def _sweep(self) -> builtins.list[str]:
        now = self._clock()
        self._last_sweep = now
        if self.read_only:
            return []
        rows = self._retrying(self._unfinished_rows)
        gone = [row for row in rows if self._owner_gone(row, now)]
        if not gone:
            return []
        finished_at = format_timestamp(datetime.fromtimestamp(now, timezone.utc))
        return self._transaction(self._save_interrupted, gone, finished_at)

    def _unfinished_rows(self) -> builtins.list[Any]:
        return self._db.execute(_UNFINISHED_ROWS, _UNFINISHED).fetchall()

    def _owner_gone(self, row: Sequence[Any], now: float) -> bool:
        _, _, host, pid, token, heartbeat_at = row
        return owner_gone(
            Owner(host, pid, token),
            heartbeat_at,
            me=self._owner,
            now=now,
            stale_after=self._stale_after,
            probe=self._probe,
        )

    # ------------------------------------------------------- guarded access

    def _read(
        self, query: Callable[..., _T], *args: Any, fallback: Callable[[MemoryHistory], _T]
    ) -> _T:
        with self._lock:
            memory = self._memory
            if memory is None:
                try:
                    self._sweep_if_due()
                    return self._transaction(query, *args, begin="BEGIN")
                except _DB_ERRORS as exc:
                    memory = self._fall_back("read", exc)
            return fallback(memory)

    def _get_after_failure(self, memory: MemoryHistory, run_id: str) -> Run | None:
        found = memory.get(run_id)
        if found is not None:
            return found
        try:  # older runs may still be readable where writing failed (a full disk)
            return self._transaction(self._find, run_id, begin="BEGIN")
        except _DB_ERRORS:
            return None

    def _fall_back(self, doing: str, exc: BaseException) -> MemoryHistory:
        """Move to memory for good, carrying over the runs still going; warn once."""
        message = (
            f"history: cannot {doing} {self.path} ({_reason(exc)}); "
            "keeping the rest of this process's history in memory"
        )
        log.debug("%s", message, exc_info=exc)  # the traceback, for AEGIS_DEBUG; warn says it
        return self._to_memory(doing, message)

    def _to_memory(self, kind: str, message: str) -> MemoryHistory:
        """Move to memory for good with ``message`` (once per ``kind``), taking the runs
        still going along; the heartbeat stops."""
        self._warn_once(kind, message)
        memory = MemoryHistory(max_runs=self.max_runs, warn=self._warn)
        for live in self._live.values():
            memory.start(replace(live.run, steps=tuple(live.steps.values())))
        self._live.clear()
        self._memory = memory
        self._stop.set()
        return memory

    def _check_file(self) -> MemoryHistory | None:
        """Notice that the file at ``path`` is no longer the one this store opened
        (deleted, or replaced by another file or a directory): SQLite would go on writing
        to the old one, unseen by anyone. Opens what is there now (creating the file),
        with the runs still going, and says so; memory if that cannot be done."""
        changed = None if self.read_only else self._file_changed()
        if changed is None:
            return None
        live = builtins.list(self._live.values())
        self._db.close()
        try:
            self._db = self._connect()
            self._prepare()
            self._pages.clear()
            self._live = {}  # their rows (and seqs) were in the old file
            for one in live:
                run = replace(one.run, steps=tuple(one.steps.values()))
                self._transaction(self._save_start, run)
        except (HistoryUnavailable, *_DB_ERRORS) as exc:
            self._live = {one.run.run_id: one for one in live}  # memory takes them over
            reason = exc.reason if isinstance(exc, HistoryUnavailable) else _reason(exc)
            return self._to_memory(
                "moved",
                f"history: {self.path} {changed} while in use and cannot be opened again "
                f"({reason}); keeping the rest of this process's history in memory",
            )
        self._warn_once(
            "moved",
            f"history: {self.path} {changed} while in use; the runs going and those after "
            "them are recorded in a new file there, the earlier ones are not",
        )
        return None

    def _file_changed(self) -> str | None:
        """How the file at ``path`` differs from the one opened, or None if it is it."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return "was deleted"
        except OSError:
            return None  # cannot tell: SQLite will say so if writing fails
        if not stat.S_ISREG(now.st_mode):
            return "was replaced by something that is not a file"
        if (now.st_dev, now.st_ino) != self._identity:
            return "was replaced by another file"
        return None

    def _retrying(self, action: Callable[[], _T], rounds: int = LOCK_ROUNDS) -> _T:
        """``action()``, tried again while the file stays busy, up to ``rounds`` busy
        timeouts in all: waiting costs a little time, giving up costs a record."""
        give_up = time.monotonic() + rounds * self._busy_timeout
        pause = 0.001
        while True:
            try:
                return action()
            except sqlite3.Error as exc:
                if not _is_busy(exc) or time.monotonic() >= give_up:
                    raise
            _pause(pause)  # some busy answers come at once, without SQLite waiting
            pause = min(pause * 2, 0.25)

    def _transaction(
        self, action: Callable[..., _T], *args: Any, begin: str = "BEGIN IMMEDIATE"
    ) -> _T:
        return self._retrying(lambda: self._once(begin, action, *args))

    def _once(self, begin: str, action: Callable[..., _T], *args: Any) -> _T:
        db = self._db
        if begin != "BEGIN":  # a write: pages read before it are stale
            self._own_writes += 1
        db.execute(begin)
        try:
            result = action(db, *args)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        return result

    # ----------------------------------------------------------- opening

    def _connect(self) -> sqlite3.Connection:
        directory = os.path.dirname(self.path)
        try:
            if directory:
                os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            why = "a file is in the way" if isinstance(exc, FileExistsError) else _reason(exc)
            raise HistoryUnavailable(
                self.path, f"cannot create directory {directory}: {why}"
            ) from exc
        try:
            return sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # transactions are begun explicitly, never implicitly
                check_same_thread=False,  # the API's threads share it, under self._lock
            )
        except (sqlite3.Error, ValueError) as exc:  # ValueError: a NUL in the path
            raise HistoryUnavailable(self.path, self._open_reason(exc)) from exc

    def _open_read_only(self) -> sqlite3.Connection:
        """A connection that never writes, its schema checked; else ``HistoryUnavailable``.

        A WAL file is read through its ``-shm`` index, which SQLite must be able to create
        when it is missing; where it cannot (a directory this process may not write), the
        file is read as it stands on disk (``immutable``), which is what others last
        checkpointed into it.
        """
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
        failure: BaseException | None = None
        for options in ("", "&immutable=1"):
            try:
                db = sqlite3.connect(
                    uri + options,
                    uri=True,
                    timeout=self._busy_timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
            except (sqlite3.Error, ValueError) as exc:
                failure = exc
                continue
            try:
                self._db = db
                self._retrying(lambda: self._once("BEGIN", self._check_schema), rounds=1)
                return db
            except HistoryUnavailable:
                db.close()
                raise
            except sqlite3.Error as exc:
                db.close()
                failure = exc
        assert failure is not None
        raise HistoryUnavailable(self.path, self._open_reason(failure)) from failure

    def _check_schema(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HistoryUnavailable(self.path, self._newer(version))
        if version < SCHEMA_VERSION:
            raise HistoryUnavailable(self.path, "not an aegis history file (no runs table)")
        for table, column, _, literal in _ADDED_COLUMNS:
            if column not in _columns(db, table):
                self._old_columns[column] = literal
        tables = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'test_runs'"
        self._has_tests = db.execute(tables).fetchone() is not None

    @staticmethod
    def _newer(version: int) -> str:
        return (
            f"written by a newer aegis: schema version {version}, "
            f"this one reads up to {SCHEMA_VERSION}"
        )

    def _open_reason(self, exc: BaseException) -> str:
        """SQLite's reason, made specific where it is vague about which file is at fault."""
        reason = _reason(exc)
        if isinstance(exc, sqlite3.Error) and _is_busy(exc):
            return f"{reason}: another process has held it for over {self._busy_timeout:g} s"
        if reason != "unable to open database file":
            return reason
        if os.path.isdir(self.path):
            return f"{reason}: it is a directory"
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.access(directory, os.W_OK):
            return f"{reason}: directory {directory} is not writable"
        return reason

    def _prepare(self) -> None:
        """Configure the new connection and make (or check) the schema; note the file."""
        self._retrying(self._configure, rounds=1)
        self._retrying(lambda: self._once("BEGIN IMMEDIATE", self._migrate), rounds=1)
        found = os.stat(self.path)
        self._identity = (found.st_dev, found.st_ino)

    def _configure(self) -> None:
        self._db.execute("PRAGMA journal_mode = WAL")
        # With WAL, NORMAL loses no commit when a process dies; only an OS crash may
        # lose the last ones, and it saves an fsync per step.
        self._db.execute("PRAGMA synchronous = NORMAL")
        # A page of history touches a few index pages and the newest rows; SQLite's 2 MiB
        # default cache only grew a long-running server's memory (the OS caches the file).
        self._db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            # SQLite opens a read-only file without complaint and fails only at the first
            # write; this write (of the same value) finds that out now, not mid-run.
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            for table, column, definition, _ in _ADDED_COLUMNS:  # a file from before them
                if column not in _columns(db, table):
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            db.execute(_FIRES_TABLE)
            self._migrate_added(db)
            return
        if version > SCHEMA_VERSION:
            raise HistoryUnavailable(self.path, self._newer(version))
        if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise HistoryUnavailable(self.path, "not an aegis history file: it holds other tables")
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")  # PRAGMA takes no parameters
        self._migrate_added(db)

    @staticmethod
    def _migrate_added(db: sqlite3.Connection) -> None:
        """What later versions added (the trigger index, the test history tables),
        added to a file made before them; older versions of aegis ignore them."""
        for statement in (*_ADDED, *sqlite_tests.SCHEMA):
            db.execute(statement)

    # ---------------------------------------------------------------- writes

    def _seq_of(self, db: sqlite3.Connection, run_id: str) -> int | None:
        live = self._live.get(run_id)
        if live is not None:
            return live.seq
        row = db.execute(_SEQ_OF, (_text(run_id),)).fetchone()
        return None if row is None else int(row[0])

    def _save_run(self, db: sqlite3.Connection, run: Run) -> int:
        """Insert or overwrite the run row and its steps; its seq comes back."""
        seq = self._seq_of(db, run.run_id)
        if seq is not None:
            db.execute("DELETE FROM steps WHERE run_seq = ?", (seq,))
            if not db.execute(_UPDATE_RUN, (*_run_values(run), seq)).rowcount:
                seq = None  # another process pruned it while it ran: record it afresh
        if seq is None:
            owner = self._owner
            values = (*_run_values(run), owner.host, owner.pid, owner.token, self._clock())
            seq = int(db.execute(_INSERT_RUN, values).lastrowid or 0)
        db.executemany(_INSERT_STEP, ((seq, *_step_values(s)) for s in run.steps))
        return seq

    def _save_start(self, db: sqlite3.Connection, run: Run) -> None:
        seq = self._save_run(db, run)
        self._live[run.run_id] = _Live(seq, run, {s.name: s for s in run.steps})

    def _save_step(self, db: sqlite3.Connection, run_id: str, step: StepResult) -> None:
        seq = self._seq_of(db, run_id)
        if seq is None:
            return
        values = _step_values(step)
        if db.execute(_UPDATE_STEP, (*values, seq, values[0])).rowcount == 0:
            db.execute(_INSERT_STEP, (seq, *values))
        live = self._live.get(run_id)
        if live is not None:
            live.steps[step.name] = step

    def _save_finish(self, db: sqlite3.Connection, run: Run) -> None:
        self._save_run(db, run)
        self._live.pop(run.run_id, None)
        if run.status.finished:
            sqlite_tests.record(db, run, _text)

    def _save_all(self, db: sqlite3.Connection, writes: Sequence[Write]) -> None:
        finished: builtins.list[Run] = []  # consecutive finishes, saved together
        workflows = set()
        for write in writes:
            if write.method == "finish":
                finished.append(write.args[0])
                workflows.add(write.args[0].workflow)
                continue
            self._save_finishes(db, finished)
            finished = []
            if write.method == "start":
                self._save_start(db, *write.args)
            else:
                self._save_step(db, *write.args)
        self._save_finishes(db, finished)
        if self.max_runs > 0:
            for workflow in sorted(workflows):
                self._prune(db, workflow)

    def _save_finishes(self, db: sqlite3.Connection, runs: Sequence[Run]) -> None:
        """Finish ``runs``; those this store started (their rows known) in a few
        statements: 100,000 runs cancelled at shutdown take seconds, not minutes."""
        known = [run for run in runs if run.run_id in self._live]
        if len(set(run.run_id for run in known)) != len(known):
            known = []  # a run finished twice in one batch: in order, one by one
        seqs = [(self._live[run.run_id].seq,) for run in known]
        db.executemany("DELETE FROM steps WHERE run_seq = ?", seqs)
        updated = db.executemany(
            _UPDATE_RUN, ((*_run_values(run), seq) for run, (seq,) in zip(known, seqs, strict=True))
        ).rowcount
        if updated == len(known):
            values: dict[int, tuple[Any, ...]] = {}  # runs cancelled together share steps

            def step_values(step: StepResult) -> tuple[Any, ...]:
                found = values.get(id(step))
                if found is None:
                    found = values[id(step)] = _step_values(step)
                return found

            db.executemany(
                _INSERT_STEP,
                (
                    (seq, *step_values(step))
                    for run, (seq,) in zip(known, seqs, strict=True)
                    for step in run.steps
                ),
            )
            for run in known:
                del self._live[run.run_id]
                if run.status.finished:
                    sqlite_tests.record(db, run, _text)
        else:  # rows pruned by another process meanwhile: each is saved on its own
            known = []
        done = {run.run_id for run in known}
        for run in runs:
            if run.run_id not in done:
                self._save_finish(db, run)

    def _prune(self, db: sqlite3.Connection, workflow: str) -> None:
        params = (_text(workflow), *_UNFINISHED, self.max_runs)
        doomed = db.execute(_PRUNABLE, params).fetchall()
        sqlite_tests.forget(db, doomed)
        db.executemany("DELETE FROM steps WHERE run_seq = ?", doomed)
        db.executemany("DELETE FROM runs WHERE seq = ?", doomed)

    def _save_pruned(
        self, db: sqlite3.Connection, cutoff: str, limit: int, removed: builtins.list[int]
    ) -> None:
        doomed = db.execute(_AGED, (cutoff, *_UNFINISHED, limit)).fetchall()
        sqlite_tests.forget(db, doomed)
        db.executemany("DELETE FROM steps WHERE run_seq = ?", doomed)
        db.executemany("DELETE FROM runs WHERE seq = ?", doomed)
        removed.append(len(doomed))

    def _save_heartbeat(self, db: sqlite3.Connection, live: Sequence[_Live], now: float) -> None:
        db.executemany(_HEARTBEAT, ((now, one.run.status.value, one.seq) for one in live))

    def _save_interrupted(
        self, db: sqlite3.Connection, rows: Sequence[Sequence[Any]], finished_at: str
    ) -> builtins.list[str]:
        marked = []
        for seq, run_id, *_, heartbeat_at in rows:
            params = (finished_at, seq, *_UNFINISHED, heartbeat_at)
            if db.execute(_MARK_INTERRUPTED, params).rowcount:
                marked.append(run_id)
        return marked

    # ----------------------------------------------------------------- reads

    def _fired(self, db: sqlite3.Connection, workflow: str, schedule: str) -> float | None:
        if "reused" in self._old_columns:  # an older file, read-only: no ticks in it
            return None
        row = db.execute(_LAST_FIRE, (_text(workflow), _text(schedule))).fetchone()
        return None if row is None else float(row[0])

    def _sql(self, sql: str) -> str:
        """``sql`` for this file: an older one read-only has literals for newer columns."""
        for column, literal in self._old_columns.items():
            sql = sql.replace(f", {column}", f", {literal}")
        return sql

    def _find(self, db: sqlite3.Connection, run_id: str) -> Run | None:
        run_id = _text(run_id)
        row = db.execute(self._sql(_FIND), (run_id,)).fetchone()
        if row is None:
            pattern = re.sub(r"([\\%_])", r"\\\1", run_id) + "%"
            found_rows = db.execute(self._sql(_FIND_PREFIX), (pattern,))
            rows = {r[1]: r for r in found_rows if isinstance(r[1], str)}
            found = matching_run_id(run_id, rows)
            if found is None:
                return None
            row = rows[found]
        steps = db.execute(self._sql(_STEPS_OF), (row[0],))
        return self._decoded(_run, row, map(_full_step, steps))

    def _page(
        self,
        db: sqlite3.Connection,
        workflow: str | None,
        status: str | None,
        limit: int,
        offset: int,
        trigger: str | None = None,
        before: str | None = None,
    ) -> RunList:
        filters = self._filters(workflow, status, trigger)
        if before is not None:
            filters = (*filters, _text(before))
        used = (workflow is not None, status is not None, trigger is not None, before is not None)
        sql = self._sql(_LIST[used])
        rows = db.execute(sql, (*filters, limit, offset)).fetchall()
        steps = self._summaries(db, [row[0] for row in rows])
        runs = (self._decoded(_run, row, steps.get(row[0], ())) for row in rows)
        return [run for run in runs if run is not None]

    def _summaries(
        self, db: sqlite3.Connection, seqs: Sequence[int]
    ) -> dict[int, builtins.list[StepResult]]:
        """The summary steps of runs ``seqs``, by run, in report order."""
        steps: dict[int, builtins.list[StepResult]] = {}
        for chunk in _chunks(seqs):
            marks = ", ".join("?" * len(chunk))
            sql = self._sql(
                f"SELECT run_seq, {_SUMMARY_COLUMNS} FROM steps WHERE run_seq IN ({marks})"
            )
            for row in db.execute(f"{sql} ORDER BY rowid", chunk):
                step = self._decoded(_summary_step, row[1:])
                if step is not None:
                    steps.setdefault(row[0], []).append(step)
        return steps

    def _count(
        self,
        db: sqlite3.Connection,
        workflow: str | None,
        status: str | None,
        trigger: str | None = None,
    ) -> int:
        filters = self._filters(workflow, status, trigger)
        sql = _COUNT[workflow is not None, status is not None, trigger is not None]
        return int(db.execute(sql, filters).fetchone()[0])

    @staticmethod
    def _filters(
        workflow: str | None, status: str | None, trigger: str | None = None
    ) -> tuple[str, ...]:
        found = [] if workflow is None else [_text(workflow)]
        if status is not None:
            found.append(_text(status.value if isinstance(status, RunStatus) else status))
        if trigger is not None:
            found.append(_text(trigger))
        return tuple(found)

    def _decoded(self, build: Callable[..., _T], *args: Any) -> _T | None:
        """``build(*args)``, or None for a record this version cannot read (edited by hand)."""
        try:
            return build(*args)
        except _DECODE_ERRORS as exc:
            log.debug("history: skipping a damaged record in %s", self.path, exc_info=exc)
            self._warn_once("damaged", f"history: skipping damaged records in {self.path} ({exc})")
            return None

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned and self._warn is not None:
            self._warned.add(kind)
            self._warn(message)
