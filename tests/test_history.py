"""History stores: the same behaviour tests against MemoryHistory and a SQLite file,
then ``open_history`` and its fallback to memory."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pg_history import pg_history_database, pg_history_url  # noqa: F401 (fixtures)

import aegis.history.sqlite as sqlite_module
from aegis.config.model import HistorySpec
from aegis.errors import NotFound
from aegis.history import SHOWN_MATCHES, HistoryStore, HistoryUnavailable, open_history
from aegis.history.memory import MemoryHistory
from aegis.history.sqlite import SqliteHistory
from aegis.records import Attempt, Run, RunStatus, StepResult, StepStatus, Verdict

# --------------------------------------------------------------------- records


def stamp(second: int) -> str:
    """A run JSON timestamp ``second`` seconds after a fixed moment."""
    minutes, seconds = divmod(second, 60)
    return f"2026-01-01T10:{minutes:02d}:{seconds:02d}.000Z"


def make_run(
    run_id: str,
    workflow: str = "pipeline",
    *,
    at: int = 0,
    trigger: str = "cli",
    steps: tuple[StepResult, ...] = (),
) -> Run:
    """A run as the engine records it when it starts."""
    return Run(
        run_id=run_id,
        workflow=workflow,
        status=RunStatus.RUNNING,
        started_at=stamp(at),
        trigger=trigger,
        steps=steps,
    )


def make_step(
    name: str,
    status: StepStatus = StepStatus.SUCCEEDED,
    *,
    data: dict[str, Any] | None = None,
    attempts: int = 1,
    error: str | None = None,
) -> StepResult:
    failed = status is StepStatus.FAILED
    return StepResult(
        name=name,
        type=name.split("-")[0],
        service=None if name == "report" else "qaagent",
        status=status,
        duration_ms=12.5,
        data=data if data is not None else {"total": 3, "passed": 3, "failed": 0},
        attempts=tuple(
            Attempt(
                attempt=n,
                started_at=stamp(n),
                duration_ms=4.25,
                success=not failed and n == attempts,
                error=error if failed or n < attempts else None,
                error_kind="http" if failed or n < attempts else None,
                status_code=503 if failed or n < attempts else None,
            )
            for n in range(1, attempts + 1)
        ),
        error=error,
        error_kind="http" if error else None,
        skip_reason="condition has_failures is false" if status is StepStatus.SKIPPED else None,
    )


def finished(
    run: Run,
    status: RunStatus = RunStatus.SUCCEEDED,
    *,
    steps: tuple[StepResult, ...] | None = None,
) -> Run:
    """``run`` as the engine records it when it ends."""
    return replace(
        run,
        status=status,
        verdict=Verdict.PASSED if status is RunStatus.SUCCEEDED else Verdict.FAILED,
        steps=run.steps if steps is None else steps,
        finished_at=stamp(59),
        duration_ms=1234.5,
    )


def rich_run() -> Run:
    """A finished run with every field of the run JSON filled in, nested data included."""
    failures = [{"test": "checkout ✓ total", "message": 'expected 3, got "4"', "line": 12}]
    return finished(
        make_run("feedc0ffee01", "full_pipeline", trigger="api"),
        RunStatus.FAILED,
        steps=(
            make_step("discover", data={"routes": [{"path": "/a", "methods": ["GET"]}]}),
            make_step(
                "test",
                data={"total": 10, "passed": 9, "failed": 1, "failures": failures, "r": 0.1},
                attempts=3,
            ),
            make_step("submit_bugs", StepStatus.FAILED, error="HTTP 422 from bugalizer: x"),
            make_step("verify", StepStatus.SKIPPED, data={}, attempts=0),
            make_step("report", StepStatus.CANCELLED, data={}, attempts=0),
        ),
    )


# ---------------------------------------------------------------------- stores

MakeStore = Callable[..., HistoryStore]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """Opens stores of one kind (several on one file for SQLite, on one database for
    PostgreSQL); none may warn."""
    opened: list[HistoryStore] = []
    warnings: list[str] = []
    pg_url = request.getfixturevalue("pg_history_url") if request.param == "postgres" else ""

    def make(max_runs: int = 0) -> HistoryStore:
        store: HistoryStore
        if request.param == "memory":
            store = MemoryHistory(max_runs=max_runs, warn=warnings.append)
        elif request.param == "postgres":
            from aegis.history.postgres import PostgresHistory

            store = PostgresHistory.open(pg_url, max_runs=max_runs, warn=warnings.append)
        else:
            store = SqliteHistory(tmp_path / "history.db", max_runs=max_runs, warn=warnings.append)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
    assert warnings == []


@pytest.fixture
def store(make_store: MakeStore) -> HistoryStore:
    return make_store()


def ids(runs: list[Run]) -> list[str]:
    return [r.run_id for r in runs]


# ------------------------------------------------------------ recording a run


def test_start_records_a_running_run_at_once(store: HistoryStore) -> None:
    store.start(make_run("aaaa00000001"))

    run = store.get("aaaa00000001")
    assert run is not None
    assert run.status is RunStatus.RUNNING
    assert (run.steps, run.finished_at, run.verdict) == ((), None, None)
    assert ids(store.list()) == ["aaaa00000001"]
    assert store.count(status="running") == 1


def test_steps_appear_as_they_end_and_a_later_result_replaces_an_earlier(
    store: HistoryStore,
) -> None:
    store.start(make_run("aaaa00000001"))
    store.update_step("aaaa00000001", make_step("test", StepStatus.FAILED, error="boom"))
    store.update_step("aaaa00000001", make_step("discover"))
    store.update_step("aaaa00000001", make_step("test", attempts=2))

    run = store.get("aaaa00000001")
    assert run is not None
    assert [s.name for s in run.steps] == ["test", "discover"]  # order of first report
    assert run.steps[0] == make_step("test", attempts=2)
    assert run.status is RunStatus.RUNNING


def test_a_step_of_an_unknown_run_is_ignored(store: HistoryStore) -> None:
    store.update_step("nope00000000", make_step("test"))

    assert store.get("nope00000000") is None
    assert store.count() == 0


def test_finish_round_trips_the_full_run_json(store: HistoryStore) -> None:
    run = rich_run()
    store.start(replace(run, status=RunStatus.RUNNING, steps=(), verdict=None))
    store.update_step(run.run_id, run.steps[1])
    store.finish(run)

    got = store.get(run.run_id)
    assert got is not None
    assert got.to_dict() == run.to_dict()
    assert got == run


def test_params_are_kept_from_the_start_and_listed(store: HistoryStore) -> None:
    params = {"suite": "full", "count": 3, "token": "***", "none": None}
    run = replace(make_run("p1"), params=params)
    store.start(run)
    assert store.get("p1") == run
    store.finish(finished(run))
    got = store.get("p1")
    assert got is not None and got.params == params
    assert store.list()[0].params == params


def test_finish_replaces_the_steps_reported_while_running(store: HistoryStore) -> None:
    run = make_run("aaaa00000001")
    store.start(run)
    store.update_step(run.run_id, make_step("test", StepStatus.FAILED, error="x"))
    final = (make_step("discover"), make_step("test"), make_step("report", StepStatus.SKIPPED))
    store.finish(finished(run, steps=final))

    got = store.get(run.run_id)
    assert got is not None
    assert got.steps == final
    assert (got.status, got.verdict, got.finished_at) == (
        RunStatus.SUCCEEDED,
        Verdict.PASSED,
        stamp(59),
    )


def test_finish_without_start_still_records_the_run(store: HistoryStore) -> None:
    run = finished(make_run("aaaa00000001", steps=(make_step("test"),)), RunStatus.CANCELLED)
    store.finish(run)

    assert store.get(run.run_id) == run


def test_a_step_reported_after_the_end_replaces_that_step(store: HistoryStore) -> None:
    run = finished(make_run("aaaa00000001", steps=(make_step("discover"), make_step("test"))))
    store.finish(run)
    store.update_step(run.run_id, make_step("test", attempts=2))

    got = store.get(run.run_id)
    assert got is not None
    assert got.steps == (make_step("discover"), make_step("test", attempts=2))
    assert got.status is RunStatus.SUCCEEDED


def test_starting_a_run_again_replaces_it(store: HistoryStore) -> None:
    store.start(make_run("aaaa00000001", at=5))
    store.update_step("aaaa00000001", make_step("test"))
    store.start(make_run("aaaa00000001", "other", at=1, steps=(make_step("discover"),)))

    got = store.get("aaaa00000001")
    assert got is not None
    assert (got.workflow, got.started_at) == ("other", stamp(1))
    assert [s.name for s in got.steps] == ["discover"]
    assert store.count() == 1


def queued(run_id: str, *, at: int = 0) -> Run:
    """A run as the API records it when it accepts it: waiting for a slot."""
    return replace(make_run(run_id, at=at, trigger="api"), status=RunStatus.QUEUED)


def test_a_queued_run_is_listed_and_counted_as_queued(store: HistoryStore) -> None:
    store.start(queued("aaaa00000001"))

    got = store.get("aaaa00000001")
    assert got is not None and got.status is RunStatus.QUEUED
    assert ids(store.list(status="queued")) == ["aaaa00000001"]
    assert store.count(status="queued") == 1
    assert store.count(status="running") == 0


def test_starting_a_queued_run_updates_it_in_place(store: HistoryStore) -> None:
    store.start(queued("aaaa00000001", at=3))
    store.start(queued("bbbb00000002", at=3))
    store.start(make_run("aaaa00000001", at=3, trigger="api"))  # a slot came free
    store.update_step("aaaa00000001", make_step("test"))

    got = store.get("aaaa00000001")
    assert got is not None
    assert (got.status, got.trigger, got.steps) == (RunStatus.RUNNING, "api", (make_step("test"),))
    # Same start time: the order of recording decides, and the queued row kept its place.
    assert ids(store.list()) == ["bbbb00000002", "aaaa00000001"]
    assert (store.count(status="queued"), store.count(status="running"), store.count()) == (1, 1, 2)

    store.finish(finished(got))
    assert store.count(status="succeeded") == 1


def test_a_queued_run_can_end_without_starting(store: HistoryStore) -> None:
    run = queued("aaaa00000001")
    cancelled = finished(
        run, RunStatus.CANCELLED, steps=(make_step("test", StepStatus.SKIPPED, data={}),)
    )
    store.start(run)
    store.finish(cancelled)

    assert store.get("aaaa00000001") == cancelled
    assert store.count() == 1


def test_max_runs_never_prunes_queued_runs(make_store: MakeStore) -> None:
    store = make_store(max_runs=1)
    store.start(queued("wait00000000", at=0))
    store.finish(finished(make_run("done00000001", at=1)))
    store.finish(finished(make_run("done00000002", at=2)))

    assert ids(store.list()) == ["done00000002", "wait00000000"]


def test_duplicate_step_names_of_a_finished_run_are_kept(store: HistoryStore) -> None:
    run = finished(
        make_run("aaaa00000001", steps=(make_step("test"), make_step("test", attempts=2)))
    )
    store.finish(run)

    assert store.get(run.run_id) == run


def test_write_all_applies_a_mixed_batch_in_order(store: HistoryStore) -> None:
    from aegis.history import Write

    a, b, c = make_run("aaaa00000001"), make_run("bbbb00000002", at=1), make_run("cccc00000003")
    done_a = finished(a, steps=(make_step("discover"), make_step("test")))
    store.write_all(
        [
            Write("start", (a,)),
            Write("start", (b,)),
            Write("update_step", (a.run_id, make_step("discover"))),
            Write("finish", (done_a,)),
            Write("update_step", (b.run_id, make_step("discover"))),
            Write("start", (c,)),
            Write("finish", (finished(c),)),
            Write("start", (replace(c, status=RunStatus.RUNNING),)),  # c again, later
        ]
    )

    assert store.get(a.run_id) == done_a
    assert [s.name for s in store.get(b.run_id).steps] == ["discover"]  # type: ignore[union-attr]
    assert store.get(c.run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]
    assert ids(store.list()) == ["bbbb00000002", "cccc00000003", "aaaa00000001"]
    assert store.count(status="running") == 2


def test_many_runs_finished_in_one_batch_are_all_recorded(store: HistoryStore) -> None:
    from aegis.history import Write

    runs = [make_run(f"q{n:011d}", at=n % 50) for n in range(1500)]
    store.write_all([Write("start", (run,)) for run in runs])
    store.write_all([Write("finish", (finished(run, RunStatus.CANCELLED),)) for run in runs])

    assert store.count(status="cancelled") == 1500 and store.count(status="running") == 0
    assert store.get("q00000000777").status is RunStatus.CANCELLED  # type: ignore[union-attr]


# ---------------------------------------------------------------- looking up


def test_get_accepts_any_unique_prefix_in_any_case(store: HistoryStore) -> None:
    store.finish(finished(make_run("abcdef000001")))
    store.finish(finished(make_run("abcxyz000002")))
    store.finish(finished(make_run("f0a1b2c3d4e5")))

    for prefix in ("abcd", "ABCD", "abcD", "abcdef000001", "ABCDEF000001"):
        found = store.get(prefix)
        assert found is not None and found.run_id == "abcdef000001", prefix
    for prefix in ("f", "F", "f0A"):
        found = store.get(prefix)
        assert found is not None and found.run_id == "f0a1b2c3d4e5", prefix
    assert store.get("abcdf") is None
    assert store.get("zzzz") is None
    assert store.get("a%") is None and store.get("_b") is None  # no wildcards
    assert store.get("") is None
    with pytest.raises(NotFound, match="'ab' is ambiguous: it matches abcdef000001, abcxyz000002;"):
        store.get("ab")


def test_an_exact_id_wins_over_longer_ids_it_prefixes(store: HistoryStore) -> None:
    store.finish(finished(make_run("abc")))
    store.finish(finished(make_run("abcd1")))
    store.finish(finished(make_run("abcd2")))

    exact = store.get("abc")
    assert exact is not None and exact.run_id == "abc"


@pytest.mark.parametrize("matches", [2, 3, 11])
def test_an_ambiguous_prefix_raises_not_found_naming_the_matches(
    store: HistoryStore, matches: int
) -> None:
    for n in range(matches):
        store.finish(finished(make_run(f"abcd{n:02d}000000")))

    with pytest.raises(NotFound, match="'ABCD' is ambiguous: it matches abcd00000000, abcd01") as e:
        store.get("ABCD")
    assert ("and more" in str(e.value)) is (matches > SHOWN_MATCHES)
    listed = str(e.value).split("matches ")[1].split(";")[0].removesuffix(" and more")
    assert listed.split(", ") == [f"abcd{n:02d}000000" for n in range(min(matches, SHOWN_MATCHES))]


# ------------------------------------------------------------------- listing


def test_list_is_newest_first_by_start_then_by_order_of_recording(store: HistoryStore) -> None:
    store.finish(finished(make_run("run0000000b1", at=20)))
    store.finish(finished(make_run("run0000000a1", at=10)))
    store.start(make_run("run0000000c1", at=30))
    store.finish(finished(make_run("run0000000t1", at=20)))  # same start as b1, recorded later
    store.start(make_run("run0000000t2", at=20))

    assert ids(store.list()) == [
        "run0000000c1",
        "run0000000t2",
        "run0000000t1",
        "run0000000b1",
        "run0000000a1",
    ]


def test_list_gives_run_summaries_with_their_steps(store: HistoryStore) -> None:
    run = rich_run()
    store.finish(run)
    store.start(make_run("running00001", at=1))
    store.update_step("running00001", make_step("discover"))

    listed = store.list()
    assert [r.to_dict(summary=True) for r in listed] == [
        store.get("running00001").to_dict(summary=True),  # type: ignore[union-attr]
        run.to_dict(summary=True),
    ]


@pytest.fixture
def populated(store: HistoryStore) -> HistoryStore:
    """Twelve runs: pipeline and smoke alternate; every third failed; the last runs."""
    for n in range(12):
        run = make_run(f"run{n:09d}", "pipeline" if n % 2 == 0 else "smoke", at=n)
        if n == 11:
            store.start(run)
        else:
            store.finish(finished(run, RunStatus.FAILED if n % 3 == 0 else RunStatus.SUCCEEDED))
    return store


@pytest.mark.parametrize(
    ("workflow", "status", "expected"),
    [
        (None, None, list(range(11, -1, -1))),
        ("pipeline", None, [10, 8, 6, 4, 2, 0]),
        ("smoke", None, [11, 9, 7, 5, 3, 1]),
        (None, "failed", [9, 6, 3, 0]),
        (None, RunStatus.FAILED, [9, 6, 3, 0]),
        ("smoke", "failed", [9, 3]),
        ("smoke", "running", [11]),
        ("nightly", None, []),
        (None, "bogus", []),
    ],
)
def test_list_and_count_filter_by_workflow_and_status(
    populated: HistoryStore, workflow: str | None, status: str | None, expected: list[int]
) -> None:
    listed = populated.list(workflow=workflow, status=status, limit=100)

    assert ids(listed) == [f"run{n:09d}" for n in expected]
    assert populated.count(workflow=workflow, status=status) == len(expected)


@pytest.mark.parametrize(
    ("limit", "offset", "expected"),
    [
        (20, 0, list(range(11, -1, -1))),
        (3, 0, [11, 10, 9]),
        (3, 3, [8, 7, 6]),
        (5, 10, [1, 0]),
        (5, 12, []),
        (0, 0, []),
        (-1, 0, []),
        (2, -5, [11, 10]),
    ],
)
def test_list_pages_with_limit_and_offset(
    populated: HistoryStore, limit: int, offset: int, expected: list[int]
) -> None:
    assert ids(populated.list(limit=limit, offset=offset)) == [f"run{n:09d}" for n in expected]


@pytest.mark.parametrize(
    ("before", "workflow", "limit", "offset", "expected"),
    [
        ("run000000011", None, 3, 0, [10, 9, 8]),
        ("run000000008", None, 20, 0, [7, 6, 5, 4, 3, 2, 1, 0]),
        ("run000000008", None, 2, 1, [6, 5]),
        ("run000000008", "smoke", 20, 0, [7, 5, 3, 1]),
        ("run000000007", "pipeline", 2, 0, [6, 4]),
        ("run000000000", None, 20, 0, []),
        ("nosuchrun000", None, 20, 0, []),
    ],
)
def test_list_pages_before_a_run_by_keyset(
    populated: HistoryStore,
    before: str,
    workflow: str | None,
    limit: int,
    offset: int,
    expected: list[int],
) -> None:
    found = populated.list(workflow, limit=limit, offset=offset, before=before)

    assert ids(found) == [f"run{n:09d}" for n in expected]


def test_paging_with_before_visits_every_run_once_in_order(store: HistoryStore) -> None:
    # runs sharing a start time are told apart by their order of recording
    for n in range(7):
        store.finish(finished(make_run(f"run{n:09d}", at=n // 3)))
    seen: list[str] = []
    page = store.list(limit=2)
    while page:
        seen += ids(page)
        page = store.list(limit=2, before=page[-1].run_id)

    assert seen == ids(store.list(limit=100)) == [f"run{n:09d}" for n in range(6, -1, -1)]


def test_list_defaults_to_twenty_runs(store: HistoryStore) -> None:
    for n in range(25):
        store.finish(finished(make_run(f"run{n:09d}", at=n)))

    assert len(store.list()) == 20
    assert store.count() == 25


# ------------------------------------------------------------------- pruning


def test_max_runs_keeps_the_newest_finished_runs_of_each_workflow(make_store: MakeStore) -> None:
    store = make_store(max_runs=2)
    for n in range(4):
        store.finish(finished(make_run(f"pipe{n:08d}", at=n, steps=(make_step("test"),))))
    store.finish(finished(make_run("smoke0000000", "smoke", at=0)))

    assert ids(store.list(workflow="pipeline")) == ["pipe00000003", "pipe00000002"]
    assert store.get("pipe00000000") is None
    assert ids(store.list(workflow="smoke")) == ["smoke0000000"]


def test_max_runs_never_prunes_or_counts_runs_still_going(make_store: MakeStore) -> None:
    store = make_store(max_runs=1)
    store.start(make_run("old000000000", at=0))  # running, older than all the rest
    store.finish(finished(make_run("done00000001", at=1)))
    store.start(make_run("new000000000", at=9))  # running, newer than all the rest
    store.finish(finished(make_run("done00000002", at=2)))

    assert ids(store.list()) == ["new000000000", "done00000002", "old000000000"]
    store.finish(finished(make_run("old000000000", at=0)))
    assert ids(store.list()) == ["new000000000", "done00000002"]


def test_max_runs_zero_keeps_everything(make_store: MakeStore) -> None:
    store = make_store(max_runs=0)
    for n in range(30):
        store.finish(finished(make_run(f"run{n:09d}", at=n)))

    assert store.count() == 30


# ------------------------------------------------------------- sharing a store


def test_threads_can_share_a_store(store: HistoryStore) -> None:
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            start.wait()
            for n in range(15):
                run = make_run(f"w{worker}r{n:09d}", f"wf{worker % 2}", at=n)
                store.start(run)
                store.update_step(run.run_id, make_step("discover"))
                store.list(limit=5)
                store.finish(finished(run, steps=(make_step("discover"), make_step("test"))))
        except BaseException as exc:  # pragma: no cover - reported by the assert below
            errors.append(exc)

    # daemon threads and bounded joins: a deadlock fails this test instead of hanging CI
    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "a worker is stuck"

    assert errors == []
    assert store.count() == 90
    assert store.count(status="succeeded") == 90
    assert all(len(r.steps) == 2 for r in store.list(limit=100))


def test_a_store_is_a_context_manager_that_closes(store: HistoryStore) -> None:
    with store as same:
        assert same is store
        store.start(make_run("aaaa00000001"))
    store.close()  # closing twice is harmless


# -------------------------------------------------------------- open_history


def test_open_history_in_memory(tmp_path: Path) -> None:
    warnings: list[str] = []
    store = open_history(HistorySpec(path=":memory:", max_runs=3), warn=warnings.append)

    assert isinstance(store, MemoryHistory)
    assert store.max_runs == 3
    assert warnings == []


def test_open_history_on_a_file_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "history.db"
    warnings: list[str] = []
    with open_history(HistorySpec(path=str(path), max_runs=5), warn=warnings.append) as store:
        assert isinstance(store, SqliteHistory)
        assert store.max_runs == 5
        store.finish(finished(make_run("aaaa00000001")))
    with open_history(HistorySpec(path=str(path)), warn=warnings.append) as again:
        assert again.get("aaaa00000001") is not None
    assert warnings == []


def _fallback(path: Path | str) -> tuple[HistoryStore, list[str]]:
    warnings: list[str] = []
    store = open_history(HistorySpec(path=str(path)), warn=warnings.append)
    return store, warnings


def _assert_keeps_history_in_memory(store: HistoryStore) -> None:
    assert isinstance(store, MemoryHistory)
    run = make_run("aaaa00000001")
    store.start(run)
    store.finish(finished(run))
    assert ids(store.list()) == ["aaaa00000001"]


def test_a_corrupt_file_gives_one_warning_and_memory(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(bytes(range(256)) * 40)

    store, warnings = _fallback(path)

    assert warnings == [
        f"history: cannot write {path} (file is not a database); "
        "keeping this run's history in memory"
    ]
    _assert_keeps_history_in_memory(store)
    assert path.read_bytes() == bytes(range(256)) * 40  # left as it was


def test_a_file_in_the_way_of_the_directory_gives_one_warning(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("not a directory")

    store, warnings = _fallback(tmp_path / "blocker" / "sub" / "history.db")

    assert len(warnings) == 1
    assert f"cannot create directory {tmp_path / 'blocker' / 'sub'}" in warnings[0]
    _assert_keeps_history_in_memory(store)


def test_a_directory_as_the_path_gives_one_warning(tmp_path: Path) -> None:
    store, warnings = _fallback(tmp_path)

    assert warnings == [
        f"history: cannot write {tmp_path} (unable to open database file: it is a directory); "
        "keeping this run's history in memory"
    ]
    _assert_keeps_history_in_memory(store)


def test_an_impossible_path_gives_one_warning(tmp_path: Path) -> None:
    store, warnings = _fallback(f"{tmp_path}/nul\0here.db")

    assert len(warnings) == 1 and "embedded null" in warnings[0]
    _assert_keeps_history_in_memory(store)


def test_a_file_from_a_newer_aegis_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")

    store, warnings = _fallback(path)

    assert len(warnings) == 1
    assert "written by a newer aegis: schema version 99, this one reads up to 1" in warnings[0]
    _assert_keeps_history_in_memory(store)


def test_another_programs_database_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE runs (x)")

    store, warnings = _fallback(path)

    assert len(warnings) == 1 and "not an aegis history file" in warnings[0]
    _assert_keeps_history_in_memory(store)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("runs",)]


def test_a_file_locked_beyond_the_busy_timeout_gives_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "history.db"
    SqliteHistory(path).close()
    monkeypatch.setattr(sqlite_module, "DEFAULT_BUSY_TIMEOUT", 0.01)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        store, warnings = _fallback(path)
    finally:
        holder.close()

    assert warnings == [
        f"history: cannot write {path} (database is locked: another process has held it "
        "for over 0.01 s); keeping this run's history in memory"
    ]
    _assert_keeps_history_in_memory(store)


def test_an_unexpected_error_while_opening_still_gives_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> SqliteHistory:
        raise RuntimeError("a bug")

    monkeypatch.setattr(sqlite_module, "SqliteHistory", broken)

    store, warnings = _fallback(tmp_path / "history.db")

    assert warnings == [
        f"history: cannot write {tmp_path / 'history.db'} (RuntimeError: a bug); "
        "keeping this run's history in memory"
    ]
    _assert_keeps_history_in_memory(store)


def test_history_unavailable_names_the_path_and_reason() -> None:
    error = HistoryUnavailable("/x/h.db", "disk I/O error")

    assert str(error) == "history: cannot write /x/h.db (disk I/O error)"
    assert (error.path, error.reason) == ("/x/h.db", "disk I/O error")


def test_a_reader_gets_the_file_read_only_when_it_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "history.db"
    with SqliteHistory(path) as store:
        store.finish(finished(make_run("aaaa00000001")))
    real = sqlite_module.SqliteHistory

    def unwritable(*args: Any, **options: Any) -> SqliteHistory:
        if not options.get("read_only"):
            raise HistoryUnavailable(str(path), "attempt to write a readonly database")
        return real(*args, **options)

    monkeypatch.setattr(sqlite_module, "SqliteHistory", unwritable)
    warnings: list[str] = []
    with open_history(HistorySpec(path=str(path)), warn=warnings.append, reading=True) as store:
        assert isinstance(store, real) and store.read_only
        assert ids(store.list()) == ["aaaa00000001"]
    assert warnings == []


def test_a_reader_of_a_file_it_cannot_read_either_gets_one_warning(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(b"garbage" * 1000)
    warnings: list[str] = []
    store = open_history(HistorySpec(path=str(path)), warn=warnings.append, reading=True)
    assert isinstance(store, MemoryHistory) and store.list() == []
    assert warnings == [
        f"history: cannot write {path} (file is not a database); no runs can be read from it"
    ]
