"""A real pytest suite through ``command`` → ``submit_bugs`` → ``verify`` → JUnit out.

The suite is the demo's (``aegis.demo.suite``): with ``-m smoke`` two of its tests fail,
one for good and one only the first time.
"""

from __future__ import annotations

import io
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from aegis.cli import main
from aegis.demo import DemoServices
from aegis.demo.suite import install

FAILING = "test_shop.py::test_checkout_applies_discount"
FLAKY = "test_shop.py::test_login_is_rate_limited"

CONFIG = """\
services:
  bugalizer: {name: Bugalizer, url: "${BUGALIZER_URL}"}
workflows:
  pytest_pipeline:
    PARAMS
    steps:
      - type: command
        name: pytest
        with:
          run: ["${PYTHON}", -m, pytest, -q, -m, SUITE, --junitxml=reports/junit.xml]
          cwd: suite
          env: {PYTEST_DISABLE_PLUGIN_AUTOLOAD: "1"}
          junit: reports/*.xml
      - type: submit_bugs
        service: bugalizer
        condition: has_failures
        with: {project_id: web-shop}
      - type: verify
        condition: has_failures
        with:
          run: ["${PYTHON}", -m, pytest, -q, --junitxml=reports/verify.xml, FAILURES]
          cwd: suite
          env: {PYTEST_DISABLE_PLUGIN_AUTOLOAD: "1"}
          junit: reports/verify.xml
"""


def run_pipeline(
    tmp_path: Path, demo: DemoServices, replacements: dict[str, str], *args: str
) -> tuple[int, dict[str, Any], str]:
    install(tmp_path / "suite")
    text = CONFIG
    for key, value in replacements.items():
        text = text.replace(key, value)
    config = tmp_path / "aegis.yaml"
    config.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    environ = {"BUGALIZER_URL": demo.bugalizer_url, "PYTHON": sys.executable}
    code = main(
        ["--config", str(config), "run", "pytest_pipeline", "--json", *args],
        stdout=out,
        stderr=err,
        environ=environ,
    )
    return code, json.loads(out.getvalue()), err.getvalue()


def check(run: dict[str, Any], demo: DemoServices, junit_out: Path) -> None:
    tests, bugs, verify = run["steps"]
    # the counts come from the JUnit file pytest wrote
    assert (tests["data"]["total"], tests["data"]["passed"], tests["data"]["failed"]) == (3, 1, 2)
    assert [f["test"] for f in tests["data"]["failures"]] == [FAILING, FLAKY]
    assert tests["data"]["junit_files"] == ["reports/junit.xml"]
    assert tests["data"]["exit_code"] == 1
    # two reports filed
    assert bugs["data"]["submitted"] == 2
    assert [r["title"] for r in demo.bugalizer.reports] == [
        f"[aegis] {FAILING} failed",
        f"[aegis] {FLAKY} failed",
    ]
    # verify ran pytest with exactly those two node ids
    command = verify["data"]["command"]
    assert command.endswith(f"--junitxml=reports/verify.xml {FAILING} {FLAKY}")
    assert (verify["data"]["total"], verify["data"]["verified"]) == (2, [FLAKY])
    assert verify["data"]["still_failing"] == [FAILING]
    # JUnit out lists both: one still failing, one fixed by the re-run
    cases = {
        case.get("name"): case.find("failure") is not None
        for case in ET.parse(junit_out).iter("testcase")
        if case.get("classname") == "local"  # where the tests of a step with no service ran
    }
    assert cases == {FAILING: True, FLAKY: False}


def test_pytest_pipeline_with_the_ids_given(tmp_path: Path, demo: DemoServices) -> None:
    """As the engine hands ``verify`` its ``with:`` once ``${{ failures[].test }}`` is
    resolved: a list inside ``run`` is one argument per id."""
    replacements = {"PARAMS": "", "SUITE": "smoke", "FAILURES": json.dumps([FAILING, FLAKY])}
    junit_out = tmp_path / "out.xml"
    code, run, err = run_pipeline(tmp_path, demo, replacements, "--junit", str(junit_out))
    assert code == 1, err  # tests still fail
    check(run, demo, junit_out)


def test_pytest_pipeline_with_params_and_templates(tmp_path: Path, demo: DemoServices) -> None:
    pytest.importorskip("aegis.templates", reason="run-time templates (issue 15 item 2)")
    replacements = {
        "PARAMS": "params: {suite: {type: choice, choices: [smoke, regression]}}",
        "SUITE": "'${{ params.suite }}'",
        "FAILURES": "'${{ failures[].test }}'",
    }
    junit_out = tmp_path / "out.xml"
    code, run, err = run_pipeline(
        tmp_path, demo, replacements, "-p", "suite=smoke", "--junit", str(junit_out)
    )
    assert code == 1, err
    check(run, demo, junit_out)
