"""The queue's SQL against a real PostgreSQL server: keys, rules, claims, leases, reaping."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from aegis.history import pg_queue
from aegis.history.pg_connect import PgTarget
from aegis.history.pg_queue import CANCEL_CHANNEL, QUEUE_CHANNEL, PgQueue, Waker


@pytest.fixture
def queue(pg_url: str) -> Iterator[PgQueue]:
    opened = PgQueue.open(PgTarget.parse(pg_url))
    try:
        yield opened
    finally:
        opened.close()


def put(queue: PgQueue, run_id: str, workflow: str = "w", **rules: object) -> None:
    done = queue.enqueue(run_id, workflow, params={"n": 1}, trigger="api", **rules)  # type: ignore[arg-type]
    assert done.run_id == run_id
    queue.ready(run_id)


def test_a_key_names_its_first_run_until_it_expires(queue: PgQueue) -> None:
    assert queue.claim_key("w", "k", "r1", ttl=60) is None
    assert queue.claim_key("w", "k", "r2", ttl=60) == "r1"
    assert queue.claim_key("other", "k", "r3", ttl=60) is None  # unique per workflow
    # a key older than the TTL is taken over by the new run
    assert queue.claim_key("w", "k", "r4", ttl=0) is None
    assert queue.claim_key("w", "k", "r5", ttl=60) == "r4"
    queue.forget_key("w", "k", "r4")
    assert queue.claim_key("w", "k", "r6", ttl=60) is None
    assert queue.expire_keys(ttl=0) == 2


def test_claims_take_the_oldest_ready_runs_once(queue: PgQueue) -> None:
    unready = queue.enqueue("r0", "w", params={}, trigger="api")
    assert unready.run_id == "r0"
    for n in range(1, 4):
        put(queue, f"r{n}")
    first = queue.claim("a", 2, lease=30)
    assert [c.run_id for c in first] == ["r1", "r2"]
    assert first[0].params == {"n": 1} and first[0].trigger == "api"
    assert [c.run_id for c in queue.claim("b", 5, lease=30)] == ["r3"]  # r0 is not ready
    assert queue.claim("b", 0, lease=30) == []
    assert queue.queued_count() == 1
    assert queue.renew("a", lease=30) == {"r1": False, "r2": False}
    queue.finish("r1", "a")
    assert not queue.contains("r1") and queue.contains("r2")


def test_a_limit_counts_the_workflows_claimed_runs(queue: PgQueue) -> None:
    for n in range(3):
        put(queue, f"l{n}", "limited", limit=1)
    put(queue, "o1", "open")
    claimed = queue.claim("a", 4, lease=30)
    assert [c.run_id for c in claimed] == ["l0", "o1"]  # the others pass the full workflow
    assert queue.claim("b", 4, lease=30) == []
    queue.finish("l0", "a")
    assert [c.run_id for c in queue.claim("b", 4, lease=30)] == ["l1"]


def test_many_claimers_never_share_a_run(queue: PgQueue) -> None:
    for n in range(60):
        put(queue, f"r{n:02d}", f"w{n % 3}", limit=5 if n % 2 else None)
    got: list[str] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while True:
            claims = queue.claim(name, 3, lease=30)
            for claim in claims:
                queue.finish(claim.run_id, name)
            with lock:
                got.extend(c.run_id for c in claims)
                if len(got) >= 60:
                    return
            if not claims and queue.queued_count() == 0:
                return

    threads = [threading.Thread(target=claimer, args=(f"c{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(got) == [f"r{n:02d}" for n in range(60)]


def test_skip_refuses_past_the_count_and_names_the_oldest(queue: PgQueue) -> None:
    put(queue, "s1", "one", skip_at=1, limit=1)
    refused = queue.enqueue("s2", "one", params={}, trigger="api", skip_at=1, limit=1)
    assert refused.run_id is None and refused.blocking == "s1" and refused.going == 1
    assert queue.oldest_of("one", 5) == [("s1", False)]


def test_the_bound_counts_waiting_runs(queue: PgQueue) -> None:
    put(queue, "b1")
    put(queue, "b2")
    assert queue.enqueue("b3", "w", params={}, trigger="api", max_queued=2).full
    queue.claim("a", 1, lease=30)
    assert queue.enqueue("b3", "w", params={}, trigger="api", max_queued=2).run_id == "b3"


def test_cancel_removes_a_waiting_run_and_flags_a_claimed_one(queue: PgQueue) -> None:
    put(queue, "c1")
    put(queue, "c2")
    queue.claim("a", 1, lease=30)
    assert queue.request_cancel("c2") == "queued" and not queue.contains("c2")
    assert queue.request_cancel("c1") == "claimed"
    assert queue.renew("a", lease=30) == {"c1": True}
    assert queue.request_cancel("nope") is None


def test_reaping_takes_back_expired_leases(queue: PgQueue) -> None:
    put(queue, "gone")
    put(queue, "again", "requeued")
    put(queue, "cancelled", "requeued")
    put(queue, "alive")
    queue.claim("dead", 3, lease=-1)  # already expired
    queue.request_cancel("cancelled")
    queue.claim("live", 1, lease=60)
    again, gone = queue.reap(["requeued"])
    assert [c.run_id for c in again] == ["again"]
    assert sorted((c.run_id, c.cancel_requested) for c in gone) == [
        ("cancelled", True),
        ("gone", False),
    ]
    assert queue.claim("next", 5, lease=30) == []  # not before its record says queued
    queue.ready("again")
    assert [c.run_id for c in queue.claim("next", 5, lease=30)] == ["again"]
    assert queue.renew("live", lease=30) == {"alive": False}
    assert queue.release("alive", "live") and not queue.release("alive", "live")
    assert queue.claim("next", 5, lease=30) == []
    queue.ready("alive")
    assert [c.run_id for c in queue.claim("next", 5, lease=30)] == ["alive"]


def test_a_row_its_submitter_never_made_ready_goes_after_a_while(
    queue: PgQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue.enqueue("stranded", "w", params={}, trigger="api")
    queue.reap([])
    assert queue.claim("a", 1, lease=30) == []
    monkeypatch.setattr(pg_queue, "STRANDED_AFTER", -1.0)
    queue.reap([])
    assert [c.run_id for c in queue.claim("a", 1, lease=30)] == ["stranded"]


def test_workers_are_registered_seen_and_forgotten(queue: PgQueue) -> None:
    queue.register("w1", host="h", pid=1, kind="worker", slots=2)
    queue.register("w2", host="h", pid=2, kind="serve", slots=4)
    queue.draining("w2")
    seen = {w["id"]: w for w in queue.workers()}
    assert seen["w1"]["max_concurrent"] == 2 and seen["w2"]["draining"]
    queue.forget("w1")
    assert [w["id"] for w in queue.workers()] == ["w2"]
    assert queue.forget_silent(older_than=-1) == 1 and queue.workers() == []


def test_the_waker_hears_enqueues_and_cancels(queue: PgQueue, pg_url: str) -> None:
    heard: list[str] = []
    got = threading.Event()

    def wake(channel: str) -> None:
        heard.append(channel)
        got.set()

    waker = Waker(PgTarget.parse(pg_url), wake).start()
    try:
        queue.enqueue("n1", "w", params={}, trigger="api")
        for _ in range(100):  # the LISTEN may not be in place yet: notify until heard
            queue.ready("n1")
            if got.wait(0.1):
                break
        assert QUEUE_CHANNEL in heard
        queue.claim("a", 1, lease=30)
        got.clear()
        queue.request_cancel("n1")
        assert got.wait(10) and CANCEL_CHANNEL in heard
    finally:
        waker.stop()
