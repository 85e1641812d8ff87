"""The HTTP layer: a ``ThreadingHTTPServer`` that routes requests through the route table.

One thread per connection (daemon threads, so a stuck client never holds the process),
HTTP/1.1 keep-alive with an idle timeout, a backlog far above ``http.server``'s 5. A
request must arrive whole within ``request_timeout`` of its first byte (default: the
idle timeout), so a client trickling bytes (slow-loris) holds a thread no longer than
that. What the server checks before a handler runs, in order::

    room for the connection          503 and close, before anything is read, when
                                     ``max_connections`` are all answering a request
                                     (else the longest idle connection is closed)
    the request line                 400, 414, 501 (unknown method), 505 (HTTP/0.9, 2.0)
    the headers                      408 (too slow), 431 (all lines together over 64 KiB),
                                     400: a malformed or folded line, no Host (HTTP/1.1),
                                     a bad Host, Host or a credential header twice
    shutting down?                   503
    Content-Length                   400, 411 (chunked), 413 (over 1 MiB, nothing read),
                                     408 or 400 for a body that comes too slowly or short
    the route table                  404, 405 with Allow
    the API key, for POST (every route but the page and /health with auth.protect: all)
                                     401 with WWW-Authenticate
    the route's parameters           400

Every answer is JSON (the error body for errors) with a ``Content-Length``, except the
landing files and the event stream (``stream.py``), which ends when its client closes or
leaves what was sent unread for ``stall_timeout`` seconds. An exception in a handler
answers 500 with an error id; the traceback goes to the log under that id, never to the
client.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import logging
import math
import os
import re
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO
from urllib.parse import parse_qs, unquote

from aegis import __version__
from aegis.config.model import ServerSpec
from aegis.errors import Conflict, NotFound, QueueFull

from .connections import Connections
from .handlers import ApiContext
from .routes import HttpError, Request, Response, Router
from .stream import STALL_TIMEOUT, StreamOut

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "AccessLog",
    "ApiRequestHandler",
    "ApiServer",
    "loggable_target",
]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_QUERY_FIELDS = 50
IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may sit without a request
REQUEST_QUEUE_SIZE = 1024
# How often serve_forever looks for a stop request; it bounds how long stopping takes.
POLL_INTERVAL = 0.1
# accept() failing for want of descriptors or memory: the connection stays queued and the
# listening socket readable, so serve_forever would spin on it at full CPU.
_OUT_OF_RESOURCES = frozenset(
    getattr(errno, name)
    for name in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")
    if hasattr(errno, name)
)
# How long accepting pauses after such a failure, unless a connection closes sooner.
ACCEPT_PAUSE = 0.5
CORS_ALLOW_HEADERS = "Content-Type, X-API-Key, Authorization, Idempotency-Key, Last-Event-ID"
CORS_EXPOSE_HEADERS = "Location, Idempotent-Replayed"
AUTH_CHALLENGE = 'Bearer realm="aegis"'
# Headers that mean one thing once and something ambiguous twice (which key counts?).
_SINGLE_HEADERS = frozenset(
    ("host", "authorization", "x-api-key", "idempotency-key", "last-event-id")
)
# A Host value: a name or an IPv4 or bracketed IPv6 address, an optional port.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9._~%!$&'()*+,;=-]{1,253})(:[0-9]{0,5})?")
# Query parameters whose values stay out of the access log.
_SECRET_NAME = re.compile(r"key|token|secret|pass|auth|sig", re.IGNORECASE)


class AccessLog:
    """Writes one line per answered request to ``stream``, whole lines from any thread."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: serving matters more
                pass


def loggable_target(target: str) -> str:
    """The request target for the log: secret-looking query values hidden, control
    characters escaped (so a request cannot forge log lines)."""
    path, sep, query = target.partition("?")
    if sep:
        pairs = []
        for pair in query.split("&"):
            name, eq, _ = pair.partition("=")
            pairs.append(f"{name}=***" if eq and _SECRET_NAME.search(unquote(name)) else pair)
        path = f"{path}?{'&'.join(pairs)}"
    if path.isascii() and path.isprintable():
        return path
    return "".join(c if " " <= c < "\x7f" else f"\\x{ord(c):02x}" for c in path)


