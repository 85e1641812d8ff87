"""``PostgresHistory``: runs in a PostgreSQL database that every process of a team shares.

Several ``aegis serve`` replicas, ``aegis worker`` processes and CLI ``aegis run`` on
different hosts record into one history (``history.url``). It behaves as
``SqliteHistory`` does, and why it is built this way:

* **Sharing.** Each call borrows a connection from a small pool (``PgPool``), so the
  API's threads read at once; writes keep their order under the store's lock. Every
  ``write_all`` batch is one transaction. The schema lives in the PostgreSQL schema
  ``aegis`` and is brought up to date on open (``pg_schema.migrate``, under an advisory
  lock, so processes starting together migrate once).
* **Scale.** A listing is one index scan in the index's order (newest first, no sort
  step): ``before`` (a run id) continues a listing below that run by
  ``(started_at, seq)``, a keyset that costs the same on page 1 and page 50,000, where
  ``offset`` walks the skipped rows. ``count`` sums the few rows of ``run_counts``, which
  triggers keep, instead of counting the runs table. Step ``data`` and ``attempts``
  are only read by ``get``. The runs of a batch are written with their steps in one
  statement (``pg_statements.save_runs``): a queue cancelled at shutdown costs about
  0.1 ms a run (5,000 in 0.6 s on a 2-core test host), not a few round trips each.
* **Ticks.** ``claim_fire`` is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE
  fired_at < excluded.fired_at``: the row changes only for a later tick, and the row
  count says whether this process got it, so a tick fires once across every process.
* **Crashes.** As in the SQLite file, each run row names its owner (host, pid, start
  token; ``aegis.history.owners``), the owner refreshes ``heartbeat_at`` while it has
  runs going, and opening (then the heartbeat, once per interval) marks ``interrupted``
  the unfinished runs whose owner is gone. Runs with a row in ``queue`` are left alone:
  queued and claimed runs belong to the workers' leases.
* **Failure.** A server that cannot be reached at open, or a database written by a newer
  aegis (left unchanged), raises ``HistoryUnavailable`` naming ``PgTarget.display()``
  (never the password) and the reason. When the server goes away later, the store warns
  once, keeps this process's history in memory (so ``get`` still answers for its runs)
  and holds the writes that failed, in order. On a later write or heartbeat, at most
  once per ``retry_interval``, it replays them in one transaction, so the records land
  in the database once the server is back, and says so. Past ``MAX_PENDING`` held
  writes it stops holding and stays in memory for good, as the SQLite store does.
  A statement the server refuses for another reason (a bug, a record it cannot hold)
  costs that batch only, with one warning.
* **Age.** With ``max_age``, a thread removes runs older than it in batches of
  ``PRUNE_BATCH``, each its own transaction, oldest first through the ``started_at``
  index.
"""

from __future__ import annotations

import builtins
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, TypeVar

from aegis.history import (
    HistoryStore,
    HistoryUnavailable,
    OutcomeList,
    RunList,
    TestList,
    Warn,
    Write,
    postgres_tests,
)
from aegis.history.memory import PRUNE_BATCH, MemoryHistory
from aegis.history.owners import Owner, current_owner, owner_gone, process_state
from aegis.history.pg_connect import PgPool, PgTarget, describe_error, driver_errors
from aegis.history.pg_rows import text
from aegis.history.pg_schema import SEARCH_PATH, SchemaError, migrate
from aegis.history.pg_statements import (
    CLAIM_FIRE,
    LAST_FIRE,
    PRUNE_AGED,
    UNFINISHED_ROWS,
    find_run,
    mark_interrupted,
    page,
    prune,
    save_heartbeat,
    save_runs,
    save_step,
)
from aegis.history.pg_statements import count as count_runs
from aegis.records import Run, StepResult, age_cutoff, format_timestamp

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_RETRY_INTERVAL",
    "DEFAULT_STALE_AFTER",
    "MAX_PENDING",
    "PostgresHistory",
]

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_INTERVAL = 10.0  # also how often the store looks for runs of dead owners
DEFAULT_STALE_AFTER = 120.0  # a heartbeat this old means the owner on another host is gone
DEFAULT_RETRY_INTERVAL = 2.0  # seconds between tries to reach a server that went away
MAX_PENDING = 50_000  # writes held for a server that went away; past it, memory for good
POOL_SIZE = 4
# deadlock_detected, serialization_failure: the server aborted one of two conflicting
# transactions; the aborted one is simply tried again
RETRIED_STATES = ("40P01", "40001")
CONFLICT_TRIES = 5

