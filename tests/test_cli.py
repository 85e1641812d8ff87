"""Every CLI command and exit code, through ``main(argv)`` with real files and services."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from aegis import __version__
from aegis.cli import main

GOOD = """
services:
  qaagent: {url: "%(qaagent)s"}
  bugalizer: {url: "%(bugalizer)s"}
workflows:
  pipeline:
    steps:
      - {type: discover, service: qaagent}
      - {type: test, service: qaagent, retries: 2, retry_delay: 0.01}
      - {type: submit_bugs, service: bugalizer, condition: has_failures,
         with: {project_id: web-shop}}
      - {type: verify, service: qaagent, condition: has_failures}
      - {type: report, condition: always}
  smoke:
    steps:
      - {type: discover, service: qaagent}
  broken:
    steps:
      - {type: discover, service: qaagent, with: {path: /nowhere}}
history:
  path: history.db
"""


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        return json.loads(self.out)


def cli(*argv: str, env: dict[str, str] | None = None) -> Result:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, environ=env or {})
    assert "Traceback" not in err.getvalue()
    return Result(code, out.getvalue(), err.getvalue())


def write(tmp_path: Path, text: str, name: str = "aegis.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def good(tmp_path: Path, demo_services: Any) -> Path:
    urls = {"qaagent": demo_services.qaagent_url, "bugalizer": demo_services.bugalizer_url}
    return write(tmp_path, GOOD % urls)


def test_version_and_help() -> None:
    version = cli("--version")
    assert (version.code, version.out.strip()) == (0, f"aegis {__version__}")
    helped = cli("--help")
    assert helped.code == 0
    for command in ("run", "status", "config", "history", "demo"):
        assert command in helped.out


def test_usage_errors_exit_2() -> None:
    assert cli().code == 2
    assert cli("frobnicate").code == 2
    assert cli("run").code == 2


def test_every_command_has_help_text() -> None:
    from aegis.cli import build_parser

    parser = build_parser()
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for choice in action._choices_actions:  # type: ignore[attr-defined]
            assert choice.help, choice.dest


# ------------------------------------------------------------------------------- run


def test_run_with_failing_tests_exits_1_and_records_the_run(good: Path) -> None:
    result = cli("--config", str(good), "run", "pipeline")
    assert result.code == 1
    assert "verdict failed" in result.out
    for step in ("discover", "test", "submit_bugs", "verify", "report"):
        assert f"  > {step}" in result.err or step == "report"
    listed = cli("--config", str(good), "history", "--json").json()["runs"]
    assert [r["workflow"] for r in listed] == ["pipeline"]
    assert listed[0]["trigger"] == "cli"


def test_run_json_is_the_run_record(good: Path) -> None:
    result = cli("--config", str(good), "run", "smoke", "--json", "--quiet")
    assert (result.code, result.err) == (0, "")
    body = result.json()
    assert body["status"] == "succeeded" and body["verdict"] == "passed"
    assert body["steps"][0]["data"]["route_count"] > 0
    shown = cli("--config", str(good), "history", "show", body["run_id"], "--json").json()
    assert shown == body


def test_run_with_a_failing_step_exits_3(good: Path) -> None:
    result = cli("--config", str(good), "run", "broken")
    assert result.code == 3
    assert "HTTP 404 from qaagent" in result.out


def test_unreachable_service_exits_3_with_kind_connection(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        services: {qaagent: {url: "http://127.0.0.1:9"}}
        workflows: {w: {steps: [{type: discover, service: qaagent}]}}
        history: {path: ":memory:"}
    """,
    )
    result = cli("--config", str(config), "run", "w", "--json")
    assert result.code == 3
    assert result.json()["steps"][0]["error_kind"] == "connection"


def test_no_history_records_nothing(good: Path) -> None:
    assert cli("--config", str(good), "run", "smoke", "--no-history", "--quiet").code == 0
    assert cli("--config", str(good), "history", "--json").json() == {"runs": []}


def test_unknown_workflow_exits_2(good: Path) -> None:
    result = cli("--config", str(good), "run", "nope")
    assert result.code == 2
    assert "unknown workflow 'nope'" in result.err


def test_missing_config_exits_2(tmp_path: Path) -> None:
    result = cli("--config", str(tmp_path / "missing.yaml"), "run", "w")
    assert result.code == 2
    assert "missing.yaml" in result.err


