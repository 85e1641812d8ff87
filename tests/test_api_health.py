"""HealthCache: against the demo services, a port nobody listens on (9), and a black hole
that accepts connections and never answers (a hung service: it costs the full timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from aegis.api.health import HealthCache
from aegis.config.model import ServiceSpec
from aegis.demo import DemoService, DemoServices, Fault
from aegis.errors import NotFound

LIMIT = 10.0


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class BlackHole:
    """A loopback port that accepts connections, counts them, and never answers."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the listener was closed
            while True:
                connection, _ = self._listener.accept()
                self.accepted += 1
                self._held.append(connection)

    def close(self) -> None:
        self._listener.close()
        with contextlib.suppress(OSError):  # wakes accept() on Linux
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        self._thread.join(LIMIT)
        for connection in self._held:
            connection.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def services(demo: DemoServices, **more: str) -> dict[str, ServiceSpec]:
    found = {
        "qaagent": ServiceSpec(key="qaagent", name="QA Agent", url=demo.qaagent_url),
        "bugalizer": ServiceSpec(key="bugalizer", name="Bugalizer", url=demo.bugalizer_url),
        "nowhere": ServiceSpec(key="nowhere", name="Nowhere", url="http://127.0.0.1:9"),
    }
    for key, url in more.items():
        found[key] = ServiceSpec(key=key, name=key.title(), url=url)
    return found


def health_calls(demo: DemoServices) -> tuple[int, int]:
    """How many health checks the qaagent and the bugalizer have answered."""

    def count(service: DemoService) -> int:
        return sum(1 for call in service.calls if call.path == "/health")

    return count(demo.qaagent), count(demo.bugalizer)


async def test_all_checks_every_service_then_answers_from_the_cache(demo: DemoServices) -> None:
    clock = Clock()
    cache = HealthCache(services(demo), environ={}, ttl=10, clock=clock)
    try:
        first = await cache.all()
        clock.now += 9.9
        again = await cache.all()
        assert health_calls(demo) == (1, 1)
        clock.now += 0.1
        fresh = await cache.all()
    finally:
        await cache.close()

    assert [(h.key, h.status) for h in first] == [
        ("qaagent", "up"),
        ("bugalizer", "up"),
        ("nowhere", "down"),
    ]
    assert first[0].latency_ms is not None and first[0].error is None
    nowhere = first[2]
    assert nowhere.latency_ms is None and "nowhere" in (nowhere.error or "")
    assert again == first
    assert health_calls(demo) == (2, 2)
    assert [h.status for h in fresh] == ["up", "up", "down"]


async def test_concurrent_callers_share_one_refresh(demo: DemoServices) -> None:
    cache = HealthCache(services(demo), environ={}, ttl=10, clock=Clock())
    try:
        answers = await asyncio.gather(*(cache.all() for _ in range(25)))
    finally:
        await cache.close()

    assert health_calls(demo) == (1, 1)
    assert all(answer == answers[0] for answer in answers)


async def test_a_hung_service_costs_its_timeout_once_per_period(
    demo: DemoServices, black_hole: BlackHole
) -> None:
    clock = Clock()
    hung = f"http://127.0.0.1:{black_hole.port}"
    cache = HealthCache(services(demo, hung=hung), environ={}, ttl=10, timeout=0.3, clock=clock)
    try:
        began = time.monotonic()
        answers = await asyncio.gather(*(cache.all() for _ in range(10)))
        first_period = time.monotonic() - began
        began = time.monotonic()
        for _ in range(10):
            cached = await cache.all()
        cached_period = time.monotonic() - began
        accepted_in_first_period = black_hole.accepted
        clock.now += 10
        again = await cache.all()
    finally:
        await cache.close()

    hung_health = answers[0][3]
    assert (hung_health.status, hung_health.error) == (
        "down",
        f"no answer from {hung}/health within 0.3s",
    )
    assert 0.3 <= first_period < 3  # one timeout, not ten
    assert cached_period < 0.3  # no timeout at all
    assert cached == answers[0]
    assert accepted_in_first_period == 1
    assert black_hole.accepted == 2
    assert again[3].status == "down"


async def test_one_checks_live_each_time_and_updates_the_cache(demo: DemoServices) -> None:
    cache = HealthCache(services(demo), environ={}, ttl=10, clock=Clock())
    try:
        before = await cache.all()
        demo.qaagent.inject("/health", Fault(status=500, times=None))
        live = await cache.one("qaagent")
        live_again = await cache.one("qaagent")
        after = await cache.all()
    finally:
        await cache.close()

    assert before[0].status == "up"
    assert (live.status, live_again.status) == ("down", "down")
    assert live.error == f"HTTP 500 from {demo.qaagent_url}/health"
    assert health_calls(demo) == (3, 1)
    assert after[0] == live_again
    assert after[1] == before[1]


async def test_one_for_an_unknown_service_is_not_found(demo: DemoServices) -> None:
    cache = HealthCache(services(demo), environ={})
    with pytest.raises(NotFound, match="unknown service 'nope' \\(known: bugalizer, nowhere"):
        await cache.one("nope")
    await cache.close()
    empty = HealthCache({}, environ={})
    with pytest.raises(NotFound, match="known: none"):
        await empty.one("nope")
    assert await empty.all() == []
    await empty.close()


