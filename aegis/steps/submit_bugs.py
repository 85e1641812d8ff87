"""``submit_bugs``: file one bugalizer report per open test failure, never one twice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aegis.errors import StepError
from aegis.steps.base import StepContext, StepType, check_path

__all__ = ["DEFAULT_SEVERITY", "SEVERITIES", "STEP", "check_params", "report_body"]

DEFAULT_PATH = "/api/v1/reports"
SEVERITIES = ("critical", "high", "medium", "low")
DEFAULT_SEVERITY = "medium"
MAX_TITLE = 500
# Bounds what one test's output can make us send; the report links back to the run.
MAX_MESSAGE = 4000
# Failures that concern one report only; anything else (auth, unknown project, rate
# limit, an unhealthy or unreachable service) would fail every remaining report too.
PER_REPORT_STATUSES = frozenset({400, 409, 413, 422})


def check_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems with ``with:``: ``project_id`` required, ``severity`` one of SEVERITIES."""
    problems = check_path(params)
    project = params.get("project_id")
    if project is None:
        problems.append(("project_id", "required: the bugalizer project to file reports in"))
    elif not isinstance(project, str) or not project.strip():
        problems.append(("project_id", f"expected a non-empty string, got {project!r}"))
    severity = params.get("severity", DEFAULT_SEVERITY)
    if severity not in SEVERITIES:
        allowed = ", ".join(SEVERITIES)
        problems.append(("severity", f"expected one of {allowed}, got {severity!r}"))
    return problems


def report_body(ctx: StepContext, test_id: str, failure: Mapping[str, Any]) -> dict[str, Any]:
    """The bugalizer report for one failing test (DESIGN §4)."""
    workflow = ctx.workflow.key
    message = _message(failure)
    title = f"[aegis] {test_id} failed"
    if len(title) > MAX_TITLE:
        title = title[: MAX_TITLE - 1] + "…"
    return {
        "project_id": str(ctx.spec.params.get("project_id", "")),
        "title": title,
        "description": f"{message}\n\nWorkflow: {workflow}\nRun: {ctx.run_id}",
        "reporter": "aegis",
        "severity": str(ctx.spec.params.get("severity", DEFAULT_SEVERITY)),
        "steps_to_reproduce": [
            f"Run the Aegis workflow {workflow!r} (aegis run {workflow})",
            f"Look at the result of test {test_id!r}",
        ],
        "expected_behavior": f"Test {test_id} passes.",
        "actual_behavior": message,
        "labels": ["aegis", workflow],
    }


def _message(failure: Mapping[str, Any]) -> str:
    message = failure.get("message")
    text = message if isinstance(message, str) and message.strip() else "The test failed."
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


async def execute(ctx: StepContext) -> dict[str, Any]:
    """``POST /api/v1/reports`` for each open failure not yet accepted by an earlier attempt.

    ``bug_reports`` maps each test id to the id of the report filed for it. Accepted
    reports are remembered in ``ctx.scratch`` as they happen, so a retry sends
    only the rest. Raises the ``StepError`` of the last failed report, after trying every
    report it could; ``errors`` in the data lists failures that a later attempt overcame.
    """
    accepted: dict[str, str] = ctx.scratch.setdefault("accepted", {})
    errors: list[str] = ctx.scratch.setdefault("errors", [])
    failed: list[StepError] = []
    for test_id, failure in ctx.state.open_failures.items():
        if test_id in accepted:
            continue
        try:
            accepted[test_id] = await _file(ctx, test_id, failure)
        except StepError as exc:
            errors.append(f"{test_id}: {exc.message}")
            failed.append(exc)
            if not _per_report(exc):
                break
    if failed:
        raise _summary(failed[-1], len(ctx.state.open_failures) - len(accepted))
    return {
        "submitted": len(accepted),
        "report_ids": list(accepted.values()),
        "bug_reports": dict(accepted),  # test id -> report id: test history links them
        "errors": errors,
    }


async def _file(ctx: StepContext, test_id: str, failure: Mapping[str, Any]) -> str:
    from aegis.steps import http

    answer = await http.request_json(
        ctx, "POST", DEFAULT_PATH, json=report_body(ctx, test_id, failure), expect=(201,)
    )
    report_id = http.require_object(ctx, answer).get("id")
    if not isinstance(report_id, (str, int)) or isinstance(report_id, bool) or report_id == "":
        raise http.protocol_error(ctx, f"a filed report should carry an 'id', got {answer!r:.80}")
    return str(report_id)


def _per_report(error: StepError) -> bool:
    return error.kind == "http" and error.status_code in PER_REPORT_STATUSES


def _summary(last: StepError, pending: int) -> StepError:
    noun = "bug report" if pending == 1 else "bug reports"
    message = f"{pending} {noun} not filed yet: {last.message}"
    return StepError(last.kind, message, status_code=last.status_code, retry_after=last.retry_after)


STEP = StepType(
    name="submit_bugs",
    execute=execute,
    params=frozenset({"path", "project_id", "severity"}),
    check_params=check_params,
    description="File one bugalizer report per failing test; a retry never files a bug twice.",
)
