"""Names with HTML and JavaScript in them stay text on the landing page, in a real browser.

A config whose identity, service names, descriptions, features and health endpoint, and
workflow and step names carry markup payloads is served by ``aegis serve``'s app; a run of
the hostile workflow is started through the API while the page is open, so its events
stream into the Recent events panel and its row and steps show the names too. Config
validation refuses ``javascript:`` URLs, so the test also serves them behind its back, to
check that the page itself never makes a link of one.

Every payload sets ``window.__pwned`` if it ever runs. Each case checks that it did not, that
no element, handler or link was injected anywhere in the DOM, and that the literal text is
on the page where the name belongs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from browser_helpers import Chromium, Tab, chromium_binary, free_port
from reliability_report import Reliability

from aegis.api.app import ApiApp
from aegis.config.load import load_config
from aegis.demo import DemoServices, Fault
from aegis.errors import ConfigError
from aegis.history.sqlite import SqliteHistory
from aegis.records import Run, RunStatus, StepResult, StepStatus, Verdict

AREA = "Hostile HTTP input"

IMG = "<img src=x onerror=window.__pwned=1>"
SCRIPT = "<script>window.__pwned=1</script>"
SVG = '"><svg onload=window.__pwned=1>'
LINK = '<a href="javascript:window.__pwned=1">docs</a>'
JS_URL = "javascript:window.__pwned=1"

CONFIG = """\
aegis:
  name: {script}
  tagline: {svg}
services:
  qaagent:
    name: QA Agent
    url: {qaagent}
  ghost:
    name: {img}
    description: {svg}
    url: http://127.0.0.1:{dead_port}
    health_endpoint: {health}
    features: [{link}]
workflows:
  hostile:
    name: {img}
    description: {script}
    steps:
      - {{type: test, service: qaagent, name: {svg}, retries: 1, retry_delay: 0.01}}
      - {{type: report, condition: always}}
history:
  path: {history}
