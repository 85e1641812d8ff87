#!/usr/bin/env python3
"""Aegis's own overhead, measured the way users feel it: `python bench/run.py [--quick]`.

Prints one table (figure, median, min-max, target, pass/fail) and writes
bench/results.json. bench/README.md says how each figure is measured and what was changed
in Aegis to reach it.

Which Python: the figures that import Aegis in this process (engine, HTTP steps) need
httpx and PyYAML. When the interpreter running this file cannot import them, it runs
itself again under the repository's ``.venv/bin/python`` (or ``$AEGIS_BENCH_PYTHON``).
The built file, ``dist/aegis.pyz``, is always run with the interpreter that started the
benchmark (``python`` in ``python bench/run.py``), because that is how users run it; it is
rebuilt with ``build.py`` first when missing or older than a source file.

Full mode fails (exit 1) when any figure misses its target. ``--quick`` uses fewer
repetitions and smaller sizes (well under a minute) and fails only when a figure is more
than 3x off its target: a tripwire for CI, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYZ = ROOT / "dist" / "aegis.pyz"
EXAMPLE = ROOT / "aegis.example.yaml"
RESULTS = BENCH / "results.json"
QUICK_SLACK = 3.0  # in quick mode a figure fails only when this far off its target
CLI_PYTHON_ENV = "AEGIS_BENCH_CLI_PYTHON"


def _reexec_if_needed() -> None:
    """Run again under an interpreter that has httpx and PyYAML, remembering ours."""
    os.environ.setdefault(CLI_PYTHON_ENV, sys.executable)
    try:
        import httpx  # noqa: F401
        import yaml  # noqa: F401
    except ImportError:
        chosen = os.environ.get("AEGIS_BENCH_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
        if not Path(chosen).exists() or os.path.realpath(chosen) == os.path.realpath(
            sys.executable
        ):
            sys.exit(
                "bench: httpx and PyYAML are not importable; run `python3 tests/run.py` once"
                " to create .venv, or set AEGIS_BENCH_PYTHON to a Python that has them"
            )
        os.execv(chosen, [chosen, str(Path(__file__).resolve()), *sys.argv[1:]])


# --------------------------------------------------------------------------- figures


@dataclass
class Figure:
    """One line of the table. ``op`` is "<=" or ">="; no target means "reported only"."""

    key: str
    label: str
    unit: str
    values: list[float]
    target: float | None = None
    op: str = "<="
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def passes(self, slack: float = 1.0) -> bool:
        if self.target is None:
            return True
        if self.op == "<=":
            return self.median <= self.target * slack
        return self.median >= self.target / slack

    def to_dict(self, slack: float) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "median": self.median,
            "min": min(self.values),
            "max": max(self.values),
            "values": self.values,
            "target": self.target,
            "op": self.op,
            "passed": self.passes(slack),
            "note": self.note,
            **self.extra,
        }


@dataclass
class Settings:
    quick: bool
    cold_reps: int
    engine_reps: int
    engine_steps: int
    sqlite_steps: int
    scaling_steps: int
    parallel_reps: int
    http_reps: int
    http_steps: int
    load_seconds: float
    load_reps: int
    memory_runs: int
    memory_idle_reps: int
    throughput_runs: int
    scale_runs: int
    scale_reps: int

    @classmethod
    def of(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, 7, 3, 1000, 300, 1000, 2, 3, 300, 1.5, 1, 200, 2, 10_000, 10_000, 5)
        return cls(False, 21, 7, 1000, 1000, 1000, 5, 5, 1000, 4.0, 3, 1000, 5, 10_000, 100_000, 11)


def fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "us":
        return f"{value:.1f} us"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "req/s":
        return f"{value:,.0f}/s"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "B":
        return f"{value:,.0f} B"
    return f"{value:g} {unit}"


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- helpers


def pyz_is_stale() -> bool:
    if not PYZ.exists():
        return True
    built = PYZ.stat().st_mtime
    sources = [ROOT / "build.py", *(ROOT / "aegis").rglob("*")]
    return any(
        p.is_file() and "__pycache__" not in p.parts and p.stat().st_mtime > built for p in sources
    )


def ensure_pyz() -> None:
    if pyz_is_stale():
        progress("building dist/aegis.pyz")
        subprocess.run([sys.executable, str(ROOT / "build.py")], check=True, cwd=ROOT)


def timed_command(cmd: Sequence[str], cwd: Path | None = None) -> float:
    began = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-500:]!r}")
    return elapsed


def interleaved(
    commands: dict[str, list[str]], reps: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Wall times of each command, run in turn, ``reps`` rounds after ``warmup`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(warmup + reps):
        for name, cmd in commands.items():
            elapsed = timed_command(cmd)
            if round_ >= warmup:
                times[name].append(elapsed)
    return times


def write_config(directory: Path, *, qaagent: str, bugalizer: str, history: Path) -> Path:
    """A config for the server figures: the demo services, a small workflow, a history."""
    text = f"""\
