"""Downstream faults: each way a service can misbehave, over real loopback, through `aegis run`.

Every case injects one fault into the reference services (``aegis.demo``), runs a real
workflow with ``aegis.cli.main`` against them with SQLite history under ``tmp_path``, and
checks what a user would rely on: the failing step's error kind and message (readable,
naming the service), the attempts made under its retry settings, the waits between them
(a fake clock records them, so Retry-After is checked exactly and nothing waits for
real), a complete run record in history equal to what ``--json`` printed, the exit code,
and no traceback on stderr. Attempt timeouts are real but short.
"""

from __future__ import annotations

import io
import json
import textwrap
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeClock
from reliability_report import Reliability

from aegis.cli import main
from aegis.demo import DemoServices, Fault
from aegis.engine.retry import RETRY_AFTER_CAP
from aegis.history.sqlite import SqliteHistory

AREA = "Downstream faults"

MiB = 1024 * 1024
MEMORY_BOUND = 20 * MiB

Inject = Callable[[DemoServices], None]


def on_qaagent(path: str, fault: Fault) -> Inject:
    return lambda demo: demo.qaagent.inject(path, fault)


def on_bugalizer(path: str, fault: Fault) -> Inject:
    return lambda demo: demo.bugalizer.inject(path, fault)


def stop_qaagent(demo: DemoServices) -> None:
    demo.qaagent.stop()  # its port is closed now: connections are refused


def retry_after_date(seconds: float) -> Inject:
    def inject(demo: DemoServices) -> None:
        moment = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        demo.qaagent.inject("/api/routes", Fault(429, retry_after=format_datetime(moment, True)))

    return inject


@dataclass(frozen=True)
class Case:
    """One fault: how to provoke it, the workflow that meets it, and what must come of it."""

    fault: str  # the row's name
    expected: str  # the row's expectation, in words
    inject: Inject
    steps: str  # the workflow's steps, YAML
    kind: str | None  # the failing step's error kind; None: every step succeeds
    message: str = ""  # its exact error ({q}: the qaagent URL, {b}: the bugalizer URL)
    attempts: int = 1  # attempts of the step that meets the fault
    sleeps: tuple[float, ...] = ()  # the waits between them, exactly
    one_wait_within: tuple[float, float] | None = None  # or a single wait in these bounds
    exit_code: int = 3
    step: int = -1  # which step meets the fault
    memory: bool = False  # measure peak memory of the run
    check: Callable[[DemoServices, dict[str, Any]], str] | None = None  # more checks


def discover(retries: int = 0, **settings: Any) -> str:
    return _step("discover", "qaagent", retries=retries, **settings)


def run_tests(retries: int = 0, **settings: Any) -> str:
    return _step("test", "qaagent", retries=retries, **settings)


def _step(type: str, service: str, **settings: Any) -> str:
    """One step as a line of YAML (a JSON object is YAML too); waits default to 0.5 s."""
    return "- " + json.dumps({"type": type, "service": service, "retry_delay": 0.5, **settings})


SUBMIT = _step("submit_bugs", "bugalizer", retries=1, **{"with": {"project_id": "web-shop"}})
VERIFY = _step("verify", "qaagent", retries=1)


def no_calls_to(path: str) -> Callable[[DemoServices, dict[str, Any]], str]:
    def check(demo: DemoServices, run: dict[str, Any]) -> str:
        assert [c for c in demo.qaagent.calls if c.path == path] == []
        return "not followed"

    return check


def bugalizer_untouched(demo: DemoServices, run: dict[str, Any]) -> str:
    assert demo.bugalizer.calls == []  # the other host never saw the request or its key
    return "not followed, other host never called"


def loop_calls(demo: DemoServices, run: dict[str, Any]) -> str:
    calls = [c for c in demo.qaagent.calls if c.path == "/api/routes"]
    assert len(calls) == 3  # one request per attempt: the loop is never entered
    return "one request per attempt"


def no_bug_filed(demo: DemoServices, run: dict[str, Any]) -> str:
    assert demo.bugalizer.reports == []
    return "no bug filed"


def neighbour_succeeded(demo: DemoServices, run: dict[str, Any]) -> str:
    assert run["steps"][1]["status"] == "succeeded"
    return "parallel step succeeded"


