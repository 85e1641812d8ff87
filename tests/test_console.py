"""What people see: colour rules, progress lines and run summaries."""

from __future__ import annotations

import io

import pytest

from aegis.console import Console, ProgressPrinter, render_run, render_runs, step_detail
from aegis.events import EventBus
from aegis.records import Attempt, Run, RunStatus, StepResult, StepStatus, Verdict


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "environ", "colour"),
    [
        (Tty(), {}, True),
        (io.StringIO(), {}, False),
        (Tty(), {"NO_COLOR": ""}, False),
        (Tty(), {"TERM": "dumb"}, False),
        (io.StringIO(), {"FORCE_COLOR": "1"}, True),
        (Tty(), {"FORCE_COLOR": "1", "NO_COLOR": "1"}, True),
    ],
)
def test_colour_only_on_a_terminal_unless_forced(
    stream: io.StringIO, environ: dict[str, str], colour: bool
) -> None:
    console = Console(stream, environ)
    assert console.colour is colour
    painted = console.status("failed")
    assert (painted != "failed") is colour
    assert console.paint("x", "no-such-colour") == "x"


def run_record() -> Run:
    failed_attempt = Attempt(1, "t", 5.0, False, "HTTP 503 from q", "http", 503)
    return Run(
        run_id="abc123",
        workflow="w",
        status=RunStatus.SUCCEEDED,
        started_at="2026-01-01T00:00:00.000Z",
        verdict=Verdict.FAILED,
        duration_ms=1500.0,
        steps=(
            StepResult(
                "discover",
                "discover",
                "q",
                StepStatus.SUCCEEDED,
                12.0,
                {"route_count": 3, "routes": []},
                (Attempt(1, "t", 12.0, True),),
            ),
            StepResult(
                "test",
                "test",
                "q",
                StepStatus.SUCCEEDED,
                800.0,
                {
                    "total": 4,
                    "passed": 3,
                    "failed": 1,
                    "failures": [{"test": "t_login", "message": "boom"}],
                },
                (failed_attempt, Attempt(2, "t", 795.0, True)),
            ),
            StepResult(
                "submit_bugs",
                "submit_bugs",
                "b",
                StepStatus.FAILED,
                30000.0,
                error="timed out after 30s",
                error_kind="timeout",
                attempts=(Attempt(1, "t", 30000.0, False, "timed out", "timeout"),),
            ),
            StepResult("verify", "verify", "q", StepStatus.SKIPPED, skip_reason="why not"),
        ),
    )


def test_render_run_shows_steps_details_and_failing_tests() -> None:
    out = io.StringIO()
    render_run(Console(out, {}), run_record())
    text = out.getvalue()
    assert "Run abc123 of w: succeeded, verdict failed (1.50 s, cli)" in text
    assert "3 routes" in text
    assert "4 tests, 3 passed, 1 failed" in text
    assert "timed out after 30s [timeout]" in text
    assert "why not" in text
    assert "  - t_login: boom" in text
    assert "\033[" not in text


def test_render_runs_table_and_empty() -> None:
    out = io.StringIO()
    render_runs(Console(out, {"FORCE_COLOR": "1"}), [run_record()])
    assert "abc123" in out.getvalue() and "\033[32msucceeded\033[0m" in out.getvalue()
    empty = io.StringIO()
    render_runs(Console(empty, {}), [])
    assert "No runs recorded yet." in empty.getvalue()


def test_step_detail_phrases() -> None:
    assert step_detail({}) == ""
    assert step_detail({"verified": ["a"], "still_failing": [], "submitted": 2}) == (
        "1 verified, 0 still failing, 2 bug reports filed"
    )
    assert step_detail({"exit_code": 1, "total": 3, "passed": 1, "failed": 2}) == (
        "exit 1, 3 tests, 1 passed, 2 failed"
    )
    assert step_detail({"status": 200, "polls": 3, "outputs": {}}) == "HTTP 200, 3 polls"
    assert step_detail({"submitted": 0, "reused": ["r1", "r2"], "bug_updates": [{}]}) == (
        "0 bug reports filed, 2 reused, 1 bug reports moved on"
    )


def test_progress_lines_for_each_event() -> None:
    out = io.StringIO()
    bus = EventBus()
    bus.subscribe(ProgressPrinter(Console(out, {})))
    bus.emit("workflow.started", "r1", "w", name="W", steps=2, trigger="cli")
    bus.emit("step.started", "r1", "w", step="test", type="test", service="q")
    bus.emit("step.started", "r1", "w", step="report", type="report", service=None)
    bus.emit("step.retrying", "r1", "w", step="test", attempt=1, wait_s=0.5, error="HTTP 503")
    bus.emit(
        "step.completed",
        "r1",
        "w",
        step="test",
        status="failed",
        duration_ms=2500.0,
        error="HTTP 503",
        attempts=3,
    )
    bus.emit("step.completed", "r1", "w", step="v", status="skipped", skip_reason="because")
    bus.emit("failure.detected", "r1", "w", step="test")
    assert out.getvalue().splitlines() == [
        "aegis: running w (run r1, 2 steps)",
        "  > test on q",
        "  > report",
        "  retry test: attempt 1 failed (HTTP 503); next attempt in 0.5s",
        "  < test failed in 2.50 s, 3 attempts: HTTP 503",
        "  - v skipped: because",
    ]


def test_text_from_services_cannot_drive_the_terminal() -> None:
    evil = "x\x1b]0;owned\x07\x1b[2J\r\nfake line\u202egnp.exe\x9b"
    bus = EventBus()
    stream = Tty()
    console = Console(stream, {})  # a colour terminal: our own escapes stay
    bus.subscribe(ProgressPrinter(console))
    bus.emit("workflow.started", "r1", evil, steps=1)
    bus.emit("step.started", "r1", "w", step=evil, service=evil)
    bus.emit("step.retrying", "r1", "w", step="s", attempt=1, error=evil, wait_s=0.5)
    bus.emit("step.completed", "r1", "w", step="s", status="skipped", skip_reason=evil)
    bus.emit("step.completed", "r1", "w", step=evil, status="failed", duration_ms=5, error=evil)
    failing = StepResult(
        evil,
        "test",
        "q",
        StepStatus.SUCCEEDED,
        data={"total": 1, "passed": 0, "failed": 1, "failures": [{"test": evil, "message": evil}]},
    )
    run = Run("r1", evil, RunStatus.SUCCEEDED, "2026-01-01T00:00:00.000Z", steps=(failing,))
    render_run(console, run)
    render_runs(console, [run])
    text = stream.getvalue()
    foreign = text.replace("\033[0m", "").replace("\n", "")
    for code in _ESCAPES:
        foreign = foreign.replace(f"\033[{code}m", "")
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c == "\u202e" for c in foreign)
    assert "x\\x1b]0;owned\\x07\\x1b[2J\\r\\nfake line\\u202egnp.exe\\x9b" in text


_ESCAPES = ("31", "32", "33", "2", "1")
