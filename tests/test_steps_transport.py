"""The run client's own HTTP/1.1 pool (``aegis.steps.transport``), over real loopback sockets.

Every test talks to a scripted server on 127.0.0.1: it records each request it reads (and
on which connection) and writes whatever bytes the test scripted for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import hashlib
import os
import select
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from aegis.steps import http as steps_http
from aegis.steps import transport as transport_module
from aegis.steps.proxies import environment_proxies
from aegis.steps.transport import Transport

# ------------------------------------------------------------------------------ answers


def answer(
    status: int = 200,
    body: bytes = b"",
    *headers: str,
    version: str = "1.1",
    length: bool = True,
    reason: str = "OK",
) -> bytes:
    """A whole answer; ``Content-Length`` is added unless ``length`` is false."""
    lines = [f"HTTP/{version} {status} {reason}", *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


OK = answer(200, b"ok")


@dataclass
class Reply:
    """What the server does for one request: wait for ``hold``, write ``data``, then
    maybe close (FIN) or reset (RST) the connection."""

    data: bytes = b""
    close: bool = False
    reset: bool = False
    hold: asyncio.Event | None = None


@dataclass
class Seen:
    """One request as the server read it."""

    conn: int
    raw: bytes  # head and body exactly as they arrived (chunk framing included)
    body: bytes  # decoded

    @property
    def line(self) -> bytes:
        return self.raw.split(b"\r\n", 1)[0]

    def header(self, name: str) -> str | None:
        head = self.raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


@dataclass
class Conn:
    number: int
    writer: asyncio.StreamWriter
    reads: list[bytes] = field(default_factory=list)  # every piece one read() returned
    eof: asyncio.Event = field(default_factory=asyncio.Event)  # the client closed or reset
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # the handler is done


# A scripted answer: bytes, a Reply, or a coroutine function that writes on its own and
# returns "close", "reset" or None.
Script = bytes | Reply | Callable[[Seen, asyncio.StreamWriter], Awaitable[str | None]]


class _Incoming:
    """The bytes of one server-side connection, read in pieces that are recorded."""

    def __init__(self, reader: asyncio.StreamReader, conn: Conn) -> None:
        self._reader = reader
        self._conn = conn
        self.buffer = bytearray()

    async def _fill(self) -> None:
        data = await self._reader.read(65536)
        if not data:
            raise EOFError
        self._conn.reads.append(data)
        self.buffer += data

    async def until(self, separator: bytes) -> bytes:
        while (end := self.buffer.find(separator)) < 0:
            await self._fill()
        return self.take(end + len(separator))

    async def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._fill()
        return self.take(size)

    def take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


class ScriptedServer:
    def __init__(self, script: list[Script], default: Script, tls: ssl.SSLContext | None) -> None:
        self.script: collections.deque[Script] = collections.deque(script)
        self.default = default
        self.tls = tls
        self.seen: list[Seen] = []
        self.conns: list[Conn] = []
        self.open = 0
        self.max_open = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def conn_numbers(self) -> list[int]:
        return [seen.conn for seen in self.seen]

    async def stop(self) -> None:
        for conn in self.conns:
            conn.writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Conn(len(self.conns) + 1, writer)
        self.conns.append(conn)
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        incoming = _Incoming(reader, conn)
        try:
            while True:
                try:
                    seen = await self._read_request(incoming, conn.number)
                except (EOFError, ConnectionError, ssl.SSLError):
                    conn.eof.set()
                    return
                self.seen.append(seen)
                script = self.script.popleft() if self.script else self.default
                ending = await self._answer(script, seen, writer)
                if ending == "close":
                    writer.close()
                    return
                if ending == "reset":
                    await reset(writer)
                    return
        except asyncio.CancelledError:
            pass  # stopped by the test's teardown
        finally:
            self.open -= 1
            conn.ended.set()
            writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _read_request(incoming: _Incoming, number: int) -> Seen:
        head = await incoming.until(b"\r\n\r\n")
        seen = Seen(number, head, b"")
        length = seen.header("content-length")
        if length is not None:
            seen.body = await incoming.exactly(int(length))
            seen.raw += seen.body
        elif "chunked" in (seen.header("transfer-encoding") or "").lower():
            while True:
                size_line = await incoming.until(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                data = await incoming.exactly(size + 2) if size else b""
                seen.raw += size_line + data
                seen.body += data[:-2]
                if not size:
                    seen.raw += await incoming.until(b"\r\n")  # no trailers are sent
                    break
        return seen

    @staticmethod
    async def _answer(script: Script, seen: Seen, writer: asyncio.StreamWriter) -> str | None:
        if isinstance(script, bytes):
            script = Reply(script)
        if isinstance(script, Reply):
            if script.hold is not None:
                await script.hold.wait()
            writer.write(script.data)
            await writer.drain()
            return "close" if script.close else "reset" if script.reset else None
        return await script(seen, writer)


async def reset(writer: asyncio.StreamWriter) -> None:
    """Abort the connection with a RST, after what was written has reached the kernel."""
    await until(lambda: writer.transport.get_write_buffer_size() == 0)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)


async def wait(event: asyncio.Event, timeout: float = 5.0) -> None:
    await asyncio.wait_for(event.wait(), timeout)


Serve = Callable[..., Awaitable[ScriptedServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """``await serve(*script, default=OK, tls=None)``: a started scripted server."""
    servers: list[ScriptedServer] = []

    async def start(
        *script: Script, default: Script = OK, tls: ssl.SSLContext | None = None
    ) -> ScriptedServer:
        server = await ScriptedServer(list(script), default, tls).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


# ---------------------------------------------------------------------------- the pool


def no_tls() -> ssl.SSLContext:
    raise AssertionError("no TLS context should be needed")


MakePool = Callable[..., Transport]


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    pools: list[Transport] = []

    def make(**options: Any) -> Transport:
        options.setdefault("ssl_context", no_tls)
        pool = Transport(**options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.aclose()


@pytest.fixture
def pool(make_pool: MakePool) -> Transport:
    return make_pool()


TIMEOUTS = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}


def request(
    method: str, url: str, timeout: dict[str, Any] | None = None, **options: Any
) -> httpx.Request:
    """An ``httpx.Request`` with the timeouts httpx would pass (5 s unless given)."""
    timeouts = {**TIMEOUTS, **(timeout or {})}
    return httpx.Request(method, url, extensions={"timeout": timeouts}, **options)


async def fetch(pool: Transport, url: str, method: str = "GET", **options: Any) -> httpx.Response:
    """The answer to one request, its body read and the answer closed."""
    response = await pool.handle_async_request(request(method, url, **options))
    try:
        await response.aread()
    finally:
        await response.aclose()
    return response


def idle_wires(pool: Transport) -> list[Any]:
    """The pool's idle connections (for waiting until the client has seen a server's
    bytes or its close; never changed by the tests)."""
    return [wire for idle in pool._idle.values() for wire, _ in idle]


def open_wires(pool: Transport) -> list[Any]:
    return list(pool._open)


# ------------------------------------------------------------------------- odds and ends


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def streamed(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


class RawServer:
    """``async with RawServer(handler) as port``: a bare ``asyncio.start_server``."""

    def __init__(self, handler: Callable[..., Awaitable[None]]) -> None:
        self._handler = handler
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        try:
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._writers:
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), 5)


# =============================================================================== framing


async def test_a_content_length_answer_is_read_whole(serve: Serve, pool: Transport) -> None:
    server = await serve(answer(200, b"hello world", "X-Thing: 1"))
    response = await fetch(pool, server.url("/a?b=c"))
    assert response.status_code == 200
    assert response.content == b"hello world"
    assert response.headers["x-thing"] == "1"
    assert response.extensions["http_version"] == b"HTTP/1.1"
    assert response.extensions["reason_phrase"] == b"OK"
    assert server.seen[0].line == b"GET /a?b=c HTTP/1.1"
    assert server.seen[0].header("host") == f"127.0.0.1:{server.port}"


async def test_a_chunked_answer_is_read_whole(serve: Serve, pool: Transport) -> None:
    body = (
        b"5;x=y\r\nhello\r\n"
        b'1 ; name="v"\r\n \r\n'
        b"A\r\nworld, 10 \r\n"
        b"0\r\nTrailer-One: 1\r\nTrailer-Two: 2\r\n\r\n"
    )
    server = await serve(answer(200, body, "Transfer-Encoding: chunked", length=False))
    response = await fetch(pool, server.url())
    assert response.content == b"hello world, 10 "
    await fetch(pool, server.url())
    assert server.conn_numbers == [1, 1]  # the trailers were read past: kept


async def test_a_chunked_answer_is_read_as_it_arrives(serve: Serve, pool: Transport) -> None:
    more = asyncio.Event()

    async def in_two_parts(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(200, b"3\r\nabc\r\n", "Transfer-Encoding: chunked", length=False))
        await more.wait()
        writer.write(b"3\r\ndef\r\n0\r\n\r\n")

    server = await serve(in_two_parts)
    response = await pool.handle_async_request(request("GET", server.url()))
    pieces = response.stream.__aiter__()
    assert await pieces.__anext__() == b"abc"
    more.set()
    assert [piece async for piece in pieces] == [b"def"]
    assert [piece async for piece in response.stream] == []  # finished stays finished
    await response.aclose()
    await fetch(pool, server.url())
    assert server.conn_numbers == [1, 1]


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n", id="http-1.0"),
        pytest.param(b"HTTP/1.1 200 OK\r\n\r\n", id="no-length"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", id="te-not-chunked"),
    ],
)
async def test_a_body_without_length_is_read_until_close(
    serve: Serve, pool: Transport, head: bytes
) -> None:
    server = await serve(Reply(head + b"up to the end" * 1000, close=True))
    response = await fetch(pool, server.url())
    assert response.content == b"up to the end" * 1000
    await fetch(pool, server.url())
    assert server.conn_numbers == [1, 2]


@pytest.mark.parametrize(
    ("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304), ("HEAD", 404)]
)
async def test_head_204_and_304_answers_have_no_body(
    serve: Serve, pool: Transport, method: str, status: int
) -> None:
    server = await serve(b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status)
    response = await fetch(pool, server.url(), method)
    assert response.status_code == status
    assert response.content == b""
    assert response.headers["content-length"] == "5"
    assert (await fetch(pool, server.url())).content == b"ok"  # the next answer, not 5 bytes
    assert server.conn_numbers == [1, 1]


async def test_bare_lf_line_endings_in_the_head_are_accepted(serve: Serve, pool: Transport) -> None:
    server = await serve(b"HTTP/1.1 200 OK\nX-A: 1\nContent-Length: 3\n\nabc")
    response = await fetch(pool, server.url())
    assert response.content == b"abc"
    assert response.headers["x-a"] == "1"
    await fetch(pool, server.url())
    assert server.conn_numbers == [1, 1]


async def test_mixed_line_endings_in_the_head_are_accepted(serve: Serve, pool: Transport) -> None:
    server = await serve(b"HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 3\r\n\nabc")
    response = await fetch(pool, server.url())
    assert (response.content, response.headers["x-a"]) == (b"abc", "1")


async def test_an_obsolete_folded_header_line_is_joined(serve: Serve, pool: Transport) -> None:
    server = await serve(
        b"HTTP/1.1 200 OK\r\nX-Long: first\r\n  second\r\n\tthird \r\nContent-Length: 2\r\n\r\nok"
    )
    response = await fetch(pool, server.url())
    assert response.headers["x-long"] == "first second third"
    assert response.content == b"ok"


async def test_header_values_are_trimmed_and_may_be_empty(serve: Serve, pool: Transport) -> None:
    server = await serve(
        b"HTTP/1.1 200 OK\r\nX-A:\t a b \t\r\nX-Empty:\r\nContent-Length: 0\r\n\r\n"
    )
    response = await fetch(pool, server.url())
    assert response.headers["x-a"] == "a b"
    assert response.headers["x-empty"] == ""


async def test_interim_answers_are_skipped(serve: Serve, pool: Transport) -> None:
    server = await serve(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        + answer(201, b"made", "X-Final: yes", reason="Created")
    )
    response = await fetch(pool, server.url(), "POST", content=b"x")
    assert response.status_code == 201
    assert response.headers["x-final"] == "yes"
    assert "link" not in response.headers
    assert response.content == b"made"
    assert response.extensions["reason_phrase"] == b"Created"


async def test_a_status_line_without_reason_is_accepted(serve: Serve, pool: Transport) -> None:
    server = await serve(b"HTTP/1.1 418\r\nContent-Length: 0\r\n\r\n")
    response = await fetch(pool, server.url())
    assert response.status_code == 418
    assert response.extensions["reason_phrase"] == b""


async def test_101_switching_protocols_is_refused(serve: Serve, pool: Transport) -> None:
    server = await serve(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    with pytest.raises(httpx.RemoteProtocolError, match="unexpected 101 Switching Protocols"):
        await fetch(pool, server.url())
    await fetch(pool, server.url())
    assert server.conn_numbers == [1, 2]


async def test_equal_repeated_content_lengths_are_accepted(serve: Serve, pool: Transport) -> None:
    server = await serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok")
    assert (await fetch(pool, server.url())).content == b"ok"


async def test_a_chunked_answer_with_a_content_length_is_not_kept(
    serve: Serve, pool: Transport
) -> None:
    server = await serve(
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    )
    assert (await fetch(pool, server.url())).content == b"ok"
    await fetch(pool, server.url())
    assert server.conn_numbers == [1, 2]


async def test_a_bare_lf_head_followed_by_a_body_starting_with_crlf(
    serve: Serve, pool: Transport
) -> None:
    server = await serve(Reply(b"HTTP/1.1 200 OK\nContent-Length: 4\n\n\r\nab", close=True))
    response = await fetch(pool, server.url())
    assert response.content == b"\r\nab"


# ============================================================================ keep-alive


async def test_sequential_requests_reuse_one_connection(serve: Serve, pool: Transport) -> None:
    server = await serve()
    for _ in range(3):
        assert (await fetch(pool, server.url())).content == b"ok"
    assert server.conn_numbers == [1, 1, 1]
    assert len(server.conns) == 1


async def test_an_answer_with_connection_close_is_not_reused(serve: Serve, pool: Transport) -> None:
    server = await serve(answer(200, b"ok", "Connection: close"))
    await fetch(pool, server.url())
    await fetch(pool, server.url())
    assert server.conn_numbers == [1, 2]
    await wait(server.conns[0].eof)  # the client closed the one it did not keep


@pytest.mark.parametrize(
    ("headers", "kept"),
    [((), False), (("Connection: keep-alive",), True), (("Connection: Keep-Alive, x",), True)],
)
async def test_an_http10_answer_is_kept_only_with_keep_alive(
    serve: Serve, pool: Transport, headers: tuple[str, ...], kept: bool
) -> None:
    server = await serve(answer(200, b"ok", *headers, version="1.0"))
    assert (await fetch(pool, server.url())).extensions["http_version"] == b"HTTP/1.0"
    await fetch(pool, server.url())
    assert server.conn_numbers == ([1, 1] if kept else [1, 2])


async def test_a_request_asking_to_close_is_not_reused(serve: Serve, pool: Transport) -> None:
    server = await serve()
    await fetch(pool, server.url(), headers={"Connection": "close"})
    await fetch(pool, server.url())
    assert server.conn_numbers == [1, 2]
    assert server.seen[0].header("connection") == "close"


async def test_a_body_not_read_to_the_end_is_not_reused(serve: Serve, pool: Transport) -> None:
    server = await serve(answer(200, b"x" * 100_000))
    response = await pool.handle_async_request(request("GET", server.url()))
    await response.aclose()  # nothing of the body read
    await wait(server.conns[0].eof)
    await fetch(pool, server.url())
    assert server.conn_numbers == [1, 2]


async def test_at_most_max_keepalive_idle_connections_are_kept(
    serve: Serve, make_pool: MakePool
) -> None:
    pool = make_pool(max_keepalive=1)
    three = asyncio.Event()
    server = await serve(*(Reply(OK, hold=three) for _ in range(3)))

    async def batch() -> None:
        await asyncio.gather(*(fetch(pool, server.url()) for _ in range(3)))

    first = asyncio.create_task(batch())
    await until(lambda: len(server.seen) == 3)
    three.set()
    await first
    assert len(server.conns) == 3
    assert len(idle_wires(pool)) == 1
    await until(lambda: sum(conn.eof.is_set() for conn in server.conns) == 2)

    second = asyncio.Event()
    server.script.extend(Reply(OK, hold=second) for _ in range(3))
    later = asyncio.create_task(batch())
    await until(lambda: len(server.seen) == 6)
    second.set()
    await later
    assert len(server.conns) == 5  # one kept connection reused, two new ones
    assert len(set(server.conn_numbers[3:]) & set(server.conn_numbers[:3])) == 1


async def test_max_keepalive_zero_keeps_nothing(serve: Serve, make_pool: MakePool) -> None:
    pool = make_pool(max_keepalive=0)
    server = await serve()
    await fetch(pool, server.url())
    await fetch(pool, server.url())
    assert server.conn_numbers == [1, 2]


async def test_an_expired_idle_connection_is_replaced(serve: Serve, make_pool: MakePool) -> None:
    now = [1000.0]
    pool = make_pool(keepalive_expiry=5.0, clock=lambda: now[0])
    server = await serve()
    await fetch(pool, server.url())
    now[0] += 4.9
    await fetch(pool, server.url())  # still fresh: reused, and idle again from now on
    now[0] += 5.0
    await fetch(pool, server.url())
    assert server.conn_numbers == [1, 1, 2]
    await wait(server.conns[0].eof)  # the expired one was closed


async def test_expired_idle_connections_are_all_dropped(serve: Serve, make_pool: MakePool) -> None:
    now = [0.0]
    pool = make_pool(keepalive_expiry=1.0, clock=lambda: now[0])
    hold = asyncio.Event()
    server = await serve(Reply(OK, hold=hold), Reply(OK, hold=hold))
    both = asyncio.gather(fetch(pool, server.url()), fetch(pool, server.url()))
    await until(lambda: len(server.seen) == 2)
    hold.set()
    await both
    assert len(idle_wires(pool)) == 2
    now[0] = 10.0
    await fetch(pool, server.url())
    assert server.conn_numbers[2] == 3
    assert len(idle_wires(pool)) == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_an_idle_connection_closed_by_the_server_is_not_reused(
    serve: Serve, pool: Transport, method: str
) -> None:
    server = await serve(Reply(OK, close=True))  # closes without saying Connection: close
    await fetch(pool, server.url())
    await until(lambda: all(wire.eof for wire in idle_wires(pool)))
    response = await fetch(pool, server.url(), method, json={"a": 1})
    assert response.content == b"ok"
    assert server.conn_numbers == [1, 2]


async def test_an_idle_connection_holding_unsolicited_bytes_is_not_reused(
    serve: Serve, pool: Transport
) -> None:
    stray = asyncio.Event()

    async def then_stray_bytes(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await stray.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray")

    server = await serve(then_stray_bytes)
    await fetch(pool, server.url())
    stray.set()
    await until(lambda: all(wire.buffer for wire in idle_wires(pool)))
    assert (await fetch(pool, server.url())).content == b"ok"
    assert server.conn_numbers == [1, 2]


async def test_bytes_past_the_end_of_an_answer_prevent_keeping_it(
    serve: Serve, pool: Transport
) -> None:
    server = await serve(OK + b"HTTP/1.1 200 OK\r\n")
    await fetch(pool, server.url())
    assert idle_wires(pool) == []
    await fetch(pool, server.url())
    assert server.conn_numbers == [1, 2]


async def test_idle_connections_are_kept_per_origin(serve: Serve, pool: Transport) -> None:
    first, second = await serve(), await serve()
    for _ in range(2):
        await fetch(pool, first.url())
        await fetch(pool, second.url())
    assert first.conn_numbers == [1, 1]
    assert second.conn_numbers == [1, 1]
    await fetch(pool, first.url(host="localhost"))  # another origin: its own connection
    assert first.conn_numbers == [1, 1, 2]


async def test_an_idle_connection_closed_after_a_large_answer_is_not_reused(
    serve: Serve, pool: Transport
) -> None:
    big = b"y" * 300_000  # more than the 256 KiB the client buffers before it pauses reading
    server = await serve(Reply(answer(200, big), close=True))
    response = await pool.handle_async_request(request("GET", server.url()))
    (wire,) = open_wires(pool)
    await until(lambda: wire._reading_paused)  # the whole answer is in the client's buffer
    assert await response.aread() == big
    await response.aclose()
    assert idle_wires(pool) == [wire]
    await wait(server.conns[0].ended)
    with contextlib.suppress(AssertionError):  # give the pool time to see the close
        await until(lambda: wire.eof, timeout=0.5)
    response = await fetch(pool, server.url(), "POST", json={"n": 1})
    assert response.content == b"ok"


# =================================================================== stale connections


async def drop(seen: Seen, writer: asyncio.StreamWriter) -> str:
    return "close"


# The server closes a kept connection without saying "Connection: close": right after its
# answer (the client sends the next request before its event loop has seen the close),
# or as the next request arrives on it, unanswered.
STALE = {"closed-after-answer": [Reply(OK, close=True)], "closed-on-next-request": [OK, drop]}


@pytest.mark.parametrize("script", STALE.values(), ids=STALE.keys())
async def test_a_get_on_a_stale_connection_is_sent_again_on_a_new_one(
    serve: Serve, pool: Transport, script: list[Script]
) -> None:
    server = await serve(*script)
    await fetch(pool, server.url())
    response = await fetch(pool, server.url("/again"))
    assert response.content == b"ok"
    assert server.conns[1].number == 2
    assert server.seen[-1].conn == 2
    assert server.seen[-1].line == b"GET /again HTTP/1.1"


async def test_a_post_on_a_stale_connection_is_not_sent_again(
    serve: Serve, pool: Transport
) -> None:
    server = await serve(OK, drop)
    await fetch(pool, server.url())
    with pytest.raises(
        httpx.RemoteProtocolError, match=r"^Server disconnected without sending a response\.$"
    ):
        await fetch(pool, server.url(), "POST", json={"n": 1})
    assert server.conn_numbers == [1, 1]
    assert len(server.conns) == 1


async def test_a_post_right_after_the_server_closed_goes_on_a_new_connection(
    serve: Serve, pool: Transport
) -> None:
    # The close may not have reached the event loop yet; the pool asks the socket itself
    # before reusing a connection, as a POST cannot safely be sent twice.
    server = await serve(Reply(OK, close=True))
    await fetch(pool, server.url())
    response = await fetch(pool, server.url(), "POST", json={"n": 1})
    assert response.content == b"ok"
    assert server.conn_numbers == [1, 2]


async def test_a_streamed_body_on_a_stale_connection_is_not_sent_again(
    serve: Serve, pool: Transport
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"abc"

    server = await serve(OK, drop)
    await fetch(pool, server.url())
    with pytest.raises(httpx.RemoteProtocolError, match="Server disconnected"):
        await fetch(pool, server.url(), "PUT", content=body())
    assert server.conn_numbers == [1, 1]


async def test_a_get_is_sent_again_only_once_when_the_new_connection_fails_too(
    serve: Serve, pool: Transport
) -> None:
    server = await serve(OK, drop, Reply(close=True))
    await fetch(pool, server.url())
    with pytest.raises(httpx.RemoteProtocolError, match="Server disconnected"):
        await fetch(pool, server.url())
    assert server.conn_numbers == [1, 1, 2]


async def test_a_reset_stale_connection_is_sent_again(serve: Serve, pool: Transport) -> None:
    async def reset_it(seen: Seen, writer: asyncio.StreamWriter) -> str:
        return "reset"

    server = await serve(OK, reset_it)
    await fetch(pool, server.url())
    assert (await fetch(pool, server.url(), "DELETE")).content == b"ok"
    assert server.conn_numbers == [1, 1, 2]


async def test_a_new_connection_closed_without_answer_is_not_sent_again(
    serve: Serve, pool: Transport
) -> None:
    server = await serve(Reply(close=True))
    with pytest.raises(httpx.RemoteProtocolError, match="Server disconnected"):
        await fetch(pool, server.url())
    assert server.conn_numbers == [1]


# ====================================================================== max_connections


async def test_no_more_than_max_connections_are_open_at_once(
    serve: Serve, make_pool: MakePool
) -> None:
    pool = make_pool(max_connections=2)
    release = asyncio.Semaphore(0)

    async def held(seen: Seen, writer: asyncio.StreamWriter) -> None:
        await release.acquire()
        writer.write(answer(200, seen.line))

    server = await serve(default=held)
    fetches = [asyncio.create_task(fetch(pool, server.url(f"/{number}"))) for number in range(5)]
    for answered in range(5):
        await until(lambda answered=answered: len(server.seen) == min(answered + 2, 5))
        assert server.open <= 2
        release.release()
    responses = await asyncio.gather(*fetches)
    assert sorted(response.content for response in responses) == [
        b"GET /%d HTTP/1.1" % number for number in range(5)
    ]
    assert server.max_open == 2
    assert len(server.conns) == 5  # a connection freed for a waiter is closed, not kept


async def test_a_request_waiting_past_the_pool_timeout_raises(
    serve: Serve, make_pool: MakePool
) -> None:
    pool = make_pool(max_connections=1)
    hold = asyncio.Event()
    server = await serve(Reply(OK, hold=hold))
    first = asyncio.create_task(fetch(pool, server.url()))
    await until(lambda: len(server.seen) == 1)
    with pytest.raises(httpx.PoolTimeout, match="timed out waiting for a free connection"):
        await fetch(pool, server.url(), timeout={"pool": 0.05})
    hold.set()
    await first
    await fetch(pool, server.url())  # the slot the timed-out request waited for is free
    assert server.conn_numbers == [1, 1]


async def test_closing_the_pool_fails_a_request_waiting_for_a_slot(
    serve: Serve, make_pool: MakePool
) -> None:
    pool = make_pool(max_connections=1)
    hold = asyncio.Event()
    server = await serve(Reply(OK, hold=hold))
    first = asyncio.create_task(fetch(pool, server.url()))
    await until(lambda: len(server.seen) == 1)
    waiting = asyncio.create_task(fetch(pool, server.url("/second")))
    await until(lambda: len(pool._slot_waiters) == 1)
    await pool.aclose()
    with pytest.raises(RuntimeError, match="the transport is closed"):
        await waiting
    with pytest.raises(httpx.HTTPError):
        await first  # its connection went with the pool
    hold.set()
    assert [seen.line for seen in server.seen] == [b"GET / HTTP/1.1"]


async def test_a_connection_made_as_the_pool_closed_is_not_kept(
    serve: Serve, make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_pool()
    server = await serve()
    real_open = Transport._open_wire

    async def open_then_close(self: Transport, *args: Any) -> Any:
        wire = await real_open(self, *args)
        await self.aclose()  # the run ended while this step was connecting
        return wire

    monkeypatch.setattr(Transport, "_open_wire", open_then_close)
    with pytest.raises(RuntimeError, match="the transport is closed"):
        await fetch(pool, server.url())
    await until(lambda: len(server.conns) == 1 and server.conns[0].eof.is_set())
    assert server.seen == [] and pool._slots_taken == 0


async def test_a_cancelled_waiter_does_not_leak_a_slot(serve: Serve, make_pool: MakePool) -> None:
    pool = make_pool(max_connections=2)
    first_hold, later_hold = asyncio.Event(), asyncio.Event()
    server = await serve(Reply(OK, hold=first_hold), Reply(OK, hold=first_hold))
    busy = asyncio.gather(fetch(pool, server.url()), fetch(pool, server.url()))
    await until(lambda: len(server.seen) == 2)
    waiter = asyncio.create_task(fetch(pool, server.url("/never")))
    await until(lambda: len(pool._slot_waiters) == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    first_hold.set()
    await busy

    server.script.extend([Reply(OK, hold=later_hold), Reply(OK, hold=later_hold)])
    both = asyncio.gather(
        fetch(pool, server.url("/a"), timeout={"pool": 2}),
        fetch(pool, server.url("/b"), timeout={"pool": 2}),
    )
    await until(lambda: len(server.seen) == 4)  # both at the server at once: two slots
    later_hold.set()
    await both
    assert all(b"/never" not in seen.line for seen in server.seen)


async def test_a_slot_handed_to_a_waiter_cancelled_before_it_ran_is_passed_on(
    serve: Serve, make_pool: MakePool
) -> None:
    pool = make_pool(max_connections=1)
    server = await serve()
    holder = await pool.handle_async_request(request("GET", server.url()))
    waiting = asyncio.create_task(fetch(pool, server.url(), timeout={"pool": None}))
    await until(lambda: len(pool._slot_waiters) == 1)
    await holder.aclose()  # hands the slot to the waiter ...
    waiting.cancel()  # ... which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert pool._slots_taken == 0
    await asyncio.wait_for(fetch(pool, server.url()), 2)  # the slot was passed on


async def test_a_slot_freed_just_after_its_waiter_was_cancelled_is_not_lost(
    serve: Serve, make_pool: MakePool
) -> None:
    pool = make_pool(max_connections=1)
    server = await serve()
    holder = await pool.handle_async_request(request("GET", server.url()))
    waiting = asyncio.create_task(fetch(pool, server.url(), timeout={"pool": None}))
    await until(lambda: len(pool._slot_waiters) == 1)
    waiting.cancel()  # its wait is cancelled at once, its task runs later ...
    await holder.aclose()  # ... after the slot was freed and the waiter passed over
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert pool._slots_taken == 0
    await asyncio.wait_for(fetch(pool, server.url()), 2)


async def test_a_request_cancelled_as_it_is_handed_a_slot_stays_cancelled(
    serve: Serve, make_pool: MakePool
) -> None:
    pool = make_pool(max_connections=1)
    server = await serve()
    holder = await pool.handle_async_request(request("GET", server.url()))
    waiting = asyncio.create_task(fetch(pool, server.url("/cancelled"), timeout={"pool": 5}))
    await until(lambda: len(pool._slot_waiters) == 1)
    await holder.aclose()  # hands the slot to the waiter ...
    waiting.cancel()  # ... which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert pool._slots_taken == 0
    assert [seen.line for seen in server.seen] == [b"GET / HTTP/1.1"]


async def test_idle_connections_give_way_when_no_slot_is_free(
    serve: Serve, make_pool: MakePool
) -> None:
    pool = make_pool(max_connections=2)
    first, second, third = await serve(), await serve(), await serve()
    await fetch(pool, first.url())
    await fetch(pool, second.url())
    await fetch(pool, third.url())  # both slots idle: the oldest idle one is closed
    await wait(first.conns[0].eof)
    assert not second.conns[0].eof.is_set()
    await fetch(pool, second.url())
    assert second.conn_numbers == [1, 1]


async def test_a_failed_connect_frees_its_slot(serve: Serve, make_pool: MakePool) -> None:
    pool = make_pool(max_connections=1)
    port = closed_port()
    for _ in range(3):
        with pytest.raises(httpx.ConnectError):
            await fetch(pool, f"http://127.0.0.1:{port}/")
    server = await serve()
    await fetch(pool, server.url(), timeout={"pool": 1})


# =============================================================================== errors


async def test_a_refused_connection_raises_connect_error(pool: Transport) -> None:
    with pytest.raises(httpx.ConnectError) as raised:
        await fetch(pool, f"http://127.0.0.1:{closed_port()}/")
    assert isinstance(raised.value.__cause__, OSError)
    assert raised.value.__cause__.errno == errno.ECONNREFUSED
    assert str(raised.value)


async def test_a_refusal_is_reported_over_other_failures(
    pool: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    port = closed_port()

    async def resolve(host: str, port: int, **options: Any) -> list[Any]:
        # A link-local IPv6 address without a scope fails at once, and not as a refusal.
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::2", port, 0, 0)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    with pytest.raises(httpx.ConnectError) as raised:
        await fetch(pool, f"http://multi.test:{port}/")
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)


async def test_every_address_of_a_name_is_tried_in_turn(
    serve: Serve, pool: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await serve()
    loop = asyncio.get_running_loop()

    async def resolve(host: str, port: int, **options: Any) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    # 127.0.0.2 is loopback too, but nothing listens there on this port.
    assert (await fetch(pool, f"http://twice.test:{server.port}/")).content == b"ok"


async def test_an_address_that_never_answers_costs_a_quarter_second_not_the_timeout(
    unanswered_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Happy eyeballs: the name's first address drops the SYN (as IPv6 without a route
    # does); the second, tried 0.25 s later alongside it, answers.
    port = unanswered_port

    async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()
        writer.close()

    second = await asyncio.start_server(answer_ok, "127.0.0.2", port)
    loop = asyncio.get_running_loop()

    async def resolve(host: str, port: int, **options: Any) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    pool = Transport(ssl_context=no_tls)
    try:
        began = time.monotonic()
        response = await fetch(pool, f"http://two.test:{port}/", timeout={"connect": 10})
        took = time.monotonic() - began
    finally:
        await pool.aclose()
        second.close()
        await second.wait_closed()
    assert response.content == b"ok"
    assert 0.2 <= took < 5  # the stagger, and far from the 10 s connect timeout


async def test_a_connection_that_loses_the_race_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Both addresses connect in the same moment: one wins, the other is closed.
    monkeypatch.setattr(transport_module, "STAGGER", 0)
    aborted: list[str] = []

    class Connected:
        def __init__(self, address: str) -> None:
            self.address = address

        def abort(self) -> None:
            aborted.append(self.address)

    second_began = asyncio.Event()

    async def attempt(address: str) -> Any:
        if address == "a":
            await second_began.wait()  # slower than the stagger, but connects after all
        else:
            second_began.set()
        return Connected(address)

    winner = await transport_module._first_connected(attempt, ["a", "b"])
    await until(lambda: len(aborted) == 1)
    assert {winner.address, *aborted} == {"a", "b"}


async def test_an_unresolvable_host_raises_connect_error(pool: Transport) -> None:
    with pytest.raises(httpx.ConnectError) as raised:
        await fetch(pool, "http://nonexistent.invalid/", timeout={"connect": 10})
    assert isinstance(raised.value.__cause__, socket.gaierror)


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose listen backlog is full, so that a further SYN gets no answer."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(16):
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            filler.connect_ex(("127.0.0.1", port))
            # Writable soon: the kernel took the connection into the backlog.
            _, writable, _ = select.select([], [filler], [], 0.2)
            if not writable:
                break
        else:
            pytest.skip("the kernel accepts every connection: cannot make a connect hang")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_a_connect_timeout_raises_connect_timeout(
    pool: Transport, unanswered_port: int
) -> None:
    started = time.monotonic()
    with pytest.raises(httpx.ConnectTimeout, match="timed out connecting"):
        await fetch(pool, f"http://127.0.0.1:{unanswered_port}/", timeout={"connect": 0.2})
    assert time.monotonic() - started < 2
    assert pool._slots_taken == 0


async def test_a_connection_closed_before_any_answer_raises_remote_protocol_error(
    serve: Serve, pool: Transport
) -> None:
    server = await serve(Reply(close=True))
    with pytest.raises(httpx.RemoteProtocolError, match="disconnected"):
        await fetch(pool, server.url())


async def test_a_reset_before_any_answer_raises_read_error(serve: Serve, pool: Transport) -> None:
    server = await serve(Reply(reset=True))
    with pytest.raises(httpx.ReadError) as raised:
        await fetch(pool, server.url())
    assert isinstance(raised.value.__cause__, ConnectionResetError)
    assert "reset" in str(raised.value).lower()


async def test_a_reset_after_an_interim_answer_raises_read_error(
    serve: Serve, pool: Transport
) -> None:
    server = await serve(Reply(b"HTTP/1.1 100 Continue\r\n\r\n", reset=True))
    with pytest.raises(httpx.ReadError):
        await fetch(pool, server.url())


async def test_a_reset_after_an_interim_answer_that_came_during_the_upload_raises_read_error(
    serve: Serve, pool: Transport
) -> None:
    server = await serve(Reply(b"HTTP/1.1 100 Continue\r\n\r\n", reset=True))

    async def body() -> AsyncIterator[bytes]:
        yield b"a"
        # Finish sending only once the 100 and the reset have both arrived.
        await until(lambda: all(wire.error for wire in open_wires(pool)))

    with pytest.raises(httpx.ReadError):
        await fetch(pool, server.url(), "POST", content=body(), headers={"Content-Length": "1"})
    assert server.seen[0].body == b"a"


async def test_a_close_after_an_interim_answer_raises_remote_protocol_error(
    serve: Serve, pool: Transport
) -> None:
    server = await serve(Reply(b"HTTP/1.1 100 Continue\r\n\r\n", close=True))
    with pytest.raises(httpx.RemoteProtocolError, match=r"peer closed .* status line"):
        await fetch(pool, server.url())


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"HTTP/1.1 200 OK", "status line"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n", "headers"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B", "headers"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\n", "headers"),
    ],
)
async def test_a_close_in_the_middle_of_the_head_raises_remote_protocol_error(
    serve: Serve, pool: Transport, data: bytes, where: str
) -> None:
    server = await serve(Reply(data, close=True))
    with pytest.raises(httpx.RemoteProtocolError, match=f"peer closed .*{where}"):
        await fetch(pool, server.url())


async def test_a_close_in_the_middle_of_a_body_says_how_much_arrived(
    serve: Serve, pool: Transport
) -> None:
    server = await serve(Reply(answer(200, b"x" * 10)[:-6], close=True))
    with pytest.raises(
        httpx.RemoteProtocolError,
        match=r"peer closed connection without sending complete message body "
        r"\(received 4 bytes, expected 10\)",
    ):
        await fetch(pool, server.url())


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"5\r\nab", id="mid-data"),
        pytest.param(b"5\r\nabcde", id="before-crlf"),
        pytest.param(b"5\r\nabcde\r", id="mid-crlf"),
        pytest.param(b"5\r\nabcde\r\n", id="before-next-size"),
        pytest.param(b"5\r\nabcde\r\n0", id="mid-size-line"),
        pytest.param(b"5\r\nabcde\r\n0\r\n", id="before-end"),
        pytest.param(b"5\r\nabcde\r\n0\r\nTrailer: 1", id="mid-trailer"),
        pytest.param(b"", id="before-first-chunk"),
    ],
)
async def test_a_close_in_the_middle_of_a_chunked_body_raises_remote_protocol_error(
    serve: Serve, pool: Transport, body: bytes
) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = await serve(Reply(head + body, close=True))
    with pytest.raises(httpx.RemoteProtocolError, match="peer closed connection in the middle"):
        await fetch(pool, server.url())


async def test_a_chunk_size_line_that_never_ends_raises_remote_protocol_error(
    serve: Serve, pool: Transport
) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = await serve(head + b"5;" + b"x" * 2000)  # no line end, and the server waits
    with pytest.raises(httpx.RemoteProtocolError, match="chunk size line too long"):
        await fetch(pool, server.url())


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(answer(200, b"x" * 10)[:-6], id="length"),
        pytest.param(answer(200, b"", "Transfer-Encoding: chunked", length=False), id="chunked"),
        pytest.param(
            answer(200, b"5\r\nabcde", "Transfer-Encoding: chunked", length=False),
            id="chunked-crlf",
        ),
        pytest.param(answer(200, b"abc", length=False), id="until-close"),
    ],
)
async def test_a_reset_that_arrived_before_the_body_was_read_raises_read_error(
    serve: Serve, pool: Transport, data: bytes
) -> None:
    server = await serve(Reply(data, reset=True))
    response = await pool.handle_async_request(request("GET", server.url()))
    (wire,) = open_wires(pool)
    await until(lambda: wire.error is not None)
    with pytest.raises(httpx.ReadError):
        await response.aread()
    await response.aclose()
    assert pool._slots_taken == 0


async def test_a_reset_in_the_middle_of_a_body_raises_read_error(
    serve: Serve, pool: Transport
) -> None:
    server = await serve(Reply(answer(200, b"x" * 10)[:-6], reset=True))
    with pytest.raises(httpx.ReadError):
        await fetch(pool, server.url())


MALFORMED = {
    "status-line": (b"HTTP/1.1 2000 OK\r\n\r\n", "illegal status line: 'HTTP/1.1 2000 OK'"),
    "not-http": (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "illegal status line"),
    "http-2": (b"HTTP/2 200\r\n\r\n", "illegal status line"),
    "no-colon": (b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", "illegal header line"),
    "space-in-name": (b"HTTP/1.1 200 OK\r\nX A: 1\r\n\r\n", "illegal header line"),
    "empty-name": (b"HTTP/1.1 200 OK\r\n: 1\r\n\r\n", "illegal header line"),
    "control-char": (
        b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\n\r\n",
        r"illegal header line: 'X-A: a\\x01b'",
    ),
    "nul": (b"HTTP/1.1 200 OK\r\nX-A: \x00\r\n\r\n", "illegal header line"),
    "fold-first": (b"HTTP/1.1 200 OK\r\n folded\r\nX-A: 1\r\n\r\n", "illegal header line"),
    "conflicting-length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        "conflicting Content-Length headers",
    ),
    "conflicting-list": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok",
        "conflicting Content-Length headers",
    ),
    "negative-length": (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
    "word-length": (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "invalid Content-Length"),
    "empty-length": (b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n", "invalid Content-Length"),
    "huge-length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\n",
        "invalid Content-Length",
    ),
    "chunk-size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "illegal chunk size line: 'zz'",
    ),
    "chunk-size-0x": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\n",
        "illegal chunk size",
    ),
    "chunk-size-empty": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n;x=1\r\n",
        "illegal chunk size",
    ),
    "chunk-size-long": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 17 + b"\r\n",
        "illegal chunk size",
    ),
    "chunk-line-too-long": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;" + b"x" * 2000 + b"\r\n",
        "chunk size line too long",
    ),
    "chunk-without-crlf": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX\r\n0\r\n\r\n",
        "chunk not followed by CRLF",
    ),
}


@pytest.mark.parametrize(("data", "message"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_answer_raises_remote_protocol_error(
    serve: Serve, pool: Transport, data: bytes, message: str
) -> None:
    server = await serve(Reply(data, close=True))
    with pytest.raises(httpx.RemoteProtocolError, match=message):
        await fetch(pool, server.url())
    await fetch(pool, server.url())  # the broken connection was not kept
    assert server.conn_numbers == [1, 2]


async def test_a_head_larger_than_64_kib_raises_remote_protocol_error(
    serve: Serve, pool: Transport
) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"b" * 70_000 + b"\r\n\r\n"
    server = await serve(Reply(head, close=True))
    with pytest.raises(httpx.RemoteProtocolError, match="answer head larger than 64 KiB"):
        await fetch(pool, server.url())


async def test_a_head_that_never_ends_raises_remote_protocol_error(
    serve: Serve, pool: Transport
) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Many: many\r\n" * 6000
    server = await serve(Reply(head))  # more than 64 KiB and no end in sight
    with pytest.raises(httpx.RemoteProtocolError, match="larger than 64 KiB"):
        await fetch(pool, server.url())


async def test_a_head_just_within_64_kib_is_accepted(serve: Serve, pool: Transport) -> None:
    start = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Big: "
    head = start + b"b" * (64 * 1024 - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == 64 * 1024
    server = await serve(head)
    assert len((await fetch(pool, server.url())).headers["x-big"]) > 65_000


@pytest.mark.parametrize("folded", [False, True])
async def test_more_than_256_headers_raise_remote_protocol_error(
    serve: Serve, pool: Transport, folded: bool
) -> None:
    lines = b"".join(b"X-%d: %d\r\n" % (n, n) for n in range(257))
    if folded:
        lines += b"X-Fold: a\r\n b\r\n"  # the line-by-line reading counts too
    server = await serve(Reply(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\n", close=True))
    with pytest.raises(httpx.RemoteProtocolError, match="more than 256 header lines"):
        await fetch(pool, server.url())


@pytest.mark.parametrize("folded", [False, True])
async def test_256_headers_are_accepted(serve: Serve, pool: Transport, folded: bool) -> None:
    lines = b"".join(b"X-%d: %d\r\n" % (n, n) for n in range(255))
    if folded:
        lines += b" folded\r\n"
    lines += b"Content-Length: 0\r\n"
    server = await serve(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\n")
    response = await fetch(pool, server.url())
    assert len(response.headers.raw) == 256


async def test_a_bare_cr_in_an_answer_header_is_an_illegal_header_line(
    serve: Serve, pool: Transport
) -> None:
    server = await serve(b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(httpx.RemoteProtocolError, match="illegal header line"):
        await fetch(pool, server.url())


async def test_a_control_character_in_a_folded_line_is_refused(
    serve: Serve, pool: Transport
) -> None:
    server = await serve(b"HTTP/1.1 200 OK\r\nX-A: a\r\n \x01b\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(httpx.RemoteProtocolError, match="illegal header line"):
        await fetch(pool, server.url())


async def test_a_silent_server_raises_read_timeout(serve: Serve, pool: Transport) -> None:
    server = await serve(Reply(hold=asyncio.Event()))
    with pytest.raises(httpx.ReadTimeout, match="timed out waiting for the answer"):
        await fetch(pool, server.url(), timeout={"read": 0.2})
    assert pool._slots_taken == 0


async def test_a_stalled_body_raises_read_timeout(serve: Serve, pool: Transport) -> None:
    server = await serve(answer(200, b"0123456789")[:-5])
    with pytest.raises(httpx.ReadTimeout, match="timed out reading the answer"):
        await fetch(pool, server.url(), timeout={"read": 0.2})
    await wait(server.conns[0].eof)
    assert pool._slots_taken == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("X-A", "1\r\n", id="crlf-ending-value"),
        pytest.param("X-A", "a\x00b", id="nul-in-value"),
        pytest.param("X-A", "a\x7f", id="del-in-value"),
        pytest.param("X A", "1", id="space-in-name"),
        pytest.param("X-A\r\n", "1", id="crlf-in-name"),
        # a header of the attacker's own, which a check of the joined lines would let by
        pytest.param("X-A", "1\r\nX-Injected: yes", id="crlf-in-value"),
        pytest.param("X-A", "1\nX-Injected: yes", id="lf-in-value"),
        pytest.param("X-A:X-Injected", "yes", id="colon-in-name"),
    ],
)
async def test_an_invalid_request_header_raises_local_protocol_error_before_sending(
    serve: Serve, pool: Transport, name: str, value: str
) -> None:
    server = await serve()
    with pytest.raises(httpx.LocalProtocolError, match="invalid request header"):
        await fetch(pool, server.url(), headers={name: value})
    assert server.conns == []


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/file", "ws://127.0.0.1/"])
async def test_an_unsupported_scheme_raises_unsupported_protocol(pool: Transport, url: str) -> None:
    with pytest.raises(httpx.UnsupportedProtocol, match="unsupported protocol"):
        await fetch(pool, url)


async def test_a_url_without_host_raises_unsupported_protocol(pool: Transport) -> None:
    with pytest.raises(httpx.UnsupportedProtocol, match="missing a host"):
        await fetch(pool, "http:///path")


async def test_errors_through_an_async_client_are_httpx_errors(serve: Serve) -> None:
    server = await serve(Reply(b"HTTP/1.1 999999\r\n\r\n", close=True))
    async with httpx.AsyncClient(transport=Transport(ssl_context=no_tls)) as client:
        with pytest.raises(httpx.RemoteProtocolError) as raised:
            await client.get(server.url())
    assert raised.value.request.url == server.url()


# ======================================================================= request bodies


async def test_a_json_body_is_sent_with_content_length_in_one_write(
    serve: Serve, pool: Transport
) -> None:
    server = await serve()
    await fetch(pool, server.url("/items"), "POST", json={"name": "a", "n": [1, 2]})
    seen = server.seen[0]
    assert seen.line == b"POST /items HTTP/1.1"
    assert seen.header("content-length") == str(len(seen.body))
    assert seen.header("content-type") == "application/json"
    assert seen.body == b'{"name":"a","n":[1,2]}'
    assert seen.header("transfer-encoding") is None
    assert server.conns[0].reads[0] == seen.raw  # head and body arrived as one piece


async def test_a_streamed_body_is_sent_chunk_framed(serve: Serve, pool: Transport) -> None:
    server = await serve()
    await fetch(pool, server.url(), "POST", content=streamed(b"abc", b"", b"defgh"))
    seen = server.seen[0]
    assert seen.header("transfer-encoding") == "chunked"
    assert seen.body == b"abcdefgh"
    assert seen.raw.endswith(b"\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n")


async def test_a_streamed_body_with_a_length_is_sent_raw(serve: Serve, pool: Transport) -> None:
    server = await serve()
    await fetch(
        pool,
        server.url(),
        "PUT",
        content=streamed(b"abc", b"defgh"),
        headers={"Content-Length": "8"},
    )
    seen = server.seen[0]
    assert seen.header("transfer-encoding") is None
    assert seen.raw.endswith(b"\r\n\r\nabcdefgh")


async def test_a_large_upload_waits_for_the_server_to_read(serve: Serve, pool: Transport) -> None:
    body = os.urandom(8 * 1024 * 1024)
    server = await serve()
    await fetch(pool, server.url(), "POST", content=body)
    assert hashlib.sha256(server.seen[0].body).digest() == hashlib.sha256(body).digest()
    await fetch(pool, server.url(), "POST", content=streamed(body[:100], body))
    assert server.seen[1].body == body[:100] + body
    assert server.conn_numbers == [1, 1]


async def test_an_upload_the_server_never_reads_raises_write_timeout(pool: Transport) -> None:
    got_head = asyncio.Event()

    async def read_head_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        got_head.set()
        await asyncio.Event().wait()  # and never reads the body

    async with RawServer(read_head_only) as port:
        with pytest.raises(httpx.WriteTimeout, match="timed out sending the request"):
            await fetch(
                pool,
                f"http://127.0.0.1:{port}/",
                "POST",
                content=b"z" * (32 * 1024 * 1024),
                timeout={"write": 0.3},
            )
    assert got_head.is_set()
    assert pool._slots_taken == 0


async def test_an_upload_reset_by_the_server_raises_write_error(pool: Transport) -> None:
    async def reset_after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reset(writer)

    async with RawServer(reset_after_head) as port:
        with pytest.raises(httpx.WriteError) as raised:
            await fetch(
                pool, f"http://127.0.0.1:{port}/", "POST", content=b"z" * (64 * 1024 * 1024)
            )
    assert isinstance(raised.value.__cause__, OSError)


async def test_a_streamed_upload_to_a_closed_connection_raises_write_error(
    pool: Transport,
) -> None:
    async def close_after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        await until(lambda: all(wire.eof for wire in open_wires(pool)))
        yield b"second"

    async with RawServer(close_after_head) as port:
        with pytest.raises(httpx.WriteError, match="the connection is closed"):
            await fetch(pool, f"http://127.0.0.1:{port}/", "POST", content=body())


async def test_a_streamed_upload_to_a_reset_connection_raises_write_error(
    pool: Transport,
) -> None:
    async def reset_after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reset(writer)

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        await until(lambda: all(wire.error for wire in open_wires(pool)))
        yield b"second"

    async with RawServer(reset_after_head) as port:
        with pytest.raises(httpx.WriteError) as raised:
            await fetch(pool, f"http://127.0.0.1:{port}/", "POST", content=body())
    assert isinstance(raised.value.__cause__, ConnectionResetError)


# ========================================================================= cancellation


async def test_cancelling_mid_answer_closes_the_connection_and_frees_its_slot(
    serve: Serve, make_pool: MakePool
) -> None:
    pool = make_pool(max_connections=1)
    server = await serve(answer(200, b"a" * 1000)[:-500])  # then waits for a next request
    got_some = asyncio.Event()
    client = httpx.AsyncClient(transport=pool)

    async def read_all() -> None:
        async with client.stream("GET", server.url()) as response:
            async for _ in response.aiter_raw():
                got_some.set()

    reading = asyncio.create_task(read_all())
    await wait(got_some)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    await wait(server.conns[0].eof)
    assert (await client.get(server.url(), timeout=httpx.Timeout(1))).content == b"ok"
    assert server.conn_numbers == [1, 2]
    await client.aclose()


async def test_cancelling_a_direct_read_mid_answer_frees_the_connection(
    serve: Serve, make_pool: MakePool
) -> None:
    pool = make_pool(max_connections=1)
    server = await serve(answer(200, b"a" * 1000)[:-500])
    response = await pool.handle_async_request(request("GET", server.url()))
    reading = asyncio.create_task(response.aread())
    await until(lambda: response.stream._remaining == 500)  # type: ignore[attr-defined]
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    await response.aclose()
    await wait(server.conns[0].eof)
    response = await fetch(pool, server.url(), timeout={"pool": 1})
    assert response.content == b"ok"
    assert server.conn_numbers == [1, 2]


async def test_cancelling_while_waiting_for_the_answer_closes_the_connection(
    serve: Serve, make_pool: MakePool
) -> None:
    pool = make_pool(max_connections=1)
    server = await serve(Reply(OK, hold=asyncio.Event()))
    waiting = asyncio.create_task(fetch(pool, server.url()))
    await until(lambda: len(server.seen) == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert pool._slots_taken == 0
    await fetch(pool, server.url(), timeout={"pool": 1})
    assert server.conn_numbers == [1, 2]


async def test_cancelling_a_connect_frees_its_slot(
    make_pool: MakePool, unanswered_port: int, serve: Serve
) -> None:
    pool = make_pool(max_connections=1)
    connecting = asyncio.create_task(fetch(pool, f"http://127.0.0.1:{unanswered_port}/"))
    await until(lambda: pool._slots_taken == 1)
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await connecting
    server = await serve()
    await fetch(pool, server.url(), timeout={"pool": 1})


# ================================================================================ aclose


async def test_aclose_closes_idle_connections_and_refuses_new_requests(serve: Serve) -> None:
    pool = Transport(ssl_context=no_tls)
    server = await serve()
    await fetch(pool, server.url())
    await pool.aclose()
    await wait(server.conns[0].eof)
    with pytest.raises(RuntimeError, match="the transport is closed"):
        await fetch(pool, server.url())
    assert len(server.conns) == 1


async def test_an_answer_read_after_aclose_does_not_keep_its_connection(serve: Serve) -> None:
    server = await serve()
    async with Transport(ssl_context=no_tls) as pool:
        response = await pool.handle_async_request(request("GET", server.url()))
        await until(lambda: all(len(wire.buffer) == 2 for wire in open_wires(pool)))
    assert await response.aread() == b"ok"  # it had arrived already
    await response.aclose()
    assert idle_wires(pool) == []
    await wait(server.conns[0].eof)


async def test_closing_an_async_client_closes_its_transport(serve: Serve) -> None:
    server = await serve()
    async with httpx.AsyncClient(transport=Transport(ssl_context=no_tls)) as client:
        assert (await client.get(server.url())).text == "ok"
        assert (await client.get(server.url())).text == "ok"
    assert server.conn_numbers == [1, 1]
    await wait(server.conns[0].eof)


# =========================================================================== large bodies


async def test_a_large_answer_arrives_intact_in_pieces_of_at_most_64_kib(
    serve: Serve, pool: Transport
) -> None:
    body = os.urandom(5 * 1024 * 1024)
    server = await serve(answer(200, body))
    response = await pool.handle_async_request(request("GET", server.url()))
    digest, sizes = hashlib.sha256(), []
    async for piece in response.stream:
        digest.update(piece)
        sizes.append(len(piece))
    await response.aclose()
    assert digest.digest() == hashlib.sha256(body).digest()
    assert max(sizes) <= 64 * 1024
    assert sum(sizes) == len(body)
    await fetch(pool, server.url())
    assert server.conn_numbers == [1, 1]


async def test_a_slow_reader_still_gets_every_byte(serve: Serve, pool: Transport) -> None:
    body = os.urandom(5 * 1024 * 1024)
    parts = (body[start : start + 300_000] for start in range(0, len(body), 300_000))
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"
    server = await serve(
        answer(200, body), answer(200, chunked, "Transfer-Encoding: chunked", length=False)
    )
    for _ in range(2):
        response = await pool.handle_async_request(request("GET", server.url()))
        (wire,) = open_wires(pool)
        await until(lambda wire=wire: wire._reading_paused)  # it stopped reading the socket
        received = bytearray()
        async for piece in response.stream:
            received += piece
            for _ in range(3):  # dawdle: let the socket and the buffer fill up again
                await asyncio.sleep(0)
        await response.aclose()
        assert hashlib.sha256(received).digest() == hashlib.sha256(body).digest()
    assert server.conn_numbers == [1, 1]


# ==================================================================================== TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "k", folder / "c"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-days", "1", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


@pytest.fixture
def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    key, cert = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture
def trusting(certificate: tuple[Path, Path]) -> Callable[[], ssl.SSLContext]:
    return lambda: ssl.create_default_context(cafile=str(certificate[1]))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_an_https_get_completes_with_a_context_trusting_the_server(
    serve: Serve,
    make_pool: MakePool,
    server_tls: ssl.SSLContext,
    trusting: Callable[[], ssl.SSLContext],
    host: str,
) -> None:
    pool = make_pool(ssl_context=trusting)
    server = await serve(answer(200, b"secret"), tls=server_tls)
    assert (await fetch(pool, server.url("/s", host=host))).content == b"secret"
    assert (await fetch(pool, server.url("/s", host=host))).content == b"ok"
    assert server.conn_numbers == [1, 1]
    assert server.seen[0].line == b"GET /s HTTP/1.1"


async def test_https_with_the_default_context_fails_certificate_verification(
    serve: Serve, make_pool: MakePool, server_tls: ssl.SSLContext
) -> None:
    pool = make_pool(ssl_context=ssl.create_default_context)
    server = await serve(tls=server_tls)
    with pytest.raises(httpx.ConnectError, match="certificate verify failed") as raised:
        await fetch(pool, server.url())
    assert isinstance(raised.value.__cause__, ssl.SSLCertVerificationError)
    assert pool._slots_taken == 0


async def test_the_ssl_context_is_made_only_for_https(
    serve: Serve,
    make_pool: MakePool,
    server_tls: ssl.SSLContext,
    trusting: Callable[[], ssl.SSLContext],
) -> None:
    calls = []

    def counted() -> ssl.SSLContext:
        calls.append(1)
        return trusting()

    pool = make_pool(ssl_context=counted)
    plain = await serve()
    for _ in range(3):
        await fetch(pool, plain.url())
    await fetch(pool, plain.url(), headers={"Connection": "close"})
    await fetch(pool, plain.url())
    assert calls == []
    secure = await serve(tls=server_tls)
    await fetch(pool, secure.url())
    await fetch(pool, secure.url())
    assert len(calls) == 1  # once per new TLS connection


# ================================================================ environment_proxies


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment without any proxy variable, either case."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name == "REQUEST_METHOD":
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {}),
        ({"HTTP_PROXY": "http://proxy:3128"}, {"http://": "http://proxy:3128"}),
        ({"http_proxy": "proxy:3128"}, {"http://": "http://proxy:3128"}),
        ({"HTTPS_PROXY": "https://secure:443"}, {"https://": "https://secure:443"}),
        ({"https_proxy": "secure:8443"}, {"https://": "http://secure:8443"}),
        ({"ALL_PROXY": "socks5://s:1080"}, {"all://": "socks5://s:1080"}),
        ({"all_proxy": "s:1080"}, {"all://": "http://s:1080"}),
        (
            {"HTTP_PROXY": "p:1", "HTTPS_PROXY": "p:2", "ALL_PROXY": "p:3"},
            {"http://": "http://p:1", "https://": "http://p:2", "all://": "http://p:3"},
        ),
        ({"HTTP_PROXY": "p:1", "NO_PROXY": "*"}, {}),
        ({"HTTP_PROXY": "p:1", "no_proxy": "a.test, *"}, {}),
        ({"HTTP_PROXY": ""}, {}),
        (
            {
                "HTTP_PROXY": "p:1",
                "NO_PROXY": "10.1.2.3, ::1,localhost,example.com,.example.org,"
                "http://direct.test,,  ,10.0.0.0/8,LocalHost",
            },
            {
                "http://": "http://p:1",
                "all://10.1.2.3": None,
                "all://[::1]": None,
                "all://localhost": None,
                "all://*example.com": None,
                "all://*.example.org": None,
                "http://direct.test": None,
                "all://10.0.0.0/8": None,
                "all://LocalHost": None,
            },
        ),
        ({"NO_PROXY": "internal.test"}, {"all://*internal.test": None}),
    ],
)
def test_environment_proxies(
    proxy_env: pytest.MonkeyPatch, env: dict[str, str], expected: dict[str, Any]
) -> None:
    for name, value in env.items():
        proxy_env.setenv(name, value)
    assert environment_proxies() == expected


def test_environment_proxies_match_what_httpx_reads(proxy_env: pytest.MonkeyPatch) -> None:
    proxy_env.setenv("HTTP_PROXY", "p:1")
    proxy_env.setenv("NO_PROXY", "127.0.0.1,::1,localhost,example.com,.example.org")
    httpx_reading = getattr(httpx._utils, "get_environment_proxies", None)
    if httpx_reading is None:
        pytest.skip("this httpx has no get_environment_proxies to compare with")
    assert environment_proxies() == httpx_reading()


# ============================================================== through open_client()


@pytest.fixture
def counted_ssl_contexts(monkeypatch: pytest.MonkeyPatch) -> Any:
    """How often ``aegis.steps.http.ssl_context`` made a context, from a clear cache."""
    calls: list[int] = []
    real = httpx.create_ssl_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        calls.append(1)
        return real(*args, **kwargs)

    steps_http.ssl_context.cache_clear()
    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    yield calls
    steps_http.ssl_context.cache_clear()


async def get(client: httpx.AsyncClient, url: str, headers: Any = None) -> httpx.Response:
    async with client.stream("GET", url, headers=headers) as response:
        await response.aread()
    return response


async def test_a_plain_http_run_never_makes_an_ssl_context(
    serve: Serve, proxy_env: pytest.MonkeyPatch, counted_ssl_contexts: list[int]
) -> None:
    server = await serve()
    async with steps_http.open_client() as client:
        for path in ("/a", "/b", "/c"):
            assert (await get(client, server.url(path))).content == b"ok"
        assert (await get(client, server.url("/d", host="localhost"))).content == b"ok"
    assert counted_ssl_contexts == []
    assert (server.seen[0].header("user-agent") or "").startswith("aegis/")
    assert server.conn_numbers == [1, 1, 1, 2]


async def test_http_proxy_carries_remote_urls_but_not_loopback(
    serve: Serve, proxy_env: pytest.MonkeyPatch
) -> None:
    proxy = await serve(answer(200, b"via proxy"))
    service = await serve(answer(200, b"direct"))
    proxy_env.setenv("HTTP_PROXY", f"127.0.0.1:{proxy.port}")
    try:
        async with steps_http.open_client() as client:
            assert (await get(client, "http://qa.example/x")).content == b"via proxy"
            assert (await get(client, service.url("/y"))).content == b"direct"
            localhost = service.url("/z", host="localhost")
            assert (await get(client, localhost)).content == b"ok"
    finally:
        steps_http.ssl_context.cache_clear()
    assert [seen.line for seen in proxy.seen] == [b"GET http://qa.example/x HTTP/1.1"]
    assert [seen.line for seen in service.seen] == [b"GET /y HTTP/1.1", b"GET /z HTTP/1.1"]


async def test_no_proxy_sends_a_remote_url_direct(
    serve: Serve, proxy_env: pytest.MonkeyPatch
) -> None:
    proxy = await serve()
    proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    proxy_env.setenv("NO_PROXY", "127.0.0.2")
    try:
        async with steps_http.open_client() as client:
            with pytest.raises(httpx.ConnectError):
                await get(client, f"http://127.0.0.2:{closed_port()}/")
    finally:
        steps_http.ssl_context.cache_clear()
    assert proxy.conns == []  # refused at 127.0.0.2 itself, not answered by the proxy


async def test_a_cookie_set_by_an_answer_is_sent_with_the_next_request(
    serve: Serve, proxy_env: pytest.MonkeyPatch
) -> None:
    server = await serve(answer(200, b"ok", "Set-Cookie: s=1; Path=/"))
    async with steps_http.open_client() as client:
        await get(client, server.url("/login"))
        assert dict(client.cookies) == {"s": "1"}
        await get(client, server.url("/next"))
        await get(client, server.url("/again"))
    assert server.seen[0].header("cookie") is None
    assert server.seen[1].header("cookie") == "s=1"
    assert server.seen[2].header("cookie") == "s=1"


async def test_answers_without_set_cookie_leave_the_jar_empty(
    serve: Serve, proxy_env: pytest.MonkeyPatch
) -> None:
    server = await serve()
    async with steps_http.open_client() as client:
        for _ in range(3):
            await get(client, server.url())
        assert len(client.cookies) == 0
        assert not client.cookies
    assert all(seen.header("cookie") is None for seen in server.seen)
