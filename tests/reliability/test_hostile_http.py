"""Hostile HTTP input, over raw sockets, against the real API server.

One ``ApiApp`` (engine, run manager, history, the demo services behind it) listens on an
ephemeral loopback port with a short idle timeout. Every case sends bytes no polite
client would and checks four things: the right 4xx answer as a JSON error body (where
an answer is possible), never a 5xx, no traceback in the server's log, and the server
still answering ``/health`` afterwards. Every socket has a timeout, so a hang fails the
test instead of stalling it.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import select
import socket
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from test_api_server import poll

from aegis.api.app import ApiApp
from aegis.api.server import AccessLog
from aegis.config import parse_config
from aegis.demo import DemoServices
from aegis.steps.registry import default_step_types

AREA = "Hostile HTTP input"

IDLE = 1.0  # the server's idle timeout (and so its request deadline) in these tests
TIMEOUT = 10.0  # no client socket waits longer than this for anything
KEY = "k3y"
RUN = "/api/workflows/smoke/run"

CONFIG = """
aegis: {name: Aegis under attack}
services:
  qaagent: {url: "%(qaagent)s"}
workflows:
  smoke:
    steps:
      - {type: discover, service: qaagent, timeout: 5}
history: {path: history.db}
auth: {api_key: %(key)s}
"""


# ------------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoServices]:
    with DemoServices() as services:
        yield services


@pytest.fixture(scope="module")
def start(
    demo: DemoServices, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ApiApp]]:
    apps: list[ApiApp] = []
    base = tmp_path_factory.mktemp("hostile")

    def start(idle_timeout: float = IDLE) -> ApiApp:
        text = CONFIG % {"qaagent": demo.qaagent_url, "key": KEY}
        config = parse_config(
            textwrap.dedent(text),
            file="aegis.yaml",
            base_dir=base,
            environ={},
            step_types=default_step_types(),
        )
        app = ApiApp(
            config,
            environ={},
            port=0,
            idle_timeout=idle_timeout,
            access_log=AccessLog(io.StringIO()),
        )
        apps.append(app.start())
        return app

    yield start
    for app in apps:
        app.stop()


@pytest.fixture(scope="module")
def api(start: Callable[..., ApiApp]) -> ApiApp:
    return start()


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """What the server logged during the test; checked for tracebacks afterwards too."""
    caplog.set_level(logging.WARNING)

    class Log:
        def tracebacks(self) -> list[str]:
            found = [r.getMessage() for r in caplog.records if r.exc_info or r.exc_text]
            err = capfd.readouterr().err
            return found + (["stderr: " + err] if "Traceback" in err else [])

    log = Log()
    yield log
    assert log.tracebacks() == []  # nothing logged late either


def port(app: ApiApp) -> int:
    return int(app.server.server_address[1])


def connect(app: ApiApp) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port(app)), timeout=TIMEOUT)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after answering

    def error(self) -> dict[str, Any]:
        """The JSON error body, checked to be one."""
        assert self.headers.get("content-type") == "application/json", self.headers
        assert int(self.headers["content-length"]) == len(self.body)
        error: dict[str, Any] = json.loads(self.body)["error"]
        assert error["status"] == self.status and error["code"] and error["message"]
        assert b"Traceback" not in self.body
        return error

    def outcome(self) -> str:
        """What happened, for the report: status, error code, the connection's fate."""
        code = ""
        if self.status >= 400:
            code = f" `{self.error()['code']}`"
        return f"{self.status}{code}, connection {'closed' if self.closed else 'kept open'}"


def read_reply(sock: socket.socket, method: str = "GET") -> Reply:
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    headers = {k.lower(): v for k, v in response.getheaders()}
    body = response.read()
    closed = response.will_close
    if closed:  # then the server must really close it: nothing more arrives
        assert closed_quietly(sock)
    return Reply(response.status, headers, body, closed)


