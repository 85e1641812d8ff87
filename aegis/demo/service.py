"""The HTTP side of a reference service: a threaded server, fault injection, a call log.

``DemoService`` is one service on its own ``ThreadingHTTPServer`` in a background thread;
subclasses (``QaAgent``, ``Bugalizer``) name their routes.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import io
import json
import logging
import queue
import select
import socket
import struct
import sys
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aegis import __version__
from aegis.demo.faults import STREAM_BYTES, TRICKLE_BYTES, Fault, padded_json

__all__ = [
    "DEFAULT_HOST",
    "BadRequest",
    "Call",
    "DemoService",
    "Handler",
    "Request",
    "Response",
    "error_response",
    "invalid",
]

log = logging.getLogger("aegis.demo")

DEFAULT_HOST = "127.0.0.1"
MAX_BODY_BYTES = 1024 * 1024
MAX_CALLS = 10_000  # the call log is a ring, so a long benchmark cannot exhaust memory
IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may sit idle
WORKER_IDLE = 30.0  # seconds a connection thread waits for the next connection
# How often serve_forever looks for a stop request; it bounds how long stop() takes.
POLL_INTERVAL = 0.02
# How often a stalled answer looks whether its client hung up.
STALL_POLL = 0.05


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
    params: dict[str, str] = field(default_factory=dict)  # from a path template

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.query_string)

    def json(self) -> Any:
        """The body as JSON; raises ``BadRequest`` 422 in FastAPI's style when it is not."""
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise BadRequest(
                422, invalid(["body", 0], "JSON decode error", "json_invalid")
            ) from exc


@dataclass
class Response:
    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # sent as is instead of the payload as JSON


Handler = Callable[[Request], Response]


def invalid(loc: list[Any], msg: str, kind: str) -> dict[str, Any]:
    return {"detail": [{"loc": loc, "msg": msg, "type": kind}]}


def error_response(status: int, detail: str | None = None) -> Response:
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
        response = error_response(status, f"injected fault: HTTP {status}")
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
        fault = service.take_fault(request.path, request.method)
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

    def take_fault(self, path: str, method: str = "GET") -> Fault | None:
        """The fault for a ``method`` call to ``path`` now, counting the call against it."""
        with self._lock:
            key = path if path in self._faults else "*"
            entry = self._faults.get(key)
            if entry is None:
                return None
            fault, spared, left = entry
            if fault.method is not None and fault.method != method:
                return None
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
        """The answer to ``request`` as ``fault`` bends it; ``None`` means drop the line.

        A ``processed`` fault lets the service do what the call asks (store a report)
        before it spoils the answer."""
        if fault is None:
            return self._handled(request)
        drops = fault.effective_mode in ("drop", "reset", "stall", "raw")
        if not drops and fault.status is None and not fault.replaces_body:
            return self._handled(request)  # merely slow, or shaped
        if fault.processed:
            self._handled(request)
        return None if drops else _fault_response(fault)

    def _handled(self, request: Request) -> Response:
        try:
            return self._dispatch(request)
        except BadRequest as exc:
            return Response(exc.status, exc.payload)
        except Exception:  # a bug in the demo must not look like a dead service
            log.exception("demo %s: error answering %s %s", self.name, request.method, request.path)
            return error_response(500)

    def _dispatch(self, request: Request) -> Response:
        methods = self._route(request)
        if methods is None:
            return error_response(404)
        handler = methods.get(request.method)
        if handler is None:
            response = error_response(405)
            response.headers["Allow"] = ", ".join(sorted(methods))
            return response
        if not request.path.startswith("/health") and not self._authorized(request):
            return error_response(401, "Invalid or missing API key")
        return handler(request)

    def _route(self, request: Request) -> dict[str, Handler] | None:
        """The handlers for the request's path: an exact entry of the table, else a
        template like ``/items/{id}`` whose ``{name}`` parts go to ``request.params``."""
        methods = self._table.get(request.path)
        if methods is not None:
            return methods
        parts = request.path.split("/")
        for template, handlers in self._table.items():
            pattern = template.split("/")
            if "{" not in template or len(pattern) != len(parts):
                continue
            params = {}
            for want, got in zip(pattern, parts, strict=True):
                if want.startswith("{") and want.endswith("}") and got:
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                request.params = params
                return handlers
        return None

    def _authorized(self, request: Request) -> bool:
        if not self.api_key:
            return True
        sent = request.headers.get("x-api-key", "")
        return hmac.compare_digest(sent.encode(), self.api_key.encode())

    def _health(self, request: Request) -> Response:
        return Response(200, {"status": "ok", "service": self.name, "version": __version__})