services:
  qaagent:
    name: QA Agent
    url: {qaagent}
  bugalizer:
    name: Bugalizer
    url: {bugalizer}
workflows:
  quick:
    name: Discover and report
    steps:
      - type: discover
        service: qaagent
      - type: report
  full_pipeline:
    name: Full QA Pipeline
    steps:
      - type: discover
        service: qaagent
      - type: test
        service: qaagent
      - type: submit_bugs
        service: bugalizer
        condition: has_failures
        with: {{project_id: web-shop}}
      - type: verify
        service: qaagent
        condition: has_failures
      - type: report
        condition: always
history:
  path: {history}
server:
  host: 127.0.0.1
  port: 0
"""
    path = directory / "aegis.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class Server:
    """A real ``aegis serve`` subprocess of the built file, on a free port."""

    def __init__(self, python: str, config: Path, log: Path) -> None:
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            [python, str(PYZ), "--config", str(config), "serve", "--port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            cwd=config.parent,
        )
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.log.read_text(encoding="utf-8", errors="replace")
            found = re.search(r"serving on http://[^:\s]+:(\d+)", text)
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                raise RuntimeError(f"aegis serve exited: {text[-2000:]}")
            time.sleep(0.02)
        raise RuntimeError("aegis serve did not start in 30 s")

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        if not found:
            raise RuntimeError("no VmRSS")
        return int(found.group(1)) / 1024

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


@contextlib.contextmanager
def serving(python: str, config: Path) -> Iterator[Server]:
    server = Server(python, config, config.parent / f"serve-{time.monotonic_ns()}.log")
    try:
        yield server
    finally:
        server.stop()


def get_json(conn: http.client.HTTPConnection, path: str, method: str = "GET") -> Any:
    conn.request(method, path)
    response = conn.getresponse()
    body = response.read()
    if response.status >= 300:
        raise RuntimeError(f"{method} {path}: HTTP {response.status}: {body[:300]!r}")
    return json.loads(body)


def latencies(conn: http.client.HTTPConnection, path: str, count: int) -> list[float]:
    found = []
    for _ in range(count):
        began = time.perf_counter()
        get_json(conn, path)
        found.append(time.perf_counter() - began)
    return found


# ------------------------------------------------------------------ cold start


def bench_cold_start(s: Settings, python: str, workdir: Path) -> list[Figure]:
    progress("cold start")
    example = workdir / "aegis.example.yaml"
    shutil.copyfile(EXAMPLE, example)
    commands = {
        "pass": [python, "-c", "pass"],
        "version": [python, str(PYZ), "--version"],
        "validate": [python, str(PYZ), "config", "validate", str(example)],
    }
    times = interleaved(commands, s.cold_reps, warmup=3)
    # each round's ratio: the three commands ran back to back, so machine noise cancels
    version = [v / p for v, p in zip(times["version"], times["pass"], strict=True)]
    validate = [v / p for v, p in zip(times["validate"], times["pass"], strict=True)]
    base = statistics.median(times["pass"]) * 1000
    return [
        Figure(
            "cold_version",
            "cold start: aegis.pyz --version / python -c pass",
            "x",
            version,
            3.0,
            note=f"python -c pass = {base:.1f} ms, --version = "
            f"{statistics.median(times['version']) * 1000:.1f} ms",
            extra={"pass_ms": times["pass"], "command_ms": times["version"]},
        ),
        Figure(
            "cold_validate",
            "cold start: aegis.pyz config validate / python -c pass",
            "x",
            validate,
            5.0,
            note=f"config validate = {statistics.median(times['validate']) * 1000:.1f} ms",
            extra={"command_ms": times["validate"]},
        ),
    ]


def bench_lazy_imports(python: str, workdir: Path) -> Figure:
    """Which heavy modules each light command imports (0 is the target)."""
    progress("lazy imports")
    probe = workdir / "probe.py"
    probe.write_text(
        "import runpy, sys\n"
        "HEAVY = ('httpx', 'yaml', 'asyncio', 'sqlite3', 'http.server', 'pg8000')\n"
        "def report():\n"
        "    found = sorted(m for m in HEAVY if m in sys.modules)\n"
        "    sys.__stderr__.write('HEAVY=' + ','.join(found) + '\\n')\n"
        "import atexit; atexit.register(report)\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n",
        encoding="utf-8",
    )
    example = workdir / "aegis.example.yaml"
    cases = {
        "--version": ([], set()),
        "--help": (["--help"], set()),
        "config validate": (["config", "validate", str(example)], {"yaml"}),
    }
    wrong: list[str] = []
    for name, (argv, allowed) in cases.items():
        done = subprocess.run(
            [python, str(probe), str(PYZ), *argv], capture_output=True, text=True, check=False
        )
        line = next((x for x in done.stderr.splitlines() if x.startswith("HEAVY=")), "HEAVY=?")
        found = {m for m in line[6:].split(",") if m}
        extra = sorted(found - allowed)
        if extra:
            wrong.append(f"{name}: {','.join(extra)}")
    return Figure(
        "lazy_imports",
        "heavy modules imported by --version, --help, config validate",
        "count",
        [float(len(wrong))],
        0.0,
        note="; ".join(wrong) or "only yaml, by config validate",
    )


# ---------------------------------------------------------------------- engine


def _engine_parts() -> tuple[Any, ...]:
    from aegis.config.model import Config, StepSpec, WorkflowSpec, frozen_mapping
    from aegis.engine.runner import Engine
    from aegis.steps.base import StepType
    from aegis.steps.registry import default_step_types

    async def nothing(ctx: Any) -> dict[str, Any]:
        return {}

    noop = StepType(name="noop", execute=nothing, needs_service=False, params=frozenset())
    step_types = {**default_step_types(), "noop": noop}

    def config(steps: Sequence[Any], services: dict[str, Any] | None = None) -> Any:
        workflow = WorkflowSpec(key="bench", name="bench", steps=tuple(steps))
        return Config(
            services=frozen_mapping(services or {}), workflows=frozen_mapping({"bench": workflow})
        )

    return Engine, StepSpec, config, step_types


def engine_seconds(steps: Sequence[Any], history_factory: Callable[[], Any], **kw: Any) -> float:
    """Seconds ``Engine.run`` takes for one run of ``steps`` (loop start-up not included)."""
    engine_cls, _, config, step_types = _engine_parts()
    history = history_factory()
    engine = engine_cls(config(steps, kw.pop("services", None)), step_types, history=history, **kw)

    async def timed() -> float:
        began = time.perf_counter()
        run = await engine.run("bench")
        elapsed = time.perf_counter() - began
        if run.status.value != "succeeded":
            raise RuntimeError(f"bench run {run.status.value}: {run.steps[-1].error}")
        return elapsed

    try:
        return asyncio.run(timed())
    finally:
        close = getattr(history, "close", None)
        if close is not None:
            close()


def bench_engine(s: Settings, workdir: Path) -> list[Figure]:
    from aegis.history.memory import MemoryHistory
    from aegis.history.sqlite import SqliteHistory

    _, step_spec, _, _ = _engine_parts()
    progress("engine overhead per step")

    def noops(n: int) -> list[Any]:
        return [step_spec(type="noop", name=f"noop-{i}") for i in range(n)]

    def reports(n: int) -> list[Any]:
        return [step_spec(type="report", name=f"report-{i}") for i in range(n)]

    memory = [
        engine_seconds(noops(s.engine_steps), MemoryHistory) / s.engine_steps * 1e6
        for _ in range(s.engine_reps + 1)
    ][1:]
    counter = iter(range(1_000_000))

    def sqlite_store() -> Any:
        return SqliteHistory(workdir / f"engine-{next(counter)}.db")

    on_disk = [
        engine_seconds(noops(s.sqlite_steps), sqlite_store) / s.sqlite_steps * 1e6
        for _ in range(max(2, s.engine_reps // 2) + 1)
    ][1:]
    # O(1) per step: a 5x longer workflow of report steps must not cost more per step
    small, large = s.scaling_steps, 5 * s.scaling_steps
    growth = []
    for _ in range(max(2, s.engine_reps // 2)):
        per_small = engine_seconds(reports(small), MemoryHistory) / small
        per_large = engine_seconds(reports(large), MemoryHistory) / large
        growth.append(per_large / per_small)
    return [
        Figure(
            "engine_memory",
            f"engine: {s.engine_steps:,}-step workflow, memory history, per step",
            "us",
            memory,
            # 15 us when set, on a machine that ran the same code 2-4x faster (bench/README)
            30.0,
        ),
        Figure(
            "engine_sqlite",
            f"engine: {s.sqlite_steps:,}-step workflow, SQLite history on disk, per step",
            "us",
            on_disk,
            150.0,
        ),
        Figure(
            "engine_scaling",
            f"report steps: per-step cost at {large:,} / at {small:,} steps (O(1): ~1)",
            "x",
            growth,
            1.5,
        ),
    ]


# A demo qaagent in a process of its own, as services are: its threads do not compete with
# the engine's event loop for this process's GIL. Prints its URL, serves until killed.
QAAGENT = """
import sys, time
sys.path.insert(0, {root!r})
from aegis.demo import Fault, QaAgent
agent = QaAgent().start()
if {delay!r}:
    agent.inject("/api/routes", Fault(status=None, delay={delay!r}, times=None))
