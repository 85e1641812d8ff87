"""The landing page in headless Chromium (Debian's ``chromium``), driven by its own flags.

Live: ``aegis serve``'s app (``ApiApp``) with the demo services behind it and a history of
runs the engine made; the dumped DOM (``--dump-dom`` after the page's scripts ran) must show
the identity, services with health, workflows and runs that the API served, with hostile
names as text.
Offline: ``index.html`` from disk, and from a server whose API is missing, must show the
example data and the offline notice. Screenshots of both, at 375 and 1280 px wide, go to
``docs/screenshots/``.

Chromium missing: the tests skip, or fail when CI is set.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pyz_helpers import unavailable

from aegis import __version__
from aegis.api.app import ApiApp
from aegis.config.load import load_config
from aegis.config.model import Config
from aegis.demo import DemoServices, Fault
from aegis.runs import run_workflow

ROOT = Path(__file__).resolve().parent.parent
LANDING = ROOT / "aegis" / "landing"
SCREENSHOTS = ROOT / "docs" / "screenshots"
EXAMPLE = ROOT / "aegis.example.yaml"
CHROMIUM_TIMEOUT = 60
# Window heights that hold the whole page, so each screenshot shows every section.
HEIGHTS = {"live-375": 3400, "live-1280": 1900, "offline-375": 2000, "offline-1280": 1300}
HOSTILE_IMG = "<img src=x onerror=alert(1)>"
NBSP = "\N{NO-BREAK SPACE}"  # between a number and its unit on the page


# -- Chromium --------------------------------------------------------------------------------


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    unavailable("chromium is not installed (apt-get install -y chromium)")


@dataclass
class Browser:
    binary: str
    profiles: Path
    runs: int = 0

    def _run(self, url: str, *flags: str) -> str:
        self.runs += 1
        profile = self.profiles / f"profile-{self.runs}"
        command = [
            self.binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-color-profile=srgb",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=8000",
            *flags,
            url,
        ]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, check=False
            )
        finally:
            shutil.rmtree(profile, ignore_errors=True)
        assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
        return done.stdout

    def dom(self, url: str) -> Node:
        """The page's DOM after its scripts ran, parsed."""
        return parse_html(self._run(url, "--dump-dom"))

    def screenshot(self, url: str, name: str, width: int) -> Path:
        """docs/screenshots/NAME-WIDTH.png of ``url`` in a window ``width`` px wide."""
        path = SCREENSHOTS / f"{name}-{width}.png"
        height = HEIGHTS[f"{name}-{width}"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self._run(url, f"--screenshot={path}", f"--window-size={width},{height}")
        assert png_size(path) == (width, height)
        return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Browser:
    return Browser(chromium_binary(), tmp_path_factory.mktemp("chromium"))


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


# -- a small DOM to query the dump with ------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip


@dataclass
class Node:
    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Node | str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def iter(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        """Descendants by tag, class and attributes (``data_key`` for data-key)."""
        wanted = {name.replace("_", "-"): value for name, value in attrs.items()}
        return [
            node
            for node in self.iter()
            if node is not self
            and (tag is None or node.tag == tag)
            and (cls is None or cls in node.classes)
            and all(node.attrs.get(name) == value for name, value in wanted.items())
        ]

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        found = self.all(tag, cls, **attrs)
        assert len(found) == 1, f"expected one {tag or ''}.{cls or ''}{attrs}, found {len(found)}"
        return found[0]

    def by_id(self, ident: str) -> Node:
        return self.one(id=ident)


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document")
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {name: value or "" for name, value in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse_html(markup: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(markup)
    builder.close()
    return builder.root


# -- the servers -----------------------------------------------------------------------------


@contextlib.contextmanager
def _serving(server: ThreadingHTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextlib.contextmanager
def api_server(config_path: Path) -> Iterator[str]:
    """``aegis serve``'s app for the config at ``config_path``, on an ephemeral port."""
    with ApiApp(load_config(config_path, environ={}), environ={}, port=0) as app:
        yield f"{app.url}/"


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def static_only_server() -> Iterator[str]:
    """The page's files and nothing else: every /api route answers 404 (not JSON)."""
    handler = partial(_QuietFiles, directory=str(LANDING))
    with _serving(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as url:
        yield url


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
}


@dataclass(frozen=True)
class LiveSite:
    url: str
    config: Config
    run_ids: list[str]  # oldest first: full_pipeline, smoke, regression
    failed_run: str  # the regression one: its test step failed twice with 503


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    with api_server(config_path) as url:
        yield LiveSite(url, config, [r.run_id for r in runs], runs[-1].run_id)


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


def test_the_live_page_shows_what_the_api_serves(browser: Browser, live: LiveSite) -> None:
    page = browser.dom(f"{live.url}#run={live.failed_run}")
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
    (step,) = detail.all(cls="step-result")
    assert step.attrs["data-status"] == "failed"
    assert step.one(cls="step-name").text == "<svg onload=alert(4)>"
    assert step.one(cls="error").one("code").text == "http"
    attempts = step.all(cls="attempt")
    assert [a.attrs["data-attempt"] for a in attempts] == ["1", "2"]
    assert all("503" in a.text and "http" in a.text for a in attempts)

    # nothing from the API became markup
    assert page.all("img") == [] and page.all("svg") == [] and page.all("b") == []
    assert [s.attrs.get("id") or s.attrs.get("src") for s in page.all("script")] == [
        "aegis-fallback",
        "app.js",
    ]


@pytest.mark.parametrize("width", [375, 1280])
def test_live_screenshot(browser: Browser, showcase: LiveSite, width: int) -> None:
    url = f"{showcase.url}#run={showcase.failed_run}"
    browser.screenshot(url, "live", width)


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


def test_from_disk_the_page_shows_the_example_data(browser: Browser) -> None:
    assert_shows_the_example(browser.dom((LANDING / "index.html").as_uri()))


def test_without_an_api_the_page_shows_the_example_data(browser: Browser) -> None:
    with static_only_server() as url:
        page = browser.dom(url)
    assert_shows_the_example(page)
    assert "The API did not answer" in page.by_id("offline-notice").text


@pytest.mark.parametrize("width", [375, 1280])
def test_offline_screenshot(browser: Browser, width: int) -> None:
    browser.screenshot((LANDING / "index.html").as_uri(), "offline", width)
