"""The five step types run by the engine against the demo services, over real HTTP."""

from __future__ import annotations

from aegis.config.model import Config, ServiceSpec, StepSpec, WorkflowSpec, frozen_mapping
from aegis.demo import DemoServices, Fault
from aegis.engine.runner import Engine
from aegis.records import RunStatus, Verdict
from aegis.steps.registry import default_step_types


def full_pipeline(demo: DemoServices) -> Config:
    bugs = frozen_mapping({"project_id": "web-shop", "severity": "high"})
    steps = (
        StepSpec("discover", "discover", service="qaagent"),
        StepSpec("test", "test", service="qaagent"),
        StepSpec(
            "submit_bugs",
            "submit_bugs",
            service="bugalizer",
            condition="has_failures",
            retries=1,
            retry_delay=0.01,
            params=bugs,
        ),
        StepSpec("verify", "verify", service="qaagent", condition="has_failures"),
        StepSpec("report", "report", condition="always"),
    )
    services = {
        "qaagent": ServiceSpec("qaagent", "QA Agent", demo.qaagent_url),
        "bugalizer": ServiceSpec("bugalizer", "Bugalizer", demo.bugalizer_url),
    }
    workflow = WorkflowSpec("full_pipeline", "Full QA Pipeline", steps)
    return Config(
        services=frozen_mapping(services),
        workflows=frozen_mapping({"full_pipeline": workflow}),
    )


async def test_full_pipeline_files_each_bug_once_and_verifies(demo: DemoServices) -> None:
    demo.bugalizer.inject("/api/v1/reports", Fault(status=503, retry_after=0))
    engine = Engine(full_pipeline(demo), default_step_types(), environ={})

    run = await engine.run("full_pipeline")

    assert (run.status, run.verdict) == (RunStatus.SUCCEEDED, Verdict.FAILED)
    discover, test, bugs, verify, report = run.steps
    assert discover.data["route_count"] == 6
    assert test.data["failed"] == 2
    assert [a.success for a in bugs.attempts] == [False, True]
    assert bugs.data["submitted"] == 2
    assert len(demo.bugalizer.reports) == 2
    assert verify.data["verified"] == ["test_api_login_rate_limit"]
    assert verify.data["still_failing"] == ["test_checkout_applies_discount"]
    assert demo.qaagent.calls[-1].json == {
        "verify_only": True,
        "tests": ["test_checkout_applies_discount", "test_api_login_rate_limit"],
    }
    assert report.data["open_failure_count"] == 1
    assert report.data["steps"][2].startswith("submit_bugs: succeeded in ")
    assert report.data["steps"][2].endswith(", 2 bug reports filed")