"""

# Anything a payload could have put into the page.
INJECTED = """Array.from(document.querySelectorAll(
  'img, svg:not(.trend-svg), iframe, object, embed, a[href^="javascript:" i], [onerror],'
  + ' [onload], [onclick]'
)).length + Array.from(document.scripts).filter(
  (s) => s.id !== 'aegis-fallback' && !/\\/(base|insight|app)\\.js$/.test(s.src)).length"""


@dataclass(frozen=True)
class HostilePage:
    tab: Tab
    run_id: str


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostilePage]:
    """The page of a hostile config, open while a run of its workflow went by."""
    tmp = tmp_path_factory.mktemp("escaping")
    with DemoServices() as demo:
        config_path = tmp / "aegis.yaml"
        values = {"img": IMG, "script": SCRIPT, "svg": SVG, "link": LINK, "health": f"/{IMG}"}
        config_path.write_text(
            CONFIG.format(
                qaagent=demo.qaagent_url,
                dead_port=free_port(),
                history=tmp / "history.db",
                **{name: json.dumps(value) for name, value in values.items()},
            )
        )
        config = load_config(config_path, environ={})
        seed_hostile_tests(tmp / "history.db")
        # What validation refuses (see test_javascript_urls_never_become_links), served anyway.
        qaagent = dataclasses.replace(config.services["qaagent"], docs_url=JS_URL, repo_url=JS_URL)
        config = dataclasses.replace(config, services={**config.services, "qaagent": qaagent})
        with (
            ApiApp(config, environ={}, port=0) as app,
            Chromium(chromium_binary(), tmp / "chromium") as browser,
        ):
            tab = browser.tab(1280, 900)
            tab.open(f"{app.url}/")
            tab.wait_for(
                "document.body.dataset.mode === 'live'"
                " && document.querySelector('#events-state').dataset.state === 'live'"
                " && !document.querySelector('.badge.health[data-status=\"checking\"]')"
            )
            demo.qaagent.inject("/api/runs", Fault(status=503, times=1))  # one retry event
            answer = httpx.post(f"{app.url}/api/workflows/hostile/run?wait=30", timeout=60)
            assert answer.status_code == 200, answer.text
            run_id = answer.json()["run_id"]
            tab.wait_for(
                "Array.from(document.querySelectorAll('#event-list .event'))"
                f".some((e) => e.dataset.runId === {json.dumps(run_id)}"
                " && e.dataset.type === 'workflow.completed')"
            )
            row = f"#run-list .run-row[data-run-id={json.dumps(run_id)}]"
            tab.wait_for(f"!!document.querySelector({json.dumps(row)})")
            tab.evaluate(f"document.querySelector({json.dumps(row)}).click()")
            tab.wait_for("document.querySelectorAll('#run-detail .step-result').length === 2")
            yield HostilePage(tab, run_id)


def seed_hostile_tests(path: Path) -> None:
    """Two earlier runs of the hostile workflow: a test named with markup fails, a bug
    named with markup is filed for it, then it passes (so it is flaky)."""
    with SqliteHistory(path) as store:
        for n, failing in ((1, [IMG]), (2, [])):
            data = {"total": 2, "passed": 2 - len(failing), "failed": len(failing),
                    "failures": [{"test": t, "message": SCRIPT} for t in failing]}  # fmt: skip
            steps = [StepResult("test", "test", "qaagent", StepStatus.SUCCEEDED, 5.0, data)]
            if failing:
                filed = {"submitted": 1, "report_ids": [SVG], "bug_reports": {IMG: SVG}}
                steps.append(
                    StepResult("bugs", "submit_bugs", "qaagent", StepStatus.SUCCEEDED, 1.0, filed)
                )
            store.finish(
                Run(
                    f"seeded-{n}",
                    "hostile",
                    RunStatus.SUCCEEDED,
                    f"2026-01-01T10:0{n}:00.000Z",
                    steps=tuple(steps),
                    verdict=Verdict.PASSED,
                )
            )


def texts(tab: Tab, selector: str) -> list[str]:
    """The rendered text (innerText) of every element ``selector`` matches, in order."""
    found = tab.evaluate(
        f"Array.from(document.querySelectorAll({json.dumps(selector)}), (e) => e.innerText)"
    )
    return [str(text) for text in found]


def assert_nothing_ran(tab: Tab) -> str:
    """Check that no payload ran or became markup; a sentence saying so."""
    assert tab.evaluate("typeof window.__pwned") == "undefined"
    assert tab.evaluate(INJECTED) == 0
    assert tab.errors() == []
    return "window.__pwned unset; no injected element, handler or script"


EXPECTED = "shown as literal text; nothing runs, no element is created"


def test_identity(page: HostilePage, reliability: Reliability) -> None:
    assert texts(page.tab, "#aegis-name") == [SCRIPT]
    assert texts(page.tab, "#aegis-tagline") == [SVG]
    assert page.tab.evaluate("document.title") == f"{SCRIPT} — {SVG}"
    observed = f"heading and title read `{SCRIPT}`; {assert_nothing_ran(page.tab)}"
    reliability.record(
        '`<script>` in `aegis.name`, `"><svg onload>` in the tagline',
        expected=EXPECTED,
        observed=observed,
    )


def test_service_name_and_description(page: HostilePage, reliability: Reliability) -> None:
    card = '.service-card[data-key="ghost"]'
    assert texts(page.tab, f"{card} h3") == [IMG]
    assert texts(page.tab, f"{card} .description") == [SVG]
    observed = f"card reads `{IMG}` and `{SVG}`; {assert_nothing_ran(page.tab)}"
    reliability.record(
        '`<img onerror>` in a service name, `"><svg onload>` in its description',
        expected=EXPECTED,
        observed=observed,
    )


def test_service_feature_with_a_link(page: HostilePage, reliability: Reliability) -> None:
    card = '.service-card[data-key="ghost"]'
    assert texts(page.tab, f"{card} .features li") == [LINK]
    assert page.tab.evaluate(f"document.querySelectorAll('{card} a').length") == 0
    observed = f"feature reads `{LINK}`, no link in the card; {assert_nothing_ran(page.tab)}"
    reliability.record(
        "`<a href=javascript:…>` markup in a service feature",
        expected=EXPECTED,
        observed=observed,
    )


def test_health_endpoint_in_a_down_services_error(
    page: HostilePage, reliability: Reliability
) -> None:
    card = '.service-card[data-key="ghost"]'
    (health,) = texts(page.tab, f"{card} .badge.health")
    (detail,) = texts(page.tab, f"{card} .health-detail")
    assert health == "down"
    assert f"/{IMG}" in detail
    observed = f"health error names the URL ending in `{IMG}`; {assert_nothing_ran(page.tab)}"
    reliability.record(
        "`<img onerror>` in `health_endpoint` of a service that is down",
        expected=EXPECTED,
        observed=observed,
    )


def test_javascript_urls_never_become_links(
    page: HostilePage, reliability: Reliability, tmp_path: Path
) -> None:
    config = tmp_path / "aegis.yaml"
    config.write_text(f"services:\n  s:\n    url: http://x.test\n    docs_url: '{JS_URL}'\n")
    with pytest.raises(ConfigError) as refused:
        load_config(config, environ={})
    assert "services.s.docs_url: expected an http:// or https:// URL" in str(refused.value)
    card = '.service-card[data-key="qaagent"]'
    assert texts(page.tab, f"{card} h3") == ["QA Agent"]
    assert page.tab.evaluate(f"document.querySelectorAll('{card} a').length") == 0
    observed = (
        "config validation refuses it; served anyway, the card shows no link; "
        f"{assert_nothing_ran(page.tab)}"
    )
    reliability.record(
        "`javascript:` URL as `docs_url` and `repo_url`",
        expected="never a link on the page",
        observed=observed,
    )


def test_workflow_name_and_description(page: HostilePage, reliability: Reliability) -> None:
    card = '.workflow-card[data-key="hostile"]'
    assert texts(page.tab, f"{card} h3") == [IMG]
    assert texts(page.tab, f"{card} .description") == [SCRIPT]
    row = f'#run-list .run-row[data-run-id="{page.run_id}"] .run-workflow'
    assert texts(page.tab, row) == [IMG]
    assert texts(page.tab, "#run-detail h3") == [f"Run {page.run_id[:8]} · {IMG}"]
    observed = f"card, run row and run detail read `{IMG}`; {assert_nothing_ran(page.tab)}"
    reliability.record(
        "`<img onerror>` in a workflow name, `<script>` in its description",
        expected=EXPECTED,
        observed=observed,
    )


def test_step_name(page: HostilePage, reliability: Reliability) -> None:
    workflow_steps = '.workflow-card[data-key="hostile"] .step-name'
    assert texts(page.tab, workflow_steps) == [SVG, "report"]
    assert texts(page.tab, "#run-detail .step-result .step-name") == [SVG, "report"]
    observed = f"workflow card and run detail read `{SVG}`; {assert_nothing_ran(page.tab)}"
    reliability.record(
        '`"><svg onload>` in a step name',
        expected=EXPECTED,
        observed=observed,
    )


def test_names_in_the_events_panel(page: HostilePage, reliability: Reliability) -> None:
    events = f'#event-list .event[data-run-id="{page.run_id}"]'
    workflows = texts(page.tab, f"{events} .event-workflow")
    assert len(workflows) == 7 and set(workflows) == {IMG}
    (retrying,) = texts(page.tab, f'{events}[data-type="step.retrying"] .event-text')
    assert retrying.startswith(f"{SVG}: attempt 1 failed (http)")
    observed = (
        f"7 events of the run, each naming `{IMG}`, the retry naming `{SVG}`; "
        f"{assert_nothing_ran(page.tab)}"
    )
    reliability.record(
        "workflow and step names in streamed events (Recent events panel)",
        expected=EXPECTED,
        observed=observed,
    )


def test_test_ids_and_bug_ids_in_the_flaky_panel_and_a_runs_detail(
    page: HostilePage, reliability: Reliability
) -> None:
    tab = page.tab
    tab.wait_for("document.querySelectorAll('#flaky-list .test-link').length === 1")
    assert texts(tab, "#flaky-list .test-link") == [IMG]
    tab.evaluate("document.querySelector('#flaky-list .test-link').click()")
    tab.wait_for("document.querySelectorAll('#test-detail .test-outcomes li').length === 2")
    assert texts(tab, "#test-detail h3") == [IMG]
    assert SCRIPT in texts(tab, "#test-detail .test-message")
    tab.evaluate("location.hash = '#run=seeded-1'; location.reload()")
    tab.wait_for("document.querySelectorAll('#run-detail .reported-tests li').length === 1")
    assert texts(tab, "#run-detail .reported-tests .test-link") == [IMG]
    assert SVG in texts(tab, "#run-detail .bug-reports")[0]
    observed = (
        f"panel, test history and run detail read `{IMG}`, the bug `{SVG}`; "
        f"{assert_nothing_ran(tab)}"
    )
    reliability.record(
        '`<img onerror>` as a test id, `<script>` as its message, `"><svg onload>` as a bug id',
        expected=EXPECTED,
        observed=observed,
    )
