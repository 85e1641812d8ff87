"""A burst of run requests against a real `aegis serve` process with
``max_concurrent_runs: 4``: every request accepted, every run finished and recorded, the
queue served in order, memory bounded, and ``/health`` quick throughout.

Each run's discover answers after 30 ms, so the queue really builds up: 200 runs at 4
at a time take at least 1.5 s. Memory is the server process's resident set, read from
``/proc`` before and after each burst.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_api_http import TIMEOUT, poll
from test_crashes import start_server, stop_server

from aegis.demo import DemoServices, Fault

AREA = "Load"

BURST = 200
CONCURRENCY = 4
CLIENTS = 40  # keep-alive connections the burst is sent over, BURST / CLIENTS each
RSS_GROWTH_MB = 30  # for one burst, records and events of 200 runs included
RSS_LEAK_MB = 10  # a second burst after the first


def write_config(directory: Path, demo: DemoServices) -> Path:
    path = directory / "aegis.yaml"
    path.write_text(
        f"""
services:
  qaagent: {{url: "{demo.qaagent_url}"}}
workflows:
  smoke:
    steps: [{{type: discover, service: qaagent}}]
history: {{path: history.db}}
server: {{host: 127.0.0.1, port: 0, max_concurrent_runs: {CONCURRENCY}}}
event_log_size: 5000
"""
    )
    return path


class KeepAlive:
    """One persistent HTTP/1.1 connection (reopened if the server closes it)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)

    def request(self, method: str, path: str) -> tuple[int, Any]:
        for attempt in (1, 2):
            try:
                self.conn.request(method, path)
                response = self.conn.getresponse()
                return response.status, json.loads(response.read())
            except (ConnectionError, http.client.RemoteDisconnected):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def burst(url: str) -> list[tuple[int, Any]]:
    """BURST POSTs at once over CLIENTS keep-alive connections; the answers."""
    go = threading.Barrier(CLIENTS)
    answers: list[list[tuple[int, Any]]] = [[] for _ in range(CLIENTS)]

    def client(index: int) -> None:
        connection = KeepAlive(url)
        try:
            go.wait(TIMEOUT)
            for _ in range(BURST // CLIENTS):
                answers[index].append(connection.request("POST", "/api/workflows/smoke/run"))
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 4)
    return [answer for per_client in answers for answer in per_client]


class HealthProbe:
    """Asks /health every 20 ms on its own connection while started; keeps latencies."""

    def __init__(self, url: str) -> None:
        self.connection = KeepAlive(url)
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe)

    def _probe(self) -> None:
        while not self._stop.wait(0.02):
            began = time.monotonic()
            try:
                status, body = self.connection.request("GET", "/health")
            except OSError as exc:
                self.failures.append(repr(exc))
                continue
            self.latencies.append(time.monotonic() - began)
            if status != 200 or body.get("status") != "ok":
                self.failures.append(f"{status} {body}")

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self.connection.close()

    def p99(self) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[98]


@pytest.fixture
def slow_discover(demo: DemoServices) -> Iterator[DemoServices]:
    demo.qaagent.inject("/api/routes", Fault(status=None, delay=0.03, times=None))
    yield demo


def test_a_burst_of_200_runs(reliability: Any, tmp_path: Path, slow_discover: DemoServices) -> None:
    config = write_config(tmp_path, slow_discover)
    server, client = start_server(config)
    url = f"http://{client.host}:{client.port}"
    api = KeepAlive(url)
    figures: dict[str, float] = {}
    try:
        # warm up: imports, threads and caches the first runs create
        for _ in range(CONCURRENCY * 2):
            api.request("POST", "/api/workflows/smoke/run?wait=30")
        rss_before = rss_mb(server.pid)
        began = time.monotonic()
        with HealthProbe(url) as health:
            answers = burst(url)
            figures["accepted_s"] = time.monotonic() - began
            accepted = [body["run_id"] for status, body in answers if status == 202]
            poll(
                lambda: (
                    api.request("GET", "/api/runs?status=succeeded&limit=1")[1]["total"]
                    >= BURST + CONCURRENCY * 2
                ),
                timeout=120,
            )
        figures["finished_s"] = time.monotonic() - began
        rss_after = rss_mb(server.pid)
        answers_again = burst(url)  # a second burst: memory must not keep growing
        poll(
            lambda: (
                api.request("GET", "/api/runs?status=succeeded&limit=1")[1]["total"]
                >= 2 * BURST + CONCURRENCY * 2
            ),
            timeout=120,
        )
        rss_again = rss_mb(server.pid)
        _, started = api.request("GET", "/api/events?type=workflow.started&limit=1000")
        _, completed = api.request("GET", "/api/events?type=workflow.completed&limit=1000")
        _, page = api.request("GET", "/api/runs?limit=1")
    finally:
        api.close()
        stop_server(server)

    statuses = sorted({status for status, _ in answers + answers_again})
    assert statuses == [202] and len(accepted) == BURST
    assert page["total"] == 2 * BURST + CONCURRENCY * 2  # none lost, none doubled

    # Acceptance order is the order of recording (the history's seq); start order is
    # the order of the workflow.started events.
    with sqlite3.connect(tmp_path / "history.db") as db:
        rows = db.execute("SELECT run_id, status FROM runs ORDER BY seq").fetchall()
    recorded = [run_id for run_id, _ in rows]
    assert {status for _, status in rows} == {"succeeded"}
    assert set(accepted) <= set(recorded)
    start_order = [event["run_id"] for event in started["events"]]
    accepted_order = [run_id for run_id in recorded if run_id in set(start_order)]
    assert start_order == accepted_order

    # never more than max_concurrent_runs at once
    timeline = sorted(
        [(e["id"], +1) for e in started["events"]] + [(e["id"], -1) for e in completed["events"]]
    )
    running = peak = 0
    for _, change in timeline:
        running += change
        peak = max(peak, running)
    assert peak == CONCURRENCY

    growth, leak = rss_after - rss_before, rss_again - rss_after
    print(
        f"\nload: {BURST} POSTs accepted in {figures['accepted_s']:.2f} s, all finished in "
        f"{figures['finished_s']:.2f} s; /health p99 {health.p99() * 1000:.1f} ms, max "
        f"{max(health.latencies) * 1000:.1f} ms over {len(health.latencies)} probes; RSS "
        f"{rss_before:.1f} -> {rss_after:.1f} MB after one burst, {rss_again:.1f} MB after two"
    )
    assert growth < RSS_GROWTH_MB and leak < RSS_LEAK_MB
    assert health.failures == [] and len(health.latencies) >= 10
    assert health.p99() < 1.0

    reliability.record(
        f"{BURST} run requests at once, `max_concurrent_runs: {CONCURRENCY}`",
        expected=f"all answered 202, all run and recorded, never more than {CONCURRENCY} at once",
        observed=f"{len(accepted)} answered 202; {page['total']} runs in history (warm-up and "
        f"a second burst included), all succeeded; at most {peak} running at once",
    )
    reliability.record(
        "queue order under the burst",
        expected="runs start in the order they were accepted",
        observed=f"start order of {len(start_order)} runs equals their order of acceptance",
    )
    reliability.record(
        "memory of the server across bursts",
        expected="bounded: finished runs are not kept in memory",
        observed=f"RSS grew under {RSS_GROWTH_MB} MB over the first burst and under "
        f"{RSS_LEAK_MB} MB over a second",
    )
    reliability.record(
        "`/health` during the burst",
        expected="answers every time, quickly",
        observed=f"{len(health.failures)} failures; p99 under 1 s",
    )
