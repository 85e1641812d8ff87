"""The JUnit file: its structure as CI systems read it, and what each run maps to."""

from __future__ import annotations

import contextlib
import os
import stat
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from aegis.ci import outcomes as ci_outcomes
from aegis.ci.junit import junit_xml, write_junit
from aegis.records import Attempt, Run, RunStatus, StepResult, StepStatus, Verdict

T = TypeVar("T")

# What Jenkins (junit plugin), GitLab (junit report) and GitHub's test-report actions read:
# <testsuites> / <testsuite name tests failures errors skipped time> /
# <testcase classname name time> with at most one of failure|error|skipped.
SUITE_COUNTS = ("tests", "failures", "errors", "skipped")
CASE_CHILDREN = {"failure", "error", "skipped", "system-out", "system-err"}


def check_schema(document: bytes) -> ET.Element:
    """Parse ``document`` and check every element and attribute CI systems rely on."""
    assert document.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    root = ET.fromstring(document)
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    for suite in suites:
        assert suite.get("name")
        assert float(suite.get("time", "x")) >= 0
        cases = suite.findall("testcase")
        counted = {
            "tests": len(cases),
            "failures": sum(c.find("failure") is not None for c in cases),
            "errors": sum(c.find("error") is not None for c in cases),
            "skipped": sum(c.find("skipped") is not None for c in cases),
        }
        for key in SUITE_COUNTS:
            assert int(suite.get(key, "-1")) == counted[key], key
            assert int(root.get(key, "-1")) == counted[key], key
        names = [(c.get("classname"), c.get("name")) for c in cases]
        assert len(names) == len(set(names)), "testcase names must be unique"
        for case in cases:
            assert case.get("name") and case.get("classname")
            assert float(case.get("time", "x")) >= 0
            children = [child.tag for child in case]
            assert set(children) <= CASE_CHILDREN
            outcomes = [tag for tag in children if tag in ("failure", "error", "skipped")]
            assert len(outcomes) <= 1
            for tag in ("failure", "error"):
                element = case.find(tag)
                if element is not None:
                    assert element.get("message") is not None and element.get("type")
    return root


def step(name: str, status: StepStatus = StepStatus.SUCCEEDED, **fields: Any) -> StepResult:
    fields.setdefault("type", "test")
    fields.setdefault("service", "qaagent")
    return StepResult(name=name, status=status, **fields)


def run_of(*steps: StepResult, **fields: Any) -> Run:
    fields.setdefault("status", RunStatus.FAILED)
    return Run(
        run_id="r-1",
        workflow="pipeline",
        started_at="2026-11-24T10:00:00.250Z",
        steps=steps,
        duration_ms=1234.6,
        **fields,
    )


def cases(root: ET.Element) -> dict[tuple[str, str], ET.Element]:
    return {(c.get("classname", ""), c.get("name", "")): c for c in root.iter("testcase")}


FAILURES = {
    "total": 3,
    "passed": 1,
    "failed": 2,
    "failures": [
        {"test": "login_test", "message": "expected 200, got 500", "duration_ms": 1500},
        {"test": "cart_test", "message": "button missing"},
    ],
}


def test_each_failing_test_is_its_own_failed_testcase() -> None:
    run = run_of(step("run tests", data=FAILURES), verdict=Verdict.FAILED)
    root = check_schema(junit_xml(run))
    found = cases(root)
    login = found[("qaagent", "login_test")]
    failure = login.find("failure")
    assert failure is not None and failure.get("message") == "expected 200, got 500"
    assert login.get("time") == "1.500"
    assert found[("qaagent", "cart_test")].find("failure") is not None
    assert found[("aegis.pipeline", "run tests")].find("failure") is None  # the step itself ran
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("time")) == ("3", "2", "1.235")
    assert suite.get("timestamp") == "2026-11-24T10:00:00"


