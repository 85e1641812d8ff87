"""Local programs that misbehave, through `aegis run`: a ``command`` step keeps its bounds.

Each case runs a real workflow with ``aegis.cli.main``: a program that forks and outlives
its timeout, one that ignores SIGTERM, one that floods its output, and a JUnit file built
to expand entities. What a user relies on: the step fails with a readable reason and the
right kind, nothing the program started is left running, the record stays small, and no
traceback reaches stderr.
"""

from __future__ import annotations

import io
import json
import os
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from reliability_report import Reliability
from test_steps_command import eventually, gone, group_gone

from aegis.cli import main
from aegis.steps.process import MAX_OUTPUT_BYTES

AREA = "Downstream faults"

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")


def run(tmp_path: Path, step: str) -> tuple[int, dict[str, Any], str, float]:
    config = tmp_path / "aegis.yaml"
    config.write_text("workflows:\n  wf:\n    steps:\n" + textwrap.indent(step, "      "))
    out, err = io.StringIO(), io.StringIO()
    began = time.monotonic()
    code = main(["--config", str(config), "run", "wf", "--json"], stdout=out, stderr=err)
    took = time.monotonic() - began
    assert "Traceback" not in err.getvalue()
    return code, json.loads(out.getvalue())["steps"][0], err.getvalue(), took


def test_a_forking_program_past_its_timeout(tmp_path: Path, reliability: Reliability) -> None:
    code, step, _, took = run(
        tmp_path,
        "- type: command\n  timeout: 1\n  with:\n"
        '    shell: "echo $$$$ > shell.pid; sleep 30 & echo $! > sleep.pid; wait"\n',
    )
    assert (code, step["error_kind"], step["error"]) == (3, "timeout", "timed out after 1s")
    assert took < 2.5
    shell, sleeper = (int((tmp_path / f).read_text()) for f in ("shell.pid", "sleep.pid"))
    assert eventually(lambda: gone(sleeper) and group_gone(shell))
    reliability.record(
        "a command that forks `sleep 30` and passes its `timeout: 1`",
        expected="kind `timeout` after about 1 s; SIGTERM to its process group",
        observed=f"kind {step['error_kind']} in under 2.5 s; no process of its group left",
    )


def test_a_program_that_ignores_sigterm(tmp_path: Path, reliability: Reliability) -> None:
    code, step, _, took = run(
        tmp_path,
        "- type: command\n  timeout: 0.5\n  with:\n"
        "    shell: \"trap '' TERM; echo $$$$ > shell.pid; sleep 30 & wait\"\n",
    )
    assert (code, step["error_kind"]) == (3, "timeout")
    assert took < 5
    shell = int((tmp_path / "shell.pid").read_text())
    assert eventually(lambda: group_gone(shell))
    reliability.record(
        "a command that ignores SIGTERM",
        expected="SIGKILL to its group after the 2 s grace",
        observed=f"kind {step['error_kind']} in under 5 s; no process of its group left",
    )


def test_a_program_flooding_its_output(tmp_path: Path, reliability: Reliability) -> None:
    code, step, _, _ = run(
        tmp_path,
        "- type: command\n  with:\n"
        "    shell: \"head -c 50000000 /dev/zero | tr '\\\\0' x; echo END\"\n",
    )
    assert (code, step["status"]) == (0, "succeeded")
    stdout = step["data"]["stdout"]
    assert len(stdout) == MAX_OUTPUT_BYTES and stdout.endswith("xEND\n")
    reliability.record(
        "a command writing 50 MB to stdout",
        expected="the step data keeps the last 64 KiB of it",
        observed=f"{len(stdout) // 1024} KiB kept, ending with its last line",
    )


def test_a_junit_file_that_declares_entities(tmp_path: Path, reliability: Reliability) -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "aaaaaaaaaa">'
        + "".join(
            f'<!ENTITY {c} "{("&" + p + ";") * 10}">'
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        )
        + ']><testsuite><testcase name="&i;"/></testsuite>'
    )
    (tmp_path / "bomb.xml").write_text(bomb)
    code, step, _, _ = run(
        tmp_path,
        '- type: command\n  with:\n    shell: "touch bomb.xml; exit 1"\n    junit: bomb.xml\n',
    )
    assert (code, step["error_kind"]) == (3, "protocol")
    assert (
        step["error"]
        == f"JUnit file {tmp_path / 'bomb.xml'} declares a DTD, which is not read (entities)"
    )
    reliability.record(
        "a JUnit file with nested entities (a billion laughs)",
        expected="refused as `protocol`, naming the file; nothing expanded",
        observed=f"kind {step['error_kind']}: declares a DTD, which is not read",
    )
