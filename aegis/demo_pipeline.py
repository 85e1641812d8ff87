"""`aegis demo`: the example pipeline, run against the built-in reference services.

It starts the reference qaagent and bugalizer on ephemeral loopback ports, makes the
first test call answer 503 once (so a retry shows), runs a pipeline with a parallel
group, bug filing and a verify through the real config loader and engine, and keeps
its history in a temporary directory that is removed afterwards: nothing is written
anywhere else.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aegis.config.model import Config
from aegis.console import Console
from aegis.records import Run
from aegis.steps.base import StepType

__all__ = ["DEMO_CONFIG", "DemoSetup", "demo_setup", "run_demo"]

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
history:
  path: history.db
"""


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
    from aegis.steps.registry import default_step_types

    step_types = default_step_types()
    with tempfile.TemporaryDirectory(prefix="aegis-demo-") as workdir, DemoServices() as demo:
        demo.qaagent.inject("/api/runs", Fault(status=503, times=1))
        environ = {"QAAGENT_URL": demo.qaagent_url, "BUGALIZER_URL": demo.bugalizer_url}
        config = parse_config(
            DEMO_CONFIG,
            file="<demo>",
            base_dir=Path(workdir),
            environ=environ,
            step_types=step_types,
        )
        yield DemoSetup(config, environ, step_types)


def run_demo(*, progress: Console | None, warn: Callable[[str], None]) -> Run:
    """Run the demo pipeline end to end and return its record."""
    from aegis.runs import run_workflow

    with demo_setup() as demo:
        return run_workflow(
            demo.config,
            "demo",
            progress=progress,
            environ=demo.environ,
            warn=warn,
            step_types=demo.step_types,
            trigger="demo",
        )