class _RequestReader:
    """The connection's reader while a request head arrives.

    The socket's timeout bounds each wait for more bytes; this bounds the whole request:
    once its first byte is in, past ``deadline`` (``timeout`` seconds later) the next
    read raises ``TimeoutError``, so a client trickling bytes just faster than the idle
    timeout (slow-loris) is cut off too. Header lines (after ``start_headers``) share a
    budget of ``budget`` bytes; past that, ``LineTooLong``, which http.server answers
    with 431.
    """

    def __init__(self, rfile: Any, timeout: float) -> None:
        self.rfile = rfile
        self.timeout = timeout
        self.deadline: float | None = None
        self._left: int | None = None

    def start_headers(self, budget: int) -> None:
        self._left = budget

    def check(self) -> None:
        """Raise ``TimeoutError`` once the request is late (starting the clock if need be)."""
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.timeout
        elif now > self.deadline:
            raise TimeoutError("the request did not arrive in time")

    def readline(self, limit: int = -1) -> bytes:
        left = self._left
        cap = limit if limit >= 0 else MAX_HEADER_BYTES + 1
        if left is not None:
            cap = min(cap, left + 1)
        buffered: bytes = self.rfile.peek(1)  # at most one recv, bounded by the idle timeout
        if buffered and buffered.find(b"\n", 0, cap) >= 0:  # the usual case: a whole line
            self.check()
            line: bytes = self.rfile.readline(cap)
        else:
            line = self._gather(cap)
        if left is not None:
            self._left = left - len(line)
            if self._left < 0:
                raise http.client.LineTooLong(f"header lines over {MAX_HEADER_BYTES} bytes")
        return line

    def _gather(self, cap: int) -> bytes:
        """A line that arrives in pieces, up to ``cap`` bytes, the deadline checked per piece."""
        parts: list[bytes] = []
        got = 0
        while got < cap:
            buffered: bytes = self.rfile.peek(1)
            if not buffered:
                break  # the client closed
            self.check()
            end = buffered.find(b"\n", 0, cap - got)
            take = end + 1 if end >= 0 else min(len(buffered), cap - got)
            parts.append(self.rfile.read(take))
            got += take
            if end >= 0:
                break
        return b"".join(parts)