print(agent.url, flush=True)
time.sleep(3600)
"""


@contextlib.contextmanager
def qaagent_process(delay: float = 0.0) -> Iterator[str]:
    code = QAAGENT.format(root=str(ROOT), delay=delay)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        yield process.stdout.readline().strip() if process.stdout else ""
    finally:
        process.kill()
        process.wait()


async def raw_parallel_gets(url: str, count: int) -> float:
    """Seconds for ``count`` concurrent one-shot GETs by a bare asyncio client: the floor
    that the service and this machine allow, whatever the HTTP client."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    request = f"GET /api/routes HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request.encode())
        await reader.read()
        writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return time.perf_counter() - began


# (key, steps in the batch, each answered after seconds, target of wall / delay or None)
PARALLEL_CASES = (
    ("parallel_1s", 100, 1.0, 1.3),
    ("parallel_10", 10, 0.2, 1.15),
    ("parallel", 100, 0.2, None),  # the old figure, kept as a report
)


def bench_parallel(s: Settings, key: str, count: int, delay: float, target: float | None) -> Figure:
    """Wall time of one batch of ``count`` parallel steps whose service answers each after
    ``delay``, over ``delay``: 1.00x would be no overhead at all."""
    _, step_spec, _, _ = _engine_parts()
    from aegis.config.model import ServiceSpec
    from aegis.history.memory import MemoryHistory

    progress(f"parallel efficiency: {count} steps answered after {delay:g} s")
    steps = [
        step_spec(type="discover", name=f"discover-{i}", service="qaagent", parallel=True)
        for i in range(count)
    ]
    with qaagent_process(delay) as url:
        services = {"qaagent": ServiceSpec(key="qaagent", name="qaagent", url=url)}
        ratios = [
            engine_seconds(steps, MemoryHistory, services=services) / delay
            for _ in range(s.parallel_reps + 1)
        ][1:]
        floor = statistics.median(
            asyncio.run(raw_parallel_gets(url, count)) / delay for _ in range(3)
        )
    return Figure(
        key,
        f"{count} parallel steps, each answered after {delay * 1000:g} ms: wall time / "
        f"{delay * 1000:g} ms",
        "x",
        ratios,
        target,
        note=f"a bare asyncio client makes the same {count} requests in {floor:.2f}x",
        extra={"raw_asyncio_floor": floor},
    )


