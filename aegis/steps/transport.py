"""The HTTP/1.1 connection pool under a run's client, on plain asyncio.

With 100 requests in flight on loopback, httpx's default transport (httpcore over anyio)
spent ~0.8 ms of CPU per request on locks that yield, cancel scopes and a scan of every
connection per request; this pool spends ~0.2 ms, kernel time included. On one event loop
that decides when the last of 100 parallel requests reaches the wire, so a run's client
sends through this pool. It does what Aegis needs of HTTP and nothing more:

- HTTP/1.1 over TCP or TLS; bodies framed by Content-Length, chunked, or the connection
  closing; interim 1xx answers skipped; no body for HEAD, 204 and 304;
- keep-alive: a connection goes back to its origin's idle list only after its answer was
  read to the end; at most ``max_keepalive`` idle connections, each for
  ``keepalive_expiry`` seconds; an idle connection that the server closed, or that holds
  bytes nobody asked for, is never reused;
- at most ``max_connections`` open at once; a request past that waits for one to close;
- a name's addresses raced as RFC 8305 says (``STAGGER`` apart, the first to connect wins);
- the ``connect``, ``read``, ``write`` and ``pool`` timeouts httpx passes on;
- failures raised as the httpx exceptions ``aegis.steps.http`` maps to step errors.

An idempotent request that finds its reused connection already closed by the server is
sent once more on a new connection (RFC 9112, 9.3.1): a server dropping idle connections
is not a failure of the service. Proxies are not handled here: ``httpx.AsyncClient``
mounts its own transports for the proxies the environment names.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import re
import select
import socket
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple, TypeVar

import httpx

__all__ = ["Transport"]

_T = TypeVar("_T")

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_HEAD_BYTES = 64 * 1024  # status line and headers together
MAX_HEADERS = 256
MAX_CHUNK_LINE = 1024
READ_PIECE = 64 * 1024
HIGH_WATER = 256 * 1024  # buffered answer bytes before reading from the socket pauses
STAGGER = 0.25  # seconds before the next address of a name is tried alongside (RFC 8305)
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

# A header name (an RFC 9110 token), and what a header value may hold: no control
# character other than HTAB.
_NAME = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VALUE = rb"[^\x00-\x08\x0a-\x1f\x7f]"
_TOKEN = re.compile(_NAME)
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NAMES = re.compile(_NAME + rb"(?:\n" + _NAME + rb")*")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: (.*))?")


class _Wire(asyncio.Protocol):
    """One connection's bytes: what arrived and is not read yet, and how it ended."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: OSError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._reading_paused = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # nothing more will be sent on a half-closed HTTP/1.1 connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if isinstance(exc, OSError):
            self.error = exc
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- for the pool

    @property
    def reusable(self) -> bool:
        """Open, quiet and with nothing unread: safe to send the next request on."""
        return (
            not self.eof
            and not self.buffer
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def quiet_now(self) -> bool:
        """Whether the socket has nothing to read at this instant: a server's close (or
        stray bytes) may be there before the loop has read it."""
        sock = self.transport.get_extra_info("socket") if self.transport else None
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- for the exchange

    async def write(self, data: bytes, timeout: float | None) -> None:
        if self.error is not None:
            raise self.error
        if self.transport is None or self.transport.is_closing():
            raise BrokenPipeError("the connection is closed")
        self.transport.write(data)
        if self._drained is not None:
            await _wait(self._drained, timeout)
            if self.error is not None:
                raise self.error

    async def _more(self, timeout: float | None) -> None:
        """Wait until bytes arrive or the connection ends (callers check ``eof`` first);
        raises the error it ended with."""
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        self._waiter = self._loop.create_future()
        try:
            await _wait(self._waiter, timeout)
        finally:
            self._waiter = None
        if self.error is not None and not self.buffer:
            raise self.error

    def _take(self, size: int) -> bytes:
        """The first ``size`` buffered bytes, removed; reading resumes once the buffer
        is down to a quarter of its limit."""
        taken = bytes(self.buffer[:size])
        del self.buffer[:size]
        if self._reading_paused and len(self.buffer) <= HIGH_WATER // 4 and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()
        return taken

    def _rest(self) -> bytes:
        """What is buffered once the connection ended; its error if nothing is."""
        if not self.buffer and self.error is not None:
            raise self.error
        return self._take(len(self.buffer))

    async def read_line(self, limit: int, timeout: float | None) -> bytes:
        """Up to and including the next LF; what is left when the connection ends first.
        Raises ``_TooLong`` past ``limit`` bytes."""
        searched = 0
        while True:
            end = self.buffer.find(b"\n", searched)
            if end >= 0:
                if end >= limit:
                    raise _TooLong
                return self._take(end + 1)
            if len(self.buffer) > limit:
                raise _TooLong
            if self.eof:
                return self._rest()
            searched = len(self.buffer)
            await self._more(timeout)

    async def read_head(self, limit: int, timeout: float | None) -> bytes:
        """Up to and including the empty line that ends a head (CRLF or bare LF lines);
        what is left when the connection ends first. Raises ``_TooLong`` past ``limit``."""
        searched = 0
        while True:
            buffer = self.buffer
            crlf = buffer.find(b"\n\r\n", searched)
            lf = buffer.find(b"\n\n", searched, crlf + 1 if crlf >= 0 else len(buffer))
            end = lf + 2 if lf >= 0 else crlf + 3 if crlf >= 0 else -1
            if 0 <= end <= limit:
                return self._take(end)
            if end > limit or len(buffer) > limit:
                raise _TooLong
            if self.eof:
                return self._rest()
            searched = max(len(buffer) - 2, 0)
            await self._more(timeout)

    async def read_some(self, most: int, timeout: float | None) -> bytes:
        """At least one and at most ``most`` bytes; ``b""`` once the connection ended."""
        while not self.buffer:
            if self.eof:
                return self._rest()
            await self._more(timeout)
        return self._take(most)


def _closed() -> RuntimeError:
    return RuntimeError("the transport is closed")


class _TooLong(Exception):
    """A line of the answer's head or framing went past its limit."""


class _Expired(Exception):
    """A timed wait's time ran out (made into the fitting httpx timeout by the caller)."""


async def _wait(future: asyncio.Future[None], timeout: float | None) -> None:
    """Await ``future``, raising ``asyncio.TimeoutError`` after ``timeout`` seconds.

    A timer sets the future's outcome rather than cancelling anything, so a cancellation
    of the waiting task is never lost (``asyncio.wait_for`` before 3.12 could swallow one
    that came as the future finished). The future is not cancelled on expiry.
    """
    if timeout is None:
        await future
        return
    timer = asyncio.get_running_loop().call_later(timeout, _expire, future)
    try:
        await future
    except _Expired:
        raise asyncio.TimeoutError from None
    finally:
        timer.cancel()


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(_Expired())


async def _within(coroutine: Coroutine[Any, Any, _T], timeout: float | None) -> _T:
    if timeout is None:
        return await coroutine
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout):
            return await coroutine
    return await asyncio.wait_for(coroutine, timeout)  # pragma: no cover - Python 3.10


