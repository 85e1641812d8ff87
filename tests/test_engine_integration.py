"""The engine against the reference services over real loopback HTTP, on the real clock.

Timing assertions use generous bounds: they tell "about half a second" from "thirty
seconds" and "together" from "one after another", not milliseconds.
"""

from __future__ import annotations

import textwrap
import time
from datetime import datetime
from pathlib import Path

from aegis.config import parse_config
from aegis.demo import DemoServices, Fault
from aegis.engine.runner import Engine
from aegis.history.memory import MemoryHistory
from aegis.records import Run, RunStatus, StepStatus, Verdict
from aegis.steps.registry import default_step_types


async def run(demo: DemoServices, steps: str, tmp_path: Path) -> tuple[Run, float]:
    text = textwrap.dedent(f"""
        services:
          qaagent: {{url: "{demo.qaagent_url}"}}
          bugalizer: {{url: "{demo.bugalizer_url}"}}
          nowhere: {{url: "http://127.0.0.1:9"}}
        workflows:
          w:
            steps:
        """) + textwrap.indent(textwrap.dedent(steps), " " * 6)
    types = default_step_types()
    config = parse_config(text, file="t.yaml", base_dir=tmp_path, environ={}, step_types=types)
    began = time.monotonic()
    result = await Engine(config, types, history=MemoryHistory()).run("w")
    return result, time.monotonic() - began


def started(run: Run, step: int, attempt: int) -> float:
    stamp = run.steps[step].attempts[attempt].started_at.replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


async def test_two_failures_then_success_waits_delay_then_double(
    demo: DemoServices, tmp_path: Path
) -> None:
    demo.qaagent.inject("/api/runs", Fault(status=503, times=2))
    result, _ = await run(
        demo, "- {type: test, service: qaagent, retries: 2, retry_delay: 0.3}", tmp_path
    )
    attempts = result.steps[0].attempts
    assert [a.status_code for a in attempts] == [503, 503, None]
    assert result.steps[0].status is StepStatus.SUCCEEDED
    first_wait = started(result, 0, 1) - started(result, 0, 0)
    second_wait = started(result, 0, 2) - started(result, 0, 1)
    assert 0.3 <= first_wait < 1.5
    assert 0.6 <= second_wait < 2.0


async def test_slow_service_times_out_in_about_the_timeout(
    demo: DemoServices, tmp_path: Path
) -> None:
    demo.qaagent.inject("/api/routes", Fault(status=None, delay=30, times=None))
    result, elapsed = await run(
        demo, "- {type: discover, service: qaagent, timeout: 0.5}", tmp_path
    )
    step = result.steps[0]
    assert (step.error_kind, step.error) == ("timeout", "timed out after 0.5s")
    assert 0.45 <= elapsed < 3.0
    assert result.status is RunStatus.FAILED


async def test_unreachable_service_is_kind_connection(demo: DemoServices, tmp_path: Path) -> None:
    result, elapsed = await run(demo, "- {type: discover, service: nowhere}", tmp_path)
    assert result.steps[0].error_kind == "connection"
    assert "nowhere" in (result.steps[0].error or "")
    assert elapsed < 5


async def test_three_parallel_one_second_steps_take_about_one_second(
    demo: DemoServices, tmp_path: Path
) -> None:
    demo.qaagent.inject("/api/runs", Fault(status=None, delay=1.0, times=None))
    steps = "\n".join(
        f"- {{type: test, name: t{i}, service: qaagent, parallel: true}}" for i in range(3)
    )
    result, elapsed = await run(demo, steps, tmp_path)
    assert [s.status for s in result.steps] == [StepStatus.SUCCEEDED] * 3
    assert 1.0 <= elapsed < 2.0  # one after another would take 3 s


async def test_has_failures_files_bugs_and_verifies_only_failed_ids(
    demo: DemoServices, tmp_path: Path
) -> None:
    result, _ = await run(
        demo,
        """
        - {type: discover, service: qaagent}
        - {type: test, service: qaagent}
        - {type: submit_bugs, service: bugalizer, condition: has_failures,
           with: {project_id: web-shop}}
        - {type: verify, service: qaagent, condition: has_failures}
        - {type: report, condition: always}
        """,
        tmp_path,
    )
    test, submit, verify, report = result.steps[1:]
    failed_ids = [f["test"] for f in test.data["failures"]]
    assert failed_ids and submit.data["submitted"] == len(failed_ids)
    assert len(demo.bugalizer.reports) == len(failed_ids)
    verify_calls = [c for c in demo.qaagent.calls if c.json and c.json.get("verify_only")]
    assert [c.json["tests"] for c in verify_calls if c.json] == [failed_ids]
    assert verify.status is StepStatus.SUCCEEDED and report.status is StepStatus.SUCCEEDED
    assert result.verdict is Verdict.FAILED  # one test still fails after verify