def bench_http_steps(s: Settings) -> list[Figure]:
    import httpx

    from aegis.config.model import ServiceSpec
    from aegis.history.memory import MemoryHistory

    _, step_spec, _, _ = _engine_parts()
    progress("HTTP step cost")
    n = s.http_steps
    steps = [step_spec(type="discover", name=f"d-{i}", service="qaagent") for i in range(n)]

    async def bare(url: str) -> float:
        async with httpx.AsyncClient() as client:
            began = time.perf_counter()
            for _ in range(n):
                response = await client.get(f"{url}/api/routes")
                response.raise_for_status()
                response.json()
            return time.perf_counter() - began

    ratios, cpu = [], []
    with qaagent_process() as url:  # the service runs in its own process: not counted
        services = {"qaagent": ServiceSpec(key="qaagent", name="qaagent", url=url)}
        for round_ in range(s.http_reps + 1):
            plain = asyncio.run(bare(url))
            used = time.process_time()
            ours = engine_seconds(steps, MemoryHistory, services=services)
            used = time.process_time() - used
            if round_:
                ratios.append(ours / plain)
                cpu.append(used / n * 1e6)
    return [
        Figure(
            "http_steps",
            f"{n:,} sequential discover steps / the same GETs with bare httpx",
            "x",
            ratios,
            1.3,
        ),
        Figure("http_step_cpu", "CPU per sequential HTTP step (engine and client)", "us", cpu),
    ]


