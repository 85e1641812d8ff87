"""The HTTP layer over real sockets, with stand-ins behind it (no engine, no services).

Malformed and hostile requests, limits, keep-alive, auth, CORS, the error body for every
status the server itself produces, the access log, and stopping. After each bad request
the same server must still answer.
"""

from __future__ import annotations

import http.client
import json
import logging
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_api_routes import CONFIG, FakeHealth, FakeLoop, FakeRuns, make_config

from aegis.api.handlers import ROUTES, ApiContext
from aegis.api.routes import Router, Writer
from aegis.api.server import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    AccessLog,
    ApiServer,
    loggable_target,
)
from aegis.events import EventBus, EventLog

KEY = "s3cret"
TIMEOUT = 10.0

MakeServer = Callable[..., ApiServer]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[MakeServer]:
    servers: list[ApiServer] = []

    def make(
        text: str = CONFIG, *, runs: Any = None, loop: Any = None, **options: Any
    ) -> ApiServer:
        config = make_config(tmp_path, text)
        ctx = ApiContext(
            config,
            loop=loop or FakeLoop(),
            runs=runs or FakeRuns(),
            health=FakeHealth(),
            events=EventLog(10),
            landing={"index.html": b"<!doctype html>", "app.js": b"//", "styles.css": b"*{}"},
            openapi=b'{"openapi":"3.1.0"}',
        )
        server = ApiServer(
            ("127.0.0.1", 0),
            ctx,
            Router(ROUTES),
            api_key=config.auth.api_key,
            cors_origins=config.server.cors_origins,
            **options,
        ).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop_accepting()
        server.close_connections()


@pytest.fixture
def access() -> list[str]:
    return []


@pytest.fixture
def server(make_server: MakeServer, access: list[str]) -> ApiServer:
    return make_server(access_log=access.append)


class Answer:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = {k.lower(): v for k, v in response.getheaders()}
        self.body = response.read()

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json"
        assert int(self.headers["content-length"]) == len(self.body)
        return json.loads(self.body)

    def error(self) -> dict[str, Any]:
        error = self.json()["error"]
        assert error["status"] == self.status
        return error  # type: ignore[no-any-return]


def port_of(server: ApiServer) -> int:
    return int(server.server_address[1])


def raw(server: ApiServer, data: bytes, *, method: str = "GET") -> Answer:
    """Send ``data`` as it is on a new connection and read one answer."""
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return Answer(response)


def request(
    server: ApiServer,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    connection: http.client.HTTPConnection | None = None,
) -> Answer:
    conn = connection or http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=TIMEOUT)
    conn.request(method, path, body=body, headers=headers or {})
    return Answer(conn.getresponse())


def poll(check: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Whether ``check`` comes true within ``timeout`` seconds, looking every 10 ms."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.01)
    return True


def still_serving(server: ApiServer) -> bool:
    return request(server, "GET", "/health").json()["status"] == "ok"


# ---------------------------------------------------------------- malformed requests


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"HELLO\r\n\r\n", 400),
        (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
        (b"GET / FTP/1.0\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431),
        (
            b"GET / HTTP/1.1\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 4000) for i in range(20))
            + b"\r\n",
            431,
        ),
    ],
    ids=[
        "garbage",
        "four-words",
        "not-http",
        "http2",
        "unknown-method",
        "long-line",
        "long-header",
        "many-headers",
        "big-header-block",
    ],
)
def test_malformed_requests_get_a_json_error_and_the_server_goes_on(
    server: ApiServer, data: bytes, status: int
) -> None:
    answer = raw(server, data)
    assert answer.status == status
    assert answer.headers["connection"] == "close"
    assert answer.error()["message"]
    assert still_serving(server)


def test_the_header_budget_is_all_lines_together(server: ApiServer) -> None:
    each = 1000
    fits = MAX_HEADER_BYTES // (each + 20) - 2
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"a" * each) for i in range(fits))
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers
    assert raw(server, head + b"\r\n").status == 200


def test_an_empty_request_line_closes_quietly(server: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=TIMEOUT) as sock:
        sock.sendall(b"\r\n")
        assert sock.recv(100) == b""
    assert still_serving(server)


