"""The engine: runs one workflow and records what happened.

It reads top-down in layers, each short:

    Engine.run            a run: record it, open the run's HTTP client, apply the workflow
                          timeout, turn the outcome into a status and a verdict
    _Execution.run_batches  batches in order; a batch's results feed later batches only
    _Execution.run_batch    one batch: a single step, or ``asyncio.gather`` of parallel ones
    _Execution.run_step     conditions, then attempts with retries, then the step record
    _Execution.attempts     the retry loop: backoff, ``retry_on``, the step deadline
    _Execution.attempt      one try under ``asyncio.wait_for``; every failure gets a kind

Nothing here raises on a failing step: a failure is data in the record. Only
cancellation propagates, after it has been recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from aegis.config.model import Config, StepSpec, WorkflowSpec
from aegis.config.params import coerce_params, secret_param_values, shown_params
from aegis.engine.clock import Clock, SystemClock
from aegis.engine.conditions import skip_reason
from aegis.engine.retry import retry_delay, should_retry
from aegis.engine.state import RunState
from aegis.errors import NotFound, StepError
from aegis.events import EventBus
from aegis.records import (
    Attempt,
    Run,
    RunStatus,
    StepResult,
    StepStatus,
    Verdict,
    format_timestamp,
    make_record,
)
from aegis.secrets import MIN_SECRET, Redactor, secret_values
from aegis.steps.base import StepContext, StepType
from aegis.templates import TemplateError, compile_value, has_templates, resolve

__all__ = ["Engine", "batches", "new_run_id", "skipped_result"]

log = logging.getLogger("aegis.engine")

# ``asyncio.timeout`` (3.11+) bounds an attempt, inline: ``wait_for`` made a task for each
# call before Python 3.12 (a third of the engine's cost per step there), and a helper
# coroutine cost one more frame per attempt.

ClientFactory = Callable[[], AbstractAsyncContextManager[Any]]


def new_run_id() -> str:
    # 48 random bits, as the first 12 hex digits of a uuid4 were, without importing uuid
    return os.urandom(6).hex()


def batches(steps: Sequence[StepSpec]) -> list[list[tuple[int, StepSpec]]]:
    """Group steps into batches: consecutive ``parallel`` steps form one, others stand alone."""
    groups: list[list[tuple[int, StepSpec]]] = []
    for index, spec in enumerate(steps):
        if spec.parallel and groups and groups[-1][-1][1].parallel:
            groups[-1].append((index, spec))
        else:
            groups.append([(index, spec)])
    return groups


def skipped_result(spec: StepSpec, reason: str) -> StepResult:
    """The record of a step that did not run, and why."""
    return StepResult(
        name=spec.name,
        type=spec.type,
        service=spec.service,
        status=StepStatus.SKIPPED,
        skip_reason=reason,
    )


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


@contextlib.asynccontextmanager
async def _no_client() -> AsyncIterator[None]:
    yield None


def _default_client_factory() -> AbstractAsyncContextManager[Any]:
    from aegis.steps.http import open_client  # httpx is imported only when a run needs it

    return open_client()


class Engine:
    """Runs workflows of one config.

    ``history`` (a store with ``start``/``update_step``/``finish``) records every run;
    ``bus`` receives the run's events; ``clock`` supplies time, sleep and jitter;
    ``open_client`` makes the run's shared HTTP client.
    """

    def __init__(
        self,
        config: Config,
        step_types: Mapping[str, StepType],
        *,
        history: Any = None,
        bus: EventBus | None = None,
        clock: Clock | None = None,
        open_client: ClientFactory | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.step_types = step_types
        self.history = history
        self.bus = bus or EventBus()
        self.clock = clock or SystemClock()
        self.open_client = open_client or _default_client_factory
        self.environ = os.environ if environ is None else environ
        # Services may echo the keys they were sent; nothing recorded may show them.
        self.redactor = Redactor(secret_values(config, self.environ))
        self._history_broken = False

    def workflow(self, key: str) -> WorkflowSpec:
        """The workflow called ``key``; raises ``NotFound`` naming the known ones."""
        try:
            return self.config.workflows[key]
        except KeyError:
            known = ", ".join(sorted(self.config.workflows)) or "none"
            raise NotFound(f"unknown workflow '{key}' (known: {known})") from None

    async def run(
        self,
        key: str,
        *,
        trigger: str = "cli",
        run_id: str | None = None,
        params: Mapping[str, object] | None = None,
        rerun_of: str | None = None,
        reuse: Mapping[int, StepResult] | None = None,
    ) -> Run:
        """Run workflow ``key`` to its end and return the finished record.

        ``params`` are the trigger's values for the workflow's params (checked and
        converted by ``coerce_params``). A rerun names the run it reruns (``rerun_of``);
        ``reuse`` holds the step records it carries over, by position
        (``aegis.engine.rerun.carried_steps``): those steps are not run again, their
        records count as if they had just ended.

        Raises ``NotFound`` for an unknown workflow and ``ParamError`` for params it
        cannot take, before anything is recorded. A cancelled run is recorded as
        ``cancelled`` before ``CancelledError`` propagates.
        """
        workflow = self.workflow(key)
        values = (
            coerce_params(key, workflow.params, params or {}) if workflow.params or params else {}
        )
        run = Run(
            run_id=run_id or new_run_id(),
            workflow=key,
            status=RunStatus.RUNNING,
            started_at=format_timestamp(self.clock.now()),
            trigger=trigger,
            params=shown_params(workflow.params, values),
            rerun_of=rerun_of,
        )
        began = self.clock.monotonic()
        self._record("start", run)
        self.bus.emit(
            "workflow.started",
            run.run_id,
            key,
            name=workflow.name,
            steps=len(workflow.steps),
            trigger=trigger,
            **({"rerun_of": rerun_of} if rerun_of else {}),
        )
        execution = _Execution(self, workflow, run, values, reuse or {})
        try:
            status = await self._execute(execution, workflow)
        except asyncio.CancelledError:
            # cancelled from outside; a workflow timeout that came first still names the run
            if execution.stop_reason is not None:
                self._finish(run, execution, RunStatus.TIMED_OUT, began, execution.stop_reason)
            else:
                self._finish(run, execution, RunStatus.CANCELLED, began, "run cancelled")
            raise
        return self._finish(run, execution, status, began, execution.stop_reason)

    async def _execute(self, execution: _Execution, workflow: WorkflowSpec) -> RunStatus:
        """Run the batches under the workflow timeout; the run's status comes back."""
        needs_http = any(
            self.step_types[spec.type].service_needed(spec.params)
            for index, spec in enumerate(workflow.steps)
            if spec.type in self.step_types and index not in execution.reuse
        )
        main = asyncio.ensure_future(execution.run_batches(needs_http))
        timer = None
        if workflow.timeout is not None:
            timer = asyncio.ensure_future(execution.expire_after(main, workflow.timeout))
        try:
            # ``wait`` rather than ``await main``: a cancel from outside reaches this task
            # first, so it is known to have come before any timeout that fires later
            await asyncio.wait((main,))
        except asyncio.CancelledError:
            if timer is not None:
                timer.cancel()
            main.cancel()
            await asyncio.wait((main,))  # the steps record their cancellation
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if main.cancelled():  # only the timer cancels it
            return RunStatus.TIMED_OUT
        exc = main.exception()
        if exc is not None:  # a bug outside any step: record it, never lose the run
            log.error("run %s of %s aborted", execution.run_id, workflow.key, exc_info=exc)
            execution.stop_reason = f"run aborted: {type(exc).__name__}: {exc}"
            return RunStatus.FAILED
        execution.stop_reason = None  # every step ended before a timeout could stop one
        return RunStatus.FAILED if execution.state.any_failed else RunStatus.SUCCEEDED

    def _finish(
        self,
        run: Run,
        execution: _Execution,
        status: RunStatus,
        began: float,
        reason: str | None,
    ) -> Run:
        steps = execution.final_steps(reason or "not reached")
        state = execution.state
        # every step's reported tests count, parallel ones too; a verify closes what it fixed
        passed = status is RunStatus.SUCCEEDED and state.tests.open_count == 0
        verdict = Verdict.PASSED if passed else Verdict.FAILED
        finished = replace(
            run,
            status=status,
            verdict=verdict,
            steps=steps,
            finished_at=format_timestamp(self.clock.now()),
            duration_ms=_ms(self.clock.monotonic() - began),
        )
        self._record("finish", finished)
        counts = {s.value: 0 for s in StepStatus}
        for step in steps:
            counts[step.status.value] += 1
        tests = state.tests
        self.bus.emit(
            "workflow.completed",
            run.run_id,
            run.workflow,
            status=status.value,
            verdict=verdict.value,
            duration_ms=finished.duration_ms,
            steps=counts,
            tests_total=tests.total,
            tests_failed=tests.open_count if tests.total is not None else None,
            reason=reason,
            trigger=run.trigger,
        )
        return finished

    def _record(self, method: str, *args: Any) -> None:
        """Hand a record to the history store; a broken store never breaks a run."""
        if self.history is None:
            return
        try:
            getattr(self.history, method)(*args)
        except Exception:
            if not self._history_broken:
                log.exception("history store failed on %s; the run goes on", method)
            self._history_broken = True


