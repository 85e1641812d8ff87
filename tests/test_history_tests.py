"""Test history in both stores: per test id across runs, flips, outcomes, pruning, and
the run list's trigger filter."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pg_history import pg_history_database, pg_history_url  # noqa: F401 (fixtures)

from aegis.history import HistoryStore
from aegis.history.memory import MemoryHistory
from aegis.history.sqlite import SqliteHistory
from aegis.records import Run, RunStatus, StepResult, StepStatus, Verdict

MakeStore = Callable[..., HistoryStore]


def stamp(n: int) -> str:
    hours, rest = divmod(n, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"2026-01-01T{hours:02d}:{minutes:02d}:{seconds:02d}.000Z"


def step(name: str, data: dict[str, Any], status: StepStatus = StepStatus.SUCCEEDED) -> StepResult:
    return StepResult(name=name, type=name, service="qaagent", status=status, data=data)


def run_with_tests(
    n: int,
    failing: list[str],
    *,
    verified: Sequence[str] = (),
    reports: dict[str, str] | None = None,
    workflow: str = "pipeline",
    trigger: str = "cli",
) -> Run:
    """Run ``n``: a test step reporting ``failing``, a verify finding ``verified`` fixed."""
    failures = [{"test": t, "message": f"{t} broke in run {n}"} for t in failing]
    steps = [step("test", {"total": 5, "passed": 5 - len(failing), "failed": len(failing),
                           "failures": failures})]  # fmt: skip
    if reports:
        steps.append(step("submit_bugs", {"submitted": len(reports), "bug_reports": reports}))
    if verified:
        still = [f for f in failures if f["test"] not in verified]
        steps.append(step("verify", {"total": len(failing), "passed": len(verified),
                                     "failed": len(still), "failures": still,
                                     "verified": list(verified)}))  # fmt: skip
    failed = any(f["test"] not in verified for f in failures)
    return Run(
        run_id=f"run-{n:05d}",
        workflow=workflow,
        status=RunStatus.FAILED if failed else RunStatus.SUCCEEDED,
        started_at=stamp(n),
        trigger=trigger,
        steps=tuple(steps),
        verdict=Verdict.FAILED if failed else Verdict.PASSED,
        finished_at=stamp(n),
        duration_ms=100.0 + n,
    )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
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
            store = SqliteHistory(tmp_path / "h.db", max_runs=max_runs, warn=warnings.append)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
    assert warnings == []


@pytest.fixture
def store(make_store: MakeStore) -> HistoryStore:
    return make_store()


def record(store: HistoryStore, *runs: Run) -> None:
    for run in runs:
        store.start(run)
        store.finish(run)


def test_a_flaky_test_ranks_above_a_broken_one_and_a_broken_one_leads_failures(
    store: HistoryStore,
) -> None:
    for n in range(1, 21):
        failing = ["broken"] + (["flaky"] if n % 2 else [])
        record(store, run_with_tests(n, failing))

    flaky = store.tests(flaky=True)
    every = store.tests()

    assert [t.test_id for t in flaky] == ["flaky"]
    assert (flaky[0].runs, flaky[0].failures, flaky[0].flips) == (20, 10, 10)
    assert flaky[0].flakiness == 0.5
    assert [t.test_id for t in every] == ["broken", "flaky"]
    assert (every[0].failures, every[0].flips, every[0].last_pass_run) == (20, 0, None)


def test_a_verify_pass_is_a_flip_within_one_run(store: HistoryStore) -> None:
    record(store, run_with_tests(1, ["a", "b"], verified=["a"]))

    a, b = (store.test(t)[0] for t in ("a", "b"))

    assert (a.last_outcome, a.failures, a.flips, a.last_pass_run) == (
        "passed_on_rerun",
        1,
        1,
        "run-00001",
    )
    assert (b.last_outcome, b.flips, b.last_failure_run) == ("failed", 0, "run-00001")


def test_summaries_name_the_last_failure_and_the_last_pass(store: HistoryStore) -> None:
    record(
        store,
        run_with_tests(1, ["t"]),
        run_with_tests(2, []),
        run_with_tests(3, ["t"]),
        run_with_tests(4, []),
    )

    (found,) = store.test("t")
    data = found.to_dict()

    assert data["runs"] == 4 and data["failures"] == 2 and data["flips"] == 2
    assert data["last_failure"] == {"at": stamp(3), "run_id": "run-00003"}
    assert data["last_pass"] == {"at": stamp(4), "run_id": "run-00004"}
    assert data["last_message"] == "t broke in run 3"
    assert data["last_outcome"] == "passed" and data["workflow"] == "pipeline"


def test_outcomes_are_newest_first_with_the_bug_report_filed(store: HistoryStore) -> None:
    record(
        store,
        run_with_tests(1, ["t"], reports={"t": "BUG-7"}),
        run_with_tests(2, []),
        run_with_tests(3, []),
        run_with_tests(4, ["t"], verified=["t"]),
    )

    outcomes = [o.to_dict() for o in store.test_outcomes("t")]

    assert [(o["run_id"], o["outcome"], o["bug_report"]) for o in outcomes] == [
        ("run-00004", "passed_on_rerun", None),
        ("run-00002", "passed", None),  # the first pass after a failure; run 3 adds nothing
        ("run-00001", "failed", "BUG-7"),
    ]
    assert [o.run_id for o in store.test_outcomes("t", limit=1)] == ["run-00004"]
    assert store.test_outcomes("unknown") == []


def test_a_run_is_counted_once_and_runs_without_test_results_not_at_all(
    store: HistoryStore,
) -> None:
    run = run_with_tests(1, ["t"])
    record(store, run)
    store.finish(run)  # finished again (a rerun of the record, a late step)
    untested = Run("run-nothing", "pipeline", RunStatus.FAILED, stamp(2), verdict=Verdict.FAILED,
                   steps=(step("discover", {"routes": []}),))  # fmt: skip
    record(store, untested)
    store.start(run_with_tests(3, ["t"]))  # still going: not counted until it finishes

    (found,) = store.test("t")

    assert (found.runs, found.failures) == (1, 1)
    assert store.failing_counts(["run-00001", "run-nothing", "run-00003"]) == {"run-00001": 1}


def test_tests_filter_by_workflow_and_limit(store: HistoryStore) -> None:
    record(
        store,
        run_with_tests(1, ["a", "b"], workflow="one"),
        run_with_tests(2, ["c"], workflow="two"),
        run_with_tests(3, ["c"], workflow="one"),
    )

    assert {t.test_id for t in store.tests("one")} == {"a", "b", "c"}
    assert [t.test_id for t in store.tests("two")] == ["c"]
    assert len(store.tests(limit=2)) == 2
    assert store.tests(limit=-1) == []
    assert [t.workflow for t in store.test("c")] == ["one", "two"]


def test_pruned_runs_take_their_outcomes_and_leave_the_summary(make_store: MakeStore) -> None:
    store = make_store(max_runs=2)
    record(store, *(run_with_tests(n, ["t"]) for n in range(1, 6)))

    assert [o.run_id for o in store.test_outcomes("t")] == ["run-00005", "run-00004"]
    assert store.test("t")[0].runs == 5
    assert store.failing_counts(["run-00001", "run-00005"]) == {"run-00005": 1}


def test_run_lists_filter_by_trigger(store: HistoryStore) -> None:
    record(
        store,
        run_with_tests(1, [], trigger="api"),
        run_with_tests(2, [], trigger="cli"),
        run_with_tests(3, ["x"], trigger="api"),
    )

    assert [r.run_id for r in store.list(trigger="api")] == ["run-00003", "run-00001"]
    assert store.count(trigger="api") == 2
    assert store.count("pipeline", "failed", trigger="api") == 1
    assert store.list("pipeline", "succeeded", trigger="cli")[0].run_id == "run-00002"


# ----------------------------------------------------------------- SQLite only


def test_a_file_from_before_test_history_gains_its_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    SqliteHistory(path).close()
    with sqlite3.connect(path) as db:
        for table in ("tests", "test_outcomes", "test_runs"):
            db.execute(f"DROP TABLE {table}")
    reader = SqliteHistory(path, read_only=True)
    assert reader.tests() == [] and reader.test("t") == [] and reader.test_outcomes("t") == []
    assert reader.failing_counts(["r"]) == {}
    reader.close()

    with SqliteHistory(path) as store:
        record(store, run_with_tests(1, ["t"]))
        assert store.test("t")[0].failures == 1


def test_the_test_list_is_cached_until_the_file_changes(tmp_path: Path) -> None:
    with SqliteHistory(tmp_path / "h.db") as store, SqliteHistory(tmp_path / "h.db") as other:
        record(store, run_with_tests(1, ["t"]))
        assert store.tests()[0].failures == 1
        record(other, run_with_tests(2, ["t"]))
        assert store.tests()[0].failures == 2


def test_malformed_reports_are_skipped_and_forgotten_tests_leave_no_outcomes(
    make_store: MakeStore,
) -> None:
    store = make_store(max_runs=1)
    odd = {"total": 2, "passed": 0, "failed": 2,
           "failures": ["not an object", {"test": ""}, {"message": "no id"}, {"test": "t"}],
           "verified": ["someone-else"], "bug_reports": {"t": 17}}  # fmt: skip
    run = Run("odd", "pipeline", RunStatus.FAILED, stamp(1), steps=(step("test", odd),),
              verdict=Verdict.FAILED)  # fmt: skip
    record(store, run)
    assert [o.bug_report for o in store.test_outcomes("t")] == ["17"]
    assert [t.test_id for t in store.tests()] == ["t"]

    record(store, run_with_tests(2, []))  # prunes run "odd" with its only outcome

    assert [o.run_id for o in store.test_outcomes("t")] == ["run-00002"]
    record(store, run_with_tests(3, []))
    assert store.test_outcomes("t") == []  # its recovery was pruned too