async def test_the_api_key_goes_to_the_health_endpoint(demo: DemoServices) -> None:
    spec = ServiceSpec(key="qaagent", name="QA", url=demo.qaagent_url, api_key_env="QA_KEY")
    cache = HealthCache({"qaagent": spec}, environ={"QA_KEY": "s3cret"})
    try:
        await cache.one("qaagent")
    finally:
        await cache.close()

    assert demo.qaagent.calls[-1].headers.get("x-api-key") == "s3cret"


async def test_a_huge_health_answer_is_not_read(demo: DemoServices) -> None:
    """Only the status matters: a 50 MiB (or gzip-bombed) body costs no memory."""
    import tracemalloc

    spec = ServiceSpec(key="qaagent", name="QA", url=demo.qaagent_url)
    for fault in (Fault(status=200, size=50 << 20), Fault(status=200, size=50 << 20, gzip=True)):
        demo.qaagent.inject("/health", fault)
        cache = HealthCache({"qaagent": spec}, environ={})
        tracemalloc.start()
        try:
            health = await cache.one("qaagent")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            await cache.close()
        assert health.up, health.error
        assert peak < 5 << 20, f"{peak / 2**20:.1f} MiB"


@pytest.mark.parametrize(
    ("fault", "word"),
    [
        (None, "ok"),
        (Fault(status=200, payload={"status": "degraded"}), "degraded"),
        (Fault(status=200, payload={"status": "x" * 41}), None),
        (Fault(status=200, payload={"status": "bad\x1b[2J"}), None),
        (Fault(status=200, payload=["ok"]), None),
        (Fault(status=200, body="not json"), None),
        (Fault(status=200, payload={"status": "ok", "pad": "x" * 5000}), None),
        (Fault(status=200, payload={"status": "ok"}, gzip=True), None),
    ],
)
async def test_the_services_own_status_word(
    demo: DemoServices, fault: Fault | None, word: str | None
) -> None:
    if fault is not None:
        demo.qaagent.inject("/health", fault)
    spec = ServiceSpec(key="qaagent", name="QA", url=demo.qaagent_url)
    cache = HealthCache({"qaagent": spec}, environ={})
    try:
        health = await cache.one("qaagent")
    finally:
        await cache.close()
    assert (health.status, health.service_status) == ("up", word)


# ------------------------------------------------------- order and the client


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        yield b'{"status": "fine"}'


class HeldClient:
    """A client whose GETs each wait until the test answers them, in any order."""

    def __init__(self) -> None:
        self.requests: list[asyncio.Future[Answer]] = []
        self.arrived = asyncio.Event()

    @contextlib.asynccontextmanager
    async def stream(self, method: str, url: str, headers: dict[str, str]) -> AsyncIterator[Answer]:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.requests.append(future)
        self.arrived.set()
        yield await future

    async def request(self, number: int) -> asyncio.Future[Answer]:
        while len(self.requests) < number:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), LIMIT)
        return self.requests[number - 1]


async def test_a_slow_refresh_does_not_undo_a_later_live_check(demo: DemoServices) -> None:
    clock = Clock()
    client = HeldClient()
    spec = ServiceSpec(key="svc", name="Svc", url="http://svc.test")
    cache = HealthCache({"svc": spec}, environ={}, clock=clock, client=client)

    refresh = asyncio.ensure_future(cache.all())
    slow = await client.request(1)
    clock.now += 1
    live = asyncio.ensure_future(cache.one("svc"))
    (await client.request(2)).set_result(Answer(200))
    assert (await live).status == "up"
    slow.set_result(Answer(503))  # the refresh's check began first and ends last
    refreshed = await refresh

    assert refreshed[0] == await live
    await cache.close()  # a client it was given stays open: it is the giver's


async def test_a_caller_giving_up_does_not_cancel_the_shared_refresh() -> None:
    client = HeldClient()
    spec = ServiceSpec(key="svc", name="Svc", url="http://svc.test")
    cache = HealthCache({"svc": spec}, environ={}, client=client)

    impatient = asyncio.ensure_future(cache.all())
    patient = asyncio.ensure_future(cache.all())
    pending = await client.request(1)
    impatient.cancel()
    pending.set_result(Answer(200))

    assert [h.status for h in await patient] == ["up"]
    assert impatient.cancelled()
    await cache.close()


async def test_close_stops_a_refresh_and_refuses_more_checks() -> None:
    client = HeldClient()
    spec = ServiceSpec(key="svc", name="Svc", url="http://svc.test")
    cache = HealthCache({"svc": spec}, environ={}, client=client)
    waiting = asyncio.ensure_future(cache.all())
    await client.request(1)

    await cache.close()
    await cache.close()

    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(RuntimeError, match="closed"):
        await cache.all()
    with pytest.raises(RuntimeError, match="closed"):
        await cache.one("svc")


async def test_the_cache_opens_one_client_and_closes_it(
    demo: DemoServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aegis.steps.http as http_module

    opened: list[Any] = []
    real = http_module.open_client

    @contextlib.asynccontextmanager
    async def counting() -> Any:
        async with real() as client:
            opened.append(client)
            yield client

    monkeypatch.setattr(http_module, "open_client", counting)
    cache = HealthCache(services(demo), environ={})
    await asyncio.gather(cache.all(), cache.one("qaagent"), cache.one("bugalizer"))
    await cache.one("qaagent")
    await cache.close()

    assert len(opened) == 1
    assert opened[0].is_closed
