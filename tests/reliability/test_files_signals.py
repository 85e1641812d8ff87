"""Files and signals: outputs that are not plain files, configs too big to read, signals
at any moment of a start, output that cannot go out, and hostile key names — each through
a real ``python -m aegis`` process on real files, pipes and devices.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from test_crashes import (
    RUN_LINE,
    TEST_STEP,
    TIMEOUT,
    aegis,
    environ,
    read_until,
    spawn,
    write_config,
)

from aegis.demo import DemoServices, Fault

AREA = "Files and signals"

ROOT = Path(__file__).resolve().parents[2]
# Where Ctrl-C still lands in Python's own start: importing `site`, `runpy` finding the
# module, `aegis/__main__.py` before its first statement took Ctrl-C over. Out of reach.
PYTHON_STARTING = ("Fatal Python error: init_import_site", "Could not import runpy module")
FRAME = re.compile(r'File "[^"]*/aegis/([\w/]+\.py)", line (\d+)')
TAKEOVER_LINE = next(
    (
        number
        for number, line in enumerate((ROOT / "aegis" / "__main__.py").read_text().splitlines(), 1)
        if line.startswith("signal.signal(")
    ),
    0,
)


def before_aegis(err: str) -> bool:
    """Whether ``err`` is a traceback from before Aegis took Ctrl-C over."""
    if err.startswith(PYTHON_STARTING):
        return True
    frames = FRAME.findall(err)
    return "Traceback" in err and all(
        name == "__main__.py" and int(line) < TAKEOVER_LINE for name, line in frames
    )


def command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "aegis", "--config", str(config), *args]


# ----------------------------------------------------------------------------- 13. --junit


def test_junit_to_dev_stdout_writes_into_the_pipe(
    reliability: Any, tmp_path: Path, demo: DemoServices
) -> None:
    config = write_config(tmp_path, demo)
    before = os.lstat("/dev/stdout")
    done = aegis(config, "run", "smoke", "--quiet", "--junit", "/dev/stdout")
    assert done.returncode == 0, done.stderr
    assert "<testsuites" in done.stdout and done.stdout.rstrip().endswith("</testsuites>")
    after = os.lstat("/dev/stdout")
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    link = tmp_path / "latest.xml"
    real = tmp_path / "reports" / "run.xml"
    real.parent.mkdir()
    link.symlink_to(real)
    assert aegis(config, "run", "smoke", "--quiet", "--junit", str(link)).returncode == 0
    assert link.is_symlink() and real.read_text().startswith("<?xml")
    reliability.record(
        "`--junit /dev/stdout` (a pipe) and `--junit` through a symlink",
        expected="written into the pipe and through the link; neither replaced",
        observed="the XML arrived on stdout; /dev/stdout and the symlink are unchanged",
    )


# --------------------------------------------------------------------- 14. oversized config


def test_a_50_mb_config_is_refused_by_its_size(reliability: Any, tmp_path: Path) -> None:
    config = tmp_path / "aegis.yaml"
    lines = "".join(f"  w{i}: {{steps: [{{type: report}}]}}\n" for i in range(230_000))
    config.write_text("workflows:\n" + lines * 8)
    size = config.stat().st_size
    assert size > 50_000_000
    began = time.monotonic()
    done = aegis(config, "config", "validate")
    took = time.monotonic() - began
    assert done.returncode == 1
    assert f"{config}: too large: {size:,} bytes; a config file may have at most 4 MiB" in (
        done.stderr
    )
    assert took < 5, took
    reliability.record(
        "a 50 MB config (230,000 workflows, eight times over)",
        expected="refused by its size before parsing, naming the file and the limit",
        observed="`too large: … bytes; a config file may have at most 4 MiB`, exit 1, in under 5 s",
    )


# ------------------------------------------------------------------------------ 15. signals


def test_ctrl_c_at_any_moment_of_a_start_shows_no_traceback(
    reliability: Any, tmp_path: Path, demo: DemoServices
) -> None:
    config = write_config(tmp_path, demo)
    delays_ms = range(0, 300, 10)
    for delay in delays_ms:
        process = subprocess.Popen(
            command(config, "run", "smoke"),
            env=environ(tmp_path),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Event().wait(delay / 1000)  # the moment of the Ctrl-C is the stimulus
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=TIMEOUT)
        if before_aegis(err):
            continue  # Python's own start, before the first line of Aegis ran
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (delay, err)
        assert process.returncode in (0, 130, -signal.SIGINT), (delay, err)
    reliability.record(
        "Ctrl-C 0 to 290 ms after `aegis run` starts (every 10 ms)",
        expected="no traceback at any moment: killed quietly while loading, else 130",
        observed=f"no traceback from Aegis's code in {len(delays_ms)} starts (Python's own "
        "start-up, before Aegis's first line, is out of its reach)",
    )


def test_sighup_is_a_stop_for_run_and_serve(
    reliability: Any, tmp_path: Path, demo: DemoServices
) -> None:
    demo.qaagent.inject("/api/runs", Fault(status=None, delay=120, times=None))
    config = write_config(tmp_path, demo)
    process = spawn(config, "run", "slow", "--json")
    read_until(process, RUN_LINE)
    read_until(process, re.compile(re.escape(TEST_STEP)))
    process.send_signal(signal.SIGHUP)
    out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert '"status": "cancelled"' in out
    from test_crashes import start_server, stop_server

    server, client = start_server(config)
    try:
        run_id = client.run("slow")
        from test_api_http import poll

        poll(lambda: client.in_test_step(run_id))
        server.send_signal(signal.SIGHUP)
        _, rest = server.communicate(timeout=TIMEOUT)
    finally:
        if server.poll() is None:
            stop_server(server)
    assert server.returncode == 0 and "Traceback" not in rest, rest
    listed = aegis(config, "history", "show", run_id, "--json")
    assert '"status": "cancelled"' in listed.stdout
    reliability.record(
        "SIGHUP (a closed terminal) to `aegis run` and to `aegis serve` mid-run",
        expected="like SIGTERM: the run recorded `cancelled`, not `interrupted`",
        observed="run: exit 130, `cancelled`; serve: exit 0, its run `cancelled`",
    )


# ------------------------------------------------------------------ 16. pipes and full disks


def test_a_closed_pipe_and_a_full_disk(
    reliability: Any, tmp_path: Path, demo: DemoServices
) -> None:
    config = write_config(tmp_path, demo)
    big = tmp_path / "big.yaml"  # `config show` of it is far more than a pipe holds
    workflows = "".join(f"  w{i}: {{steps: [{{type: report}}]}}\n" for i in range(3000))
    big.write_text(f"workflows:\n{workflows}history: {{path: ':memory:'}}\n")
    process = subprocess.Popen(
        command(big, "config", "show", "--json"),
        env=environ(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.readline()  # `| head -1`
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=TIMEOUT) == 141 and err == b""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            command(config, "run", "smoke"),
            env=environ(tmp_path),
            cwd=tmp_path,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    assert done.returncode == 74, done.stderr
    assert done.stderr.splitlines()[-1] == (
        "aegis: error: cannot write the output: No space left on device"
    )
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
    assert '"status": "succeeded"' in aegis(config, "history", "--json").stdout
    reliability.record(
        "output to a closed pipe (`| head -1`) and to a full disk (`> /dev/full`)",
        expected="the pipe: quiet; the disk: one line; neither an internal error; the run recorded",
        observed="pipe: exit 141, nothing on stderr; disk: exit 74, `cannot write the "
        "output: No space left on device`, run recorded `succeeded`",
    )


# ------------------------------------------------------------------------- 17. key paths


def test_control_characters_in_key_paths_are_escaped(reliability: Any, tmp_path: Path) -> None:
    config = tmp_path / "aegis.yaml"
    config.write_text('workflows:\n  "x\\e[2J\\e]0;owned\\a":\n    steps: [{type: report}]\n')
    done = aegis(config, "config", "validate")
    assert done.returncode == 1
    assert not any(ch in done.stderr for ch in "\x1b\x07\r")
    assert "workflows.x\\x1b[2J\\x1b]0;owned\\x07: invalid workflow key" in done.stderr
    reliability.record(
        "a workflow key holding ESC sequences (clear screen, set title)",
        expected="shown escaped in the key path, like other outside text",
        observed="`workflows.x\\x1b[2J\\x1b]0;owned\\x07: invalid workflow key …`",
    )