@pytest.mark.parametrize(
    "path",
    [
        "/../etc/passwd",
        "/..%2f..%2fetc%2fpasswd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/%2E%2E/aegis/landing/app.js",
        "/%252e%252e/%252e%252e/etc/passwd",
        "/..\\..\\etc\\passwd",
        "/%5c..%5c..%5cetc%5cpasswd",
        "//../etc/passwd",
        "//%2e%2e/aegis/__init__.py",
        "///..//..//etc/passwd",
        "/landing/../../aegis/cli.py",
        "/app.js/../../../etc/passwd",
        "/index.html%00.py",
        "/.%2e/.%2e/etc/passwd",
        "/aegis/landing/index.html",
        "/api/workflows/..%2f..%2fetc%2fpasswd",
        "/api/runs/..%2f..%2fhistory.db",
    ],
)
def test_dot_dot_paths_in_every_encoding_are_404_json(server: ApiServer, path: str) -> None:
    answer = raw(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert answer.status == 404
    assert answer.error()["code"] == "not_found"
    assert b"root:" not in answer.body and b"import" not in answer.body
    assert still_serving(server)


def test_a_request_target_with_a_query_only_matches_its_path(server: ApiServer) -> None:
    assert request(server, "GET", "/health?x=../../etc/passwd").status == 200
    many = "&".join(f"p{i}=1" for i in range(60))
    assert request(server, "GET", f"/api/runs?{many}").status == 400


# ----------------------------------------------------------------------------- bodies


def test_a_body_over_1_mib_is_refused_unread(server: ApiServer) -> None:
    length = 2 * MAX_BODY_BYTES
    head = (
        f"POST /api/workflows/smoke/run HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    # Only the head is sent: the answer comes without the server waiting for the body.
    answer = raw(server, head)
    assert answer.status == 413 and answer.error()["code"] == "payload_too_large"
    assert answer.headers["connection"] == "close"
    assert still_serving(server)


def test_a_2_mib_body_sent_in_full_gets_413(server: ApiServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=TIMEOUT)
    try:
        answer = request(
            server,
            "POST",
            "/api/workflows/smoke/run",
            body=b"x" * (2 * MAX_BODY_BYTES),
            headers={"X-API-Key": KEY},
            connection=conn,
        )
        assert answer.status == 413
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed while the client was still sending
    finally:
        conn.close()
    assert still_serving(server)


def test_expect_100_continue_is_refused_for_a_body_too_large(server: ApiServer) -> None:
    head = (
        "POST /api/workflows/smoke/run HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    ).encode()
    assert raw(server, head).status == 413


def test_expect_100_continue_for_a_body_that_fits(server: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"POST /api/workflows/smoke/run HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"X-API-Key: " + KEY.encode() + b"\r\nContent-Length: 2\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(b"{}")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 202


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ("Transfer-Encoding: chunked\r\n", 411),
        ("Content-Length: abc\r\n", 400),
        ("Content-Length: -1\r\n", 400),
        ("Content-Length: 2\r\nContent-Length: 3\r\n", 400),
    ],
)
def test_bad_body_framing(server: ApiServer, headers: str, status: int) -> None:
    head = f"POST /api/workflows/smoke/run HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()
    answer = raw(server, head)
    assert answer.status == status and answer.headers["connection"] == "close"
    assert still_serving(server)


def test_a_body_shorter_than_its_length(server: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"POST /api/workflows/smoke/run HTTP/1.1\r\nHost: x\r\nX-API-Key: "
            + KEY.encode()
            + b"\r\nContent-Length: 10\r\n\r\n{}"
        )
        sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 400
        assert b"shorter than its Content-Length" in response.read()


def test_a_body_that_never_comes_times_out(make_server: MakeServer) -> None:
    server = make_server(idle_timeout=0.2)
    answer = raw(
        server,
        b"POST /api/workflows/smoke/run HTTP/1.1\r\nHost: x\r\nX-API-Key: "
        + KEY.encode()
        + b"\r\nContent-Length: 10\r\n\r\n{",
    )
    assert answer.status == 408 and answer.headers["connection"] == "close"


def test_bad_json_and_bad_parameters_are_400_and_the_connection_stays(server: ApiServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=TIMEOUT)
    auth = {"X-API-Key": KEY, "Content-Type": "application/json"}
    for method, path, body in [
        ("POST", "/api/workflows/smoke/run", b"{not json"),
        ("POST", "/api/workflows/smoke/run?wait=0", None),
        ("POST", "/api/workflows/smoke/run?wait=301", None),
        ("POST", "/api/workflows/smoke/run?wait=soon", None),
        ("GET", "/api/runs?limit=0", None),
        ("GET", "/api/runs?limit=1001", None),
        ("GET", "/api/runs?limit=ten", None),
        ("GET", "/api/runs?offset=-1", None),
        ("GET", "/api/runs?status=done", None),
        ("GET", "/api/runs?workflow=", None),
        ("GET", "/api/history?limit=5&limit=6", None),
        ("GET", "/api/events?after=x", None),
        ("GET", "/api/events?type=nope", None),
        ("GET", "/api/events/stream?after=-5", None),
    ]:
        answer = request(server, method, path, body=body, headers=auth, connection=conn)
        assert answer.status == 400, (method, path)
        assert answer.error()["code"] == "bad_request"
        assert "connection" not in answer.headers  # still keep-alive
    assert request(server, "GET", "/health", connection=conn).status == 200


# -------------------------------------------------------------------- HTTP behaviour


def test_keep_alive_and_content_length_on_every_answer(server: ApiServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=TIMEOUT)
    conn.connect()
    local = conn.sock.getsockname()
    for path, status in [
        ("/health", 200),
        ("/api/nope", 404),
        ("/api/workflows", 200),
        ("/", 200),
        ("/styles.css", 200),
    ]:
        answer = request(server, "GET", path, connection=conn)
        assert answer.status == status
        assert int(answer.headers["content-length"]) == len(answer.body)
        assert conn.sock.getsockname() == local  # the same connection throughout
    assert request(server, "DELETE", "/health", connection=conn).headers["allow"] == "GET, HEAD"


def test_http_1_0_keep_alive_is_honoured(server: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=TIMEOUT) as sock:
        for _ in range(2):
            sock.sendall(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.getheader("Connection") == "keep-alive"
            response.read()


def test_head_has_the_length_but_no_body(server: ApiServer) -> None:
    answer = raw(server, b"HEAD /api/workflows HTTP/1.1\r\nHost: x\r\n\r\n", method="HEAD")
    assert answer.status == 200 and int(answer.headers["content-length"]) > 100
    assert answer.body == b""


def test_landing_files_and_their_types(server: ApiServer) -> None:
    for path, kind in [
        ("/", "text/html"),
        ("/index.html", "text/html"),
        ("/app.js", "text/javascript"),
        ("/styles.css", "text/css"),
    ]:
        answer = request(server, "GET", path)
        assert answer.headers["content-type"] == f"{kind}; charset=utf-8"
        assert answer.headers["x-content-type-options"] == "nosniff"


def test_idle_connections_time_out(make_server: MakeServer) -> None:
    server = make_server(idle_timeout=0.2)
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=TIMEOUT) as sock:
        assert sock.recv(100) == b""  # closed by the server, well before TIMEOUT


# ------------------------------------------------------------------------------ auth


def test_posts_need_the_key_when_one_is_set(server: ApiServer, access: list[str]) -> None:
    run = "/api/workflows/smoke/run"
    for headers in [
        {},
        {"X-API-Key": "wrong"},
        {"X-API-Key": ""},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": KEY},
        {"X-API-Key": KEY + "x"},
    ]:
        answer = request(server, "POST", run, headers=headers)
        assert answer.status == 401, headers
        assert answer.headers["www-authenticate"] == 'Bearer realm="aegis"'
        assert answer.error()["code"] == "unauthorized"
    assert request(server, "POST", run, headers={"X-API-Key": KEY}).status == 202
    assert request(server, "POST", run, headers={"Authorization": f"Bearer {KEY}"}).status == 202
    assert request(server, "POST", run, headers={"authorization": f"bearer  {KEY} "}).status == 202
    assert request(server, "POST", "/api/runs/run0001/cancel").status == 401
    # reading needs no key
    assert request(server, "GET", "/api/runs/run0001").status == 200
    everything = "".join(access)
    assert KEY not in everything


def test_the_key_is_never_in_an_answer(server: ApiServer) -> None:
    for path in ["/api/openapi.json", "/api/portfolio", "/api/services", "/api/workflows"]:
        assert KEY.encode() not in request(server, "GET", path).body


def test_without_a_key_posts_are_open(make_server: MakeServer) -> None:
    server = make_server(CONFIG.replace("auth: {api_key: s3cret}", ""))
    assert request(server, "POST", "/api/workflows/smoke/run").status == 202


def test_a_non_ascii_key(make_server: MakeServer) -> None:
    server = make_server(CONFIG.replace("s3cret", "clé"))
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"POST /api/workflows/smoke/run HTTP/1.1\r\nHost: x\r\nX-API-Key: "
            + "clé".encode()
            + b"\r\n\r\n"
        )
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 202


# ------------------------------------------------------------------------------ CORS


CORS_CONFIG = CONFIG + "server: {cors_origins: ['https://dash.example']}\n"


def test_cors_headers_only_for_listed_origins(make_server: MakeServer) -> None:
    server = make_server(CORS_CONFIG)
    listed = request(server, "GET", "/health", headers={"Origin": "https://dash.example"})
    assert listed.headers["access-control-allow-origin"] == "https://dash.example"
    assert "Location" in listed.headers["access-control-expose-headers"]
    assert listed.headers["vary"] == "Origin"
    other = request(server, "GET", "/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_cors_preflight(make_server: MakeServer) -> None:
    server = make_server(CORS_CONFIG)
    preflight = request(
        server,
        "OPTIONS",
        "/api/workflows/smoke/run",
        headers={
            "Origin": "https://dash.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-API-Key",
        },
    )
    assert preflight.status == 204 and preflight.body == b""
    assert preflight.headers["access-control-allow-methods"] == "POST"
    assert "X-API-Key" in preflight.headers["access-control-allow-headers"]
    assert preflight.headers["access-control-allow-origin"] == "https://dash.example"
    unknown = request(server, "OPTIONS", "/nope", headers={"Origin": "https://dash.example"})
    assert unknown.status == 404
    refused = request(server, "OPTIONS", "/health", headers={"Origin": "https://evil.example"})
    assert refused.status == 405 and refused.headers["allow"] == "GET, HEAD"


def test_cors_off_by_default(server: ApiServer) -> None:
    answer = request(server, "GET", "/health", headers={"Origin": "https://dash.example"})
    assert "access-control-allow-origin" not in answer.headers


def test_cors_wildcard(make_server: MakeServer) -> None:
    server = make_server(CONFIG + "server: {cors_origins: ['*']}\n")
    answer = request(server, "GET", "/health", headers={"Origin": "http://any.example"})
    assert answer.headers["access-control-allow-origin"] == "http://any.example"


# ---------------------------------------------------------------- 500, 503, the log


class Broken(FakeRuns):
    def list(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("kaboom: /secret/path")


def test_an_exception_is_a_500_with_an_error_id_and_the_traceback_only_in_the_log(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(runs=Broken())
    with caplog.at_level(logging.ERROR, logger="aegis.api.server"):
        answer = request(server, "GET", "/api/runs")
    assert answer.status == 500
    error = answer.error()
    assert error["code"] == "internal_error" and len(error["error_id"]) == 12
    assert b"kaboom" not in answer.body and b"Traceback" not in answer.body
    (record,) = [r for r in caplog.records if error["error_id"] in r.getMessage()]
    assert record.exc_info is not None and "kaboom" in str(record.exc_info[1])
    assert still_serving(server)


class SlowLoop(FakeLoop):
    def call(self, coro: Any, timeout: float | None = None) -> Any:
        coro.close()
        raise TimeoutError("no answer")


def test_a_loop_that_does_not_answer_in_time_is_503(make_server: MakeServer) -> None:
    server = make_server(loop=SlowLoop())
    answer = request(server, "GET", "/api/services")
    assert answer.status == 503 and answer.headers["retry-after"] == "1"
    assert answer.error()["code"] == "unavailable"


def test_requests_on_open_connections_get_503_once_stopping(server: ApiServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=TIMEOUT)
    assert request(server, "GET", "/health", connection=conn).status == 200
    server.stop_accepting()
    answer = request(server, "GET", "/health", connection=conn)
    assert answer.status == 503 and answer.headers["connection"] == "close"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port_of(server)), timeout=TIMEOUT)


def test_an_error_while_stopping_is_503_not_500(make_server: MakeServer) -> None:
    server = make_server(runs=Broken())
    conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=TIMEOUT)
    conn.connect()
    server.ctx.stopping.set()
    assert request(server, "GET", "/api/runs", connection=conn).status == 503


def test_close_connections_ends_idle_keep_alive_connections(server: ApiServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=TIMEOUT)
    assert request(server, "GET", "/health", connection=conn).status == 200
    server.close_connections()
    assert conn.sock.recv(10) == b""


def test_an_event_stream_ends_when_the_server_stops(server: ApiServer) -> None:
    bus = EventBus()
    bus.subscribe(server.ctx.events.append)
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /api/events/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        stream = sock.makefile("rb")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += stream.readline()
        assert b"200 OK" in head and b"text/event-stream" in head
        assert b"content-length" not in head.lower() and b"Connection: close" in head
        assert stream.readline() == b"retry: 2000\n"
        bus.emit("workflow.started", "r1", "smoke", steps=1)
        assert stream.readline() == b"\n"
        assert stream.readline() == b"id: 1\n"
        assert stream.readline() == b"event: workflow.started\n"
        assert json.loads(stream.readline()[6:])["run_id"] == "r1"
        stopper = threading.Thread(target=server.stop_accepting)
        stopper.start()
        assert stream.read() == b"\n"  # the rest of the message, then the end
        stopper.join()


def test_a_client_leaving_an_event_stream_ends_it(server: ApiServer, access: list[str]) -> None:
    server.ctx.heartbeat = 0.01
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /api/events/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while b"retry" not in received:
            received += sock.recv(1000)
    # a heartbeat soon fails to send; the handler then logs the request and ends
    assert poll(lambda: any('"GET /api/events/stream" 200' in line for line in access))


def test_access_log_lines(server: ApiServer, access: list[str]) -> None:
    request(server, "GET", "/api/runs?limit=5&api_key=hunter2&token=t0k")
    raw(server, b"HELLO\r\n\r\n")
    request(server, "GET", "/nope%0d%0aFAKE")
    # a line is written once its answer is sent: the client may read the answer first
    assert poll(lambda: len(access) == 3)
    runs, garbage, nope = (
        next(line for line in access if part in line) for part in ("/api/runs", '"- -"', "/nope")
    )
    assert runs.startswith('127.0.0.1 "GET /api/runs?limit=5&api_key=***&token=***" 200 ')
    assert runs.endswith("ms")
    assert "hunter2" not in runs and "t0k" not in runs
    assert garbage.startswith('127.0.0.1 "- -" 400 ')
    assert '"GET /nope%0d%0aFAKE" 404' in nope


def test_loggable_target() -> None:
    assert loggable_target("/a?b=1&password=x&c") == "/a?b=1&password=***&c"
    assert loggable_target("/a\r\nb\x7f\xe9") == "/a\\x0d\\x0ab\\x7f\\xe9"
    assert loggable_target("/x?%6B%65%79=v") == "/x?%6B%65%79=***"


def test_access_log_writes_whole_lines() -> None:
    import io

    stream = io.StringIO()
    log = AccessLog(stream)
    log("one")
    log("two")
    assert stream.getvalue() == "one\ntwo\n"


def test_ipv6_url(make_server: MakeServer) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    server = make_server()
    assert server.url.startswith("http://127.0.0.1:")
    config = server.ctx.config
    v6 = ApiServer(("::1", 0), server.ctx, Router(ROUTES), api_key=config.auth.api_key)
    try:
        assert v6.url.startswith("http://[::1]:")
    finally:
        v6.server_close()


class StoppedMidway(FakeRuns):
    """Fails the way a store closed under a request fails: while the server stops."""

    def __init__(self, stopping: threading.Event) -> None:
        super().__init__()
        self.stopping = stopping

    def list(self, *args: Any, **kwargs: Any) -> Any:
        self.stopping.set()
        raise RuntimeError("closed")


def test_an_error_raised_as_the_server_stops_is_503(make_server: MakeServer) -> None:
    server = make_server()
    server.ctx.runs = StoppedMidway(server.ctx.stopping)
    answer = request(server, "GET", "/api/runs")
    assert answer.status == 503 and answer.error()["message"] == "the server is shutting down"


def test_the_server_header_names_aegis_only(server: ApiServer) -> None:
    from aegis import __version__

    assert request(server, "GET", "/health").headers["server"] == f"aegis/{__version__}"


def test_a_closed_access_log_stream_does_not_stop_serving() -> None:
    import io

    stream = io.StringIO()
    stream.close()
    AccessLog(stream)("a line nobody will read")  # no exception


def test_a_bug_after_the_answer_began_is_logged_as_an_error(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    from aegis.api.routes import Answer, Response, Route

    def explode(out: Writer) -> None:
        out.write(b"data: half\n\n")
        raise RuntimeError("stream bug")

    def streaming(ctx: Any, request: Any) -> Response:
        return Response(200, content_type="text/event-stream", stream=explode)

    base = make_server()
    route = Route("GET", "/boom", streaming, "boom", (Answer(200, "never whole"),))
    server = ApiServer(("127.0.0.1", 0), base.ctx, Router([route])).start()
    try:
        with caplog.at_level(logging.ERROR, logger="aegis.api.server"):
            answer = request(server, "GET", "/boom")
            assert answer.body == b"data: half\n\n"
            assert poll(lambda: "error on the connection" in caplog.text)
        assert "stream bug" in caplog.text
    finally:
        server.stop_accepting()
        server.close_connections()


def test_serving_without_auth_or_problems_loads_no_hash_library() -> None:
    # an idle `aegis serve` is measured by its RSS (bench/): OpenSSL's hashes (hmac, 0.7 MB),
    # uuid and difflib load only when a request needs them
    code = (
        "import sys, aegis.api.app, aegis.api.server, aegis.engine.runner, aegis.config;"
        "print(','.join(m for m in ('hmac', 'uuid', 'difflib', 'httpx') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


# ------------------------------------------- defects found by tests/reliability/


def _closed_without_answer(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_a_request_line_trickled_under_the_idle_timeout_is_cut_off(
    make_server: MakeServer,
) -> None:
    # Before: each byte reset the idle timeout, so a byte every 0.1 s held a thread forever.
    server = make_server(idle_timeout=0.5, request_timeout=0.3)
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=TIMEOUT) as sock:
        began = time.monotonic()
        pause = threading.Event()
        for byte in b"GET /health?" + b"x" * 100:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            pause.wait(0.05)
            if time.monotonic() - began > 1.0:
                break
        assert _closed_without_answer(sock)
        assert time.monotonic() - began < 3
    assert still_serving(server)


def test_headers_trickled_under_the_idle_timeout_get_408(make_server: MakeServer) -> None:
    server = make_server(idle_timeout=0.5, request_timeout=0.3)
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        for _ in range(20):  # a header line every 0.1 s: never idle, never finished
            sock.sendall(b"X-A: b\r\n")
            answered, _, _ = select.select([sock], [], [], 0.1)
            if answered:
                break
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 408
        assert json.loads(response.read())["error"]["code"] == "request_timeout"


def test_headers_that_stop_coming_get_408_not_silence(make_server: MakeServer) -> None:
    server = make_server(idle_timeout=0.2)
    answer = raw(server, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Half: ")
    assert answer.status == 408 and answer.headers["connection"] == "close"


def test_a_body_trickled_under_the_idle_timeout_gets_408(make_server: MakeServer) -> None:
    server = make_server(idle_timeout=0.5, request_timeout=0.3)
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"POST /api/workflows/smoke/run HTTP/1.1\r\nHost: x\r\nX-API-Key: "
            + KEY.encode()
            + b"\r\nContent-Length: 50\r\n\r\n"
        )
        pause = threading.Event()
        for _ in range(20):
            try:
                sock.sendall(b" ")
            except OSError:
                break
            pause.wait(0.1)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 408


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        # the header parser stopped at the bad line and dropped the rest: here the
        # Content-Length, so the body would have been read as the next request
        ("this is no header\r\nContent-Length: 2\r\n", "malformed"),
        ("X-\x00: 1\r\n", "malformed"),
        (": no name\r\n", "malformed"),
        ("X-Folded: a\r\n b\r\n", "folded"),
        ("Host: other\r\n", "Host header is given more than once"),
        (f"X-API-Key: {KEY}\r\nX-API-Key: wrong\r\n", "X-API-Key header is given more"),
        ("Authorization: Bearer a\r\nAuthorization: Bearer b\r\n", "Authorization header"),
        ("Idempotency-Key: a\r\nIdempotency-Key: b\r\n", "Idempotency-Key header"),
    ],
)
def test_malformed_or_ambiguous_headers_are_400(
    server: ApiServer, headers: str, message: str
) -> None:
    head = f"POST /api/workflows/smoke/run HTTP/1.1\r\nHost: x\r\n{headers}\r\n{{}}"
    answer = raw(server, head.encode("latin-1"))
    assert answer.status == 400 and message in answer.error()["message"]
    assert answer.headers["connection"] == "close"
    assert still_serving(server)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /health HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 needs a Host
        (b"GET /health HTTP/1.1\r\nHost: " + b"h" * 300 + b"\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: example.test:8000\r\n\r\n", 200),
        (b"GET /health HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n", 200),
        (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 200),
        (b"GET /health HTTP/1.0\r\n\r\n", 200),  # HTTP/1.0 may leave it out
    ],
)
def test_the_host_header(server: ApiServer, head: bytes, status: int) -> None:
    answer = raw(server, head)
    assert answer.status == status
    if status == 400:
        assert "Host" in answer.error()["message"]