# ------------------------------------------------------------------- malformed configs

MALFORMED = {
    "yaml syntax": ("services: {a: [1, 2}\n", "line"),
    "top level list": ("- a\n- b\n", "mapping"),
    "unknown top key": ("servics: {}\nworkflows: {}\n", "servics"),
    "service not a mapping": ("services: {q: 3}\nworkflows: {}\n", "services.q"),
    "service without url": ("services: {q: {name: Q}}\nworkflows: {}\n", "services.q.url"),
    "service bad url": ("services: {q: {url: ftp://x}}\nworkflows: {}\n", "services.q.url"),
    "service unknown key": ("services: {q: {url: 'http://x', urll: 1}}\nworkflows: {}\n", "urll"),
    "health endpoint": (
        "services: {q: {url: 'http://x', health_endpoint: health}}\nworkflows: {}\n",
        "health_endpoint",
    ),
    "workflow no steps": ("workflows: {w: {steps: []}}\n", "workflows.w.steps"),
    "workflow steps not list": ("workflows: {w: {steps: 3}}\n", "workflows.w.steps"),
    "step no type": ("workflows: {w: {steps: [{name: x}]}}\n", "steps[0].type"),
    "unknown step type": ("workflows: {w: {steps: [{type: tset}]}}\n", "steps[0].type"),
    "unknown service": (
        "services: {qaagent: {url: 'http://x'}}\n"
        "workflows: {w: {steps: [{type: test, service: qaagnet}]}}\n",
        "steps[0].service",
    ),
    "missing service": ("workflows: {w: {steps: [{type: test}]}}\n", "steps[0].service"),
    "retries text": (
        "workflows: {w: {steps: [{type: report, retries: abc}]}}\n",
        "steps[0].retries",
    ),
    "retries negative": (
        "workflows: {w: {steps: [{type: report, retries: -1}]}}\n",
        "steps[0].retries",
    ),
    "timeout zero": ("workflows: {w: {steps: [{type: report, timeout: 0}]}}\n", "timeout"),
    "bad condition": (
        "workflows: {w: {steps: [{type: report, condition: sometimes}]}}\n",
        "steps[0].condition",
    ),
    "bad retry_on": (
        "workflows: {w: {steps: [{type: report, retry_on: [teapot]}]}}\n",
        "retry_on",
    ),
    "jitter too big": (
        "workflows: {w: {steps: [{type: report, retry_jitter: 2}]}}\n",
        "retry_jitter",
    ),
    "parallel not bool": (
        "workflows: {w: {steps: [{type: report, parallel: maybe}]}}\n",
        "parallel",
    ),
    "unknown with key": (
        "workflows: {w: {steps: [{type: report, with: {colour: red}}]}}\n",
        "colour",
    ),
    "duplicate step names": (
        "workflows: {w: {steps: [{type: report, name: r}, {type: report, name: r}]}}\n",
        "steps[1].name",
    ),
    "unset variable": ("services: {q: {url: '${NOPE_NOT_SET}'}}\nworkflows: {}\n", "NOPE_NOT_SET"),
    "port out of range": ("server: {port: 70000}\nworkflows: {}\n", "server.port"),
    "max_runs negative": ("history: {max_runs: -3}\nworkflows: {}\n", "history.max_runs"),
    "bad webhook event": (
        "webhooks: [{url: 'http://x', events: [workflow.done]}]\nworkflows: {}\n",
        "webhooks[0].events",
    ),
    "empty file": ("", "empty"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_config_is_a_clear_error(tmp_path: Path, name: str) -> None:
    text, fragment = MALFORMED[name]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    validated = cli("config", "validate", str(path))
    assert validated.code == 1
    assert "bad.yaml" in validated.err and fragment in validated.err
    ran = cli("--config", str(path), "run", "w")
    assert ran.code == 2
    assert "bad.yaml" in ran.err and fragment in ran.err


def test_validate_reports_every_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        workflows:
          w:
            steps:
              - {type: report, retries: x}
              - {type: report, timeout: -1, name: r2}
    """,
    )
    result = cli("config", "validate", str(path))
    assert result.code == 1
    assert "steps[0].retries" in result.err and "steps[1].timeout" in result.err
    assert "2 problems" in result.err


def test_validate_a_good_config(good: Path) -> None:
    result = cli("config", "validate", str(good))
    assert result.code == 0
    assert "valid (2 services, 3 workflows)" in result.out


KEYED = """
services:
  qaagent: {url: "%(qaagent)s", api_key_env: QA_KEY}
  bugalizer: {url: "%(bugalizer)s", api_key_env: BUG_KEY}
workflows:
  bugs:
    steps:
      - {type: submit_bugs, service: bugalizer, with: {project_id: web-shop}}
"""


def test_validate_and_run_warn_of_an_unset_key_variable(tmp_path: Path, demo_services: Any) -> None:
    urls = {"qaagent": demo_services.qaagent_url, "bugalizer": demo_services.bugalizer_url}
    path = write(tmp_path, KEYED % urls)
    validated = cli("config", "validate", str(path), env={"QA_KEY": "k"})
    assert validated.code == 0 and "valid (2 services, 1 workflows)" in validated.out
    assert validated.err == (
        f"aegis: warning: {path}: services.bugalizer.api_key_env: BUG_KEY is not set, "
        "so requests to bugalizer carry no X-API-Key\n"
    )
    assert (
        "warning"
        not in cli("config", "validate", str(path), env={"QA_KEY": "k", "BUG_KEY": "b"}).err
    )
    ran = cli("--config", str(path), "run", "bugs", "--quiet", "--no-history")
    assert ran.code == 0
    assert "BUG_KEY is not set" in ran.err and "QA_KEY" not in ran.err  # bugs uses bugalizer only


def test_validate_finds_the_config_by_environment(good: Path) -> None:
    assert cli("config", "validate", env={"AEGIS_CONFIG": str(good)}).code == 0


# ------------------------------------------------------------------------------ show


def test_config_show_hides_secrets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        auth: {api_key: "${KEY}"}
        workflows: {w: {steps: [{type: report}]}}
    """,
    )
    env = {"KEY": "s3cret-value"}
    as_json = cli("--config", str(path), "config", "show", "--json", env=env)
    assert as_json.code == 0
    assert as_json.json()["auth"]["api_key"] == "***"
    as_yaml = cli("--config", str(path), "config", "show", env=env)
    assert as_yaml.code == 0 and "***" in as_yaml.out
    assert "s3cret-value" not in as_json.out + as_yaml.out


# ---------------------------------------------------------------------------- status


def test_status_all_up_exits_0(good: Path) -> None:
    result = cli("--config", str(good), "status")
    assert result.code == 0
    assert result.out.count("up") >= 2


def test_status_shows_degraded_and_the_services_own_word(
    tmp_path: Path, demo_services: Any
) -> None:
    url = demo_services.bugalizer_url
    path = write(
        tmp_path,
        f"""
        services:
          bugalizer: {{url: "{url}", health_endpoint: /health/live, ready_endpoint: /health}}
          broken: {{url: "{url}", ready_endpoint: /nowhere}}
        workflows: {{}}
    """,
    )
    demo_services.bugalizer.degraded = True
    result = cli("--config", str(path), "status")
    assert result.code == 0  # degraded services still answer
    bugalizer = next(line for line in result.out.splitlines() if " bugalizer " in line)
    broken = next(line for line in result.out.splitlines() if " broken " in line)
    assert bugalizer.split()[0] == "up" and bugalizer.endswith(" ms (says 'degraded')")
    assert broken.split()[0] == "degraded"
    assert f"not ready: HTTP 404 from {url}/nowhere (says 'degraded')" in broken
    health = {
        s["key"]: s["health"]
        for s in cli("--config", str(path), "status", "--json").json()["services"]
    }
    assert (health["bugalizer"]["status"], health["bugalizer"]["service_status"]) == (
        "up",
        "degraded",
    )
    assert health["broken"]["status"] == "degraded"


def test_status_columns_line_up_whatever_the_urls(tmp_path: Path, demo_services: Any) -> None:
    path = write(
        tmp_path,
        f"""
        services:
          qaagent: {{url: "{demo_services.qaagent_url}"}}
          a_much_longer_service_key: {{url: "{demo_services.bugalizer_url}/with/a/long/prefix"}}
          down: {{url: "http://127.0.0.1:9"}}
        workflows: {{}}
    """,
    )
    result = cli("--config", str(path), "status", env={"FORCE_COLOR": "1"})
    assert result.code == 1
    plain = [re.sub(r"\033\[[0-9;]*m", "", line) for line in result.out.splitlines()]
    assert plain[0].split() == ["STATUS", "SERVICE", "URL", "DETAIL"]
    for column in ("SERVICE", "URL", "DETAIL"):
        at = plain[0].index(column)
        assert all(line[at - 2 : at] == "  " and line[at] != " " for line in plain[1:]), column


def test_status_any_down_exits_1(tmp_path: Path, demo_services: Any) -> None:
    path = write(
        tmp_path,
        f"""
        services:
          up: {{url: "{demo_services.qaagent_url}"}}
          down: {{url: "http://127.0.0.1:9"}}
        workflows: {{}}
    """,
    )
    result = cli("--config", str(path), "status", "--json")
    assert result.code == 1
    health = {s["key"]: s["health"] for s in result.json()["services"]}
    assert health["up"]["status"] == "up" and health["up"]["latency_ms"] is not None
    assert health["down"]["status"] == "down" and health["down"]["error"]


# --------------------------------------------------------------------------- history


def test_history_lists_by_workflow_and_limits(good: Path) -> None:
    for workflow in ("smoke", "smoke", "broken"):
        cli("--config", str(good), "run", workflow, "--quiet")
    smoke = cli("--config", str(good), "history", "smoke", "--json").json()["runs"]
    assert [r["workflow"] for r in smoke] == ["smoke", "smoke"]
    limited = cli("--config", str(good), "history", "--limit", "1", "--json").json()["runs"]
    assert [r["workflow"] for r in limited] == ["broken"]
    table = cli("--config", str(good), "history")
    assert table.code == 0 and "RUN" in table.out and "broken" in table.out
    shown = cli("--config", str(good), "history", "show", limited[0]["run_id"])
    assert shown.code == 0 and "HTTP 404" in shown.out
    # a unique prefix of any length, in any case, will do
    ids = [r["run_id"] for r in cli("--config", str(good), "history", "--json").json()["runs"]]
    wanted = ids[0]
    prefix = next(
        wanted[:n] for n in range(1, 13) if not any(o.startswith(wanted[:n]) for o in ids[1:])
    )
    shown = cli("--config", str(good), "history", "show", prefix.upper(), "--json")
    assert shown.code == 0 and shown.json()["run_id"] == wanted


def test_history_show_lists_the_runs_an_ambiguous_prefix_matches(tmp_path: Path) -> None:
    from aegis.history.sqlite import SqliteHistory
    from aegis.records import Run, RunStatus

    path = write(tmp_path, "history: {path: runs.db}\nworkflows: {}\n")
    with SqliteHistory(str(tmp_path / "runs.db")) as store:
        for run_id in ("ab01", "ab02", "cd03"):
            store.finish(Run(run_id, "w", RunStatus.SUCCEEDED, "2026-01-01T00:00:00.000Z"))
    result = cli("--config", str(path), "history", "show", "AB")
    assert result.code == 2
    assert "run id 'AB' is ambiguous: it matches ab01, ab02; give more characters" in result.err
    assert cli("--config", str(path), "history", "show", "C").code == 0


def test_history_errors(good: Path) -> None:
    assert cli("--config", str(good), "history", "show", "feedbeef").code == 2
    assert cli("--config", str(good), "history", "show").code == 2
    assert cli("--config", str(good), "history", "a", "b").code == 2
    assert cli("--config", str(good), "history", "--limit", "0").code == 2
    assert cli("--config", str(good), "history", "nope").code == 2


def test_history_empty(good: Path) -> None:
    (good.parent / "history.db").touch()  # a file, but no runs in it
    result = cli("--config", str(good), "history")
    assert result.code == 0 and "No runs recorded yet" in result.out


def test_reading_history_never_creates_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "history: {path: histroy/typo.db}\nworkflows: {}\n")
    missing = tmp_path / "histroy" / "typo.db"
    expected = f"there is no history file at {missing} (history.path; nothing was recorded there)"

    listed = cli("--config", str(path), "history")
    assert (listed.code, listed.out) == (0, f"No runs recorded: {expected}.\n")
    as_json = cli("--config", str(path), "history", "--json")
    assert (as_json.code, as_json.json()) == (0, {"runs": []})
    assert expected in as_json.err
    shown = cli("--config", str(path), "history", "show", "abc")
    assert shown.code == 2 and f"no run 'abc': {expected}" in shown.err
    assert list(tmp_path.iterdir()) == [path]


