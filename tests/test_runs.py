"""Running a workflow from synchronous code: signals cancel it, and it is still recorded."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any

import pytest
from fakes import config, step, step_type

from aegis.records import RunStatus, StepStatus
from aegis.runs import run_workflow
from aegis.steps.base import StepContext


async def signal_self(ctx: StepContext) -> dict[str, Any]:
    os.kill(os.getpid(), int(ctx.spec.params["signal"]))
    await asyncio.sleep(60)  # the signal cancels this wait
    return {}


async def ok(ctx: StepContext) -> dict[str, Any]:
    return {"ok": True}


TYPES = {"signal": step_type("signal", signal_self), "ok": step_type("ok", ok)}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_cancels_the_run_and_the_record_comes_back(signum: int) -> None:
    cfg = config(step("signal", params={"signal": int(signum)}), step("ok"))
    warnings: list[str] = []
    run = run_workflow(cfg, "wf", environ={}, warn=warnings.append, step_types=TYPES)
    assert run.status is RunStatus.CANCELLED
    assert [s.status for s in run.steps] == [StepStatus.CANCELLED, StepStatus.SKIPPED]
    assert warnings == []
    # the handlers are gone again: the default SIGINT behaviour is back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_runs_outside_the_main_thread_without_signal_handlers() -> None:
    results: list[Any] = []
    thread = threading.Thread(
        target=lambda: results.append(
            run_workflow(config(step("ok")), "wf", environ={}, warn=print, step_types=TYPES)
        )
    )
    thread.start()
    thread.join(30)
    assert results and results[0].status is RunStatus.SUCCEEDED


class Waiting:
    """Pending deliveries that take as long as they are given; what each close got."""

    def __init__(self, signal_first: bool = False) -> None:
        self.timeouts: list[float] = []
        self.signal_first = signal_first

    def close(self, timeout: float) -> bool:
        self.timeouts.append(timeout)
        if self.signal_first:
            os.kill(os.getpid(), signal.SIGTERM)
        return threading.Event().wait(timeout)  # a signal handler's exception ends it


def test_a_sigterm_during_the_exit_wait_ends_the_wait_only() -> None:
    from aegis.runs import _EndSignals, _finish_deliveries
    from aegis.webhooks import EXIT_WAIT

    ending = _EndSignals()
    ending.install()
    try:
        hooks = Waiting(signal_first=True)
        _finish_deliveries(hooks, ending)  # type: ignore[arg-type]
        assert hooks.timeouts == [EXIT_WAIT] and ending.received and not ending.waiting
        # a SIGTERM noted before the wait (while outputs were written): no wait at all
        later = Waiting()
        _finish_deliveries(later, ending)  # type: ignore[arg-type]
        assert later.timeouts == [0]
    finally:
        ending.restore()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