def test_a_test_verify_fixed_passes_and_one_still_failing_keeps_the_newest_message() -> None:
    verify = step(
        "verify",
        type="verify",
        data={
            "failures": [{"test": "cart_test", "message": "still no button"}],
            "verified": ["login_test"],
        },
    )
    root = check_schema(junit_xml(run_of(step("run tests", data=FAILURES), verify)))
    found = cases(root)
    login = found[("qaagent", "login_test")]
    assert login.find("failure") is None
    assert "verify" in (login.findtext("system-out") or "")
    cart = found[("qaagent", "cart_test")].find("failure")
    assert cart is not None and cart.get("message") == "still no button"
    assert "reported by step 'verify'" in (cart.text or "")


@pytest.mark.parametrize(
    ("kind", "tag"),
    [("timeout", "error"), ("connection", "error"), ("protocol", "error"), ("http", "failure")],
)
def test_failed_steps_are_errors_on_infrastructure_and_failures_otherwise(
    kind: str, tag: str
) -> None:
    attempts = (
        Attempt(1, "t", 500.0, False, "no answer in 0.5 s", kind),
        Attempt(2, "t", 510.0, False, "no answer in 0.5 s", kind),
    )
    failed = step(
        "discover", StepStatus.FAILED, error="qaagent: boom", error_kind=kind, attempts=attempts
    )
    root = check_schema(junit_xml(run_of(failed)))
    element = cases(root)[("aegis.pipeline", "discover")].find(tag)
    assert element is not None
    assert (element.get("message"), element.get("type")) == ("qaagent: boom", kind)
    assert "attempt 2 (510 ms)" in (element.text or "")


def test_skipped_and_cancelled_steps() -> None:
    skipped = step("report", StepStatus.SKIPPED, skip_reason="condition on_failure not met")
    cancelled = step("test", StepStatus.CANCELLED, error="run cancelled")
    root = check_schema(junit_xml(run_of(cancelled, skipped, status=RunStatus.CANCELLED)))
    found = cases(root)
    marker = found[("aegis.pipeline", "report")].find("skipped")
    assert marker is not None and marker.get("message") == "condition on_failure not met"
    assert found[("aegis.pipeline", "test")].find("error") is not None
    properties = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert properties == {
        "run_id": "r-1",
        "status": "cancelled",
        "verdict": "none",
        "trigger": "cli",
    }


def test_names_stay_unique_and_hostile_text_is_escaped() -> None:
    nasty = "a<b>&\"c'\x00\x1b]0;x\x07"
    data = {
        "failures": [
            {"test": nasty, "message": "</failure><x>"},
            {"test": nasty, "message": "second report"},
        ]
    }
    twice = (step("same", data=data), step("same", data={"failures": []}))
    root = check_schema(junit_xml(run_of(*twice)))
    names = sorted(c.get("name", "") for c in root.iter("testcase"))
    assert names == sorted(
        [
            "same",
            "same (2)",
            nasty.replace("\x00", "\ufffd").replace("\x1b", "\ufffd").replace("\x07", "\ufffd"),
        ]
    )
    failure = next(root.iter("failure"))
    assert failure.get("message") == "second report"  # the newest report of that test


def test_the_same_test_on_two_services_is_two_testcases() -> None:
    a = step("a", data={"failures": [{"test": "t1"}]})
    b = step("b", service="other", data={"failures": [{"test": "t1", "message": ""}]})
    outcomes = ci_outcomes.test_outcomes(run_of(a, b))
    assert [(o.service, o.test_id, o.message) for o in outcomes] == [
        ("qaagent", "t1", "reported failing"),
        ("other", "t1", "reported failing"),
    ]
    assert len(cases(check_schema(junit_xml(run_of(a, b))))) == 4


def test_malformed_step_data_is_ignored() -> None:
    odd = step(
        "odd",
        data={"failures": ["x", {"test": ""}, {"message": "no id"}], "verified": "nope"},
    )
    assert ci_outcomes.test_outcomes(run_of(odd, step("none", data={"failures": "nope"}))) == []


