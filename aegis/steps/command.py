"""``command``: run a local program (a test runner, a script) as a step.

``with:`` takes ``run`` (an argument list, no shell) or ``shell`` (a script for
``/bin/sh -c``), ``cwd`` (relative to the config file's directory, which is also the
default), ``env`` (added to the environment), ``success_codes`` (default ``[0]``) and
``junit`` (a glob of the JUnit XML files the program writes). With ``junit``, the test
cases in the files written during the step are its test results, and exit code 1 with
failing tests in them is data (the tests failed), not a failed step.

A value in ``run`` that is a list (``${{ failures[].test }}``) becomes one argument per
item. ``shell`` may also be a list: the script, then arguments that are appended to it
quoted for the shell, so that no value can change the command.
"""

from __future__ import annotations

import glob
import os
import shlex
import stat
from collections.abc import Mapping
from typing import Any

from aegis.errors import StepError
from aegis.steps.base import StepContext, StepType
from aegis.text import printable

__all__ = ["PARAMS", "STEP", "check_params", "run_command"]

PARAMS = frozenset({"run", "shell", "cwd", "env", "junit", "success_codes"})
SHELL = "/bin/sh"
# What a failure message quotes of the program's last words.
TAIL_LINES = 5
TAIL_CHARS = 600
_SCALARS = (str, int, float, bool)


