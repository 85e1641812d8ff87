"""Reference services that speak the contracts of DESIGN §4, for demos, tests and benchmarks.

``QaAgent`` discovers routes and runs tests; ``Bugalizer`` files bug reports. Both answer
with deterministic data on loopback, each on its own ``ThreadingHTTPServer`` in a
background thread, and both take injected faults (fail the next N calls, answer slowly,
drop or reset the connection, stall, trickle, send bodies that are not the contract,
huge or compressed ones, redirects; see ``Fault``) and log every call so tests can see
what was sent::

    with DemoServices() as demo:
        demo.qaagent.inject("/api/runs", Fault(status=503, times=1))
        ...  # point a config at demo.qaagent_url and demo.bugalizer_url
        assert demo.bugalizer.calls[-1].json["project_id"] == "web-shop"

``python -m aegis.demo`` runs both in the foreground on the ports that
``aegis.example.yaml`` names, until Ctrl-C; ``--fault SERVICE:PATH=SPEC`` injects faults.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hmac
import io
import json
import logging
import queue
import select
import signal
import socket
import struct
import sys
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aegis import __version__

__all__ = [
    "DEFAULT_BUGALIZER_PORT",
    "DEFAULT_PROJECTS",
    "DEFAULT_QAAGENT_PORT",
    "FAULT_MODES",
    "ROUTES",
    "SEVERITIES",
    "TESTS",
    "Bugalizer",
    "Call",
    "DemoService",
    "DemoServices",
    "DemoTest",
    "Fault",
    "QaAgent",
    "main",
    "padded_json",
]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_QAAGENT_PORT = 8080
DEFAULT_BUGALIZER_PORT = 8090
MAX_BODY_BYTES = 1024 * 1024
MAX_CALLS = 10_000  # the call log is a ring, so a long benchmark cannot exhaust memory
IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may sit idle
WORKER_IDLE = 30.0  # seconds a connection thread waits for the next connection
# How often serve_forever looks for a stop request; it bounds how long stop() takes.
POLL_INTERVAL = 0.02
# How often a stalled answer looks whether its client hung up.
STALL_POLL = 0.05
MAX_TITLE = 500
SEVERITIES = ("critical", "high", "medium", "low")
DEFAULT_PROJECTS = ("web-shop",)


# --------------------------------------------------------------------------- faults


# How a faulty call is answered (``Fault.mode``).
FAULT_MODES = ("answer", "drop", "reset", "reset_mid_body", "stall", "raw")
# Pieces of a trickled body, and of a streamed large one.
TRICKLE_BYTES = 16
STREAM_BYTES = 64 * 1024


@dataclass(frozen=True)
class Fault:
    """A misbehaviour injected into one endpoint (or every endpoint, with path ``*``).

    It affects the next ``times`` calls (``None``: every call until cleared), after letting
    the first ``after`` calls through unharmed. Each call it affects first waits ``delay``
    seconds, then is answered as ``mode`` says:

    ``answer`` (the default)
        ``status`` with an error body and an optional ``Retry-After`` (and ``Location``,
        for redirects); with ``status=None`` the call gets its normal answer, so
        ``Fault(status=None, delay=2)`` is merely slow. ``body`` (raw bytes or text) or
        ``payload`` (any JSON) replace the answer's body, with ``status`` or else 200;
        ``size`` replaces it with a valid JSON document of that many bytes, streamed
        without building it in memory.
    ``drop`` (also ``down=True``)
        close the connection without an answer.
    ``reset``
        reset the connection (TCP RST) without an answer.
    ``reset_mid_body``
        send the headers and part of the body, then reset the connection.
    ``stall``
        read the request and never answer, until the client hangs up or the service
        stops.
    ``raw``
        send ``body`` as the whole answer, status line and headers included (or not:
        anything that is not HTTP), then close the connection.

    Whatever the body, ``trickle`` sends it a few bytes at a time with that many seconds
    between pieces, ``chunked`` sends it without a length, ``gzip`` compresses it (with
    ``Content-Encoding: gzip``) and ``content_type`` replaces ``application/json``. A
    service that refuses connections altogether is ``service.stop()``.
    """

    status: int | None = 503
    times: int | None = 1
    retry_after: str | float | None = None
    delay: float = 0.0
    down: bool = False
    mode: str = "answer"
    body: bytes | str | None = None
    payload: Any = None
    size: int | None = None
    location: str | None = None
    content_type: str | None = None
    trickle: float = 0.0
    chunked: bool = False
    gzip: bool = False
    after: int = 0

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {self.status}")
        if self.times is not None and self.times < 1:
            raise ValueError(f"times must be >= 1 or None, got {self.times}")
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0, got {self.delay}")
        if self.after < 0:
            raise ValueError(f"after must be >= 0, got {self.after}")
        if self.mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}, got {self.mode!r}")
        if self.trickle < 0:
            raise ValueError(f"trickle must be >= 0, got {self.trickle}")
        if self.size is not None and self.size < len(_PADDED_HEAD + _PADDED_TAIL):
            raise ValueError(f"size must be >= {len(_PADDED_HEAD + _PADDED_TAIL)}")
        replacements = [x is not None for x in (self.body, self.payload, self.size)]
        if sum(replacements) > 1:
            raise ValueError("give at most one of body, payload and size")

    @property
    def effective_mode(self) -> str:
        return "drop" if self.down else self.mode

    @property
    def replaces_body(self) -> bool:
        return self.body is not None or self.payload is not None or self.size is not None


# A large answer is a valid discover answer padded to size: {"routes":[],"padding":"xx…"}
_PADDED_HEAD = b'{"routes":[],"padding":"'
_PADDED_TAIL = b'"}'


def padded_json(size: int) -> Iterator[bytes]:
    """A JSON document of exactly ``size`` bytes, in pieces of at most ``STREAM_BYTES``."""
    padding = size - len(_PADDED_HEAD) - len(_PADDED_TAIL)
    yield _PADDED_HEAD
    piece = b"x" * STREAM_BYTES
    while padding > 0:
        yield piece[:padding]
        padding -= len(piece)
    yield _PADDED_TAIL


@dataclass(frozen=True)
class Call:
    """One request a demo service received, and the status it answered (``None``: none)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    json: Any
    status: int | None


