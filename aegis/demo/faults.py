"""Faults the reference services can be told to commit: slow, wrong or no answers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["FAULT_MODES", "STREAM_BYTES", "TRICKLE_BYTES", "Fault", "padded_json"]


# How a faulty call is answered (``Fault.mode``).
FAULT_MODES = ("answer", "drop", "reset", "reset_mid_body", "stall", "raw")
# Pieces of a trickled body, and of a streamed large one.
TRICKLE_BYTES = 16
STREAM_BYTES = 64 * 1024


@dataclass(frozen=True)
class Fault:
    """A misbehaviour injected into one endpoint (or every endpoint, with path ``*``).

    It affects the next ``times`` calls (``None``: every call until cleared), after letting
    the first ``after`` calls through unharmed; with ``method`` set, only calls of that
    method count. With ``processed``, the service first does what the call asks (files
    the report), as a server behind a failing proxy would. Each call it affects first
    waits ``delay`` seconds, then is answered as ``mode`` says:

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
    method: str | None = None
    processed: bool = False

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