Origin = tuple[str, str, int]


class Transport(httpx.AsyncBaseTransport):
    """A keep-alive HTTP/1.1 connection pool for one ``httpx.AsyncClient``."""

    def __init__(
        self,
        *,
        ssl_context: Callable[[], ssl.SSLContext],
        max_connections: int = 100,
        max_keepalive: int = 20,
        keepalive_expiry: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ssl_context = ssl_context
        self._max_connections = max_connections
        self._max_keepalive = max_keepalive
        self._keepalive_expiry = keepalive_expiry
        self._clock = clock
        self._idle: dict[Origin, list[tuple[_Wire, float]]] = {}
        self._idle_count = 0
        self._open: set[_Wire] = set()
        self._slots_taken = 0  # connections open or being opened
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{scheme}://'."
            )
        if not url.host:
            raise httpx.UnsupportedProtocol("Request URL is missing a host.")
        if self._closed:
            raise _closed()
        origin = (scheme, url.host, url.port or DEFAULT_PORTS[scheme])
        timeouts = request.extensions.get("timeout", {})
        head = _request_head(request)
        body = _fixed_body(request)
        method = request.method.encode("ascii")
        while True:
            wire, reused = await self._acquire(origin, timeouts)
            try:
                await self._send(wire, request, head, body, timeouts.get("write"))
                answer = await _read_head(wire, method, timeouts.get("read"))
            except _NothingBack as nothing:
                self._discard(wire)
                if reused and method in IDEMPOTENT and body is not None:
                    continue  # the server had closed the idle connection: try a new one
                if nothing.error is not None:
                    raise httpx.ReadError(_words(nothing.error)) from nothing.error
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response."
                ) from None
            except BaseException:
                self._discard(wire)
                raise
            break
        version, status, reason, headers = answer
        close = b"close" in _tokens(request.headers.get_list("connection"))
        try:
            framing = _framing(method, version, status, headers, close)
        except BaseException:
            self._discard(wire)
            raise
        stream = _Body(self, origin, wire, framing, timeouts.get("read"))
        return httpx.Response(
            status,
            headers=headers,
            stream=stream,
            extensions={"http_version": b"HTTP/1." + version, "reason_phrase": reason},
        )

    async def aclose(self) -> None:
        self._closed = True
        waiters, self._slot_waiters = self._slot_waiters, collections.deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(_closed())
        for wire in list(self._open):
            self._discard(wire)
        self._idle.clear()
        self._idle_count = 0

    # -- sending

    async def _send(
        self,
        wire: _Wire,
        request: httpx.Request,
        head: bytes,
        body: bytes | None,
        timeout: float | None,
    ) -> None:
        try:
            if body is not None:
                await wire.write(head + body, timeout)
                return
            await wire.write(head, timeout)
            chunked = b"chunked" in _tokens(request.headers.get_list("transfer-encoding"))
            async for piece in request.stream:  # type: ignore[union-attr]
                if piece:
                    framed = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
                    await wire.write(framed, timeout)
            if chunked:
                await wire.write(b"0\r\n\r\n", timeout)
        except asyncio.TimeoutError as exc:
            raise httpx.WriteTimeout("timed out sending the request") from exc
        except OSError as exc:
            raise httpx.WriteError(_words(exc)) from exc

    # -- the pool

    async def _acquire(self, origin: Origin, timeouts: dict[str, Any]) -> tuple[_Wire, bool]:
        idle = self._idle.get(origin)
        if idle:
            now = self._clock()
            while idle:
                wire, since = idle.pop()
                self._idle_count -= 1
                if wire.reusable and now - since < self._keepalive_expiry and wire.quiet_now():
                    return wire, True
                self._discard(wire)
        await self._take_slot(timeouts.get("pool"))
        try:
            wire = await self._connect(origin, timeouts.get("connect"))
        except BaseException:
            self._give_slot()
            raise
        self._open.add(wire)
        if self._closed:  # closed while connecting
            self._discard(wire)
            raise _closed()
        return wire, False

    async def _take_slot(self, timeout: float | None) -> None:
        if self._slots_taken >= self._max_connections:
            self._close_oldest_idle()
        if self._slots_taken < self._max_connections and not self._slot_waiters:
            self._slots_taken += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await _wait(waiter, timeout)
        except BaseException as exc:
            handed = waiter.done() and not waiter.cancelled() and waiter.exception() is None
            if handed:
                self._give_slot()  # handed a slot just as it gave up: pass it on
            elif waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)
            if isinstance(exc, asyncio.TimeoutError):
                raise httpx.PoolTimeout("timed out waiting for a free connection") from exc
            raise

    def _give_slot(self) -> None:
        """A connection closed (or never opened): its slot goes to the first waiter."""
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._slots_taken -= 1

    def _close_oldest_idle(self) -> None:
        """Frees a slot for a new connection by closing the idle one unused longest."""
        candidates = [(idle[0][1], origin) for origin, idle in self._idle.items() if idle]
        if candidates:
            _, origin = min(candidates)
            wire, _ = self._idle[origin].pop(0)
            self._idle_count -= 1
            self._discard(wire)

    def _release(self, origin: Origin, wire: _Wire) -> None:
        """An answer was read to its end: keep the connection for the next request."""
        if (
            self._closed
            or not wire.reusable
            or self._slot_waiters  # a request is waiting for a slot: free this one
            or self._idle_count >= self._max_keepalive
        ):
            self._discard(wire)
            return
        self._idle.setdefault(origin, []).append((wire, self._clock()))
        self._idle_count += 1

    def _discard(self, wire: _Wire) -> None:
        if wire in self._open:
            self._open.discard(wire)
            wire.abort()
            self._give_slot()

    async def _connect(self, origin: Origin, timeout: float | None) -> _Wire:
        scheme, host, port = origin
        try:
            wire: _Wire = await _within(self._open_wire(scheme, host, port), timeout)
            return wire
        except asyncio.TimeoutError as exc:
            raise httpx.ConnectTimeout("timed out connecting") from exc
        except OSError as exc:  # ssl.SSLError and socket.gaierror included
            raise httpx.ConnectError(_words(exc)) from exc

    async def _open_wire(self, scheme: str, host: str, port: int) -> _Wire:
        loop = asyncio.get_running_loop()
        context = self._ssl_context() if scheme == "https" else None

        async def attempt(address: str) -> _Wire:
            _, wire = await loop.create_connection(
                lambda: _Wire(loop),
                address,
                port,
                ssl=context,
                server_hostname=host if context is not None else None,
            )
            return wire

        addresses = await _addresses(loop, host, port)
        if len(addresses) == 1:
            return await attempt(addresses[0])
        return await _first_connected(attempt, addresses)


