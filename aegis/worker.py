"""``Worker``: claims runs from the PostgreSQL queue and runs them with the engine.

``aegis serve`` on PostgreSQL embeds one; ``aegis worker`` (``aegis.worker_command``) is
one without HTTP. Any number of them share a database, each running at most
``server.max_concurrent_runs`` runs at once.

Why it is built this way:

* **One loop, no blocking.** The worker lives on an event loop beside its runs; every
  queue and store call runs in a thread. Claims and renewals have a thread of their own,
  so a store slow to write (its flushes) never delays a renewal past the lease; reaping
  runs beside the loop, never in the way of the next renewal. It wakes when a run is
  enqueued (``Waker``'s NOTIFY), when one of its runs ends, and at least every third of
  the lease, which is when it renews its leases (and so tells the others it lives).
* **A lease, not a heartbeat of the process.** A claim is good until ``lease_until``;
  a worker that stops renewing (killed, frozen, cut off) loses its runs to whichever
  worker reaps next: they are recorded ``interrupted`` with the steps that had ended,
  or, for a workflow with ``on_interrupt: requeue``, wait in the queue again.
* **A lost claim is let go quietly.** When a renewal shows that a run is no longer ours
  (reaped while we were cut off), its engine is cancelled with its recorder muted: the
  record now belongs to the reaper or to the run's next worker.
* **Cancels from anywhere.** Any replica sets ``cancel_requested`` and NOTIFYs; the
  worker holding the run sees it at its next renewal (at once, on the notification) and
  cancels the engine, which records ``cancelled`` as a cancel in one process does.
* **Draining.** ``stop(drain)`` stops claiming, lets running runs end for up to ``drain``
  seconds, then cancels the rest and hands them back as a dead worker's are reaped.
* **The record is written before the row goes.** A finished run's record is flushed to
  the store before its queue row is deleted, so a worker killed in between leaves a row
  to reap, never a record stuck ``running``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from aegis.config.model import Config, WorkflowSpec
from aegis.engine.clock import Clock, SystemClock
from aegis.engine.runner import ClientFactory, Engine, skipped_result
from aegis.events import EventBus
from aegis.history import HistoryStore
from aegis.history.pg_queue import CANCEL_CHANNEL, Claim, PgQueue, Waker
from aegis.records import Run, RunStatus, StepResult, Verdict, format_timestamp
from aegis.steps.base import StepType

__all__ = ["DEFAULT_POLL", "INTERRUPTED_REASON", "Worker", "end_record", "flush", "record_waiting"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_POLL = 2.0  # seconds between looks at the queue when no NOTIFY comes
INTERRUPTED_REASON = "run interrupted: its worker stopped"
KEY_TTL_SWEEP = 1000  # idempotency keys expired per upkeep at most


def end_record(
    workflow: WorkflowSpec | None, run: Run, status: RunStatus, reason: str, now: str
) -> Run:
    """``run`` ended with ``status``: the steps that ended keep their records, the rest
    are skipped with ``reason``."""
    ended = {step.name: step for step in run.steps}
    steps = (
        tuple(ended.get(spec.name) or skipped_result(spec, reason) for spec in workflow.steps)
        if workflow is not None
        else tuple(ended.values())
    )
    return replace(
        run,
        status=status,
        verdict=Verdict.FAILED,
        steps=steps,
        finished_at=now,
        duration_ms=run.duration_ms or 0.0,
    )


def record_waiting(store: HistoryStore, run: Run) -> None:
    """Write the record of ``run``, waiting in the queue (status ``queued``).

    Through ``finish``, not ``start``: a store keeps alive the runs it started (its
    heartbeat re-asserts their status until it finishes them), and a waiting run is no
    process's to keep alive. The worker that claims it starts it through its own store,
    and finishes it there. Stores prune and count as finished only finished runs."""
    store.finish(run)


def flush(store: HistoryStore) -> None:
    """Wait until ``store``'s queued writes are made (a ``BackgroundWrites`` queues them)."""
    wait = getattr(store, "flush", None)
    if callable(wait):
        wait(10.0)


