"""A keep-alive HTTP load generator for the benchmark: plain Python, no dependencies.

    python bench/loadgen.py --port P [--host H] [--path /health] [--connections 32]
                            [--duration 5] [--processes 2]

Each worker process drives its share of the connections from one ``selectors`` loop over
non-blocking raw sockets: every connection has exactly one request in flight (no
pipelining), HTTP/1.1 keep-alive, Nagle off. A response is complete when its headers and
``Content-Length`` bytes of body have arrived; its latency is the time from sending the
request to that moment. The workers connect first, wait for a common start time, count
only the responses that complete inside the measuring window, and print their latencies
(microseconds) as JSON; the parent adds them up.

On a 2-core machine the generator competes with the server for CPU: one Python process
can send far more requests than a ``ThreadingHTTPServer`` can answer, but every cycle it
spends is one the server does not get. Several worker processes keep one slow connection
from holding back the others; the figures it reports are therefore a lower bound on what
the server does with a client on another machine.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

__all__ = ["LoadResult", "run_load"]


@dataclass
class LoadResult:
    """What a load run measured: completed requests, errors and latencies in seconds."""

    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
        return ordered[index]


class _Connection:
    __slots__ = ("buffer", "expected", "header_end", "sent_at", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.header_end = -1
        self.expected = -1
        self.sent_at = 0.0


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    raise ValueError("response without Content-Length")


def _worker(
    host: str, port: int, path: str, connections: int, start_at: float, duration: float
) -> dict[str, object]:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n\r\n".encode()
    selector = selectors.DefaultSelector()
    conns: list[_Connection] = []
    for _ in range(connections):
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = _Connection(sock)
        conns.append(conn)
        selector.register(sock, selectors.EVENT_READ, conn)
    latencies: list[int] = []
    errors = 0
    clock = time.perf_counter
    # wall clock for the common start, perf_counter for everything measured
    while time.time() < start_at:
        time.sleep(min(0.01, max(0.0, start_at - time.time())))
    began = clock()
    end = began + duration
    for conn in conns:
        conn.sent_at = clock()
        conn.sock.sendall(request)
    open_count = len(conns)
    while open_count:
        now = clock()
        if now >= end:
            break
        for key, _ in selector.select(timeout=end - now):
            conn = key.data
            try:
                chunk = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:  # the server closed the connection: count it, drop it
                errors += 1
                selector.unregister(conn.sock)
                conn.sock.close()
                open_count -= 1
                continue
            buffer = conn.buffer
            buffer += chunk
            if conn.header_end < 0:
                conn.header_end = buffer.find(b"\r\n\r\n")
                if conn.header_end < 0:
                    continue
                head = bytes(buffer[: conn.header_end])
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
                conn.expected = conn.header_end + 4 + _content_length(head)
            if len(buffer) < conn.expected:
                continue
            done = clock()
            if done <= end:
                latencies.append(round((done - conn.sent_at) * 1e6))
            del buffer[: conn.expected]
            conn.header_end = conn.expected = -1
            conn.sent_at = clock()
            conn.sock.sendall(request)
    elapsed = min(clock(), end) - began
    for conn in conns:
        conn.sock.close()
    return {"latencies_us": latencies, "errors": errors, "seconds": elapsed}


def run_load(
    host: str,
    port: int,
    path: str,
    *,
    connections: int = 32,
    duration: float = 5.0,
    processes: int = 2,
    python: str = sys.executable,
) -> LoadResult:
    """Drive ``connections`` keep-alive connections for ``duration`` seconds from
    ``processes`` worker processes; raises ``RuntimeError`` if a worker fails."""
    processes = max(1, min(processes, connections))
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    start_at = time.time() + 0.5 + 0.1 * processes
    workers = [
        subprocess.Popen(
            [
                python,
                os.path.abspath(__file__),
                "--worker",
                "--host",
                host,
                "--port",
                str(port),
                "--path",
                path,
                "--connections",
                str(share),
                "--duration",
                str(duration),
                "--start-at",
                repr(start_at),
            ],
            stdout=subprocess.PIPE,
        )
        for share in shares
    ]
    latencies: list[float] = []
    errors = 0
    seconds = 0.0
    for worker in workers:
        out, _ = worker.communicate(timeout=duration + 60)
        if worker.returncode != 0:
            raise RuntimeError(f"load worker failed (exit {worker.returncode})")
        part = json.loads(out)
        latencies.extend(us / 1e6 for us in part["latencies_us"])
        errors += int(part["errors"])
        seconds = max(seconds, float(part["seconds"]))
    return LoadResult(len(latencies), errors, seconds, latencies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/health")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = _worker(
            args.host, args.port, args.path, args.connections, args.start_at, args.duration
        )
        json.dump(result, sys.stdout)
        return 0
    load = run_load(
        args.host,
        args.port,
        args.path,
        connections=args.connections,
        duration=args.duration,
        processes=args.processes,
    )
    print(
        f"{load.rate:,.0f} req/s, {load.requests} requests, {load.errors} errors, "
        f"p50 {load.percentile(0.5) * 1000:.2f} ms, p99 {load.percentile(0.99) * 1000:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