class ApiServer(ThreadingHTTPServer):
    """The API on ``address``; ``start()`` serves in a background thread.

    ``stop_accepting()`` then ``close_connections()`` end it in two steps, so requests
    already inside (a ``?wait=`` for a run being cancelled) can still be answered between.
    """

    daemon_threads = True
    # Idle keep-alive threads must not hold up server_close(); close_connections() ends them.
    block_on_close = False
    request_queue_size = REQUEST_QUEUE_SIZE
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        ctx: ApiContext,
        router: Router,
        *,
        api_key: str = "",
        protect_all: bool = False,
        cors_origins: Iterable[str] = (),
        idle_timeout: float = IDLE_TIMEOUT,
        request_timeout: float | None = None,
        access_log: Callable[[str], None] | None = None,
        max_connections: int = ServerSpec.max_connections,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        self.ctx = ctx
        self.router = router
        self.api_key = api_key.encode()
        self.protect_all = protect_all  # auth.protect: all (reads need the key too)
        self.cors_origins = frozenset(cors_origins)
        self.idle_timeout = idle_timeout
        # A request must arrive in full (head and body) this long after its first byte.
        self.request_timeout = idle_timeout if request_timeout is None else request_timeout
        self.access_log = access_log
        self.stopping = ctx.stopping
        self.connections = Connections(max_connections)
        self.stall_timeout = stall_timeout
        self._thread: threading.Thread | None = None
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, ApiRequestHandler)

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s ``socket.getfqdn``: a reverse DNS lookup that can
        stall start-up on a host with broken DNS, and whose IDNA codec (with unicodedata)
        cost an idle server 0.7 MB. The name is only used for CGI variables we never set."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host.decode() if isinstance(host, bytes) else str(host)
        self.server_port = port

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host
        shown = f"[{name}]" if ":" in name else name
        return f"http://{shown}:{port}"

    def start(self) -> ApiServer:
        thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL},
            name="aegis-http",
            daemon=True,
        )
        thread.start()
        self._thread = thread
        return self

    def stop_accepting(self) -> None:
        """Refuse new connections; requests on open ones get 503 from now on."""
        self.stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            self.shutdown()
            thread.join()
        self.server_close()

    def close_connections(self, grace: float = 0.0) -> None:
        """Close every open connection, so idle keep-alive threads end now; connections
        answering a request get up to ``grace`` seconds to finish first."""
        self.connections.close_all(grace)

    @property
    def connection_count(self) -> int:
        """How many connections are open now (idle keep-alive ones included)."""
        return len(self.connections)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in _OUT_OF_RESOURCES:
                self._out_of_resources(exc)
            raise  # serve_forever skips this round

    def _out_of_resources(self, exc: OSError) -> None:
        """No descriptor (or memory) for a new connection: free one by closing the
        longest idle connection, then wait for a close (at most ``ACCEPT_PAUSE``) rather
        than retrying at once, for ever, at full CPU."""
        log.warning("cannot accept connections: %s; closing idle ones", exc.strerror or exc)
        self.connections.make_room()
        self.connections.wait_for_a_close(ACCEPT_PAUSE)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.admit(request):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)  # its own thread
        except BaseException:
            self.connections.closed(request)
            raise

    def _refuse(self, connection: socket.socket) -> None:
        """A short 503 and close, from the accept thread, which must never wait on it."""
        log.warning(
            "%d connections, each answering a request: refusing more", self.connections.limit
        )
        with contextlib.suppress(OSError):
            connection.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                connection.recv(MAX_HEADER_BYTES)  # unread bytes would turn close into a reset
            connection.send(_TOO_MANY)
        self.shutdown_request(connection)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        self.connections.closed(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanished mid-answer is routine; anything else is a bug worth a trace.
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("connection from %s ended early", client_address, exc_info=True)
        else:
            log.exception("error on the connection from %s", client_address)


class ApiRequestHandler(BaseHTTPRequestHandler):
    """One connection: requests in turn until it closes, idles out or the server stops."""

    protocol_version = "HTTP/1.1"
    # No HTTP/0.9: an answer to a request line without a version still gets a status line.
    default_request_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = f"aegis/{__version__}"
    # Buffered, so a response's head and body leave in one send (handle_one_request flushes).
    wbufsize = 64 * 1024
    server: ApiServer
    _reader: _RequestReader  # the current request's, made by handle_one_request

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_timeout)
        self._unread = 0
        self._began = time.perf_counter()

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the client closed first: nothing to flush to
            super().finish()

    def handle_one_request(self) -> None:
        raw = self.rfile
        self._reader = _RequestReader(raw, self.server.request_timeout)
        self.rfile = self._reader  # type: ignore[assignment]
        try:
            super().handle_one_request()  # a late request line: closed without an answer
        finally:
            self.rfile = raw

    def parse_request(self) -> bool:
        self._began = time.perf_counter()
        self._unread = 0
        reader = self._reader
        reader.start_headers(MAX_HEADER_BYTES)
        line: bytes = getattr(self, "raw_requestline", b"")
        words = line.split()
        if len(words) == 2:  # HTTP/0.9 sends no headers: do not wait for them
            self.command, self.path = (str(word, "iso-8859-1") for word in words)
            self.request_version = self.default_request_version
            self.send_error(505, "HTTP/0.9 is not supported; send HTTP/1.1")
            return False
        try:
            parsed = super().parse_request()
        except TimeoutError:  # the headers came too slowly, or stopped coming
            self.send_error(408, "the request headers did not arrive in time")
            return False
        finally:
            self.rfile = reader.rfile  # the body is read as it is
        if parsed:
            problem = _head_problem(self.headers, self.request_version)
            if problem:
                self.send_error(400, problem)
                return False
        return parsed

    def handle_expect_100(self) -> bool:
        # Refuse a bad head or an oversized body before the client sends it, not after.
        problem = _head_problem(self.headers, self.request_version)
        if problem:
            self.send_error(400, problem)
            return False
        try:
            self._content_length()
        except HttpError as exc:
            self._answer(exc.response())
            return False
        super().handle_expect_100()
        self.wfile.flush()  # buffered: the client waits for this line before sending
        return True

    def do_GET(self) -> None:
        connections = self.server.connections
        connections.busy(self.connection, True)
        try:
            self._answer(self._respond())
        finally:
            connections.busy(self.connection, False)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, headers too large) as JSON."""
        self.close_connection = True
        self._answer(HttpError(code, message).response())

    def version_string(self) -> str:
        return self.server_version  # without the Python version http.server would add

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _answer writes the access log, with the duration

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.address_string(), *args)

    # ------------------------------------------------------------------- answering

    def _respond(self) -> Response:
        try:
            return self._route()
        except HttpError as exc:
            return exc.response()
        except NotFound as exc:
            return HttpError(404, str(exc)).response()
        except Conflict as exc:
            blocking = {} if exc.run_id is None else {"run_id": exc.run_id}
            return HttpError(409, str(exc), extra=blocking).response()
        except QueueFull as exc:
            wait = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
            return HttpError(429, str(exc), headers=wait).response()
        except TimeoutError:
            return _unavailable("the engine did not answer in time; try again")
        except Exception:
            if self.server.stopping.is_set():
                return _unavailable("the server is shutting down")
            return self._internal_error()

    def _route(self) -> Response:
        server = self.server
        if server.stopping.is_set():
            self.close_connection = True
            return _unavailable("the server is shutting down")
        length = self._content_length()
        path, _, query = _origin_form(self.path).partition("?")
        if self.command == "OPTIONS" and self._cors_origin():
            return self._preflight(path)
        match = server.router.match(self.command, path)
        route = match.route
        if route.auth or (server.protect_all and not route.public):
            self._authorize()
        request = Request(
            self.command, path, _query(query), self.headers, self._body(length), match.path_params
        )
        request.params = {**match.path_params, **route.parse(request)}
        return route.handler(server.ctx, request)

    def _content_length(self) -> int:
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise HttpError(411, "send the request body with a Content-Length, not chunked")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            return 0
        raw = values[0].strip()
        if len(set(values)) > 1 or not (raw.isascii() and raw.isdigit()):
            self.close_connection = True
            raise HttpError(400, "the Content-Length header is not a single number")
        length = int(raw)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise HttpError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
        self._unread = length
        return length

    def _body(self, length: int) -> bytes:
        if not length:
            return b""
        parts: list[bytes] = []
        left = length
        try:
            while left:
                chunk = self.rfile.read1(left)  # at most one recv, bounded by the idle timeout
                if not chunk:
                    break  # the client closed early
                parts.append(chunk)
                left -= len(chunk)
                if left:
                    self._reader.check()  # a trickled body is cut off like a trickled head
        except OSError:  # TimeoutError is one
            self.close_connection = True
            raise HttpError(408, "the request body did not arrive in time") from None
        body = b"".join(parts)
        self._unread = 0
        if len(body) < length:
            self.close_connection = True
            raise HttpError(400, "the request body is shorter than its Content-Length")
        return body

    def _authorize(self) -> None:
        key = self.server.api_key
        if not key:
            return
        sent = self.headers.get("X-API-Key")
        if sent is None:
            scheme, _, token = self.headers.get("Authorization", "").strip().partition(" ")
            sent = token.strip() if scheme.lower() == "bearer" else None
        # Imported here: it loads OpenSSL's hash library, 0.7 MB that a server without
        # auth never needs. Header values arrive decoded as Latin-1: encoding them back
        # gives the bytes sent.
        import hmac

        if sent is None or not hmac.compare_digest(sent.encode("latin-1", "replace"), key):
            raise HttpError(
                401,
                "this needs the API key: send X-API-Key: KEY or Authorization: Bearer KEY",
                headers={"WWW-Authenticate": AUTH_CHALLENGE},
            )

    def _cors_origin(self) -> str | None:
        headers = getattr(self, "headers", None)  # unset when the request line was bad
        origin = headers.get("Origin") if headers is not None else None
        allowed = self.server.cors_origins
        if origin and (origin in allowed or "*" in allowed):
            return str(origin)
        return None

    def _preflight(self, path: str) -> Response:
        allowed = self.server.router.allowed(path)
        if not allowed:
            raise HttpError(404, f"no route for {path}")
        headers = {
            "Access-Control-Allow-Methods": ", ".join(allowed),
            "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
            "Access-Control-Max-Age": "600",
        }
        return Response(204, headers=headers)

    def _internal_error(self) -> Response:
        error_id = os.urandom(6).hex()
        log.exception(
            "error %s answering %s %s", error_id, self.command, loggable_target(self.path)
        )
        return HttpError(
            500, "internal server error; the log has the details", extra={"error_id": error_id}
        ).response()

    # --------------------------------------------------------------------- sending

    def _answer(self, response: Response) -> None:
        """Send ``response`` and log it; a client gone meanwhile just ends the connection."""
        if self._unread:
            self.close_connection = True  # the body was never read: the stream is out of step
        try:
            self._send(response)
        except OSError:
            self.close_connection = True
        finally:
            self._log(response.status)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        if response.stream is not None:
            self.close_connection = True  # an event stream ends when the connection does
        elif response.status != 204:
            self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self._send_cors()
        if self.close_connection:
            self.send_header("Connection", "close")
        elif self.request_version == "HTTP/1.0":
            self.send_header("Connection", "keep-alive")
        self.end_headers()
        if self.command == "HEAD":
            self.wfile.flush()
            return
        self.wfile.write(response.body)
        self.wfile.flush()
        if response.stream is not None:
            response.stream(StreamOut(self.connection, self.wfile, self.server.stall_timeout))

    def _send_cors(self) -> None:
        origin = self._cors_origin()
        if origin:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS)
            self.send_header("Vary", "Origin")

    def _log(self, status: int) -> None:
        access_log = self.server.access_log
        if access_log is None:
            return
        took = (time.perf_counter() - self._began) * 1000
        method = getattr(self, "command", None) or "-"
        target = loggable_target(getattr(self, "path", "") or "-")
        access_log(f'{self.client_address[0]} "{method} {target}" {status} {took:.1f}ms')


def _head_problem(headers: Any, version: str) -> str | None:
    """Why a parsed head is malformed, or ``None``. The header parser stops at a line it
    cannot read and takes the rest as body, so later headers (a Content-Length, the API
    key) would silently vanish: such a head is refused instead."""
    if headers.defects:
        return "a header line is malformed"
    host = None
    seen: set[str] = set()
    for name, value in headers.raw_items():  # one pass, values as they came
        if "\r" in value or "\n" in value:
            return f"the header {name} is folded over several lines"
        key = name.lower()
        if key in _SINGLE_HEADERS:
            if key in seen:
                return f"the {name} header is given more than once"
            seen.add(key)
            if key == "host":
                host = value
    if host is None:
        return "an HTTP/1.1 request needs a Host header" if version >= "HTTP/1.1" else None
    if not _HOST.fullmatch(host):
        return "the Host header is not a host name with an optional port"
    return None


def _origin_form(target: str) -> str:
    """The request target as a path and query: an absolute-form target (what a client
    talking to a proxy sends, which a server must accept) loses its scheme and host."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return target
    _, slash, path = rest.partition("/")
    return slash + path if slash else "/"


def _query(query: str) -> dict[str, list[str]]:
    if not query:
        return {}
    try:
        return parse_qs(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        raise HttpError(400, f"more than {MAX_QUERY_FIELDS} query parameters") from None


def _unavailable(message: str) -> Response:
    return HttpError(503, message, headers={"Retry-After": "1"}).response()


def _refusal() -> bytes:
    """The whole answer to a connection past the limit, written before its request is read."""
    response = _unavailable("too many connections; try again")
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + response.body


_TOO_MANY = _refusal()
