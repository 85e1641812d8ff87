"""The ``command`` step: a local program in its own process group, JUnit as test results."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeContext

from aegis.cli import main
from aegis.config.model import Config, frozen_mapping
from aegis.errors import StepError
from aegis.steps import command
from aegis.steps.command import STEP
from aegis.steps.process import MAX_OUTPUT_BYTES

PY = sys.executable


@pytest.fixture
def run_step(make_context: MakeContext, tmp_path: Path) -> Any:
    async def run(**params: Any) -> dict[str, Any]:
        ctx = make_context("command", None, params=params, environ={"FROM_ENGINE": "engine"})
        config = Config(frozen_mapping(), frozen_mapping(), base_dir=str(tmp_path))
        return await STEP.execute(dataclasses.replace(ctx, config=config))

    return run


async def test_run_is_an_argument_list_and_lists_inside_it_are_flattened(run_step: Any) -> None:
    code = "import json, sys; print(json.dumps(sys.argv[1:]))"
    data = await run_step(run=[PY, "-c", code, "a b", ["x::1", "y;rm -rf /"], [], 3, True])
    assert json.loads(data["stdout"]) == ["a b", "x::1", "y;rm -rf /", "3", "true"]
    assert data["exit_code"] == 0
    assert data["stderr"] == ""


async def test_shell_list_arguments_are_quoted(run_step: Any, tmp_path: Path) -> None:
    data = await run_step(shell=["printf '%s\\n'", ["it's", "$(touch pwned)", "a b"]])
    assert data["stdout"].splitlines() == ["it's", "$(touch pwned)", "a b"]
    assert not (tmp_path / "pwned").exists()


async def test_cwd_is_relative_to_the_config_and_env_is_added(
    run_step: Any, tmp_path: Path
) -> None:
    (tmp_path / "sub").mkdir()
    data = await run_step(shell='echo "$PWD $FROM_ENGINE $ADDED"', cwd="sub", env={"ADDED": 7})
    assert data["stdout"].strip() == f"{tmp_path / 'sub'} engine 7"


async def test_a_missing_cwd_or_program_is_a_readable_failure(run_step: Any) -> None:
    with pytest.raises(StepError, match="is not a directory"):
        await run_step(run=["true"], cwd="nowhere")
    with pytest.raises(StepError, match="cannot run 'no-such-program-aegis'") as caught:
        await run_step(run=["no-such-program-aegis"])
    assert caught.value.kind == "error"


async def test_a_failing_exit_shows_the_tail_of_its_output(run_step: Any) -> None:
    script = "for i in 1 2 3 4 5 6 7; do echo line$i; done >&2; exit 3"
    with pytest.raises(StepError) as caught:
        await run_step(shell=script)
    assert caught.value.kind == "error"
    assert caught.value.message == (
        "/bin/sh exited with code 3; last output: line3 | line4 | line5 | line6 | line7"
    )


async def test_success_codes(run_step: Any) -> None:
    data = await run_step(shell="exit 5", success_codes=[0, 5])
    assert data["exit_code"] == 5


async def test_a_program_killed_by_a_signal_says_so(run_step: Any) -> None:
    with pytest.raises(StepError, match=r"/bin/sh was killed by SIGKILL$"):
        await run_step(shell="kill -9 $$")


async def test_output_keeps_the_last_64_kib_of_each_stream(run_step: Any) -> None:
    code = (
        "import sys; sys.stdout.write('a' * 100000 + 'END'); sys.stderr.write('é' * 50000 + 'FIN')"
    )
    data = await run_step(run=[PY, "-c", code])
    assert len(data["stdout"].encode()) == MAX_OUTPUT_BYTES
    assert data["stdout"].endswith("aEND")
    assert data["stderr"].endswith("éFIN")
    assert "\ufffd" not in data["stderr"]  # a character cut in two is dropped whole


PASSING = '<testsuite><testcase classname="t" name="ok"/></testsuite>'
FAILING = (
    '<testsuite><testcase classname="t" name="ok"/>'
    '<testcase classname="t" name="bad"><failure message="boom"/></testcase></testsuite>'
)


def writer(xml: str, code: int) -> list[str]:
    script = f"open('out/junit.xml', 'w').write({xml!r}); raise SystemExit({code})"
    return [PY, "-c", script]


async def test_junit_exit_1_with_failing_tests_is_data(run_step: Any, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    data = await run_step(run=writer(FAILING, 1), junit="out/*.xml")
    assert (data["total"], data["passed"], data["failed"]) == (2, 1, 1)
    assert data["failures"][0]["test"] == "t::bad"
    assert data["junit_files"] == ["out/junit.xml"]
    assert data["exit_code"] == 1


async def test_junit_exit_1_without_failing_tests_fails(run_step: Any, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(StepError, match="exited with code 1"):
        await run_step(run=writer(PASSING, 1), junit="out/*.xml")
    with pytest.raises(StepError, match="exited with code 2"):
        await run_step(run=writer(FAILING, 2), junit="out/*.xml")


async def test_junit_files_from_an_earlier_run_do_not_count(run_step: Any, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    old = tmp_path / "out" / "old.xml"
    old.write_text(FAILING)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    with pytest.raises(StepError) as caught:
        await run_step(run=["true"], junit="out/*.xml")
    assert caught.value.kind == "protocol"
    assert "wrote no JUnit file matching 'out/*.xml'" in caught.value.message
    with pytest.raises(StepError, match="exited with code 4"):
        await run_step(shell="exit 4", junit="out/*.xml")


async def test_a_malformed_junit_file_is_a_protocol_failure_naming_it(
    run_step: Any, tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(StepError) as caught:
        await run_step(run=writer("<testsuite><testcase", 1), junit="out/*.xml")
    assert caught.value.kind == "protocol"
    assert f"JUnit file {tmp_path / 'out' / 'junit.xml'} is not well-formed XML" in str(
        caught.value.message
    )


def run_cli(tmp_path: Path, workflow_yaml: str, *args: str) -> tuple[int, str, str]:
    config = tmp_path / "aegis.yaml"
    config.write_text(textwrap.dedent(workflow_yaml))
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(config), *args], stdout=out, stderr=err, environ={})
    return code, out.getvalue(), err.getvalue()


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is dead
    except FileNotFoundError:
        return True


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return all(gone(int(p)) for p in os.listdir("/proc") if p.isdigit() and _in_group(p, pgid))


def _in_group(pid: str, pgid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[2]) == pgid
    except (FileNotFoundError, ProcessLookupError):
        return False


def eventually(check: Any, seconds: float = 10.0) -> bool:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if check():
            return True
        time.sleep(0.02)  # polling a condition, not synchronising on time
    return check()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_timeout_ends_the_whole_process_group(tmp_path: Path) -> None:
    workflow = """\
    workflows:
      wf:
        steps:
          - type: command
            timeout: 1
            with:  # $$ is a $ in a config file
              shell: "echo $$$$ > shell.pid; sleep 30 & echo $! > sleep.pid; echo started; wait"
    """
    began = time.monotonic()
    code, out, err = run_cli(tmp_path, workflow, "run", "wf", "--json")
    took = time.monotonic() - began
    run = json.loads(out)
    (step,) = run["steps"]
    assert (code, step["status"], step["error_kind"]) == (3, "failed", "timeout"), err
    assert step["error"] == "timed out after 1s"
    assert step["data"]["command"].startswith("/bin/sh -c 'echo")  # what it ran, and
    assert step["data"]["stdout"] == "started\n"  # what it said before it was cut short
    assert took < 2.0  # about 1 s: the shell and sleep end on SIGTERM at once
    shell, sleeper = (int((tmp_path / f).read_text()) for f in ("shell.pid", "sleep.pid"))
    assert eventually(lambda: gone(sleeper) and group_gone(shell))


def test_config_validate_names_each_problem(tmp_path: Path) -> None:
    workflow = """\
    workflows:
      wf:
        steps:
          - type: command
          - type: command
            with: {run: [], cwd: "", env: [1], success_codes: [256], junit: 3}
          - type: command
            with: {run: [pytest], shell: "pytest"}
          - type: command
            with: {shell: "  ", run_: 1}
          - type: command
            with: {run: [[pytest]]}
    """
    code, _, err = run_cli(tmp_path, workflow, "config", "validate")
    assert code == 1
    lines = [line.split(": ", 1)[1] for line in err.splitlines() if "workflows." in line]
    assert lines == [
        "workflows.wf.steps[0].with: give exactly one of 'run' (a list of arguments) or 'shell'",
        "workflows.wf.steps[1].with.run: expected a non-empty list of arguments, got []",
        "workflows.wf.steps[1].with.cwd: expected a non-empty string, got ''",
        "workflows.wf.steps[1].with.junit: expected a non-empty string, got 3",
        "workflows.wf.steps[1].with.env: expected a mapping of variable names to text or numbers",
        "workflows.wf.steps[1].with.success_codes: expected a list of exit codes 0-255, got [256]",
        "workflows.wf.steps[2].with: give exactly one of 'run' (a list of arguments) or 'shell'",
        "workflows.wf.steps[3].with.run_: unknown parameter 'run_' for step type 'command'"
        " (did you mean 'run'?)",
        "workflows.wf.steps[4].with.run: the first argument must name the program, got ['pytest']",
    ]


def test_a_blank_shell_script_is_refused() -> None:
    problem = [("shell", "expected a script, or a list of a script and its arguments")]
    assert command.check_params({"shell": "  "}) == problem
    assert command.check_params({"shell": [3, "x"]}) == problem
    assert command.check_params({"shell": ["pytest -q", ["a"]]}) == []


def test_a_template_inside_a_shell_script_is_refused() -> None:
    (problem,) = command.check_params({"shell": "pytest ${{ failures[].test }}"})
    assert problem[0] == "shell" and "would not be quoted" in problem[1]
    assert command.check_params({"shell": ["pytest", "${{ failures[].test }}"]}) == []


def test_argv_of_refuses_values_that_are_not_arguments() -> None:
    with pytest.raises(StepError, match=r"with.run\[1\] should be text or a number, got dict"):
        command.argv_of({"run": ["x", {"a": 1}]})
    with pytest.raises(StepError, match="non-empty list"):
        command.argv_of({"run": "pytest"})
    with pytest.raises(StepError, match="should start with the program"):
        command.argv_of({"run": [[]]})
    with pytest.raises(StepError, match="got null"):
        command.argv_of({"shell": ["echo", None]})
