"""An event stream's connection notices a client that reset, closed or stopped reading."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from aegis.api.stream import StreamOut


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A loopback connection: (the server's side, the client's side, whose receive
    buffer is small, as a client that stops reading soon has it full)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(5)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    with server, client:
        yield server, client


def stream_of(server: socket.socket, stall: float = 0.2) -> StreamOut:
    return StreamOut(server, server.makefile("wb"), stall)


def until(check: StreamOut, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check.gone():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.01)
    return True


def test_a_client_that_is_there_is_not_gone(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    out = stream_of(server)
    out.write(b": hello\n\n")
    assert client.recv(100) == b": hello\n\n"
    client.sendall(b"stray bytes")  # a client may send; it is still there
    assert not out.gone()


def test_a_client_that_closed_is_gone(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    out = stream_of(server)
    client.close()
    assert until(out)


def test_a_client_that_reset_is_gone(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    out = stream_of(server)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sendall(b"x")
    client.close()  # with linger 0: a reset
    assert until(out)


def test_a_client_that_stops_reading_is_gone_after_the_stall_time(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, _ = pair
    out = stream_of(server, stall=0.3)
    server.setblocking(False)
    with pytest.raises(BlockingIOError):
        while True:  # fill every buffer the client does not read
            server.send(b"x" * 65536)
    began = time.monotonic()
    assert not out.gone()  # full, but not for long yet
    assert until(out)
    assert time.monotonic() - began >= 0.3
