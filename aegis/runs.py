"""Running one workflow from a synchronous caller (the CLI): loop, signals, history.

``run_workflow`` owns an asyncio loop for the length of one run. SIGINT, SIGTERM and
SIGHUP cancel the run; the engine records it as ``cancelled`` and the record comes back,
so the caller can report it and exit 130. Webhook deliveries still pending at the end (also of a
cancelled run) get up to ``aegis.webhooks.EXIT_WAIT`` seconds before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from aegis.config.model import Config
from aegis.console import Console, ProgressPrinter
from aegis.engine.runner import Engine, new_run_id
from aegis.events import EventBus
from aegis.records import Run
from aegis.steps.base import StepType

if TYPE_CHECKING:
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
) -> Run:
    """Run workflow ``key`` to its end and return its record.

    ``record=False`` keeps the record in memory only. Raises ``NotFound`` for an unknown
    workflow and ``KeyboardInterrupt`` if interrupted before the run was recorded.
    """
    from aegis.history import open_history
    from aegis.history.memory import MemoryHistory

    if step_types is None:
        from aegis.steps.registry import default_step_types

        step_types = default_step_types()
    store = open_history(config.history, warn=warn) if record else MemoryHistory()
    bus = EventBus()
    if progress is not None:
        bus.subscribe(ProgressPrinter(progress))
    hooks = _attach_webhooks(config, bus)
    engine = Engine(config, step_types, history=store, bus=bus, environ=environ)
    run_id = new_run_id()
    try:
        try:
            return asyncio.run(_run_until_signalled(engine, key, run_id, trigger))
        except (asyncio.CancelledError, KeyboardInterrupt):
            run = store.get(run_id)
            if run is None:
                raise KeyboardInterrupt from None
            return run
    finally:
        store.close()
        if hooks is not None:
            _finish_deliveries(hooks)


def _attach_webhooks(config: Config, bus: EventBus) -> WebhookDispatcher | None:
    if not config.webhooks:
        return None
    from aegis.webhooks import WebhookDispatcher

    return WebhookDispatcher(config.webhooks).attach(bus)


def _finish_deliveries(hooks: WebhookDispatcher) -> None:
    """Give pending webhook deliveries a few seconds, so a CI run does not drop them."""
    from aegis.webhooks import EXIT_WAIT

    # A second Ctrl-C while waiting stops the wait; the run is still returned.
    with contextlib.suppress(KeyboardInterrupt):
        hooks.close(EXIT_WAIT)


async def _run_until_signalled(engine: Engine, key: str, run_id: str, trigger: str) -> Run:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(engine.run(key, run_id=run_id, trigger=trigger))
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