def each_bug_filed_once(demo: DemoServices, run: dict[str, Any]) -> str:
    titles = [report["title"] for report in demo.bugalizer.reports]
    assert len(titles) == len(set(titles)) == run["steps"][-1]["data"]["submitted"] == 2
    return "2 bugs filed, none twice"


def each_bug_filed_once_and_recorded(demo: DemoServices, run: dict[str, Any]) -> str:
    each_bug_filed_once(demo, run)
    data = run["steps"][-1]["data"]
    assert sorted(data["report_ids"]) == sorted(r["id"] for r in demo.bugalizer.reports)
    assert len(data["adopted"]) == 1
    return "2 bugs filed, none twice, the stored one adopted, every id recorded"


def no_escape_on_stderr(demo: DemoServices, run: dict[str, Any]) -> str:
    return "nothing reached the terminal unescaped"


def surrogate_replaced(demo: DemoServices, run: dict[str, Any]) -> str:
    assert run["steps"][0]["data"]["failures"][0]["test"] == "t\ufffd"
    json.dumps(run, ensure_ascii=False).encode("utf-8")
    return "U+FFFD in its place"


NOT_FOLLOWED = "not followed; point the service url or the step's with.path at the final address"

CASES = [
    # --- statuses
    Case(
        "HTTP 500",
        "kind `http` with the status and the service's words, retried as configured",
        on_qaagent("/api/runs", Fault(500, times=None)),
        run_tests(retries=2),
        "http",
        "HTTP 500 from qaagent: injected fault: HTTP 500",
        attempts=3,
        sleeps=(0.5, 1.0),
    ),
    Case(
        "HTTP 502, retry_on [5xx]",
        "retried once (retries: 1), then `http`",
        on_qaagent("/api/runs", Fault(502, times=None)),
        run_tests(retries=1, retry_on=["5xx"]),
        "http",
        "HTTP 502 from qaagent: injected fault: HTTP 502",
        attempts=2,
        sleeps=(0.5,),
    ),
    Case(
        "HTTP 503 twice, then healthy",
        "two failed attempts with doubling waits, then the step succeeds",
        on_qaagent("/api/runs", Fault(503, times=2)),
        run_tests(retries=2),
        None,
        attempts=3,
        sleeps=(0.5, 1.0),
        exit_code=1,  # the run succeeded; the demo's tests report failures
    ),
    Case(
        "HTTP 429 not in retry_on [5xx]",
        "one attempt, `http` 429, no retry",
        on_qaagent("/api/runs", Fault(429, times=None)),
        run_tests(retries=2, retry_on=["5xx"]),
        "http",
        "HTTP 429 from qaagent: injected fault: HTTP 429",
    ),
    Case(
        "HTTP 404 (wrong with.path)",
        "`http` 404 naming the service; not retried with retry_on [5xx]",
        lambda demo: None,
        discover(retries=2, retry_on=["5xx"], **{"with": {"path": "/api/nope"}}),
        "http",
        "HTTP 404 from qaagent: Not Found",
    ),
    Case(
        "error answer with terminal escape codes",
        "`http`; the service's words are quoted with control characters escaped",
        on_qaagent("/api/routes", Fault(500, payload={"detail": "\x1b[2J\x1b]0;owned\x07"})),
        discover(),
        "http",
        "HTTP 500 from qaagent: \\x1b[2J\\x1b]0;owned\\x07",
        check=no_escape_on_stderr,
    ),
    # --- Retry-After
    Case(
        "HTTP 429 with Retry-After: 2",
        "waits the 2 s asked for instead of its own 10 s backoff, then succeeds",
        on_qaagent("/api/routes", Fault(429, retry_after=2)),
        discover(retries=1, retry_delay=10),
        None,
        attempts=2,
        sleeps=(2.0,),
        exit_code=0,
    ),
    Case(
        "HTTP 503 with Retry-After: 3600, max_retry_delay 1.5",
        "each wait capped at max_retry_delay; fails as `http` after all attempts",
        on_qaagent("/api/routes", Fault(503, retry_after=3600, times=None)),
        discover(retries=2, max_retry_delay=1.5),
        "http",
        "HTTP 503 from qaagent: injected fault: HTTP 503",
        attempts=3,
        sleeps=(1.5, 1.5),
    ),
    Case(
        "HTTP 503 with Retry-After: 86400, no max_retry_delay",
        f"wait capped at {RETRY_AFTER_CAP:g} s by default, never a day",
        on_qaagent("/api/routes", Fault(503, retry_after=86400)),
        discover(retries=1),
        None,
        attempts=2,
        sleeps=(RETRY_AFTER_CAP,),
        exit_code=0,
    ),
    Case(
        "HTTP 429 with Retry-After as an HTTP-date 30 s ahead",
        "waits until that date (not the 0.1 s backoff), then succeeds",
        retry_after_date(30),
        discover(retries=1, retry_delay=0.1),
        None,
        attempts=2,
        one_wait_within=(25, 30.5),
        exit_code=0,
    ),
    Case(
        "HTTP 429 with Retry-After: 30 past the step deadline",
        "no wait is begun that would pass the deadline: one attempt, says why",
        on_qaagent("/api/routes", Fault(429, retry_after=30, times=None)),
        discover(retries=2, deadline=10),
        "http",
        "HTTP 429 from qaagent: injected fault: HTTP 429 (no retry: step deadline of 10s reached)",
    ),
    Case(
        "HTTP 503 with an unreadable Retry-After",
        "falls back to its own backoff",
        on_qaagent("/api/routes", Fault(503, retry_after="soon")),
        discover(retries=1, retry_delay=0.25),
        None,
        attempts=2,
        sleeps=(0.25,),
        exit_code=0,
    ),
    # --- the connection
    Case(
        "connection refused (closed port)",
        "kind `connection`, 'connection refused', retried as configured",
        stop_qaagent,
        discover(retries=2),
        "connection",
        "cannot connect to qaagent at {q}/api/routes: connection refused",
        attempts=3,
        sleeps=(0.5, 1.0),
    ),
    Case(
        "connection closed before an answer",
        "kind `connection`, says the line was lost before an answer",
        on_qaagent("/api/routes", Fault(down=True, times=None)),
        discover(retries=1),
        "connection",
        "connection to qaagent at {q}/api/routes lost before an answer: "
        "server disconnected without sending a response",
        attempts=2,
        sleeps=(0.5,),
    ),
    Case(
        "connection reset before the headers",
        "kind `connection`, 'connection reset by peer'",
        on_qaagent("/api/routes", Fault(status=None, mode="reset", times=None)),
        discover(retries=1),
        "connection",
        "connection to qaagent at {q}/api/routes lost before an answer: connection reset by peer",
        attempts=2,
        sleeps=(0.5,),
    ),
    Case(
        "connection reset mid-body",
        "kind `connection`, lost while reading the answer",
        on_qaagent("/api/routes", Fault(status=None, mode="reset_mid_body", times=None)),
        discover(retries=1),
        "connection",
        "connection to qaagent at {q}/api/routes lost while reading the answer: "
        "connection reset by peer",
        attempts=2,
        sleeps=(0.5,),
    ),
    Case(
        "an answer that is not HTTP",
        "kind `protocol`: retrying would not mend it",
        on_qaagent("/api/routes", Fault(mode="raw", body="HELLO WORLD\r\n\r\n", times=None)),
        discover(retries=1, retry_on=["connection", "timeout"]),
        "protocol",
        "qaagent at {q}/api/routes did not answer in valid HTTP: "
        "illegal status line: 'HELLO WORLD'",
    ),
    Case(
        "a bad Content-Length header",
        "kind `protocol`",
        on_qaagent(
            "/api/routes",
            Fault(mode="raw", body="HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n{}"),
        ),
        discover(),
        "protocol",
        "qaagent at {q}/api/routes did not answer in valid HTTP: bad Content-Length",
    ),
    Case(
        "malformed chunked encoding",
        "kind `protocol`",
        on_qaagent(
            "/api/routes",
            Fault(
                mode="raw",
                body="HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
            ),
        ),
        discover(),
        "protocol",
        "qaagent at {q}/api/routes did not answer in valid HTTP: illegal chunk header: 'zz\\r\\n'",
    ),
    Case(
        "body shorter than its Content-Length, then closed",
        "kind `connection`, lost while reading the answer",
        on_qaagent(
            "/api/routes",
            Fault(mode="raw", body="HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}"),
        ),
        discover(),
        "connection",
        "connection to qaagent at {q}/api/routes lost while reading the answer: "
        "peer closed connection without sending complete message body "
        "(received 2 bytes, expected 100)",
    ),
    Case(
        "headers never come",
        "each attempt cut off at its timeout as `timeout`",
        on_qaagent("/api/routes", Fault(status=None, mode="stall", times=None)),
        discover(retries=1, timeout=0.3),
        "timeout",
        "timed out after 0.3s",
        attempts=2,
        sleeps=(0.5,),
    ),
    Case(
        "slow answer within the timeout",
        "waited for; the step succeeds on its first attempt",
        on_qaagent("/api/routes", Fault(status=None, delay=0.3)),
        discover(retries=2, timeout=10),
        None,
        exit_code=0,
    ),
    Case(
        "body trickles past the timeout",
        "cut off at the attempt timeout as `timeout`",
        on_qaagent("/api/routes", Fault(status=None, trickle=0.05, times=None)),
        discover(timeout=0.3),
        "timeout",
        "timed out after 0.3s",
    ),
    Case(
        "body trickles within the timeout",
        "read to the end; the step succeeds",
        on_qaagent("/api/routes", Fault(status=None, trickle=0.001)),
        discover(timeout=20),
        None,
        exit_code=0,
    ),
    # --- bodies that are not the contracted JSON
    Case(
        "HTTP 200 with invalid JSON",
        "kind `protocol`, quoting the start of the body",
        on_qaagent("/api/routes", Fault(200, body='{"routes": [oops', times=None)),
        discover(retries=1),
        "protocol",
        "qaagent answered HTTP 200 to GET {q}/api/routes with a body that is not JSON: "
        "'{\"routes\": [oops'",
        attempts=2,
        sleeps=(0.5,),
    ),
    Case(
        "HTTP 200 with an empty body",
        "kind `protocol`, 'with an empty body'",
        on_qaagent("/api/routes", Fault(200, body=b"")),
        discover(),
        "protocol",
        "qaagent answered HTTP 200 to GET {q}/api/routes with an empty body",
    ),
    Case(
        "HTTP 200 with an HTML page",
        "kind `protocol`, quoting the page",
        on_qaagent(
            "/api/routes",
            Fault(200, body="<html><h1>Sign in</h1></html>", content_type="text/html"),
        ),
        discover(),
        "protocol",
        "qaagent answered HTTP 200 to GET {q}/api/routes with a body that is not JSON: "
        "'<html><h1>Sign in</h1></html>'",
    ),
    Case(
        "HTTP 204 No Content to a test run",
        "kind `http`: a success the step cannot use, naming what it expected",
        on_qaagent("/api/runs", Fault(204, body=b"")),
        run_tests(),
        "http",
        "HTTP 204 from qaagent: expected 200 or 201",
    ),
    Case(
        "JSON served as text/plain",
        "accepted: the body is what counts, not its Content-Type",
        on_qaagent("/api/routes", Fault(status=None, content_type="text/plain")),
        discover(),
        None,
        exit_code=0,
    ),
    Case(
        "JSON with NaN",
        "kind `protocol`: nothing downstream (API, --json) could read it back",
        on_qaagent("/api/routes", Fault(200, body='{"routes": [NaN]}')),
        discover(),
        "protocol",
        "qaagent answered HTTP 200 to GET {q}/api/routes with NaN, which JSON does not allow",
    ),
    Case(
        "JSON with a lone surrogate (\\ud800) in a test name",
        "accepted with U+FFFD in its place, so stdout, the API and history can encode it",
        on_qaagent(
            "/api/runs",
            Fault(
                200,
                body='{"total": 1, "passed": 0, "failed": 1, '
                '"failures": [{"test": "t\\ud800", "message": "m"}]}',
            ),
        ),
        run_tests(),
        None,
        exit_code=1,
        check=surrogate_replaced,
    ),
    Case(
        "JSON nested 100,000 deep",
        "kind `protocol`, not a crash of the step",
        on_qaagent("/api/routes", Fault(200, body="[" * 100_000 + "]" * 100_000)),
        discover(),
        "protocol",
        "qaagent answered HTTP 200 to GET {q}/api/routes with JSON nested too deeply to read",
    ),
    Case(
        "wrong shape for discover",
        "kind `protocol` naming the field",
        on_qaagent("/api/routes", Fault(200, payload={"routes": "all"})),
        discover(),
        "protocol",
        "unexpected answer from qaagent: 'routes' should be a list, got 'all'",
    ),
    Case(
        "wrong shape for test",
        "kind `protocol` naming the missing count",
        on_qaagent("/api/runs", Fault(200, payload={"total": 1, "passed": 1})),
        run_tests(),
        "protocol",
        "unexpected answer from qaagent: 'failed' should be an integer >= 0, got nothing (missing)",
    ),
    Case(
        "wrong shape for verify",
        "kind `protocol`; the test step before it keeps its results",
        on_qaagent("/api/runs", Fault(200, payload=[1, 2], after=1, times=None)),
        run_tests() + "\n" + VERIFY,
        "protocol",
        "unexpected answer from qaagent: the answer should be a JSON object, got [1, 2]",
        attempts=2,
        sleeps=(0.5,),
    ),
    Case(
        "wrong shape for submit_bugs (201 without an id)",
        "kind `protocol`, says how many reports are not filed",
        on_bugalizer(
            "/api/v1/reports", Fault(201, payload={"status": "new"}, times=None, method="POST")
        ),
        run_tests() + "\n" + SUBMIT,
        "protocol",
        "2 bug reports not filed yet: unexpected answer from bugalizer: "
        "a filed report should carry an 'id', got {'status': 'new'}",
        attempts=2,
        sleeps=(0.5,),
    ),
    Case(
        "bugalizer 429 with Retry-After: 3 on the second report",
        "waits 3 s, then files only the report not yet accepted: no bug filed twice",
        on_bugalizer("/api/v1/reports", Fault(429, retry_after=3, after=1, method="POST")),
        run_tests() + "\n" + SUBMIT,
        None,
        attempts=2,
        sleeps=(3.0,),
        exit_code=1,
        check=each_bug_filed_once,
    ),
    Case(
        "bugalizer stores a report, then drops the connection",
        "the retry finds the stored report by fingerprint and adopts it: no bug filed twice",
        on_bugalizer("/api/v1/reports", Fault(mode="drop", processed=True, method="POST")),
        run_tests() + "\n" + SUBMIT,
        None,
        attempts=2,
        sleeps=(0.5,),
        exit_code=1,
        check=each_bug_filed_once_and_recorded,
    ),
    Case(
        "bugalizer stores a report but answers after the attempt's timeout",
        "the retry finds the stored report by fingerprint and adopts it: no bug filed twice",
        on_bugalizer("/api/v1/reports", Fault(status=None, delay=1.0, method="POST")),
        run_tests()
        + "\n"
        + _step(
            "submit_bugs",
            "bugalizer",
            retries=1,
            timeout=0.3,
            **{"with": {"project_id": "web-shop"}},
        ),
        None,
        attempts=2,
        sleeps=(0.5,),
        exit_code=1,
        check=each_bug_filed_once_and_recorded,
    ),
    Case(
        "submit_bugs answered 200 instead of 201",
        "kind `http`: a success the step cannot use",
        on_bugalizer("/api/v1/reports", Fault(200, payload={"id": "X"}, times=None, method="POST")),
        run_tests() + "\n" + SUBMIT,
        "http",
        "2 bug reports not filed yet: HTTP 200 from bugalizer: expected 201",
        attempts=2,
        sleeps=(0.5,),
        check=no_bug_filed,
    ),
    Case(
        "HTTP 500 on one of two parallel steps",
        "that step fails as `http`; its neighbour in the batch succeeds",
        on_qaagent("/api/routes", Fault(500, times=None)),
        discover(parallel=True) + "\n" + run_tests(parallel=True),
        "http",
        "HTTP 500 from qaagent: injected fault: HTTP 500",
        step=0,
        check=neighbour_succeeded,
    ),
    # --- size
    Case(
        "50 MiB answer with Content-Length",
        "refused unread as `protocol` (limit 10 MiB), memory bounded",
        on_qaagent("/api/routes", Fault(200, size=50 * MiB)),
        discover(),
        "protocol",
        "answer from qaagent to GET {q}/api/routes is larger than 10 MiB",
        memory=True,
    ),
    Case(
        "50 MiB answer, chunked (no length)",
        "reading stops at 10 MiB, `protocol`, memory bounded",
        on_qaagent("/api/routes", Fault(200, size=50 * MiB, chunked=True)),
        discover(),
        "protocol",
        "answer from qaagent to GET {q}/api/routes is larger than 10 MiB",
        memory=True,
    ),
    Case(
        "gzip bomb (50 KiB inflating to 50 MiB)",
        "inflating stops at 10 MiB, `protocol`, memory bounded",
        on_qaagent("/api/routes", Fault(200, size=50 * MiB, gzip=True)),
        discover(),
        "protocol",
        "answer from qaagent to GET {q}/api/routes is larger than 10 MiB",
        memory=True,
    ),
    Case(
        "9 MiB answer (under the limit)",
        "read whole; the step succeeds",
        on_qaagent("/api/routes", Fault(200, size=9 * MiB)),
        discover(),
        None,
        exit_code=0,
    ),
    # --- redirects
    Case(
        "redirect 302 to another path",
        "not followed: `http` 302 saying where it pointed and what to change",
        on_qaagent("/api/routes", Fault(302, location="/api/v2/routes", times=None)),
        discover(retries=1),
        "http",
        "HTTP 302 from qaagent: redirect to /api/v2/routes " + NOT_FOLLOWED,
        attempts=2,
        sleeps=(0.5,),
        check=no_calls_to("/api/v2/routes"),
    ),
    Case(
        "redirect 307 to another host",
        "not followed, so the POST and its API key never reach the other host",
        lambda demo: demo.qaagent.inject(
            "/api/runs", Fault(307, location=demo.bugalizer_url + "/api/runs", times=None)
        ),
        run_tests(),
        "http",
        "HTTP 307 from qaagent: redirect to {b}/api/runs " + NOT_FOLLOWED,
        check=bugalizer_untouched,
    ),
    Case(
        "redirect loop (301 to itself)",
        "no loop: one request per attempt, `http` 301",
        on_qaagent("/api/routes", Fault(301, location="/api/routes", times=None)),
        discover(retries=2),
        "http",
        "HTTP 301 from qaagent: redirect to /api/routes " + NOT_FOLLOWED,
        attempts=3,
        sleeps=(0.5, 1.0),
        check=loop_calls,
    ),
]


