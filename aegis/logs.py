"""Log lines for a person: one plain line per warning, and no flood of the same one.

The CLI (and ``aegis serve`` under it) logs through ``setup_logging``'s handler, which
writes ``aegis: warning: MESSAGE`` lines without tracebacks (unless debugging was asked
for). A warning repeated word for word within ``REPEAT_WINDOW`` seconds of being shown is
counted instead of shown again; the count comes with the next time it is shown, or when
logging ends::

    aegis: warning: hook#1: 1000 deliveries waiting; newer events are ...
    aegis: warning: hook#1: 1000 deliveries waiting; newer events are ... (repeated 816 more times)

Debug lines are never coalesced: whoever asked for them wants every one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["REPEAT_WINDOW", "CoalescingHandler", "PlainFormatter", "setup_logging"]

REPEAT_WINDOW = 60.0  # seconds during which the same warning is counted, not shown again
# Distinct warnings remembered at once; past it, those whose window has passed are let go.
MAX_REMEMBERED = 256


class PlainFormatter(logging.Formatter):
    """Log lines without tracebacks, unless debugging was asked for."""

    def __init__(self, debug: bool) -> None:
        super().__init__("aegis: %(levelname)s: %(message)s")
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        if not self.debug:
            record.exc_info = None
            record.exc_text = None
        return super().format(record)


class _Seen:
    __slots__ = ("hidden", "shown_at")

    def __init__(self, shown_at: float) -> None:
        self.shown_at = shown_at
        self.hidden = 0


class CoalescingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that counts repeats of a warning instead of writing each one.

    ``window`` is in seconds of ``clock`` (``time.monotonic`` unless a test brings its
    own). ``close`` writes the counts still owed.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        window: float = REPEAT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(stream)
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[int, str], _Seen] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            super().emit(record)
            return
        now = self.clock()
        key = (record.levelno, record.getMessage())
        seen = self._seen.get(key)
        if seen is not None and now - seen.shown_at < self.window:
            seen.hidden += 1
            return
        if seen is not None and seen.hidden:
            record = _repeated(record, key[1], seen.hidden)
        self._seen.pop(key, None)  # re-inserted last: the dict stays in order of showing
        if len(self._seen) >= MAX_REMEMBERED:
            self._forget(now)
        self._seen[key] = _Seen(now)
        super().emit(record)

    def _forget(self, now: float) -> None:
        """Let go of the warnings whose window has passed, writing what they owe."""
        while self._seen:
            key, seen = next(iter(self._seen.items()))  # the oldest shown
            if now - seen.shown_at < self.window:
                break
            del self._seen[key]
            self._owed(key, seen)

    def _owed(self, key: tuple[int, str], seen: _Seen) -> None:
        if seen.hidden:
            level, message = key
            record = logging.LogRecord("aegis", level, "", 0, message, None, None)
            super().emit(_repeated(record, message, seen.hidden))

    def close(self) -> None:
        self.acquire()
        try:
            seen, self._seen = self._seen, {}
            for key, entry in seen.items():
                self._owed(key, entry)
        finally:
            self.release()
        super().close()

    def handleError(self, record: logging.LogRecord) -> None:
        pass  # a stderr that cannot take a line (closed, full): nothing better to tell it


def _repeated(record: logging.LogRecord, message: str, hidden: int) -> logging.LogRecord:
    copy = logging.makeLogRecord(record.__dict__)
    copy.msg = f"{message} (repeated {hidden} more {'time' if hidden == 1 else 'times'})"
    copy.args = None
    return copy


def setup_logging(stream: TextIO, debug: bool) -> Callable[[], None]:
    """Send the ``aegis`` loggers' lines to ``stream`` (warnings and up, everything when
    ``debug``); returns the function that undoes it, writing the repeat counts owed."""
    handler = CoalescingHandler(stream)
    handler.setFormatter(PlainFormatter(debug))
    logger = logging.getLogger("aegis")
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    logger.propagate = False

    def teardown() -> None:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]

    return teardown
