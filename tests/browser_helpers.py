"""Driving headless Chromium for the landing page tests, with nothing but the stdlib.

``Chromium`` starts Debian's ``chromium`` with ``--remote-debugging-pipe`` and speaks the
DevTools protocol over it (JSON messages ended by NUL, on the child's file descriptors 3
and 4). A ``Tab`` loads a URL, evaluates JavaScript, waits for a condition by polling it
(never by sleeping a fixed time), presses keys and takes screenshots; ``Tab.dom()`` parses
the live DOM into ``Node`` trees for assertions in Python.

Also here: the servers the tests put behind the page (``aegis serve``'s app, a static-only
server whose API is missing) and small helpers (``free_port``, ``png_size``).

Chromium missing: ``chromium_binary()`` skips, or fails when CI is set.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import json
import os
import queue
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pyz_helpers import unavailable

from aegis.api.app import ApiApp
from aegis.config.load import load_config

ROOT = Path(__file__).resolve().parent.parent
LANDING = ROOT / "aegis" / "landing"
SCREENSHOTS = ROOT / "docs" / "screenshots"
# The committed screenshots change only on purpose, when this is "1" (README names it).
UPDATE_SCREENSHOTS = "AEGIS_UPDATE_SCREENSHOTS"
COMMAND_TIMEOUT = 30.0  # one DevTools command
WAIT_TIMEOUT = 20.0  # a condition on the page
MAX_SCREENSHOT_HEIGHT = 6000


# -- Chromium over the DevTools pipe ---------------------------------------------------------


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    unavailable("chromium is not installed (apt-get install -y chromium)")


def _high(fd: int) -> int:
    """``fd`` moved to a descriptor number of 10 or more."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def screenshot_dir(tmp_path: Path, environ: Mapping[str, str]) -> Path:
    """Where the screenshot tests write: ``docs/screenshots`` only when
    ``AEGIS_UPDATE_SCREENSHOTS=1`` asks for it, else under ``tmp_path``, so that running
    the tests never rewrites tracked files."""
    if environ.get(UPDATE_SCREENSHOTS) == "1":
        return SCREENSHOTS
    return tmp_path / "screenshots"


class BrowserError(AssertionError):
    """A DevTools command failed, timed out, or the browser went away."""


