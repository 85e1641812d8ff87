"""Run history: every run recorded as it starts, as each step ends, and when it finishes.

    HistoryStore          the interface the engine, the CLI and the API use
    ├── MemoryHistory     a dict in this process (``path: ":memory:"``, and the fallback)
    ├── SqliteHistory     one SQLite file that several processes share
    ├── PostgresHistory   one PostgreSQL database that processes on many hosts share
    ├── DeferredHistory   a store opened on first use (``aegis serve``, ``aegis run``)
    └── BackgroundWrites  a store whose writes a thread of its own makes, in order

No store call runs on an event loop: a file store may wait for another process's lock,
so ``open_recording_history`` (what ``aegis run`` and ``aegis serve`` record through)
hands every write to ``BackgroundWrites``' thread, which applies what has queued up as
one batch (``write_all``), keeping each run's order of writes.

``open_history`` picks the store for a ``history:`` config section (``url`` before
``path``). It never raises: a file or database that cannot be used gives one warning and a
``MemoryHistory``, because history must never fail a run. The stores import nothing heavy
until they are opened (``sqlite3`` is loaded only when a file is, the pg8000 driver only
when a ``postgresql://`` URL is), so CLI commands that keep no history do not pay for it.

Run ids may be shortened and typed in any case: ``get`` accepts any prefix that matches
one run (an id matching exactly wins), and raises ``NotFound`` listing the matches when a
prefix matches several.

Each store also keeps the test history (``aegis.history.test_history``): a summary per
test id, updated by ``finish``, that ``tests``, ``test``, ``test_outcomes`` and
``failing_counts`` read without touching step data.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from aegis.errors import AegisError, NotFound

if TYPE_CHECKING:
    from aegis.config.model import HistorySpec
    from aegis.history.test_history import TestOutcome, TestRecord
    from aegis.records import Run, StepResult

__all__ = [
    "SHOWN_MATCHES",
    "HistoryStore",
    "HistoryUnavailable",
    "OutcomeList",
    "RunList",
    "TestList",
    "Warn",
    "Write",
    "ambiguous_prefix",
    "matching_run_id",
    "open_history",
    "open_recording_history",
]

log = logging.getLogger(__name__)

Warn = Callable[[str], None]
# `list` is a method name below, so the builtin is spelled through an alias in signatures.
RunList = list["Run"]
TestList = list["TestRecord"]
OutcomeList = list["TestOutcome"]

# How many runs the error for an ambiguous prefix names.
SHOWN_MATCHES = 10

MEMORY_PATH = ":memory:"


class HistoryUnavailable(AegisError):
    """A history file cannot be used. The message names the path and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"history: cannot write {path} ({reason})")
        self.path = path
        self.reason = reason


class Write(NamedTuple):
    """One recording call, queued: ``start`` and ``finish`` take a ``Run``,
    ``update_step`` a run id and a ``StepResult``."""

    method: Literal["start", "update_step", "finish"]
    args: tuple[Any, ...]

    @property
    def run_id(self) -> str:
        first = self.args[0]
        return first if isinstance(first, str) else str(first.run_id)


def ambiguous_prefix(prefix: str, matches: list[str]) -> NotFound:
    """The error for a run id prefix that matches several runs (``matches``: two or more).

    Names the first ``SHOWN_MATCHES``; more than that in ``matches`` adds "and more".
    """
    shown = ", ".join(matches[:SHOWN_MATCHES])
    more = " and more" if len(matches) > SHOWN_MATCHES else ""
    return NotFound(
        f"run id '{prefix}' is ambiguous: it matches {shown}{more}; give more characters"
    )


def matching_run_id(run_id: str, candidates: Iterable[str]) -> str | None:
    """The id among ``candidates`` that ``run_id`` names: equal to it or, failing that,
    the only one it is a prefix of, in any case. ``None`` when none is.

    Raises ``NotFound`` (``ambiguous_prefix``) when it is a prefix of several.
    """
    if not run_id:
        return None
    wanted = run_id.lower()
    matches = sorted(c for c in candidates if c.lower().startswith(wanted))
    for candidate in matches:
        if candidate.lower() == wanted:
            return candidate
    if len(matches) > 1:
        raise ambiguous_prefix(run_id, matches)
    return matches[0] if matches else None


