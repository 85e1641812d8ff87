"""Running a local program in a process group of its own, and ending all of it.

``run_process`` starts the program in a new session (so it leads a new process group),
keeps the last ``MAX_OUTPUT_BYTES`` of its stdout and stderr, and waits for it. When it
ends, or when the waiting is cancelled (the step's timeout, deadline, or the run being
cancelled), every process left in the group gets SIGTERM and, after ``GRACE_SECONDS``,
SIGKILL: nothing the program started outlives the step, unless it left the group itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass

__all__ = ["GRACE_SECONDS", "MAX_OUTPUT_BYTES", "Finished", "run_process", "signal_name"]

MAX_OUTPUT_BYTES = 64 * 1024
GRACE_SECONDS = 2.0
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Finished:
    """How a program ended: its exit code (``-N``: killed by signal N) and output tails."""

    code: int
    stdout: str
    stderr: str


class _Tail:
    """The last ``limit`` bytes written to it."""

    def __init__(self, limit: int = MAX_OUTPUT_BYTES) -> None:
        self.limit = limit
        self.data = bytearray()
        self.cut = False

    def add(self, piece: bytes) -> None:
        self.data += piece
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]
            self.cut = True

    def text(self) -> str:
        text = self.data.decode("utf-8", "replace")
        if self.cut:  # the first character may be the end of a cut one
            text = text.lstrip("\ufffd")
        return text


class _Collector(asyncio.SubprocessProtocol):
    """Keeps the tails of stdout and stderr; says when the program exits, and when both
    pipes are closed (which a child it left behind may hold open long after)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.tails = {1: _Tail(), 2: _Tail()}
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._open = 2

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.tails[fd].add(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open -= 1
        if self._open == 0 and not self.closed.done():
            self.closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


async def run_process(
    argv: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    grace: float = GRACE_SECONDS,
    cut_short: dict[str, str] | None = None,
) -> Finished:
    """Run ``argv`` to its end (see the module's docstring).

    When the waiting is cancelled, the output so far goes into ``cut_short`` (``stdout``,
    ``stderr``) before the cancellation goes on. Raises ``OSError`` when the program
    cannot be started (not found, not executable).
    """
    loop = asyncio.get_running_loop()
    transport, collector = await loop.subprocess_exec(
        lambda: _Collector(loop),
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    group = transport.get_pid()  # a session leader's group id is its pid
    try:
        try:
            # `Process.wait()` would also wait for the pipes, which a child left
            # behind keeps open: the program's own exit is what counts
            await asyncio.shield(collector.exited)
        except BaseException:
            if cut_short is not None:
                cut_short.update(stdout=collector.tails[1].text(), stderr=collector.tails[2].text())
            raise
        finally:
            try:
                await _end_group(transport, group, grace)
            finally:  # cancelled again while ending it: no more grace
                _signal(group, signal.SIGKILL)
        # the group is gone, so its pipes are closed: what is left to read is buffered
        await asyncio.wait([collector.closed], timeout=grace)
    finally:
        transport.close()
    code = transport.get_returncode()
    return Finished(
        code if code is not None else -signal.SIGKILL,
        collector.tails[1].text(),
        collector.tails[2].text(),
    )


async def _end_group(transport: asyncio.SubprocessTransport, group: int, grace: float) -> None:
    """SIGTERM to the program's group, then SIGKILL if some of it outlives ``grace``."""
    if not _signal(group, signal.SIGTERM):
        return
    loop = asyncio.get_running_loop()
    until = loop.time() + grace
    while loop.time() < until:
        if transport.get_returncode() is not None and not _group_alive(group):
            return
        await asyncio.sleep(_POLL_SECONDS)
    _signal(group, signal.SIGKILL)


def _signal(group: int, number: int) -> bool:
    """Send ``number`` to every process of ``group``; whether any was there to get it."""
    try:
        os.killpg(group, number)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _group_alive(group: int) -> bool:
    """Whether some process of ``group`` still runs. Its ended children wait (as zombies)
    for their new parent to collect them, which takes its time when that parent is a
    container's init; they count as gone. Without ``/proc`` every member counts."""
    if not _signal(group, 0):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:  # pragma: no cover - not Linux
        return True
    return any(entry.isdigit() and _running_in(entry, group) for entry in entries)


def _running_in(pid: str, group: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:  # ended meanwhile
        return False
    return fields[0] != "Z" and int(fields[2]) == group


def signal_name(code: int) -> str:
    """``SIGKILL`` for an exit code of ``-9``, and so on."""
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"