class Chromium:
    """One headless Chromium process; a context manager. ``tab()`` opens a page in it."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.binary = binary
        self.profile = profile
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._answers: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._events: dict[str, list[dict[str, Any]]] = {}  # sessionId -> events
        self._process: subprocess.Popen[bytes] | None = None
        self._to_browser = -1
        self._reader: threading.Thread | None = None

    def start(self) -> Chromium:
        # The child's ends go above 9, so that putting them on 3 and 4 clobbers neither.
        to_child_r, to_child_w = (_high(fd) for fd in os.pipe())
        from_child_r, from_child_w = (_high(fd) for fd in os.pipe())
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
            "--force-color-profile=srgb",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        self._log = open(self.profile.parent / f"{self.profile.name}.log", "wb")  # noqa: SIM115
        # A small Python shim puts the pipe ends on descriptors 3 and 4, where Chromium
        # expects them, and then becomes Chromium.
        shim = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
            "os.execv(sys.argv[3], sys.argv[3:])"
        )
        self._process = subprocess.Popen(
            [sys.executable, "-c", shim, str(to_child_r), str(from_child_w), self.binary, *flags],
            pass_fds=(to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._to_browser = to_child_w
        self._reader = threading.Thread(target=self._read, args=(from_child_r,), daemon=True)
        self._reader.start()
        self.send("Target.setDiscoverTargets", discover=False)  # answers once it is up
        return self

    def _read(self, fd: int) -> None:
        buffer = b""
        with open(fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    self._dispatch(json.loads(raw))
        with self._lock:  # the browser is gone: wake everyone waiting for an answer
            for answer in self._answers.values():
                answer.put({"error": {"message": "the browser closed the pipe"}})

    def _dispatch(self, message: dict[str, Any]) -> None:
        with self._lock:
            if "id" in message:
                answer = self._answers.pop(message["id"], None)
                if answer is not None:
                    answer.put(message)
            elif "sessionId" in message:
                self._events.setdefault(message["sessionId"], []).append(message)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Run one DevTools command and return its result; raises ``BrowserError``."""
        ident = next(self._ids)
        answer: queue.Queue[dict[str, Any]] = queue.Queue(1)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        with self._lock:
            self._answers[ident] = answer
        try:
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")
            reply = answer.get(timeout=COMMAND_TIMEOUT)
        except (OSError, queue.Empty) as exc:
            problem = f"{method}: no answer from chromium ({exc!r}){self._tail()}"
            raise BrowserError(problem) from exc
        finally:
            with self._lock:
                self._answers.pop(ident, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def _tail(self) -> str:
        """The end of Chromium's own log, for an error message."""
        try:
            log = Path(self._log.name).read_text(errors="replace")
        except (AttributeError, OSError):
            return ""
        return f"\nchromium's log ends:\n{log[-2000:]}" if log else ""

    def events(self, session: str, method: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e["params"] for e in self._events.get(session, []) if e["method"] == method]

    def tab(self, width: int = 1280, height: int = 900) -> Tab:
        """A new blank page ``width`` px wide (a phone's layout below 600 px)."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        tab = Tab(self, target, session)
        tab.send("Page.enable")
        tab.send("Runtime.enable")
        tab.resize(width, height)
        return tab

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        with contextlib.suppress(BrowserError):
            self.send("Browser.close")
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        os.close(self._to_browser)
        if self._reader is not None:
            self._reader.join(10)
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Tab:
    """One page of a ``Chromium``, attached through its own DevTools session."""

    browser: Chromium
    target: str
    session: str

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        return self.browser.send(method, self.session, **params)

    def resize(self, width: int, height: int) -> None:
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=width < 600,
        )

    def before_scripts(self, source: str) -> None:
        """Run ``source`` in every document this tab loads, before the page's own scripts."""
        self.send("Page.addScriptToEvaluateOnNewDocument", source=source)

    def open(self, url: str) -> None:
        """Load ``url`` and wait until its document has been parsed."""
        answer = self.send("Page.navigate", url=url)
        if answer.get("errorText"):
            raise BrowserError(f"cannot load {url}: {answer['errorText']}")
        self.wait_for("document.readyState !== 'loading'")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited if it is a promise)."""
        answer = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            description = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression!r} threw: {description}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout: float = WAIT_TIMEOUT) -> Any:
        """Poll ``expression`` until it is truthy and return its value; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)  # the poll interval, not a synchronisation
        raise AssertionError(f"still false after {timeout} s: {expression} (last: {value!r})")

    def text(self, selector: str) -> str:
        value = self.evaluate(
            f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''"
        )
        return str(value)

    def press(self, key: str, code: str | None = None, text: str | None = None) -> None:
        """Press and release one key in the focused element (``Enter``, ``Tab``, ``a``)."""
        fields: dict[str, Any] = {"key": key, "code": code or key}
        if key == "Enter":
            fields.update(windowsVirtualKeyCode=13, text="\r")
        elif key == "Tab":
            fields.update(windowsVirtualKeyCode=9)
        elif text is not None:
            fields.update(text=text)
        self.send("Input.dispatchKeyEvent", type="keyDown", **fields)
        self.send("Input.dispatchKeyEvent", type="keyUp", key=fields["key"], code=fields["code"])

    def dom(self) -> Node:
        """The document as it is now, parsed."""
        return parse_html(str(self.evaluate("document.documentElement.outerHTML")))

    def errors(self) -> list[str]:
        """Uncaught JavaScript exceptions this tab has seen."""
        thrown = self.browser.events(self.session, "Runtime.exceptionThrown")
        return [
            str(e["exceptionDetails"].get("exception", {}).get("description", e)) for e in thrown
        ]

    def screenshot(self, path: Path, width: int) -> Path:
        """A PNG of the whole page laid out ``width`` px wide, at ``path``."""
        self.resize(width, 900)
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        height = min(max(height, 400), MAX_SCREENSHOT_HEIGHT)
        self.resize(width, height)
        shot = self.send("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        assert png_size(path) == (width, height)
        return path

    def close(self) -> None:
        with contextlib.suppress(BrowserError):
            self.browser.send("Target.closeTarget", targetId=self.target)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


# -- a small DOM to query with ----------------------------------------------------------------

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


# -- the servers behind the page ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
def api_server(config_path: Path, port: int = 0, **options: Any) -> Iterator[ApiApp]:
    """``aegis serve``'s app for the config at ``config_path`` (on an ephemeral port)."""
    with ApiApp(load_config(config_path, environ={}), environ={}, port=port, **options) as app:
        yield app


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def static_only_server() -> Iterator[str]:
    """The page's files and nothing else: every /api route answers 404 (not JSON)."""
    handler = partial(_QuietFiles, directory=str(LANDING))
    with _serving(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as url:
        yield url