class HistoryStore(abc.ABC):
    """Where runs are recorded. Every method is synchronous and thread-safe; a file store's
    may wait for another process's lock, so no event loop calls them directly (see
    ``BackgroundWrites``).

    Stores never raise because their storage failed: they warn (at most once per kind
    of problem) through the ``warn`` callable given to them and carry on in memory.
    """

    @abc.abstractmethod
    def start(self, run: Run) -> None:
        """Record ``run`` as it starts (status ``running``), before any step ends.

        The API records a run it accepts as ``queued`` first, through ``start`` too. A
        later ``start`` of the same ``run_id`` updates that record in place: it keeps its
        order of recording (the tie-break in ``list``) and, in a shared file, its owner.
        In a shared file, unfinished runs (``queued`` ones included) whose owner is gone
        are marked ``interrupted`` by the next store that opens it.
        """

    @abc.abstractmethod
    def update_step(self, run_id: str, step: StepResult) -> None:
        """Record one ended step; a later result with the same step name replaces it.

        A step of a run this store does not know is ignored.
        """

    @abc.abstractmethod
    def finish(self, run: Run) -> None:
        """Record the final state of ``run`` (all its steps), then prune to ``max_runs``.

        Pruning keeps the newest ``max_runs`` finished runs of the run's workflow (by
        ``started_at``); runs still going are neither counted nor removed. Runs older
        than ``max_age`` are removed in bounded batches (``prune_aged``), never by a scan
        of the whole history on a run's path.
        """

    def write_all(self, writes: Sequence[Write]) -> None:
        """Apply ``writes`` in order; a store that can makes them one transaction."""
        for write in writes:
            getattr(self, write.method)(*write.args)

    @abc.abstractmethod
    def get(self, run_id: str) -> Run | None:
        """The full run ``run_id`` (or the one run its prefix names), else ``None``.

        Raises ``NotFound`` when ``run_id`` is a prefix shared by several runs.
        """

    @abc.abstractmethod
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
        """Runs newest first (by ``started_at``, then order of recording), filtered.

        With ``before`` (a run id, exact), only runs older than that run in this order:
        the next page after a page ending with it, without ``offset`` (which a database
        must walk); none if no such run is stored.
        Steps may come without ``data`` and ``attempts`` (the summary level of the run JSON).
        A negative ``limit`` or ``offset`` counts as 0.
        """

    @abc.abstractmethod
    def count(
        self, workflow: str | None = None, status: str | None = None, *, trigger: str | None = None
    ) -> int:
        """How many runs ``list`` would return without a limit."""

    def prune_aged(self, limit: int) -> int:
        """Remove up to ``limit`` finished runs older than the store's ``max_age`` (the
        oldest first, with their steps); returns how many went. Stores that keep no age
        limit remove nothing."""
        return 0

    def last_fire(self, workflow: str, schedule: str) -> float | None:
        """When (unix seconds) ``schedule`` of ``workflow`` last fired, if this store
        knows; ``schedule`` is a ``ScheduleSpec.key``."""
        return None

    def claim_fire(self, workflow: str, schedule: str, at: float) -> bool:
        """Claim the tick at ``at`` of ``schedule`` of ``workflow`` for this process:
        true (and ``at`` kept as its last fire) unless that tick, or a later one, was
        claimed already, by any process sharing the store. Stores that keep no ticks
        grant every claim."""
        return True

    # Test history (aegis/history/test_history.py): filled by ``finish``, read without
    # touching step data.

    @abc.abstractmethod
    def tests(
        self, workflow: str | None = None, *, flaky: bool = False, limit: int = 50
    ) -> TestList:
        """Test summaries: with ``flaky``, only tests that flipped, most flaky first;
        else every test, most failures first."""

    @abc.abstractmethod
    def test(self, test_id: str) -> TestList:
        """The summaries of ``test_id``, one per workflow that reported it."""

    @abc.abstractmethod
    def test_outcomes(self, test_id: str, limit: int = 50) -> OutcomeList:
        """The newest outcomes kept for ``test_id`` (failures, passes on re-run, first
        passes after a failure), newest first."""

    @abc.abstractmethod
    def failing_counts(self, run_ids: Sequence[str]) -> dict[str, int]:
        """Failing tests per run, for the runs of ``run_ids`` that reported tests."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the storage. Closing twice is harmless."""

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_history(
    spec: HistorySpec,
    *,
    warn: Warn,
    reading: bool = False,
    environ: Mapping[str, str] | None = None,
) -> HistoryStore:
    """The store for ``spec``: memory for ``":memory:"``, else a SQLite file at its path.

    Never raises: if the file cannot be used, ``warn`` is called once with the path and
    the reason, and the store returned keeps this process's history in memory. With
    ``reading`` (a caller that only reads: ``aegis history``), a file that cannot be
    written (read-only, in a read-only directory, locked by another process) is opened
    read-only instead, without a warning; its runs are shown as they are stored.
    A ``url`` opens the PostgreSQL database, its password read from ``environ`` (the
    process's environment by default) when the URL holds none.
    """
    from aegis.history.memory import MemoryHistory

    if spec.url:
        return _open_postgres(spec, warn=warn, reading=reading, environ=environ)
    if spec.path == MEMORY_PATH:
        return MemoryHistory(max_runs=spec.max_runs, max_age=spec.max_age, warn=warn)
    try:
        from aegis.history.sqlite import SqliteHistory

        return SqliteHistory(spec.path, max_runs=spec.max_runs, max_age=spec.max_age, warn=warn)
    except HistoryUnavailable as exc:
        message = str(exc)
    except Exception as exc:  # a bug must not cost the run its history, let alone the run
        log.debug("opening the history file %s failed", spec.path, exc_info=True)
        message = str(HistoryUnavailable(spec.path, f"{type(exc).__name__}: {exc}"))
    if reading:
        try:
            return SqliteHistory(spec.path, max_runs=spec.max_runs, warn=warn, read_only=True)
        except Exception:  # not readable either: the first reason is the one to tell
            log.debug("reading the history file %s failed", spec.path, exc_info=True)
        warn(f"{message}; no runs can be read from it")
        return MemoryHistory(max_runs=spec.max_runs, max_age=spec.max_age, warn=warn)
    warn(f"{message}; keeping this run's history in memory")
    return MemoryHistory(max_runs=spec.max_runs, max_age=spec.max_age, warn=warn)


