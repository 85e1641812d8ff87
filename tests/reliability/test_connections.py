"""Many connections against a real ``aegis serve`` process with a low file limit
(``ulimit -n 1024``, set for the child alone): the server keeps answering, does not spin,
and event-stream clients that leave are let go. And a warning that repeats under load
(a webhook receiver slower than the events) is one line with a count.

The server's CPU time is read from ``/proc`` over a one-second window; connections are
real loopback sockets from this process, bounded in number and each in time.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_crashes import SERVING, TIMEOUT, environ, read_until, stop_server

from aegis.api.connections import raise_file_limit

AREA = "Load"

NOFILE = 1024  # the usual `ulimit -n`
IDLE = 1100  # idle connections: more than the server's descriptors
HEALTH_MS = 100  # the acceptance bound for /health among them
SPIN_CPU_S = 0.3  # CPU seconds in a one-second window that would mean a busy loop


def write_config(directory: Path) -> Path:
    path = directory / "aegis.yaml"
    path.write_text(
        "workflows:\n  w: {steps: [{type: report}]}\n"
        "history: {path: ':memory:'}\n"
        "server: {host: 127.0.0.1, port: 0}\n"
    )
    return path


@contextlib.contextmanager
def limited_server(directory: Path, spare: int = 0) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`aegis serve` with ``NOFILE`` descriptors, ``spare`` of them already taken (as a
    process holding other files would); the process and its port."""
    taken = [os.open(os.devnull, os.O_RDONLY) for _ in range(spare)]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "aegis", "--config", str(write_config(directory)), "serve"],
            env=environ(directory),
            cwd=directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=limit,
            pass_fds=taken,
        )
    finally:
        for fd in taken:
            os.close(fd)
    try:
        url = read_until(process, SERVING).group(1)
        yield process, int(url.rsplit(":", 1)[1])
    finally:
        if process.poll() is None:
            stop_server(process)


@pytest.fixture(autouse=True)
def enough_descriptors_here() -> None:
    soft = raise_file_limit()
    if soft is not None and soft < IDLE + 200:
        pytest.skip(f"this process may open only {soft} files")


def open_idle(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    return sockets


def health_ms(port: int) -> float:
    """One /health on a new connection, in milliseconds; fails the test if not 200."""
    began = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
        assert response.status == 200
    finally:
        connection.close()
    return (time.perf_counter() - began) * 1000


def first_health_ms(port: int, within: float = 15.0) -> float:
    """/health as soon as it answers (the server may still be working through the burst)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return health_ms(port)
        except (OSError, AssertionError, http.client.HTTPException):
            if time.monotonic() > deadline:
                pytest.fail(f"/health did not answer within {within:g} s")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_over_a_second(pid: int) -> float:
    before = cpu_seconds(pid)
    threading.Event().wait(1.0)  # the window measured, not a wait for something
    return cpu_seconds(pid) - before


def test_1100_idle_connections_under_ulimit_1024(reliability: Any, tmp_path: Path) -> None:
    with limited_server(tmp_path) as (process, port):
        sockets = open_idle(port, IDLE)
        try:
            first_health_ms(port)
            took = sorted(health_ms(port) for _ in range(5))
            spent = cpu_over_a_second(process.pid)
        finally:
            for sock in sockets:
                sock.close()
        assert took[2] < HEALTH_MS, took  # the median of five
        assert spent < SPIN_CPU_S, spent
        assert health_ms(port) < 1000
    reliability.record(
        f"{IDLE} idle connections to `aegis serve` under `ulimit -n {NOFILE}`",
        expected=f"`/health` still answers in < {HEALTH_MS} ms; no busy accept loop",
        observed=f"`/health` 200 in < {HEALTH_MS} ms (median of 5) among them; under "
        f"{SPIN_CPU_S:g} CPU s per second; the longest idle connections were closed",
    )


def test_out_of_descriptors_the_server_waits_instead_of_spinning(
    reliability: Any, tmp_path: Path
) -> None:
    # 400 descriptors already taken: accept() meets EMFILE before the connection bound.
    with limited_server(tmp_path, spare=400) as (process, port):
        sockets = open_idle(port, 800)
        try:
            first_health_ms(port)
            spent = cpu_over_a_second(process.pid)
            assert health_ms(port) < 2000
        finally:
            for sock in sockets:
                sock.close()
        assert spent < SPIN_CPU_S * 2, spent
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "cannot accept connections" in line]
    assert lines[0].endswith("Too many open files; closing idle ones"), err
    assert len(lines) == 1 or (len(lines) == 2 and "(repeated" in lines[1]), err
    reliability.record(
        "800 connections to a server whose descriptors run out first (EMFILE)",
        expected="no busy loop: the longest idle connection is closed to make room; one warning",
        observed="`/health` 200 among them; the accept loop idle; one `cannot accept "
        "connections: Too many open files` line, its repeats counted in one more; exit 0",
    )


def test_event_stream_clients_that_leave_are_let_go(reliability: Any, tmp_path: Path) -> None:
    with limited_server(tmp_path) as (process, port):
        streams = []
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /api/events/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while b"retry: 2000" not in received:
                received += sock.recv(1000)
            streams.append(sock)
        threads_with = threads_of(process.pid)
        for sock in streams:
            sock.close()
        deadline = time.monotonic() + 10
        while threads_of(process.pid) > threads_with - 50 and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        assert threads_of(process.pid) <= threads_with - 50
    reliability.record(
        "50 event-stream clients that close while the stream is quiet",
        expected="each noticed and its thread ended, without waiting for a heartbeat",
        observed="all 50 threads ended within 10 s (heartbeat every 15 s)",
    )


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


class SlowReceiver(ThreadingHTTPServer):
    """A webhook receiver on loopback that answers a delivery each time it is let."""

    daemon_threads = True

    def __init__(self) -> None:
        self.gate = threading.Semaphore(0)
        super().__init__(("127.0.0.1", 0), _Answer)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Answer(BaseHTTPRequestHandler):
    server: SlowReceiver

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.gate.acquire(timeout=TIMEOUT)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_webhook_queue_that_keeps_overflowing_is_one_warning(reliability: Any) -> None:
    from aegis.config.model import WebhookSpec
    from aegis.events import EventBus
    from aegis.logs import setup_logging
    from aegis.webhooks import WebhookDispatcher

    receiver = SlowReceiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    err = io.StringIO()
    teardown = setup_logging(err, debug=False)
    hooks = WebhookDispatcher([WebhookSpec(receiver.url)], max_pending=2)
    bus = EventBus()
    hooks.attach(bus)
    try:
        for round in range(30):  # the queue fills, drains, fills again: a warning each time
            for _ in range(3):
                bus.emit("step.completed", "run-1", "wf", round=round)
            receiver.gate.release(2)
            deadline = time.monotonic() + TIMEOUT
            while hooks.pending and time.monotonic() < deadline:
                threading.Event().wait(0.005)
        during = err.getvalue().splitlines()
    finally:
        receiver.gate.release(100)
        hooks.close(5)
        teardown()
        receiver.shutdown()
        receiver.server_close()
    assert len(during) == 1 and during[0].endswith(
        "2 deliveries waiting; newer events are not delivered until it catches up"
    ), during
    assert err.getvalue().splitlines()[1:] == [during[0] + " (repeated 29 more times)"]
    reliability.record(
        "a webhook queue that overflows 30 times (a receiver slower than the events)",
        expected="the same warning shown once, with its count",
        observed="one `2 deliveries waiting` line, then the same with `(repeated 29 more "
        "times)` when logging ends",
    )
