"""The page at work in headless Chromium, against a real server: the API key prompt with
``auth.protect: all``, starting and cancelling a run from the page, rerun buttons, the run
list's filters and pages, the flaky tests panel over a seeded history of 2,000 runs (it
agrees with ``aegis tests --flaky``), trend charts, and screenshots at 375 and 1280 px in
light and dark, written under the test's tmp path only."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from browser_helpers import Chromium, Tab, api_server, chromium_binary, png_size
from history_seed import FLAKY, seed

from aegis.cli import main
from aegis.demo import DemoServices, Fault

KEY = "page-key-123"
CONFIG = """\
services:
  qaagent: {{url: "{qaagent}"}}
  bugalizer: {{url: "{bugalizer}"}}
workflows:
  pipeline:
    name: Full QA Pipeline
    steps:
      - {{type: discover, service: qaagent}}
      - {{type: test, service: qaagent}}
      - {{type: submit_bugs, service: bugalizer, condition: has_failures,
          with: {{project_id: web-shop}}}}
      - {{type: verify, service: qaagent, condition: has_failures}}
      - {{type: report, condition: always}}
  smoke:
    steps: [{{type: discover, service: qaagent}}]
  slow:
    steps:
      - {{type: discover, service: qaagent}}
      - {{type: test, service: qaagent, timeout: 120}}
  nightly:
    name: Nightly suite
    steps: [{{type: report}}]
  tuned:
    params:
      suite: {{type: choice, choices: [smoke, full], default: smoke, description: which tests}}
      shards: {{type: integer, default: 2}}
      dry_run: {{type: boolean, default: false}}
      token: {{type: string, secret: true}}
    steps:
      - type: discover
        service: qaagent
        with: {{path: "/api/routes?suite=${{{{ params.suite }}}}"}}
