"""What the CLI shows a person: live progress lines, run summaries and tables.

Progress goes to stderr, results to stdout. Colour is used only on a terminal, never with
``NO_COLOR`` or ``TERM=dumb``, and always with ``FORCE_COLOR``. Everything printed is
plain ASCII apart from names and messages that come from the config or the services.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from aegis.events import Event
from aegis.records import Run, StepResult
from aegis.text import printable

if TYPE_CHECKING:
    from aegis.history.test_history import TestRecord
    from aegis.services import Health

__all__ = [
    "Console",
    "ProgressPrinter",
    "printable",
    "render_run",
    "render_runs",
    "render_services",
    "step_detail",
]

_CODES = {"red": "31", "green": "32", "yellow": "33", "dim": "2", "bold": "1"}
_STATUS_COLOURS = {
    "succeeded": "green",
    "passed": "green",
    "up": "green",
    "failed": "red",
    "timed_out": "red",
    "down": "red",
    "cancelled": "yellow",
    "degraded": "yellow",
    "interrupted": "yellow",
    "skipped": "dim",
    "running": "bold",
}


def wants_colour(stream: TextIO, environ: Mapping[str, str]) -> bool:
    if environ.get("FORCE_COLOR"):
        return True
    if "NO_COLOR" in environ or environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Console:
    """A stream that knows whether to colour."""

    def __init__(self, stream: TextIO, environ: Mapping[str, str]) -> None:
        self.stream = stream
        self.colour = wants_colour(stream, environ)

    def paint(self, text: str, colour: str) -> str:
        if not self.colour or colour not in _CODES:
            return text
        return f"\033[{_CODES[colour]}m{text}\033[0m"

    def status(self, text: str) -> str:
        return self.paint(text, _STATUS_COLOURS.get(text, ""))

    def line(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)


def _seconds(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def step_detail(data: Mapping[str, Any]) -> str:
    """A short human phrase for a step's data: test counts, routes, reports filed, and
    what a ``command`` (exit code) or ``http`` step (status, polls) ended with."""
    parts = []
    for key, phrase in (("exit_code", "exit {}"), ("status", "HTTP {}"), ("polls", "{} polls")):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            parts.append(phrase.format(value))
    if isinstance(data.get("route_count"), int):
        parts.append(f"{data['route_count']} routes")
    if isinstance(data.get("failed"), int):
        parts.append(
            f"{data.get('total', 0)} tests, {data.get('passed', 0)} passed, {data['failed']} failed"
        )
    if isinstance(data.get("verified"), list):
        parts.append(f"{len(data['verified'])} verified")
    if isinstance(data.get("still_failing"), list):
        parts.append(f"{len(data['still_failing'])} still failing")
    if isinstance(data.get("submitted"), int):
        parts.append(f"{data['submitted']} bug reports filed")
    for key, words in (("reused", "reused"), ("bug_updates", "bug reports moved on")):
        if isinstance(data.get(key), list) and data[key]:
            parts.append(f"{len(data[key])} {words}")
    return ", ".join(parts)


class ProgressPrinter:
    """Turns engine events into one stderr line per step start, retry and end."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, event: Event) -> None:
        handler = getattr(self, "_" + event.type.replace(".", "_"), None)
        if handler is not None:
            handler(event.data, event)

    def _workflow_started(self, data: dict[str, Any], event: Event) -> None:
        self.console.line(
            f"aegis: running {printable(event.workflow)} (run {event.run_id}, "
            f"{data['steps']} steps)"
        )

    def _step_started(self, data: dict[str, Any], event: Event) -> None:
        service = f" on {printable(data['service'])}" if data.get("service") else ""
        self.console.line(f"  > {printable(data['step'])}{service}")

    def _step_retrying(self, data: dict[str, Any], event: Event) -> None:
        self.console.line(
            f"  {self.console.paint('retry', 'yellow')} {printable(data['step'])}: attempt "
            f"{data['attempt']} failed ({printable(data['error'])}); "
            f"next attempt in {data['wait_s']:g}s"
        )

    def _step_completed(self, data: dict[str, Any], event: Event) -> None:
        status = data["status"]
        label = self.console.status(status)
        step = printable(data["step"])
        if status == "skipped":
            self.console.line(f"  - {step} {label}: {printable(data['skip_reason'])}")
            return
        if data.get("reused"):
            self.console.line(f"  = {step} {label} before: reused, not run again")
            return
        tail = f": {printable(data['error'])}" if data.get("error") else ""
        tries = f", {data['attempts']} attempts" if data.get("attempts", 1) > 1 else ""
        self.console.line(f"  < {step} {label} in {_seconds(data['duration_ms'])}{tries}{tail}")


