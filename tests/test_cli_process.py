"""The CLI as users run it: the built ``aegis.pyz`` in real subprocesses.

Every command once through the archive, the demo under each supported Python, and what
happens to a run when its process is interrupted (SIGINT) or killed (SIGKILL).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyz_helpers import PYTHONS, RUN_TIMEOUT, base_environ, require_python, run_pyz
from test_api_http import poll

from aegis.demo import DemoServices, Fault

pytestmark = pytest.mark.pyz


@pytest.fixture(scope="module")
def shiv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One unpacking shared by the module's runs: the cold start is tested elsewhere."""
    return tmp_path_factory.mktemp("shiv-root")


@pytest.fixture
def env(tmp_path: Path, shiv_root: Path) -> dict[str, str]:
    return base_environ(HOME=str(tmp_path), SHIV_ROOT=str(shiv_root), NO_COLOR="1")


@pytest.fixture
def config(tmp_path: Path, demo: DemoServices) -> Path:
    path = tmp_path / "aegis.yaml"
    path.write_text(
        textwrap.dedent(f"""
        services:
          qaagent: {{url: "{demo.qaagent_url}"}}
          bugalizer: {{url: "{demo.bugalizer_url}"}}
        workflows:
          pipeline:
            steps:
              - {{type: discover, service: qaagent}}
              - {{type: test, service: qaagent}}
              - {{type: submit_bugs, service: bugalizer, condition: has_failures,
                 with: {{project_id: web-shop}}}}
              - {{type: verify, service: qaagent, condition: has_failures}}
          smoke:
            steps: [{{type: discover, service: qaagent}}]
          broken:
            steps: [{{type: discover, service: qaagent, retries: 1, retry_delay: 0,
                      with: {{path: /missing}}}}]
        """)
    )
    return path


