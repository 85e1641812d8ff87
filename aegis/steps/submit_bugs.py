"""``submit_bugs``: file one bugalizer report per open test failure, each exactly once.

Every report carries a fingerprint label (project, workflow, test id) and a label naming
the run. A report whose sending ended without a clear answer (timeout, connection lost,
5xx) may have been stored: before sending it again, the step looks its fingerprint up
among the project's open reports and adopts the one it finds. With ``on_existing: skip``
(the default) a report open for the same test from an earlier run is reused, not filed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aegis.errors import StepError
from aegis.steps import bugalizer
from aegis.steps.base import StepContext, StepType, check_path
from aegis.text import printable

__all__ = [
    "ANALYSIS_MODES",
    "DEFAULT_SEVERITY",
    "ON_EXISTING",
    "SEVERITIES",
    "STEP",
    "check_params",
    "report_body",
]

SEVERITIES = ("critical", "high", "medium", "low")
DEFAULT_SEVERITY = "medium"
ANALYSIS_MODES = ("auto", "local_only", "hold")
ON_EXISTING = ("skip", "file")
MAX_TITLE = 500
# Bounds what one test's output can make us send; the report links back to the run.
MAX_MESSAGE = 4000
MAX_TEST_ID = 20_000  # the description holds the id whole up to this (bugalizer: 50,000)
# Failures that concern one report only; the others stop the attempt (see `_stops`).
PER_REPORT_STATUSES = frozenset({400, 409, 413})
_TEXT_PARAMS = ("environment", "url", "feature_area")


def check_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems with ``with:``: ``project_id`` required (1-100 characters), ``severity``,
    ``analysis_mode`` and ``on_existing`` from their lists, ``labels`` strings,
    ``close_fixed`` a boolean, ``environment``/``url``/``feature_area`` strings."""
    problems = check_path(params)
    project = params.get("project_id")
    if project is None:
        problems.append(("project_id", "required: the bugalizer project to file reports in"))
    elif not isinstance(project, str) or not project.strip():
        problems.append(("project_id", f"expected a non-empty string, got {project!r}"))
    elif len(project) > bugalizer.MAX_PROJECT_ID:
        limit = bugalizer.MAX_PROJECT_ID
        problems.append(
            ("project_id", f"at most {limit} characters (bugalizer's limit), got {len(project)}")
        )
    for key, allowed, default in (
        ("severity", SEVERITIES, DEFAULT_SEVERITY),
        ("analysis_mode", ANALYSIS_MODES, "auto"),
        ("on_existing", ON_EXISTING, "skip"),
    ):
        if params.get(key, default) not in allowed:
            problems.append((key, f"expected one of {', '.join(allowed)}, got {params[key]!r}"))
    labels = params.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        problems.append(("labels", f"expected a list of non-empty strings, got {labels!r:.60}"))
    if not isinstance(params.get("close_fixed", True), bool):
        problems.append(("close_fixed", f"expected true or false, got {params['close_fixed']!r}"))
    for key in _TEXT_PARAMS:
        if key in params and not isinstance(params[key], str):
            problems.append((key, f"expected a string, got {params[key]!r:.60}"))
    return problems


def report_body(ctx: StepContext, test_id: str, failure: Mapping[str, Any]) -> dict[str, Any]:
    """The bugalizer report for one failing test (DESIGN §4)."""
    params = ctx.spec.params
    project = str(params.get("project_id", ""))
    workflow = ctx.workflow.key
    message = _message(ctx, failure)
    # The id as the report shows it: a secret a service echoed into it hidden, then cut.
    # (The fingerprint hashes the id as it is.)
    hidden_id = ctx.redactor.text(test_id)
    title = printable(f"[aegis] {hidden_id} failed")
    if len(title) > MAX_TITLE:
        title = title[: MAX_TITLE - 1] + "…"
    shown_id = hidden_id if len(hidden_id) <= MAX_TEST_ID else hidden_id[: MAX_TEST_ID - 1] + "…"
    lines = [
        f"Test: {shown_id}",
        f"Workflow: {workflow}",
        f"Run: {ctx.run_id}",
    ]
    link = _run_link(ctx)
    if link:
        lines.append(f"Run record: {link}")
    body: dict[str, Any] = {
        "project_id": project,
        "title": title,
        "description": f"{message}\n\n" + "\n".join(lines),
        "reporter": "aegis",
        "severity": str(params.get("severity", DEFAULT_SEVERITY)),
        "steps_to_reproduce": [
            f"Run the Aegis workflow {workflow} (aegis run {workflow})",
            f"Look at the result of the test {shown_id}",
        ],
        "expected_behavior": f"The test {shown_id} passes.",
        "actual_behavior": message,
        "labels": [
            "aegis",
            workflow,
            bugalizer.fingerprint(project, workflow, test_id),
            bugalizer.RUN_LABEL + ctx.run_id,
            *params.get("labels", ()),
        ],
    }
    for key in (*_TEXT_PARAMS, "analysis_mode"):
        if params.get(key):
            body[key] = params[key]
    return body


def _message(ctx: StepContext, failure: Mapping[str, Any]) -> str:
    message = failure.get("message")
    text = message if isinstance(message, str) and message.strip() else "The test failed."
    text = ctx.redactor.text(text)  # before it is cut, which would leave a secret's head
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _run_link(ctx: StepContext) -> str:
    base = ctx.config.identity.public_url if ctx.config is not None else ""
    return f"{base.rstrip('/')}/#run={ctx.run_id}" if base else ""


def tracker_of(ctx: StepContext) -> bugalizer.Tracker:
    """Where this step files: its service, ``with.path`` and ``with.project_id``."""
    if ctx.service is None:
        raise StepError("error", f"step {ctx.spec.name!r} needs a service")
    params = ctx.spec.params
    path = params.get("path", bugalizer.REPORTS_PATH)
    return bugalizer.Tracker(ctx.service, str(path), str(params.get("project_id", "")))


