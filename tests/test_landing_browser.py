"""The landing page in headless Chromium (Debian's ``chromium``), driven over DevTools.

Live: ``aegis serve``'s app (``ApiApp``) with the demo services behind it and a history of
runs the engine made; the page must show the identity, services with health, workflows and
runs that the API served, with hostile names as text. Runs started through the API show
their steps live (started, retrying, completed, with attempts) in the recent runs and in
the Recent events panel, from the event stream or, without one, by polling.
Offline: ``index.html`` from disk, and from a server whose API is missing, must show the
example data, the offline notice and a "not live" events panel. Screenshots of both, at
375 and 1280 px wide, go under tmp, or to ``docs/screenshots/`` with
``AEGIS_UPDATE_SCREENSHOTS=1`` (README: refreshing the screenshots).

Every wait polls the page for a condition with a timeout (``Tab.wait_for``); nothing sleeps
to synchronise. Chromium missing: the tests skip, or fail when CI is set.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest
from browser_helpers import (
    LANDING,
    Chromium,
    Node,
    Tab,
    api_server,
    chromium_binary,
    free_port,
    screenshot_dir,
    static_only_server,
)

from aegis import __version__
from aegis.api.app import ApiApp
from aegis.config.load import load_config
from aegis.config.model import Config
from aegis.demo import DemoServices, Fault
from aegis.runs import run_workflow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "aegis.example.yaml"
HOSTILE_IMG = "<img src=x onerror=alert(1)>"
NBSP = "\N{NO-BREAK SPACE}"  # between a number and its unit on the page


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    with Chromium(chromium_binary(), tmp_path_factory.mktemp("chromium")) as browser:
        yield browser


@pytest.fixture
def tab(chromium: Chromium) -> Iterator[Tab]:
    page = chromium.tab(1280, 900)
    try:
        yield page
    finally:
        page.close()


def js(value: object) -> str:
    """A Python string or number as a JavaScript literal."""
    return json.dumps(value)


# -- the live sites: demo services, a config, runs made by the engine --------------------------

CONFIG = """\
aegis:
  name: {identity}
  tagline: "{tagline}"
services:
  qaagent:
    name: QA Agent
    description: Route discovery, risk analysis, test generation
    url: {qaagent}
    features: [Route Discovery, "{feature}"]
    docs_url: https://docs.example.test/qaagent
  bugalizer:
    name: Bugalizer
    description: Bug triage and report intake
    url: {bugalizer}
    features: [Bug Intake, Triage]
  ghost:
    name: "{ghost}"
    description: '{ghost_description}'
    url: http://127.0.0.1:{dead_port}
workflows:
  full_pipeline:
    name: Full QA Pipeline
    description: Discover, test, file bugs, verify
    timeout: 900
    steps:
      - {{type: discover, service: qaagent}}
      - {{type: test, service: qaagent, retries: 2, retry_delay: 0.01, timeout: 60,
          retry_on: [5xx, connection]}}
      - {{type: submit_bugs, service: bugalizer, condition: has_failures,
          with: {{project_id: web-shop}}}}
      - {{type: verify, service: qaagent, condition: has_failures}}
      - {{type: report, condition: always}}
  smoke:
    name: Parallel smoke check
    steps:
      - {{type: test, name: test-web, service: qaagent, parallel: true}}
      - {{type: test, name: test-api, service: qaagent, parallel: true}}
      - {{type: report, condition: always}}
  regression:
    name: "{flow}"
    description: "{flow_description}"
    params:
      note: {{default: "{note}"}}
    steps:
      - {{type: test, name: "{step}", service: qaagent, retries: 1, retry_delay: 0.01}}
history:
  path: {history}