# ------------------------------------------------------------------------------ demo


def test_demo_runs_the_whole_story() -> None:
    result = cli("demo")
    assert result.code == 0, result.err
    assert "retry" in result.err
    for step in ("discover", "test-web", "test-api", "submit_bugs", "verify", "report"):
        assert step in result.out
    assert "bug reports filed" in result.out
    # then the sample pytest suite (pytest is installed here)
    assert "Run " in result.out and " of pytest_demo: succeeded, verdict failed" in result.out
    assert "3 tests, 1 passed, 2 failed" in result.out
    assert "1 verified, 1 still failing" in result.out
    assert "then a real pytest suite run by a `command` step." in result.out


def test_demo_ends_with_commands_a_pyz_user_can_type() -> None:
    result = cli("demo")
    hint = result.out.split("That was the demo pipeline")[1].split("\n", 1)[1]
    assert "`python3 aegis.pyz demo --services`" in hint
    assert "`python3 aegis.pyz run WORKFLOW`" in hint
    assert "`aegis " not in hint


def test_demo_services_serves_the_reference_services_until_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    import httpx

    from aegis import demo

    answers: list[int] = []
    out = io.StringIO()

    def while_serving(stop: threading.Event) -> None:
        urls = [line.split()[1] for line in out.getvalue().splitlines()[:2]]
        with httpx.Client(timeout=10) as client:
            answers.extend(client.get(f"{url}/health").status_code for url in urls)
        raise KeyboardInterrupt  # as Ctrl-C would

    monkeypatch.setattr(demo, "_wait", while_serving)
    argv = ["demo", "--services", "--qaagent-port", "0", "--bugalizer-port", "0"]
    code = main(argv, stdout=out, stderr=io.StringIO(), environ={})
    assert code == 0 and answers == [200, 200]
    assert out.getvalue().splitlines()[0].startswith("qaagent    http://127.0.0.1:")
    assert out.getvalue().splitlines()[-1] == "Press Ctrl-C to stop."


