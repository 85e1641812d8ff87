"""``aegis worker``: a worker without HTTP, claiming runs from the PostgreSQL queue.

It assembles what ``aegis serve`` does minus the server: the shared queue, the history
store, an event bus shared through the database (``share_events``: its runs' events reach
every replica and the webhook outbox), a ``Worker`` and, when the config has schedules, a
``Scheduler``
firing through the same ``SharedRunManager.submit`` the API uses (each tick claimed in the
store, so serve replicas and workers fire it once between them).

It runs on a loop of its own in the main thread. SIGTERM, SIGINT and SIGHUP stop it the
way a rolling deploy wants: no more claims, the running runs get ``--drain-timeout``
seconds to end, and what still runs then is handed back (requeued, or recorded
``interrupted``, per the workflow's ``on_interrupt``). A second signal while draining
changes nothing: the drain has its bound already.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from aegis.config.model import Config
from aegis.errors import UsageError

__all__ = ["DEFAULT_DRAIN_TIMEOUT", "run_worker"]

DEFAULT_DRAIN_TIMEOUT = 30.0


def _ignore(message: str) -> None:
    pass


def run_worker(
    config: Config,
    *,
    environ: Mapping[str, str],
    stderr: TextIO,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    warn: Callable[[str], None] = _ignore,
    step_types: Mapping[str, Any] | None = None,
) -> None:
    """Claim and run ``config``'s queued runs until a stop signal, then drain. Raises
    ``UsageError`` without a PostgreSQL ``history.url`` or when its database is unusable."""
    if config.history.url is None:
        raise UsageError(
            "worker: needs a PostgreSQL history (history.url: postgresql://...); with a"
            " history file, `aegis serve` runs its runs itself"
        )
    if drain_timeout < 0:
        raise UsageError(f"--drain-timeout must be 0 or more seconds, not {drain_timeout:g}")
    from aegis.api.shared_runs import open_queue

    queue, target = open_queue(config.history, environ)
    try:
        asyncio.run(_work(config, queue, target, environ, stderr, drain_timeout, warn, step_types))
    finally:
        queue.close()


async def _work(
    config: Config,
    queue: Any,
    target: Any,
    environ: Mapping[str, str],
    stderr: TextIO,
    drain: float,
    warn: Callable[[str], None],
    step_types: Mapping[str, Any] | None,
) -> None:
    from aegis.api.shared_runs import SharedRunManager
    from aegis.events import EventBus
    from aegis.history import open_recording_history
    from aegis.steps.registry import default_step_types
    from aegis.worker import Worker

    types = step_types if step_types is not None else default_step_types()
    store = open_recording_history(config.history, warn=warn, environ=environ)
    bus = EventBus()
    # its runs' events reach every replica's log and the webhook outbox, which it helps
    # deliver, as a replica does
    from aegis.history.pg_events import share_events

    shared = share_events(config, bus, environ=environ, warn=warn)
    worker = Worker(
        config,
        types,
        store,
        queue,
        bus=bus,
        environ=environ,
        slots=config.server.max_concurrent_runs,
        lease=config.history.lease,
        target=target,
    )
    runs = SharedRunManager(
        config, types, store, queue, bus=bus, max_queued=config.server.max_queued_runs
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    working = asyncio.ensure_future(worker.run())
    schedules = _schedules(config, runs, store)
    try:
        print(
            f"aegis: worker {worker.id} working on {target.display()} (Ctrl-C to stop)",
            file=stderr,
            flush=True,
        )
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([working, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        print(f"aegis: stopping (draining up to {drain:g}s)", file=stderr, flush=True)
    finally:
        if schedules is not None:
            schedules.cancel()
            await asyncio.gather(schedules, return_exceptions=True)
        await worker.stop(drain)
        await asyncio.gather(working, return_exceptions=True)
        for signum in signals:
            loop.remove_signal_handler(signum)
        await asyncio.to_thread(store.close)
        await asyncio.to_thread(shared.close, 5.0)


def _schedules(config: Config, runs: Any, store: Any) -> asyncio.Task[Any] | None:
    """The config's schedules, firing on this loop through ``runs`` (none: ``None``)."""
    if not any(w.schedules for w in config.workflows.values()):
        return None
    from aegis.engine.clock import SystemClock
    from aegis.schedules import Scheduler

    async def fire(workflow: str, spec: Any) -> object:
        return await runs.submit(
            workflow, trigger="schedule", params=dict(spec.params), overlap=spec.overlap
        )

    scheduler = Scheduler(config.workflows.values(), fire, clock=SystemClock(), fires=store)
    return asyncio.ensure_future(scheduler.run())