def write_config(
    demo: DemoServices, tmp_path: Path, steps: str, timeout: float | None = None
) -> Path:
    text = textwrap.dedent(f"""\
        services:
          qaagent: {{url: "{demo.qaagent_url}"}}
          bugalizer: {{url: "{demo.bugalizer_url}"}}
        history: {{path: "{tmp_path / "history.db"}"}}
        workflows:
          w:
            timeout: {json.dumps(timeout)}
            steps:
        """) + textwrap.indent(steps, " " * 6)
    path = tmp_path / "aegis.yaml"
    path.write_text(text + "\n")
    return path


def run_cli(config: Path, *, measure: bool) -> tuple[int, dict[str, Any], str, int]:
    """``aegis run w --json``: exit code, the printed run, stderr, and peak traced bytes."""
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["--config", str(config), "run", "w", "--json"]
    if measure:
        tracemalloc.start()
    try:
        code = main(argv, stdout=stdout, stderr=stderr, environ={"NO_COLOR": "1"})
        peak = tracemalloc.get_traced_memory()[1] if measure else 0
    finally:
        if measure:
            tracemalloc.stop()
    return code, json.loads(stdout.getvalue()), stderr.getvalue(), peak


def assert_record_complete(tmp_path: Path, printed: dict[str, Any], steps: int) -> None:
    """History holds the very run that was printed: finished, every step, every attempt."""
    with SqliteHistory(tmp_path / "history.db") as store:
        stored = store.get(printed["run_id"])
    assert stored is not None
    assert stored.to_dict() == printed
    assert printed["status"] in ("succeeded", "failed", "timed_out") and printed["verdict"]
    assert printed["finished_at"] and len(printed["steps"]) == steps
    for step in printed["steps"]:
        assert step["status"] in ("succeeded", "failed", "skipped", "cancelled")
        if step["skipped"]:
            continue
        assert [a["attempt"] for a in step["attempts"]] == list(range(1, len(step["attempts"]) + 1))
        for attempt in step["attempts"][:-1]:
            assert not attempt["success"] and attempt["error"] and attempt["error_kind"]
        assert step["attempts"][-1]["success"] is (step["status"] == "succeeded")


