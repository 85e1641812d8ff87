"""One history file shared by many processes at once: ten `aegis run` processes, each
running five workflows one after another, and an `aegis serve` starting runs through its
API meanwhile. Every run must be recorded, with the right status, and no process may
meet "database is locked".
"""

from __future__ import annotations

import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from test_api_http import Client
from test_crashes import aegis, start_server, stop_server, write_config

from aegis.demo import DemoServices

AREA = "Crashes and shared storage"

PROCESSES = 10
RUNS_EACH = 5
API_RUNS = 20
EXPECTED = {"smoke": ("succeeded", 0), "broken": ("failed", 3)}


def workflow_for(worker: int, index: int) -> str:
    return "broken" if (worker + index) % 3 == 0 else "smoke"


def cli_worker(config: Path, worker: int) -> list[tuple[str, str, str, int, str]]:
    """RUNS_EACH runs, one after another; (run_id, workflow, status, exit, output) each."""
    done = []
    for index in range(RUNS_EACH):
        workflow = workflow_for(worker, index)
        result = aegis(config, "run", workflow, "--json")
        run = json.loads(result.stdout)
        done.append((run["run_id"], workflow, run["status"], result.returncode, result.stderr))
    return done


def api_worker(client: Client, index: int) -> tuple[str, str, str]:
    workflow = workflow_for(index, 0)
    reply = client.post(f"/api/workflows/{workflow}/run?wait=60")
    assert reply.status == 200, reply.body
    return reply.data["run_id"], workflow, reply.data["status"]


def test_ten_cli_processes_and_a_server_share_one_file(
    reliability: Any, tmp_path: Path, demo: DemoServices
) -> None:
    config = write_config(tmp_path, demo)
    began = time.monotonic()
    server, client = start_server(config)
    try:
        with ThreadPoolExecutor(PROCESSES + 4) as pool:
            api = [pool.submit(api_worker, client, i) for i in range(API_RUNS)]
            cli = [pool.submit(cli_worker, config, w) for w in range(PROCESSES)]
            cli_runs = [run for future in cli for run in future.result()]
            api_runs = [future.result() for future in api]
        listed = client.get("/api/runs?limit=1000").data
    finally:
        server_log = stop_server(server)
    elapsed = time.monotonic() - began
    print(
        f"\nshared history: {PROCESSES}x{RUNS_EACH} CLI runs + {API_RUNS} API runs "
        f"in {elapsed:.1f} s"
    )

    outputs = [run[4] for run in cli_runs] + [server_log]
    assert not [o for o in outputs if "locked" in o or "warning" in o], outputs
    for run_id, workflow, status, code, _ in cli_runs:
        assert (status, code) == EXPECTED[workflow], (run_id, workflow, status, code)
    for run_id, workflow, status in api_runs:
        assert status == EXPECTED[workflow][0], (run_id, workflow, status)

    expected = {run[0]: (run[1], run[2]) for run in cli_runs}
    expected.update({run[0]: (run[1], run[2]) for run in api_runs})
    assert len(expected) == PROCESSES * RUNS_EACH + API_RUNS  # ids are unique
    with sqlite3.connect(tmp_path / "history.db") as db:
        stored = {
            run_id: (workflow, status)
            for run_id, workflow, status in db.execute("SELECT run_id, workflow, status FROM runs")
        }
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    assert stored == expected and integrity == "ok"
    assert listed["total"] == len(expected)
    triggers = {run["trigger"] for run in listed["runs"]}
    assert triggers == {"cli", "api"}
    reliability.record(
        f"{PROCESSES} `aegis run` processes x {RUNS_EACH} runs and `aegis serve` "
        f"starting {API_RUNS} runs, one history file",
        expected="every run recorded once with its status; no 'database is locked' or "
        "warning anywhere; the file stays intact",
        observed=f"{len(stored)} of {len(expected)} runs recorded, statuses as run, "
        f"integrity {integrity}; no lock errors or warnings in "
        f"{len(outputs)} outputs",
    )