# --------------------------------------------------------------------------- HTTP plumbing


class BadRequest(Exception):
    """A request the service rejects; carries the status and the JSON it answers with."""

    def __init__(self, status: int, payload: Any) -> None:
        super().__init__(status)
        self.status = status
        self.payload = payload


@dataclass
class Request:
    method: str
    path: str
    query_string: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.query_string)

    def json(self) -> Any:
        """The body as JSON; raises ``BadRequest`` 422 in FastAPI's style when it is not."""
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise BadRequest(
                422, _detail(["body", 0], "JSON decode error", "json_invalid")
            ) from exc


@dataclass
class Response:
    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # sent as is instead of the payload as JSON


Handler = Callable[[Request], Response]


def _detail(loc: list[Any], msg: str, kind: str) -> dict[str, Any]:
    return {"detail": [{"loc": loc, "msg": msg, "type": kind}]}


def _error(status: int, detail: str | None = None) -> Response:
    return Response(status, {"detail": detail or HTTPStatus(status).phrase})


def _fault_response(fault: Fault) -> Response:
    status = fault.status or 200
    if fault.payload is not None:
        response = Response(status, fault.payload)
    elif fault.body is not None:
        raw = fault.body.encode() if isinstance(fault.body, str) else fault.body
        response = Response(status, None, raw=raw)
    elif fault.size is not None:
        response = Response(status, None, raw=b"")  # the body is streamed by the handler
    else:
        response = _error(status, f"injected fault: HTTP {status}")
    if fault.retry_after is not None:
        response.headers["Retry-After"] = str(fault.retry_after)
    if fault.location is not None:
        response.headers["Location"] = fault.location
    return response


def _encode(response: Response) -> bytes:
    if response.raw is not None:
        return response.raw
    return json.dumps(response.payload, separators=(",", ":"), allow_nan=False).encode()


