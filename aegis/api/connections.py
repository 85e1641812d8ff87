"""The API server's open connections: how many there may be, which are idle, who goes.

Each connection costs a thread and a file descriptor, so their number is bounded
(``server.max_connections``, and at most what the process's descriptor limit leaves once
files, the engine's connections to services and webhooks have theirs). A new connection
past the bound takes the place of the connection idle the longest (a keep-alive client
between requests, or one that never sent a byte), which is closed as a server may close
an idle keep-alive connection at any time; only when every connection is answering a
request (event streams among them) is the new one refused with a short 503.

The accept thread calls ``admit``; the connection's thread reports ``busy`` around each
request; ``closed`` once its socket is closed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

__all__ = [
    "DESCRIPTORS_KEPT",
    "Connections",
    "connection_budget",
    "raise_file_limit",
]

# Descriptors left to everything but client connections (history, the engine's sockets to
# services, webhooks, the loop), or half the limit when the limit is small.
DESCRIPTORS_KEPT = 256


class Connections:
    """The open connections of one server, with at most ``limit`` of them at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: set[socket.socket] = set()
        # Idle ones in the order they became idle, the longest idle first.
        self._idle: dict[socket.socket, None] = {}
        self._closing: set[socket.socket] = set()  # told to go, not yet gone
        self._changed = threading.Condition()

    def __len__(self) -> int:
        with self._changed:
            return len(self._open)

    def admit(self, connection: socket.socket) -> bool:
        """Take ``connection`` in, closing the longest idle one if there is no room.
        False when every connection is answering a request: refuse it."""
        with self._changed:
            if len(self._open) - len(self._closing) >= self.limit and not self._evict():
                return False
            self._open.add(connection)
            self._idle[connection] = None
            return True

    def make_room(self) -> bool:
        """Close the longest idle connection (the process ran out of descriptors)."""
        with self._changed:
            return self._evict()

    def _evict(self) -> bool:
        victim = next(iter(self._idle), None)
        if victim is None:
            return False
        del self._idle[victim]
        self._closing.add(victim)
        # Its thread, waiting for a request, reads the end of the stream and closes it.
        with contextlib.suppress(OSError):
            victim.shutdown(socket.SHUT_RDWR)
        return True

    def busy(self, connection: socket.socket, busy: bool) -> None:
        """``connection`` starts (or ends) answering a request."""
        with self._changed:
            if busy:
                self._idle.pop(connection, None)
            else:
                if connection in self._open and connection not in self._closing:
                    self._idle[connection] = None  # the most recently idle
                self._changed.notify_all()

    def closed(self, connection: socket.socket) -> None:
        with self._changed:
            self._open.discard(connection)
            self._idle.pop(connection, None)
            self._closing.discard(connection)
            self._changed.notify_all()

    def wait_for_a_close(self, timeout: float) -> None:
        """Wait until some connection closes, or ``timeout`` seconds."""
        with self._changed:
            count = len(self._open)
            self._changed.wait_for(lambda: len(self._open) < count, timeout)

    def close_all(self, grace: float = 0.0) -> None:
        """Shut every connection down, so idle threads end now; those answering a request
        get up to ``grace`` seconds to finish first."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._idle) == len(self._open), grace)
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


def connection_budget(configured: int, descriptors: int | None) -> int:
    """How many connections may be open at once: ``configured``, or fewer when the
    descriptor limit (``None``: unknown) cannot hold that many beside everything else."""
    if descriptors is None:
        return configured
    kept = min(DESCRIPTORS_KEPT, descriptors // 2)
    return max(1, min(configured, descriptors - kept))


def raise_file_limit(
    getrlimit: Callable[[int], tuple[int, int]] | None = None,
    setrlimit: Callable[[int, tuple[int, int]], None] | None = None,
) -> int | None:
    """Raise the soft limit on open files to the hard one; returns the soft limit now in
    force (``None`` where there is no such limit, as on Windows)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    get = getrlimit or resource.getrlimit
    set_ = setrlimit or resource.setrlimit
    which = resource.RLIMIT_NOFILE
    soft, hard = get(which)
    # An unlimited hard limit (macOS) is not a number the kernel takes for the soft one.
    wanted = [hard] if hard != resource.RLIM_INFINITY else [1 << 20, 1 << 16, 10240]
    for target in wanted:
        if soft != resource.RLIM_INFINITY and target <= soft:
            break
        try:
            set_(which, (target, hard))
            return target
        except (ValueError, OSError):
            continue
    return None if soft == resource.RLIM_INFINITY else soft