def test_expect_100_continue_is_not_granted_to_a_bad_head(server: ApiServer) -> None:
    head = (
        b"POST /api/workflows/smoke/run HTTP/1.1\r\n"
        b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    answer = raw(server, head)  # no Host: 400 at once, no 100 Continue first
    assert answer.status == 400 and "Host" in answer.error()["message"]


def test_http_0_9_is_refused_at_once(make_server: MakeServer) -> None:
    # Before: the server waited for headers a 0.9 client never sends, until the idle
    # timeout, then closed without an answer.
    server = make_server(idle_timeout=30.0)
    began = time.monotonic()
    answer = raw(server, b"GET /health\r\n")
    assert answer.status == 505 and "HTTP/0.9" in answer.error()["message"]
    assert time.monotonic() - began < 5


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("http://127.0.0.1/health", 200),
        ("HTTPS://example.test/api/workflows/smoke", 200),
        ("http://example.test", 200),  # the landing page
        ("http://example.test/../../etc/passwd", 404),
        ("ftp://example.test/health", 404),
    ],
)
def test_absolute_form_targets_are_routed_by_their_path(
    server: ApiServer, target: str, status: int
) -> None:
    answer = raw(server, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert answer.status == status


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 50_000])
def test_json_nested_too_deeply_is_400_not_500(server: ApiServer, body: bytes) -> None:
    answer = request(
        server, "POST", "/api/workflows/smoke/run", body=body, headers={"X-API-Key": KEY}
    )
    assert answer.status == 400 and "nested too deeply" in answer.error()["message"]


