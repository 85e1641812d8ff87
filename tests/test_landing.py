"""The landing page's files, checked without a browser (tests/test_landing_browser.py runs it).

They ship as package data, index.html loads its own files relatively, its fallback data is
aegis.example.yaml's, app.js never writes markup from strings, and nothing loads from
other hosts.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from pyz_helpers import load_build_module

from aegis.config.load import load_config
from aegis.config.model import ServiceSpec, StepSpec, WorkflowSpec
from aegis.config.params import param_to_dict
from aegis.events import EVENT_TYPES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "aegis.example.yaml"
PAGE_FILES = ("index.html", "base.js", "insight.js", "app.js", "styles.css")
MAX_BYTES = 40_000  # each file; no framework, no build step


def read(name: str) -> str:
    return files("aegis.landing").joinpath(name).read_text(encoding="utf-8")


# The JSON of DESIGN §7 for a config's services and workflows.


def service_json(service: ServiceSpec) -> dict[str, Any]:
    return {
        "key": service.key,
        "name": service.name,
        "description": service.description,
        "url": service.url,
        "features": list(service.features),
        "repo_url": service.repo_url,
        "docs_url": service.docs_url,
    }


def step_json(step: StepSpec) -> dict[str, Any]:
    return {
        "name": step.name,
        "type": step.type,
        "service": step.service,
        "condition": step.condition,
        "parallel": step.parallel,
        "retries": step.retries,
        "retry_delay": step.retry_delay,
        "max_retry_delay": step.max_retry_delay,
        "retry_jitter": step.retry_jitter,
        "retry_on": None if step.retry_on is None else list(step.retry_on),
        "timeout": step.timeout,
        "deadline": step.deadline,
        "with": dict(step.params),
    }


def workflow_json(workflow: WorkflowSpec) -> dict[str, Any]:
    return {
        "key": workflow.key,
        "name": workflow.name,
        "description": workflow.description,
        "timeout": workflow.timeout,
        "params": {name: param_to_dict(spec) for name, spec in workflow.params.items()},
        "steps": [step_json(step) for step in workflow.steps],
    }


class _Elements(HTMLParser):
    """Every start tag of a document with its attributes, and the text of each script."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.scripts: list[tuple[dict[str, str], str]] = []
        self._script: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        self.tags.append((tag, attributes))
        if tag == "script":
            self._script = attributes
            self.scripts.append((attributes, ""))

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            attributes, text = self.scripts[-1]
            self.scripts[-1] = (attributes, text + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None


@pytest.fixture(scope="module")
def page() -> _Elements:
    parser = _Elements()
    parser.feed(read("index.html"))
    parser.close()
    return parser


def elements(page: _Elements, tag: str) -> list[dict[str, str]]:
    return [attributes for name, attributes in page.tags if name == tag]


def fallback(page: _Elements) -> dict[str, Any]:
    (text,) = [text for attrs, text in page.scripts if attrs.get("id") == "aegis-fallback"]
    data: dict[str, Any] = json.loads(text)
    return data


# -- packaging ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAGE_FILES)
def test_the_page_files_are_package_data(name: str) -> None:
    resource = files("aegis.landing").joinpath(name)
    assert resource.is_file()
    assert 0 < len(resource.read_bytes()) < MAX_BYTES


def test_the_built_file_carries_the_page() -> None:
    build = load_build_module()
    shipped = {path.name for path in build.package_files(ROOT / "aegis" / "landing")}
    assert shipped >= {"__init__.py", *PAGE_FILES}


# -- index.html --------------------------------------------------------------------------


def test_index_loads_its_own_files_relatively(page: _Elements) -> None:
    stylesheets = [a["href"] for a in elements(page, "link") if a.get("rel") == "stylesheet"]
    assert stylesheets == ["styles.css"]
    sources = [attrs["src"] for attrs, _ in page.scripts if "src" in attrs]
    assert sources == ["base.js", "insight.js", "app.js"]


def test_index_runs_no_inline_code(page: _Elements) -> None:
    for attrs, text in page.scripts:
        assert "src" in attrs or attrs.get("type") == "application/json", attrs
        assert "src" not in attrs or not text.strip()
    handlers = [(tag, name) for tag, attrs in page.tags for name in attrs if name.startswith("on")]
    assert handlers == []
    (policy,) = [
        a["content"]
        for a in elements(page, "meta")
        if a.get("http-equiv") == "Content-Security-Policy"
    ]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy


def test_index_is_semantic_and_has_the_ids_the_script_fills(page: _Elements) -> None:
    tags = [tag for tag, _ in page.tags]
    assert {"header", "main", "section", "h1", "h2", "footer"} <= set(tags)
    ids = {attrs["id"]: (tag, attrs) for tag, attrs in page.tags if "id" in attrs}
    for ident in ("aegis-name", "aegis-tagline", "aegis-version", "service-list",
                  "workflow-list", "run-list", "run-list-status", "run-detail"):  # fmt: skip
        assert ident in ids, ident
    for section in ("services", "workflows", "runs", "events"):
        assert ids[section][0] == "section"
    _, notice = ids["offline-notice"]
    assert notice.get("aria-live") == "polite" and notice.get("role") == "status"
    (viewport,) = [a["content"] for a in elements(page, "meta") if a.get("name") == "viewport"]
    assert "width=device-width" in viewport
    assert elements(page, "html")[0].get("lang") == "en"


def test_the_events_panel_is_announced_politely_and_reachable(page: _Elements) -> None:
    ids = {attrs["id"]: (tag, attrs) for tag, attrs in page.tags if "id" in attrs}
    tags = [(tag, attrs.get("id")) for tag, attrs in page.tags]
    # the panel comes after the runs, its heading names it
    assert tags.index(("section", "events")) > tags.index(("section", "runs"))
    assert ids["events"][1]["aria-labelledby"] == "events-title"
    assert ids["events-title"][0] == "h2"
    tag, events = ids["event-list"]
    assert tag == "ol"
    assert events.get("aria-live") == "polite" and events.get("aria-relevant") == "additions"
    assert events.get("aria-label") and events.get("tabindex") == "0"  # a scrolling region
    tag, state = ids["events-state"]
    assert tag == "p" and state.get("role") == "status"
    assert ids["event-list-empty"][1].get("class") == "placeholder"


def test_the_fallback_is_the_example_config(page: _Elements) -> None:
    example = load_config(EXAMPLE, environ={})
    data = fallback(page)
    assert data["aegis"] == {"name": example.identity.name, "tagline": example.identity.tagline}
    services = [
        {k: v for k, v in service_json(s).items() if k != "url"} for s in example.services.values()
    ]
    assert data["services"] == services
    assert data["workflows"] == [workflow_json(w) for w in example.workflows.values()]


def test_the_fallback_cannot_close_its_script_element() -> None:
    text = read("index.html")
    start = text.index('id="aegis-fallback">')
    body = text[start : text.index("</script>", start)]
    assert "<!--" not in body and "<script" not in body.lower()


# -- app.js ------------------------------------------------------------------------------


def test_app_js_never_turns_strings_into_markup() -> None:
    code = read("app.js")
    forbidden = [
        r"\.(inner|outer)HTML\s*\+?=",
        r"insertAdjacentHTML",
        r"document\.write",
        r"createContextualFragment",
        r"DOMParser",
        r"\beval\s*\(",
        r"new\s+Function\b",
        r"setTimeout\(\s*[\"'`]",
        r"\.setAttribute\(\s*[\"'`]on",
    ]
    for pattern in forbidden:
        assert not re.search(pattern, code), pattern
    assert "textContent" in code or "createTextNode" in code


def test_app_js_fetches_only_this_servers_api() -> None:
    code = read("app.js")
    assert re.findall(r"\bfetch\(\s*(\w+)", read("base.js")) == ["path"]  # through api() only
    assert "fetch(" not in code and "fetch(" not in read("insight.js")
    paths = set(re.findall(r"api\(\s*[`\"']([^`\"'$?]+)", code + read("insight.js")))
    assert paths == {
        "api/portfolio",
        "api/workflows",
        "api/workflows/",  # .../KEY/run and .../KEY/trends
        "api/services",
        "api/runs",
        "api/runs/",  # a run, its cancel and rerun
        "api/events",
        "api/tests",
        "api/tests/",
        "health",  # its uptime tells a restarted server, whose event ids start again
    }
    assert "15000" in code  # health and runs are polled every 15 s
    # the one stream, relative to the page, like every fetch
    assert re.findall(r"new\s+(?:window\.)?EventSource\(\s*`([^`$?]+)", code) == [
        "api/events/stream"
    ]


def test_app_js_follows_every_event_type_the_engine_emits() -> None:
    code = read("app.js")
    declared = re.search(r"const EVENT_TYPES = \[([^\]]*)\]", code)
    assert declared is not None
    assert tuple(re.findall(r'"([a-z.]+)"', declared.group(1))) == EVENT_TYPES
    for event_type in EVENT_TYPES:  # each has its own sentence in the panel
        assert f'case "{event_type}":' in code, event_type


def test_app_js_falls_back_to_polling_and_bounds_the_panel() -> None:
    code = read("app.js")
    assert "api/events?after=${events.lastId}" in code  # polling resumes after the last id
    assert re.search(r"const EVENTS_POLL_MS = [1-5]000;", code)  # every few seconds
    assert re.search(r"const STREAM_FAILURES = \d;", code)
    max_rows = re.search(r"const EVENTS_MAX = (\d+);", code)
    assert max_rows is not None and 10 <= int(max_rows.group(1)) <= 200
    assert "box.children.length > EVENTS_MAX" in code
    assert 'typeof window.EventSource !== "function"' in code  # a browser without it polls


# -- all files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAGE_FILES)
def test_nothing_loads_from_other_hosts(name: str) -> None:
    text = read(name)
    urls = re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"'<>)]*", text)
    assert [url for url in urls if url != "http://www.w3.org/2000/svg"] == []  # a namespace
    assert "@import" not in text and "url(" not in text
    assert "fonts.googleapis" not in text and "cdn" not in text.lower()


def test_screenshot_tests_write_under_tmp_unless_asked_to_refresh_docs(tmp_path: Path) -> None:
    from browser_helpers import ROOT, SCREENSHOTS, screenshot_dir

    default = screenshot_dir(tmp_path, {})
    assert default.is_relative_to(tmp_path) and not default.is_relative_to(ROOT)
    assert screenshot_dir(tmp_path, {"AEGIS_UPDATE_SCREENSHOTS": "0"}) == default
    assert screenshot_dir(tmp_path, {"AEGIS_UPDATE_SCREENSHOTS": "1"}) == SCREENSHOTS