def aegis(pyz: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = run_pyz(sys.executable, pyz, args, env)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_run_exit_codes_and_history(pyz: Path, env: dict[str, str], config: Path) -> None:
    c = ["--config", str(config)]
    passed = aegis(pyz, env, *c, "run", "smoke")
    assert passed.returncode == 0, passed.stderr
    assert "> discover on qaagent" in passed.stderr
    failing = aegis(pyz, env, *c, "run", "pipeline", "--json")
    assert failing.returncode == 1
    run = json.loads(failing.stdout)
    assert run["verdict"] == "failed" and run["status"] == "succeeded"
    broken = aegis(pyz, env, *c, "run", "broken")
    assert broken.returncode == 3 and "HTTP 404 from qaagent" in broken.stdout
    assert aegis(pyz, env, *c, "run", "nope").returncode == 2

    listed = aegis(pyz, env, *c, "history", "--json")
    runs = json.loads(listed.stdout)["runs"]
    assert [r["workflow"] for r in runs] == ["broken", "pipeline", "smoke"]
    shown = aegis(pyz, env, *c, "history", "show", run["run_id"][:6], "--json")
    assert json.loads(shown.stdout) == run
    table = aegis(pyz, env, *c, "history", "pipeline")
    assert table.returncode == 0 and run["run_id"] in table.stdout


def test_rerun_and_schedules(
    pyz: Path, env: dict[str, str], config: Path, demo: DemoServices
) -> None:
    c = ["--config", str(config)]
    demo.qaagent.inject("/api/runs", Fault(status=503, times=1))
    failed = aegis(pyz, env, *c, "run", "pipeline", "--json")
    assert failed.returncode == 3
    run = json.loads(failed.stdout)
    again = aegis(pyz, env, *c, "rerun", run["run_id"], "--from-failed", "--json")
    assert again.returncode == 1, again.stderr  # as a clean run of it: tests still fail
    rerun = json.loads(again.stdout)
    assert rerun["rerun_of"] == run["run_id"]
    assert [s["reused"] for s in rerun["steps"]] == [True, False, False, False]
    assert "= discover succeeded before: reused, not run again" in again.stderr
    with config.open("a") as stream:
        stream.write("    schedule: {every: 15m}\n")  # the last workflow: broken
    listed = aegis(pyz, env, *c, "schedules", "--json", "--count", "1")
    (schedule,) = json.loads(listed.stdout)["schedules"]
    assert (schedule["workflow"], schedule["every"]) == ("broken", "15m")
    assert len(schedule["next_fires"]) == 1


def test_status_config_and_validate(pyz: Path, env: dict[str, str], config: Path) -> None:
    c = ["--config", str(config)]
    status = aegis(pyz, env, *c, "status", "--json")
    assert status.returncode == 0
    assert {s["health"]["status"] for s in json.loads(status.stdout)["services"]} == {"up"}
    shown = aegis(pyz, env, *c, "config", "show", "--json")
    assert shown.returncode == 0 and "pipeline" in json.loads(shown.stdout)["workflows"]
    assert aegis(pyz, env, "config", "validate", str(config)).returncode == 0
    config.write_text("workflows: {w: {steps: [{type: tset}]}}\n")
    invalid = aegis(pyz, env, "config", "validate", str(config))
    assert invalid.returncode == 1 and "did you mean 'test'" in invalid.stderr


@pytest.mark.parametrize(
    ("variable", "proxy", "reason"),
    [
        ("ALL_PROXY", "socks5://127.0.0.1:1", "through the proxy in ALL_PROXY"),
        ("ALL_PROXY", "ftp://127.0.0.1:1", "the proxy in ALL_PROXY (ftp://127.0.0.1:1) cannot"),
    ],
)
def test_proxies_from_the_environment(
    pyz: Path, env: dict[str, str], config: Path, variable: str, proxy: str, reason: str
) -> None:
    # Loopback services are reached directly; a remote one through the proxy, whose
    # failure (or unusable setting) is a readable `connection` failure, never an abort.
    text = config.read_text() + "  remote:\n    steps: [{type: discover, service: remote}]\n"
    remote_service = '  remote: {url: "http://127.0.0.2:9"}\n'
    config.write_text(text.replace("services:\n", "services:\n" + remote_service, 1))
    proxied = {**env, variable: proxy}
    c = ["--config", str(config)]
    assert aegis(pyz, proxied, *c, "run", "smoke").returncode == 0
    remote = aegis(pyz, proxied, *c, "run", "remote", "--json")
    assert remote.returncode == 3
    step = json.loads(remote.stdout)["steps"][0]
    assert step["error_kind"] == "connection" and reason in step["error"]
    status = aegis(pyz, proxied, *c, "status", "--json")
    assert status.returncode == 1
    health = {s["key"]: s["health"] for s in json.loads(status.stdout)["services"]}
    assert health["qaagent"]["status"] == "up"
    assert health["remote"]["status"] == "down" and reason in health["remote"]["error"]


@pytest.mark.parametrize("version", PYTHONS)
def test_demo_runs_on_each_python(pyz: Path, env: dict[str, str], version: str) -> None:
    python = require_python(version)
    done = run_pyz(python, pyz, ["demo"], env, cwd=Path(env["HOME"]))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert re.search(r"retry test-(web|api)", done.stderr) and "bug reports filed" in done.stdout
    # the demo writes nothing outside its temporary directory
    assert list(Path(env["HOME"]).iterdir()) == []


@pytest.fixture
def stalled(demo: DemoServices) -> Iterator[DemoServices]:
    """The test endpoint hangs (until the services stop), so a run sits in its test step."""
    demo.qaagent.inject("/api/runs", Fault(status=None, delay=120, times=None))
    yield demo


def start_run_until_test_step(
    pyz: Path, env: dict[str, str], config: Path
) -> subprocess.Popen[str]:
    """Start `aegis run pipeline` and return once its progress says the test step began."""
    process = subprocess.Popen(
        [sys.executable, str(pyz), "--config", str(config), "run", "pipeline", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if line.strip() == "> test on qaagent":
            return process
    process.kill()
    pytest.fail(f"the run never reached its test step (exit {process.wait()})")


def test_sigkill_mid_run_shows_interrupted(
    pyz: Path, env: dict[str, str], config: Path, stalled: DemoServices
) -> None:
    process = start_run_until_test_step(pyz, env, config)

    def discover_recorded() -> bool:
        # writes go through a thread of their own: wait until the first step's is made
        listed = aegis(pyz, env, "--config", str(config), "history", "--json")
        runs = json.loads(listed.stdout)["runs"] if listed.returncode == 0 else []
        return bool(runs) and [s["name"] for s in runs[0]["steps"]] == ["discover"]

    poll(discover_recorded)
    process.kill()
    process.wait(RUN_TIMEOUT)
    listed = aegis(pyz, env, "--config", str(config), "history", "--json")
    (run,) = json.loads(listed.stdout)["runs"]
    assert run["status"] == "interrupted"
    assert [s["name"] for s in run["steps"]] == ["discover"]
    assert run["steps"][0]["status"] == "succeeded"
    table = aegis(pyz, env, "--config", str(config), "history")
    assert "interrupted" in table.stdout


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_records_cancelled_and_exits_130(
    pyz: Path, env: dict[str, str], config: Path, stalled: DemoServices, signum: int
) -> None:
    process = start_run_until_test_step(pyz, env, config)
    os.kill(process.pid, signum)
    out, err = process.communicate(timeout=RUN_TIMEOUT)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    run = json.loads(out)
    assert run["status"] == "cancelled"
    assert [s["status"] for s in run["steps"]] == ["succeeded", "cancelled", "skipped", "skipped"]
    listed = aegis(pyz, env, "--config", str(config), "history", "show", run["run_id"], "--json")
    assert json.loads(listed.stdout)["status"] == "cancelled"