def check_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems with ``with:``: exactly one of ``run`` and ``shell``, and the types."""
    problems: list[tuple[str, str]] = []
    has_run, has_shell = "run" in params, "shell" in params
    if has_run == has_shell:
        problems.append(("", "give exactly one of 'run' (a list of arguments) or 'shell'"))
    if has_run:
        problems += _check_run(params["run"])
    if has_shell:
        problems += _check_shell(params["shell"])
    for key in ("cwd", "junit"):
        value = params.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            problems.append((key, f"expected a non-empty string, got {value!r}"))
    env = params.get("env")
    if env is not None and not (
        isinstance(env, dict) and all(isinstance(v, _SCALARS) for v in env.values())
    ):
        problems.append(("env", "expected a mapping of variable names to text or numbers"))
    codes = params.get("success_codes")
    if codes is not None and not (
        isinstance(codes, list)
        and codes
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in codes)
    ):
        problems.append(("success_codes", f"expected a list of exit codes 0-255, got {codes!r}"))
    return problems


def _check_run(run: Any) -> list[tuple[str, str]]:
    if not isinstance(run, list) or not run:
        return [("run", f"expected a non-empty list of arguments, got {run!r}")]
    if not isinstance(run[0], str) or not run[0]:
        return [("run", f"the first argument must name the program, got {run[0]!r}")]
    return []


def _check_shell(shell: Any) -> list[tuple[str, str]]:
    script = shell[0] if isinstance(shell, list) and shell else shell
    if not isinstance(script, str) or not script.strip():
        return [("shell", "expected a script, or a list of a script and its arguments")]
    if "${{" in script:
        # resolved into the script's text, a value would be read by the shell as code
        return [
            (
                "shell",
                "a ${{ }} template in the script would not be quoted; give it as an argument "
                'after the script: shell: ["SCRIPT", "${{ ... }}"]',
            )
        ]
    return []


def argv_of(params: Mapping[str, Any]) -> list[str]:
    """The program and its arguments, from ``run`` or ``shell`` as resolved for an attempt."""
    if "shell" in params:
        shell = params["shell"]
        if isinstance(shell, list):
            script, extra = str(shell[0]), _flat("shell", shell[1:])
            shell = " ".join([script, *(shlex.quote(arg) for arg in extra)])
        return [SHELL, "-c", str(shell)]
    run = params.get("run")
    if not isinstance(run, list) or not run:
        raise StepError("error", "with.run should be a non-empty list of arguments")
    argv = _flat("run", run)
    if not argv or not argv[0]:
        raise StepError("error", "with.run should start with the program to run")
    return argv


def _flat(key: str, items: list[Any]) -> list[str]:
    """One argument per item, and per item of an item that is a list."""
    argv: list[str] = []
    for index, item in enumerate(items):
        for value in item if isinstance(item, list) else [item]:
            argv.append(_argument(key, index, value))
    return argv


def _argument(key: str, index: int, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    shown = "null" if value is None else type(value).__name__
    raise StepError("error", f"with.{key}[{index}] should be text or a number, got {shown}")


def _cwd(ctx: StepContext) -> str:
    base = (ctx.config.base_dir if ctx.config else None) or os.getcwd()
    cwd = ctx.spec.params.get("cwd")
    path = os.path.normpath(os.path.join(base, os.path.expanduser(str(cwd)))) if cwd else base
    if not os.path.isdir(path):
        raise StepError("error", f"with.cwd: {path} is not a directory")
    return path


def _environment(ctx: StepContext) -> dict[str, str]:
    extra = ctx.spec.params.get("env") or {}
    added = {str(k): _argument("env", 0, v) for k, v in extra.items()}
    return {**os.environ, **ctx.environ, **added}


async def run_command(ctx: StepContext) -> dict[str, Any]:
    """Run the step's program; its exit code, output tails and, with ``junit``, results.

    Raises ``StepError``: ``error`` when the program cannot start or exits with a code
    that is not a success, ``protocol`` when a JUnit file is missing or malformed.
    """
    from aegis.steps.process import run_process

    params = ctx.spec.params
    argv = argv_of(params)
    cwd = _cwd(ctx)
    pattern = params.get("junit")
    before = _junit_files(cwd, str(pattern)) if pattern is not None else {}
    ctx.progress["command"] = shlex.join(argv)  # with the output so far if cut short
    try:
        finished = await run_process(argv, cwd=cwd, env=_environment(ctx), cut_short=ctx.progress)
    except OSError as exc:
        raise StepError("error", f"cannot run {argv[0]!r}: {exc.strerror or exc}") from exc
    data: dict[str, Any] = {
        "command": shlex.join(argv),
        "exit_code": finished.code,
        "stdout": finished.stdout,
        "stderr": finished.stderr,
    }
    codes = params.get("success_codes") or [0]
    if pattern is None:
        if finished.code not in codes:
            raise _exit_error(argv[0], data)
        return data
    # the files the program wrote: new ones, and old ones it rewrote
    after = _junit_files(cwd, str(pattern))
    files = [path for path, stamp in after.items() if before.get(path) != stamp]
    if not files:
        if finished.code not in codes:
            raise _exit_error(argv[0], data)
        message = f"{argv[0]} wrote no JUnit file matching {pattern!r} in {cwd}"
        raise StepError("protocol", message, data=data)
    results = _results(files, cwd, data)
    tests_failed = finished.code == 1 and results["failed"] > 0
    if finished.code not in codes and not tests_failed:
        raise _exit_error(argv[0], data)
    return {**data, **results, "junit_files": [os.path.relpath(f, cwd) for f in files]}


def _junit_files(cwd: str, pattern: str) -> dict[str, tuple[int, int]]:
    """The files matching ``pattern``, each with its modification time and size."""
    found: dict[str, tuple[int, int]] = {}
    for path in sorted(glob.glob(os.path.join(cwd, os.path.expanduser(pattern)), recursive=True)):
        try:
            info = os.stat(path)
        except OSError:  # removed meanwhile
            continue
        if stat.S_ISREG(info.st_mode):
            found[path] = (info.st_mtime_ns, info.st_size)
    return found


def _results(files: list[str], cwd: str, data: dict[str, Any]) -> dict[str, Any]:
    from aegis.ci.junit_read import JUnitError, read_junit

    try:
        return read_junit(files, root=cwd)
    except JUnitError as exc:
        raise StepError("protocol", str(exc), data=data) from exc


def _exit_error(program: str, data: Mapping[str, Any]) -> StepError:
    from aegis.steps.process import signal_name

    code = data["exit_code"]
    ended = f"was killed by {signal_name(code)}" if code < 0 else f"exited with code {code}"
    tail = last_words(data["stderr"]) or last_words(data["stdout"])
    message = f"{program} {ended}" + (f"; last output: {tail}" if tail else "")
    return StepError("error", message, data=dict(data))  # the output stays in the record


def last_words(output: str) -> str:
    """The last few non-empty lines of ``output``, on one printable line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()][-TAIL_LINES:]
    text = printable(" | ".join(lines))
    return text if len(text) <= TAIL_CHARS else "…" + text[-(TAIL_CHARS - 1) :]


STEP = StepType(
    name="command",
    execute=run_command,
    needs_service=False,
    params=PARAMS,
    check_params=check_params,
    description="Run a local program, such as a test runner writing JUnit XML.",
)