def _open_postgres(
    spec: HistorySpec, *, warn: Warn, reading: bool, environ: Mapping[str, str] | None
) -> HistoryStore:
    """``open_history`` for a ``history.url``: the database, else one warning and memory.
    The password comes from the URL, the variable ``password_env`` names, or PGPASSWORD,
    and never shows in the warning."""
    import os

    from aegis.history.memory import MemoryHistory

    assert spec.url is not None
    try:
        from aegis.history.postgres import PostgresHistory

        return PostgresHistory.open(
            spec.url,
            password_env=spec.password_env,
            environ=os.environ if environ is None else environ,
            max_runs=spec.max_runs,
            max_age=spec.max_age,
            warn=warn,
        )
    except HistoryUnavailable as exc:
        message = str(exc)
    except Exception as exc:  # a bug must not cost the run its history, let alone the run
        log.debug("opening the history database failed", exc_info=True)
        message = str(HistoryUnavailable(_shown_url(spec.url), type(exc).__name__))
    if reading:
        warn(f"{message}; no runs can be read from it")
    else:
        warn(f"{message}; keeping this run's history in memory")
    return MemoryHistory(max_runs=spec.max_runs, max_age=spec.max_age, warn=warn)


def _shown_url(url: str) -> str:
    """``url`` with any password in it replaced by ``***``."""
    from aegis.history.pg_connect import PgTarget

    try:
        return PgTarget.parse(url, environ={}).display()
    except ValueError:
        return "history.url"


def open_recording_history(
    spec: HistorySpec, *, warn: Warn, environ: Mapping[str, str] | None = None
) -> HistoryStore:
    """The store a process that records runs uses: ``open_history``'s, opened on first
    use (unless a problem shows at once, so its warning comes now), behind a writer
    thread. Never raises, and never makes its caller wait for the file."""
    from aegis.history.background import BackgroundWrites
    from aegis.history.deferred import DeferredHistory, history_problem

    if spec.url:  # the server is reached on first use, as a file is opened
        return BackgroundWrites(
            DeferredHistory(lambda: open_history(spec, warn=warn, environ=environ))
        )
    if spec.path == MEMORY_PATH or history_problem(spec.path) is not None:
        return open_history(spec, warn=warn)
    return BackgroundWrites(DeferredHistory(lambda: open_history(spec, warn=warn)))
