"""Who owns a run still going, and whether that process is gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import aegis.history.owners as owners
from aegis.history.owners import (
    Owner,
    current_owner,
    owner_gone,
    owner_host,
    parse_stat,
    process_state,
)

ME = Owner("ci-1", 100, "proc:boot:5000")
NOW = 10_000.0
FRESH = NOW - 30
STALE = NOW - 121


@pytest.mark.parametrize(
    ("owner", "heartbeat_at", "states", "gone"),
    [
        # another host: only the heartbeat tells
        (Owner("ci-2", 100, "proc:boot:5000"), FRESH, {}, False),
        (Owner("ci-2", 100, "proc:boot:5000"), STALE, {}, True),
        # this process, by any store
        (ME, STALE, {}, False),
        # our pid with another token: the pid was reused by us
        (Owner("ci-1", 100, "proc:boot:4000"), FRESH, {}, True),
        # a pid that is not alive
        (Owner("ci-1", 200, "proc:boot:4000"), FRESH, {200: None}, True),
        # alive with the same token, however old its heartbeat
        (Owner("ci-1", 200, "proc:boot:4000"), STALE, {200: "proc:boot:4000"}, False),
        # alive with another token: the pid belongs to a newer process now
        (Owner("ci-1", 200, "proc:boot:4000"), FRESH, {200: "proc:boot:4100"}, True),
        # alive, tokens not comparable: the heartbeat tells
        (Owner("ci-1", 200, "rand:abc"), FRESH, {200: "proc:boot:4100"}, False),
        (Owner("ci-1", 200, "rand:abc"), STALE, {200: "proc:boot:4100"}, True),
        (Owner("ci-1", 200, "proc:boot:4000"), FRESH, {200: ""}, False),
        (Owner("ci-1", 200, "proc:boot:4000"), STALE, {200: ""}, True),
    ],
)
def test_owner_gone(
    owner: Owner, heartbeat_at: float, states: dict[int, str | None], gone: bool
) -> None:
    assert (
        owner_gone(
            owner,
            heartbeat_at,
            me=ME,
            now=NOW,
            stale_after=120,
            probe=lambda pid: states.get(pid),
        )
        is gone
    )


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of ours that waits for its stdin to close."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    yield proc
    if proc.stdin is not None:
        proc.stdin.close()
    proc.wait()


def test_the_token_of_this_process_is_read_from_proc() -> None:
    me = current_owner()

    assert me.host == f"{socket.gethostname()} {os.readlink('/proc/self/ns/pid')}"
    assert me.pid == os.getpid()
    assert me.token.startswith("proc:")
    assert process_state(os.getpid()) == me.token


def test_a_live_process_has_its_own_token(child: subprocess.Popen[bytes]) -> None:
    token = process_state(child.pid)

    assert token is not None and token.startswith("proc:")
    assert token != current_owner().token


def test_a_reaped_process_is_gone(child: subprocess.Popen[bytes]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    child.wait()

    assert process_state(child.pid) is None


def test_a_zombie_is_gone(child: subprocess.Popen[bytes]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    # Wait for the exit but leave the process unreaped, as a careless parent would.
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)

    assert process_state(child.pid) is None


@pytest.mark.parametrize("pid", [0, -1])
def test_no_pid_is_gone(pid: int) -> None:
    assert process_state(pid) is None


def test_another_users_hidden_process_is_alive_without_a_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def denied(pid: int, signal: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", denied)
    monkeypatch.setattr(owners, "_read_stat", lambda pid: None)

    assert process_state(4242) == ""


def test_without_proc_a_live_process_has_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(owners, "_HAVE_PROC", False)
    monkeypatch.setattr(owners, "_read_stat", lambda pid: None)

    assert process_state(os.getpid()) == ""


def test_without_proc_the_token_is_random(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(owners, "_read_stat", lambda pid: None)

    assert current_owner().token.startswith("rand:")


def test_the_host_is_the_hostname_alone_where_namespaces_cannot_be_read() -> None:
    assert owner_host("ci-1", "") == "ci-1"
    assert owner_host("ci-1", "pid:[7]") == "ci-1 pid:[7]"


def test_parse_stat_counts_fields_after_the_command_name() -> None:
    rest = " ".join(str(n) for n in range(4, 30))
    raw = f"77 (a (weird) name) S {rest}".encode()

    assert parse_stat(raw) == ("S", "22")
    assert parse_stat(b"77 (short) S 1 2 3") is None


def test_the_boot_id_is_read_when_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert owners._boot_id() == Path("/proc/sys/kernel/random/boot_id").read_text().strip()

    def missing(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError

    monkeypatch.setattr("builtins.open", missing)
    assert owners._boot_id() == ""


def test_the_stat_of_a_process_that_is_gone_cannot_be_read(
    child: subprocess.Popen[bytes],
) -> None:
    assert child.stdin is not None
    child.stdin.close()
    child.wait()

    assert owners._read_stat(child.pid) is None