def _step_row(step: StepResult) -> list[str]:
    if step.skipped:
        detail = step.skip_reason or ""
    elif step.error:
        detail = f"{step.error} [{step.error_kind}]" if step.error_kind else step.error
    else:
        detail = step_detail(step.data)
    time = "" if step.skipped else _seconds(step.duration_ms)
    attempts = str(len(step.attempts)) if step.attempts else ""
    return [printable(step.name), step.status.value, time, attempts, printable(detail)]


def _table(console: Console, headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    rows = [list(r) for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    console.line(
        "  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    )
    status_cols = {i for i, h in enumerate(headers) if h in ("STATUS", "VERDICT")}
    for row in rows:
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
            padded = cell.ljust(width)
            cells.append(console.status(cell) + padded[len(cell) :] if i in status_cols else padded)
        console.line("  " + "  ".join(cells).rstrip())


def render_run(console: Console, run: Run) -> None:
    """The readable summary of one run: a headline, a table of steps, failing tests."""
    verdict = run.verdict.value if run.verdict else "-"
    console.line(
        f"Run {run.run_id} of {printable(run.workflow)}: {console.status(run.status.value)}, "
        f"verdict {console.status(verdict)} ({_seconds(run.duration_ms)}, {run.trigger})"
    )
    console.line(f"  started {run.started_at}")
    if run.params:
        shown = ", ".join(f"{name}={_param_text(value)}" for name, value in run.params.items())
        console.line(f"  params {printable(shown)}")
    _table(console, ["STEP", "STATUS", "TIME", "ATTEMPTS", "DETAIL"], map(_step_row, run.steps))
    failing = _failing_tests(run)
    if failing:
        console.line("Failing tests:")
        for test, message in failing:
            console.line(f"  - {printable(test)}: {printable(message)}")


def _param_text(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _failing_tests(run: Run) -> list[tuple[str, str]]:
    """Tests still failing at the end: reported by some step and not since verified."""
    from aegis.ci.outcomes import test_outcomes

    return [(o.test_id, o.message) for o in test_outcomes(run) if o.failing]


def render_services(console: Console, results: Sequence[Health]) -> None:
    """A table of service health results (``services.Health``), columns aligned."""
    if not results:
        console.line("No services configured.")
        return
    rows = [
        [
            h.status,
            printable(h.key),
            printable(h.url),
            _health_detail(h),
        ]
        for h in results
    ]
    _table(console, ["STATUS", "SERVICE", "URL", "DETAIL"], rows)


def _health_detail(health: Health) -> str:
    """Latency or why it failed, and the service's own status word when it gave one."""
    if health.status == "down":
        detail = health.error or ""
    elif health.status == "degraded":
        detail = f"{health.latency_ms:.1f} ms, not ready: {health.error}"
    else:
        detail = f"{health.latency_ms:.1f} ms"
    word = health.service_status
    return printable(f"{detail} (says {word!r})" if word else detail)


def render_runs(console: Console, runs: Sequence[Run]) -> None:
    """A table of run summaries, newest first."""
    if not runs:
        console.line("No runs recorded yet.")
        return
    rows = [
        [
            r.run_id,
            printable(r.workflow),
            r.status.value,
            r.verdict.value if r.verdict else "-",
            r.started_at,
            _seconds(r.duration_ms),
            r.trigger,
        ]
        for r in runs
    ]
    headers = ["RUN", "WORKFLOW", "STATUS", "VERDICT", "STARTED", "DURATION", "TRIGGER"]
    _table(console, headers, rows)


def render_tests(console: Console, tests: Sequence[TestRecord], *, flaky: bool) -> None:
    """A table of test summaries, in the order given."""
    if not tests:
        console.line("No flaky tests seen." if flaky else "No failing tests recorded yet.")
        return
    rows = [
        [
            printable(t.test_id),
            printable(t.workflow),
            str(t.runs),
            str(t.failures),
            str(t.flips),
            f"{t.flakiness:.2f}",
            t.last_failure_at or "-",
            t.last_pass_at or "-",
        ]
        for t in tests
    ]
    headers = ["TEST", "WORKFLOW", "RUNS", "FAILURES", "FLIPS", "FLAKY", "LAST FAILURE",
               "LAST PASS"]  # fmt: skip
    _table(console, headers, rows)
