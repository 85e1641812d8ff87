"""``verify``: re-run only the tests that failed earlier in the run, and close the bugs
of those that pass now.

Three ways to re-run them, chosen by ``with:``:

- none of the keys below: the Aegis contract, ``POST /api/runs`` with ``verify_only``;
- ``run`` or ``shell`` (with ``junit``): a local program, as a ``command`` step runs it,
  given the ids with ``${{ failures[].test }}``;
- ``tests`` (with ``method``, ``path``, …): any request, as an ``http`` step sends it.

Whichever it is, ``verified`` lists the re-run tests no longer reported failing and
``still_failing`` the ones that are. With no open failures nothing runs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from aegis.errors import StepError
from aegis.steps import bugalizer, command, http_request
from aegis.steps.base import StepContext, StepType, check_path
from aegis.steps.test import DEFAULT_PATH, EXPECT, test_results

__all__ = ["STEP", "check_params", "form"]

# Closing bugs may use this share of the attempt's time left after the re-run, so a slow
# bugalizer never makes the verification itself time out.
CLOSING_SHARE = 0.8


def form(params: Mapping[str, Any]) -> str:
    """``command``, ``http`` or ``contract``: how a ``verify`` step re-runs the tests."""
    if "run" in params or "shell" in params:
        return "command"
    if "tests" in params or "method" in params:
        return "http"
    return "contract"


def check_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems with ``with:``, for the form its keys choose."""
    chosen = form(params)
    if chosen == "contract":
        return check_path(params)
    own = command.PARAMS if chosen == "command" else http_request.PARAMS
    way = "running a program" if chosen == "command" else "a request"
    problems = [
        (key, f"not used when verify re-runs the tests by {way}")
        for key in params
        if key not in own
    ]
    if chosen == "command":
        problems += command.check_params(params)
        if "junit" not in params:
            problems.append(
                ("junit", "required with run/shell: the JUnit files to read results from")
            )
        return problems
    return (
        problems
        + http_request.check_params(params)
        + http_request.check_tests(params.get("tests"), required=True)
    )


def _nothing_to_verify() -> dict[str, Any]:
    return {
        "total": 0,
        "passed": 0,
        "failed": 0,
        "failures": [],
        "verified": [],
        "still_failing": [],
    }


async def execute(ctx: StepContext) -> dict[str, Any]:
    """Re-run the open failures the chosen way (see the module's docstring).

    ``verified`` lists the re-run tests no longer reported as failing; ``still_failing``
    the ones that are. With no open failures nothing runs. When an earlier step filed
    bugs for verified tests (``RunState.bug_reports``), each is moved towards closed;
    ``bug_updates`` says how far, and nothing there fails the step.
    """
    began = time.monotonic()
    test_ids = list(ctx.state.open_failures)
    if not test_ids:
        return _nothing_to_verify()
    chosen = form(ctx.spec.params)
    if chosen == "command":
        results = await command.run_command(ctx)
    elif chosen == "http":
        results = await http_request.call(ctx, tests_required=True)
    else:
        results = await _contract(ctx, test_ids)
    failing = {str(failure["test"]) for failure in results["failures"]}
    verified = [test_id for test_id in test_ids if test_id not in failing]
    data = {
        **results,
        "verified": verified,
        "still_failing": [test_id for test_id in test_ids if test_id in failing],
    }
    fixed = [
        (test, ctx.state.bug_reports[test]) for test in verified if test in ctx.state.bug_reports
    ]
    if fixed:
        budget = (ctx.spec.timeout - (time.monotonic() - began)) * CLOSING_SHARE
        data["bug_updates"] = await _close_fixed(ctx, fixed, budget)
    return data


async def _contract(ctx: StepContext, test_ids: list[str]) -> dict[str, Any]:
    """``POST /api/runs`` ``{"verify_only": true, "tests": [...]}``."""
    from aegis.steps import http

    body = {"verify_only": True, "tests": test_ids}
    answer = await http.request_json(ctx, "POST", DEFAULT_PATH, json=body, expect=EXPECT)
    return test_results(ctx, answer)


async def _close_fixed(
    ctx: StepContext, fixed: list[tuple[str, str]], budget: float
) -> list[dict[str, Any]]:
    """Move the bugs of ``fixed`` (test, report id) towards closed, one entry each."""
    import asyncio  # here, not with the registry: `config validate` never loads asyncio

    tracker = _tracker(ctx)
    if isinstance(tracker, str):
        return [{"test": t, "report_id": r, "note": tracker} for t, r in fixed]
    reason = f"Aegis run {ctx.run_id} (workflow {ctx.workflow.key}) found the test passing"
    updates: list[dict[str, Any]] = []

    async def close_each() -> None:
        for test, report_id in fixed:
            try:
                outcome = await bugalizer.close_report(ctx, tracker, report_id, reason)
            except StepError as exc:
                outcome = {"report_id": report_id, "note": exc.message}
            updates.append({"test": test, **outcome})

    with contextlib.suppress(asyncio.TimeoutError):  # what was not reached is noted below
        await asyncio.wait_for(close_each(), max(budget, 0.0))
    for test, report_id in fixed[len(updates) :]:
        updates.append({"test": test, "report_id": report_id, "note": "not done: out of time"})
    return updates


def _tracker(ctx: StepContext) -> bugalizer.Tracker | str:
    """Where the bugs were filed, or why they cannot be closed from here."""
    where = ctx.state.bug_tracker or {}
    if where.get("close_fixed") is False:
        return "left open: close_fixed is false"
    services = ctx.config.services if ctx.config is not None else {}
    service = services.get(str(where.get("service")))
    if service is None:
        return f"left open: service {where.get('service')!r} is not configured"
    path = str(where.get("path") or bugalizer.REPORTS_PATH)
    return bugalizer.Tracker(service, path, str(where.get("project_id", "")))


STEP = StepType(
    name="verify",
    execute=execute,
    needs_service=lambda params: form(params) != "command",
    params=frozenset({"path"}) | command.PARAMS | http_request.PARAMS,
    check_params=check_params,
    description="Re-run only the tests that failed earlier in the run, report which pass "
    "now, and move the bugs of those towards closed.",
)