# ---------------------------------------------------------------------- server


def seed_history(path: Path, start: int, count: int) -> None:
    """Add ``count`` finished runs (three steps each) to the SQLite file at ``path``."""
    from aegis.history.sqlite import SqliteHistory
    from aegis.records import Attempt, Run, RunStatus, StepResult, StepStatus, Verdict

    attempt = (Attempt(attempt=1, started_at="2026-01-01T10:00:00.000Z", duration_ms=3.0,
                       success=True),)  # fmt: skip
    steps = (
        StepResult(name="discover", type="discover", service="qaagent",
                   status=StepStatus.SUCCEEDED, duration_ms=3.0,
                   data={"route_count": 3, "routes": [{"path": "/a"}]}, attempts=attempt),
        StepResult(name="report", type="report", service=None, status=StepStatus.SUCCEEDED,
                   duration_ms=0.1, data={"steps": 2}),
    )  # fmt: skip

    def test_step(i: int) -> StepResult:
        # t1 always fails (broken); one of 20 flaky tests fails in every third run
        failures = [{"test": "t1", "message": "boom"}]
        if i % 3 == 0:
            failures.append({"test": f"flaky-{i % 20}", "message": "timeout"})
        return StepResult(name="test", type="test", service="qaagent",
                          status=StepStatus.SUCCEEDED, duration_ms=5.0,
                          data={"total": 10, "passed": 10 - len(failures),
                                "failed": len(failures), "failures": failures},
                          attempts=attempt)  # fmt: skip

    store = SqliteHistory(path)
    try:
        for i in range(start, start + count):
            seconds = i % 86400
            stamp = f"2026-01-{1 + i // 86400 % 28:02d}T{seconds // 3600:02d}:"
            stamp += f"{seconds // 60 % 60:02d}:{seconds % 60:02d}.000Z"
            store.finish(
                Run(
                    run_id=f"{i:012x}",
                    workflow="full_pipeline" if i % 2 else "quick",
                    status=RunStatus.SUCCEEDED,
                    started_at=stamp,
                    trigger="cli",
                    steps=(steps[0], test_step(i), steps[1]),
                    verdict=Verdict.FAILED,
                    finished_at=stamp,
                    duration_ms=9.0,
                )
            )
    finally:
        store.close()


def bench_server(s: Settings, python: str, config: Path, history: Path) -> list[Figure]:
    from loadgen import run_load

    figures = []
    routes = [
        ("health", "/health", 6000.0, "GET /health"),
        ("workflows", "/api/workflows", 3000.0, "GET /api/workflows"),
        ("history", "/api/history?limit=20", 2000.0,
         f"GET /api/history?limit=20, {s.throughput_runs:,} runs stored"),
    ]  # fmt: skip
    with serving(python, config) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port)
        total = get_json(conn, "/api/history?limit=1")["total"]
        if total < s.throughput_runs:
            raise RuntimeError(f"history holds {total} runs, expected {s.throughput_runs}")
        conn.close()
        for key, path, target, label in routes:
            progress(f"server throughput {path}")
            run_load("127.0.0.1", server.port, path, connections=32, duration=0.5)  # warm-up
            loads = [
                run_load("127.0.0.1", server.port, path, connections=32, duration=s.load_seconds)
                for _ in range(s.load_reps)
            ]
            p99 = statistics.median(load.percentile(0.99) * 1000 for load in loads)
            errors = sum(load.errors for load in loads)
            figures.append(
                Figure(
                    f"rps_{key}",
                    f"{label}, 32 keep-alive connections",
                    "req/s",
                    [load.rate for load in loads],
                    target,
                    op=">=",
                    note=f"p99 {p99:.1f} ms, {errors} errors",
                    extra={"p99_ms": p99, "errors": errors},
                )
            )
            if errors:
                figures[-1].values = [0.0]
    return figures