class _Recorder:
    """The store one run's engine writes to, keeping the run's live record; ``muted``
    once the run is no longer this worker's to record."""

    def __init__(self, store: HistoryStore, run: Run) -> None:
        self.store = store
        self.record = run
        self.muted = False

    def start(self, run: Run) -> None:
        self.record = run
        if not self.muted:
            self.store.start(run)

    def update_step(self, run_id: str, step: StepResult) -> None:
        self.record = replace(self.record, steps=(*self.record.steps, step))
        if not self.muted:
            self.store.update_step(run_id, step)

    def finish(self, run: Run) -> None:
        self.record = run
        if not self.muted:
            self.store.finish(run)


@dataclass
class _Job:
    claim: Claim
    recorder: _Recorder
    task: asyncio.Task[Any] | None = None
    fate: str | None = None  # "lost" or "handed back": the end is not ours to settle
    cancelled: bool = False  # cancelled once already (a second cancel would cut its cleanup)


class Worker:
    """Claims queued runs of ``config``'s workflows from ``queue`` while it has free slots
    (``slots``), runs them, and records them in ``history``. ``lease`` is seconds;
    ``target`` (a ``PgTarget``) is where it LISTENs for NOTIFYs (none: it polls)."""

    def __init__(
        self,
        config: Config,
        step_types: Mapping[str, StepType],
        history: HistoryStore,
        queue: PgQueue,
        *,
        bus: EventBus,
        environ: Mapping[str, str],
        slots: int,
        lease: float,
        kind: str = "worker",
        target: Any = None,
        poll: float = DEFAULT_POLL,
        idempotency_ttl: float = 86400.0,  # RunManager's: a key repeated within 24 h
        clock: Clock | None = None,
        open_client: ClientFactory | None = None,
    ) -> None:
        self.config = config
        self.history = history
        self.queue = queue
        self.bus = bus
        self.slots = max(1, slots)
        self.lease = lease
        self.kind = kind
        self.poll = poll
        self.idempotency_ttl = idempotency_ttl
        self.clock = clock or SystemClock()
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._target = target
        self._engine_args: dict[str, Any] = dict(
            bus=bus, clock=self.clock, open_client=open_client, environ=environ
        )
        self._step_types = step_types
        self._jobs: dict[str, _Job] = {}
        self._settling: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._cancel_seen = False
        self._kick: asyncio.Event | None = None
        self._reaping: asyncio.Future[Any] | None = None
        self._registered = False
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._requeue = tuple(k for k, w in config.workflows.items() if w.on_interrupt == "requeue")

    # ------------------------------------------------------------ public

    def active(self) -> int:
        """How many runs this worker is running."""
        return len(self._jobs)

    def running(self) -> list[str]:
        """The ids of the runs this worker is running."""
        return list(self._jobs)

    async def run(self) -> None:
        """Claim and run until ``stop`` has handed every run back or seen it end."""
        self._loop = asyncio.get_running_loop()
        self._kick = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aegis-leases")
        await self._guarded(self._register())
        waker = Waker(self._target, self._notified).start() if self._target else None
        upkeep_at = 0.0
        try:
            while not (self._stopping and not self._jobs):
                self._kick.clear()
                now = self._loop.time()
                if now >= upkeep_at or self._cancel_seen:
                    self._cancel_seen = False
                    await self._guarded(self._upkeep())
                    upkeep_at = self._loop.time() + self.lease / 3
                if not self._stopping:
                    await self._guarded(self._claim())
                wait = min(self.poll, max(upkeep_at - self._loop.time(), 0.0))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), wait)
        finally:
            if waker is not None:
                await asyncio.to_thread(waker.stop)
            if self._settling:
                await asyncio.wait(list(self._settling))
            if self._reaping is not None:
                await asyncio.gather(self._reaping, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.queue.forget, self.id)
            self._executor.shutdown(wait=False)
            self._executor = None

    async def stop(self, drain: float = 0.0) -> None:
        """Stop claiming; give running runs ``drain`` seconds to end, then cancel the rest
        and hand them back (requeued or recorded ``interrupted``, per ``on_interrupt``)."""
        self._stopping = True
        self._wake()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.queue.draining, self.id)
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        if tasks and drain > 0:
            await asyncio.wait(tasks, timeout=drain)
        late = [job for job in self._jobs.values() if not (job.task and job.task.done())]
        for job in late:
            job.fate = "handed back"
            job.recorder.muted = True
            if job.task is not None:
                job.task.cancel()
        pending = [job.task for job in late if job.task is not None]
        if pending:
            await asyncio.wait(pending)
        if late:
            log.info("worker %s: handing back %d run(s)", self.id, len(late))
            try:
                await asyncio.to_thread(self._hand_back, [job.recorder.record for job in late])
            except Exception as exc:  # their leases run out; another worker takes them then
                from aegis.history.pg_connect import describe_error

                log.warning(
                    "worker %s: cannot hand back %d run(s) (%s); they are taken back when"
                    " their leases run out",
                    self.id,
                    len(late),
                    describe_error(exc),
                )
        for job in late:
            self._jobs.pop(job.claim.run_id, None)
        self._wake()

    # ------------------------------------------------------------ inside

    def _notified(self, channel: str) -> None:
        """From the waker's thread: a run was enqueued, or a cancel asked for."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if channel == CANCEL_CHANNEL:
            loop.call_soon_threadsafe(self._cancel_noticed)
        else:
            loop.call_soon_threadsafe(self._wake)

    def _cancel_noticed(self) -> None:
        if self._jobs:
            self._cancel_seen = True
            self._wake()

    def _wake(self) -> None:
        if self._kick is not None:
            self._kick.set()

    async def _guarded(self, step: Any) -> None:
        try:
            await step
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database is away: try again at the next round
            from aegis.history.pg_connect import describe_error

            log.warning("worker %s: the queue cannot be reached (%s)", self.id, describe_error(exc))

    async def _on_queue(self, call: Callable[..., _T], *args: Any) -> _T:
        """``call(*args)`` on the worker's own thread for claims and renewals: they never
        wait behind record writes (a store's flush) in the loop's shared executor."""
        loop = asyncio.get_running_loop()
        assert self._executor is not None, "the worker is not running"
        return await loop.run_in_executor(self._executor, functools.partial(call, *args))

    async def _register(self) -> None:
        await asyncio.to_thread(
            self.queue.register,
            self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            kind=self.kind,
            slots=self.slots,
        )
        self._registered = True

    async def _claim(self) -> None:
        free = self.slots - len(self._jobs)
        if free < 1:
            return
        claims = await self._on_queue(self.queue.claim, self.id, free, self.lease)
        for claim in claims:
            self._start(claim)

    def _start(self, claim: Claim) -> None:
        queued = Run(
            run_id=claim.run_id,
            workflow=claim.workflow,
            status=RunStatus.QUEUED,
            started_at=format_timestamp(self.clock.now()),
            trigger=claim.trigger,
            rerun_of=claim.rerun_of,
        )
        recorder = _Recorder(self.history, queued)
        job = self._jobs[claim.run_id] = _Job(claim, recorder)
        engine = Engine(self.config, self._step_types, history=recorder, **self._engine_args)
        reuse = (
            {index: StepResult.from_dict(step) for index, step in claim.reuse.items()}
            if claim.reuse
            else None
        )
        job.task = asyncio.ensure_future(
            engine.run(
                claim.workflow,
                trigger=claim.trigger,
                run_id=claim.run_id,
                params=claim.params,
                rerun_of=claim.rerun_of,
                reuse=reuse,
            )
        )
        job.task.add_done_callback(lambda task: self._ended(job, task))

    def _ended(self, job: _Job, task: asyncio.Task[Any]) -> None:
        """A run's task is done (done callback: runs even for a task that never began)."""
        if job.fate is not None:
            if job.fate == "lost":
                self._jobs.pop(job.claim.run_id, None)
            return  # handed back: ``stop`` settles it
        settling = asyncio.ensure_future(self._settle(job, task))
        self._settling.add(settling)
        settling.add_done_callback(self._settling.discard)

    async def _settle(self, job: _Job, task: asyncio.Task[Any]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("run %s ended abnormally", job.claim.run_id, exc_info=error)
        record = job.recorder.record
        if not record.status.finished:  # the engine never began, or broke down
            status = RunStatus.CANCELLED if error is None else RunStatus.FAILED
            reason = "run cancelled" if error is None else f"run aborted: {error!r}"
            job.recorder.finish(self._ended_record(record, status, reason))
        try:
            await asyncio.to_thread(self._finish_row, job.claim.run_id)
        except Exception:
            log.exception("worker %s: cannot remove run %s from the queue", self.id, record.run_id)
        finally:
            self._jobs.pop(job.claim.run_id, None)
            self._wake()

    def _finish_row(self, run_id: str) -> None:
        flush(self.history)
        self.queue.finish(run_id, self.id)

    async def _upkeep(self) -> None:
        """Renew leases, act on cancels and lost claims, reap dead workers' runs."""
        if not self._registered:  # the database was away when the worker began
            await self._register()
        held = await self._on_queue(self.queue.renew, self.id, self.lease)
        for run_id, job in list(self._jobs.items()):
            if job.task is None or job.task.done() or job.fate is not None:
                continue
            if run_id not in held:
                log.warning("worker %s: run %s was taken back from it", self.id, run_id)
                job.fate = "lost"
                job.recorder.muted = True
                job.task.cancel()
            elif held[run_id] and not job.cancelled:
                job.cancelled = True
                job.task.cancel()
        if self._reaping is None or self._reaping.done():  # never holds up the renewals
            self._reaping = asyncio.ensure_future(self._guarded(asyncio.to_thread(self._reap)))

    def _reap(self) -> None:
        again, gone = self.queue.reap(self._requeue)
        waiting = [claim.run_id for claim in again if self._mark(claim.run_id, None)]
        for claim in gone:
            status = RunStatus.CANCELLED if claim.cancel_requested else RunStatus.INTERRUPTED
            reason = "run cancelled" if claim.cancel_requested else INTERRUPTED_REASON
            self._mark(claim.run_id, (status, reason))
        if again or gone:
            log.info("worker %s: reaped %d run(s) of stopped workers", self.id, len(again + gone))
            flush(self.history)
        for run_id in waiting:  # recorded queued: now they may be claimed (and run) again
            self.queue.ready(run_id)
        for claim in again:  # ended before their worker could say so: never run twice
            if claim.run_id not in waiting:
                self.queue.remove(claim.run_id)
        self.queue.expire_keys(self.idempotency_ttl, KEY_TTL_SWEEP)
        self.queue.forget_silent(max(self.lease * 10, 300.0))

    def _mark(self, run_id: str, end: tuple[RunStatus, str] | None) -> bool:
        """Record a reaped run: waiting again (``end`` None), or ended. False when its
        record says it had ended already (its worker died before removing its row)."""
        try:
            run = self.history.get(run_id)
        except Exception:  # unreadable: it waits (or ends) all the same
            log.exception("worker %s: cannot read run %s", self.id, run_id)
            return True
        if run is not None and run.status.finished:
            return False
        if run is None:
            return True
        if end is None:
            record_waiting(self.history, replace(run, status=RunStatus.QUEUED))
        else:
            self.history.finish(self._ended_record(run, *end))
        return True

    def _hand_back(self, records: list[Run]) -> None:
        for record in records:
            if record.workflow in self._requeue and self.queue.release(record.run_id, self.id):
                waiting = replace(record, status=RunStatus.QUEUED, finished_at=None)
                record_waiting(self.history, waiting)
                flush(self.history)
                self.queue.ready(record.run_id)
                continue
            self.history.finish(
                self._ended_record(record, RunStatus.INTERRUPTED, INTERRUPTED_REASON)
            )
            flush(self.history)
            self.queue.finish(record.run_id, self.id)
        flush(self.history)

    def _ended_record(self, run: Run, status: RunStatus, reason: str) -> Run:
        workflow = self.config.workflows.get(run.workflow)
        return end_record(workflow, run, status, reason, format_timestamp(self.clock.now()))
