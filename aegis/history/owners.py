"""Who owns a run still going, and whether that process is gone.

A run row names its owner: the host, the pid, and a token of the process's start. The
host is the hostname with the process's pid namespace (``box pid:[4026532176]``):
containers that share a hostname and a history file each count pids from 1, so a pid
seen from another namespace names some other process; such an owner is judged, like one
on another host, by its heartbeat. On
Linux the token is the boot id and the start time from ``/proc/PID/stat``, so a pid that
was reused by another process is told apart from the one that wrote the row; elsewhere it
is random, and the owner's heartbeat is what tells whether it still lives. A process on
another host can only be judged by its heartbeat.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["Owner", "current_owner", "owner_gone", "owner_host", "parse_stat", "process_state"]


class Owner(NamedTuple):
    """The process that writes a run: its host, pid, and a token of its start."""

    host: str
    pid: int
    token: str


# Tokens read from /proc are comparable between processes of one host; random ones are not.
_PROC_TOKEN = "proc:"
_RANDOM_TOKEN = f"rand:{os.urandom(8).hex()}"


def _boot_id() -> str:
    # Start times count clock ticks since boot, so the boot id tells reboots apart.
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


_BOOT_ID = _boot_id()


def _pid_namespace() -> str:
    # "pid:[4026531836]" on Linux; the same for every process of one namespace.
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def owner_host(hostname: str, namespace: str) -> str:
    """The host part of an owner: the hostname, and the pid namespace when known."""
    return f"{hostname} {namespace}" if namespace else hostname


_HAVE_PROC = os.path.exists("/proc/self/stat")


def _read_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of ``pid`` from ``/proc/PID/stat``; None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return parse_stat(f.read())
    except OSError:
        return None


def parse_stat(raw: bytes) -> tuple[str, str] | None:
    """(state, start time) from the text of a ``/proc/PID/stat``; None if malformed."""
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    if len(fields) < 20:
        return None
    return fields[0].decode(), fields[19].decode()  # fields 3 and 22 of the line


def _token(start: str) -> str:
    return f"{_PROC_TOKEN}{_BOOT_ID}:{start}"


def current_owner() -> Owner:
    """This process as the owner of the runs it records."""
    pid = os.getpid()
    stat = _read_stat(pid)
    host = owner_host(socket.gethostname(), _pid_namespace())
    return Owner(host, pid, _token(stat[1]) if stat else _RANDOM_TOKEN)


def process_state(pid: int) -> str | None:
    """The start token of live process ``pid``, ``""`` if it lives but its token cannot be
    read, or ``None`` if it is gone (a zombie counts as gone: it only waits to be reaped)."""
    if pid <= 0:
        return None
    if sys.platform == "win32":  # pragma: no cover - os.kill would end the process there
        return ""
    try:
        os.kill(pid, 0)
        visible = True
    except ProcessLookupError:
        return None
    except OSError:  # EPERM: alive, another user's; its /proc entry may be hidden
        visible = False
    stat = _read_stat(pid)
    if stat is None:
        return None if visible and _HAVE_PROC else ""
    state, start = stat
    return None if state in ("Z", "X") else _token(start)


def owner_gone(
    owner: Owner,
    heartbeat_at: float,
    *,
    me: Owner,
    now: float,
    stale_after: float,
    probe: Callable[[int], str | None] = process_state,
) -> bool:
    """Whether the process that owns an unfinished run is gone, as seen from ``me``."""
    stale = now - heartbeat_at > stale_after
    if owner.host != me.host:
        return stale
    if owner.pid == me.pid:
        return owner.token != me.token  # our pid, not our token: its old owner died
    state = probe(owner.pid)
    if state is None:
        return True
    if state and owner.token.startswith(_PROC_TOKEN):
        return state != owner.token  # a different token: the pid was reused
    return stale  # tokens that cannot be compared: trust the heartbeat