def baseline_rss_mb(python: str) -> float:
    """RSS of ``python`` with the modules an API server cannot do without, for scale."""
    # the built file's own unpacking, whose bytecode the warm-up runs have written
    with zipfile.ZipFile(PYZ) as archive:
        build_id = json.loads(archive.read("environment.json"))["build_id"]
    roots = [os.environ.get("SHIV_ROOT", ""), str(Path.home() / ".shiv")]
    roots.append(str(Path(tempfile.gettempdir(), f"aegis-shiv-{os.geteuid()}")))
    found = [Path(r, f"{PYZ.name}_{build_id}", "site-packages") for r in roots if r]
    path = next((str(p) for p in found if (p / "yaml").is_dir()), "")
    code = (
        f"import re, sys; sys.path.insert(0, {path!r}); import asyncio, sqlite3, http.server, yaml;"
        "print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout) / 1024


def bench_memory(s: Settings, python: str, config: Path) -> list[Figure]:
    progress("memory of aegis serve")
    subprocess.run([python, str(PYZ), "--version"], capture_output=True, check=True)  # unpacked
    idles = []
    for _ in range(s.memory_idle_reps - 1):  # fresh servers; the last one also takes the runs
        with serving(python, config) as server:
            conn = http.client.HTTPConnection("127.0.0.1", server.port)
            get_json(conn, "/health")
            time.sleep(1.0)
            idles.append(server.rss_mb())
            conn.close()
    with serving(python, config) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port)
        get_json(conn, "/health")
        time.sleep(1.0)
        idle = server.rss_mb()
        idles.append(idle)
        for i in range(s.memory_runs):
            run = get_json(conn, "/api/workflows/quick/run?wait=30", method="POST")
            if run.get("status") != "succeeded":
                raise RuntimeError(f"run {i} through the API: {run.get('status')}")
        get_json(conn, "/api/history?limit=20")
        get_json(conn, "/api/runs?limit=20")
        time.sleep(0.5)
        after = server.rss_mb()
        conn.close()
    return [
        Figure(
            "rss_baseline",
            "memory: bare python with asyncio, sqlite3, http.server, yaml imported",
            "MB",
            [baseline_rss_mb(python)],
        ),
        Figure("rss_idle", "memory: RSS of an idle aegis serve", "MB", idles, 28.0),
        Figure(
            "rss_after_runs",
            f"memory: RSS after {s.memory_runs:,} runs through the API / idle",
            "x",
            [after / idle],
            1.5,
            note=f"{after:.1f} MB after the runs",
            extra={"rss_mb": after},
        ),
    ]


def bench_history_scale(
    s: Settings, python: str, config: Path, history: Path, stored: int
) -> list[Figure]:
    progress(f"history scale: {s.scale_runs:,} runs")
    if stored < s.scale_runs:
        seed_history(history, stored, s.scale_runs - stored)
    size = sum(p.stat().st_size for p in history.parent.glob(history.name + "*") if p.is_file())
    cli = [python, str(PYZ), "--config", str(config), "history"]
    cli_times = interleaved({"history": cli}, s.scale_reps, warmup=2)["history"]
    with serving(python, config) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port)
        latencies(conn, "/api/history?limit=20", 20)
        api = latencies(conn, "/api/history?limit=20", 50 * s.scale_reps)
        latencies(conn, "/api/tests?flaky=true", 20)
        tests = latencies(conn, "/api/tests?flaky=true", 50 * s.scale_reps)
        conn.close()
    p50s = [statistics.median(api[i :: s.scale_reps]) * 1000 for i in range(s.scale_reps)]
    tests_p50s = [statistics.median(tests[i :: s.scale_reps]) * 1000 for i in range(s.scale_reps)]
    return [
        Figure("history_cli", f"aegis history, {s.scale_runs:,} runs stored", "s",
               cli_times, 0.3),
        Figure("history_api_p50", f"GET /api/history p50, {s.scale_runs:,} runs stored", "ms",
               p50s, 5.0, note=f"p99 {sorted(api)[int(len(api) * 0.99)] * 1000:.2f} ms"),
        Figure("tests_api_p50", f"GET /api/tests?flaky=true p50, {s.scale_runs:,} runs stored",
               "ms", tests_p50s, 20.0,
               note=f"p99 {sorted(tests)[int(len(tests) * 0.99)] * 1000:.2f} ms"),
        Figure("history_bytes_per_run", "history database size per run (3 steps each)", "B",
               [size / s.scale_runs], note=f"{size / 1e6:.1f} MB for {s.scale_runs:,} runs"),
    ]  # fmt: skip


