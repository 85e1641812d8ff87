"""The ``http`` step: any request, percent-encoded path parameters, polling, outputs, tests."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeContext
from fakes import FakeClock

from aegis.cli import main
from aegis.demo import DemoServices
from aegis.errors import StepError
from aegis.steps.http_request import STEP, fill_path, segment, truthy

BRANCH = 'fix "quotes"/../ünï'
ENCODED = "fix%20%22quotes%22%2F..%2F%C3%BCn%C3%AF"

CHAIN = """\
services:
  qaagent: {name: QA Agent, url: "${QAAGENT_URL}"}
  bugalizer: {name: Bugalizer, url: "${BUGALIZER_URL}"}
workflows:
  chain:
    steps:
      - type: http
        name: start
        service: qaagent
        with:
          method: POST
          path: /api/branches/{branch}/run-tests
          path_params: {branch: 'BRANCH'}
          json: {suite: web, note: 'BRANCH', nested: [1, null, true]}
          expect: 202
          outputs: {run_id: run_id, branch: branch}
      - type: http
        name: wait
        service: qaagent
        timeout: 10
        with:
          path: /api/runs/{id}
          path_params: {id: RUN_ID}
          poll: {until: "status == 'completed'", every: 0.01}
          outputs: {status: status}
      - type: http
        name: findings
        service: qaagent
        with:
          path: /api/runs/{id}/findings
          path_params: {id: RUN_ID}
          tests:
            total: summary.total
            failed: summary.failed
            failures: "findings[].{test: test_id, message: message}"
      - type: submit_bugs
        service: bugalizer
        condition: has_failures
        with: {project_id: web-shop}