def test_connection_count(make_server: MakeServer) -> None:
    server = make_server(idle_timeout=0.3)
    assert server.connection_count == 0
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=TIMEOUT):
        assert poll(lambda: server.connection_count == 1)
    assert poll(lambda: server.connection_count == 0)


def test_binding_makes_no_reverse_dns_lookup(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def lookup(name: str = "") -> str:
        raise AssertionError("socket.getfqdn called: a reverse DNS lookup at start-up")

    monkeypatch.setattr(socket, "getfqdn", lookup)
    server = make_server()
    assert (server.server_name, server.server_port) == ("127.0.0.1", server.server_address[1])


# ------------------------------------------------------------------- many connections


def connect(server: ApiServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port_of(server)), timeout=TIMEOUT)


def open_stream(server: ApiServer) -> socket.socket:
    sock = connect(server)
    sock.sendall(b"GET /api/events/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while b"retry: 2000" not in received:
        received += sock.recv(1000)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_past_max_connections_the_longest_idle_one_makes_room(make_server: MakeServer) -> None:
    server = make_server(max_connections=3, idle_timeout=60.0)
    first, second, third = connect(server), connect(server), connect(server)
    keep_alive = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=TIMEOUT)
    try:
        assert poll(lambda: server.connection_count == 3)
        # a fourth: the longest idle (the first) is closed, and the fourth is answered
        assert request(server, "GET", "/health", connection=keep_alive).status == 200
        assert closed_by_server(first)
        assert poll(lambda: server.connection_count == 3)
        with connect(server):  # idle the longest now: the second, then the third
            assert closed_by_server(second)
            third.settimeout(0.2)
            with pytest.raises(TimeoutError):
                third.recv(100)  # still open
        assert request(server, "GET", "/health", connection=keep_alive).status == 200
    finally:
        keep_alive.close()
        for sock in (first, second, third):
            sock.close()