"""
# Names with markup in them for the escaping test, and plain ones for the screenshots.
HOSTILE_NAMES = {
    "identity": "Aegis Live Deck",
    "tagline": "Tagline with <script>alert('tagline')</script>",
    "feature": "<b>Bold</b> Orchestration",
    "ghost": f"Ghost {HOSTILE_IMG}",
    "ghost_description": '"onerror=alert(2) x="',
    "flow": f"Hostile {HOSTILE_IMG} flow",
    "flow_description": "<script>alert(3)</script>",
    "step": "<svg onload=alert(4)>",
    "note": "<img src=x onerror=alert(5)>",
}
PLAIN_NAMES = {
    "identity": "Aegis",
    "tagline": "The AI Quality Control Plane",
    "feature": "Test Orchestration",
    "ghost": "Perf Lab",
    "ghost_description": "Load and soak tests (not started here, so it shows as down)",
    "flow": "Checkout regression",
    "flow_description": "The checkout suite, retried once on failure",
    "step": "checkout-tests",
    "note": "nightly",
}


@dataclass(frozen=True)
class LiveSite:
    url: str
    config: Config
    config_path: Path
    run_ids: list[str]  # oldest first: full_pipeline, smoke, regression
    failed_run: str  # the regression one: its test step failed twice with 503
    app: ApiApp

    def start(self, workflow: str, wait: float | None = None) -> dict[str, object]:
        """POST a run of ``workflow`` (waiting up to ``wait`` s for it); the answer."""
        query = f"?wait={wait}" if wait else ""
        answer = httpx.post(f"{self.url}api/workflows/{workflow}/run{query}", timeout=60)
        assert answer.status_code in (200, 202), answer.text
        body: dict[str, object] = answer.json()
        return body


@pytest.fixture(scope="module")
def demo_pair() -> Iterator[DemoServices]:
    with DemoServices() as demo:
        yield demo


@contextlib.contextmanager
def live_site(demo: DemoServices, tmp: Path, names: dict[str, str]) -> Iterator[LiveSite]:
    """Runs of the three workflows in a fresh history, and a server in front of them."""
    config_path = tmp / "aegis.yaml"
    config_path.write_text(
        CONFIG.format(
            qaagent=demo.qaagent_url,
            bugalizer=demo.bugalizer_url,
            dead_port=free_port(),
            history=tmp / "history.db",
            **names,
        )
    )
    config = load_config(config_path, environ={})
    run = partial(run_workflow, config, environ={}, warn=print)
    demo.qaagent.inject("/api/runs", Fault(status=503, times=1))  # the test step retries once
    runs = [run("full_pipeline"), run("smoke")]
    demo.qaagent.inject("/api/runs", Fault(status=503, times=None))
    try:
        runs.append(run("regression"))
    finally:
        demo.qaagent.clear_faults()
    assert [r.status.value for r in runs] == ["succeeded", "succeeded", "failed"]
    assert len(runs[0].steps[1].attempts) == 2
    with api_server(config_path) as app:
        ids = [r.run_id for r in runs]
        yield LiveSite(f"{app.url}/", config, config_path, ids, runs[-1].run_id, app)


@pytest.fixture(scope="module")
def live(demo_pair: DemoServices, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSite]:
    """A site whose names and descriptions carry markup."""
    with live_site(demo_pair, tmp_path_factory.mktemp("live"), HOSTILE_NAMES) as site:
        yield site


@pytest.fixture(scope="module")
def showcase(
    demo_pair: DemoServices, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveSite]:
    """The same with plain names, for the screenshots."""
    with live_site(demo_pair, tmp_path_factory.mktemp("showcase"), PLAIN_NAMES) as site:
        yield site


# What the page shows once it has loaded: identity, health of every service, the runs, and
# the linked run's detail when the URL names one.
LOADED = """document.body.dataset.mode === 'live'
  && !document.querySelector('#service-list .badge.health[data-status="checking"]')
  && document.querySelector('#run-list-status').dataset.state !== undefined
  && (!location.hash || !!document.querySelector('#run-detail .step-result'))
  && document.querySelector('#events-state').dataset.state === 'live'"""


def open_live(tab: Tab, url: str) -> Node:
    """Load ``url`` of a live site, wait until it has drawn everything, return its DOM."""
    tab.open(url)
    tab.wait_for(LOADED)
    return tab.dom()


def test_the_live_page_shows_what_the_api_serves(tab: Tab, live: LiveSite) -> None:
    page = open_live(tab, f"{live.url}#run={live.failed_run}")
    assert page.one("body").attrs["data-mode"] == "live"
    assert page.by_id("offline-notice").text == ""
    assert page.by_id("aegis-name").text == "Aegis Live Deck"
    assert page.by_id("aegis-tagline").text == "Tagline with <script>alert('tagline')</script>"
    assert page.by_id("aegis-version").text == f"version {__version__}"

    # tools, with live health
    services = page.by_id("services")
    cards = services.all(cls="service-card")
    assert [c.attrs["data-key"] for c in cards] == ["qaagent", "bugalizer", "ghost"]
    for key in ("qaagent", "bugalizer"):
        health = services.one(cls="service-card", data_key=key).one(cls="health")
        assert health.attrs["data-status"] == "up"
        assert health.text.startswith("up · ") and health.text.endswith(f"{NBSP}ms")
    ghost = services.one(cls="service-card", data_key="ghost")
    assert ghost.one("h3").text == f"Ghost {HOSTILE_IMG}"
    assert ghost.one(cls="description").text == '"onerror=alert(2) x="'
    assert ghost.one(cls="health").attrs["data-status"] == "down"
    assert ghost.one(cls="health-detail").text  # the reason it is down
    qaagent = services.one(cls="service-card", data_key="qaagent")
    assert [li.text for li in qaagent.one(cls="features").all("li")] == [
        "Route Discovery",
        "<b>Bold</b> Orchestration",
    ]
    assert qaagent.one("a").attrs["href"] == "https://docs.example.test/qaagent"

    # workflows, steps in order with their settings
    workflows = page.by_id("workflows")
    keys = [c.attrs["data-key"] for c in workflows.all(cls="workflow-card")]
    assert keys == list(live.config.workflows)
    for key, spec in live.config.workflows.items():
        card = workflows.one(cls="workflow-card", data_key=key)
        assert card.one("h3").text == spec.name
        assert [s.attrs["data-step"] for s in card.all(cls="step")] == [s.name for s in spec.steps]
    pipeline = workflows.one(cls="workflow-card", data_key="full_pipeline")
    test_step = pipeline.one(cls="step", data_step="test")
    facts = {li.attrs["data-fact"]: li.text for li in test_step.all("li")}
    assert facts == {"service": "qaagent", "retries": "retries 2 on 5xx, connection",
                     "timeout": f"timeout 60{NBSP}s"}  # fmt: skip
    assert pipeline.one(cls="step", data_step="verify").one(data_fact="condition").text == (
        "when has_failures"
    )
    (group,) = workflows.one(cls="workflow-card", data_key="smoke").all(cls="parallel-group")
    assert [s.attrs["data-step"] for s in group.all(cls="step")] == ["test-web", "test-api"]
    hostile = workflows.one(cls="workflow-card", data_key="regression")
    assert hostile.one("h3").text == f"Hostile {HOSTILE_IMG} flow"
    assert hostile.one(cls="step").one(cls="step-name").text == "<svg onload=alert(4)>"

    # recent runs, newest first, and the linked run's steps and attempts
    rows = page.by_id("run-list").all(cls="run-row")
    assert [r.attrs["data-run-id"] for r in rows] == live.run_ids[::-1]
    assert all(r.tag == "button" for r in rows)
    newest = rows[0]
    assert newest.one(cls="run-workflow").text == f"Hostile {HOSTILE_IMG} flow"
    assert newest.one(cls="status").attrs["data-status"] == "failed"
    assert newest.one(cls="run-trigger").text == "via cli"
    assert rows[2].one(cls="verdict").text == "verdict failed"  # the demo has failing tests
    assert newest.attrs["aria-expanded"] == "true"
    detail = page.by_id("run-detail")
    assert "hidden" not in detail.attrs
    assert detail.attrs["data-run-id"] == live.failed_run
    facts = dict(zip((dt.text for dt in detail.all("dt")), detail.all("dd"), strict=True))
    assert facts["Params"].one("code").text == "note=<img src=x onerror=alert(5)>"
    (step,) = detail.all(cls="step-result")
    assert step.attrs["data-status"] == "failed"
    assert step.one(cls="step-name").text == "<svg onload=alert(4)>"
    assert step.one(cls="error").one("code").text == "http"
    attempts = step.all(cls="attempt")
    assert [a.attrs["data-attempt"] for a in attempts] == ["1", "2"]
    assert all("503" in a.text and "http" in a.text for a in attempts)

    # nothing from the API became markup
    charts = [svg for svg in page.all("svg") if svg.attrs.get("class") != "trend-svg"]
    assert page.all("img") == [] and charts == [] and page.all("b") == []
    assert [s.attrs.get("id") or s.attrs.get("src") for s in page.all("script")] == [
        "aegis-fallback",
        "base.js",
        "insight.js",
        "app.js",
    ]


def test_live_screenshot(
    tab: Tab, showcase: LiveSite, demo_pair: DemoServices, tmp_path: Path
) -> None:
    """A finished run and one in its slow test step, the events of both in the panel."""
    shots = screenshot_dir(tmp_path, os.environ)
    showcase.start("smoke", wait=30)
    demo_pair.qaagent.inject("/api/runs", Fault(status=None, delay=60, times=1))
    run_id = str(showcase.start("full_pipeline")["run_id"])
    try:
        tab.open(f"{showcase.url}#run={run_id}")
        tab.wait_for(LOADED)
        tab.wait_for(
            f"{step_in_detail('test')} && {step_in_detail('test')}.dataset.status === 'running'"
        )
        for width in (1280, 375):
            tab.screenshot(shots / f"live-{width}.png", width)
    finally:
        demo_pair.qaagent.clear_faults()
        httpx.post(f"{showcase.url}api/runs/{run_id}/cancel", timeout=30)


# -- live progress: the event stream, and polling without it ----------------------------------


def row(run_id: str) -> str:
    return f"document.querySelector('#run-list .run-row[data-run-id=\"' + {js(run_id)} + '\"]')"


def step_in_detail(name: str) -> str:
    return f"document.querySelector('#run-detail .step-result[data-step=\"' + {js(name)} + '\"]')"


def event_types(tab: Tab, run_id: str) -> list[str]:
    """The types of the events the panel lists for ``run_id``, newest first."""
    types = tab.evaluate(
        f"""Array.from(document.querySelectorAll('#event-list .event'))
              .filter((e) => e.dataset.runId === {js(run_id)}).map((e) => e.dataset.type)"""
    )
    return list(types)


def test_a_rerun_shows_what_it_reran_and_what_it_reused(
    tab: Tab, live: LiveSite, demo_pair: DemoServices
) -> None:
    demo_pair.bugalizer.inject("/api/v1/reports", Fault(status=503, times=1))
    failed = live.start("full_pipeline", wait=60)  # submit_bugs fails, the rest goes on
    assert failed["status"] == "failed"
    old = str(failed["run_id"])
    answer = httpx.post(f"{live.url}api/runs/{old}/rerun", json={"from_failed": True}, timeout=60)
    assert answer.status_code == 202, answer.text
    new = answer.json()["run_id"]
    page = open_live(tab, f"{live.url}#run={new}")
    detail = page.by_id("run-detail")
    assert old in detail.text and "Rerun of" in detail.text
    metas = [m.text for m in detail.all(cls="step-meta")]
    assert metas[0] == "discover · qaagent · reused from the run it reran"
    assert metas[2] == "submit_bugs · bugalizer"  # the failed step ran again


def test_a_running_runs_steps_update_live(
    tab: Tab, showcase: LiveSite, demo_pair: DemoServices
) -> None:
    page = open_live(tab, showcase.url)
    assert page.by_id("events").one("h2").text == "Recent events"
    tab.evaluate("window.__sameDocument = true")
    # The test step's first call answers 503 after 5 s (the time to look at the running
    # run); the retry gets the normal answer.
    demo_pair.qaagent.inject("/api/runs", Fault(status=503, delay=5, times=1))
    try:
        run_id = str(showcase.start("full_pipeline")["run_id"])

        # the new run's row appears by itself and says which step is going
        tab.wait_for(f"{row(run_id)} && {row(run_id)}.dataset.status === 'running'")
        progress = tab.wait_for(
            f"""(({row(run_id)}.querySelector('.run-progress') || {{}}).textContent || '')
                  .includes('test running, attempt 1 of 3') && {row(run_id)}
                  .querySelector('.run-progress').textContent"""
        )
        assert progress == "1 of 5 steps done · test running, attempt 1 of 3"

        # opened from the keyboard, the run shows every step: done, going and to come
        tab.evaluate(f"{row(run_id)}.focus()")
        tab.press("Enter")
        tab.wait_for(
            f"{step_in_detail('test')} && {step_in_detail('test')}.dataset.status === 'running'"
        )
        detail = tab.dom().by_id("run-detail")
        assert detail.attrs["data-run-id"] == run_id
        steps = {s.attrs["data-step"]: s for s in detail.all(cls="step-result")}
        assert list(steps) == ["discover", "test", "submit_bugs", "verify", "report"]
        assert {name: s.attrs["data-status"] for name, s in steps.items()} == {
            "discover": "succeeded",
            "test": "running",
            "submit_bugs": "pending",
            "verify": "pending",
            "report": "pending",
        }
        assert steps["test"].one(cls="step-attempts").text == "attempt 1 of 3"
        assert steps["discover"].one("caption").text == "1 attempt"
        assert event_types(tab, run_id) == ["step.started", "step.completed", "step.started",
                                             "workflow.started"]  # fmt: skip

        # then, with no reload, the retry and the rest of the run
        tab.wait_for(f"{step_in_detail('test')}.dataset.status === 'succeeded'", timeout=30)
        tab.wait_for(f"{row(run_id)}.dataset.status === 'succeeded'", timeout=30)
        tab.wait_for(
            f"""document.querySelector('#run-detail .run-facts .badge.status')
                  .dataset.status === 'succeeded'
                && !!{step_in_detail("test")}.querySelector('table.attempts')"""
        )
    finally:
        demo_pair.qaagent.clear_faults()
    detail = tab.dom().by_id("run-detail")
    test_step = detail.one(cls="step-result", data_step="test")
    assert test_step.one("caption").text == "2 attempts"
    assert [a.attrs["data-attempt"] for a in test_step.all(cls="attempt")] == ["1", "2"]
    assert {s.attrs["data-status"] for s in detail.all(cls="step-result")} == {"succeeded"}
    types = event_types(tab, run_id)
    assert types[0] == "workflow.completed" and types[-1] == "workflow.started"
    assert "step.retrying" in types and types.count("step.completed") == 5
    events = tab.dom().by_id("event-list").all(cls="event", data_run_id=run_id)
    retrying = next(e for e in events if e.attrs["data-type"] == "step.retrying")
    assert retrying.one(cls="event-workflow").text == "Full QA Pipeline"
    assert retrying.one(cls="event-run").one("code").text == run_id[:8]
    assert retrying.one(cls="event-text").text == (
        f"test: attempt 1 failed (http), retrying after 0.01{NBSP}s"
    )
    assert retrying.one("time").attrs["datetime"].endswith("Z")
    assert tab.evaluate("window.__sameDocument") is True  # updated in place, never reloaded
    assert tab.errors() == []


# A stand-in for EventSource whose connection fails at once, every time.
FAILING_STREAM = """
window.__streams = 0;
window.EventSource = class extends EventTarget {
  constructor(url) {
    super();
    window.__streams += 1;
    this.readyState = 0;
    this.timer = setInterval(() => this.dispatchEvent(new Event("error")), 20);
  }
  close() { clearInterval(this.timer); this.readyState = 2; }
};
"""


@pytest.mark.parametrize(
    "setup",
    ["delete window.EventSource;", FAILING_STREAM],
    ids=["no-eventsource", "stream-keeps-failing"],
)
def test_without_a_stream_the_page_polls_for_events(
    tab: Tab, showcase: LiveSite, setup: str
) -> None:
    tab.before_scripts(setup)
    tab.open(showcase.url)
    tab.wait_for("document.querySelector('#events-state').dataset.state === 'polling'")
    assert "polling every 3" in tab.text("#events-state")
    run_id = str(showcase.start("smoke", wait=30)["run_id"])
    # the next poll (every 3 s) brings the run's events, and the run's row follows them
    tab.wait_for(f"""Array.from(document.querySelectorAll('#event-list .event')).some(
        (e) => e.dataset.runId === {js(run_id)} && e.dataset.type === 'workflow.completed')""")
    tab.wait_for(f"{row(run_id)} && {row(run_id)}.dataset.status === 'succeeded'")
    types = event_types(tab, run_id)
    assert types[0] == "workflow.completed" and types[-1] == "workflow.started"
    assert types.count("step.started") == types.count("step.completed") == 3
    assert tab.text("#events-state").startswith("Not streaming")
    if setup == FAILING_STREAM:
        assert tab.evaluate("window.__streams") == 1  # given up after 3 errors, not retried yet
    assert tab.errors() == []


def test_polling_follows_a_restarted_server(tab: Tab, showcase: LiveSite) -> None:
    """Its event ids start again from 1: the page must not wait for the old ones to pass."""
    tab.before_scripts("delete window.EventSource;")
    has_completed = """(runId) => Array.from(document.querySelectorAll('#event-list .event'))
        .some((e) => e.dataset.runId === runId && e.dataset.type === 'workflow.completed')"""
    with api_server(showcase.config_path) as first:
        port = first.server.server_address[1]
        tab.open(f"{first.url}/")
        tab.wait_for("document.querySelector('#events-state').dataset.state === 'polling'")
        for _ in range(2):  # more events than the second server will have made
            run_id = str(
                httpx.post(f"{first.url}/api/workflows/smoke/run?wait=30").json()["run_id"]
            )
            tab.wait_for(f"({has_completed})({js(run_id)})")
    tab.wait_for("document.querySelector('#events-state').dataset.state === 'offline'")
    with api_server(showcase.config_path, port=port) as second:
        run_id = str(httpx.post(f"{second.url}/api/workflows/smoke/run?wait=30").json()["run_id"])
        tab.wait_for(f"({has_completed})({js(run_id)})")
        assert tab.evaluate("document.querySelector('#events-state').dataset.state") == "polling"
    assert event_types(tab, run_id)[-1] == "workflow.started"
    assert tab.errors() == []


def test_when_the_server_goes_away_the_events_panel_says_not_live(
    tab: Tab, showcase: LiveSite
) -> None:
    with api_server(showcase.config_path) as app:
        tab.open(f"{app.url}/")
        tab.wait_for(LOADED)
    # the stream drops; after three failed reconnects the page polls, and polling fails
    tab.wait_for("document.querySelector('#events-state').dataset.state === 'offline'", 30)
    assert tab.text("#events-state").startswith("Not live: the API cannot be reached")
    assert tab.evaluate("document.body.dataset.mode") == "live"  # what it showed stays
    assert tab.errors() == []


# -- offline ---------------------------------------------------------------------------------


def assert_shows_the_example(page: Node) -> None:
    example = load_config(EXAMPLE, environ={})
    assert page.one("body").attrs["data-mode"] == "offline"
    notice = page.by_id("offline-notice")
    assert notice.attrs["aria-live"] == "polite"
    assert notice.text.startswith("Offline — showing example data.")
    assert page.by_id("aegis-name").text == example.identity.name
    assert page.by_id("aegis-tagline").text == example.identity.tagline
    cards = page.by_id("services").all(cls="service-card")
    assert [c.attrs["data-key"] for c in cards] == list(example.services)
    assert {c.one(cls="health").attrs["data-status"] for c in cards} == {"offline"}
    workflows = page.by_id("workflows").all(cls="workflow-card")
    assert [w.attrs["data-key"] for w in workflows] == list(example.workflows)
    for card, spec in zip(workflows, example.workflows.values(), strict=True):
        assert [s.attrs["data-step"] for s in card.all(cls="step")] == [s.name for s in spec.steps]
    assert page.by_id("run-list").all(cls="run-row") == []
    assert page.by_id("run-list-status").attrs["data-state"] == "offline"
    state = page.by_id("events-state")
    assert state.attrs["data-state"] == "offline"
    assert state.text == "Not live: events come from a running Aegis server (aegis serve)."
    assert page.by_id("event-list").all("li") == []
    assert page.by_id("event-list-empty").text == "No events to show."
    assert page.by_id("flaky-status").attrs["data-state"] == "offline"
    for button in page.by_id("workflows").all(cls="start-run"):  # disabled, saying why
        assert "disabled" in button.attrs and "aria-describedby" in button.attrs
    assert {"disabled"} <= page.by_id("runs-older").attrs.keys()


def open_offline(tab: Tab, url: str) -> Node:
    tab.open(url)
    tab.wait_for("document.body.dataset.mode === 'offline'")
    assert tab.errors() == []
    return tab.dom()


def test_from_disk_the_page_shows_the_example_data(tab: Tab) -> None:
    assert_shows_the_example(open_offline(tab, (LANDING / "index.html").as_uri()))


def test_without_an_api_the_page_shows_the_example_data(tab: Tab) -> None:
    with static_only_server() as url:
        page = open_offline(tab, url)
    assert_shows_the_example(page)
    assert "The API did not answer" in page.by_id("offline-notice").text


def test_offline_screenshot(tab: Tab, tmp_path: Path) -> None:
    shots = screenshot_dir(tmp_path, os.environ)
    open_offline(tab, (LANDING / "index.html").as_uri())
    for width in (1280, 375):
        tab.screenshot(shots / f"offline-{width}.png", width)