"""


def run_chain(tmp_path: Path, demo: DemoServices, run_id: str, *extra: str) -> dict[str, Any]:
    config = tmp_path / "aegis.yaml"
    config.write_text(CHAIN.replace("BRANCH", BRANCH).replace("RUN_ID", run_id))
    out, err = io.StringIO(), io.StringIO()
    environ = {"QAAGENT_URL": demo.qaagent_url, "BUGALIZER_URL": demo.bugalizer_url}
    code = main(
        ["--config", str(config), "run", "chain", "--json", *extra],
        stdout=out,
        stderr=err,
        environ=environ,
    )
    run: dict[str, Any] = json.loads(out.getvalue())
    assert code == 1, err.getvalue()  # ran, and a test fails
    return run


def check_chain(run: dict[str, Any], demo: DemoServices) -> None:
    start, wait, findings, bugs = run["steps"]
    calls = demo.qaagent.calls
    # the path and the body are exactly what was meant
    assert (calls[0].method, calls[0].path) == ("POST", f"/api/branches/{ENCODED}/run-tests")
    assert calls[0].json == {"suite": "web", "note": BRANCH, "nested": [1, None, True]}
    assert start["data"]["outputs"] == {"run_id": "tr-1", "branch": BRANCH}
    # polled until completed: once running, once done
    assert [c.path for c in calls[1:3]] == ["/api/runs/tr-1", "/api/runs/tr-1"]
    assert wait["data"]["polls"] == 2
    assert wait["data"]["outputs"] == {"status": "completed"}
    data = findings["data"]
    assert (data["total"], data["passed"], data["failed"]) == (6, 5, 1)
    assert data["failures"] == [
        {
            "test": "test_checkout_applies_discount",
            "message": "AssertionError: expected total 90.00 with code SAVE10, got 100.00",
        }
    ]
    assert run["verdict"] == "failed"
    assert bugs["data"]["submitted"] == 1
    assert demo.bugalizer.reports[0]["title"] == "[aegis] test_checkout_applies_discount failed"


def test_start_poll_tests_chain_sends_exactly_what_was_meant(
    tmp_path: Path, demo: DemoServices
) -> None:
    check_chain(run_chain(tmp_path, demo, "tr-1"), demo)


def test_the_chain_with_run_time_templates(tmp_path: Path, demo: DemoServices) -> None:
    pytest.importorskip("aegis.templates", reason="run-time templates (issue 15 item 2)")
    check_chain(run_chain(tmp_path, demo, "'${{ steps.start.outputs.run_id }}'"), demo)


def test_junit_out_lists_the_failure_from_http_tests(tmp_path: Path, demo: DemoServices) -> None:
    report = tmp_path / "junit.xml"
    run_chain(tmp_path, demo, "tr-1", "--junit", str(report))
    assert 'name="test_checkout_applies_discount"' in report.read_text()


@pytest.fixture
def call(make_context: MakeContext, demo: DemoServices) -> Any:
    async def call(clock: FakeClock | None = None, **params: Any) -> dict[str, Any]:
        ctx = make_context("http", demo.qaagent_url, params=params)
        if clock is not None:
            ctx = dataclasses.replace(ctx, clock=clock)
        return await STEP.execute(ctx)

    return call


async def test_polling_sleeps_on_the_engine_clock(call: Any, demo: DemoServices) -> None:
    demo.qaagent.started.polls_until_done = 3
    await call(method="POST", path="/api/branches/main/run-tests")
    clock = FakeClock()
    data = await call(clock, path="/api/runs/tr-1", poll={"until": "summary", "every": 7})
    assert clock.sleeps == [7, 7, 7]
    assert data["polls"] == 4
    assert data["answer"]["status"] == "completed"


async def test_query_headers_and_a_text_body_are_sent(call: Any, demo: DemoServices) -> None:
    data = await call(
        method="post",
        path="/api/runs",
        query={"suite": "api", "tag": ["a&b", 2], "none": None, "all": False},
        headers={"X-Trace": 5},
        body='{"routes": []}',
    )
    sent = demo.qaagent.calls[-1]
    assert sent.query == "suite=api&tag=a%26b&tag=2&all=false"
    assert sent.headers["x-trace"] == "5"
    assert sent.json == {"routes": []}
    assert data["answer"]["total"] == 4


async def test_an_unexpected_status_is_an_http_failure(call: Any) -> None:
    with pytest.raises(StepError) as caught:
        await call(path="/api/runs/nope")
    assert (caught.value.kind, caught.value.status_code) == ("http", 404)
    with pytest.raises(StepError, match="expected 201") as caught:
        await call(path="/api/routes", expect=[201])
    assert caught.value.kind == "http"


async def test_an_answer_that_is_not_json(call: Any, demo: DemoServices) -> None:
    from aegis.demo import Fault

    demo.qaagent.inject(
        "/api/routes", Fault(status=None, body="plain words", content_type="text/plain")
    )
    data = await call(path="/api/routes")
    assert data == {"status": 200, "answer": "plain words"}
    demo.qaagent.inject(
        "/api/routes", Fault(status=None, body="plain words", content_type="text/plain")
    )
    with pytest.raises(StepError, match=r"outputs\.x needs a JSON answer") as caught:
        await call(path="/api/routes", outputs={"x": "a"})
    assert caught.value.kind == "protocol"
    demo.qaagent.inject(
        "/api/routes", Fault(status=None, body="{oops", content_type="application/json")
    )
    with pytest.raises(StepError, match="not JSON"):
        await call(path="/api/routes")


async def test_tests_that_do_not_map_to_results_are_protocol_failures(call: Any) -> None:
    for tests, problem in (
        ({"failures": "routes"}, "failures[0] should be an object with a 'test' id"),
        ({"failures": "routes[0].path"}, "gave '/', not a list"),
        ({"failures": "[]", "total": "routes[0]"}, "'total' should be an integer >= 0"),
        ({"failures": "abs(routes[0].path)"}, "tests.failures 'abs(routes[0].path)': In function"),
    ):
        with pytest.raises(StepError, match=re.escape(problem)) as caught:
            await call(path="/api/routes", tests=tests)
        assert caught.value.kind == "protocol"


async def test_tests_counts_are_completed_from_what_is_given(call: Any) -> None:
    data = await call(
        path="/api/routes", tests={"failures": "routes[:2].{test: `7`}", "passed": "`3`"}
    )
    assert (data["total"], data["passed"], data["failed"]) == (5, 3, 2)
    assert data["failures"][0] == {"test": "7"}
    data = await call(path="/api/routes", tests={"failures": "nothing", "skipped": "`2`"})
    assert (data["total"], data["passed"], data["failed"], data["skipped"]) == (2, 0, 0, 2)
    data = await call(
        path="/api/routes", tests={"failures": "nothing", "total": "`5`", "skipped": "`2`"}
    )
    assert (data["total"], data["passed"]) == (5, 3)


def test_path_parameters_are_one_segment_each() -> None:
    assert fill_path("/a/{x}/b/{y}", {"x": "../..", "y": 3}) == "/a/..%2F../b/3"
    assert segment("..") == "%2E%2E"
    assert segment(".") == "%2E"
    assert segment(True) == "true"
    assert segment("?#%") == "%3F%23%25"
    with pytest.raises(StepError, match="empty"):
        segment("")
    with pytest.raises(StepError, match="text or a number"):
        segment({"a": 1})
    with pytest.raises(StepError, match="no value in path_params"):
        fill_path("/a/{x}", {})


def test_jmespath_truth() -> None:
    assert [truthy(v) for v in (None, False, "", [], {}, 0, "x", [0], True)] == [
        False,
        False,
        False,
        False,
        False,
        True,
        True,
        True,
        True,
    ]


def test_config_validate_names_each_problem(tmp_path: Path) -> None:
    config = tmp_path / "aegis.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            services:
              svc: {name: S, url: "http://127.0.0.1:9"}
            workflows:
              wf:
                steps:
                  - type: http
                  - type: http
                    service: svc
                    with: {method: FETCH, path: "/x/{id}/{other}", path_params: {id: 1}}
                  - type: http
                    service: svc
                    with:
                      path: relative
                      path_params: [1]
                      query: 1
                      json: {}
                      body: 1
                      expect: [200, 700]
                      outputs: {a: "foo[", b: 3}
                      poll: {every: 1}
                      tests: {total: total}
                  - type: http
                    service: svc
                    with:
                      path: /
                      outputs: []
                      poll: {until: x, every: 0, often: 1}
                      tests: {failures: f, totl: t}
            """
        )
    )
    out, err = io.StringIO(), io.StringIO()
    assert main(["--config", str(config), "config", "validate"], stdout=out, stderr=err) == 1
    lines = [line.split(": ", 1)[1] for line in err.getvalue().splitlines() if ".steps[" in line]
    assert lines == [
        "workflows.wf.steps[0].service: missing; step type 'http' needs a service (one of: svc)",
        "workflows.wf.steps[0].with.path: required: a path starting with '/', got None",
        "workflows.wf.steps[1].with.method: expected one of GET, POST, PUT, PATCH, DELETE, HEAD,"
        " OPTIONS, got 'FETCH'",
        "workflows.wf.steps[1].with.path: {other} has no value in path_params",
        "workflows.wf.steps[2].with.path: required: a path starting with '/', got 'relative'",
        "workflows.wf.steps[2].with.path_params: expected a mapping of names to text or numbers",
        "workflows.wf.steps[2].with.query: expected a mapping, got 1",
        "workflows.wf.steps[2].with.body: give 'json' or 'body', not both",
        "workflows.wf.steps[2].with.body: expected text (use 'json' for a JSON value), got 1",
        "workflows.wf.steps[2].with.expect: expected a status or a list of statuses,"
        " got [200, 700]",
        "workflows.wf.steps[2].with.outputs.a: not a JMESPath expression: Invalid jmespath"
        " expression: Incomplete expression (at column 4)",
        "workflows.wf.steps[2].with.outputs.b: expected a JMESPath expression, got 3",
        "workflows.wf.steps[2].with.poll: expected a mapping with 'until' (a JMESPath) and"
        " 'every' (seconds)",
        "workflows.wf.steps[2].with.tests: expected a mapping with at least 'failures'"
        " (a JMESPath)",
        "workflows.wf.steps[3].with.outputs: expected a mapping of names to JMESPath expressions",
        "workflows.wf.steps[3].with.poll.often: unknown key",
        "workflows.wf.steps[3].with.poll.every: expected a number of seconds > 0, got 0",
        "workflows.wf.steps[3].with.tests.totl: unknown key (expected total, passed, failed,"
        " skipped, failures)",
    ]


