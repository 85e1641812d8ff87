"""``RunManager``: runs that the API accepts, queued and run at most N at a time.

It lives on the API's loop (``LoopThread``); its ``async`` methods are called there.
``get``, ``list``, ``active`` and ``queued`` only read and may be called from any thread.

A run goes through::

    submit ──▶ queued ──(a slot frees, FIFO)──▶ running ──▶ succeeded · failed · timed_out
                 │                                 │
                 └──── cancel / shutdown ──────────┴──▶ cancelled

Why it is built this way:

* **Nothing accepted is lost.** ``submit`` records the run as ``queued`` in history before
  it returns, so the ``run_id`` an API client gets is in history even if the process dies
  while the run waits (the next store to open marks it ``interrupted``). When the run
  starts, the engine records it again under the same id and history updates that row.
* **FIFO.** Waiting runs are a deque and a slot is handed to the oldest; an
  ``asyncio.Semaphore`` did not promise that order before Python 3.11.
* **Live records.** The engine writes through a recorder that keeps the latest record of
  every run still going, so ``get`` and ``wait`` see a run's steps as they end without
  a history read, and a finished run's record stays at hand until it is handed out.
* **No history call waits on the loop.** ``aegis serve`` hands the manager a store whose
  writes a thread makes (``history.background``); a run not live is read with
  ``asyncio.to_thread``. Shutdown records every queued run ``cancelled`` in one
  ``write_all``: 100,000 of them take seconds, not a transaction each.
* **Ends are settled in a done callback**, not in the run's coroutine: a task cancelled
  before it first ran never executes its body (not even a ``finally``), yet its slot
  must be freed and its cancellation recorded.
* **Bounded.** At most ``max_queued`` runs wait; past that ``submit`` raises
  ``QueueFull`` (the API answers 429 with ``Retry-After``).
* **Rules per workflow.** ``workflows.KEY.concurrency`` (and a schedule's ``overlap``,
  which is a limit of 1) is checked when a run is submitted: past the limit the trigger
  is refused (``skip``: ``Conflict`` naming the run in the way, and a ``run.skipped``
  event), replaces the oldest runs (``cancel_running``), or waits (``queue``). A queued
  run starts only while fewer than its limit of its workflow's runs are running; runs
  behind it of other workflows may pass it.
* **Reruns** are submissions too (``rerun``), linked by ``rerun_of`` and carrying over
  the steps ``aegis.engine.rerun.carried_steps`` picks.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from aegis.config.model import DEFAULT_MAX_QUEUED_RUNS, Config, WorkflowSpec
from aegis.config.params import coerce_params, shown_params
from aegis.engine.clock import Clock, SystemClock
from aegis.engine.rerun import rerun_inputs
from aegis.engine.runner import ClientFactory, Engine, new_run_id, skipped_result
from aegis.errors import Conflict, NotFound, QueueFull
from aegis.events import EventBus
from aegis.history import HistoryStore, Write
from aegis.records import Run, RunStatus, StepResult, StepStatus, Verdict, format_timestamp
from aegis.steps.base import StepType

__all__ = [
    "CANCELLED_REASON",
    "DEFAULT_IDEMPOTENCY_TTL",
    "MAX_IDEMPOTENCY_KEYS",
    "QUEUE_RETRY_AFTER",
    "RunManager",
]

log = logging.getLogger(__name__)

DEFAULT_IDEMPOTENCY_TTL = 86400.0  # DESIGN §7: a key repeated within 24 h
# Keys remembered at most; the oldest go first. A client that sends a new key with every
# request (one per CI job) must not grow the server's memory for a whole day.
MAX_IDEMPOTENCY_KEYS = 10_000
CANCELLED_REASON = "run cancelled"  # the engine's reason too, so both read alike
QUEUE_RETRY_AFTER = 5.0  # seconds a client refused for a full queue is told to wait


@dataclass
class _Entry:
    """A queued or running run of this manager; dropped once its end is recorded."""

    record: Run
    done: asyncio.Future[None]
    task: asyncio.Task[Any] | None = None  # None while queued
    limit: int | None = None  # starts only while fewer runs of its workflow run
    reuse: Mapping[int, StepResult] | None = None  # steps a rerun carries over
    params: dict[str, object] | None = None  # the real values (the record hides secrets)


class _Recorder:
    """The history one run's engine writes to: the real store, and the run's live record
    (kept first, so a failing store cannot hide it)."""

    def __init__(self, store: HistoryStore, entry: _Entry) -> None:
        self._store = store
        self._entry = entry

    def start(self, run: Run) -> None:
        self._entry.record = run
        self._store.start(run)

    def update_step(self, run_id: str, step: StepResult) -> None:
        record = self._entry.record  # the engine reports each step once, when it ends
        self._entry.record = replace(record, steps=(*record.steps, step))
        self._store.update_step(run_id, step)

    def finish(self, run: Run) -> None:
        self._entry.record = run
        self._store.finish(run)


class RunManager:
    """Accepts runs of ``config``'s workflows and runs at most ``max_concurrent`` at once.

    ``history`` records every run (``trigger`` is ``"api"`` unless told otherwise);
    ``bus`` gets the engine's events; ``clock`` drives the engine and the idempotency
    window; ``open_client`` makes each run's HTTP client (for tests). At most
    ``max_idempotency_keys`` keys are remembered, the oldest forgotten first.
    """

    def __init__(
        self,
        config: Config,
        step_types: Mapping[str, StepType],
        history: HistoryStore,
        *,
        bus: EventBus,
        max_concurrent: int,
        environ: Mapping[str, str],
        clock: Clock | None = None,
        open_client: ClientFactory | None = None,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        max_idempotency_keys: int = MAX_IDEMPOTENCY_KEYS,
        max_queued: int = DEFAULT_MAX_QUEUED_RUNS,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        self.history = history
        self.bus = bus
        self.max_concurrent = max_concurrent
        self.idempotency_ttl = idempotency_ttl
        self.max_idempotency_keys = max_idempotency_keys
        self.max_queued = max_queued
        self.config = config
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()  # guards _live, which other threads read
        self._live: dict[str, _Entry] = {}
        self._waiting: collections.deque[_Entry] = collections.deque()
        self._running = 0
        self._running_by: collections.Counter[str] = collections.Counter()
        self._closed = False
        # (workflow, key) -> (run_id, clock reading), oldest first for cheap expiry
        self._keys: collections.OrderedDict[tuple[str, str], tuple[str, float]] = (
            collections.OrderedDict()
        )
        # Each run gets an engine of its own, writing through a recorder bound to it.
        self._engine_for = functools.partial(
            Engine,
            config,
            step_types,
            bus=bus,
            clock=self.clock,
            open_client=open_client,
            environ=environ,
        )
        self._workflows = Engine(config, step_types)  # never runs: resolves workflow keys

    # ------------------------------------------------------------ on the loop

    async def submit(
        self,
        workflow: str,
        *,
        idempotency_key: str | None = None,
        trigger: str = "api",
        params: Mapping[str, object] | None = None,
        overlap: str | None = None,
        rerun_of: str | None = None,
        reuse: Mapping[int, StepResult] | None = None,
    ) -> tuple[Run, bool]:
        """Queue a run of ``workflow`` with ``params``; returns its record and whether it
        is new.

        With an ``idempotency_key`` seen for this workflow within the TTL, the earlier
        run's current record comes back instead, with ``False``. ``overlap`` (a
        schedule's) is a limit of one run of the workflow, applied as its concurrency
        rule is; ``rerun_of`` and ``reuse`` make the run a rerun (see ``rerun``);
        ``params`` are checked and converted (``coerce_params``). Raises ``NotFound`` for
        an unknown workflow, ``ParamError`` for params it cannot take, ``QueueFull`` when
        ``max_queued`` runs wait already, and ``Conflict`` when a rule refuses the run
        (naming the run in the way) or after ``shutdown``.
        """
        if self._closed:
            raise Conflict("not accepting runs: the server is shutting down")
        spec = self._workflows.workflow(workflow)
        values = coerce_params(workflow, spec.params, params or {})
        earlier = await self._repeated(workflow, idempotency_key)
        if earlier is not None:
            return earlier, False
        if len(self._waiting) >= self.max_queued:
            raise QueueFull(
                f"the run queue is full ({self.max_queued} runs wait); try again later",
                retry_after=QUEUE_RETRY_AFTER,
            )
        limit = await self._admit(spec, overlap, trigger)
        if self._closed:  # shut down while the runs in the way were being cancelled
            raise Conflict("not accepting runs: the server is shutting down")
        run = Run(
            run_id=new_run_id(),
            workflow=spec.key,
            status=RunStatus.QUEUED,
            started_at=self._now(),
            trigger=trigger,
            params=shown_params(spec.params, values),
            rerun_of=rerun_of,
        )
        entry = _Entry(
            run,
            asyncio.get_running_loop().create_future(),
            limit=limit,
            reuse=reuse,
            params=values,
        )
        with self._lock:
            self._live[run.run_id] = entry
        self._record(self.history.start, run)
        if idempotency_key is not None:
            self._remember(workflow, idempotency_key, run.run_id)
        self._waiting.append(entry)
        self._dispatch()
        return run, True

    async def rerun(
        self,
        run_id: str,
        *,
        from_failed: bool = False,
        params: Mapping[str, object] | None = None,
        trigger: str = "api",
    ) -> Run:
        """Queue a new run of the workflow of run ``run_id``, linked to it by ``rerun_of``;
        ``from_failed`` carries over the steps before its first failed one. The run's
        params are given again, each overridden by ``params``.

        Raises ``NotFound`` for an unknown run, ``Conflict`` for one still going (or of a
        workflow no longer configured) and what ``submit`` raises.
        """
        old = self.get(run_id)
        if old is None:
            raise NotFound(f"unknown run '{run_id}'")
        values, reuse = rerun_inputs(
            self.config.workflows, old, params or {}, from_failed=from_failed
        )
        run, _ = await self.submit(
            old.workflow, trigger=trigger, params=values, rerun_of=old.run_id, reuse=reuse
        )
        return run

    async def wait(self, run_id: str, timeout: float) -> Run:
        """The run's record once it has finished, or as it is after ``timeout`` seconds.

        Raises ``NotFound`` for an unknown run.
        """
        run, entry = await self._resolve(run_id)
        if entry is None:
            return run
        await asyncio.wait([entry.done], timeout=max(timeout, 0))
        return entry.record

    async def cancel(self, run_id: str) -> Run:
        """Cancel a queued or running run and return its record (status ``cancelled``).

        A queued run never starts; a running one is cancelled through its task, and the
        engine records what its steps had done. Raises ``NotFound`` for an unknown run
        and ``Conflict`` for one that has finished (or is not run by this manager).
        """
        run, entry = await self._resolve(run_id)
        if entry is None or run.status.finished:  # finished: its task is about to settle
            raise Conflict(_not_cancellable(run))
        if entry.task is None:
            self._waiting.remove(entry)
            self._cancel_queued(entry)
        else:
            entry.task.cancel()
            await asyncio.wait([entry.done])
        return entry.record

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop accepting runs, cancel every queued and running one, and wait up to
        ``timeout`` seconds for the running ones to record their cancellation."""
        self._closed = True
        queued, self._waiting = list(self._waiting), collections.deque()
        self._cancel_all_queued(queued)
        with self._lock:
            running = [(e.task, e.done) for e in self._live.values() if e.task is not None]
        for task, _ in running:
            task.cancel()
        pending = [done for _, done in running]
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            if late:
                log.warning("%d run(s) did not end within %gs of shutdown", len(late), timeout)

    # ------------------------------------------------------- from any thread

    def get(self, run_id: str) -> Run | None:
        """The run ``run_id`` (or the one run its prefix names): the live record of a run
        still going, else history's. Raises ``NotFound`` for an ambiguous prefix."""
        with self._lock:
            entry = self._live.get(run_id)
            if entry is not None:
                return entry.record
        found = self.history.get(run_id)
        if found is None:
            return None
        with self._lock:  # a prefix of a run still going: its live record is newer
            entry = self._live.get(found.run_id)
        return found if entry is None else entry.record

    def list(
        self,
        workflow: str | None = None,
        status: str | None = None,
        limit: int = 20,
        offset: int = 0,
        *,
        trigger: str | None = None,
        before: str | None = None,
    ) -> tuple[builtins.list[Run], int]:
        """A page of runs from history, newest first, and how many match in all."""
        page = self.history.list(workflow, status, limit, offset, trigger=trigger, before=before)
        return page, self.history.count(workflow, status, trigger=trigger)

    def active(self) -> int:
        """How many runs are running now."""
        return self._running

    def queued(self) -> int:
        """How many runs wait for a slot."""
        return len(self._waiting)

    # ----------------------------------------------------------------- inside

    async def _repeated(self, workflow: str, key: str | None) -> Run | None:
        """The current record of the run ``key`` started within the TTL, if any."""
        self._expire_keys()
        seen = None if key is None else self._keys.get((workflow, key))
        if seen is None:
            return None
        return await self._get_off_loop(seen[0])  # None if pruned since: start anew

    async def _get_off_loop(self, run_id: str) -> Run | None:
        """``get``, with a history read made in a thread: a file locked by another
        process must not hold the loop (and every run on it)."""
        with self._lock:
            entry = self._live.get(run_id)
            if entry is not None:
                return entry.record
        return await asyncio.to_thread(self.get, run_id)

    def _remember(self, workflow: str, key: str, run_id: str) -> None:
        # Re-inserted at the end, so the dict stays in order of time for _expire_keys.
        self._keys.pop((workflow, key), None)
        self._keys[(workflow, key)] = (run_id, self.clock.monotonic())
        while len(self._keys) > self.max_idempotency_keys:
            self._keys.popitem(last=False)

    def _expire_keys(self) -> None:
        horizon = self.clock.monotonic() - self.idempotency_ttl
        while self._keys:
            key, (_, at) = next(iter(self._keys.items()))
            if at > horizon:
                return
            del self._keys[key]

    async def _admit(self, spec: WorkflowSpec, overlap: str | None, trigger: str) -> int | None:
        """Apply ``overlap`` (a limit of 1) and the workflow's concurrency rule to a new
        run; the limit it must start under comes back. Raises ``Conflict`` for ``skip``."""
        rules = [] if overlap is None else [(1, overlap, "overlap")]
        if spec.concurrency is not None:
            rule = spec.concurrency
            rules.append((rule.limit, rule.on_conflict, "concurrency"))
        for cap, mode, name in rules:
            live = self._live_of(spec.key)
            if len(live) < cap or mode == "queue":
                continue
            if mode == "skip":
                blocking = live[0].record
                reason = (
                    f"workflow '{spec.key}' has {len(live)} run(s) going (its {name} limit"
                    f" is {cap}); run {blocking.run_id} is {blocking.status.value}"
                )
                self.bus.emit(
                    "run.skipped",
                    "",
                    spec.key,
                    trigger=trigger,
                    rule=name,
                    limit=cap,
                    blocking_run=blocking.run_id,
                    reason=reason,
                )
                raise Conflict(f"not started: {reason}", run_id=blocking.run_id)
            await self._cancel_entries(live[: len(live) - cap + 1])  # cancel_running
        return min((cap for cap, _, _ in rules), default=None)

    def _live_of(self, workflow: str) -> builtins.list[_Entry]:
        """This workflow's runs queued or running here, oldest first."""
        with self._lock:
            return [
                e
                for e in self._live.values()
                if e.record.workflow == workflow and not e.record.status.finished
            ]

    async def _cancel_entries(self, entries: builtins.list[_Entry]) -> None:
        for entry in entries:
            if entry.task is None:
                if entry in self._waiting:
                    self._waiting.remove(entry)
                    self._cancel_queued(entry)
            else:
                entry.task.cancel()
        pending = [e.done for e in entries if not e.done.done()]
        if pending:
            await asyncio.wait(pending)

    def _dispatch(self) -> None:
        """Start waiting runs, oldest first, while there are free slots; a run whose
        workflow is at its limit waits and lets the ones behind it go."""
        while self._running < self.max_concurrent and not self._closed:
            entry = self._next_startable()
            if entry is None:
                return
            self._running += 1
            run = entry.record
            self._running_by[run.workflow] += 1
            engine = self._engine_for(history=_Recorder(self.history, entry))
            entry.task = asyncio.ensure_future(
                engine.run(
                    run.workflow,
                    trigger=run.trigger,
                    run_id=run.run_id,
                    params=entry.params,
                    rerun_of=run.rerun_of,
                    reuse=entry.reuse,
                )
            )
            entry.task.add_done_callback(functools.partial(self._settle, entry))

    def _next_startable(self) -> _Entry | None:
        for index, entry in enumerate(self._waiting):
            limit = entry.limit
            if limit is None or self._running_by[entry.record.workflow] < limit:
                del self._waiting[index]
                return entry
        return None

    def _settle(self, entry: _Entry, task: asyncio.Task[Any]) -> None:
        """A run's task has ended: make sure its end is recorded, free its slot."""
        self._running -= 1
        self._running_by[entry.record.workflow] -= 1
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("run %s ended abnormally", entry.record.run_id, exc_info=error)
        if not entry.record.status.finished:  # the engine never began, or broke down
            if error is None:
                self._record_end(entry, RunStatus.CANCELLED, CANCELLED_REASON)
            else:
                self._record_end(entry, RunStatus.FAILED, f"run aborted: {error!r}")
        self._release(entry)
        self._dispatch()

    def _cancel_queued(self, entry: _Entry) -> None:
        self._record_end(entry, RunStatus.CANCELLED, CANCELLED_REASON)
        self._release(entry)

    def _cancel_all_queued(self, entries: builtins.list[_Entry]) -> None:
        """Record every run in ``entries`` (none started) ``cancelled`` in one write:
        100,000 queued runs at shutdown cost one batch, not 100,000 transactions."""
        finished_at = self._now()
        skipped: dict[str, tuple[StepResult, ...]] = {}
        for entry in entries:
            run = entry.record
            steps = skipped.get(run.workflow)
            if steps is None:
                spec = self._workflows.workflow(run.workflow)
                steps = skipped[run.workflow] = _final_steps(spec, (), CANCELLED_REASON)
            entry.record = replace(
                run,
                status=RunStatus.CANCELLED,
                verdict=Verdict.FAILED,
                steps=steps,
                finished_at=finished_at,
                duration_ms=0.0,
            )
        writes = [Write("finish", (entry.record,)) for entry in entries]
        try:
            self.history.write_all(writes)
        except Exception:  # the engine's rule: a broken store never breaks a run
            log.exception("history store failed to record %d cancelled runs", len(writes))
        counts = {workflow: _step_counts(steps) for workflow, steps in skipped.items()}
        for entry in entries:
            self._announce_end(entry.record, CANCELLED_REASON, counts[entry.record.workflow])
            self._release(entry)

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            del self._live[entry.record.run_id]
        entry.done.set_result(None)

    def _record_end(self, entry: _Entry, status: RunStatus, reason: str) -> None:
        """Record the end of a run the engine never ended: the steps it did not report
        are skipped with ``reason``."""
        run = entry.record
        steps = _final_steps(self._workflows.workflow(run.workflow), run.steps, reason)
        entry.record = replace(
            run,
            status=status,
            verdict=Verdict.FAILED,
            steps=steps,
            finished_at=self._now(),
            duration_ms=0.0,
        )
        self._record(self.history.finish, entry.record)
        self._announce_end(entry.record, reason)

    def _announce_end(self, run: Run, reason: str, counts: dict[str, int] | None = None) -> None:
        self.bus.emit(
            "workflow.completed",
            run.run_id,
            run.workflow,
            status=run.status.value,
            verdict=Verdict.FAILED.value,
            duration_ms=0.0,
            steps=dict(counts or _step_counts(run.steps)),
            tests_total=None,
            tests_failed=None,
            reason=reason,
            trigger=run.trigger,
        )

    async def _resolve(self, run_id: str) -> tuple[Run, _Entry | None]:
        run = await self._get_off_loop(run_id)
        if run is None:
            raise NotFound(f"unknown run '{run_id}'")
        with self._lock:
            return run, self._live.get(run.run_id)

    def _record(self, method: Callable[[Run], None], run: Run) -> None:
        # The engine's rule: a broken store never breaks a run, and the live record holds it.
        try:
            method(run)
        except Exception:
            log.exception("history store failed to record run %s", run.run_id)

    def _now(self) -> str:
        return format_timestamp(self.clock.now())


def _final_steps(
    workflow: WorkflowSpec, reported: tuple[StepResult, ...], reason: str
) -> tuple[StepResult, ...]:
    """Every step in workflow order: as reported, else skipped with ``reason``."""
    ended = {step.name: step for step in reported}
    return tuple(ended.get(spec.name) or skipped_result(spec, reason) for spec in workflow.steps)


def _step_counts(steps: tuple[StepResult, ...]) -> dict[str, int]:
    """How many of ``steps`` ended in each status (every status named)."""
    counts = collections.Counter(step.status.value for step in steps)
    return {s.value: counts[s.value] for s in StepStatus}


def _not_cancellable(run: Run) -> str:
    if run.status.finished:
        return f"run {run.run_id} has already finished ({run.status.value})"
    return f"run {run.run_id} is {run.status.value} in another process; it cannot be cancelled here"