def exchange(app: ApiApp, data: bytes, method: str = "GET") -> Reply:
    """Send ``data`` on a new connection and read one answer."""
    with connect(app) as sock:
        sock.sendall(data)
        return read_reply(sock, method)


def closed_quietly(sock: socket.socket) -> bool:
    """Whether the server closes ``sock`` (before TIMEOUT) without sending more."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:  # closed with bytes of ours unread: a reset, still closed
        return True


def serving(app: ApiApp) -> bool:
    reply = exchange(app, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return reply.status == 200 and json.loads(reply.body)["status"] == "ok"


def survived(app: ApiApp, log: Any) -> None:
    assert serving(app)
    assert log.tracebacks() == []


def head(
    target: str = "/health",
    *headers: str,
    method: str = "GET",
    host: bool = True,
    body: bytes = b"",
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(["Host: 127.0.0.1"] if host else []), *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def post(*headers: str, body: bytes = b"", target: str = RUN) -> bytes:
    sized = [f"Content-Length: {len(body)}"] if body else []
    return head(target, f"X-API-Key: {KEY}", *sized, *headers, method="POST", body=body)


# ------------------------------------------------------------ one request, one answer


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: int
    method: str = "GET"


def deep(opening: str, depth: int) -> bytes:
    return (opening * depth).encode()


CASES = [
    # the body's framing
    Case("Content-Length: -1", post("Content-Length: -1"), 400),
    Case("Content-Length: abc", post("Content-Length: abc"), 400),
    Case("Content-Length: +5", post("Content-Length: +5"), 400),
    Case("Content-Length: 0x10", post("Content-Length: 0x10"), 400),
    Case(
        "two different Content-Length headers", post("Content-Length: 2", "Content-Length: 3"), 400
    ),
    Case("a Content-Length of 20 digits", post("Content-Length: " + "9" * 20), 413),
    Case("a 2 MiB body declared (not sent)", post(f"Content-Length: {2 * 1024 * 1024}"), 413),
    Case(
        "Expect: 100-continue for a 2 MiB body",
        post("Expect: 100-continue", f"Content-Length: {2 * 1024 * 1024}"),
        413,
    ),
    Case(
        "Transfer-Encoding: chunked body",
        post("Transfer-Encoding: chunked") + b"2\r\n{}\r\n0\r\n\r\n",
        411,
    ),
    Case(
        "Transfer-Encoding: chunked and Content-Length (smuggling)",
        post("Transfer-Encoding: chunked", "Content-Length: 7") + b"2\r\n{}\r\n0\r\n\r\n",
        411,
    ),
    Case("Transfer-Encoding: gzip, chunked", post("Transfer-Encoding: gzip, chunked"), 411),
    # headers
    Case("a single 70 KB header", head("/health", "X-Big: " + "a" * 70_000), 431),
    Case("150 headers", head("/health", *(f"X-{i}: 1" for i in range(150))), 431),
    Case(
        "80 KB of headers in 4 KB lines",
        head("/health", *(f"X-{i}: {'a' * 4000}" for i in range(20))),
        431,
    ),
    Case("a header line without a colon", head("/health", "this is no header", "X-After: 1"), 400),
    Case("a header folded over two lines", head("/health", "X-Folded: a\r\n b"), 400),
    Case("a NUL byte in a header name", head("/health", "X-\x00: 1"), 400),
    Case("no Host header (HTTP/1.1)", head("/health", host=False), 400),
    Case("two Host headers", head("/health", "Host: other"), 400),
    Case("a 10 KB Host header", head("/health", "Host: " + "h" * 10_000, host=False), 400),
    Case("a Host with a path in it", head("/health", "Host: a/../b", host=False), 400),
    Case("non-UTF-8 bytes in a header value", head("/health", "X-Junk: \xff\xfe\x80"), 200),
    Case(
        "non-UTF-8 bytes as the API key",
        head(RUN, "X-API-Key: \xff\xfe", method="POST"),
        401,
        "POST",
    ),
    Case("two X-API-Key headers, the first one right", post("X-API-Key: wrong"), 400, "POST"),
    Case(
        "two Idempotency-Key headers", post("Idempotency-Key: a", "Idempotency-Key: b"), 400, "POST"
    ),
    # request bodies
    Case("invalid JSON body", post(body=b"{not json"), 400, "POST"),
    Case("JSON array as the body", post(body=b"[1, 2]"), 400, "POST"),
    Case("JSON string as the body", post(body=b'"run"'), 400, "POST"),
    Case("JSON null as the body", post(body=b"null"), 400, "POST"),
    Case("JSON nested 100,000 arrays deep", post(body=deep("[", 100_000)), 400, "POST"),
    Case("JSON nested 50,000 objects deep", post(body=deep('{"a":', 50_000)), 400, "POST"),
    Case("non-UTF-8 body", post(body=b'{"a": "\xff\xfe"}'), 400, "POST"),
    # request lines
    Case("garbage request line", b"HELLO\r\n\r\n", 400),
    Case(
        "a TLS ClientHello on the HTTP port",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        400,
    ),
    Case("NUL bytes in the request line", b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    Case("four words in the request line", b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
    Case("HTTP/2.0 request line", head().replace(b"HTTP/1.1", b"HTTP/2.0"), 505),
    Case("HTTP/0.9 request (no version)", b"GET /health\r\n", 505),
    Case("HTTP/0.9 POST", b"POST /health\r\n", 505),
    Case("unknown method BREW", head("/health", method="BREW"), 501),
    Case("WebDAV method PROPFIND", head("/", method="PROPFIND"), 501),
    Case("lower-case method get", head("/health", method="get"), 501),
    Case("TRACE", head("/health", method="TRACE"), 501),
    Case("CONNECT", head("127.0.0.1:80", method="CONNECT"), 501),
    Case("DELETE on a read-only route", head("/health", method="DELETE"), 405),
    Case("absolute-form URI", head("http://127.0.0.1/health"), 200),
    Case("absolute-form URI with `..`", head("http://x/../../etc/passwd"), 404),
    Case("asterisk-form OPTIONS *", head("*", method="OPTIONS"), 404),
    # paths and queries
    Case("non-UTF-8 bytes in the path", head("/\xff\xfe\x80"), 404),
    Case("percent-encoded non-UTF-8 in a path parameter", head("/api/workflows/%ff%fe"), 404),
    Case("non-UTF-8 bytes in the query", head("/api/runs?workflow=\xff\xfe"), 200),
    Case("percent-encoded non-UTF-8 in the query", head("/api/runs?workflow=%ff%c0"), 200),
    Case("a 60,000-character query value", head("/api/runs?workflow=" + "w" * 60_000), 200),
    Case("a request line over 64 KiB", head("/api/runs?workflow=" + "w" * 70_000), 414),
    Case(
        "1,000 query parameters", head("/api/runs?" + "&".join(f"p{i}=1" for i in range(1000))), 400
    ),
    Case("duplicate query parameters", head("/api/runs?limit=5&limit=6"), 400),
    Case("the same query parameter twice", head("/api/runs?limit=5&limit=5"), 400),
    Case("an integer of 40 digits", head("/api/runs?offset=" + "9" * 40), 400),
    Case("wait=1e999 (infinite)", post(target=RUN + "?wait=1e999"), 400, "POST"),
    Case("wait=nan", post(target=RUN + "?wait=nan"), 400, "POST"),
    Case("Last-Event-ID that is no number", head("/api/events/stream", "Last-Event-ID: abc"), 400),
    Case("a negative event id for the stream", head("/api/events/stream?after=-5"), 400),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_hostile_request_gets_the_right_answer(
    api: ApiApp, log: Any, reliability: Any, case: Case
) -> None:
    reply = exchange(api, case.data, case.method)
    assert reply.status == case.status, reply.body[:300]
    observed = reply.outcome()  # checks the JSON error body of a 4xx
    survived(api, log)
    expected = f"{case.status}" + (" JSON error" if case.status >= 400 else "")
    reliability.record(case.name, expected=f"{expected}, no 5xx, still serving", observed=observed)


# ------------------------------------------------------------------------- traversal

TRAVERSALS = {
    "plain `..`": "/../../etc/passwd",
    "`%2e%2e`": "/%2e%2e/%2e%2e/etc/passwd",
    "mixed case `%2E%2e`": "/%2E%2e/%2e%2E/aegis/landing/app.js",
    "double-encoded `%252e%252e`": "/%252e%252e/%252e%252e/etc/passwd",
    "`..%2f`": "/..%2f..%2fetc%2fpasswd",
    "`..%5c`": "/..%5c..%5cetc%5cpasswd",
    "backslashes `..\\`": "/..\\..\\etc\\passwd",
    "overlong UTF-8 `%c0%ae`": "/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "overlong UTF-8 `%e0%80%ae`": "/%e0%80%ae%e0%80%ae/etc/passwd",
    "overlong slash `..%c0%af`": "/..%c0%af..%c0%afetc%c0%afpasswd",
    "IIS `%u002e`": "/%u002e%u002e/%u002e%u002e/etc/passwd",
    "`.%2e` halves": "/.%2e/.%2e/etc/passwd",
    "`..` after a landing file": "/app.js/../../../etc/passwd",
    "`..;/` (path parameters)": "/index.html/..;/..;/etc/passwd",
    "NUL-terminated name": "/index.html%00.py",
    "package path": "/aegis/landing/index.html",
    "`..` in a workflow key": "/api/workflows/..%2f..%2fhistory.db",
}


@pytest.mark.parametrize("name", list(TRAVERSALS))
def test_dot_dot_in_every_encoding_reads_no_file(
    api: ApiApp, log: Any, reliability: Any, name: str
) -> None:
    reply = exchange(api, head(TRAVERSALS[name]))
    assert reply.status == 404
    assert reply.error()["code"] == "not_found"
    assert b"root:" not in reply.body and b"import " not in reply.body
    survived(api, log)
    reliability.record(
        f"`..` traversal on the landing routes: {name}",
        expected="404 JSON error, no file read",
        observed=reply.outcome(),
    )


# ------------------------------------------------------------------ slow and idle


def trickle(sock: socket.socket, data: bytes, every: float) -> None:
    """Send ``data`` a byte at a time, ``every`` seconds apart, until the server answers
    or closes (then the socket turns readable and the attack stops)."""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            return


def test_slow_loris_slower_than_the_idle_timeout(api: ApiApp, log: Any, reliability: Any) -> None:
    with connect(api) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        began = time.monotonic()
        reply = read_reply(sock)  # no more bytes: the idle timeout ends the wait
        took = time.monotonic() - began
    assert reply.status == 408 and reply.closed
    assert took < IDLE + 4
    survived(api, log)
    reliability.record(
        "slow-loris: headers stop arriving (slower than the idle timeout)",
        expected="408 JSON error, connection closed by the idle timeout",
        observed=f"{reply.outcome()} within {IDLE + 4:g} s",
    )


@pytest.mark.parametrize(
    ("where", "first", "trickled"),
    [
        ("request line", b"", b"GET /health?" + b"x" * 200 + b" HTTP/1.1\r\n"),
        ("headers", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-A: b\r\n" * 30),
    ],
)
def test_slow_loris_just_faster_than_the_idle_timeout(
    api: ApiApp, log: Any, reliability: Any, where: str, first: bytes, trickled: bytes
) -> None:
    # One byte every 0.3 s never trips the 1 s idle timeout; the request deadline
    # (1 s after the first byte) must end it long before the minute this would take.
    began = time.monotonic()
    with connect(api) as sock:
        sock.sendall(first)
        trickle(sock, trickled, 0.3)
        reply = read_reply(sock) if first else None
        if reply is None:  # no request line yet: nothing to answer
            assert closed_quietly(sock)
    assert time.monotonic() - began < IDLE + 5
    if reply is not None:
        assert reply.status == 408 and reply.closed
    survived(api, log)
    fate = reply.outcome() if reply else "closed without an answer"
    reliability.record(
        f"slow-loris: {where} trickled a byte per 0.3 s (under the idle timeout)",
        expected="cut off by the request deadline" + (", 408 JSON error" if first else ""),
        observed=f"{fate}, within {IDLE + 5:g} s",
    )


def test_a_body_trickled_under_the_idle_timeout_is_cut_off(
    api: ApiApp, log: Any, reliability: Any
) -> None:
    body = b'{"x": "' + b"y" * 200 + b'"}'
    began = time.monotonic()
    with connect(api) as sock:
        sock.sendall(post(f"Content-Length: {len(body)}"))
        trickle(sock, body, 0.3)
        reply = read_reply(sock, "POST")
    assert reply.status == 408 and reply.closed
    assert time.monotonic() - began < IDLE + 5
    survived(api, log)
    reliability.record(
        "slow body: a byte per 0.3 s (under the idle timeout)",
        expected="408 JSON error when the request deadline passes",
        observed=f"{reply.outcome()} within {IDLE + 5:g} s",
    )


def test_a_body_shorter_than_its_content_length(api: ApiApp, log: Any, reliability: Any) -> None:
    with connect(api) as sock:
        sock.sendall(post("Content-Length: 100") + b"{}")
        sock.shutdown(socket.SHUT_WR)  # and nothing more comes
        reply = read_reply(sock, "POST")
    assert reply.status == 400 and "shorter" in reply.error()["message"]
    survived(api, log)
    reliability.record(
        "Content-Length larger than the body, client finished sending",
        expected="400 JSON error",
        observed=reply.outcome(),
    )


def test_a_body_that_never_comes(api: ApiApp, log: Any, reliability: Any) -> None:
    with connect(api) as sock:
        sock.sendall(post("Content-Length: 100") + b"{")
        reply = read_reply(sock, "POST")  # the client waits; the server must not
    assert reply.status == 408
    survived(api, log)
    reliability.record(
        "Content-Length larger than the body, client waits",
        expected="408 JSON error after the idle timeout",
        observed=reply.outcome(),
    )


def test_idle_connections_are_closed_and_freed(api: ApiApp, log: Any, reliability: Any) -> None:
    server = api.server
    sockets = [connect(api) for _ in range(100)]
    try:
        assert poll(lambda: server.connection_count >= 100)
        assert all(closed_quietly(sock) for sock in sockets)  # each within TIMEOUT
        assert poll(lambda: server.connection_count == 0)
    finally:
        for sock in sockets:
            sock.close()
    survived(api, log)
    reliability.record(
        "100 connections that never send a byte",
        expected="each closed by the idle timeout, its thread freed",
        observed=f"all 100 closed within {TIMEOUT:g} s; 0 connections open afterwards",
    )


def test_500_idle_connections_do_not_stop_others(
    start: Callable[..., ApiApp], log: Any, reliability: Any
) -> None:
    app = start(idle_timeout=120.0)  # they stay idle for the whole test
    server = app.server
    sockets: list[socket.socket] = []
    try:
        for _ in range(500):
            sockets.append(connect(app))
        assert poll(lambda: server.connection_count == 500, timeout=30)
        began = time.monotonic()
        assert serving(app)
        took = time.monotonic() - began
        assert took < 5
    finally:
        for sock in sockets:
            sock.close()
    assert poll(lambda: server.connection_count == 0, timeout=30)
    survived(app, log)
    reliability.record(
        "500 idle connections at once",
        expected="others still answered; all freed when the clients leave",
        observed="/health 200 under 5 s with 500 open; 0 open after they closed",
    )