_T = TypeVar("_T")
# SQLSTATE classes of a server gone or going: connection exception, insufficient
# resources, operator intervention (shutdown), system error.
_OUTAGE_CLASSES = ("08", "53", "57", "58")


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE the server sent with ``exc``, if it sent one."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], dict):
        code = args[0].get("C")
        return code if isinstance(code, str) else None
    return None


def _is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the server (or the way to it) is gone, rather than that it
    refused a statement."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], dict):
        return str(args[0].get("C", "")).startswith(_OUTAGE_CLASSES)
    return True  # the driver's own errors and OSError: the connection failed


def _groups(writes: Sequence[Write]) -> Iterator[Sequence[Write]]:
    """``writes`` in order, in groups written together: each step alone, and runs of
    ``start`` and ``finish`` writes whose run ids differ (one statement cannot write one
    row twice)."""
    group: list[Write] = []
    seen: set[str] = set()
    for write in writes:
        key = text(write.run_id)
        if group and (write.method == "update_step" or key in seen):
            yield group
            group, seen = [], set()
        if write.method == "update_step":
            yield [write]
            continue
        group.append(write)
        seen.add(key)
    if group:
        yield group


def _reason(exc: BaseException) -> str:
    """One line for ``exc``: the server's message, or the system's ("Connection refused")."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return describe_error(exc)


@dataclass
class _Live:
    """A run this store started and has not finished: what the heartbeat and the
    memory fallback need of it."""

    seq: int
    run: Run
    steps: dict[str, StepResult]


class PostgresHistory(HistoryStore):
    """Runs in the PostgreSQL database ``target`` names, shared with other processes.

    Raises ``HistoryUnavailable`` if the server cannot be reached or the database cannot
    be used. Once open it never raises because of the server (see the module docstring).

    ``clock`` (unix seconds), ``owner``, ``probe`` and the intervals are for tests.
    """

    def __init__(
        self,
        target: PgTarget,
        *,
        max_runs: int = 0,
        max_age: float = 0.0,
        warn: Warn | None = None,
        heartbeat_interval: float | None = None,
        stale_after: float | None = None,
        retry_interval: float | None = None,
        clock: Callable[[], float] = time.time,
        owner: Owner | None = None,
        probe: Callable[[int], str | None] = process_state,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self.target = target
        self.path = target.display()  # what every message names
        self.max_runs = max_runs
        self.max_age = max_age
        self._warn = warn
        self._interval = heartbeat_interval or DEFAULT_HEARTBEAT_INTERVAL
        self._stale_after = DEFAULT_STALE_AFTER if stale_after is None else stale_after
        self._retry_interval = DEFAULT_RETRY_INTERVAL if retry_interval is None else retry_interval
        self._clock = clock
        self._owner = owner or current_owner()
        self._probe = probe
        self._pool_size = pool_size
        self._errors = driver_errors()
        self._pool = PgPool(target, pool_size, setup=(SEARCH_PATH,))
        self._lock = threading.RLock()  # writes, in order, and the state below
        self._live: dict[str, _Live] = {}
        self._memory: MemoryHistory | None = None  # while the server is away
        self._pending: builtins.list[Write] = []  # writes held for it, in order
        self._given_up = False
        self._next_try = -math.inf  # monotonic time of the next try to reach it
        self._last_sweep = -math.inf
        self._last_beat = -math.inf
        self._warned: set[str] = set()
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None
        self._pruner: threading.Thread | None = None
        try:
            self._attempt(migrate)
            self._sweep()
        except SchemaError as exc:
            self._pool.close()
            raise HistoryUnavailable(self.path, str(exc)) from None
        except self._errors as exc:
            self._pool.close()
            raise HistoryUnavailable(self.path, _reason(exc)) from None
        if max_age > 0:
            self._pruner = threading.Thread(
                target=self._prune_in_background, name="aegis-history-pruner", daemon=True
            )
            self._pruner.start()

    @classmethod
    def open(
        cls,
        url: str,
        *,
        password_env: str | None = None,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> PostgresHistory:
        """The store at ``url``; the password from it, ``password_env`` or PGPASSWORD."""
        try:
            target = PgTarget.parse(url, password_env=password_env, environ=environ)
        except ValueError as exc:
            raise HistoryUnavailable("history.url", str(exc)) from None
        return cls(target, **options)

    @property
    def degraded(self) -> bool:
        """Whether the server is away and this store keeps history in memory."""
        return self._memory is not None

    @property
    def pending(self) -> int:
        """How many writes wait for the server to come back."""
        return len(self._pending)

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
            if self._memory is None or self._recovered():
                try:
                    self._write(writes)
                except self._errors as exc:
                    if not _is_outage(exc):
                        self._refused(exc, len(writes))
                        return
                    self._went_away(exc)
                else:
                    if any(write.method == "start" for write in writes):
                        self._ensure_heartbeat()
                    return
            self._hold(writes)

    def get(self, run_id: str) -> Run | None:
        memory = self._memory
        if memory is not None:
            found = memory.get(run_id)
            if found is not None or not self._recovered_now():
                return found
        return self._read(find_run, run_id, fallback=lambda m: m.get(run_id))

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
        return self._read(
            page,
            workflow,
            status,
            limit,
            offset,
            trigger,
            before,
            fallback=lambda m: m.list(
                workflow, status, limit, offset, trigger=trigger, before=before
            ),
        )

    def count(
        self, workflow: str | None = None, status: str | None = None, *, trigger: str | None = None
    ) -> int:
        return self._read(
            count_runs,
            workflow,
            status,
            trigger,
            fallback=lambda m: m.count(workflow, status, trigger=trigger),
        )

    def tests(
        self, workflow: str | None = None, *, flaky: bool = False, limit: int = 50
    ) -> TestList:
        return self._read(
            postgres_tests.tests,
            workflow,
            flaky,
            limit,
            fallback=lambda m: m.tests(workflow, flaky=flaky, limit=limit),
        )

    def test(self, test_id: str) -> TestList:
        return self._read(postgres_tests.test_records, test_id, fallback=lambda m: m.test(test_id))

    def test_outcomes(self, test_id: str, limit: int = 50) -> OutcomeList:
        return self._read(
            postgres_tests.outcomes,
            test_id,
            limit,
            fallback=lambda m: m.test_outcomes(test_id, limit),
        )

    def failing_counts(self, run_ids: Sequence[str]) -> dict[str, int]:
        return self._read(
            postgres_tests.failing_counts,
            builtins.list(run_ids),
            fallback=lambda m: m.failing_counts(run_ids),
        )

    def prune_aged(self, limit: int) -> int:
        if self.max_age <= 0:
            return 0
        cutoff = age_cutoff(self._clock(), self.max_age)

        def prune(db: Any) -> int:
            return len(db.run(PRUNE_AGED, cutoff=cutoff, limit=limit))

        return self._other_write(prune, fallback=lambda m: m.prune_aged(limit))

    def _prune_in_background(self) -> None:
        """Every so often, prune by age a batch at a time until nothing is left to prune."""
        interval = min(max(self.max_age / 4, 0.05), 60.0)
        while not self._stop.wait(interval):
            while self.prune_aged(PRUNE_BATCH) == PRUNE_BATCH and not self._stop.is_set():
                pass

    def last_fire(self, workflow: str, schedule: str) -> float | None:
        def fired(db: Any) -> float | None:
            rows = db.run(LAST_FIRE, workflow=text(workflow), schedule=text(schedule))
            return float(rows[0][0]) if rows else None

        return self._read(fired, fallback=lambda m: m.last_fire(workflow, schedule))

    def claim_fire(self, workflow: str, schedule: str, at: float) -> bool:
        def claim(db: Any) -> bool:
            return bool(db.run(CLAIM_FIRE, workflow=text(workflow), schedule=text(schedule), at=at))

        return self._other_write(claim, fallback=lambda m: m.claim_fire(workflow, schedule, at))

    def close(self) -> None:
        if self._stop.is_set():
            return
        if self._pruner is not None:
            # a short-lived process (`aegis run`) ends before the first round: prune one
            # batch as it goes, after its run is recorded
            self.prune_aged(PRUNE_BATCH)
        self._stop.set()
        if self._beater is not None:
            self._beater.join()
        if self._pruner is not None:
            self._pruner.join()
        with self._lock:
            if self._pending and not self._given_up:
                self._next_try = -math.inf
                if not self._recovered():
                    self._warn_once(
                        "lost",
                        f"history: {self.path} is still unreachable; {len(self._pending)}"
                        " write(s) of this process's history were not recorded",
                    )
            self._pool.close()

    # ----------------------------------------------------------- owners alive

    def heartbeat(self) -> None:
        """Refresh ``heartbeat_at`` of this store's runs still going, replay the writes
        held for a server that went away, and look for runs of dead owners if it is
        time. The heartbeat thread calls this every interval."""
        with self._lock:
            if self._memory is not None and not self._recovered():
                return
            live = builtins.list(self._live.values())
            try:
                if live:
                    self._attempt(self._save_heartbeat, live, self._clock())
                if self._clock() - self._last_sweep >= self._interval:
                    self._sweep()
            except self._errors as exc:
                if _is_outage(exc):
                    self._went_away(exc)

    def mark_interrupted(self) -> builtins.list[str]:
        """Mark ``interrupted`` every unfinished run (not in the queue) whose owner is
        gone; their ids come back. Opening a store does this, the heartbeat repeats it."""
        with self._lock:
            try:
                return self._sweep()
            except self._errors as exc:
                if _is_outage(exc):
                    self._went_away(exc)
                return []

    def _ensure_heartbeat(self) -> None:
        if self._beater is None and not self._stop.is_set():
            self._beater = threading.Thread(
                target=self._beat, name="aegis-history-heartbeat", daemon=True
            )
            self._beater.start()

    def _beat(self) -> None:
        while not self._stop.wait(min(self._interval, self._retry_interval)):
            if self._memory is not None or self._due_beat():
                self.heartbeat()

    def _due_beat(self) -> bool:
        return self._clock() - self._last_beat >= self._interval

    def _sweep(self) -> builtins.list[str]:
        now = self._clock()
        self._last_sweep = now
        rows = self._attempt(lambda db: db.run(UNFINISHED_ROWS))
        gone = [row for row in rows if self._owner_gone(row, now)]
        if not gone:
            return []
        finished_at = format_timestamp(datetime.fromtimestamp(now, timezone.utc))
        return self._attempt(mark_interrupted, gone, finished_at)

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

    def _attempt(self, action: Callable[..., _T], *args: Any) -> _T:
        """``action(connection, *args)`` in one transaction. A connection the pool kept
        from before a server restart fails at once: then the pool is renewed and the
        action tried once more, on a fresh connection."""
        try:
            return self._transaction(action, *args)
        except self._errors as exc:
            if not _is_outage(exc):
                raise
            self._renew_pool()
        return self._transaction(action, *args)

    def _transaction(self, action: Callable[..., _T], *args: Any) -> _T:
        """``action`` in one transaction, tried again (up to ``CONFLICT_TRIES`` times in
        all) when the server aborted it to break a deadlock or a serialization conflict
        with another process's: the other one went through, and so will this, later."""
        for _ in range(CONFLICT_TRIES - 1):
            try:
                return self._transaction_once(action, *args)
            except self._errors as exc:
                if _sqlstate(exc) not in RETRIED_STATES:
                    raise
                log.debug("history: transaction aborted by a conflict; trying again")
        return self._transaction_once(action, *args)

    def _transaction_once(self, action: Callable[..., _T], *args: Any) -> _T:
        with self._pool.connection() as db:
            db.run("START TRANSACTION")
            try:
                result = action(db, *args)
                db.run("COMMIT")
            except BaseException:
                try:
                    db.run("ROLLBACK")
                except Exception:  # keep the error that made it fail
                    log.debug("history: rollback failed", exc_info=True)
                raise
            return result

    def _renew_pool(self) -> None:
        old, self._pool = self._pool, PgPool(self.target, self._pool_size, setup=(SEARCH_PATH,))
        old.close()  # idle connections go now, lent ones when given back

    def _read(
        self, query: Callable[..., _T], *args: Any, fallback: Callable[[MemoryHistory], _T]
    ) -> _T:
        memory = self._memory
        if memory is None or self._recovered_now():
            try:
                return self._attempt(query, *args)
            except self._errors as exc:
                if _is_outage(exc):
                    with self._lock:
                        memory = self._went_away(exc)
                else:
                    self._refused(exc, 0)
                    memory = MemoryHistory()
        assert memory is not None
        return fallback(memory)

    def _other_write(
        self, action: Callable[[Any], _T], fallback: Callable[[MemoryHistory], _T]
    ) -> _T:
        """A write other than a run's (pruning, a schedule's claim). While the server is
        away it is made in memory only: a tick claimed there is this process's alone."""
        with self._lock:
            if self._memory is None or self._recovered():
                try:
                    return self._attempt(action)
                except self._errors as exc:
                    if _is_outage(exc):
                        self._went_away(exc)
                    else:
                        self._refused(exc, 1)
            memory = self._memory or MemoryHistory()
            return fallback(memory)

    def _recovered_now(self) -> bool:
        with self._lock:
            return self._memory is None or self._recovered()

    def _recovered(self) -> bool:
        """Whether the server is back and the held writes are recorded: tried at most once
        per ``retry_interval`` (under ``_lock``)."""
        if self._memory is None:
            return True
        if self._given_up or time.monotonic() < self._next_try:
            return False
        self._next_try = time.monotonic() + self._retry_interval
        held = builtins.list(self._pending)
        try:
            self._write(held)
        except self._errors as exc:
            if not _is_outage(exc):  # the server is back but refuses them: drop them
                self._refused(exc, len(held))
                self._pending.clear()
                self._memory = None
                return True
            log.debug("history: %s still unreachable: %s", self.path, _reason(exc))
            return False
        self._pending.clear()
        self._memory = None
        self._warned.discard("away")
        self._warn_once(
            "back",
            f"history: {self.path} is reachable again; the history kept meanwhile"
            f" ({len(held)} write(s)) is recorded there",
        )
        self._warned.discard("back")
        if self._live:
            self._ensure_heartbeat()
        return True

    def _went_away(self, exc: BaseException) -> MemoryHistory:
        """Keep history in memory, the runs going included, until the server is back."""
        if self._memory is not None:
            return self._memory
        self._warn_once(
            "away",
            f"history: cannot reach {self.path} ({_reason(exc)}); keeping this"
            " process's history in memory and writing it there once the server is back",
        )
        log.debug("history: %s went away", self.path, exc_info=exc)
        memory = MemoryHistory(max_runs=self.max_runs, warn=self._warn)
        for live in self._live.values():
            memory.start(replace(live.run, steps=tuple(live.steps.values())))
        self._memory = memory
        self._next_try = time.monotonic() + self._retry_interval
        return memory

    def _hold(self, writes: Sequence[Write]) -> None:
        """Make ``writes`` in memory, and keep them for the server unless too many are."""
        memory = self._memory
        assert memory is not None
        memory.write_all(writes)
        if self._given_up:
            return
        self._pending.extend(writes)
        if len(self._pending) > MAX_PENDING:
            self._given_up = True
            self._pending.clear()
            self._warn_once(
                "given-up",
                f"history: {self.path} has been unreachable for over {MAX_PENDING} writes;"
                " the rest of this process's history stays in memory",
            )

    def _refused(self, exc: BaseException, writes: int) -> None:
        what = f"{writes} write(s)" if writes else "a read"
        log.debug("history: %s refused %s", self.path, what, exc_info=exc)
        self._warn_once(
            "refused",
            f"history: {self.path} refused {what} ({_reason(exc)}); recording goes on",
        )

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned and self._warn is not None:
            self._warned.add(kind)
            self._warn(message)

    # ---------------------------------------------------------------- writes

    def _write(self, writes: Sequence[Write]) -> None:
        """``writes`` in one transaction; what they change in this store's runs going
        (``_live``) is staged, and kept only once it commits."""
        staged: dict[str, _Live | None] = {}
        self._attempt(self._save_all, writes, staged)
        for run_id, one in staged.items():
            if one is None:
                self._live.pop(run_id, None)
            else:
                self._live[run_id] = one

    def _save_all(self, db: Any, writes: Sequence[Write], staged: dict[str, _Live | None]) -> None:
        staged.clear()  # a second attempt starts over
        workflows: set[str] = set()
        for group in _groups(writes):
            if group[0].method == "update_step":
                self._save_step(db, staged, *group[0].args)
                continue
            runs = [write.args[0] for write in group]
            seqs = save_runs(db, runs, self._owner, self._clock())
            ended = []
            for write, run, seq in zip(group, runs, seqs, strict=True):
                if write.method == "start":
                    staged[run.run_id] = _Live(seq, run, {s.name: s for s in run.steps})
                    continue
                staged[run.run_id] = None
                workflows.add(run.workflow)
                if run.status.finished:
                    ended.append(run)
            postgres_tests.record_all(db, ended, text)
        if self.max_runs > 0:
            for workflow in sorted(workflows):
                prune(db, workflow, self.max_runs)

    def _save_step(
        self, db: Any, staged: dict[str, _Live | None], run_id: str, step: StepResult
    ) -> None:
        live = staged[run_id] if run_id in staged else self._live.get(run_id)
        if live is not None:
            # in place: a step that fails to commit is held and made again, to the same end
            live.steps[step.name] = step
            seq = live.seq
        else:
            rows = db.run("SELECT seq FROM runs WHERE run_id = :run_id", run_id=text(run_id))
            if not rows:
                return
            seq = int(rows[0][0])
        save_step(db, seq, step)

    def _save_heartbeat(self, db: Any, live: Sequence[_Live], now: float) -> None:
        self._last_beat = now
        save_heartbeat(db, [(one.seq, one.run.status.value) for one in live], now)
