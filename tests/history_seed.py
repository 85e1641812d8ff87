"""A seeded history for the test history acceptance: ``runs`` finished runs of one
workflow in a SQLite file, with a broken test (fails every run), a flaky one (fails
every third run and passes the next) and a test that failed once long ago."""

from __future__ import annotations

from pathlib import Path

from aegis.history.sqlite import SqliteHistory
from aegis.records import Run, RunStatus, StepResult, StepStatus, Verdict

BROKEN = "tests/test_cart.py::test_total_includes_tax"
FLAKY = "tests/test_login.py::test_rate_limit"
ONCE = "tests/test_search.py::test_suggestions"


def seeded_run(n: int, workflow: str = "nightly") -> Run:
    failing = [BROKEN] + ([FLAKY] if n % 3 == 0 else []) + ([ONCE] if n == 5 else [])
    failures = [{"test": t, "message": f"AssertionError in run {n}"} for t in failing]
    data = {"total": 40, "passed": 40 - len(failing), "failed": len(failing), "failures": failures}
    minutes, seconds = divmod(n, 60)
    hours, minutes = divmod(minutes, 60)
    at = f"2026-03-{1 + hours // 24:02d}T{hours % 24:02d}:{minutes:02d}:{seconds:02d}.000Z"
    return Run(
        run_id=f"{n:08x}seed",
        workflow=workflow,
        status=RunStatus.FAILED,
        started_at=at,
        trigger="schedule" if n % 2 else "api",
        steps=(StepResult("test", "test", "qaagent", StepStatus.SUCCEEDED, 900.0 + n % 50, data),),
        verdict=Verdict.FAILED,
        finished_at=at,
        duration_ms=1000.0 + n % 97,
    )


def seed(path: Path, runs: int = 2000, workflow: str = "nightly") -> None:
    with SqliteHistory(path) as store:
        for n in range(1, runs + 1):
            store.finish(seeded_run(n, workflow))
