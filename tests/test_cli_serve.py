"""`aegis serve` and `aegis demo --serve`: through ``main(argv)`` in this process (the
main thread serves, a helper thread makes requests and then sends SIGINT), and as real
processes stopped with SIGTERM or SIGINT in the middle of a run.

Readiness is the "serving on URL" line on stderr; nothing waits by sleeping.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyz_helpers import PYTHONS, base_environ, require_python
from test_api_http import Client, poll

from aegis.cli import main
from aegis.config.model import HistorySpec
from aegis.demo import DemoServices, Fault
from aegis.history import open_history

TIMEOUT = 30.0
SERVING = re.compile(r"aegis: serving on (http://\S+) \(Ctrl-C to stop\)")


class Stderr(io.StringIO):
    """A stderr that tells when a line matching a pattern has been written.

    It polls rather than waiting on a condition: the SIGINT these tests send may land
    while the main thread is inside ``write``, and a KeyboardInterrupt raised inside
    ``Condition.notify_all`` can lose a waiter's wake-up (the test then hung for ~100 s).
    """

    def wait_for(self, pattern: re.Pattern[str], timeout: float = TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.getvalue())
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"never printed {pattern.pattern!r}: {self.getvalue()!r}")
            time.sleep(0.01)


def serve_in_main_thread(
    argv: list[str], work: Callable[[str, Stderr], Any]
) -> tuple[int, Stderr, Any]:
    """Run ``main(argv)`` here; once it serves, ``work(url, stderr)`` runs in a thread,
    then SIGINT stops the server. Returns the exit code, stderr and what work returned."""
    stderr = Stderr()
    outcome: dict[str, Any] = {}

    def helper() -> None:
        try:
            url = stderr.wait_for(SERVING).group(1)
            outcome["result"] = work(url, stderr)
        except BaseException as exc:  # reported by the test, in its own thread
            outcome["error"] = exc
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=helper)
    thread.start()
    code = main(argv, stdout=io.StringIO(), stderr=stderr, environ={"NO_COLOR": "1"})
    thread.join(TIMEOUT)
    if "error" in outcome:
        raise outcome["error"]
    return code, stderr, outcome.get("result")


def write_config(tmp_path: Path, demo: DemoServices, extra: str = "") -> Path:
    path = tmp_path / "aegis.yaml"
    path.write_text(
        textwrap.dedent(f"""
        services:
          qaagent: {{url: "{demo.qaagent_url}"}}
        workflows:
          smoke:
            steps: [{{type: discover, service: qaagent}}]
          slow:
            steps:
              - {{type: discover, service: qaagent}}
              - {{type: test, service: qaagent, timeout: 120}}
        history: {{path: history.db}}
        server: {{host: 127.0.0.1, port: 0}}
        """)
        + extra
    )
    return path


def stored(tmp_path: Path, run_id: str) -> dict[str, Any]:
    with open_history(HistorySpec(path=str(tmp_path / "history.db")), warn=print) as store:
        run = store.get(run_id)
    assert run is not None
    return run.to_dict()


# --------------------------------------------------------------- main(argv), in process


def test_serve_through_main(tmp_path: Path, demo: DemoServices) -> None:
    config = write_config(tmp_path, demo)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def work(url: str, stderr: Stderr) -> dict[str, Any]:
        client = Client(url)
        reply = client.post("/api/workflows/smoke/run?wait=30")
        assert reply.status == 200
        assert client.get("/api/history").data["total"] == 1
        return reply.data  # type: ignore[no-any-return]

    code, stderr, run = serve_in_main_thread(["--config", str(config), "serve"], work)
    assert code == 0, stderr.getvalue()
    assert run["status"] == "succeeded" and run["trigger"] == "api"
    log = stderr.getvalue()
    assert '"POST /api/workflows/smoke/run?wait=30" 200' in log
    assert "aegis: stopping" in log
    assert "Traceback" not in log
    # what the CLI sees of the same history
    out = io.StringIO()
    assert main(["--config", str(config), "history", "--json"], stdout=out, environ={}) == 0
    assert [r["run_id"] for r in json.loads(out.getvalue())["runs"]] == [run["run_id"]]
    # the signal handlers are those from before again
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers


def test_serve_host_and_port_options(tmp_path: Path, demo: DemoServices) -> None:
    config = write_config(tmp_path, demo)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def work(url: str, stderr: Stderr) -> str:
        return url

    argv = ["--config", str(config), "serve", "--host", "127.0.0.1", "--port", str(port)]
    code, _, url = serve_in_main_thread(argv, work)
    assert code == 0 and url == f"http://127.0.0.1:{port}"


def test_demo_serve_through_main() -> None:
    def work(url: str, stderr: Stderr) -> dict[str, Any]:
        run_id = stderr.wait_for(re.compile(r"aegis: started run (\w+): ")).group(1)
        client = Client(url)
        poll(lambda: client.status(run_id) not in ("queued", "running"))
        assert client.get("/").status == 200
        assert client.get("/api/portfolio").data["aegis"]["name"] == "Aegis demo"
        return client.get(f"/api/runs/{run_id}").data  # type: ignore[no-any-return]

    code, stderr, run = serve_in_main_thread(["demo", "--serve", "--port", "0"], work)
    assert code == 0, stderr.getvalue()
    assert run["status"] == "succeeded" and run["trigger"] == "demo"
    # the demo's progress lines; which of its two parallel tests meets the 503 varies
    assert re.search(r"retry test-(web|api)", stderr.getvalue())


@pytest.mark.parametrize(
    "argv",
    [["serve", "--port", "70000"], ["serve", "--port", "-1"], ["demo", "--serve", "--port", "-2"]],
)
def test_bad_ports_are_usage_errors(tmp_path: Path, demo: DemoServices, argv: list[str]) -> None:
    config = write_config(tmp_path, demo)
    err = io.StringIO()
    assert main(["--config", str(config), *argv], stderr=err, environ={}) == 2
    assert "--port must be from 0 to 65535" in err.getvalue()


def test_a_port_in_use_is_a_clear_error(tmp_path: Path, demo: DemoServices) -> None:
    config = write_config(tmp_path, demo)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = io.StringIO()
        code = main(["--config", str(config), "serve", "--port", str(port)], stderr=err, environ={})
    assert code == 2
    assert f"aegis: cannot listen on 127.0.0.1:{port}" in err.getvalue()
    assert "Traceback" not in err.getvalue()


def test_serve_without_a_config_is_a_usage_error(tmp_path: Path) -> None:
    err = io.StringIO()
    code = main(["--config", str(tmp_path / "missing.yaml"), "serve"], stderr=err, environ={})
    assert code == 2 and "missing.yaml" in err.getvalue()


def test_serve_and_demo_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert main(["serve", "--help"], stdout=out) == 0
    assert "--host" in out.getvalue() and "--port" in out.getvalue()
    out = io.StringIO()
    assert main(["demo", "--help"], stdout=out) == 0
    assert "--serve" in out.getvalue()


# ------------------------------------------------------------------ real processes


@pytest.fixture
def stalled(demo: DemoServices) -> Iterator[DemoServices]:
    """The test endpoint hangs until the services stop, so a `slow` run stays running."""
    demo.qaagent.inject("/api/runs", Fault(status=None, delay=120, times=None))
    yield demo


def start_server(
    cmd: list[str], cwd: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    for line in process.stderr:
        found = SERVING.search(line)
        if found:
            return process, found.group(1)
    process.kill()
    pytest.fail(f"the server never said it was serving (exit {process.wait()})")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_during_a_run_cancels_it_and_exits_0(
    tmp_path: Path, stalled: DemoServices, signum: int
) -> None:
    config = write_config(tmp_path, stalled)
    env = base_environ(HOME=str(tmp_path), PYTHONPATH=str(Path(__file__).parent.parent))
    process, url = start_server(
        [sys.executable, "-m", "aegis", "--config", str(config), "serve"], tmp_path, env
    )
    client = Client(url)
    run_id = client.run("slow")
    poll(lambda: client.in_test_step(run_id))
    process.send_signal(signum)
    _, err = process.communicate(timeout=10)  # "within a few seconds"
    assert process.returncode == 0, err
    assert "Traceback" not in err and "aegis: stopping" in err
    run = stored(tmp_path, run_id)
    assert run["status"] == "cancelled" and run["trigger"] == "api"
    assert [s["status"] for s in run["steps"]] == ["succeeded", "cancelled"]


@pytest.mark.pyz
@pytest.mark.parametrize("version", PYTHONS)
def test_the_built_file_serves_on_each_python(
    pyz: Path, tmp_path: Path, demo: DemoServices, version: str
) -> None:
    python = require_python(version)
    config = write_config(tmp_path, demo)
    env = base_environ(HOME=str(tmp_path), SHIV_ROOT=str(tmp_path / "shiv"))
    process, url = start_server(
        [python, str(pyz), "--config", str(config), "serve", "--port", "0"], tmp_path, env
    )
    try:
        client = Client(url)
        page = client.get("/")
        assert page.status == 200 and b"<html" in page.body.lower()
        assert client.get("/api/openapi.json").data["openapi"] == "3.1.0"
        run = client.post("/api/workflows/smoke/run?wait=30").data
        assert run["status"] == "succeeded"
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
    assert process.returncode == 0, err


# ------------------------------------------------------------------- serve(), directly


def test_serve_outside_the_main_thread_stops_on_its_event(
    tmp_path: Path, demo: DemoServices
) -> None:
    from aegis.api.app import serve
    from aegis.config import load_config

    config = load_config(write_config(tmp_path, demo), environ={})
    stop = threading.Event()
    stderr = Stderr()
    thread = threading.Thread(
        target=serve, args=(config,), kwargs={"environ": {}, "stderr": stderr, "stop": stop}
    )
    thread.start()
    url = stderr.wait_for(SERVING).group(1)
    assert Client(url).get("/health").status == 200
    stop.set()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert "aegis: stopping" in stderr.getvalue()


def test_the_stop_signals_raise_once() -> None:
    from aegis.api.app import _stop_signals

    before = signal.getsignal(signal.SIGTERM)
    with _stop_signals():
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGTERM, None)
        handler(signal.SIGINT, None)  # a second one, while stopping: ignored
    assert signal.getsignal(signal.SIGTERM) == before
