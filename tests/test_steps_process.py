"""Running a program in its own process group: nothing it started outlives it."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from test_steps_command import eventually, gone, group_gone

from aegis.steps.process import run_process, signal_name

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")


async def test_what_a_program_leaves_behind_ends_with_it(tmp_path: Path) -> None:
    script = "sleep 30 & echo $! > sleep.pid; echo started"
    began = time.monotonic()
    finished = await run_process(["/bin/sh", "-c", script], cwd=str(tmp_path), env={})
    assert (finished.code, finished.stdout) == (0, "started\n")
    assert time.monotonic() - began < 5  # not the 30 s of the sleep holding its pipe
    sleeper = int((tmp_path / "sleep.pid").read_text())
    assert eventually(lambda: gone(sleeper))


async def test_a_program_that_ignores_sigterm_gets_sigkill(tmp_path: Path) -> None:
    script = "trap '' TERM; echo $$ > shell.pid; sleep 30 & wait"
    task = asyncio.ensure_future(
        run_process(["/bin/sh", "-c", script], cwd=str(tmp_path), env={}, grace=0.2)
    )
    assert await asyncio.to_thread(eventually, lambda: (tmp_path / "shell.pid").exists())
    task.cancel()
    began = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - began < 5
    shell = int((tmp_path / "shell.pid").read_text())
    assert eventually(lambda: group_gone(shell))


def test_signal_names() -> None:
    assert signal_name(-9) == "SIGKILL"
    assert signal_name(-999) == "signal 999"
