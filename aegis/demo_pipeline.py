"""`aegis demo`: the example pipeline, run against the built-in reference services.

It starts the reference qaagent and bugalizer on ephemeral loopback ports, makes the
first test call answer 503 once (so a retry shows), runs a pipeline with a parallel
group, bug filing and a verify through the real config loader and engine, and keeps
its history in a temporary directory that is removed afterwards: nothing is written
anywhere else. Then, when the Python running Aegis has pytest, it runs the sample suite
of ``aegis.demo.suite`` (copied into that directory) through a ``command`` step, files
its failures and re-runs only those with ``verify``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aegis.config.model import Config
from aegis.console import Console
from aegis.records import Run
from aegis.steps.base import StepType

__all__ = [
    "DEMO_CONFIG",
    "PYTEST_WORKFLOW",
    "DemoSetup",
    "demo_setup",
    "pytest_available",
    "run_demo",
]

DEMO_CONFIG = """\
aegis:
  name: Aegis demo
  tagline: The AI Quality Control Plane, on built-in reference services
services:
  qaagent:
    name: QA Agent (reference)
    url: ${QAAGENT_URL}
    features: [Route Discovery, Test Orchestration]
  bugalizer:
    name: Bugalizer (reference)
    url: ${BUGALIZER_URL}
    features: [Bug Intake]
workflows:
  demo:
    name: Demo pipeline
    description: Discover, test in parallel, file bugs, verify, report
    timeout: 60
    steps:
      - type: discover
        service: qaagent
      - type: test
        name: test-web
        service: qaagent
        parallel: true
        retries: 2
        retry_delay: 0.2
        timeout: 10
      - type: test
        name: test-api
        service: qaagent
        parallel: true
        retries: 2
        retry_delay: 0.2
        timeout: 10
        with: {path: "/api/runs?suite=api"}
      - type: submit_bugs
        service: bugalizer
        condition: has_failures
        with: {project_id: web-shop, severity: high}
      - type: verify
        service: qaagent
        condition: has_failures
      - type: report
        condition: always
  pytest_demo:
    name: Demo pytest pipeline
    description: Run a real pytest suite, file its failures as bugs, re-run only those
    timeout: 120
    steps:
      - type: command
        name: pytest
        timeout: 60
        with:
          run: ["${PYTHON}", -m, pytest, -q, -m, smoke, --junitxml=reports/junit.xml]
          cwd: suite
          env: {PYTEST_DISABLE_PLUGIN_AUTOLOAD: "1"}  # the suite needs no plugins
          junit: reports/junit.xml
      - type: submit_bugs
        service: bugalizer
        condition: has_failures
        with: {project_id: web-shop, severity: high}
      - type: verify
        condition: has_failures
        timeout: 60
        with:
          # one argument per open failure: the pytest node ids read from the JUnit file
          run: ["${PYTHON}", -m, pytest, -q, --junitxml=reports/verify.xml,
                "${{ failures[].test }}"]
          cwd: suite
          env: {PYTEST_DISABLE_PLUGIN_AUTOLOAD: "1"}
          junit: reports/verify.xml
      - type: report
        condition: always
history:
  path: history.db
"""
PYTEST_WORKFLOW = "pytest_demo"


@dataclass(frozen=True)
class DemoSetup:
    """The demo pipeline's config, bound to running reference services."""

    config: Config
    environ: dict[str, str]
    step_types: dict[str, StepType]


@contextmanager
def demo_setup() -> Iterator[DemoSetup]:
    """Start the reference services (the first test call answers 503 once, so a retry
    shows) and load the demo config against them; everything stops and is removed after."""
    from aegis.config import parse_config
    from aegis.demo import DemoServices, Fault
    from aegis.demo.suite import install
    from aegis.steps.registry import default_step_types

    step_types = default_step_types()
    with tempfile.TemporaryDirectory(prefix="aegis-demo-") as workdir, DemoServices() as demo:
        demo.qaagent.inject("/api/runs", Fault(status=503, times=1))
        install(Path(workdir) / "suite")
        environ = {
            "QAAGENT_URL": demo.qaagent_url,
            "BUGALIZER_URL": demo.bugalizer_url,
            "PYTHON": sys.executable,
        }
        config = parse_config(
            DEMO_CONFIG,
            file="<demo>",
            base_dir=Path(workdir),
            environ=environ,
            step_types=step_types,
        )
        yield DemoSetup(config, environ, step_types)


def pytest_available(python: str = sys.executable) -> bool:
    """Whether ``python`` can import pytest (the built file itself does not carry it)."""
    try:
        found = subprocess.run(
            [python, "-c", "import pytest"], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return found.returncode == 0


def run_demo(*, progress: Console | None, warn: Callable[[str], None]) -> list[Run]:
    """Run the demo pipeline end to end, then the pytest one when pytest is there (else
    ``warn`` says so); their records."""
    from aegis.runs import run_workflow

    workflows = ["demo"]
    if pytest_available():
        workflows.append(PYTEST_WORKFLOW)
    else:
        warn(f"pytest is not installed for {sys.executable}: the pytest demo is skipped")
    with demo_setup() as demo:
        return [
            run_workflow(
                demo.config,
                workflow,
                progress=progress,
                environ=demo.environ,
                warn=warn,
                step_types=demo.step_types,
                trigger="demo",
            )
            for workflow in workflows
        ]