@pytest.mark.parametrize(
    ("failure", "seconds"),
    [({"duration_s": 2}, "2.000"), ({"duration": 0.5}, "0.500"), ({"duration_ms": -1}, "0.000")],
)
def test_test_durations(failure: dict[str, Any], seconds: str) -> None:
    root = junit_xml(run_of(step("s", data={"failures": [{"test": "t", **failure}]})))
    case = cases(ET.fromstring(root))[("qaagent", "t")]
    assert case.get("time") == seconds


def test_write_is_atomic_and_makes_directories(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "deep" / "aegis.xml"
    written = write_junit(run_of(step("s")), target)
    assert written == target
    check_schema(target.read_bytes())
    assert sorted(p.name for p in target.parent.iterdir()) == ["aegis.xml"]


def test_a_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("aegis.ci.junit.os.replace", refuse)
    with pytest.raises(OSError, match="No space"):
        write_junit(run_of(step("s")), tmp_path / "aegis.xml")
    assert list(tmp_path.iterdir()) == []


def test_the_host_name_falls_back_to_localhost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> str:
        raise OSError("no name")

    monkeypatch.setattr("socket.gethostname", broken)
    root = ET.fromstring(write_junit(run_of(step("s")), tmp_path / "a.xml").read_bytes())
    suite = root.find("testsuite")
    assert suite is not None and suite.get("hostname") == "localhost"


def test_a_failed_step_shows_the_data_it_recorded_before_failing() -> None:
    partial = {"submitted": 1, "report_ids": ["a1b2c3d4e5f60718"], "errors": ["t2: timed out"]}
    failed = step(
        "file bugs",
        StepStatus.FAILED,
        type="submit_bugs",
        service="bugalizer",
        error="1 bug report not filed",
        error_kind="timeout",
        data=partial,
    )
    root = check_schema(junit_xml(run_of(failed)))
    element = cases(root)[("aegis.pipeline", "file bugs")].find("error")
    assert element is not None
    assert "data before the failure:" in (element.text or "")
    assert '"a1b2c3d4e5f60718"' in (element.text or "")
    assert "t2: timed out" in (element.text or "")


def test_a_symlink_is_written_through_to_its_target(tmp_path: Path) -> None:
    real = tmp_path / "reports" / "aegis.xml"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "latest.xml"
    link.symlink_to(real)
    assert write_junit(run_of(step("s")), link) == real
    assert link.is_symlink() and link.resolve() == real
    check_schema(real.read_bytes())
    dangling = tmp_path / "next.xml"
    dangling.symlink_to(tmp_path / "reports" / "new.xml")
    write_junit(run_of(step("s")), dangling)
    assert dangling.is_symlink()
    check_schema((tmp_path / "reports" / "new.xml").read_bytes())


def test_a_fifo_is_written_into_not_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "junit.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a writer may open it now
    try:
        write_junit(run_of(step("s")), fifo)
        document = os.read(reader, 1 << 20)
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    check_schema(document)


def through_a_pipe(write: Callable[[str], T]) -> tuple[T, bytes]:
    """``write(path)`` for a path that leads to a pipe, as /dev/stdout does; what it
    returned and what came out of the pipe."""
    read_end, write_end = os.pipe()
    try:
        result = write(f"/proc/self/fd/{write_end}")
        os.close(write_end)
        with os.fdopen(read_end, "rb") as stream:
            return result, stream.read()
    finally:
        with contextlib.suppress(OSError):
            os.close(write_end)


def test_dev_stdout_style_links_reach_the_pipe_behind_them(tmp_path: Path) -> None:
    # /dev/stdout -> /proc/self/fd/1 -> "pipe:[…]": in a container it was replaced by a file
    link = tmp_path / "stdout"

    def write(target: str) -> None:
        link.symlink_to(target)
        write_junit(run_of(step("s")), link)

    _, document = through_a_pipe(write)
    assert link.is_symlink()
    check_schema(document)
