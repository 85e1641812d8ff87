"""The bound on the API server's connections and the file limit it is computed from."""

from __future__ import annotations

import resource
import socket
import threading
import time

import pytest

from aegis.api.connections import (
    DESCRIPTORS_KEPT,
    Connections,
    connection_budget,
    raise_file_limit,
)


@pytest.mark.parametrize(
    ("configured", "descriptors", "budget"),
    [
        (1000, None, 1000),  # no limit known: as configured
        (1000, 1_048_576, 1000),
        (1000, 1024, 1024 - DESCRIPTORS_KEPT),  # `ulimit -n 1024`: room is kept for the rest
        (1000, 256, 128),  # a small limit: half of it
        (5, 1024, 5),
        (1000, 1, 1),
    ],
)
def test_the_budget_leaves_descriptors_for_everything_else(
    configured: int, descriptors: int | None, budget: int
) -> None:
    assert connection_budget(configured, descriptors) == budget


class Limits:
    def __init__(self, soft: int, hard: int, refuse_above: int | None = None) -> None:
        self.soft, self.hard, self.refuse_above = soft, hard, refuse_above

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def set(self, which: int, limits: tuple[int, int]) -> None:
        if self.refuse_above is not None and limits[0] > self.refuse_above:
            raise ValueError("not allowed")
        self.soft = limits[0]


def test_the_soft_file_limit_is_raised_to_the_hard_one() -> None:
    limits = Limits(1024, 524_288)
    assert raise_file_limit(limits.get, limits.set) == 524_288 == limits.soft


def test_an_unlimited_hard_limit_gets_the_largest_soft_one_the_kernel_takes() -> None:
    limits = Limits(256, resource.RLIM_INFINITY, refuse_above=24_576)
    assert raise_file_limit(limits.get, limits.set) == 10240 == limits.soft


def test_a_soft_limit_already_at_the_hard_one_stays() -> None:
    limits = Limits(1024, 1024)
    assert raise_file_limit(limits.get, limits.set) == 1024
    refused = Limits(1024, 4096, refuse_above=1024)
    assert raise_file_limit(refused.get, refused.set) == 1024


def test_the_real_limit_is_raised_in_this_process() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    now = raise_file_limit()
    assert now == resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= soft
    assert hard == resource.RLIM_INFINITY or now == hard


def socket_pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    return [socket.socketpair() for _ in range(count)]


def test_room_is_made_by_closing_the_longest_idle_connection() -> None:
    pairs = socket_pairs(3)
    try:
        connections = Connections(2)
        (a, _), (b, b_peer), (c, c_peer) = pairs
        assert connections.admit(a) and connections.admit(b)
        connections.busy(a, True)
        connections.busy(a, False)  # a is now the most recently idle: b goes first
        assert connections.admit(c)
        assert b_peer.recv(10) == b""  # shut down
        connections.closed(b)
        assert len(connections) == 2
        connections.busy(a, True)
        connections.busy(c, True)
        assert not connections.admit(b)  # every one answering: no room
        assert not connections.make_room()
        connections.busy(c, False)
        assert connections.make_room() and c_peer.recv(10) == b""
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()


def test_waiting_for_a_close_ends_at_the_close_or_the_timeout() -> None:
    (a, _), (b, _) = pairs = socket_pairs(2)
    try:
        connections = Connections(5)
        connections.admit(a)
        connections.admit(b)
        began = time.monotonic()
        connections.wait_for_a_close(0.05)  # nothing closes
        assert time.monotonic() - began >= 0.05
        closer = threading.Timer(0.05, connections.closed, (a,))
        closer.start()
        connections.wait_for_a_close(30)
        closer.join()
        assert len(connections) == 1
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()
