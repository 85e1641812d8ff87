"""``SharedRunManager``: the API's runs when history is a PostgreSQL database.

It has ``RunManager``'s public interface, so the handlers, the schedules and the metrics
never know which one they hold; what differs is where the queue is. Here it is the
``queue`` table (``aegis.history.pg_queue``) that every replica and every ``aegis
worker`` on the database shares, so:

* **Submitting never runs anything.** ``submit`` writes the ``queued`` record, then makes
  the queue row claimable; whichever worker has a free slot claims it (the one this
  process embeds, or another). The record is flushed before the row is ready, so a
  worker's ``running`` can never be overwritten by a late ``queued``.
* **Rules hold across replicas.** Idempotency keys, ``skip`` limits and the queue bound
  (``max_queued``: 429) are decided in the database, not in this process's memory;
  ``cancel_running`` cancels the oldest runs wherever they run and waits for their end.
* **Any replica answers for any run.** ``get``, ``list`` and ``wait`` read the shared
  store; ``cancel`` removes a waiting run (recording it ``cancelled`` here) or asks the
  worker holding a claimed one to cancel it, then waits for that worker's record.
* **Shutting down hands runs back, not away.** Runs waiting in the shared queue stay
  there for the other workers; the embedded worker drains and hands back its own.

Every database and store call runs in a thread (``asyncio.to_thread``), never on the loop.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
from collections.abc import Mapping
from typing import Any

from aegis.config.model import DEFAULT_MAX_QUEUED_RUNS, Config, HistorySpec
from aegis.config.params import coerce_params, shown_params
from aegis.engine.clock import Clock, SystemClock
from aegis.engine.rerun import rerun_inputs
from aegis.engine.runner import Engine, new_run_id
from aegis.errors import Conflict, NotFound, QueueFull, UsageError
from aegis.events import EventBus
from aegis.history import HistoryStore
from aegis.history.pg_queue import PgQueue
from aegis.records import Run, RunStatus, StepResult, format_timestamp
from aegis.steps.base import StepType
from aegis.worker import Worker, end_record, flush, record_waiting

from .manager import CANCELLED_REASON, DEFAULT_IDEMPOTENCY_TTL, QUEUE_RETRY_AFTER

__all__ = ["SharedRunManager", "open_queue"]

POLL = 0.1  # seconds between looks at a run another process is running
EARLIER_GRACE = 30.0  # seconds a key's first run may take to be queued
# Seconds a cancel waits for the worker of a claimed run to record it, within the API's
# call timeout (15 s): a worker that died records nothing until its lease runs out, so the
# answer is then the run as it stands, its cancel asked for (the reaper records it).
CANCEL_WAIT = 10.0


def open_queue(spec: HistorySpec, environ: Mapping[str, str]) -> tuple[PgQueue, Any]:
    """The queue of ``spec.url``'s database, migrated, and its target. Raises
    ``UsageError`` in one line (the password never in it) when it cannot be used."""
    from aegis.history.pg_connect import PgTarget, describe_error, driver_errors
    from aegis.history.pg_schema import SchemaError

    assert spec.url is not None
    try:
        target = PgTarget.parse(spec.url, password_env=spec.password_env, environ=environ)
    except ValueError as exc:
        raise UsageError(f"history.url: {exc}") from None
    failures: tuple[type[BaseException], ...] = (*driver_errors(), SchemaError, PermissionError)
    try:
        return PgQueue.open(target), target
    except failures as exc:
        raise UsageError(
            f"history: cannot use {target.display()} ({describe_error(exc)})"
        ) from None


class SharedRunManager:
    """``RunManager``'s interface over the shared queue ``queue``; ``worker`` is the one
    this process embeds (its runs are what ``active`` counts), if any."""

    def __init__(
        self,
        config: Config,
        step_types: Mapping[str, StepType],
        history: HistoryStore,
        queue: PgQueue,
        *,
        bus: EventBus,
        worker: Worker | None = None,
        clock: Clock | None = None,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        max_queued: int = DEFAULT_MAX_QUEUED_RUNS,
    ) -> None:
        self.config = config
        self.history = history
        self.queue = queue
        self.bus = bus
        self.worker = worker
        self.clock = clock or SystemClock()
        self.idempotency_ttl = idempotency_ttl
        self.max_queued = max_queued
        self._workflows = Engine(config, step_types)  # never runs: resolves workflow keys
        self._closed = False

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
        """As ``RunManager.submit``, deciding in the shared database."""
        self._open()
        spec = self._workflows.workflow(workflow)
        values = coerce_params(workflow, spec.params, params or {})
        run_id = new_run_id()
        if idempotency_key is not None:
            earlier = await self._earlier(spec.key, idempotency_key, run_id)
            if earlier is not None:
                return earlier, False
        try:
            limit, skip_at = await self._admit(spec.key, spec.concurrency, overlap)
            self._open()
            done = await asyncio.to_thread(
                self.queue.enqueue,
                run_id,
                spec.key,
                params=values,
                trigger=trigger,
                rerun_of=rerun_of,
                reuse=None if not reuse else {i: s.to_dict() for i, s in reuse.items()},
                limit=limit,
                skip_at=skip_at,
                max_queued=self.max_queued,
            )
            if done.full:
                raise QueueFull(
                    f"the run queue is full ({self.max_queued} runs wait); try again later",
                    retry_after=QUEUE_RETRY_AFTER,
                )
            if done.blocking is not None:
                raise await self._skipped(spec.key, trigger, done.blocking, done.going, overlap)
        except BaseException:
            if idempotency_key is not None:
                await asyncio.to_thread(self.queue.forget_key, spec.key, idempotency_key, run_id)
            raise
        run = Run(
            run_id=run_id,
            workflow=spec.key,
            status=RunStatus.QUEUED,
            started_at=format_timestamp(self.clock.now()),
            trigger=trigger,
            params=shown_params(spec.params, values),
            rerun_of=rerun_of,
        )
        await asyncio.to_thread(self._record_queued, run)
        return run, True

    async def rerun(
        self,
        run_id: str,
        *,
        from_failed: bool = False,
        params: Mapping[str, object] | None = None,
        trigger: str = "api",
    ) -> Run:
        """As ``RunManager.rerun``."""
        old = await asyncio.to_thread(self.get, run_id)
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
        """The run's record once it has finished (in any process), or as it is after
        ``timeout`` seconds. Raises ``NotFound`` for an unknown run."""
        run = await self._read(run_id)
        deadline = asyncio.get_running_loop().time() + max(timeout, 0)
        while not run.status.finished:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await asyncio.sleep(min(POLL, left))
            run = await self._read(run.run_id)
        return run

    async def cancel(self, run_id: str) -> Run:
        """Cancel a queued or running run of any process; its record comes back.

        Raises ``NotFound`` for an unknown run and ``Conflict`` for one that has ended.
        """
        run = await self._read(run_id)
        if run.status.finished:
            raise Conflict(f"run {run.run_id} has already finished ({run.status.value})")
        outcome = await asyncio.to_thread(self.queue.request_cancel, run.run_id)
        if outcome == "queued":
            ended = self._end(run, RunStatus.CANCELLED, CANCELLED_REASON)
            await asyncio.to_thread(self._record_finished, ended)
            self.bus.emit(
                "workflow.completed",
                ended.run_id,
                ended.workflow,
                status=ended.status.value,
                verdict=ended.verdict.value if ended.verdict else "failed",
                duration_ms=0.0,
                steps=dict(collections.Counter(step.status.value for step in ended.steps)),
                tests_total=None,
                tests_failed=None,
                reason=CANCELLED_REASON,
                trigger=ended.trigger,
            )
            return ended
        if outcome is None:
            run = await self._read(run.run_id)
            if run.status.finished:
                raise Conflict(f"run {run.run_id} has already finished ({run.status.value})")
            raise Conflict(
                f"run {run.run_id} is {run.status.value} outside the queue (an `aegis run`"
                " of its own); it cannot be cancelled from here"
            )
        return await self.wait(run.run_id, CANCEL_WAIT)

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop accepting runs; the embedded worker drains for up to ``timeout`` seconds
        and hands back what still runs. Runs waiting in the shared queue stay there."""
        self._closed = True
        if self.worker is not None:
            await self.worker.stop(timeout)

    # ------------------------------------------------------- from any thread

    def get(self, run_id: str) -> Run | None:
        return self.history.get(run_id)

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
        page = self.history.list(workflow, status, limit, offset, trigger=trigger, before=before)
        return page, self.history.count(workflow, status, trigger=trigger)

    def active(self) -> int:
        """How many runs this process's worker is running."""
        return 0 if self.worker is None else self.worker.active()

    def queued(self) -> int:
        """How many runs wait in the shared queue (0 when it cannot be read)."""
        try:
            return self.queue.queued_count()
        except Exception:
            return 0

    # ----------------------------------------------------------------- inside

    def _open(self) -> None:
        if self._closed:
            raise Conflict("not accepting runs: the server is shutting down")

    async def _read(self, run_id: str) -> Run:
        run = await asyncio.to_thread(self.get, run_id)
        if run is None:
            raise NotFound(f"unknown run '{run_id}'")
        return run

    async def _earlier(self, workflow: str, key: str, run_id: str) -> Run | None:
        """The run an unexpired ``key`` names (``None``: the key is now ``run_id``'s).

        A run in the queue whose record is not written yet (its submitter is at it) comes
        back as a ``queued`` record made here. A run neither recorded nor queued may be
        about to be (its submitter is applying the rules); one still so after
        ``EARLIER_GRACE`` seconds never will be (its submitter died, or it was refused or
        pruned): the key is given up, and the new run takes it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EARLIER_GRACE
        while True:
            earlier = await asyncio.to_thread(
                self.queue.claim_key, workflow, key, run_id, self.idempotency_ttl
            )
            if earlier is None:
                return None
            run = await asyncio.to_thread(self.get, earlier)
            if run is not None:
                return run
            if await asyncio.to_thread(self.queue.contains, earlier):
                return Run(
                    run_id=earlier,
                    workflow=workflow,
                    status=RunStatus.QUEUED,
                    started_at=format_timestamp(self.clock.now()),
                    trigger="api",
                )
            if loop.time() > deadline:
                await asyncio.to_thread(self.queue.forget_key, workflow, key, earlier)
                deadline = loop.time() + EARLIER_GRACE
                continue
            await asyncio.sleep(POLL)

    async def _admit(
        self, workflow: str, concurrency: Any, overlap: str | None
    ) -> tuple[int | None, int | None]:
        """The rules for a new run: (its claim limit, the count that refuses it)."""
        rules = [] if overlap is None else [(1, overlap)]
        if concurrency is not None:
            rules.append((concurrency.limit, concurrency.on_conflict))
        skip_at = min((cap for cap, mode in rules if mode == "skip"), default=None)
        for cap, mode in rules:
            if mode != "cancel_running":
                continue
            going = await asyncio.to_thread(self.queue.oldest_of, workflow, 1_000_000)
            for run_id, _ in going[: max(len(going) - cap + 1, 0)]:
                with contextlib.suppress(Conflict, NotFound):  # ended meanwhile
                    await self.cancel(run_id)
        return min((cap for cap, _ in rules), default=None), skip_at

    async def _skipped(
        self, workflow: str, trigger: str, blocking: str, going: int, overlap: str | None
    ) -> Conflict:
        spec = self.config.workflows[workflow]
        rule = "overlap" if overlap == "skip" else "concurrency"
        cap = 1 if rule == "overlap" else (spec.concurrency.limit if spec.concurrency else 1)
        run = await asyncio.to_thread(self.get, blocking)
        status = run.status.value if run is not None else "queued"
        reason = (
            f"workflow '{workflow}' has {going} run(s) going (its {rule} limit"
            f" is {cap}); run {blocking} is {status}"
        )
        self.bus.emit(
            "run.skipped",
            "",
            workflow,
            trigger=trigger,
            rule=rule,
            limit=cap,
            blocking_run=blocking,
            reason=reason,
        )
        return Conflict(f"not started: {reason}", run_id=blocking)

    def _record_queued(self, run: Run) -> None:
        """In a thread: the ``queued`` record, written through, then the row made
        claimable (a worker's ``running`` must come after it)."""
        try:
            record_waiting(self.history, run)
            flush(self.history)
        finally:  # a store that failed must not strand the run
            self.queue.ready(run.run_id)

    def _record_finished(self, run: Run) -> None:
        self.history.finish(run)
        flush(self.history)

    def _end(self, run: Run, status: RunStatus, reason: str) -> Run:
        workflow = self.config.workflows.get(run.workflow)
        return end_record(workflow, run, status, reason, format_timestamp(self.clock.now()))
