"""GitHub Actions output of a run: error annotations and the job's step summary.

With ``GITHUB_ACTIONS=true`` `aegis run` prints ``::error title=…::…`` workflow commands
for failed steps and still-failing tests — at most ``MAX_ANNOTATIONS``, then one line
counting the rest. With ``GITHUB_STEP_SUMMARY`` naming a file, it appends a Markdown
summary: status, verdict, a table of the steps with durations and attempts, and the data
a failed step recorded before it failed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from aegis.ci.outcomes import test_outcomes
from aegis.records import Run

__all__ = ["MAX_ANNOTATIONS", "annotation_lines", "escape_data", "escape_property", "step_summary"]

MAX_ANNOTATIONS = 10
# How many still-failing tests the summary lists before counting the rest.
SUMMARY_TESTS = 50


def escape_data(text: str) -> str:
    """A workflow command's message: ``%``, CR and LF are escaped."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: also ``:`` and ``,``."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _error(title: str, message: str) -> str:
    return f"::error title={escape_property(title)}::{escape_data(message)}"


def _problems(run: Run) -> Iterator[tuple[str, str]]:
    for step in run.steps:
        if step.failed:
            kind = f" ({step.error_kind})" if step.error_kind else ""
            yield (
                f"Aegis {run.workflow}: step {step.name} {step.status.value}{kind}",
                step.error or step.status.value,
            )
    for outcome in test_outcomes(run):
        if outcome.failing:
            yield (
                f"Aegis {run.workflow}: {outcome.test_id} failing on {outcome.service}",
                outcome.message,
            )


def annotation_lines(run: Run) -> list[str]:
    """The ``::error`` lines for ``run``, at most ``MAX_ANNOTATIONS`` plus a summary line."""
    problems = list(_problems(run))
    lines = [_error(title, message) for title, message in problems[:MAX_ANNOTATIONS]]
    rest = len(problems) - MAX_ANNOTATIONS
    if rest > 0:
        lines.append(
            _error(
                f"Aegis {run.workflow}: {rest} more",
                f"{rest} more failed step{'s' if rest != 1 else ''} or failing "
                f"test{'s' if rest != 1 else ''} not annotated; see run {run.run_id} "
                "(aegis history show) or the JUnit report",
            )
        )
    return lines


def _cell(value: object) -> str:
    text = str(value).replace("\r", " ").replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= 200 else text[:199] + "…"


def _code(value: object) -> str:
    return "`" + _cell(value).replace("`", "'") + "`"


_MARK = {
    "succeeded": "✅",
    "failed": "❌",
    "cancelled": "⛔",
    "skipped": "⏭️",
    "timed_out": "⏱️",
    "interrupted": "⛔",
}


def _partial_data(run: Run) -> list[str]:
    """What each failed step did before it failed (its data), one row per key."""
    lines: list[str] = []
    for step in run.steps:
        if not (step.failed and step.data):
            continue
        lines += ["", f"**Step {_code(step.name)} {step.status.value} after doing this:**"]
        lines += ["", "| key | value |", "|---|---|"]
        lines += [
            f"| {_code(key)} | {_cell(json.dumps(value, ensure_ascii=False, default=str))} |"
            for key, value in step.data.items()
        ]
    return lines


def step_summary(run: Run) -> str:
    """The Markdown that `aegis run` appends to ``$GITHUB_STEP_SUMMARY``."""
    status = run.status.value
    verdict = run.verdict.value if run.verdict else "none"
    seconds = (run.duration_ms or 0.0) / 1000
    lines = [
        f"### {_MARK.get(status, '')} Aegis: {_code(run.workflow)} {status}, verdict {verdict}",
        "",
        f"Run {_code(run.run_id)} · started {run.started_at} · {seconds:.2f} s",
        "",
        "| # | step | type | service | status | duration | attempts |",
        "|---:|---|---|---|---|---:|---:|",
    ]
    for number, step in enumerate(run.steps, 1):
        state = step.status.value
        note = step.error or step.skip_reason
        lines.append(
            f"| {number} | {_cell(step.name)} | {_cell(step.type)} | {_cell(step.service or '')}"
            f" | {_MARK.get(state, '')} {state}{(': ' + _cell(note)) if note else ''}"
            f" | {step.duration_ms / 1000:.2f} s | {len(step.attempts)} |"
        )
    lines += _partial_data(run)
    failing = [o for o in test_outcomes(run) if o.failing]
    if failing:
        lines += ["", f"**Still failing: {len(failing)} test{'s' if len(failing) != 1 else ''}**"]
        lines += ["", "| test | service | message |", "|---|---|---|"]
        lines += [
            f"| {_code(o.test_id)} | {_cell(o.service)} | {_cell(o.message)} |"
            for o in failing[:SUMMARY_TESTS]
        ]
        if len(failing) > SUMMARY_TESTS:
            lines += ["", f"… and {len(failing) - SUMMARY_TESTS} more."]
    return "\n".join(lines) + "\n\n"