async def _first_connected(
    attempt: Callable[[str], Coroutine[Any, Any, _Wire]], addresses: list[str]
) -> _Wire:
    """A connection to the first of ``addresses`` that answers (RFC 8305, "happy
    eyeballs"): they are tried in the resolver's order, the next one as soon as the one
    before failed or ``STAGGER`` seconds after it began, so an address that drops packets
    (IPv6 without a route, say) costs a quarter of a second, not the connect timeout.
    Connections that lose the race are closed."""
    loop = asyncio.get_running_loop()
    waiting = list(addresses)
    tasks: list[asyncio.Task[_Wire]] = []
    failures: list[OSError] = []
    winner: asyncio.Task[_Wire] | None = None
    try:
        running: set[asyncio.Task[_Wire]] = set()
        while waiting or running:
            if waiting:
                tasks.append(loop.create_task(attempt(waiting.pop(0))))
                running.add(tasks[-1])
            done, running = await asyncio.wait(
                running,
                timeout=STAGGER if waiting else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in done:
                error = task.exception()
                if error is None:
                    winner = task
                    return task.result()
                if isinstance(error, ssl.SSLError) or not isinstance(error, OSError):
                    raise error  # the address answered; another would not be more trusted
                failures.append(error)
        # A refusal says more than "cannot assign address" from a missing family.
        refused = [error for error in failures if isinstance(error, ConnectionRefusedError)]
        raise (refused or failures)[0]
    finally:
        for task in tasks:
            if task is not winner:
                task.cancel()
                task.add_done_callback(_close_if_connected)


def _close_if_connected(task: asyncio.Task[_Wire]) -> None:
    """A connection attempt that lost the race: closed if it connected after all."""
    if not task.cancelled() and task.exception() is None:
        task.result().abort()


async def _addresses(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[str]:
    if _is_address(host):
        return [host]  # no resolver round trip
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@functools.lru_cache(maxsize=256)
def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _words(exc: OSError) -> str:
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------- requests


def _request_head(request: httpx.Request) -> bytes:
    raw = request.headers.raw
    # Names joined by LF and values joined by TAB: one pattern each finds a name that is
    # not a token or a value with a control character (CR/LF would inject a header).
    names = b"\n".join(name for name, _ in raw)
    values = b"\t".join(value for _, value in raw)
    if raw and (_NAMES.fullmatch(names) is None or _BAD_VALUE.search(values)):
        bad = next(
            name for name, value in raw if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value)
        )
        raise httpx.LocalProtocolError(f"invalid request header {_shown(bad)}")
    lines = [request.method.encode("ascii") + b" " + request.url.raw_path + b" HTTP/1.1"]
    lines.extend(name + b": " + value for name, value in raw)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _fixed_body(request: httpx.Request) -> bytes | None:
    """The whole body when httpx has it in memory (JSON, bytes, none), else ``None``."""
    try:
        return request.content
    except httpx.RequestNotRead:
        return None


# ----------------------------------------------------------------------------- answers


class _NothingBack(Exception):
    """The connection ended before a single byte of an answer: closed (``error`` None) or
    reset."""

    def __init__(self, error: OSError | None) -> None:
        super().__init__(error)
        self.error = error


Head = tuple[bytes, int, bytes, list[tuple[bytes, bytes]]]


async def _read_head(wire: _Wire, method: bytes, timeout: float | None) -> Head:
    """Version digit, status, reason and headers of the final (non-1xx) answer.

    Raises ``_NothingBack`` when the connection ended before any byte of an answer."""
    received = False
    while True:
        try:
            head = await wire.read_head(MAX_HEAD_BYTES, timeout)
        except _TooLong:
            raise httpx.RemoteProtocolError(
                f"answer head larger than {MAX_HEAD_BYTES // 1024} KiB"
            ) from None
        except asyncio.TimeoutError as exc:
            raise httpx.ReadTimeout("timed out waiting for the answer") from exc
        except OSError as exc:
            if not received:
                raise _NothingBack(exc) from exc
            raise httpx.ReadError(_words(exc)) from exc
        if not head and not received:
            raise _NothingBack(None)
        received = True
        status_end = head.find(b"\n")
        match = _STATUS_LINE.fullmatch(_chomp(head[: status_end + 1]))
        if status_end < 0:
            raise _closed_early("the answer's status line")
        if match is None:
            status_line = _shown(head[: status_end + 1])
            raise httpx.RemoteProtocolError(f"illegal status line: {status_line}")
        fields = _fields(head[status_end + 1 :])
        status = int(match.group(2))
        if status == 101:
            raise httpx.RemoteProtocolError("unexpected 101 Switching Protocols")
        if status >= 200:
            return match.group(1), status, match.group(3) or b"", fields
        # 1xx: an interim answer (100 Continue, 103 Early Hints); the real one follows.


# Header lines, each "name: value" with no control characters, ending with CRLF or LF:
# the usual head is checked and split by two passes of these, with no loop over lines.
_FIELD_ITEMS = re.compile(rb"(" + _NAME + rb"):[ \t]*(" + _VALUE + rb"*?)[ \t]*\r?\n")
_FIELDS = re.compile(rb"(?:" + _NAME + rb":" + _VALUE + rb"*\r?\n)*\r?\n")


def _fields(block: bytes, what: str = "the answer's headers") -> list[tuple[bytes, bytes]]:
    """The (name, value) pairs of a block of header lines that ends with an empty line."""
    if _FIELDS.fullmatch(block) is not None:
        fields = _FIELD_ITEMS.findall(block)
        if len(fields) > MAX_HEADERS:
            raise httpx.RemoteProtocolError(f"more than {MAX_HEADERS} header lines")
        return fields
    return _fields_line_by_line(block, what)


def _fields_line_by_line(block: bytes, what: str) -> list[tuple[bytes, bytes]]:
    """``_fields`` for what the fast pattern refuses: joins obsolete line folding, and
    names the line that is wrong."""
    fields: list[tuple[bytes, bytes]] = []
    for piece in block.split(b"\n")[:-1]:  # the last piece did not end with LF
        line = piece + b"\n"
        text = _chomp(line)
        if not text:
            return fields
        if text[:1] in (b" ", b"\t"):
            folded = text.strip(b" \t")
            if not fields or _BAD_VALUE.search(folded):
                raise httpx.RemoteProtocolError(f"illegal header line: {_shown(line)}")
            name, value = fields[-1]
            fields[-1] = (name, value + b" " + folded)
            continue
        name, colon, value = text.partition(b":")
        value = value.strip(b" \t")
        if not colon or not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise httpx.RemoteProtocolError(f"illegal header line: {_shown(line)}")
        if len(fields) >= MAX_HEADERS:
            raise httpx.RemoteProtocolError(f"more than {MAX_HEADERS} header lines")
        fields.append((name, value))
    raise _closed_early(what)  # no empty line came before the connection closed


async def _skip_trailers(wire: _Wire, timeout: float | None) -> None:
    """Read past the trailer lines of a chunked body (nothing in Aegis uses them)."""
    size = 0
    while True:
        line = await wire.read_line(MAX_HEAD_BYTES - size, timeout)
        size += len(line)
        if not line.endswith(b"\n"):
            raise _closed_early("the trailers of a chunked body")
        if not _chomp(line):
            return


def _chomp(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    return line[:-1] if line.endswith(b"\n") else line


def _shown(data: bytes) -> str:
    """A line of the answer as an error message quotes it: without its line ending,
    Latin-1 decoded (every byte shows), escaped, at most 80 characters."""
    text = _chomp(data).decode("latin-1")
    return repr(text[:80]) + ("…" if len(text) > 80 else "")


def _closed_early(what: str) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(f"peer closed connection in the middle of {what}")


class _Framing(NamedTuple):
    """How an answer's body ends (RFC 9112, section 6.3), and whether the connection may
    carry another request after it."""

    mode: str  # "length", "chunked" or "close" (the body ends when the connection does)
    length: int
    keep_alive: bool


def _framing(
    method: bytes, version: bytes, status: int, fields: list[tuple[bytes, bytes]], close: bool
) -> _Framing:
    """``close``: the request asked for the connection to be closed."""
    codings: list[bytes] = []
    lengths: list[bytes] = []
    connection: list[bytes] = []
    for name, value in fields:
        lower = name.lower()
        if lower == b"content-length":
            lengths.append(value)
        elif lower == b"transfer-encoding":
            codings.append(value)
        elif lower == b"connection":
            connection.append(value)
    tokens = _tokens(connection)
    keep = not close and (b"keep-alive" in tokens if version == b"0" else b"close" not in tokens)
    if method == b"HEAD" or status in (204, 304):
        return _Framing("length", 0, keep)
    if codings:
        last = b",".join(codings).split(b",")[-1].strip().lower()
        if last == b"chunked":
            return _Framing("chunked", 0, keep and not lengths)
        return _Framing("close", 0, False)
    if not lengths:
        return _Framing("close", 0, False)
    distinct = {part.strip() for value in lengths for part in value.split(b",")}
    if len(distinct) > 1:
        raise httpx.RemoteProtocolError("conflicting Content-Length headers")
    (length,) = distinct
    if not length.isdigit() or len(length) > 18:
        raise httpx.RemoteProtocolError(f"invalid Content-Length {_shown(length)}")
    return _Framing("length", int(length), keep)


def _tokens(values: list[bytes] | list[str]) -> set[bytes]:
    """The lower-cased comma-separated tokens of header values."""
    return {
        part.strip().lower()
        for value in values
        for part in (value.encode("latin-1") if isinstance(value, str) else value).split(b",")
    }


class _Body(httpx.AsyncByteStream):
    """An answer's body, read from its connection as the caller iterates. Read to its
    end on a connection that may be kept, it hands the connection back at once."""

    def __init__(
        self, pool: Transport, origin: Origin, wire: _Wire, framing: _Framing, timeout: float | None
    ) -> None:
        self._pool = pool
        self._origin = origin
        self._wire = wire
        self._mode = framing.mode
        self._length = framing.length
        self._keep = framing.keep_alive
        self._timeout = timeout
        self._remaining = framing.length  # of the body (length) or of this chunk (chunked)
        self._chunk_open = False  # chunked: a chunk's data was read, its CRLF not yet
        self._complete = False
        self._closed = False

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if self._complete:
            raise StopAsyncIteration
        try:
            piece = await self._next_piece()
        except _TooLong:
            raise httpx.RemoteProtocolError("chunk size line too long") from None
        except asyncio.TimeoutError as exc:
            raise httpx.ReadTimeout("timed out reading the answer") from exc
        except OSError as exc:
            raise httpx.ReadError(_words(exc)) from exc
        if piece:
            return piece
        self._complete = True
        if self._keep:
            await self.aclose()  # the connection is free before the caller closes
        raise StopAsyncIteration

    async def _next_piece(self) -> bytes:
        """The next piece of the body; ``b""`` at its end."""
        if self._mode == "close":
            return await self._wire.read_some(READ_PIECE, self._timeout)
        if self._mode == "chunked" and not self._remaining:
            self._remaining = await self._next_chunk_size()
        if not self._remaining:
            return b""
        piece = await self._wire.read_some(min(self._remaining, READ_PIECE), self._timeout)
        if not piece:
            if self._mode == "chunked":
                raise _closed_early("a chunked body")
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body "
                f"(received {self._length - self._remaining} bytes, expected {self._length})"
            )
        self._remaining -= len(piece)
        return piece

    async def _next_chunk_size(self) -> int:
        """Reads the CRLF after the chunk before, then the next size line; 0 at the last
        chunk, whose trailers are read past."""
        wire, timeout = self._wire, self._timeout
        if self._chunk_open:
            end = await wire.read_line(MAX_CHUNK_LINE, timeout)
            if not end.endswith(b"\n"):
                raise _closed_early("a chunked body")
            if _chomp(end):
                raise httpx.RemoteProtocolError("chunk not followed by CRLF")
        line = await wire.read_line(MAX_CHUNK_LINE, timeout)
        if not line.endswith(b"\n"):
            raise _closed_early("a chunked body")
        size_text = _chomp(line).split(b";", 1)[0].strip(b" \t")
        if not size_text or len(size_text) > 16 or size_text.strip(b"0123456789abcdefABCDEF"):
            raise httpx.RemoteProtocolError(f"illegal chunk size line: {_shown(line)}")
        size = int(size_text, 16)
        self._chunk_open = size > 0
        if not size:
            await _skip_trailers(wire, timeout)
        return size

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._complete and self._keep:
            self._pool._release(self._origin, self._wire)
        else:
            self._pool._discard(self._wire)