class _Filing:
    """What the step has done so far, kept in ``ctx.scratch`` across attempts."""

    def __init__(self, ctx: StepContext) -> None:
        scratch = ctx.scratch
        self.ctx = ctx
        self.tracker = tracker_of(ctx)
        self.filed: dict[str, str] = scratch.setdefault("filed", {})  # by this run
        self.reused: dict[str, str] = scratch.setdefault("reused", {})  # from earlier runs
        self.errors: dict[str, str] = scratch.setdefault("errors", {})  # latest, per test
        self.unsure: set[str] = scratch.setdefault("unsure", set())  # may have been stored
        self.adopted: dict[str, str] = scratch.setdefault("adopted", {})  # found stored
        cut = scratch.pop("sending", None)  # the last attempt ended while sending this one
        if cut is not None:
            self.unsure.add(cut)
            self.errors[cut] = "no answer before the attempt ended"

    def pending(self) -> list[str]:
        done = self.filed.keys() | self.reused.keys()
        return [test for test in self.ctx.state.open_failures if test not in done]

    def data(self, unsent: str | None = None) -> dict[str, Any]:
        """The step data; for a failure, ``unsent`` is the reason of reports never tried."""
        errors = dict(self.errors)
        if unsent is not None:
            for test in self.pending():
                errors.setdefault(test, unsent)
        params = self.ctx.spec.params
        return {
            "submitted": len(self.filed),
            "report_ids": list(self.filed.values()),
            "reused": list(self.reused.values()),
            "adopted": list(self.adopted.values()),
            "errors": [f"{test}: {reason}" for test, reason in errors.items()],
            "bug_reports": {**self.reused, **self.filed},
            "bug_tracker": {
                **self.tracker.to_dict(),
                "close_fixed": params.get("close_fixed", True) is not False,
            },
        }

    async def adopt_existing(self) -> None:
        """Take over open reports with a pending test's fingerprint: this run's (their
        answer was lost) always, an earlier run's when ``on_existing`` is ``skip``."""
        ctx = self.ctx
        found = await bugalizer.open_reports(ctx, self.tracker)
        skip = ctx.spec.params.get("on_existing", "skip") == "skip"
        mine = bugalizer.RUN_LABEL + ctx.run_id
        for test in self.pending():
            label = bugalizer.fingerprint(self.tracker.project_id, ctx.workflow.key, test)
            report = found.get(label)
            if report is None:
                continue
            labels = report.get("labels") or ()
            if mine in labels:
                self.filed[test] = self.adopted[test] = str(report.get("id"))
            elif skip:
                self.reused[test] = str(report.get("id"))
        self.unsure.clear()  # whatever was not found was not stored

    async def file(self, test: str) -> StepError | None:
        """Send one report; the error when it was not filed."""
        ctx = self.ctx
        body = report_body(ctx, test, ctx.state.open_failures[test])
        ctx.scratch["sending"] = test
        ctx.progress = self.data(unsent="not sent before the attempt ended")
        # "sending" stays set only when the attempt is cut off (cancelled) meanwhile
        try:
            report_id = await bugalizer.file_report(ctx, self.tracker, body)
        except StepError as exc:
            del ctx.scratch["sending"]
            self.errors[test] = exc.message
            if bugalizer.unanswered(exc):
                self.unsure.add(test)
            return exc
        del ctx.scratch["sending"]
        self.filed[test] = report_id
        return None


async def execute(ctx: StepContext) -> dict[str, Any]:
    """File a report for each open failure that has none yet; see the module docstring.

    Raises ``StepError`` carrying the step data when a report is left unfiled: at once
    for a failure every report would share (auth, unknown project, 422, 429, 5xx, no
    answer), else after trying every report.
    """
    filing = _Filing(ctx)
    pending = filing.pending()
    if not pending:
        return filing.data()
    ctx.progress = filing.data(unsent="not sent before the attempt ended")
    skip = ctx.spec.params.get("on_existing", "skip") == "skip"
    if filing.unsure or (skip and not ctx.scratch.get("looked_up")):
        try:
            await filing.adopt_existing()
        except StepError as exc:
            raise _failure(filing, exc, "not sent: the open reports could not be read") from None
        ctx.scratch["looked_up"] = True
    last: StepError | None = None
    for test in filing.pending():
        error = await filing.file(test)
        if error is None:
            continue
        last = error
        if _stops(error):
            break
    if last is None:
        return filing.data()
    raise _failure(filing, last, "not sent after an earlier failure")


def _stops(error: StepError) -> bool:
    """Whether ``error`` would befall every remaining report too."""
    return not (error.kind == "http" and error.status_code in PER_REPORT_STATUSES)


def _failure(filing: _Filing, error: StepError, unsent: str) -> StepError:
    pending = len(filing.pending())
    noun = "bug report" if pending == 1 else "bug reports"
    reason = bugalizer.refusal(error, filing.tracker, filing.ctx.environ) or error.message
    return StepError(
        error.kind,
        f"{pending} {noun} not filed yet: {reason}",
        status_code=error.status_code,
        retry_after=error.retry_after,
        data=filing.data(unsent=unsent),
    )


STEP = StepType(
    name="submit_bugs",
    execute=execute,
    params=frozenset(
        {
            "path",
            "project_id",
            "severity",
            "labels",
            "environment",
            "url",
            "feature_area",
            "analysis_mode",
            "on_existing",
            "close_fixed",
        }
    ),
    check_params=check_params,
    description="File one bugalizer report per failing test, exactly once (by fingerprint).",
)