class _Execution:
    """The mutable side of one run: results so far and the aggregates over them."""

    def __init__(
        self,
        engine: Engine,
        workflow: WorkflowSpec,
        run: Run,
        params: dict[str, object],
        reuse: Mapping[int, StepResult],
    ) -> None:
        self.engine = engine
        self.reuse = reuse
        self.clock = engine.clock
        self.workflow = workflow
        self.run_id = run.run_id
        self.state = RunState()
        found = secret_param_values(workflow.params, params) if workflow.params else ()
        secrets = [value for value in found if len(value) >= MIN_SECRET]
        # the run's secret params are hidden like the config's secrets
        self.redactor = (
            Redactor((*engine.redactor.secrets, *secrets)) if secrets else engine.redactor
        )
        # `with:` of each step made ready to resolve; None for a step without templates
        self.plans = [
            compile_value(dict(spec.params)) if spec.params and has_templates(spec.params) else None
            for spec in workflow.steps
        ]
        self.context: dict[str, Any] | None = None
        if any(plan is not None for plan in self.plans):
            run_view = {"id": run.run_id, "workflow": workflow.key, "trigger": run.trigger}
            self.context = {"params": params, "steps": {}, "run": run_view, "failures": []}
        self.results: dict[int, StepResult] = {}
        self.stop_reason: str | None = None
        self.steps_ended = False
        self.http: Any = None
        self._failure_seen = False

    async def expire_after(self, main: asyncio.Future[None], timeout: float) -> None:
        """After ``timeout`` seconds of the engine's clock, stop ``main`` unless it has ended."""
        await self.clock.sleep(timeout)
        if self.steps_ended or main.done():  # the last step ended first: nothing to stop
            return
        self.stop_reason = f"workflow timeout after {_seconds(timeout)}"
        main.cancel()

    def final_steps(self, reason: str) -> tuple[StepResult, ...]:
        """Every step in workflow order; those never reached are skipped with ``reason``."""
        steps = []
        for index, spec in enumerate(self.workflow.steps):
            result = self.results.get(index)
            if result is None:
                result = skipped_result(spec, reason)
            steps.append(result)
        return tuple(steps)

    async def run_batches(self, needs_http: bool) -> None:
        opener = self.engine.open_client if needs_http else _no_client
        async with opener() as http:
            self.http = http
            for batch in batches(self.workflow.steps):
                results = await self.run_batch(batch)
                self.state.add_batch(results)
                if self.context is not None:
                    self._remember(results)
            self.steps_ended = True  # closing the client is not worth a timeout

    def _remember(self, results: list[StepResult]) -> None:
        """What templates of later steps can read of a batch's results."""
        assert self.context is not None
        for result in results:
            data = result.data
            outputs = data.get("outputs")
            self.context["steps"][result.name] = {
                "data": data,
                "outputs": outputs if isinstance(outputs, dict) else {},
                "status": result.status.value,
            }
        self.context["failures"] = [
            {"test": test, "message": failure.get("message")}
            for test, failure in self.state.open_failures.items()
        ]

    async def run_batch(self, batch: list[tuple[int, StepSpec]]) -> list[StepResult]:
        if len(batch) == 1:
            index, spec = batch[0]
            return [await self.run_step(index, spec)]
        return list(await asyncio.gather(*(self.run_step(i, s) for i, s in batch)))

    async def run_step(self, index: int, spec: StepSpec) -> StepResult:
        if self.reuse and index in self.reuse:
            return self._end(index, self.reuse[index])
        reason = skip_reason(spec.condition, self.state)
        if reason is not None:
            return self._end(index, skipped_result(spec, reason))
        step_type = self.engine.step_types[spec.type]
        service = self.engine.config.services.get(spec.service) if spec.service else None
        ctx = StepContext(
            spec=spec,
            workflow=self.workflow,
            run_id=self.run_id,
            service=service,
            state=self.state,
            http=self.http,
            environ=self.engine.environ,
            config=self.engine.config,
            clock=self.clock,
            redactor=self.redactor,  # the run's, with its secret params
        )
        self._emit("step.started", spec, attempts_allowed=spec.retries + 1)
        began = self.clock.monotonic()
        attempts: list[Attempt] = []
        try:
            data, error = await self.attempts(step_type, ctx, attempts, began, self.plans[index])
        except asyncio.CancelledError:
            result = self._result(spec, StepStatus.CANCELLED, began, attempts)
            self._end(index, replace(result, error=self.stop_reason or "run cancelled"))
            raise
        if error is None:
            return self._end(index, self._result(spec, StepStatus.SUCCEEDED, began, attempts, data))
        failed = replace(
            self._result(spec, StepStatus.FAILED, began, attempts, data),
            error=error.message,
            error_kind=error.kind,
        )
        return self._end(index, failed)

    async def attempts(
        self,
        step_type: StepType,
        ctx: StepContext,
        attempts: list[Attempt],
        began: float,
        plan: Any = None,
    ) -> tuple[dict[str, Any], StepError | None]:
        """Try up to ``retries + 1`` times; the data of the success, or the last attempt's
        data (what it did before it failed) and its error.

        ``plan`` is the step's ``with:`` from ``compile_value``, resolved before each try.
        """
        spec = ctx.spec
        deadline_at = began + spec.deadline if spec.deadline is not None else None
        error: StepError | None = None
        data: dict[str, Any] = {}
        for k in range(spec.retries + 1):
            limit, by_deadline = spec.timeout, False
            if deadline_at is not None:
                remaining = deadline_at - self.clock.monotonic()
                if remaining <= 0 and error is not None:
                    return data, _with_note(error, f"no retry: {deadline_note(spec)}")
                by_deadline = remaining < limit
                limit = min(limit, remaining)
            data, error = await self.attempt(
                step_type, ctx, k + 1, limit, by_deadline, attempts, plan, spec
            )
            if error is None:
                return data, None
            if k == spec.retries:
                break
            try:
                wait = self._next_wait(spec, k, error)
            except Exception as exc:  # a bug between attempts still ends in the step's record
                log.exception("step %s of run %s: choosing a retry failed", spec.name, ctx.run_id)
                return {}, _with_note(error, f"no retry: {type(exc).__name__}: {exc}")
            if wait is None:
                break
            if deadline_at is not None and self.clock.monotonic() + wait >= deadline_at:
                return data, _with_note(error, f"no retry: {deadline_note(spec)}")
            self._emit(
                "step.retrying",
                spec,
                attempt=k + 1,
                next_attempt=k + 2,
                wait_s=round(wait, 3),
                error=error.message,
                error_kind=error.kind,
            )
            await self.clock.sleep(wait)
        return data, error

    def _next_wait(self, spec: StepSpec, failed: int, error: StepError) -> float | None:
        """Seconds before the next attempt after ``failed`` (0-based), None for no retry."""
        if not should_retry(error, spec.retry_on):
            return None
        return retry_delay(spec, failed, error, self.clock.random)

    async def attempt(
        self,
        step_type: StepType,
        ctx: StepContext,
        number: int,
        limit: float,
        by_deadline: bool,
        attempts: list[Attempt],
        plan: Any = None,
        spec: StepSpec | None = None,
    ) -> tuple[dict[str, Any], StepError | None]:
        """One try under the step's timeout; appends its ``Attempt`` record.

        A failed try returns what it did before failing: the ``StepError``'s ``data``,
        else the step's ``ctx.progress``."""
        started_at = self.clock.timestamp()
        began = self.clock.monotonic()
        data: dict[str, Any] = {}
        error: StepError | None = None
        try:
            if plan is not None:
                ctx.spec = self._resolved(step_type, spec or ctx.spec, plan)
            if sys.version_info >= (3, 11):  # see the note at the top
                async with asyncio.timeout(limit):
                    outcome = await step_type.execute(ctx)
            else:  # pragma: no cover - Python 3.10
                outcome = await asyncio.wait_for(step_type.execute(ctx), timeout=limit)
            if not isinstance(outcome, dict):
                raise TypeError(f"step type '{step_type.name}' returned {type(outcome).__name__}")
            data = outcome
        except asyncio.CancelledError:
            # a cancelled step keeps the attempt it was in the middle of
            attempts.append(_attempt_record(number, started_at, self._since(began), "cancelled"))
            raise
        except asyncio.TimeoutError:
            if by_deadline:
                message = f"timed out: {deadline_note(ctx.spec)}"
            else:
                message = f"timed out after {_seconds(limit)}"
            error = StepError("timeout", message)
        except StepError as exc:
            error = exc
        except Exception as exc:  # a bug in a step type: logged, reported, never raised
            log.exception("step %s of run %s raised", ctx.spec.name, ctx.run_id)
            error = StepError("error", f"{type(exc).__name__}: {exc}")
        if error is not None:
            data = dict(ctx.progress) if error.data is None else error.data
            error = self.redactor.error(error)
        attempts.append(_attempt_record(number, started_at, self._since(began), error))
        return self.redactor.data(data), error

    def _resolved(self, step_type: StepType, spec: StepSpec, plan: Any) -> StepSpec:
        """``spec`` with its ``with:`` templates resolved against the run so far.

        Raises ``StepError`` (kind ``error``) when an expression fails or the resolved
        values are not what the step type takes.
        """
        assert self.context is not None
        try:
            values = resolve(plan, self.context)
        except TemplateError as exc:
            raise StepError("error", str(exc)) from None
        if step_type.check_params is not None:
            found = step_type.check_params(values)
            if found:
                shown = "; ".join(
                    f"{'with.' + key if key else 'with'}: {message}" for key, message in found
                )
                raise StepError("error", f"after resolving its templates: {shown}")
        return replace(spec, params=MappingProxyType(values))

    def _since(self, began: float) -> float:
        return self.clock.monotonic() - began

    def _result(
        self,
        spec: StepSpec,
        status: StepStatus,
        began: float,
        attempts: list[Attempt],
        data: dict[str, Any] | None = None,
    ) -> StepResult:
        return make_record(
            StepResult,
            name=spec.name,
            type=spec.type,
            service=spec.service,
            status=status,
            duration_ms=_ms(self.clock.monotonic() - began),
            data=data or {},
            attempts=tuple(attempts),
        )

    def _end(self, index: int, result: StepResult) -> StepResult:
        self.results[index] = result
        self.engine._record("update_step", self.run_id, result)
        bus = self.engine.bus
        summary = result.to_dict(summary=True)
        summary["step"] = summary.pop("name")
        bus.emit(
            "step.completed",
            self.run_id,
            self.workflow.key,
            **summary,
            attempts=len(result.attempts),
        )
        if result.failed and not self._failure_seen:
            self._failure_seen = True
            bus.emit(
                "failure.detected",
                self.run_id,
                self.workflow.key,
                step=result.name,
                error=result.error,
                error_kind=result.error_kind,
            )
        return result

    def _emit(self, type: str, spec: StepSpec, /, **data: Any) -> None:
        self.engine.bus.emit(
            type,
            self.run_id,
            self.workflow.key,
            step=spec.name,
            type=spec.type,
            service=spec.service,
            **data,
        )


def _attempt_record(
    number: int, started_at: str, seconds: float, error: StepError | str | None
) -> Attempt:
    """The record of one try; ``error`` is its failure, or a bare reason like "cancelled"."""
    failure = error if isinstance(error, StepError) else None
    return make_record(
        Attempt,
        attempt=number,
        started_at=started_at,
        duration_ms=_ms(seconds),
        success=error is None,
        error=failure.message if failure else (error if isinstance(error, str) else None),
        error_kind=failure.kind if failure else None,
        status_code=failure.status_code if failure else None,
    )


def deadline_note(spec: StepSpec) -> str:
    return f"step deadline of {_seconds(spec.deadline or 0)} reached"


def _with_note(error: StepError, note: str) -> StepError:
    return StepError(
        error.kind,
        f"{error.message} ({note})",
        status_code=error.status_code,
        retry_after=error.retry_after,
        data=error.data,
    )