def _shaped_body(response: Response, fault: Fault) -> tuple[Iterable[bytes], int | None]:
    """The body of a faulty answer as pieces, and its length (``None``: not known ahead)."""
    if fault.size is not None:
        if fault.gzip:  # a "gzip bomb": padding shrinks a thousandfold, so this stays small
            body = b"".join(_gzipped(padded_json(fault.size)))
            return [body], len(body)
        return padded_json(fault.size), fault.size
    body = _encode(response)
    if fault.gzip:
        body = b"".join(_gzipped([body]))
    return [body], len(body)


def _gzipped(pieces: Iterable[bytes]) -> Iterator[bytes]:
    compressor = zlib.compressobj(wbits=31)  # 31: the gzip container
    for piece in pieces:
        out = compressor.compress(piece)
        if out:
            yield out
    yield compressor.flush()


def _sliced(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    for piece in pieces:
        for start in range(0, len(piece), size):
            yield piece[start : start + size]


class _Workers:
    """Threads that serve one connection each, then wait up to ``WORKER_IDLE`` seconds to
    serve another.

    ``ThreadingHTTPServer`` starts a thread per connection. With 100 connections at once
    (a parallel batch of steps), starting them, one after the other under the GIL, spread
    the service's answers over ~10 ms more; a waiting worker takes a connection in a
    hand-over. Invariant: ``_idle`` = workers waiting - jobs queued.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._idle = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._jobs.put(job)
                return
        threading.Thread(target=self._work, args=(job,), name=self._name, daemon=True).start()

    def close(self) -> None:
        """Let every waiting worker go; busy ones end with their connection."""
        with self._lock:
            for _ in range(self._idle):
                self._jobs.put(None)
            self._idle = 0

    def _work(self, job: Callable[[], None] | None) -> None:
        while job is not None:
            job()
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=WORKER_IDLE)
            except queue.Empty:
                with self._lock:
                    try:
                        job = self._jobs.get_nowait()  # handed one just as the wait ended
                    except queue.Empty:
                        self._idle -= 1
                        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], service: DemoService) -> None:
        self.service = service
        self.workers = _Workers(f"aegis-demo-{service.name}-connection")
        self.stopping = threading.Event()
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.workers.submit(functools.partial(self.process_request_thread, request, client_address))

    def server_close(self) -> None:
        super().server_close()
        self.workers.close()

    def close_open_connections(self) -> None:
        """Drop keep-alive connections, so a stopped service answers nothing at all."""
        with self.connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-answer is normal here (timeouts, stop()); anything
        # else is a bug in the demo and goes to the log rather than to stderr.
        if not isinstance(sys.exc_info()[1], OSError):
            log.exception("demo %s: error serving %s", self.service.name, client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT
    server_version = f"aegis-demo/{__version__}"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.open_connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("demo %s: " + format, self.server.service.name, *args)

    def _handle(self) -> None:
        try:
            request = self._request()
        except BadRequest as exc:
            self.close_connection = True
            self._send(Response(exc.status, exc.payload))
            return
        service = self.server.service
        fault = service.take_fault(request.path)
        response = service.respond(request, fault)
        service.record(request, response)
        if fault is None:
            if response is not None:
                self._send(response)
            return
        ready = self._rendered(response, fault) if fault.delay else None
        if fault.delay and self.server.stopping.wait(fault.delay):
            self._drop()  # stopped while waiting: answer nothing, as a dead server would
            return
        if ready is not None:
            with contextlib.suppress(OSError):
                self.wfile.write(ready)
            return
        mode = fault.effective_mode
        if mode == "stall":
            self._stall()
            self._drop()
        elif mode == "reset":
            self._reset()
        elif mode == "raw":
            raw = fault.body.encode() if isinstance(fault.body, str) else fault.body
            with contextlib.suppress(OSError):
                self.wfile.write(raw or b"")
            self._drop()
        elif response is None:
            self._drop()
        else:
            self._send(response, fault)

    def _rendered(self, response: Response | None, fault: Fault) -> bytes | None:
        """A small, plain answer as bytes, made before a delay and not after it.

        When 100 delayed calls end at once, their threads would all build their answers
        under one GIL, spreading them over ~10 ms; sending finished bytes takes little.
        """
        plain = fault.effective_mode == "answer" and not fault.trickle and fault.size is None
        if response is None or not plain:
            return None
        wfile, self.wfile = self.wfile, io.BytesIO()
        try:
            self._send(response, fault)
            return self.wfile.getvalue()
        finally:
            self.wfile = wfile

    def _request(self) -> Request:
        split = urlsplit(self.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        return Request(
            method=self.command,
            path=split.path,
            query_string=split.query,
            headers=headers,
            body=self._body(headers),
        )

    def _body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise BadRequest(411, {"detail": "Length Required"})
        length = headers.get("content-length", "0").strip() or "0"
        if not length.isdigit():
            raise BadRequest(400, {"detail": "Invalid Content-Length"})
        if int(length) > MAX_BODY_BYTES:
            raise BadRequest(413, {"detail": "Request body too large"})
        return self.rfile.read(int(length))

    def _send(self, response: Response, fault: Fault | None = None) -> None:
        if fault is None:  # the usual answer, kept short: benchmarks go through here
            body = _encode(response)
            self._send_head(response, "application/json", len(body))
            self.wfile.write(body)
            return
        pieces, length = _shaped_body(response, fault)
        if fault.chunked:
            length = None
        extra = {"Content-Encoding": "gzip"} if fault.gzip else {}
        self._send_head(response, fault.content_type or "application/json", length, extra)
        cut_at = None
        if fault.effective_mode == "reset_mid_body":
            cut_at = length // 2 if length is not None else STREAM_BYTES
        self._send_body(pieces, chunked=length is None, trickle=fault.trickle, cut_at=cut_at)

    def _send_head(
        self,
        response: Response,
        content_type: str,
        length: int | None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", content_type)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        for name, value in response.headers.items():
            self.send_header(name, value)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send_body(
        self, pieces: Iterable[bytes], *, chunked: bool, trickle: float, cut_at: int | None
    ) -> None:
        """Write the body; ``trickle`` paces it, ``cut_at`` resets the line after that many
        bytes. Stopping the service mid-way drops the line."""
        if trickle:
            pieces = _sliced(pieces, TRICKLE_BYTES)
        sent = 0
        for piece in pieces:
            if cut_at is not None and sent + len(piece) >= cut_at:
                self._write_piece(piece[: cut_at - sent], chunked)
                self._reset()
                return
            self._write_piece(piece, chunked)
            sent += len(piece)
            if trickle and self.server.stopping.wait(trickle):
                self._drop()
                return
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _write_piece(self, piece: bytes, chunked: bool) -> None:
        if not piece:
            return  # an empty chunk would end a chunked body
        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _reset(self) -> None:
        """Abort the connection: with a zero linger time, closing it sends a TCP RST."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # The socket really closes (and resets) when finish() closes rfile and wfile.
            self.connection.close()

    def _stall(self) -> None:
        """Answer nothing until the client hangs up or the service stops."""
        while not self.server.stopping.is_set():
            try:
                readable, _, _ = select.select([self.connection], [], [], STALL_POLL)
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    return  # the client hung up
            except OSError:
                return
            if readable and self.server.stopping.wait(STALL_POLL):
                return  # more request bytes we will not read: wait without spinning


# --------------------------------------------------------------------------- services


class DemoService:
    """One reference service on its own ``ThreadingHTTPServer`` in a daemon thread.

    Subclasses name their routes in ``routes()``: a path → method → handler table.
    ``/health`` is always there and never needs the API key.
    """

    name = "service"

    def __init__(
        self, host: str = DEFAULT_HOST, port: int = 0, *, api_key: str | None = None
    ) -> None:
        self.host = host
        self._port = port
        self.api_key = api_key
        self._lock = threading.Lock()
        # path -> (fault, calls to let through, calls left to spoil)
        self._faults: dict[str, tuple[Fault, int, int | None]] = {}
        self._calls: deque[Call] = deque(maxlen=MAX_CALLS)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._table: dict[str, dict[str, Handler]] = {
            "/health": {"GET": self._health},
            **self.routes(),
        }

    # lifecycle

    def start(self) -> DemoService:
        """Listen and serve in a background thread; after ``stop()``, on the same port."""
        if self._server is not None:
            return self
        server = _Server((self.host, self._port), self)
        self._port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL},
            name=f"aegis-demo-{self.name}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving: new connections are refused and open ones are dropped."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.stopping.set()
        server.shutdown()
        server.server_close()
        server.close_open_connections()
        thread.join()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    # faults and the call log

    def inject(self, path: str, fault: Fault) -> None:
        """Make ``path`` (``*``: every path) misbehave as ``fault`` says, from the next call."""
        with self._lock:
            self._faults[path] = (fault, fault.after, fault.times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def take_fault(self, path: str) -> Fault | None:
        """The fault for a call to ``path`` now, counting the call against it."""
        with self._lock:
            key = path if path in self._faults else "*"
            entry = self._faults.get(key)
            if entry is None:
                return None
            fault, spared, left = entry
            if spared:
                self._faults[key] = (fault, spared - 1, left)
                return None
            if left is None:
                return fault
            if left > 1:
                self._faults[key] = (fault, 0, left - 1)
            else:
                del self._faults[key]
            return fault

    @property
    def calls(self) -> list[Call]:
        """The calls received so far, oldest first (the last ``MAX_CALLS`` of them)."""
        with self._lock:
            return list(self._calls)

    def record(self, request: Request, response: Response | None) -> None:
        try:
            body = json.loads(request.body) if request.body else None
        except ValueError:
            body = None
        call = Call(
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers=request.headers,
            json=body,
            status=response.status if response else None,
        )
        with self._lock:
            self._calls.append(call)

    # answering

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {}

    def respond(self, request: Request, fault: Fault | None) -> Response | None:
        """The answer to ``request`` as ``fault`` bends it; ``None`` means drop the line."""
        if fault is not None and fault.effective_mode in ("drop", "reset", "stall", "raw"):
            return None
        if fault is not None and (fault.status is not None or fault.replaces_body):
            return _fault_response(fault)
        try:
            return self._dispatch(request)
        except BadRequest as exc:
            return Response(exc.status, exc.payload)
        except Exception:  # a bug in the demo must not look like a dead service
            log.exception("demo %s: error answering %s %s", self.name, request.method, request.path)
            return _error(500)

    def _dispatch(self, request: Request) -> Response:
        methods = self._table.get(request.path)
        if methods is None:
            return _error(404)
        handler = methods.get(request.method)
        if handler is None:
            response = _error(405)
            response.headers["Allow"] = ", ".join(sorted(methods))
            return response
        if request.path != "/health" and not self._authorized(request):
            return _error(401, "Invalid or missing API key")
        return handler(request)

    def _authorized(self, request: Request) -> bool:
        if not self.api_key:
            return True
        sent = request.headers.get("x-api-key", "")
        return hmac.compare_digest(sent.encode(), self.api_key.encode())

    def _health(self, request: Request) -> Response:
        return Response(200, {"status": "ok", "service": self.name, "version": __version__})


# --------------------------------------------------------------------------- qaagent


@dataclass(frozen=True)
class DemoTest:
    """A test the demo qaagent knows. ``message`` is set for a test that fails on a full
    run; ``flaky`` tests pass when re-run alone (``verify_only``)."""

    id: str
    suite: str
    route: str
    message: str | None = None
    flaky: bool = False


ROUTES: tuple[dict[str, str], ...] = (
    {"method": "GET", "path": "/", "name": "home", "risk": "low"},
    {"method": "GET", "path": "/api/products", "name": "list products", "risk": "low"},
    {"method": "GET", "path": "/api/products/{id}", "name": "product detail", "risk": "low"},
    {"method": "POST", "path": "/api/cart", "name": "add to cart", "risk": "medium"},
    {"method": "POST", "path": "/api/checkout", "name": "checkout", "risk": "high"},
    {"method": "POST", "path": "/api/login", "name": "login", "risk": "high"},
)

TESTS: tuple[DemoTest, ...] = (
    DemoTest("test_home_page_loads", "web", "/"),
    DemoTest("test_product_list_renders", "web", "/api/products"),
    DemoTest("test_product_detail_renders", "web", "/api/products/{id}"),
    DemoTest("test_cart_add_item", "web", "/api/cart"),
    DemoTest(
        "test_checkout_applies_discount",
        "web",
        "/api/checkout",
        message="AssertionError: expected total 90.00 with code SAVE10, got 100.00",
    ),
    DemoTest("test_login_redirects_home", "web", "/api/login"),
    DemoTest("test_api_products_json", "api", "/api/products"),
    DemoTest(
        "test_api_login_rate_limit",
        "api",
        "/api/login",
        message="TimeoutError: POST /api/login took 5.2 s (limit 2 s)",
        flaky=True,
    ),
    DemoTest("test_api_cart_requires_session", "api", "/api/cart"),
    DemoTest("test_api_checkout_validates_card", "api", "/api/checkout"),
)


class QaAgent(DemoService):
    """The demo QA agent: ``GET /api/routes`` and ``POST /api/runs`` (also ``verify_only``),
    and the start-and-poll API of ``aegis.demo_test_runs``."""

    name = "qaagent"

    def __init__(
        self, host: str = DEFAULT_HOST, port: int = 0, *, api_key: str | None = None
    ) -> None:
        super().__init__(host, port, api_key=api_key)
        self._runs = 0
        from aegis.demo_test_runs import StartedRuns

        self.started = StartedRuns(self._full_run, self._rerun)

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {"/api/routes": {"GET": self._routes}, "/api/runs": {"POST": self._run}}

    def _dispatch(self, request: Request) -> Response:
        # the start-and-poll API (aegis/demo_test_runs.py) has paths with parameters
        if not self.started.handles(request.path):
            return super()._dispatch(request)
        if not self._authorized(request):
            return _error(401, "Invalid or missing API key")
        return self.started.answer(request)

    def _routes(self, request: Request) -> Response:
        return Response(200, {"routes": [dict(route) for route in ROUTES]})

    def _run(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise BadRequest(422, _detail(["body"], "Input should be an object", "dict_type"))
        if body.get("verify_only"):
            return self._answer(self._rerun(body.get("tests")))
        routes = body.get("routes", [])
        if not isinstance(routes, list):
            raise BadRequest(
                422, _detail(["body", "routes"], "Input should be a valid list", "list_type")
            )
        return self._answer(self._full_run(request.query.get("suite", [None])[0]))

    def _full_run(self, suite: str | None) -> list[tuple[str, str | None]]:
        chosen = [test for test in TESTS if suite in (None, test.suite)]
        if not chosen:
            raise BadRequest(422, {"detail": f"unknown suite {suite!r}"})
        return [(test.id, test.message) for test in chosen]

    def _rerun(self, test_ids: Any) -> list[tuple[str, str | None]]:
        if not isinstance(test_ids, list) or not all(isinstance(t, str) for t in test_ids):
            raise BadRequest(
                422, _detail(["body", "tests"], "Input should be a list of test ids", "list_type")
            )
        known = {test.id: test for test in TESTS}
        outcomes: list[tuple[str, str | None]] = []
        for test_id in test_ids:
            test = known.get(test_id)
            if test is None:
                outcomes.append((test_id, "no such test"))
            else:
                outcomes.append((test_id, None if test.flaky else test.message))
        return outcomes

    def _answer(self, outcomes: list[tuple[str, str | None]]) -> Response:
        with self._lock:
            self._runs += 1
            run_id = f"run-{self._runs}"
        failures = [{"test": t, "message": m} for t, m in outcomes if m is not None]
        return Response(
            200,
            {
                "run_id": run_id,
                "total": len(outcomes),
                "passed": len(outcomes) - len(failures),
                "failed": len(failures),
                "failures": failures,
            },
        )


# --------------------------------------------------------------------------- bugalizer


class Bugalizer(DemoService):
    """The demo bug tracker: ``POST /api/v1/reports`` validated as the real one does it,
    and ``GET /api/v1/reports`` listing what was filed."""

    name = "bugalizer"

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        api_key: str | None = None,
        projects: Sequence[str] = DEFAULT_PROJECTS,
    ) -> None:
        super().__init__(host, port, api_key=api_key)
        self.projects = frozenset(projects)
        self._reports: list[dict[str, Any]] = []

    @property
    def reports(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(report) for report in self._reports]

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {"/api/v1/reports": {"GET": self._list, "POST": self._file}}

    def _list(self, request: Request) -> Response:
        reports = self.reports
        return Response(200, {"reports": reports, "total": len(reports)})

    def _file(self, request: Request) -> Response:
        body = request.json()
        problems = validate_report(body)
        if problems:
            return Response(422, {"detail": problems})
        if body["project_id"] not in self.projects:
            return _error(404, f"Project {body['project_id']!r} not found")
        with self._lock:
            report = {
                "id": f"BUG-{len(self._reports) + 1:04d}",
                "status": "new",
                "created_at": datetime.now(timezone.utc).isoformat(),
                **{key: body.get(key, _DEFAULTS.get(key)) for key in _REPORT_FIELDS},
            }
            self._reports.append(report)
        return Response(201, report)


_REPORT_FIELDS = (
    "project_id",
    "title",
    "description",
    "reporter",
    "severity",
    "steps_to_reproduce",
    "expected_behavior",
    "actual_behavior",
    "labels",
)
_DEFAULTS: dict[str, Any] = {"severity": "medium", "steps_to_reproduce": [], "labels": []}
_REQUIRED = ("project_id", "title", "description")
_OPTIONAL_STRINGS = ("reporter", "expected_behavior", "actual_behavior")
_STRING_LISTS = ("steps_to_reproduce", "labels")


def validate_report(body: Any) -> list[dict[str, Any]]:
    """Every problem with a report body, as FastAPI's ``detail`` items (empty when fine)."""
    if not isinstance(body, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        return [{"loc": ["body"], "msg": msg, "type": "model_attributes_type"}]
    problems: list[dict[str, Any]] = []
    for key in _REQUIRED:
        if key not in body:
            problems.append({"loc": ["body", key], "msg": "Field required", "type": "missing"})
    for key in (*_REQUIRED, *_OPTIONAL_STRINGS):
        if key in body and not isinstance(body[key], str):
            problems.append(_problem(key, "Input should be a valid string", "string_type"))
    for key in _STRING_LISTS:
        problems.extend(_string_list_problems(body, key))
    title = body.get("title")
    if isinstance(title, str) and not 1 <= len(title) <= MAX_TITLE:
        problems.append(_title_length_problem(title))
    if "severity" in body and body["severity"] not in SEVERITIES:
        msg = "Input should be " + ", ".join(f"'{s}'" for s in SEVERITIES[:-1])
        problems.append(_problem("severity", f"{msg} or '{SEVERITIES[-1]}'", "enum"))
    return problems


def _problem(key: str | list[Any], msg: str, kind: str) -> dict[str, Any]:
    loc = ["body", *key] if isinstance(key, list) else ["body", key]
    return {"loc": loc, "msg": msg, "type": kind}


def _string_list_problems(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    if key not in body:
        return []
    value = body[key]
    if not isinstance(value, list):
        return [_problem(key, "Input should be a valid list", "list_type")]
    return [
        _problem([key, index], "Input should be a valid string", "string_type")
        for index, item in enumerate(value)
        if not isinstance(item, str)
    ]


def _title_length_problem(title: str) -> dict[str, Any]:
    if not title:
        return _problem("title", "String should have at least 1 character", "string_too_short")
    return _problem(
        "title", f"String should have at most {MAX_TITLE} characters", "string_too_long"
    )


# --------------------------------------------------------------------------- both


class DemoServices:
    """A qaagent and a bugalizer, started and stopped together; a context manager."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        qaagent_port: int = 0,
        bugalizer_port: int = 0,
        *,
        api_key: str | None = None,
        projects: Sequence[str] = DEFAULT_PROJECTS,
    ) -> None:
        self.qaagent = QaAgent(host, qaagent_port, api_key=api_key)
        self.bugalizer = Bugalizer(host, bugalizer_port, api_key=api_key, projects=projects)

    @property
    def qaagent_url(self) -> str:
        return self.qaagent.url

    @property
    def bugalizer_url(self) -> str:
        return self.bugalizer.url

    def start(self) -> DemoServices:
        """Start both; raises ``OSError`` (with neither left running) if one cannot listen."""
        self.qaagent.start()
        try:
            self.bugalizer.start()
        except BaseException:
            self.qaagent.stop()
            raise
        return self

    def stop(self) -> None:
        self.qaagent.stop()
        self.bugalizer.stop()

    def __enter__(self) -> DemoServices:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- foreground


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m aegis.demo",
        description="Run the reference qaagent and bugalizer services until Ctrl-C.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument("--qaagent-port", type=int, default=DEFAULT_QAAGENT_PORT, metavar="PORT")
    parser.add_argument(
        "--bugalizer-port", type=int, default=DEFAULT_BUGALIZER_PORT, metavar="PORT"
    )
    parser.add_argument("--api-key", help="require this X-API-Key on both services")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        type=_fault_argument,
        metavar="SERVICE:PATH=SPEC",
        help="inject a fault (repeatable): SPEC is KEY=VALUE,... of Fault's fields or a JSON "
        "object, e.g. qaagent:/api/runs=status=503,times=2,retry_after=5 or "
        "qaagent:/api/routes=mode=stall,times=none",
    )
    return parser.parse_args(argv)


SERVICE_NAMES = ("qaagent", "bugalizer")


def parse_fault(text: str) -> tuple[str, str, Fault]:
    """``SERVICE:PATH=SPEC`` as (service, path, fault); raises ``ValueError`` if unusable.

    SPEC is ``KEY=VALUE`` pairs joined by commas, or a JSON object, naming ``Fault``'s
    fields. Values read as ``none``, ``true``/``false``, a number, or else as text.
    """
    target, equals, spec = text.partition("=")
    service, colon, path = target.partition(":")
    if not equals or not colon or not path:
        raise ValueError(f"expected SERVICE:PATH=SPEC, got {text!r}")
    if service not in SERVICE_NAMES:
        raise ValueError(f"unknown service {service!r} (known: {', '.join(SERVICE_NAMES)})")
    fields = _spec_fields(spec)
    known = set(Fault.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown fault field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    try:
        return service, path, Fault(**fields)
    except TypeError as exc:  # a value of the wrong type, say delay=soon
        raise ValueError(f"bad fault {spec!r}: {exc}") from exc


def _spec_fields(spec: str) -> dict[str, Any]:
    if spec.lstrip().startswith("{"):
        fields = json.loads(spec)  # JSONDecodeError is a ValueError
        if not isinstance(fields, dict):
            raise ValueError("a JSON fault spec must be an object")
        return fields
    parsed: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"expected KEY=VALUE in the fault spec, got {item!r}")
        parsed[key.strip()] = _spec_value(value.strip())
    return parsed


def _spec_value(text: str) -> Any:
    words: dict[str, Any] = {"none": None, "null": None, "true": True, "false": False}
    if text.lower() in words:
        return words[text.lower()]
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


def _fault_argument(text: str) -> tuple[str, str, Fault]:
    try:
        return parse_fault(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None, *, stop: threading.Event | None = None) -> int:
    """Serve both demo services in the foreground until Ctrl-C, SIGTERM or ``stop``."""
    args = _parse_args(argv)
    demo = DemoServices(args.host, args.qaagent_port, args.bugalizer_port, api_key=args.api_key)
    try:
        demo.start()
    except OSError as exc:
        print(f"cannot start the demo services on {args.host}: {exc}", file=sys.stderr)
        return 1
    try:
        with demo:
            print(f"qaagent    {demo.qaagent_url}", flush=True)
            print(f"bugalizer  {demo.bugalizer_url}", flush=True)
            for service, path, fault in args.fault:
                getattr(demo, service).inject(path, fault)
                print(f"fault      {service} {path}: {_describe(fault)}", flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            _wait(stop or threading.Event())
    except KeyboardInterrupt:
        pass  # Ctrl-C is how this is meant to end
    return 0


def _describe(fault: Fault) -> str:
    """Its status and the fields that differ from a plain ``Fault()``, as ``key=value``."""
    plain = Fault()
    changed = [
        f"{name}={getattr(fault, name)!r}"
        for name in Fault.__dataclass_fields__
        if name != "status" and getattr(fault, name) != getattr(plain, name)
    ]
    return ", ".join([f"status={fault.status}", *changed])


def _wait(stop: threading.Event) -> None:
    """Block until ``stop`` is set; SIGTERM ends the wait like Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        stop.wait()
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        stop.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