@pytest.mark.parametrize("case", CASES, ids=[case.fault for case in CASES])
def test_downstream_fault(
    case: Case,
    demo: DemoServices,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reliability: Reliability,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr("aegis.engine.runner.SystemClock", lambda: clock)
    config = write_config(demo, tmp_path, case.steps)
    if case.memory:
        run_cli(config, measure=False)  # imports and first-run costs are not the answer's
    case.inject(demo)

    code, run, stderr, peak = run_cli(config, measure=case.memory)

    assert "Traceback" not in stderr
    assert "\x1b" not in stderr  # NO_COLOR: any escape code would be the service's
    assert code == case.exit_code, stderr
    steps = len(case.steps.splitlines())
    assert_record_complete(tmp_path, run, steps)
    step = run["steps"][case.step]
    attempts = step["attempts"]
    assert len(attempts) == case.attempts, attempts
    if case.kind is None:
        assert step["status"] == "succeeded" and step["error"] is None, step
        outcome = "step succeeded"
    else:
        expected = case.message.replace("{q}", demo.qaagent_url).replace("{b}", demo.bugalizer_url)
        assert (step["error_kind"], step["error"]) == (case.kind, expected)
        assert all(a["error_kind"] == case.kind for a in attempts)
        assert step["status"] == "failed" and run["status"] == "failed"
        assert expected in stderr  # the user sees the same words
        outcome = f"kind {case.kind}, run failed"
    notes = []
    if case.one_wait_within is not None:
        low, high = case.one_wait_within
        [wait] = clock.sleeps
        assert low <= wait <= high
        notes.append(f"waited between {low:g} and {high:g} s")
    else:
        assert clock.sleeps == list(case.sleeps)
    if case.sleeps:
        notes.append("waits " + ", ".join(f"{s:g} s" for s in case.sleeps))
    if case.memory:
        assert peak < MEMORY_BOUND, f"peak {peak / MiB:.1f} MiB"
        notes.append(f"peak memory under {MEMORY_BOUND // MiB} MiB")
    if case.check is not None:
        notes.append(case.check(demo, run))
    noun = "attempt" if len(attempts) == 1 else "attempts"
    observed = ", ".join(
        [f"{len(attempts)} {noun}", outcome, *notes, "record complete, no traceback"]
    )
    reliability.record(case.fault, expected=case.expected, observed=observed)


def test_workflow_timeout_while_a_service_stalls(
    demo: DemoServices, tmp_path: Path, reliability: Reliability
) -> None:
    demo.qaagent.inject("/api/routes", Fault(status=None, mode="stall", times=None))
    steps = discover(timeout=30) + "\n" + run_tests()
    config = write_config(demo, tmp_path, steps, timeout=0.5)

    code, run, stderr, _ = run_cli(config, measure=False)

    assert "Traceback" not in stderr
    assert code == 3
    assert_record_complete(tmp_path, run, 2)
    stalled, never = run["steps"]
    assert (run["status"], run["verdict"]) == ("timed_out", "failed")
    assert (stalled["status"], stalled["error"]) == ("cancelled", "workflow timeout after 0.5s")
    assert [a["error"] for a in stalled["attempts"]] == ["cancelled"]
    assert (never["status"], never["skip_reason"]) == ("skipped", "workflow timeout after 0.5s")
    reliability.record(
        "headers never come, workflow timeout 0.5 s",
        expected="run `timed_out`: the stalled step cancelled, the rest skipped, all recorded",
        observed="run timed_out, step cancelled with its attempt, next step skipped, "
        "record complete, no traceback",
    )
