"""History by age: `history.max_age` prunes a large backlog of old runs in the background
while new runs are written to the same file, and never holds a write for long."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from test_history import finished, make_run, make_step

from aegis.history.memory import PRUNE_BATCH
from aegis.history.sqlite import SqliteHistory
from aegis.records import current_timestamp

AREA = "Crashes and shared storage"

OLD_RUNS = 3 * PRUNE_BATCH


def count_old(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM runs WHERE run_id LIKE 'old%'").fetchone()[0])


def test_max_age_prunes_old_runs_while_new_ones_are_written(
    reliability: Any, tmp_path: Path
) -> None:
    path = tmp_path / "history.db"
    with SqliteHistory(path) as seed:  # runs of an earlier day, each with a step
        for n in range(OLD_RUNS):
            old = make_run(f"old{n:09d}", at=n % 60, steps=(make_step("test"),))
            seed.finish(finished(old))
    store = SqliteHistory(path, max_age=1.0)
    slowest, written = 0.0, 0
    deadline = time.monotonic() + 30
    while count_old(path) and time.monotonic() < deadline:
        run = replace(make_run(f"new{written:09d}"), started_at=current_timestamp())
        began = time.monotonic()
        store.start(run)
        store.update_step(run.run_id, make_step("test"))
        store.finish(finished(run, steps=(make_step("test"),)))
        slowest = max(slowest, time.monotonic() - began)
        written += 1
    assert count_old(path) == 0
    newest = store.get(f"new{written - 1:09d}")
    assert newest is not None and newest.steps == (make_step("test"),)
    with sqlite3.connect(path) as db:
        orphans = db.execute(
            "SELECT count(*) FROM steps WHERE run_seq NOT IN (SELECT seq FROM runs)"
        )
        assert orphans.fetchone()[0] == 0
    assert slowest < 2.0  # a write waits for one batch at most, never for a whole sweep
    store.close()
    assert not [t for t in threading.enumerate() if t.name == "aegis-history-pruner"]
    reliability.record(
        f"`history.max_age: 1s` with {OLD_RUNS} old runs while new runs are written",
        expected="old runs and their steps pruned in the background; writers not held",
        observed="every old run and step removed, the new runs kept, each write under 2 s",
    )
