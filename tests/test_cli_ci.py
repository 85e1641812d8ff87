"""`aegis run` for CI systems: --junit, GitHub annotations and the step summary, end to end."""

from __future__ import annotations

import io
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from test_ci_github import parse
from test_ci_junit import check_schema, through_a_pipe

from aegis.cli import main

CONFIG = """
services:
  qaagent: {url: "%(qaagent)s"}
  bugalizer: {url: "%(bugalizer)s"}
workflows:
  pipeline:
    steps:
      - {type: discover, service: qaagent}
      - {type: test, service: qaagent}
      - {type: submit_bugs, service: bugalizer, condition: has_failures,
         with: {project_id: web-shop}}
      - {type: verify, service: qaagent, condition: has_failures}
      - {type: report, condition: always}
  down:
    steps:
      - {type: discover, service: qaagent, retries: 1, retry_delay: 0.01, retry_on: [http],
         with: {path: /nowhere}}
      - {type: report, condition: on_success}
history:
  path: history.db
"""


@pytest.fixture
def config(tmp_path: Path, demo: Any) -> Path:
    path = tmp_path / "aegis.yaml"
    path.write_text(CONFIG % {"qaagent": demo.qaagent_url, "bugalizer": demo.bugalizer_url})
    return path


def aegis(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, environ=env or {})
    assert "Traceback" not in err.getvalue()
    return code, out.getvalue(), err.getvalue()


def junit_cases(path: Path) -> dict[tuple[str, str], ET.Element]:
    root = check_schema(path.read_bytes())
    return {(c.get("classname", ""), c.get("name", "")): c for c in root.iter("testcase")}


def test_junit_of_a_run_with_failing_tests(config: Path, tmp_path: Path) -> None:
    report = tmp_path / "out" / "aegis.xml"
    code, _, _ = aegis("--config", str(config), "run", "pipeline", "--junit", str(report))
    assert code == 1  # tests still failing
    found = junit_cases(report)
    steps = [name for (classname, name) in found if classname == "aegis.pipeline"]
    assert steps == ["discover", "test", "submit_bugs", "verify", "report"]
    tests = {name: case for (classname, name), case in found.items() if classname == "qaagent"}
    # the demo's test run fails two tests; verify finds one of them fixed
    assert len(tests) == 2
    failing = [name for name, case in tests.items() if case.find("failure") is not None]
    assert len(failing) == 1
    failure = tests[failing[0]].find("failure")
    assert failure is not None and failure.get("message")


def test_junit_of_a_failed_step_is_an_error(config: Path, tmp_path: Path) -> None:
    report = tmp_path / "down.xml"
    code, out, _ = aegis("--config", str(config), "run", "down", "--junit", str(report), "--json")
    assert code == 3
    assert json.loads(out)["status"] == "failed"  # stdout is still only the run JSON
    found = junit_cases(report)
    failure = found[("aegis.down", "discover")].find("failure")  # HTTP 404: not infrastructure
    assert failure is not None and failure.get("type") == "http"
    assert "attempt 2" in (failure.text or "")
    assert found[("aegis.down", "report")].find("skipped") is not None


def test_an_unwritable_junit_path_is_refused_before_the_run(config: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = aegis(
        "--config", str(config), "run", "pipeline", "--junit", str(blocker / "x.xml")
    )
    assert code == 2
    assert "--junit: cannot write" in err and str(blocker / "x.xml") in err
    code, _, err = aegis("--config", str(config), "history", "--json")
    assert json.loads(aegis("--config", str(config), "history", "--json")[1])["runs"] == []
    code, _, err = aegis("--config", str(config), "run", "pipeline", "--junit", str(tmp_path))
    assert code == 2 and "is a directory" in err


def test_a_junit_write_failing_after_the_run_is_reported(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("aegis.ci.junit.os.replace", full)
    code, _, err = aegis("--config", str(config), "run", "down", "--junit", str(tmp_path / "a.xml"))
    assert code == 3  # the run's own code wins
    assert "cannot write the JUnit report" in err and "No space left" in err
    assert err.rstrip().endswith("is in the history)")
    code, _, err = aegis(
        "--config", str(config), "run", "down", "--no-history", "--junit", str(tmp_path / "a.xml")
    )
    assert code == 3 and err.rstrip().endswith("was not recorded: --no-history)")
    assert "is in the history" not in err
    in_memory = tmp_path / "memory.yaml"
    in_memory.write_text(config.read_text().replace("path: history.db", 'path: ":memory:"'))
    code, _, err = aegis(
        "--config", str(in_memory), "run", "down", "--junit", str(tmp_path / "m.xml")
    )
    assert code == 3 and err.rstrip().endswith("was not recorded: history.path is :memory:)")
    code, _, err = aegis(
        "--config", str(config), "run", "pipeline", "--junit", str(tmp_path / "b.xml")
    )
    assert code == 1
    monkeypatch.undo()
    # a passing run whose report could not be written must not pass the build
    passing = tmp_path / "pass.yaml"
    passing.write_text(config.read_text().replace("/nowhere", "/api/routes"))
    monkeypatch.setattr("aegis.ci.junit.os.replace", full)
    code, _, _ = aegis("--config", str(passing), "run", "down", "--junit", str(tmp_path / "c.xml"))
    assert code == 2


def test_github_annotations_and_step_summary(config: Path, tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier content\n")
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    code, out, err = aegis("--config", str(config), "run", "pipeline", env=env)
    assert code == 1
    annotations = [parse(line) for line in out.splitlines() if line.startswith("::error")]
    assert len(annotations) == 1  # one test still failing, no failed step
    assert (
        annotations[0][0].startswith("Aegis pipeline: ")
        and "failing on qaagent" in (annotations[0][0])
    )
    text = summary.read_text()
    assert text.startswith("earlier content\n### ")
    assert "`pipeline` succeeded, verdict failed" in text
    assert "| 4 | verify | verify | qaagent | ✅ succeeded |" in text
    assert "**Still failing: 1 test**" in text
    # with --json the annotations go to stderr, stdout stays JSON
    code, out, err = aegis("--config", str(config), "run", "down", "--json", env=env)
    json.loads(out)
    assert [parse(line)[0] for line in err.splitlines() if line.startswith("::error")] == [
        "Aegis down: step discover failed (http)"
    ]
    assert text.count("### ") == 1 and summary.read_text().count("### ") == 2


def test_no_github_output_outside_github(config: Path) -> None:
    code, out, err = aegis("--config", str(config), "run", "down", env={"GITHUB_ACTIONS": "false"})
    assert code == 3 and "::error" not in out + err


def test_an_unwritable_step_summary_only_warns(config: Path, tmp_path: Path) -> None:
    env = {"GITHUB_STEP_SUMMARY": str(tmp_path / "missing" / "summary.md")}
    code, _, err = aegis("--config", str(config), "run", "down", env=env)
    assert code == 3
    assert "warning: cannot append to GITHUB_STEP_SUMMARY" in err
    assert not os.path.exists(tmp_path / "missing")


def test_junit_to_a_pipe_through_proc_is_written_not_refused(config: Path) -> None:
    (code, _, err), document = through_a_pipe(
        lambda target: aegis("--config", str(config), "run", "down", "--junit", target)
    )
    assert code == 3, err
    assert check_schema(document).find("testsuite") is not None
