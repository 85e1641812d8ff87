"""JUnit XML of a run, in the shape Jenkins, GitLab and GitHub's test-report actions read.

One ``<testsuite>`` per run (inside ``<testsuites>``), holding:

- a ``<testcase>`` per step, classname ``aegis.<workflow>``: ``<error>`` when the step
  failed on infrastructure (timeout, connection, protocol, cancelled), ``<failure>`` when
  it failed otherwise (either with the data the step recorded before failing),
  ``<skipped>`` when it was skipped;
- a ``<testcase>`` per test a ``test`` or ``verify`` step reported failing, named by the
  test id with the service as classname: ``<failure>`` with the service's message while it
  is still failing, passing if a later ``verify`` step found it fixed.

Times are in seconds. Names are unique within the suite; text that XML 1.0 cannot carry
(control characters) is replaced, the rest is escaped by ElementTree.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from aegis.ci.outcomes import TestOutcome, is_infrastructure, test_outcomes
from aegis.records import Run, StepResult

__all__ = ["junit_target", "junit_xml", "write_junit"]

# Characters XML 1.0 does not allow, even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(value: object) -> str:
    return _NOT_XML.sub("\ufffd", str(value))


def _seconds(value: float | None) -> str:
    return f"{(value or 0.0):.3f}"


class _Names:
    """Hands out (classname, name) pairs that are unique within one suite."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()

    def unique(self, classname: str, name: str) -> str:
        candidate, number = name, 1
        while (classname, candidate) in self._seen:
            number += 1
            candidate = f"{name} ({number})"
        self._seen.add((classname, candidate))
        return candidate


def junit_xml(run: Run, *, hostname: str | None = None) -> bytes:
    """The JUnit XML document for ``run``, UTF-8 encoded with an XML declaration."""
    suites = ET.Element("testsuites", name="aegis")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=_text(run.workflow),
        timestamp=_text(run.started_at.rstrip("Z").split(".")[0]),
        hostname=_text(hostname or "localhost"),
    )
    properties = ET.SubElement(suite, "properties")
    for key, value in (
        ("run_id", run.run_id),
        ("status", run.status.value),
        ("verdict", run.verdict.value if run.verdict else "none"),
        ("trigger", run.trigger),
    ):
        ET.SubElement(properties, "property", name=key, value=_text(value))

    names = _Names()
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    classname = f"aegis.{run.workflow}"
    for step in run.steps:
        kind = _step_case(suite, step, classname, names.unique(classname, step.name))
        _count(counts, kind)
    for outcome in test_outcomes(run):
        kind = _test_case(suite, outcome, names.unique(outcome.service, outcome.test_id))
        _count(counts, kind)

    time = _seconds((run.duration_ms or 0.0) / 1000)
    for element in (suites, suite):
        for name, count in counts.items():
            element.set(name, str(count))
        element.set("time", time)
    ET.indent(suites)
    document: bytes = ET.tostring(suites, encoding="utf-8", xml_declaration=True)
    return document + b"\n"


def _count(counts: dict[str, int], kind: str | None) -> None:
    counts["tests"] += 1
    if kind is not None:
        counts[kind] += 1


def _step_case(suite: ET.Element, step: StepResult, classname: str, name: str) -> str | None:
    case = ET.SubElement(
        suite,
        "testcase",
        classname=_text(classname),
        name=_text(name),
        time=_seconds(step.duration_ms / 1000),
    )
    if step.skipped:
        ET.SubElement(case, "skipped", message=_text(step.skip_reason or "skipped"))
        return "skipped"
    if not step.failed:
        return None
    kind = "errors" if is_infrastructure(step) else "failures"
    element = ET.SubElement(
        case,
        "error" if kind == "errors" else "failure",
        message=_text(step.error or step.status.value),
        type=_text(step.error_kind or step.status.value),
    )
    element.text = _text("\n".join(_attempt_lines(step)))
    return kind


def _attempt_lines(step: StepResult) -> list[str]:
    service = f" on {step.service}" if step.service else ""
    lines = [f"step {step.name!r} ({step.type}{service}) {step.status.value}"]
    for attempt in step.attempts:
        outcome = "ok" if attempt.success else f"{attempt.error_kind or 'failed'}: {attempt.error}"
        lines.append(f"attempt {attempt.attempt} ({attempt.duration_ms:.0f} ms): {outcome}")
    if step.data:  # what the step did before it failed (reports filed, say)
        lines.append("data before the failure:")
        lines.append(json.dumps(step.data, indent=2, ensure_ascii=False, default=str))
    return lines


def _test_case(suite: ET.Element, outcome: TestOutcome, name: str) -> str | None:
    case = ET.SubElement(
        suite,
        "testcase",
        classname=_text(outcome.service),
        name=_text(name),
        time=_seconds(outcome.duration_s),
    )
    if not outcome.failing:
        ET.SubElement(case, "system-out").text = _text(outcome.message)
        return None
    failure = ET.SubElement(case, "failure", message=_text(outcome.message), type="test")
    failure.text = _text(
        f"reported by step {outcome.step!r}\n"
        + json.dumps(outcome.details, indent=2, ensure_ascii=False, default=str)
    )
    return "failures"


def write_junit(run: Run, path: str | os.PathLike[str]) -> Path:
    """Write the JUnit file; returns its path. A regular file is replaced atomically (a
    reader never sees half of it), through a symlink at the file it points to; a FIFO or
    a device (``/dev/stdout``) is written into as it is."""
    document = junit_xml(run, hostname=_hostname())
    target, direct = junit_target(path)
    if direct:
        with open(target, "ab") as stream:
            stream.write(document)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(document)
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


def junit_target(path: str | os.PathLike[str]) -> tuple[Path, bool]:
    """Where the JUnit file for ``path`` goes, and whether it is written directly (a FIFO,
    a device, or what ``/dev/stdout`` leads to) rather than replaced. A symlink leads to
    its target, so the link stays."""
    given = Path(path)
    try:
        mode = os.stat(given).st_mode
    except OSError:  # nothing there yet (or a dangling link): a new file at the end of it
        return Path(os.path.realpath(given)), False
    resolved = Path(os.path.realpath(given))
    # /dev/stdout leads through /proc to "pipe:[…]" or a terminal: no path to replace.
    if not stat.S_ISREG(mode) or not resolved.exists() or _under(resolved, "/proc", "/dev"):
        return given, True
    return resolved, False


def _under(path: Path, *roots: str) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _hostname() -> str:
    import socket

    try:
        return socket.gethostname() or "localhost"
    except OSError:
        return "localhost"