async def test_a_redirect_or_an_error_status_fails_readably(call: Any, demo: DemoServices) -> None:
    from aegis.demo import Fault

    demo.qaagent.inject("/api/routes", Fault(status=302, location="/elsewhere"))
    with pytest.raises(StepError, match="redirect to /elsewhere not followed"):
        await call(path="/api/routes")
    demo.qaagent.inject("/api/routes", Fault(status=503, payload={"detail": "busy"}))
    with pytest.raises(StepError, match="HTTP 503 from svc: busy"):
        await call(path="/api/routes")


async def test_a_large_answer_is_not_kept_in_the_data(call: Any, demo: DemoServices) -> None:
    from aegis.demo import Fault

    demo.qaagent.inject("/api/routes", Fault(status=None, size=70_000))
    data = await call(path="/api/routes", outputs={"kind": "type(@)"})
    assert data == {"status": 200, "outputs": {"kind": "object"}}


async def test_counts_that_are_not_numbers_are_refused(call: Any) -> None:
    with pytest.raises(StepError, match="'total' should be an integer >= 0") as caught:
        await call(path="/api/routes", tests={"failures": "`[]`", "passed": "'x'"})
    assert caught.value.kind == "protocol"


async def test_a_verify_by_request_needs_tests(
    make_context: MakeContext, demo: DemoServices
) -> None:
    from aegis.steps.http_request import call

    ctx = make_context("verify", demo.qaagent_url, params={"method": "GET", "path": "/health"})
    with pytest.raises(StepError, match=r"with\.tests is required"):
        await call(ctx, tests_required=True)


def test_a_poll_that_runs_out_of_time_keeps_what_it_saw(tmp_path: Path, demo: DemoServices) -> None:
    demo.qaagent.started.polls_until_done = 10_000
    config = tmp_path / "aegis.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            services:
              qaagent: {{name: Q, url: "{demo.qaagent_url}"}}
            workflows:
              wf:
                steps:
                  - type: http
                    service: qaagent
                    with: {{method: POST, path: /api/branches/main/run-tests}}
                  - type: http
                    name: wait
                    service: qaagent
                    timeout: 0.5
                    with:
                      path: /api/runs/tr-1
                      poll: {{until: "status == 'completed'", every: 0.05}}
            """
        )
    )
    out, err = io.StringIO(), io.StringIO()
    assert main(["--config", str(config), "run", "wf", "--json"], stdout=out, stderr=err) == 3
    wait = json.loads(out.getvalue())["steps"][1]
    assert (wait["status"], wait["error_kind"]) == ("failed", "timeout")
    assert wait["data"]["status"] == 200 and wait["data"]["polls"] >= 2
    assert wait["data"]["answer"]["status"] == "running"