def test_demo_services_takes_only_host() -> None:
    for extra in (["--json"], ["--serve"], ["--port", "9"]):
        result = cli("demo", "--services", *extra)
        assert result.code == 2 and "demo --services takes only --host, --qaagent" in result.err
    result = cli("demo", "--qaagent-port", "9")
    assert result.code == 2 and "go with demo --services" in result.err
    result = cli("demo", "--services", "--bugalizer-port", "70000")
    assert result.code == 2 and "--bugalizer-port must be from 0 to 65535" in result.err


def test_demo_services_on_a_busy_port_says_so() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        result = cli("demo", "--services", "--qaagent-port", port, "--bugalizer-port", "0")
    assert result.code == 1 and "cannot start the demo services on 127.0.0.1" in result.err


def test_demo_json() -> None:
    result = cli("demo", "--json")
    assert result.code == 0
    runs = result.json()
    assert [(r["workflow"], r["status"]) for r in runs] == [
        ("demo", "succeeded"),
        ("pytest_demo", "succeeded"),
    ]


def test_demo_without_pytest_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import aegis.demo_pipeline

    assert aegis.demo_pipeline.pytest_available(sys.executable)
    assert not aegis.demo_pipeline.pytest_available("/nonexistent/python")
    monkeypatch.setattr(aegis.demo_pipeline, "pytest_available", lambda: False)
    result = cli("demo", "--json")
    assert result.code == 0, result.err
    assert [r["workflow"] for r in result.json()] == ["demo"]
    assert f"pytest is not installed for {sys.executable}: the pytest demo is skipped" in (
        result.err
    )