def bench_size() -> Figure:
    size = PYZ.stat().st_size / 1024 / 1024
    return Figure("pyz_size", "size of dist/aegis.pyz", "MB", [size], 2.0)


# ------------------------------------------------------------------------ main


def print_table(figures: list[Figure], slack: float) -> None:
    rows = [("figure", "median", "min-max", "target", "result")]
    for f in figures:
        spread = f"{fmt(min(f.values), f.unit)} - {fmt(max(f.values), f.unit)}"
        target = "-" if f.target is None else f"{f.op} {fmt(f.target, f.unit)}"
        result = "report" if f.target is None else ("pass" if f.passes(slack) else "FAIL")
        rows.append((f.label, fmt(f.median, f.unit), spread, target, result))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    notes = [f"  {f.key}: {f.note}" for f in figures if f.note]
    if notes:
        print("\nnotes:")
        print("\n".join(notes))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure Aegis's own overhead.")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller sizes")
    parser.add_argument("--only", help="comma-separated groups: cold,engine,http,server,memory,"
                        "scale,size,pg (default: all)")  # fmt: skip
    parser.add_argument("--no-write", action="store_true", help="do not write results.json")
    args = parser.parse_args(argv)
    s = Settings.of(args.quick)
    groups = set((args.only or "cold,engine,http,server,memory,scale,size,pg").split(","))
    python = os.environ.get(CLI_PYTHON_ENV, sys.executable)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(BENCH))
    began = time.monotonic()
    ensure_pyz()
    from aegis.demo import DemoServices

    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="aegis-bench-") as tmp, DemoServices() as demo:
        workdir = Path(tmp)
        if "cold" in groups:
            figures += bench_cold_start(s, python, workdir)
            figures.append(bench_lazy_imports(python, workdir))
        if "engine" in groups:
            figures += bench_engine(s, workdir)
        if "http" in groups:
            figures += [bench_parallel(s, *case) for case in PARALLEL_CASES]
            figures += bench_http_steps(s)
        history = workdir / "history.db"
        config = write_config(
            workdir, qaagent=demo.qaagent_url, bugalizer=demo.bugalizer_url, history=history
        )
        stored = 0
        if groups & {"server", "scale"}:
            progress(f"storing {s.throughput_runs:,} runs")
            seed_history(history, 0, s.throughput_runs)
            stored = s.throughput_runs
        if "server" in groups:
            figures += bench_server(s, python, config, history)
        if "scale" in groups:
            figures += bench_history_scale(s, python, config, history, stored)
        if "memory" in groups:
            (workdir / "memory").mkdir()
            memory_config = write_config(
                workdir / "memory",
                qaagent=demo.qaagent_url,
                bugalizer=demo.bugalizer_url,
                history=workdir / "memory" / "history.db",
            )
            figures += bench_memory(s, python, memory_config)
        if "size" in groups:
            figures.append(bench_size())
        if "pg" in groups:
            from postgres import bench_postgres

            figures += bench_postgres(s.quick, python, PYZ, workdir, Figure, progress)
    took = time.monotonic() - began
    slack = QUICK_SLACK if s.quick else 1.0
    mode = "quick" if s.quick else "full"
    print(f"\nAegis benchmark ({mode}): aegis.pyz run by {python}, in-process figures by"
          f" {sys.executable}, {os.cpu_count()} cores, {took:.0f} s")  # fmt: skip
    if s.quick:
        print(f"quick mode: a figure fails only when more than {QUICK_SLACK:g}x off its target")
    print()
    print_table(figures, slack)
    failed = [f.key for f in figures if not f.passes(slack)]
    if not args.no_write:
        RESULTS.write_text(
            json.dumps(
                {
                    "mode": "quick" if s.quick else "full",
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "python_for_pyz": python,
                    "python_in_process": sys.executable,
                    "cpu_count": os.cpu_count(),
                    "seconds": round(took, 1),
                    "passed": not failed,
                    "figures": [f.to_dict(slack) for f in figures],
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    print("\nall figures pass")
    return 0


if __name__ == "__main__":
    _reexec_if_needed()
    sys.exit(main())