def test_past_max_connections_all_answering_a_short_503_and_close(
    make_server: MakeServer,
) -> None:
    server = make_server(max_connections=2, idle_timeout=60.0)
    streams = [open_stream(server), open_stream(server)]  # answering, for as long as they last
    try:
        with connect(server) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert b"Connection: close" in head and b"Retry-After: 1" in head
        assert json.loads(body)["error"]["message"] == "too many connections; try again"
    finally:
        for sock in streams:
            sock.close()
    assert poll(lambda: server.connection_count == 0)
    assert still_serving(server)


def test_slow_connections_do_not_start_a_thread_each(make_server: MakeServer) -> None:
    before = threading.active_count()
    server = make_server(max_connections=20, idle_timeout=60.0)
    sockets = []
    try:
        for _ in range(200):
            sock = connect(server)
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # and then nothing: slow
            sockets.append(sock)
        assert still_serving(server)
        assert poll(lambda: server.connection_count <= 20)  # those told to go have gone
        assert poll(lambda: threading.active_count() - before <= 20 + 1)  # + accepting
    finally:
        for sock in sockets:
            sock.close()


def test_a_client_that_closes_a_quiet_event_stream_is_dropped_at_once(
    server: ApiServer, access: list[str]
) -> None:
    server.ctx.heartbeat = 600.0  # no write would ever tell
    sock = open_stream(server)
    assert server.connection_count == 1
    sock.close()
    assert poll(lambda: server.connection_count == 0, timeout=5)
    assert any('"GET /api/events/stream" 200' in line for line in access)


def test_a_client_that_never_reads_its_event_stream_is_dropped(make_server: MakeServer) -> None:
    server = make_server(stall_timeout=0.5, idle_timeout=60.0)
    server.ctx.heartbeat = 600.0
    bus = EventBus()
    bus.subscribe(server.ctx.events.append)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port_of(server)))
    try:
        sock.sendall(b"GET /api/events/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        assert poll(lambda: server.connection_count == 1)
        big = "x" * 60_000
        for i in range(200):  # far more than the buffers hold; the client reads nothing
            bus.emit("step.completed", f"r{i}", "smoke", message=big)
            if poll(lambda: server.connection_count == 0, timeout=0.05):
                break
        assert poll(lambda: server.connection_count == 0, timeout=5)
    finally:
        sock.close()
    assert still_serving(server)
