"""Schedules: tick times (intervals, cron, DST as cronsim documents it), the Scheduler on
a fake clock, catching up, the lock, bundled zone data, and `every: 2s` under a server."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from fakes import FakeClock

from aegis.api.app import ApiApp
from aegis.cli import main
from aegis.config import parse_config
from aegis.config.model import ScheduleSpec, WorkflowSpec
from aegis.errors import ConfigError, Conflict, QueueFull
from aegis.history.memory import MemoryHistory
from aegis.history.sqlite import SqliteHistory
from aegis.schedules import (
    MAX_SLEEP,
    ScheduleLock,
    Scheduler,
    lock_path,
    next_fires,
    previous_fire,
)
from aegis.steps.registry import default_step_types

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def at(*args: int, tz: Any = UTC) -> datetime:
    return datetime(*args, tzinfo=tz)


# ----------------------------------------------------------------------- tick times


def test_every_ticks_at_multiples_of_the_interval_since_the_epoch() -> None:
    spec = ScheduleSpec(every=900)
    assert next_fires(spec, at(2026, 1, 1, 10, 7), 3) == [
        at(2026, 1, 1, 10, 15),
        at(2026, 1, 1, 10, 30),
        at(2026, 1, 1, 10, 45),
    ]
    assert next_fires(spec, at(2026, 1, 1, 10, 15)) == [at(2026, 1, 1, 10, 30)]  # strictly after
    assert previous_fire(spec, at(2026, 1, 1, 10, 29, 59)) == at(2026, 1, 1, 10, 15)
    assert previous_fire(spec, at(2026, 1, 1, 10, 30)) == at(2026, 1, 1, 10, 30)


def test_cron_ticks_in_their_time_zone() -> None:
    spec = ScheduleSpec(cron="0 2 * * 1-5", timezone="Europe/Berlin")
    # Friday 2026-01-02 03:00 Berlin: next are Monday and Tuesday at 02:00 Berlin (01:00 UTC)
    assert next_fires(spec, at(2026, 1, 2, 2, 0), 2) == [at(2026, 1, 5, 1), at(2026, 1, 6, 1)]
    assert previous_fire(spec, at(2026, 1, 5, 1)) == at(2026, 1, 5, 1)
    assert previous_fire(spec, at(2026, 1, 5, 0, 59)) == at(2026, 1, 2, 1)


@pytest.mark.parametrize(
    ("expression", "start"),
    [
        ("30 2 * * *", at(2026, 3, 28, 12, tz=BERLIN)),  # 02:30 does not exist on the 29th
        ("30 2 * * *", at(2026, 10, 24, 12, tz=BERLIN)),  # 02:30 happens twice on the 25th
        ("*/30 * * * *", at(2026, 10, 25, 1, 50, tz=BERLIN)),  # every half hour through it
        ("0 * * * *", at(2026, 3, 29, 0, 30, tz=BERLIN)),
    ],
)
def test_fire_times_across_dst_changes_are_cronsim_s(expression: str, start: datetime) -> None:
    spec = ScheduleSpec(cron=expression, timezone="Europe/Berlin")
    ticks = CronSim(expression, start)
    expected = [next(ticks).astimezone(UTC) for _ in range(6)]
    assert next_fires(spec, start, 6) == expected


def test_dst_gaps_and_repeats_behave_as_cronsim_documents() -> None:
    daily = ScheduleSpec(cron="30 2 * * *", timezone="Europe/Berlin")
    # spring: the skipped 02:30 fires at the first minute after the gap, 03:00 CEST
    spring = next_fires(daily, at(2026, 3, 28, 12, tz=BERLIN), 2)
    assert [t.astimezone(BERLIN).isoformat() for t in spring] == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]
    # autumn: the repeated 02:30 fires once, at its first occurrence (CEST)
    autumn = next_fires(daily, at(2026, 10, 24, 12, tz=BERLIN), 2)
    assert [t.isoformat() for t in autumn] == [
        "2026-10-25T00:30:00+00:00",
        "2026-10-26T01:30:00+00:00",
    ]
    # jobs more frequent than hourly run in both repeated hours
    half_hourly = ScheduleSpec(cron="*/30 * * * *", timezone="Europe/Berlin")
    ticks = next_fires(half_hourly, at(2026, 10, 25, 1, 50, tz=BERLIN), 5)
    assert [t.strftime("%H:%M") for t in ticks] == ["00:00", "00:30", "01:00", "01:30", "02:00"]


def test_zone_data_is_bundled_for_systems_without_it(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import zoneinfo
        from datetime import datetime, timezone
        from aegis.config.model import ScheduleSpec
        from aegis.schedules import next_fires
        assert zoneinfo.TZPATH == (), zoneinfo.TZPATH
        spec = ScheduleSpec(cron="0 9 * * *", timezone="America/New_York")
        start = datetime(2026, 7, 1, tzinfo=timezone.utc)
        print(next_fires(spec, start)[0].isoformat())
    """)
    env = {**os.environ, "PYTHONTZPATH": "", "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2026-07-01T13:00:00+00:00"  # 09:00 EDT


# ---------------------------------------------------------------------- the Scheduler


class Fired:
    """What the scheduler fired, and an answer it may give (a refusal)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, datetime]] = []
        self.refuse: Exception | None = None
        self.clock: FakeClock | None = None

    async def __call__(self, workflow: str, spec: ScheduleSpec) -> object:
        assert self.clock is not None
        self.calls.append((workflow, spec.key, self.clock.now()))
        if self.refuse is not None:
            raise self.refuse
        return None


def workflow(key: str, *schedules: ScheduleSpec) -> WorkflowSpec:
    return WorkflowSpec(key=key, name=key, steps=(), schedules=schedules)


def scheduler(
    fired: Fired, clock: FakeClock, *workflows: WorkflowSpec, **options: Any
) -> Scheduler:
    fired.clock = clock
    options.setdefault("fires", MemoryHistory())
    return Scheduler(workflows, fired, clock=clock, **options)


async def test_the_loop_fires_each_tick_once_sleeping_no_longer_than_max_sleep() -> None:
    clock, fired = FakeClock(), Fired()
    quarter = workflow("nightly", ScheduleSpec(every=900))
    task = asyncio.ensure_future(scheduler(fired, clock, quarter).run())
    while len(fired.calls) < 3:
        await asyncio.sleep(0)
    task.cancel()
    times = [when for _, _, when in fired.calls]
    assert [t.timestamp() % 900 for t in times] == [0, 0, 0]
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(times)] == [900, 900]
    assert max(clock.sleeps) <= MAX_SLEEP
    assert {name for name, _, _ in fired.calls} == {"nightly"}


async def test_fire_due_fires_what_is_due_and_says_when_next() -> None:
    clock, fired = FakeClock(), Fired()
    two = workflow("w", ScheduleSpec(every=60), ScheduleSpec(every=90))
    s = scheduler(fired, clock, two)
    start = at(2026, 1, 1, 0, 0, 30)
    assert await s.fire_due(start) == at(2026, 1, 1, 0, 1)  # the first round only looks
    assert fired.calls == []
    assert await s.fire_due(at(2026, 1, 1, 0, 1)) == at(2026, 1, 1, 0, 1, 30)
    assert [key for _, key, _ in fired.calls] == ["every 60s"]
    # a clock that jumped an hour fires each schedule once, then resumes from now
    fired.calls.clear()
    later = at(2026, 1, 1, 1, 1, 10)
    assert await s.fire_due(later) == at(2026, 1, 1, 1, 1, 30)
    assert [key for _, key, _ in fired.calls] == ["every 60s", "every 90s"]


async def test_a_refused_tick_is_logged_and_the_schedule_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aegis.schedules")
    clock, fired = FakeClock(), Fired()
    fired.refuse = Conflict("not started: a run is going")
    s = scheduler(fired, clock, workflow("w", ScheduleSpec(every=60)))
    await s.fire_due(at(2026, 1, 1, 0, 0, 30))
    assert await s.fire_due(at(2026, 1, 1, 0, 1)) == at(2026, 1, 1, 0, 2)
    assert "schedules: w was not started (not started: a run is going)" in caplog.text
    fired.refuse = QueueFull("the run queue is full", retry_after=5)
    await s.fire_due(at(2026, 1, 1, 0, 2))
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == "schedules: w was not started (the run queue is full)"


async def test_without_the_lock_ticks_pass_unfired() -> None:
    clock, fired = FakeClock(), Fired()
    held = [False]
    s = scheduler(fired, clock, workflow("w", ScheduleSpec(every=60)), may_fire=lambda: held[0])
    await s.fire_due(at(2026, 1, 1, 0, 0, 30))
    await s.fire_due(at(2026, 1, 1, 0, 1))
    assert fired.calls == []
    held[0] = True
    await s.fire_due(at(2026, 1, 1, 0, 2))
    assert len(fired.calls) == 1


@pytest.mark.parametrize("catch_up", ["last", "none"])
async def test_catch_up_last_fires_once_for_ticks_missed_while_no_server_ran(
    tmp_path: Path, catch_up: str
) -> None:
    spec = ScheduleSpec(cron="0 2 * * *", timezone="Europe/Berlin", catch_up=catch_up)
    nightly = workflow("nightly", spec)
    first = SqliteHistory(tmp_path / "history.db")
    clock, fired = FakeClock(), Fired()
    s = scheduler(fired, clock, nightly, fires=first)
    await s.fire_due(at(2026, 1, 5, 0, 30))
    await s.fire_due(at(2026, 1, 5, 1))  # 02:00 Berlin
    assert len(fired.calls) == 1
    first.close()
    # the server was down for three nights; a new one starts at noon
    again = SqliteHistory(tmp_path / "history.db")
    assert again.last_fire("nightly", spec.key) == at(2026, 1, 5, 1).timestamp()
    fired.calls.clear()
    s = scheduler(fired, clock, nightly, fires=again)
    await s.fire_due(at(2026, 1, 8, 11))
    assert len(fired.calls) == (1 if catch_up == "last" else 0)
    if catch_up == "last":
        assert again.last_fire("nightly", spec.key) == at(2026, 1, 8, 1).timestamp()
    # a restart with nothing missed fires nothing
    fired.calls.clear()
    await scheduler(fired, clock, nightly, fires=again).fire_due(at(2026, 1, 8, 11))
    assert fired.calls == []
    again.close()


def test_one_process_holds_the_schedule_lock_of_a_history_file(tmp_path: Path) -> None:
    path = lock_path(str(tmp_path / "history.db"))
    assert path == str(tmp_path / "history.db") + ".schedules.lock"
    first, second = ScheduleLock(path), ScheduleLock(path)
    assert first.held() and first.held()
    assert not second.held()
    first.release()
    assert second.held()
    second.release()
    assert not ScheduleLock(str(tmp_path / "missing" / "x.lock")).held()


# ------------------------------------------------------------------ config and fronts

CONFIG = """
services:
  qaagent: {url: "http://127.0.0.1:9"}
workflows:
  nightly:
    params: {suite: {type: choice, choices: [smoke, full], default: smoke}}
    schedule:
      - {cron: "0 2 * * 1-5", timezone: Europe/Berlin, params: {suite: full}}
      - {every: 15m, overlap: queue, catch_up: last}
    steps: [{type: report}]
  plain:
    steps: [{type: report}]
history: {path: ":memory:"}
"""


def load(text: str, tmp_path: Path) -> Any:
    return parse_config(
        textwrap.dedent(text),
        file="aegis.yaml",
        base_dir=tmp_path,
        environ={},
        step_types=default_step_types(),
    )


def test_schedules_in_the_config(tmp_path: Path) -> None:
    config = load(CONFIG, tmp_path)
    cron, every = config.workflows["nightly"].schedules
    assert (cron.cron, cron.timezone, dict(cron.params), cron.overlap, cron.catch_up) == (
        "0 2 * * 1-5",
        "Europe/Berlin",
        {"suite": "full"},
        "skip",
        "none",
    )
    assert (every.every, every.overlap, every.catch_up) == (900.0, "queue", "last")
    assert config.workflows["plain"].schedules == ()
    single = load(
        """
        workflows:
          w: {schedule: {every: 1h}, steps: [{type: report}]}
        """,
        tmp_path,
    )
    assert len(single.workflows["w"].schedules) == 1


@pytest.mark.parametrize(
    ("schedule", "problem"),
    [
        ('{cron: "61 * * * *"}', "schedule.cron: invalid cron expression '61 * * * *': Bad minute"),
        ('{cron: "0 2 * * *", timezone: Mars/Base}', "schedule.timezone: unknown time zone"),
        ("{every: 15q}", "schedule.every: expected a duration like 30s"),
        ("{every: 0}", "schedule.every: expected a duration"),
        ('{every: 1m, cron: "* * * * *"}', "schedule: give either 'cron' or 'every'"),
        ("{timezone: UTC}", "schedule: give either 'cron' or 'every'"),
        ("{every: 1m, timezone: UTC}", "schedule.timezone: only a 'cron' schedule takes"),
        ("{every: 1m, overlap: never}", "schedule.overlap: unknown overlap 'never'"),
        ("{every: 1m, catch_up: all}", "schedule.catch_up: unknown catch_up 'all'"),
        ("{every: 1m, params: [1]}", "schedule.params: expected a mapping of params"),
        ("{every: 1m, params: {nope: 1}}", "schedule.params.nope: unknown param"),
        ("[{every: 1m}, 3]", "schedule[1]: expected a schedule"),
        ("{evry: 1m}", "schedule.evry: unknown key 'evry' (did you mean 'every'?)"),
    ],
)
def test_schedule_problems_name_their_key_path(tmp_path: Path, schedule: str, problem: str) -> None:
    text = f"""
    workflows:
      w:
        schedule: {schedule}
        steps: [{{type: report}}]
    """
    with pytest.raises(ConfigError) as error:
        load(text, tmp_path)
    assert f"aegis.yaml: workflows.w.{problem}" in str(error.value)


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("workflows: {w: {concurrency: {limit: 0}, steps: [{type: report}]}}",
         "workflows.w.concurrency.limit: expected an integer >= 1, got 0"),
        ("workflows: {w: {concurrency: {on_conflict: skip}, steps: [{type: report}]}}",
         "workflows.w.concurrency.limit: missing; expected an integer >= 1"),
        ("workflows: {w: {concurrency: {limit: 1, on_conflict: wait}, steps: [{type: report}]}}",
         "workflows.w.concurrency.on_conflict: unknown on_conflict 'wait'"),
        ("workflows: {w: {concurrency: 2, steps: [{type: report}]}}",
         "workflows.w.concurrency: expected a mapping, got 2"),
        ("history: {max_age: forever}", "history.max_age: expected a duration"),
        ("history: {max_age: -3}", "history.max_age: expected a duration"),
        ("server: {max_queued_runs: 0}", "server.max_queued_runs: expected an integer >= 1"),
    ],
)  # fmt: skip
def test_new_keys_are_checked_with_their_key_path(
    tmp_path: Path, section: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load(section, tmp_path)
    assert f"aegis.yaml: {problem}" in str(error.value)


def test_durations_and_limits_are_read(tmp_path: Path) -> None:
    config = load(
        """
        workflows: {w: {concurrency: {limit: 2}, steps: [{type: report}]}}
        history: {path: ":memory:", max_age: 1h30m}
        server: {max_queued_runs: 5}
        """,
        tmp_path,
    )
    assert config.history.max_age == 5400.0
    assert config.server.max_queued_runs == 5
    concurrency = config.workflows["w"].concurrency
    assert concurrency is not None
    assert (concurrency.limit, concurrency.on_conflict) == (2, "queue")
    assert load("history: {max_age: 30}", tmp_path).history.max_age == 30.0
    assert load("history: {max_age: 30d}", tmp_path).history.max_age == 30 * 86400.0


def test_aegis_schedules_lists_next_fire_times(tmp_path: Path) -> None:
    path = tmp_path / "aegis.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    out, err = io.StringIO(), io.StringIO()
    assert main(["--config", str(path), "schedules", "--json", "--count", "2"], stdout=out) == 0
    found = json.loads(out.getvalue())["schedules"]
    assert [(s["workflow"], s.get("cron"), s.get("every")) for s in found] == [
        ("nightly", "0 2 * * 1-5", None),
        ("nightly", None, "15m"),
    ]
    assert all(len(s["next_fires"]) == 2 for s in found)
    ticks = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in found[1]["next_fires"]]
    assert (ticks[1] - ticks[0]) == timedelta(minutes=15)
    out = io.StringIO()
    assert main(["--config", str(path), "schedules"], stdout=out, stderr=err) == 0
    text = out.getvalue()
    assert "nightly" in text and "cron 0 2 * * 1-5 (Europe/Berlin)" in text
    assert "every 15m" in text and text.count("next: ") == 6
    assert main(["--config", str(path), "schedules", "--count", "0"], stderr=err) == 2
    empty = tmp_path / "empty.yaml"
    empty.write_text("workflows: {w: {steps: [{type: report}]}}\n")
    out = io.StringIO()
    assert main(["--config", str(empty), "schedules"], stdout=out) == 0
    assert out.getvalue() == "No schedules configured.\n"


def get(url: str, path: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url + path, timeout=10) as reply:
        return json.loads(reply.read())


def test_every_2s_fires_about_every_2s_under_a_server(tmp_path: Path) -> None:
    config = load(
        f"""
        workflows:
          tick:
            schedule: {{every: 2s}}
            steps: [{{type: report}}]
          plain:
            steps: [{{type: report}}]
        history: {{path: "{tmp_path / "history.db"}"}}
        """,
        tmp_path,
    )
    with ApiApp(config, environ={}, port=0) as app:
        shown = get(app.url, "/api/workflows/tick")
        (schedule,) = shown["schedule"]
        assert schedule["every"] == "2s" and len(schedule["next_fires"]) == 3
        assert "next_fires" not in get(app.url, "/api/workflows")["workflows"][0]["schedule"][0]
        assert get(app.url, "/api/workflows/plain")["schedule"] == []
        deadline = time.monotonic() + 20
        while True:
            runs = get(app.url, "/api/runs?workflow=tick")["runs"]
            if len(runs) >= 3:
                break
            assert time.monotonic() < deadline, runs
            threading.Event().wait(0.05)
    assert {r["trigger"] for r in runs} == {"schedule"}
    started = sorted(datetime.fromisoformat(r["started_at"].replace("Z", "+00:00")) for r in runs)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(started)]
    assert all(1.0 < gap < 4.0 for gap in gaps), gaps


class BrokenLog:
    """A tick store that fails at everything (a history file gone bad)."""

    def last_fire(self, workflow: str, schedule: str) -> float | None:
        raise OSError("disk gone")

    def claim_fire(self, workflow: str, schedule: str, at: float) -> bool:
        raise OSError("disk gone")


async def test_a_failing_tick_store_or_lock_never_stops_the_schedule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, fired = FakeClock(), Fired()
    spec = ScheduleSpec(every=60, catch_up="last")
    s = scheduler(fired, clock, workflow("w", spec), fires=BrokenLog())
    await s.fire_due(at(2026, 1, 1, 0, 0, 30))
    await s.fire_due(at(2026, 1, 1, 0, 1))
    assert len(fired.calls) == 1  # fired, though its tick could not be kept
    assert "cannot read the last tick of w" in caplog.text
    assert "cannot record a tick of w" in caplog.text

    def broken_lock() -> bool:
        raise OSError("no locks here")

    fired.calls.clear()
    s = scheduler(fired, clock, workflow("w", spec), may_fire=broken_lock)
    await s.fire_due(at(2026, 1, 1, 0, 0, 30))
    await s.fire_due(at(2026, 1, 1, 0, 1))
    assert fired.calls == []
    assert "cannot take the schedule lock" in caplog.text


async def test_with_no_schedules_the_loop_only_sleeps() -> None:
    clock, fired = FakeClock(), Fired()
    task = asyncio.ensure_future(scheduler(fired, clock).run())
    while len(clock.sleeps) < 3:
        await asyncio.sleep(0)
    task.cancel()
    assert clock.sleeps[:3] == [MAX_SLEEP] * 3


def test_schedules_cost_nothing_to_a_config_without_them(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from aegis.config import parse_config
        from aegis.steps.registry import default_step_types
        import aegis.schedules
        parse_config("workflows: {w: {steps: [{type: report}]}}", file="a.yaml",
                     base_dir=Path("."), environ={}, step_types=default_step_types())
        print("cronsim" in sys.modules)
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


async def test_two_schedulers_on_one_history_file_fire_each_tick_once(tmp_path: Path) -> None:
    """Even without the lock (a file system without flock), a tick is claimed once."""
    spec = ScheduleSpec(every=60)
    stores = [SqliteHistory(tmp_path / "history.db") for _ in range(2)]
    clock, fired = FakeClock(), Fired()
    pair = [scheduler(fired, clock, workflow("w", spec), fires=store) for store in stores]
    for minute in range(5):
        for one in pair:
            await one.fire_due(at(2026, 1, 1, 0, minute, 30))
    assert len(fired.calls) == 4  # the ticks at 0:01 ... 0:04, once each
    for store in stores:
        store.close()
