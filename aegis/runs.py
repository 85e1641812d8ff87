"""Running one workflow from a synchronous caller (the CLI): loop, signals, history.

``run_workflow`` owns an asyncio loop for the length of one run. SIGINT, SIGTERM and
SIGHUP cancel the run; the engine records it as ``cancelled`` and the record comes back,
so the caller can report it and exit 130. When the run has ended, ``report`` writes its
outputs; then the history store is closed, which waits for the run's last writes
(another process's lock may hold them up); only then do webhook deliveries still pending
(also of a cancelled run) get up to ``aegis.webhooks.EXIT_WAIT`` seconds. A SIGTERM or
SIGHUP after the run has ended ends that wait, never the outputs nor the record. With a
PostgreSQL ``history.url`` the events go to its table (so every ``aegis serve`` replica
shows them) and the webhooks to its outbox, which this process delivers itself: the wait
is then for its own events' rows (``aegis.history.pg_events.share_events``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Coroutine, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from aegis.config.model import Config
from aegis.console import Console, ProgressPrinter
from aegis.engine.runner import Engine, new_run_id
from aegis.events import EventBus
from aegis.records import Run, StepResult
from aegis.steps.base import StepType

if TYPE_CHECKING:
    from aegis.history.pg_events import SharedEvents
    from aegis.webhooks import WebhookDispatcher

__all__ = ["STOP_SIGNALS", "run_workflow"]

# Signals that stop a run (and `aegis serve`), which is then recorded `cancelled`: Ctrl-C,
# a service manager's stop, and a closed terminal or SSH session.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def run_workflow(
    config: Config,
    key: str,
    *,
    record: bool = True,
    progress: Console | None = None,
    environ: Mapping[str, str],
    warn: Callable[[str], None],
    step_types: Mapping[str, StepType] | None = None,
    trigger: str = "cli",
    params: Mapping[str, object] | None = None,
    rerun_of: str | None = None,
    reuse: Mapping[int, StepResult] | None = None,
    report: Callable[[Run], object] | None = None,
) -> Run:
    """Run workflow ``key`` with ``params`` to its end and return its record.

    ``rerun_of`` and ``reuse`` make it a rerun (see ``Engine.run``).

    ``record=False`` keeps the record in memory only. ``report`` is called with the
    ended run before its last history writes and pending webhook deliveries are waited
    for. Raises ``NotFound`` for an unknown workflow, ``ParamError`` for params it cannot
    take, and ``KeyboardInterrupt`` if interrupted before the run was recorded.
    """
    from aegis.history import open_recording_history
    from aegis.history.memory import MemoryHistory

    if step_types is None:
        from aegis.steps.registry import default_step_types

        step_types = default_step_types()
    store = (
        open_recording_history(config.history, warn=warn, environ=environ)
        if record
        else MemoryHistory()
    )
    bus = EventBus()
    if progress is not None:
        bus.subscribe(ProgressPrinter(progress))
    hooks = _attach_webhooks(config, bus, environ, warn)
    engine = Engine(config, step_types, history=store, bus=bus, environ=environ)
    run_id = new_run_id()
    ending = _EndSignals()
    slot = None
    try:
        if record:  # a workflow's concurrency rule, held with the other hosts' runs
            from aegis.cli_slot import CliSlot

            slot = CliSlot.take(config, key, run_id, params or {}, environ=environ, warn=warn)
        try:
            going = engine.run(
                key, run_id=run_id, trigger=trigger, params=params, rerun_of=rerun_of, reuse=reuse
            )
            run = asyncio.run(_run_until_signalled(going))
        except (asyncio.CancelledError, KeyboardInterrupt):
            found = store.get(run_id)  # the record as queued for the store, if it began
            if found is None:
                raise KeyboardInterrupt from None
            run = found
        finally:
            ending.install()  # the loop, and its signal handlers, are gone
        if report is not None:
            report(run)
        return run
    finally:
        store.close()  # the run's record complete, also when a lock held it up
        if slot is not None:  # only now: the row must not go before the record is in
            slot.release()
        if hooks is not None:
            _finish_deliveries(hooks, ending)
        ending.restore()


def _attach_webhooks(
    config: Config, bus: EventBus, environ: Mapping[str, str], warn: Callable[[str], None]
) -> WebhookDispatcher | SharedEvents | None:
    if config.history.url:  # the events to the database; this process's webhooks via it
        from aegis.history.pg_events import share_events

        return share_events(
            config, bus, environ=environ, warn=warn, deliver="own" if config.webhooks else None
        )
    if not config.webhooks:
        return None
    from aegis.webhooks import WebhookDispatcher

    return WebhookDispatcher(config.webhooks).attach(bus)


def _finish_deliveries(
    hooks: WebhookDispatcher | SharedEvents, ending: _EndSignals | None = None
) -> None:
    """Give pending webhook deliveries a few seconds, so a CI run does not drop them."""
    from aegis.webhooks import EXIT_WAIT

    ending = ending or _EndSignals()
    # A Ctrl-C or SIGTERM while waiting stops the wait; the run is still returned.
    try:
        with contextlib.suppress(KeyboardInterrupt):
            ending.waiting = True
            hooks.close(0 if ending.received else EXIT_WAIT)
    finally:
        ending.waiting = False


class _EndSignals:
    """SIGTERM or SIGHUP after the run's loop has ended: noted while the outputs are
    written, so they are finished; while deliveries are waited for, it ends the wait.
    (SIGINT is Python's KeyboardInterrupt there already.)"""

    def __init__(self) -> None:
        self.received = False
        self.waiting = False
        self._previous: dict[int, Any] = {}
        self._installed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread() or self._installed:
            return
        for signum in STOP_SIGNALS:
            if signum != signal.SIGINT:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        self._installed = True

    def restore(self) -> None:
        if self._installed:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
            self._installed = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received = True
        if self.waiting:
            raise KeyboardInterrupt


async def _run_until_signalled(run: Coroutine[Any, Any, Run]) -> Run:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(run)
    installed = []
    for signum in STOP_SIGNALS:
        try:
            loop.add_signal_handler(signum, task.cancel)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # no signals here
            pass
    try:
        return await task
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
