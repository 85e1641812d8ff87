"""The command line: argparse commands, each a thin wrapper over one library call.

Every command opens what it needs, calls the library, prints, and returns an exit code.
Errors of the ``AegisError`` tree become one clear message; anything else becomes an
"internal error" line (the traceback only with ``AEGIS_DEBUG=1``). Heavy modules (httpx,
yaml, sqlite3, asyncio) are imported inside the commands that need them, so that
``--version`` and ``--help`` start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from aegis import __version__
from aegis.errors import AegisError, ConfigError, Conflict
from aegis.logs import setup_logging

if TYPE_CHECKING:
    from aegis.config.model import Config
    from aegis.console import Console
    from aegis.records import Run

__all__ = ["EXIT", "main", "run_exit_code"]

# Exit codes of `aegis run` (DESIGN §8); other commands use the same numbers.
EXIT = {
    "passed": 0,
    "tests_failing": 1,
    "usage": 2,
    "step_failed": 3,
    "skipped": 4,  # a concurrency rule (`skip`) refused the run: it did not start
    "internal": 70,
    "output": 74,  # the output could not be written (a full disk); sysexits' EX_IOERR
    "interrupted": 130,
    "pipe_closed": 141,  # the reader of the output left, as 128 + SIGPIPE for other tools
}
# Write failures that are the output's destination, not Aegis: said in one line.
_OUTPUT_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EIO") if hasattr(errno, name)
)


class _Env:
    """What a command may touch of the outside: streams and environment variables."""

    def __init__(self, stdout: TextIO, stderr: TextIO, environ: Mapping[str, str]) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.environ = environ

    def out(self) -> Console:
        from aegis.console import Console

        return Console(self.stdout, self.environ)

    def err(self) -> Console:
        from aegis.console import Console

        return Console(self.stderr, self.environ)

    def warn(self, message: str) -> None:
        # through the log, whose handler shows each warning once however often it comes
        logging.getLogger("aegis.cli").warning("%s", message)


def run_exit_code(run: Run) -> int:
    """The exit code of `aegis run` for a finished run."""
    status = run.status.value
    if status == "succeeded":
        return (
            EXIT["passed"]
            if run.verdict and run.verdict.value == "passed"
            else EXIT["tests_failing"]
        )
    if status in ("cancelled", "interrupted"):
        return EXIT["interrupted"]
    return EXIT["step_failed"]


def _load(args: argparse.Namespace, env: _Env, path: str | None = None) -> Config:
    from aegis.config import find_config, load_config

    found = find_config(path or args.config, environ=env.environ)
    return load_config(found, environ=env.environ)


def _dump_json(data: Any, stream: TextIO) -> None:
    import json

    json.dump(data, stream, indent=2, ensure_ascii=False)
    stream.write("\n")


# ---------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace, env: _Env) -> int:
    from aegis.config.params import coerce_params
    from aegis.runs import run_workflow

    config = _load(args, env)
    if args.workflow not in config.workflows:
        _unknown_workflow(config, args.workflow)
    given = _param_options(args.param)
    params = coerce_params(args.workflow, config.workflows[args.workflow].params, given, text=True)
    if args.junit:
        _check_writable(args.junit)
    from aegis.config.environment import unset_key_warnings

    for warning in unset_key_warnings(config, env.environ, args.workflow):
        env.warn(warning)
    report, codes = _reporter(args, env, config, no_history=args.no_history)
    run_workflow(
        config,
        args.workflow,
        record=not args.no_history,
        progress=None if args.quiet else env.err(),
        environ=env.environ,
        warn=env.warn,
        params=params,
        report=report,
    )
    return codes[0]


def _reporter(
    args: argparse.Namespace, env: _Env, config: Config, *, no_history: bool
) -> tuple[Callable[[Run], None], list[int]]:
    """What prints a run as it ends, and the list its exit code is put in.

    Every output is written before webhook deliveries are waited for: a SIGTERM during
    that wait ends the wait, never the output.
    """
    codes: list[int] = []

    def report(run: Run) -> None:
        code = run_exit_code(run)
        where = _where_recorded(config, run, no_history=no_history)
        try:
            if args.json:
                _dump_json(run.to_dict(), env.stdout)
            else:
                from aegis.console import render_run

                render_run(env.out(), run)
            env.stdout.flush()
        except OSError:  # a closed pipe or a full disk: the run is recorded, the JUnit
            _ci_outputs(args, env, run, code, where)  # file and CI outputs still written
            raise
        codes.append(_ci_outputs(args, env, run, code, where))

    return report, codes


def _where_recorded(config: Config, run: Run, *, no_history: bool) -> str:
    """Where a finished run can still be found, should writing its JUnit file fail."""
    from aegis.history import MEMORY_PATH

    if no_history:
        return f"run {run.run_id} was not recorded: --no-history"
    if config.history.path == MEMORY_PATH:
        return f"run {run.run_id} was not recorded: history.path is :memory:"
    return f"run {run.run_id} is in the history"


def _param_options(options: Sequence[str]) -> dict[str, str]:
    """``-p NAME=VALUE`` options as a mapping; a malformed or repeated one is a usage error."""
    given: dict[str, str] = {}
    for option in options:
        name, sep, value = option.partition("=")
        if not sep or not name:
            raise _usage(f"-p takes NAME=VALUE, not {option!r}")
        if name in given:
            raise _usage(f"-p {name}: given more than once")
        given[name] = value
    return given


def cmd_rerun(args: argparse.Namespace, env: _Env) -> int:
    from aegis.engine.rerun import rerun_inputs
    from aegis.errors import NotFound
    from aegis.history import open_history
    from aegis.runs import run_workflow

    config = _load(args, env)
    if args.junit:
        _check_writable(args.junit)
    store = open_history(config.history, warn=env.warn, reading=True, environ=env.environ)
    try:
        old = store.get(args.run_id)
    finally:
        store.close()
    if old is None:
        raise NotFound(f"no run '{args.run_id}' in {config.history.path}")
    given = _param_options(args.param)
    params, reuse = rerun_inputs(
        config.workflows, old, given, from_failed=args.from_failed, text=True
    )
    report, codes = _reporter(args, env, config, no_history=False)
    run_workflow(
        config,
        old.workflow,
        progress=None if args.quiet else env.err(),
        environ=env.environ,
        warn=env.warn,
        params=params,
        rerun_of=old.run_id,
        reuse=reuse,
        report=report,
    )
    return codes[0]


def cmd_schedules(args: argparse.Namespace, env: _Env) -> int:
    if args.count < 1:
        raise _usage("--count must be at least 1")
    from datetime import datetime, timezone

    from aegis.config.render import schedule_to_dict
    from aegis.records import format_timestamp
    from aegis.schedules import next_fires

    config = _load(args, env)
    now = datetime.now(timezone.utc)
    found = []
    for workflow in config.workflows.values():
        for spec in workflow.schedules:
            ticks = [format_timestamp(t) for t in next_fires(spec, now, args.count)]
            found.append({"workflow": workflow.key, **schedule_to_dict(spec), "next_fires": ticks})
    if args.json:
        _dump_json({"schedules": found}, env.stdout)
        return 0
    out = env.out()
    if not found:
        out.line("No schedules configured.")
    for item in found:
        when = (
            f"cron {item['cron']} ({item['timezone']})"
            if "cron" in item
            else (f"every {item['every']}")
        )
        out.line(f"{item['workflow']:<16} {when}  overlap {item['overlap']}")
        for tick in item["next_fires"]:
            out.line(f"  next: {tick}")
    return 0


def _check_writable(path: str) -> None:
    """Fail before the run, not after it, when the JUnit file cannot be written."""
    import tempfile

    from aegis.ci.junit import junit_target

    try:
        target, direct = junit_target(path)
        if target.is_dir():
            raise IsADirectoryError(f"'{path}' is a directory")
        if direct:
            if not os.access(target, os.W_OK):
                raise PermissionError("not writable")
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target.parent):
            pass
    except OSError as exc:
        raise _usage(f"--junit: cannot write '{path}': {exc.strerror or exc}") from None


def _ci_outputs(args: argparse.Namespace, env: _Env, run: Run, code: int, where: str) -> int:
    """The JUnit file and GitHub Actions output of a finished run; returns the exit code.

    ``where`` says where the run can still be found, should the JUnit file fail.
    """
    if env.environ.get("GITHUB_ACTIONS") == "true":
        from aegis.ci.github import annotation_lines

        stream = env.stderr if args.json else env.stdout
        for line in annotation_lines(run):
            print(line, file=stream)
        stream.flush()
    summary = env.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        from aegis.ci.github import step_summary

        try:
            with open(summary, "a", encoding="utf-8") as stream:
                stream.write(step_summary(run))
        except OSError as exc:
            env.warn(f"cannot append to GITHUB_STEP_SUMMARY '{summary}': {exc.strerror or exc}")
    if args.junit:
        from aegis.ci.junit import write_junit

        try:
            write_junit(run, args.junit)
        except OSError as exc:
            print(
                f"aegis: error: cannot write the JUnit report '{args.junit}': "
                f"{exc.strerror or exc} ({where})",
                file=env.stderr,
            )
            return code or EXIT["usage"]
    return code


def _unknown_workflow(config: Config, key: str) -> None:
    from aegis.errors import NotFound

    known = ", ".join(sorted(config.workflows)) or "none"
    raise NotFound(f"unknown workflow '{key}' (known: {known})")


def cmd_status(args: argparse.Namespace, env: _Env) -> int:
    import asyncio

    from aegis.services import check_all

    config = _load(args, env)
    results = asyncio.run(check_all(config.services.values(), environ=env.environ))
    if args.json:
        _dump_json(
            {
                "services": [
                    {"key": h.key, "name": h.name, "url": h.url, "health": h.to_dict()}
                    for h in results
                ]
            },
            env.stdout,
        )
    else:
        from aegis.console import render_services

        render_services(env.out(), results)
    return 0 if all(h.up for h in results) else 1


def cmd_config_show(args: argparse.Namespace, env: _Env) -> int:
    from aegis.config import config_to_dict

    config = _load(args, env)
    data = config_to_dict(config, redact=True)
    if args.json:
        _dump_json(data, env.stdout)
    else:
        import yaml

        env.stdout.write(f"# {config.source}\n" if config.source else "")
        yaml.safe_dump(data, env.stdout, sort_keys=False, allow_unicode=True)
    return 0


def cmd_config_validate(args: argparse.Namespace, env: _Env) -> int:
    from aegis.config import find_config, load_config

    try:
        found = find_config(args.path or args.config, environ=env.environ)
        config = load_config(found, environ=env.environ)
    except ConfigError as exc:
        print(exc, file=env.stderr)
        count = len(exc.problems)
        print(f"invalid: {count} problem{'s' if count != 1 else ''}", file=env.stderr)
        return 1
    from aegis.config.environment import unset_key_warnings

    for warning in unset_key_warnings(config, env.environ):
        env.warn(warning)
    print(
        f"{found}: valid ({len(config.services)} services, {len(config.workflows)} workflows)",
        file=env.stdout,
    )
    return 0


def cmd_history(args: argparse.Namespace, env: _Env) -> int:
    words = list(args.words)
    if words[:1] == ["show"]:
        if len(words) != 2:
            raise _usage("history show takes exactly one RUN_ID")
        return _history_show(args, env, words[1])
    if len(words) > 1:
        raise _usage("history takes at most one WORKFLOW (or: history show RUN_ID)")
    if args.limit < 1:
        raise _usage("--limit must be at least 1")
    from aegis.history import open_history

    config = _load(args, env)
    workflow = words[0] if words else None
    if workflow is not None and workflow not in config.workflows:
        _unknown_workflow(config, workflow)
    missing = _no_history_file(config)
    runs: list[Run] = []
    if missing:  # reading never creates a file, and a mistyped path should not look empty
        if not args.json:
            print(f"No runs recorded: {missing}.", file=env.stdout)
            return 0
        env.warn(missing)
    else:
        store = open_history(config.history, warn=env.warn, reading=True, environ=env.environ)
        try:
            runs = store.list(workflow=workflow, limit=args.limit)
        finally:
            store.close()
    if args.json:
        _dump_json({"runs": [r.to_dict(summary=True) for r in runs]}, env.stdout)
    else:
        from aegis.console import render_runs

        render_runs(env.out(), runs)
    return 0


def _no_history_file(config: Config) -> str | None:
    """Why there is no history to read (its file does not exist), else ``None``."""
    from aegis.history import MEMORY_PATH

    path = config.history.path
    if config.history.url or path == MEMORY_PATH or os.path.lexists(path):
        return None
    return f"there is no history file at {path} (history.path; nothing was recorded there)"


def _history_show(args: argparse.Namespace, env: _Env, run_id: str) -> int:
    from aegis.errors import NotFound
    from aegis.history import open_history

    config = _load(args, env)
    missing = _no_history_file(config)
    if missing:
        raise NotFound(f"no run '{run_id}': {missing}")
    store = open_history(config.history, warn=env.warn, reading=True, environ=env.environ)
    try:
        run = store.get(run_id)
    finally:
        store.close()
    if run is None:
        raise NotFound(f"no run '{run_id}' in {config.history.path}")
    if args.json:
        _dump_json(run.to_dict(), env.stdout)
    else:
        from aegis.console import render_run

        render_run(env.out(), run)
    return 0


def cmd_tests(args: argparse.Namespace, env: _Env) -> int:
    if args.limit < 1:
        raise _usage("--limit must be at least 1")
    from aegis.history import open_history

    config = _load(args, env)
    workflow = args.workflow
    if workflow is not None and workflow not in config.workflows:
        _unknown_workflow(config, workflow)
    store = open_history(config.history, warn=env.warn, reading=True, environ=env.environ)
    try:
        tests = store.tests(workflow, flaky=args.flaky, limit=args.limit)
    finally:
        store.close()
    if args.json:
        _dump_json({"tests": [t.to_dict() for t in tests], "flaky": args.flaky}, env.stdout)
    else:
        from aegis.console import render_tests

        render_tests(env.out(), tests, flaky=args.flaky)
    return 0


def cmd_serve(args: argparse.Namespace, env: _Env) -> int:
    from aegis.api.app import serve

    _check_port(args.port)
    config = _load(args, env)
    serve(
        config,
        environ=env.environ,
        stderr=env.stderr,
        host=args.host,
        port=args.port,
        warn=env.warn,
    )
    return 0


def cmd_worker(args: argparse.Namespace, env: _Env) -> int:
    from aegis.worker_command import run_worker

    run_worker(
        _load(args, env),
        environ=env.environ,
        stderr=env.stderr,
        drain_timeout=args.drain_timeout,
        warn=env.warn,
    )
    return 0


def _check_port(port: int | None, option: str = "--port") -> None:
    if port is not None and not 0 <= port <= 65535:
        raise _usage(f"{option} must be from 0 to 65535 (0: any free port), not {port}")


# The demo's closing hint, in commands as someone holding only the built file types them.
DEMO_NEXT = (
    "Next: `python3 aegis.pyz demo --services` keeps those services up (qaagent on :8080,",
    "bugalizer on :8090) until Ctrl-C. Point an aegis.yaml at them (aegis.example.yaml in",
    "the Aegis repository shows every key) and run `python3 aegis.pyz run WORKFLOW`.",
)


def cmd_demo(args: argparse.Namespace, env: _Env) -> int:
    if args.services:
        if args.serve or args.json or args.port is not None:
            raise _usage("demo --services takes only --host, --qaagent-port and --bugalizer-port")
        from aegis import demo

        _check_port(args.qaagent_port, "--qaagent-port")
        _check_port(args.bugalizer_port, "--bugalizer-port")
        return demo.serve_services(
            args.host or demo.DEFAULT_HOST,
            demo.DEFAULT_QAAGENT_PORT if args.qaagent_port is None else args.qaagent_port,
            demo.DEFAULT_BUGALIZER_PORT if args.bugalizer_port is None else args.bugalizer_port,
            stdout=env.stdout,
            stderr=env.stderr,
        )
    if args.qaagent_port is not None or args.bugalizer_port is not None:
        raise _usage("--qaagent-port and --bugalizer-port go with demo --services")
    if args.serve:
        from aegis.api.app import serve_demo

        _check_port(args.port)
        serve_demo(stderr=env.stderr, host=args.host, port=args.port, warn=env.warn)
        return 0
    from aegis.demo_pipeline import run_demo

    runs = run_demo(progress=env.err(), warn=env.warn)
    if args.json:
        _dump_json([run.to_dict() for run in runs], env.stdout)
    else:
        from aegis.console import render_run

        out = env.out()
        for run in runs:
            render_run(out, run)
            out.line()
        then = ", then a real pytest suite run by a `command` step" if len(runs) > 1 else ""
        out.line(f"That was the demo pipeline against Aegis's built-in reference services{then}.")
        for line in DEMO_NEXT:
            out.line(line)
    # the demo succeeded when its pipelines ran end to end; the verdict is part of the show
    failed = [run for run in runs if run.status.value != "succeeded"]
    return run_exit_code(failed[0]) if failed else 0


def _usage(message: str) -> AegisError:
    from aegis.errors import UsageError

    return UsageError(message)


# ------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aegis",
        description="Aegis, the QA control plane: run QA workflows against your QA services.",
        epilog="Exit codes of run: 0 passed, 1 tests still failing, 2 usage or config error, "
        "3 a step failed or the run timed out, 130 interrupted.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $AEGIS_CONFIG, "
        "else .aegis.yaml or aegis.yaml here or in a parent directory)",
    )
    parser.add_argument("--version", action="version", version=f"aegis {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = commands.add_parser("run", help="run a workflow; the exit code is the verdict")
    run.add_argument("workflow", help="the workflow's key in the config")
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a value for one of the workflow's params (repeatable)",
    )
    run.add_argument("--json", action="store_true", help="print the run as JSON on stdout")
    run.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    run.add_argument("--no-history", action="store_true", help="do not record this run")
    run.add_argument(
        "--junit",
        metavar="PATH",
        help="also write the run as JUnit XML (a testcase per step and per failing test)",
    )
    run.set_defaults(handler=cmd_run)

    rerun = commands.add_parser(
        "rerun", help="run a recorded run's workflow again, linked to it by rerun_of"
    )
    rerun.add_argument("run_id", metavar="RUN_ID", help="the run (or a unique prefix of its id)")
    rerun.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one of the run's params (repeatable); a secret one must be given again",
    )
    rerun.add_argument(
        "--from-failed",
        action="store_true",
        help="reuse the steps before the first failed, skipped or unreached one",
    )
    rerun.add_argument("--json", action="store_true", help="print the run as JSON on stdout")
    rerun.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    rerun.add_argument("--junit", metavar="PATH", help="also write the run as JUnit XML")
    rerun.set_defaults(handler=cmd_rerun)

    schedules = commands.add_parser("schedules", help="list each schedule's next fire times")
    schedules.add_argument(
        "--count", type=int, default=3, metavar="N", help="fire times per schedule (3)"
    )
    schedules.add_argument("--json", action="store_true", help="print JSON on stdout")
    schedules.set_defaults(handler=cmd_schedules)

    status = commands.add_parser(
        "status", help="check every service's health (exit 1 if any is down)"
    )
    status.add_argument("--json", action="store_true", help="print JSON on stdout")
    status.set_defaults(handler=cmd_status)

    config = commands.add_parser("config", help="show or validate the config")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION")
    config_commands.required = True
    show = config_commands.add_parser("show", help="print the effective config, secrets as ***")
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    show.set_defaults(handler=cmd_config_show)
    validate = config_commands.add_parser("validate", help="check a config; exit 1 if invalid")
    validate.add_argument("path", nargs="?", help="the file (default: the discovered config)")
    validate.set_defaults(handler=cmd_config_validate)

    history = commands.add_parser(
        "history",
        help="list recorded runs: history [WORKFLOW], or one run: history show RUN_ID",
        usage="aegis history [WORKFLOW] [--limit N] [--json]\n"
        "       aegis history show RUN_ID [--json]",
    )
    history.add_argument("words", nargs="*", metavar="WORKFLOW | show RUN_ID", help="what to list")
    history.add_argument("--limit", type=int, default=20, metavar="N", help="at most N runs (20)")
    history.add_argument("--json", action="store_true", help="print JSON on stdout")
    history.set_defaults(handler=cmd_history)

    tests = commands.add_parser(
        "tests",
        help="test history: runs, failures and flips per test id",
        usage="aegis tests [WORKFLOW] [--flaky] [--limit N] [--json]",
    )
    tests.add_argument("workflow", nargs="?", metavar="WORKFLOW", help="only this workflow")
    tests.add_argument(
        "--flaky", action="store_true", help="only tests that flipped, most flaky first"
    )
    tests.add_argument("--limit", type=int, default=50, metavar="N", help="at most N tests (50)")
    tests.add_argument("--json", action="store_true", help="print JSON on stdout")
    tests.set_defaults(handler=cmd_tests)

    serve = commands.add_parser(
        "serve", help="serve the JSON API and the landing page until Ctrl-C or SIGTERM"
    )
    _add_listen_options(serve)
    serve.set_defaults(handler=cmd_serve)

    worker = commands.add_parser(
        "worker", help="claim and run queued runs from a PostgreSQL history (no HTTP)"
    )
    worker.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, seconds running runs get to end before they are handed back (30)",
    )
    worker.add_argument(
        "--config", metavar="PATH", default=argparse.SUPPRESS, help="config file (as before)"
    )
    worker.set_defaults(handler=cmd_worker)

    demo = commands.add_parser("demo", help="run the example pipeline against built-in services")
    demo.add_argument("--json", action="store_true", help="print the run as JSON on stdout")
    demo.add_argument(
        "--serve",
        action="store_true",
        help="then keep serving the API and the landing page with a first run started",
    )
    demo.add_argument(
        "--services",
        action="store_true",
        help="only start the reference services (qaagent on :8080, bugalizer on :8090, "
        "as aegis.example.yaml expects) until Ctrl-C; --host picks the address",
    )
    for service, default in (("qaagent", 8080), ("bugalizer", 8090)):
        demo.add_argument(
            f"--{service}-port",
            type=int,
            metavar="P",
            help=f"with --services: {service}'s port (default {default}; 0 picks a free one)",
        )
    _add_listen_options(demo, "with --serve: ")
    demo.set_defaults(handler=cmd_demo)
    return parser


def _add_listen_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    parser.add_argument(
        "--host", help=f"{prefix}the address to listen on (default: server.host, 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=int,
        help=f"{prefix}the port (default: server.port, 8000; 0 picks a free one)",
    )


# -------------------------------------------------------------------------------- main


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the CLI; returns the exit code (never raises, never calls ``sys.exit``)."""
    env = _Env(
        stdout or sys.stdout, stderr or sys.stderr, os.environ if environ is None else environ
    )
    try:
        with _interruptible():
            return _command(argv, env)
    except KeyboardInterrupt:  # before the command began, or as it ended
        _say(env, "aegis: interrupted")
        return EXIT["interrupted"]


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C raises ``KeyboardInterrupt`` inside, so the command can record and say what
    it stopped. The entry points (``python -m aegis``, the built file) make Ctrl-C end
    the process quietly until then (``SIG_DFL``); it does that again afterwards, so no
    moment of a start or an exit shows a traceback."""
    import signal
    import threading

    quiet = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) == signal.SIG_DFL
    )
    if quiet:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if quiet:
            signal.signal(signal.SIGINT, signal.SIG_DFL)


def _command(argv: Sequence[str] | None, env: _Env) -> int:
    parser = build_parser()
    try:
        # argparse prints help, version and usage errors to sys.stdout/sys.stderr
        with contextlib.redirect_stdout(env.stdout), contextlib.redirect_stderr(env.stderr):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage, help or the version
        return exc.code if isinstance(exc.code, int) else EXIT["usage"]
    debug = env.environ.get("AEGIS_DEBUG", "") not in ("", "0")
    teardown = setup_logging(env.stderr, debug)
    try:
        code = int(args.handler(args, env))
        env.stdout.flush()  # a full disk or a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        _discard(env.stdout)  # the reader has gone, as `| head` does: nothing to say
        return EXIT["pipe_closed"]
    except OSError as exc:
        if exc.errno not in _OUTPUT_ERRNOS:
            return _internal_error(exc, env, debug)
        _discard(env.stdout)
        _say(env, f"aegis: error: cannot write the output: {exc.strerror}")
        return EXIT["output"]
    except ConfigError as exc:
        _say(env, str(exc))
        return EXIT["usage"]
    except Conflict as exc:
        _say(env, f"aegis: {exc}")
        return EXIT["skipped"] if exc.run_id is not None else EXIT["usage"]
    except AegisError as exc:
        _say(env, f"aegis: {exc}")
        return EXIT["usage"]
    except KeyboardInterrupt:
        _say(env, "aegis: interrupted")
        return EXIT["interrupted"]
    except Exception as exc:
        return _internal_error(exc, env, debug)
    finally:
        teardown()


def _internal_error(exc: Exception, env: _Env, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=env.stderr)
    _say(
        env,
        f"aegis: internal error: {type(exc).__name__}: {exc} "
        "(set AEGIS_DEBUG=1 to see the traceback)",
    )
    return EXIT["internal"]


def _say(env: _Env, line: str) -> None:
    """A last line on stderr; a stderr that cannot take it (closed, full) changes nothing."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=env.stderr, flush=True)


def _discard(stream: TextIO) -> None:
    """Send what is left for ``stream`` (and the flush at exit) to the null device, so
    the interpreter does not fail on it again when it exits."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # not a file (a test's StringIO): nothing is flushed at exit
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)