history: {{path: "{history}"}}
{extra}
"""


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


@contextlib.contextmanager
def site(demo: DemoServices, tmp: Path, extra: str = "") -> Iterator[tuple[str, Path]]:
    config = tmp / "aegis.yaml"
    config.write_text(
        CONFIG.format(
            qaagent=demo.qaagent_url,
            bugalizer=demo.bugalizer_url,
            history=tmp / "history.db",
            extra=extra,
        )
    )
    with api_server(config) as app:
        yield f"{app.url}/", config


def click(tab: Tab, selector: str) -> None:
    tab.evaluate(f"document.querySelector({json.dumps(selector)}).click()")


DETAIL_STATUS = "(document.querySelector('#run-detail .run-facts .badge.status') || {}).dataset"


def detail_status(tab: Tab, status: str) -> None:
    tab.wait_for(f"({DETAIL_STATUS} || {{}}).status === {json.dumps(status)}", timeout=30)


# -- an API key, protect: all -----------------------------------------------------------------


def test_with_protect_all_the_page_asks_for_the_key_then_starts_and_cancels_a_run(
    tab: Tab, demo: DemoServices, tmp_path: Path
) -> None:
    with site(demo, tmp_path, f"auth: {{api_key: {KEY}, protect: all}}") as (url, _):
        tab.open(url)
        tab.wait_for("document.body.dataset.mode === 'locked'")
        page = tab.dom()
        assert "hidden" not in page.by_id("auth-panel").attrs
        assert "needs its API key" in page.by_id("offline-notice").text
        assert tab.evaluate("document.activeElement.id") == "api-key"  # keyboard: type at once

        tab.evaluate(f"document.getElementById('api-key').value = {json.dumps(KEY)}")
        tab.press("Enter")
        tab.wait_for("document.body.dataset.mode === 'live'")
        assert tab.evaluate("sessionStorage.getItem('aegis.apiKey')") == KEY
        tab.wait_for("document.querySelector('#events-state').dataset.state === 'polling'")
        assert "cannot send the API key" in tab.text("#events-state")

        # start a run from the page; its test step hangs, so it can be cancelled
        demo.qaagent.inject("/api/runs", Fault(status=None, delay=60, times=None))
        try:
            click(tab, '.start-form[data-key="slow"] .start-run')
            detail_status(tab, "running")
            tab.wait_for("!document.querySelector('#run-detail .cancel-run').disabled")
            run_id = tab.evaluate("document.querySelector('#run-detail').dataset.runId")
            click(tab, "#run-detail .cancel-run")
            detail_status(tab, "cancelled")
        finally:
            demo.qaagent.clear_faults()
        answer = httpx.get(f"{url}api/runs/{run_id}", headers={"X-API-Key": KEY}, timeout=30)
        assert answer.json()["status"] == "cancelled" and answer.json()["trigger"] == "api"
        cancel = tab.dom().by_id("run-detail").one(cls="cancel-run")
        assert "disabled" in cancel.attrs
        assert cancel.attrs["title"] == "Only a queued or running run can be cancelled."

        # the key is kept for the tab: a reload goes live without asking, and polls at once
        tab.open(url)
        tab.wait_for("document.body.dataset.mode === 'live'")
        assert "hidden" in tab.dom().by_id("auth-panel").attrs
        tab.wait_for("document.querySelector('#events-state').dataset.state === 'polling'")
        assert "cannot send the API key" in tab.text("#events-state")
        assert tab.errors() == []


def test_a_refused_write_asks_for_the_key_and_runs_again_once_given(
    tab: Tab, demo: DemoServices, tmp_path: Path
) -> None:
    with site(demo, tmp_path, f"auth: {{api_key: {KEY}}}") as (url, _):
        tab.open(url)
        tab.wait_for("document.body.dataset.mode === 'live'")
        assert tab.evaluate("document.querySelector('#events-state').dataset.state") in (
            "live",
            "connecting",
        )
        click(tab, '.start-form[data-key="smoke"] .start-run')
        tab.wait_for("!document.getElementById('auth-panel').hidden")
        assert "Needs the API key" in tab.text('.start-form[data-key="smoke"] .action-status')

        tab.evaluate(f"document.getElementById('api-key').value = {json.dumps(KEY)}")
        click(tab, "#auth-form button")
        detail_status(tab, "succeeded")
        runs = httpx.get(f"{url}api/runs", timeout=30).json()
        assert runs["total"] == 1 and runs["runs"][0]["workflow"] == "smoke"


# -- rerun, filters and pages -------------------------------------------------------------------


KEY_KEPT = f"sessionStorage.setItem('aegis.apiKey', {json.dumps(KEY)});"  # entered earlier


def test_rerun_buttons_filters_and_pages(tab: Tab, demo: DemoServices, tmp_path: Path) -> None:
    with site(demo, tmp_path, f"auth: {{api_key: {KEY}}}") as (url, _):
        tab.before_scripts(KEY_KEPT)
        keyed = {"X-API-Key": KEY}
        for _ in range(21):
            httpx.post(f"{url}api/workflows/smoke/run?wait=30", headers=keyed, timeout=60)
        failed = httpx.post(
            f"{url}api/workflows/pipeline/run?wait=30", headers=keyed, timeout=60
        ).json()
        demo.qaagent.inject("/api/runs", Fault(status=503, times=None))
        try:
            broken = httpx.post(
                f"{url}api/workflows/slow/run?wait=30", headers=keyed, timeout=60
            ).json()
        finally:
            demo.qaagent.clear_faults()
        assert broken["status"] == "failed"

        tab.open(f"{url}#run={failed['run_id']}")
        detail_status(tab, failed["status"])
        rerun_failed = tab.dom().by_id("run-detail").one(cls="rerun-failed")
        assert "disabled" in rerun_failed.attrs  # the pipeline's steps all succeeded
        assert rerun_failed.attrs["title"] == "No step of this run failed."

        tab.evaluate(f"location.hash = '#run={broken['run_id']}'; location.reload()")
        detail_status(tab, "failed")
        tab.wait_for("!document.querySelector('#run-detail .rerun-failed').disabled")
        calls = len(demo.qaagent.calls)
        click(tab, "#run-detail .rerun-failed")  # the service has recovered meanwhile
        tab.wait_for(
            "document.querySelector('#run-detail').dataset.runId !== "
            + json.dumps(broken["run_id"]),
            timeout=30,
        )
        detail_status(tab, "succeeded")
        rerun_id = tab.evaluate("document.querySelector('#run-detail').dataset.runId")
        assert broken["run_id"] in tab.text("#run-detail .run-facts")  # "Rerun of"
        rerun = httpx.get(f"{url}api/runs/{rerun_id}", timeout=30).json()
        assert rerun["rerun_of"] == broken["run_id"]
        assert [s["reused"] for s in rerun["steps"]] == [True, False]
        # the discover step was carried over: the service was asked for its tests only
        assert [c.path for c in demo.qaagent.calls[calls:]] == ["/api/runs"]
        assert "hidden" in tab.dom().by_id("auth-panel").attrs  # the kept key was sent

        # paging beyond 20, then a filter back to page one
        tab.wait_for("document.querySelectorAll('#run-list .run-row').length === 20")
        # the list refreshes on its own once the rerun is in it
        tab.wait_for(
            "document.querySelector('#run-list-status').textContent"
            ".startsWith('Latest 1\N{EN DASH}20 of 24.')",
            timeout=30,
        )
        assert tab.evaluate("document.getElementById('runs-newer').disabled") is True
        click(tab, "#runs-older")
        tab.wait_for("document.querySelectorAll('#run-list .run-row').length === 4")
        assert tab.text("#run-list-status").startswith("Runs 21\N{EN DASH}24 of 24.")
        assert tab.evaluate("document.getElementById('runs-older').disabled") is True
        tab.evaluate(
            "const s = document.getElementById('filter-status'); s.value = 'failed';"
            "s.dispatchEvent(new Event('change'))"
        )
        tab.wait_for("document.querySelectorAll('#run-list .run-row').length === 1")
        assert (
            tab.dom().by_id("run-list").one(cls="run-row").attrs["data-run-id"]
            == (broken["run_id"])
        )
        tab.evaluate(
            "const t = document.getElementById('filter-trigger'); t.value = 'cli';"
            "t.dispatchEvent(new Event('change'))"
        )
        tab.wait_for("document.querySelector('#run-list-status').dataset.state === 'empty'")
        assert tab.text("#run-list-status") == "No runs match these filters."
        assert tab.errors() == []


# -- the start form from a workflow's params ----------------------------------------------------

# Records what the page posts.
POSTS = """
const realFetch = window.fetch.bind(window);
window.__posted = [];
window.fetch = async (path, options = {}) => {
  if (options.method === "POST") {
    window.__posted.push([String(path), options.body, options.headers["X-API-Key"]]);
  }
  return realFetch(path, options);
};
"""


def test_the_start_form_is_built_from_the_workflows_params(
    tab: Tab, demo: DemoServices, tmp_path: Path
) -> None:
    with site(demo, tmp_path, f"auth: {{api_key: {KEY}}}") as (url, _):
        tab.before_scripts(KEY_KEPT + POSTS)
        tab.open(url)
        tab.wait_for("document.body.dataset.mode === 'live'")
        form = tab.dom().by_id("workflow-list").one(cls="start-form", data_key="tuned")
        fields = {f.one("label").one("code").text: f for f in form.all(cls="param-field")}
        assert list(fields) == ["suite", "shards", "dry_run", "token"]
        assert [o.text for o in fields["suite"].all("option")] == ["smoke", "full"]
        assert fields["shards"].one("input").attrs["type"] == "number"
        assert fields["dry_run"].one("input").attrs["type"] == "checkbox"
        token = fields["token"].one("input")
        assert token.attrs["type"] == "password" and "value" not in token.attrs  # never ***
        plain = tab.dom().by_id("workflow-list").one(cls="start-form", data_key="smoke")
        assert plain.one(cls="start-run").text == "Start run" and not plain.all(cls="param-field")

        tab.evaluate(
            "document.getElementById('param-tuned-suite').value = 'full';"
            "document.getElementById('param-tuned-shards').value = '4';"
            "document.getElementById('param-tuned-dry_run').checked = true;"
            "document.getElementById('param-tuned-token').value = 's3cr3t-t0ken';"
        )
        click(tab, '.start-form[data-key="tuned"] .start-run')
        detail_status(tab, "succeeded")
        posted = tab.evaluate("window.__posted")
        sent = {"suite": "full", "shards": 4, "dry_run": True, "token": "s3cr3t-t0ken"}
        assert [(p[0], json.loads(p[1]), p[2]) for p in posted] == [
            ("api/workflows/tuned/run", {"params": sent}, KEY)
        ]
        # the server ran with them: the template reached the service; the record hides
        # the secret, and so does the page
        assert demo.qaagent.calls[-1].path == "/api/routes"
        assert demo.qaagent.calls[-1].query == "suite=full"
        run_id = tab.evaluate("document.querySelector('#run-detail').dataset.runId")
        record = httpx.get(f"{url}api/runs/{run_id}", timeout=30).json()
        assert record["params"] == {**sent, "token": "***"}
        assert "s3cr3t-t0ken" not in tab.evaluate("document.body.innerText")
        assert "suite=full" in tab.text("#run-detail .run-facts")


# -- a seeded history: the flaky panel, trends, screenshots ------------------------------------


def test_the_flaky_panel_over_2000_runs_agrees_with_aegis_tests(
    tab: Tab, demo: DemoServices, tmp_path: Path
) -> None:
    seed(tmp_path / "history.db", runs=2000)
    with site(demo, tmp_path) as (url, config):
        tab.open(url)
        tab.wait_for("document.querySelectorAll('#flaky-list .flaky-test').length >= 2")
        rows = tab.dom().by_id("flaky-list").all(cls="flaky-test")
        out = io.StringIO()
        assert main(["--config", str(config), "tests", "--flaky", "--json"], stdout=out,
                    stderr=io.StringIO(), environ={}) == 0  # fmt: skip
        cli = [t["test_id"] for t in json.loads(out.getvalue())["tests"]]
        assert rows[0].attrs["data-test"] == FLAKY == cli[0]
        assert [r.attrs["data-test"] for r in rows] == cli[: len(rows)]
        assert rows[0].one(cls="flakiness").text == "33\N{NO-BREAK SPACE}%"

        # one test's history, opened from the keyboard
        tab.evaluate("document.querySelector('#flaky-list .test-link').focus()")
        tab.press("Enter")
        tab.wait_for("document.querySelectorAll('#test-detail .test-outcomes li').length > 0")
        detail = tab.dom().by_id("test-detail")
        assert detail.one("h3").text == FLAKY
        outcomes = detail.one(cls="test-outcomes").all("li")
        assert {o.attrs["data-outcome"] for o in outcomes} == {"failed", "passed"}

        # the nightly trend: 50 bars; pointing at one names its run, clicking opens it
        bars = "document.querySelectorAll('.trend[data-key=\"nightly\"] .trend-point')"
        tab.wait_for(f"{bars}.length === 50")
        last = f"{bars}[49]"
        run_id = tab.evaluate(f"{last}.dataset.runId")
        tab.evaluate(f"{last}.dispatchEvent(new MouseEvent('mouseenter'))")
        caption = tab.text('.trend[data-key="nightly"] .trend-caption')
        assert caption.startswith(f"Run {run_id[:8]} · failed · ") and "failing test" in caption
        # from the keyboard: the chart is one tab stop, the arrows move along it
        assert tab.evaluate(f"Array.from({bars}).filter((b) => b.tabIndex === 0).length") == 1
        tab.evaluate(f"{last}.focus()")
        tab.press("ArrowLeft")
        previous = tab.evaluate(f"{bars}[48].dataset.runId")
        assert tab.evaluate("document.activeElement.dataset.runId") == previous
        assert tab.text('.trend[data-key="nightly"] .trend-caption').startswith(
            f"Run {previous[:8]} · "
        )
        tab.press("ArrowRight")
        assert tab.evaluate("document.activeElement.dataset.runId") == run_id
        tab.evaluate(f"{last}.dispatchEvent(new MouseEvent('click', {{bubbles: true}}))")
        tab.wait_for(
            f"document.querySelector('#run-detail').dataset.runId === {json.dumps(run_id)}"
        )
        tab.wait_for("document.querySelectorAll('#run-detail .reported-tests li').length > 0")
        reported = tab.dom().by_id("run-detail").one(cls="reported-tests").all("li")
        assert reported[0].attrs["data-outcome"] == "failed"
        assert tab.errors() == []


def test_screenshots_at_375_and_1280_light_and_dark(
    tab: Tab, demo: DemoServices, tmp_path: Path
) -> None:
    seed(tmp_path / "history.db", runs=200)
    shots = tmp_path / "screenshots"
    with site(demo, tmp_path) as (url, _):
        failed = httpx.post(f"{url}api/workflows/pipeline/run?wait=30", timeout=60).json()
        tab.open(f"{url}#run={failed['run_id']}")
        tab.wait_for("document.querySelectorAll('#flaky-list .flaky-test').length >= 2")
        detail_status(tab, failed["status"])
        backgrounds = {}
        for scheme in ("light", "dark"):
            tab.send(
                "Emulation.setEmulatedMedia",
                features=[{"name": "prefers-color-scheme", "value": scheme}],
            )
            backgrounds[scheme] = tab.evaluate("getComputedStyle(document.body).backgroundColor")
            for width in (375, 1280):
                path = tab.screenshot(shots / f"page-{scheme}-{width}.png", width)
                assert png_size(path)[0] == width
                overflow = tab.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 0, f"{scheme} {width}: {overflow} px wider than the window"
        assert backgrounds["light"] != backgrounds["dark"]
        assert sorted(p.name for p in shots.iterdir()) == [
            "page-dark-1280.png",
            "page-dark-375.png",
            "page-light-1280.png",
            "page-light-375.png",
        ]
