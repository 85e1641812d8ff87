"""GitHub Actions output: escaped ``::error`` annotations and the step summary."""

from __future__ import annotations

from typing import Any

from aegis.ci.github import (
    MAX_ANNOTATIONS,
    annotation_lines,
    escape_data,
    escape_property,
    step_summary,
)
from aegis.records import Attempt, Run, RunStatus, StepResult, StepStatus, Verdict


def unescape(text: str) -> str:
    """What the runner does to a command's message or property value."""
    for escaped, plain in (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%")):
        text = text.replace(escaped, plain)
    return text


def parse(line: str) -> tuple[str, str]:
    """``(title, message)`` of an ``::error title=…::message`` line, as GitHub reads it."""
    assert line.startswith("::error title=")
    head, _, message = line[len("::error ") :].partition("::")
    assert "," not in head and "\n" not in line and "\r" not in line
    return unescape(head[len("title=") :]), unescape(message)


def run_of(*steps: StepResult, **fields: Any) -> Run:
    fields.setdefault("status", RunStatus.FAILED)
    return Run(
        run_id="r-9",
        workflow="nightly",
        started_at="2026-11-24T10:00:00.000Z",
        steps=steps,
        duration_ms=2500.0,
        **fields,
    )


def test_escaping_round_trips() -> None:
    text = "100% sure: a, b\r\nnext line %0A"
    assert unescape(escape_property(text)) == text
    assert unescape(escape_data(text)) == text
    assert escape_data(text) == "100%25 sure: a, b%0D%0Anext line %250A"
    assert escape_property("a:b,c") == "a%3Ab%2Cc"


def test_failed_steps_and_still_failing_tests_are_annotated() -> None:
    failed = StepResult(
        "deploy check",
        "discover",
        "qaagent",
        StepStatus.FAILED,
        error="qaagent: HTTP 503\nService Unavailable, retry: later",
        error_kind="http",
    )
    tests = StepResult(
        "verify",
        "verify",
        "qaagent",
        StepStatus.SUCCEEDED,
        data={"failures": [{"test": "login,test", "message": "50% slower: 2 s"}]},
    )
    lines = annotation_lines(run_of(failed, tests))
    assert [parse(line) for line in lines] == [
        (
            "Aegis nightly: step deploy check failed (http)",
            "qaagent: HTTP 503\nService Unavailable, retry: later",
        ),
        ("Aegis nightly: login,test failing on qaagent", "50% slower: 2 s"),
    ]


def test_a_passing_run_has_no_annotations() -> None:
    ok = StepResult("t", "test", "qaagent", StepStatus.SUCCEEDED, data={"failures": []})
    assert annotation_lines(run_of(ok, status=RunStatus.SUCCEEDED)) == []


def test_at_most_ten_then_one_line_for_the_rest() -> None:
    failures = [{"test": f"t{i}", "message": f"m{i}"} for i in range(25)]
    tests = StepResult("t", "test", "qaagent", StepStatus.SUCCEEDED, data={"failures": failures})
    lines = annotation_lines(run_of(tests))
    assert len(lines) == MAX_ANNOTATIONS + 1
    title, message = parse(lines[-1])
    assert title == "Aegis nightly: 15 more"
    assert message.startswith("15 more failed steps or failing tests") and "r-9" in message
    exactly = annotation_lines(
        run_of(StepResult("t", "test", "q", StepStatus.SUCCEEDED, data={"failures": failures[:11]}))
    )
    assert parse(exactly[-1])[0] == "Aegis nightly: 1 more"


def test_the_step_summary_is_a_markdown_table() -> None:
    steps = (
        StepResult(
            "discover",
            "discover",
            "qaagent",
            StepStatus.SUCCEEDED,
            duration_ms=120.0,
            attempts=(Attempt(1, "t", 60.0, False, "503"), Attempt(2, "t", 60.0, True)),
        ),
        StepResult(
            "a|b",
            "test",
            "qaagent",
            StepStatus.FAILED,
            duration_ms=2000.0,
            error="line one\nline two",
        ),
        StepResult("report", "report", None, StepStatus.SKIPPED, skip_reason="not needed"),
    )
    text = step_summary(run_of(*steps, verdict=Verdict.FAILED))
    lines = text.splitlines()
    assert lines[0] == "### ❌ Aegis: `nightly` failed, verdict failed"
    assert "Run `r-9` · started 2026-11-24T10:00:00.000Z · 2.50 s" in lines
    rows = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert rows == [
        "| 1 | discover | discover | qaagent | ✅ succeeded | 0.12 s | 2 |",
        "| 2 | a\\|b | test | qaagent | ❌ failed: line one line two | 2.00 s | 0 |",
        "| 3 | report | report |  | ⏭️ skipped: not needed | 0.00 s | 0 |",
    ]
    assert text.endswith("\n\n")  # a second run's summary starts on its own


def test_the_summary_lists_still_failing_tests_and_counts_the_rest() -> None:
    failures = [{"test": f"t`{i}", "message": "x" * 300} for i in range(55)]
    tests = StepResult("t", "test", "qaagent", StepStatus.SUCCEEDED, data={"failures": failures})
    text = step_summary(run_of(tests, status=RunStatus.SUCCEEDED, verdict=Verdict.FAILED))
    assert "**Still failing: 55 tests**" in text
    assert "| `t'0` | qaagent | " + "x" * 199 + "… |" in text
    assert "… and 5 more." in text
    assert text.count("| `t'") == 50


def test_the_step_summary_shows_what_a_failed_step_did() -> None:
    failed = StepResult(
        "file bugs",
        "submit_bugs",
        "bugalizer",
        StepStatus.FAILED,
        data={"submitted": 2, "report_ids": ["a1", "b2"], "errors": ["t3: HTTP 503"]},
        error="1 bug report not filed",
        error_kind="http",
    )
    text = step_summary(run_of(failed))
    assert "**Step `file bugs` failed after doing this:**" in text
    assert '| `report_ids` | ["a1", "b2"] |' in text
    assert '| `errors` | ["t3: HTTP 503"] |' in text
