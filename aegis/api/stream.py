"""An event stream's connection, and noticing a client that has left it.

A client that closes a quiet stream (no event, no heartbeat due) would otherwise hold its
thread and socket (CLOSE-WAIT) until the next write failed; one that stops reading holds
the kernel's buffers. ``StreamOut.gone`` looks without sending: the end of the client's
side, or a send buffer that stayed full for ``STALL_TIMEOUT`` seconds.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

__all__ = ["SEND_BUFFER", "STALL_TIMEOUT", "StreamOut"]

# Seconds a client may leave what was sent unread (the send buffer full) before it is
# dropped; a send that makes no progress for as long fails.
STALL_TIMEOUT = 10.0
SEND_BUFFER = 64 * 1024  # bytes the kernel may hold for an event stream's client


class StreamOut:
    """An event stream's connection: ``write`` sends (raising ``OSError`` once the client
    is gone, or ``TimeoutError`` when a send made no progress for the stall timeout);
    ``gone`` tells, without sending, that the client closed its side or has left its
    data unread (the send buffer full) for ``stall_timeout`` seconds."""

    def __init__(self, connection: socket.socket, wfile: Any, stall_timeout: float) -> None:
        connection.settimeout(stall_timeout)  # a send that makes no progress this long fails
        # What a client that stops reading can make the kernel hold for it.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self._connection = connection
        self._wfile = wfile
        self._stall_timeout = stall_timeout
        self._full_since: float | None = None

    def write(self, data: bytes) -> None:
        self._wfile.write(data)
        self._wfile.flush()

    def gone(self) -> bool:
        readable, writable, hung_up = _ready(self._connection)
        if hung_up:
            return True  # reset, or closed both ways
        if readable:
            try:  # readable: this does not wait
                peeked = self._connection.recv(1, socket.MSG_PEEK)
            except OSError:  # reset
                return True
            if not peeked:
                return True  # the client closed its side
        if writable:
            self._full_since = None
            return False
        now = time.monotonic()
        if self._full_since is None:
            self._full_since = now
        return now - self._full_since >= self._stall_timeout


def _ready(connection: socket.socket) -> tuple[bool, bool, bool]:
    """Whether ``connection`` has something to read (or its end), room to send, and
    whether it was reset or closed both ways."""
    if hasattr(select, "poll"):  # select() cannot watch descriptors past 1023
        poller = select.poll()
        poller.register(connection, select.POLLIN | select.POLLOUT)
        events = dict(poller.poll(0)).get(connection.fileno(), 0)
        hung_up = bool(events & (select.POLLHUP | select.POLLERR))
        return bool(events & select.POLLIN), bool(events & select.POLLOUT), hung_up
    readable, writable, _ = select.select([connection], [connection], [], 0)  # pragma: no cover
    return bool(readable), bool(writable), False  # pragma: no cover