# ------------------------------------------------------------------- error handling


def test_internal_error_is_one_line_without_traceback(
    good: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aegis.runs

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(aegis.runs, "run_workflow", explode)
    result = cli("--config", str(good), "run", "smoke")
    assert result.code == 70
    assert result.err.strip() == (
        "aegis: internal error: RuntimeError: kaboom (set AEGIS_DEBUG=1 to see the traceback)"
    )
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["--config", str(good), "run", "smoke"],
        stdout=out,
        stderr=err,
        environ={"AEGIS_DEBUG": "1"},
    )
    assert code == 70 and "Traceback" in err.getvalue() and "kaboom" in err.getvalue()


def test_keyboard_interrupt_before_a_run_is_recorded_exits_130(
    good: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aegis.runs

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(aegis.runs, "run_workflow", interrupted)
    result = cli("--config", str(good), "run", "smoke")
    assert (result.code, result.err.strip()) == (130, "aegis: interrupted")


def test_a_crashing_step_is_logged_without_traceback_unless_debugging(good: Path) -> None:
    from aegis.runs import run_workflow
    from aegis.steps.base import StepType
    from aegis.steps.registry import default_step_types

    async def crash(ctx: Any) -> dict[str, Any]:
        raise ZeroDivisionError("oops")

    types = default_step_types()
    types["discover"] = StepType("discover", crash)
    from aegis.config import load_config

    config = load_config(good, step_types=types)
    for environ, traceback_shown in (({}, False), ({"AEGIS_DEBUG": "1"}, True)):
        err = io.StringIO()
        import logging

        from aegis.logs import setup_logging

        logger = logging.getLogger("aegis")
        before = (list(logger.handlers), logger.level, logger.propagate)
        teardown = setup_logging(err, debug=bool(environ))
        try:
            run = run_workflow(
                config, "smoke", record=False, environ=environ, warn=print, step_types=types
            )
        finally:
            teardown()
        assert run.steps[0].error == "ZeroDivisionError: oops"
        assert "aegis: error: step discover of run" in err.getvalue()
        assert ("Traceback" in err.getvalue()) is traceback_shown
        assert (logger.handlers, logger.level, logger.propagate) == before  # as it was


def test_unwritable_history_warns_once_and_still_runs(tmp_path: Path, demo_services: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    path = write(
        tmp_path,
        f"""
        services: {{qaagent: {{url: "{demo_services.qaagent_url}"}}}}
        workflows: {{w: {{steps: [{{type: discover, service: qaagent}}]}}}}
        history: {{path: "{blocker}/history.db"}}
    """,
    )
    result = cli("--config", str(path), "run", "w", "--quiet")
    assert result.code == 0
    assert result.err.count("aegis: warning: history: cannot write") == 1


def test_status_with_no_services(tmp_path: Path) -> None:
    path = write(tmp_path, "workflows: {}\n")
    result = cli("--config", str(path), "status")
    assert (result.code, result.out.strip()) == (0, "No services configured.")


def test_run_exit_codes_by_status() -> None:
    from aegis.cli import run_exit_code
    from aegis.records import Run, RunStatus, Verdict

    def code(status: RunStatus, verdict: Verdict | None = None) -> int:
        return run_exit_code(Run("r", "w", status, "t", verdict=verdict))

    assert code(RunStatus.SUCCEEDED, Verdict.PASSED) == 0
    assert code(RunStatus.SUCCEEDED, Verdict.FAILED) == 1
    assert code(RunStatus.FAILED, Verdict.FAILED) == 3
    assert code(RunStatus.TIMED_OUT, Verdict.FAILED) == 3
    assert code(RunStatus.CANCELLED, Verdict.FAILED) == 130
    assert code(RunStatus.INTERRUPTED, Verdict.FAILED) == 130


# ---------------------------------------------------------------------------- tests


def test_tests_ranks_the_flaky_test_first_in_a_seeded_history(tmp_path: Path) -> None:
    from history_seed import BROKEN, FLAKY, ONCE, seed

    seed(tmp_path / "history.db", runs=2000)
    config = write(tmp_path, "workflows: {nightly: {steps: [{type: report}]}}\n"
                   "history: {path: history.db}\n")  # fmt: skip

    flaky = cli("--config", str(config), "tests", "--flaky", "--json").json()
    every = cli("--config", str(config), "tests", "nightly", "--json").json()["tests"]
    table = cli("--config", str(config), "tests", "--flaky")

    assert [t["test_id"] for t in flaky["tests"]] == [FLAKY, ONCE]
    assert flaky["tests"][0]["flips"] == 666 and flaky["tests"][0]["runs"] == 1998  # from run 3
    assert [t["test_id"] for t in every][:1] == [BROKEN]
    assert every[0]["failures"] == 2000 and every[0]["flips"] == 0
    assert table.code == 0 and table.out.splitlines()[1].split()[0] == FLAKY
    assert "FLAKY" in table.out and "0.33" in table.out


def test_tests_errors_and_an_empty_history(good: Path) -> None:
    empty = cli("--config", str(good), "tests")
    assert empty.code == 0 and "No failing tests recorded yet" in empty.out
    assert "No flaky tests seen" in cli("--config", str(good), "tests", "--flaky").out
    assert cli("--config", str(good), "tests", "nope").code == 2
    assert cli("--config", str(good), "tests", "--limit", "0").code == 2


def test_tests_after_real_runs(good: Path) -> None:
    cli("--config", str(good), "run", "pipeline", "--quiet")
    found = cli("--config", str(good), "tests", "pipeline", "--limit", "1", "--json").json()
    assert len(found["tests"]) == 1 and found["tests"][0]["workflow"] == "pipeline"


# ------------------------------------------------------------- output that cannot go out


def test_a_full_disk_is_a_one_line_error_and_the_run_is_still_recorded(
    good: Path, tmp_path: Path
) -> None:
    report = tmp_path / "junit.xml"
    err = io.StringIO()
    with open("/dev/full", "w") as full:  # every write fails with ENOSPC
        code = main(
            ["--config", str(good), "run", "smoke", "--json", "--junit", str(report)],
            stdout=full,
            stderr=err,
            environ={},
        )
        assert code == 74
        assert err.getvalue().splitlines()[-1] == (
            "aegis: error: cannot write the output: No space left on device"
        )
    with open("/dev/full", "w") as full:
        assert main(["--config", str(good), "history"], stdout=full, stderr=err, environ={}) == 74
    runs = cli("--config", str(good), "history", "--json").json()["runs"]
    assert [run["status"] for run in runs] == ["succeeded"]
    assert report.read_bytes().startswith(b"<?xml")  # the CI outputs are still written


def test_a_closed_pipe_ends_quietly(good: Path) -> None:
    cli("--config", str(good), "run", "smoke")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone, as `aegis history | head` leaves it
    err = io.StringIO()
    with os.fdopen(write_end, "w") as closed:
        code = main(["--config", str(good), "history"], stdout=closed, stderr=err, environ={})
        assert code == 141 and err.getvalue() == ""
        # the descriptor now leads nowhere: the flush at exit has nothing left to fail on
        closed.write("more")
        closed.flush()


def test_a_reader_that_leaves_early_sees_no_error_from_the_process(tmp_path: Path) -> None:
    workflows = "".join(f"  w{i}: {{steps: [{{type: report}}]}}\n" for i in range(3000))
    config = write(tmp_path, f"workflows:\n{workflows}history: {{path: ':memory:'}}\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "aegis", "--config", str(config), "config", "show", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().strip() == b"{"  # `| head -1`
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=60) == 141
    assert err == b""


def test_an_output_error_that_is_not_the_disk_is_an_internal_error(good: Path) -> None:
    err = io.StringIO()
    with open(os.devnull) as read_only:  # writing to it fails: not a full disk, a bug
        code = main(["--config", str(good), "history"], stdout=read_only, stderr=err, environ={})
    assert code == 70 and "aegis: internal error: UnsupportedOperation" in err.getvalue()


class FullStream(io.StringIO):
    """A stream on a full disk that is not a file (no descriptor to redirect)."""

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_with_nowhere_to_say_it_still_ends_with_its_code(good: Path) -> None:
    gone = io.StringIO()
    gone.close()  # stderr cannot take the line either
    code = main(["--config", str(good), "history"], stdout=FullStream(), stderr=gone, environ={})
    assert code == 74


def test_ctrl_c_before_the_command_begins_is_interrupted_not_a_traceback(
    good: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt  # as Ctrl-C while the parser is being built

    monkeypatch.setattr("aegis.cli.build_parser", interrupted)
    result = cli("--config", str(good), "history")
    assert (result.code, result.err) == (130, "aegis: interrupted\n")


def test_ctrl_c_ends_the_process_quietly_outside_the_command() -> None:
    from aegis.cli import _interruptible

    previous = signal.signal(signal.SIGINT, signal.SIG_DFL)  # as the entry points set it
    try:
        with pytest.raises(KeyboardInterrupt), _interruptible():
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, previous)
    with _interruptible():  # a handler of the caller's own is left alone
        assert signal.getsignal(signal.SIGINT) is previous
