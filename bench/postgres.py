"""The PostgreSQL figures of ``bench/run.py`` (group ``pg``): a private server, the built
file's ``aegis worker`` and ``aegis serve`` processes on it, and what users of a shared
store feel: how many runs the workers get through, how soon a triggered run starts, how
fast a page of a large history comes back, and how soon a dead worker's runs are freed.

The server is the tests' (``tests/postgres_server.py``): a cluster in a temporary
directory on a free port, with ``fsync`` off (the figures are Aegis's cost, not the
disk's). Everything, PostgreSQL included, shares this machine's two cores.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from postgres_server import PostgresServer  # noqa: E402

SERVING = re.compile(r"aegis: serving on http://127\.0\.0\.1:(\d+)")
WORKING = re.compile(r"aegis: worker (\S+) working on ")
FAILOVER_LEASE = 5.0  # seconds: the lease of the failover figure's workers


class Probe:
    """A loopback service: ``/hit`` notes when each request arrived; ``/block`` holds
    its request until ``release``."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.arrived = threading.Condition()
        self.released = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path.startswith("/block"):
                    owner.released.wait(120)
                else:
                    with owner.arrived:
                        owner.arrivals.append(time.perf_counter())
                        owner.arrived.notify_all()
                body = b"{}"
                with contextlib.suppress(OSError):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_arrivals(self, count: int, timeout: float = 30.0) -> None:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.arrivals) >= count, timeout):
                raise RuntimeError(f"the probe saw {len(self.arrivals)} of {count} requests")

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def write_config(directory: Path, url: str, probe: str, *, lease: float, slots: int) -> Path:
    text = f"""\
services:
  probe: {{url: "{probe}"}}
history:
  url: "{url}"
  lease: {lease:g}s
server:
  host: 127.0.0.1
  port: 0
  max_concurrent_runs: {slots}
  max_queued_runs: 100000
workflows:
  noop:
    steps: [{{type: report}}]
  probe:
    steps: [{{type: http, service: probe, with: {{path: /hit}}}}]
  held:
    steps: [{{type: http, service: probe, timeout: 120, with: {{path: /block}}}}]
"""
    path = directory / "aegis.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class Proc:
    """An ``aegis serve`` or ``aegis worker`` of the built file, once it said it is ready."""

    def __init__(self, python: str, pyz: Path, config: Path, command: str) -> None:
        pattern = SERVING if command == "serve" else WORKING
        self.process = subprocess.Popen(
            [python, str(pyz), "--config", str(config), command],
            cwd=config.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        seen = []
        for line in self.process.stderr:
            seen.append(line)
            found = pattern.search(line)
            if found:
                self.found = found.group(1)
                break
        else:
            raise RuntimeError(f"aegis {command} did not start: {''.join(seen)[-2000:]}")
        # keep reading, so a chatty process never blocks on a full pipe
        threading.Thread(target=self.process.stderr.read, daemon=True).start()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running(procs: list[Proc]) -> Iterator[list[Proc]]:
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


class Db:
    """A connection of the benchmark's own to one database of the server."""

    def __init__(self, server: PostgresServer, name: str) -> None:
        from aegis.history.pg_connect import PgTarget, connect

        self.connection, _ = connect(PgTarget.parse(server.url(name)))

    def run(self, sql: str, **params: Any) -> list[list[Any]]:
        return self.connection.run(sql, **params)  # type: ignore[no-any-return]

    def scalar(self, sql: str, **params: Any) -> Any:
        return self.run(sql, **params)[0][0]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()


def poll(check: Callable[[], bool], timeout: float, what: str, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench: timed out waiting for {what}")
        time.sleep(every)


# ---------------------------------------------------------------------- figures


def throughput(
    server: PostgresServer, python: str, pyz: Path, workdir: Path, probe: Probe,
    workers: int, runs: int,
) -> float:  # fmt: skip
    """Runs per second that ``workers`` ``aegis worker`` processes claim and finish: all
    ``runs`` are enqueued unready, made ready in one statement, and timed until the
    last one is recorded finished."""
    name = server.database()
    directory = workdir / f"throughput-{workers}"
    directory.mkdir()
    config = write_config(directory, server.url(name), probe.url, lease=30, slots=8)
    db = Db(server, name)
    try:
        with running([Proc(python, pyz, config, "worker") for _ in range(workers)]):
            db.run(
                "INSERT INTO aegis.queue (run_id, workflow, enqueued_at, trigger, ready)"
                " SELECT 'bench' || lpad(i::text, 8, '0'), 'noop',"
                " extract(epoch from clock_timestamp()) + i * 1e-6, 'api', false"
                " FROM generate_series(1, :n) AS i",
                n=runs,
            )
            began = time.perf_counter()
            db.run("UPDATE aegis.queue SET ready = true")
            db.run("NOTIFY aegis_queue")

            def done() -> bool:
                if db.scalar("SELECT count(*) FROM aegis.queue"):
                    return False
                finished = db.scalar("SELECT count(*) FROM aegis.runs WHERE status = 'succeeded'")
                return int(finished) >= runs

            poll(done, 300, f"{runs} runs to finish")
            return runs / (time.perf_counter() - began)
    finally:
        db.close()
        server.drop(name)


def trigger_latency(
    server: PostgresServer, python: str, pyz: Path, workdir: Path, probe: Probe, count: int
) -> list[float]:
    """Seconds from ``POST /api/workflows/probe/run`` (sent) to the probe service seeing
    the run's first step, with one idle ``aegis serve`` (its embedded worker)."""
    name = server.database()
    directory = workdir / "latency"
    directory.mkdir()
    config = write_config(directory, server.url(name), probe.url, lease=30, slots=4)
    samples = []
    try:
        with running([Proc(python, pyz, config, "serve")]) as (serve,):
            conn = http.client.HTTPConnection("127.0.0.1", int(serve.found), timeout=30)
            for i in range(count + 3):  # the first three warm the connections up
                seen = len(probe.arrivals)
                sent = time.perf_counter()
                conn.request("POST", "/api/workflows/probe/run", body=b"{}",
                             headers={"Content-Type": "application/json"})  # fmt: skip
                response = conn.getresponse()
                response.read()
                if response.status != 202:
                    raise RuntimeError(f"POST /run answered {response.status}")
                probe.wait_arrivals(seen + 1)
                if i >= 3:
                    samples.append(probe.arrivals[seen] - sent)
                time.sleep(0.05)  # idle between triggers: the figure is for an idle system
            conn.close()
    finally:
        server.drop(name)
    return samples


def history_page(
    server: PostgresServer, python: str, pyz: Path, workdir: Path, probe: Probe, stored: int,
    reps: int,
) -> tuple[list[float], float]:  # fmt: skip
    """``GET /api/history?limit=20`` latencies with ``stored`` finished runs of two
    workflows, three steps each, and how long seeding them took."""
    name = server.database()
    directory = workdir / "history"
    directory.mkdir()
    config = write_config(directory, server.url(name), probe.url, lease=30, slots=4)
    db = Db(server, name)
    try:
        from aegis.history.pg_connect import PgTarget
        from aegis.history.postgres import PostgresHistory

        PostgresHistory(PgTarget.parse(server.url(name))).close()  # makes the schema
        began = time.perf_counter()
        seed_runs(db, stored)
        seeded = time.perf_counter() - began
        with running([Proc(python, pyz, config, "serve")]) as (serve,):
            conn = http.client.HTTPConnection("127.0.0.1", int(serve.found), timeout=30)
            total = json.loads(_get(conn, "/api/history?limit=1"))["total"]
            if total != stored:
                raise RuntimeError(f"the history holds {total} runs, expected {stored}")
            for _ in range(20):
                _get(conn, "/api/history?limit=20")
            samples = []
            for _ in range(reps):
                began_one = time.perf_counter()
                _get(conn, "/api/history?limit=20")
                samples.append(time.perf_counter() - began_one)
            conn.close()
        return samples, seeded
    finally:
        db.close()
        server.drop(name)


def seed_runs(db: Db, count: int) -> None:
    """``count`` finished runs with three steps each, written in a few statements."""
    stamp = (
        "to_char(timestamp '2026-01-01' + i * interval '1 second',"
        ' \'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\')'
    )
    db.run(
        "INSERT INTO aegis.runs (run_id, workflow, status, verdict, started_at, finished_at,"
        " duration_ms, trigger, params)"
        f" SELECT lpad(to_hex(i), 12, '0'), CASE WHEN i % 2 = 0 THEN 'quick' ELSE 'noop' END,"
        f" 'succeeded', 'passed', {stamp}, {stamp}, 9.0, 'cli', '{{}}'"
        " FROM generate_series(1, :n) AS i",
        n=count,
    )
    for position, (step, kind) in enumerate(
        (("discover", "discover"), ("test", "test"), ("report", "report"))
    ):
        db.run(
            "INSERT INTO aegis.steps (run_seq, name, type, service, status, duration_ms,"
            " data, attempts)"
            f" SELECT seq, '{step}', '{kind}', NULL, 'succeeded', {position + 1}.0,"
            " '{\"total\": 10}', '[]' FROM aegis.runs"
        )
    db.run("ANALYZE")


def failover(server: PostgresServer, python: str, pyz: Path, workdir: Path, probe: Probe) -> float:
    """Seconds from SIGKILL of a worker holding 10 runs until none of them is left
    ``running`` (another worker marks them ``interrupted``)."""
    name = server.database()
    directory = workdir / "failover"
    directory.mkdir()
    config = write_config(directory, server.url(name), probe.url, lease=FAILOVER_LEASE, slots=10)
    db = Db(server, name)
    probe.released.clear()
    try:
        with running([Proc(python, pyz, config, "worker")]) as (doomed,):
            db.run(
                "INSERT INTO aegis.queue (run_id, workflow, enqueued_at, trigger)"
                " SELECT 'held' || i, 'held', extract(epoch from clock_timestamp()), 'api'"
                " FROM generate_series(1, 10) AS i"
            )
            db.run("NOTIFY aegis_queue")
            poll(
                lambda: db.scalar("SELECT count(*) FROM aegis.runs WHERE status = 'running'") == 10,
                60,
                "the worker to hold 10 runs",
            )
            with running([Proc(python, pyz, config, "worker")]):
                killed = time.perf_counter()
                doomed.process.kill()
                doomed.process.wait()
                poll(
                    lambda: (
                        db.scalar("SELECT count(*) FROM aegis.runs WHERE status = 'interrupted'")
                        == 10
                    ),
                    FAILOVER_LEASE + 60,
                    "the 10 runs to be marked interrupted",
                    every=0.05,
                )
                return time.perf_counter() - killed
    finally:
        probe.released.set()
        db.close()
        server.drop(name)


def _get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path} answered {response.status}")
    return body


def bench_postgres(
    quick: bool, python: str, pyz: Path, workdir: Path, figure: Callable[..., Any],
    progress: Callable[[str], None],
) -> Sequence[Any]:  # fmt: skip
    """The figures (made with ``figure``, bench/run.py's ``Figure``)."""
    runs = 500 if quick else 1000
    stored = 100_000 if quick else 1_000_000
    figures = []
    server = PostgresServer().start()
    probe = Probe()
    try:
        per_count = {}
        for workers in (1, 2, 4):
            progress(f"postgres: {runs} no-op runs with {workers} worker(s)")
            per_count[workers] = throughput(server, python, pyz, workdir, probe, workers, runs)
        for workers, rate in per_count.items():
            figures.append(figure(
                f"pg_runs_per_s_{workers}", f"no-op runs finished per second, {workers} worker(s)",
                "runs/s", [rate], 200.0 if workers == 4 else None, op=">=",
                note=f"{rate / workers:.0f} runs/s per worker",
            ))  # fmt: skip
        progress("postgres: trigger to first step")
        latencies = trigger_latency(server, python, pyz, workdir, probe, 15 if quick else 60)
        ordered = sorted(latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        figures.append(figure(
            "pg_trigger_p50", "POST /run to first step started, p50 (idle, NOTIFY)", "ms",
            [statistics.median(latencies) * 1000], 50.0, note=f"p99 {p99:.1f} ms",
            extra={"p99_ms": p99},
        ))  # fmt: skip
        progress(f"postgres: /api/history with {stored:,} runs stored")
        reps = 50 if quick else 200
        pages, seeded = history_page(server, python, pyz, workdir, probe, stored, reps)
        ordered = sorted(pages)
        figures.append(figure(
            "pg_history_p50", f"GET /api/history?limit=20 p50, {stored:,} runs in PostgreSQL",
            "ms", [statistics.median(pages) * 1000], 10.0,
            note=f"p99 {ordered[int(len(ordered) * 0.99)] * 1000:.1f} ms; seeded in {seeded:.0f} s",
        ))  # fmt: skip
        progress("postgres: failover of a killed worker")
        took = failover(server, python, pyz, workdir, probe)
        figures.append(figure(
            "pg_failover", f"SIGKILL of a worker holding 10 runs to all interrupted (lease"
            f" {FAILOVER_LEASE:g} s)", "s", [took], FAILOVER_LEASE + 5,
        ))  # fmt: skip
    finally:
        probe.close()
        server.stop()
    return figures
