"""Validation of config contents: the model built from a valid file, and one precise
problem (key path and message) for each kind of mistake."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from aegis.config import (
    DEFAULT_RETRY_DELAY,
    DEFAULT_STEP_TIMEOUT,
    Config,
    ConfigError,
    Identity,
    ServerSpec,
    parse_config,
)
from aegis.steps.base import StepContext, StepType

SEVERITIES = ("critical", "high", "medium", "low")


async def _execute(ctx: StepContext) -> dict[str, Any]:
    return {}


def _check_path(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    path = params.get("path")
    if path is None or (isinstance(path, str) and path.startswith("/")):
        return []
    return [("path", f"expected a path starting with '/', got {path!r}")]


def _check_bugs(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    problems = _check_path(params)
    if not isinstance(params.get("project_id"), str):
        problems.append(("project_id", "expected the bugalizer project id"))
    if params.get("severity", "medium") not in SEVERITIES:
        problems.append(("severity", f"expected one of {', '.join(SEVERITIES)}"))
    return problems


def make_step_types() -> dict[str, StepType]:
    """Stand-ins for the built-in step types, with the same names and parameters."""
    path_only = frozenset({"path"})
    return {
        "discover": StepType("discover", _execute, params=path_only, check_params=_check_path),
        "test": StepType("test", _execute, params=path_only, check_params=_check_path),
        "verify": StepType("verify", _execute, params=path_only, check_params=_check_path),
        "submit_bugs": StepType(
            "submit_bugs",
            _execute,
            params=frozenset({"path", "project_id", "severity"}),
            check_params=_check_bugs,
        ),
        "report": StepType("report", _execute, needs_service=False, params=frozenset()),
    }


def parse(
    text: str,
    *,
    environ: Mapping[str, str] | None = None,
    base_dir: Path = Path("/srv/qa"),
    step_types: Mapping[str, StepType] | None = None,
) -> Config:
    return parse_config(
        textwrap.dedent(text),
        file="aegis.yaml",
        base_dir=base_dir,
        environ={} if environ is None else environ,
        step_types=make_step_types() if step_types is None else step_types,
    )


def problems_of(text: str, **kwargs: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse(text, **kwargs)
    return [(p.path, p.message) for p in caught.value.problems]


EXAMPLE = """\
aegis:
  name: Aegis
  tagline: The AI Quality Control Plane
services:
  qaagent:
    name: QA Agent
    description: Route discovery, risk analysis, test generation
    url: ${QAAGENT_URL:-http://localhost:8080}
    health_endpoint: /health
    api_key_env: QAAGENT_API_KEY
    features: [Route Discovery, Test Orchestration]
    repo_url: ""
    docs_url: ""
  bugalizer:
    name: Bugalizer
    url: http://localhost:8090
workflows:
  full_pipeline:
    name: Full QA Pipeline
    description: Discover, test, file bugs, verify
    timeout: 900
    steps:
      - type: discover
        service: qaagent
      - type: test
        service: qaagent
        retries: 2
        retry_delay: 1.0
        max_retry_delay: 30
        retry_jitter: 0.1
        retry_on: [timeout, connection, 5xx, 429]
        timeout: 60
        deadline: 240
      - type: submit_bugs
        service: bugalizer
        condition: has_failures
        with: {project_id: web-shop, severity: high}
      - type: verify
        service: qaagent
        condition: has_failures
      - type: report
        condition: always
  smoke:
    name: Parallel smoke check
    steps:
      - type: test
        name: test-web
        service: qaagent
        parallel: true
      - type: test
        name: test-api
        service: qaagent
        parallel: true
        with: {path: "/api/runs?suite=api"}
      - type: report
        condition: always
history:
  path: aegis_history.db
  max_runs: 0
server:
  host: 127.0.0.1
  port: 8000
  max_concurrent_runs: 4
auth:
  api_key: ${AEGIS_API_KEY:-}
webhooks:
  - url: https://ci.example/hooks/aegis
    events: [workflow.completed, failure.detected]
    secret: ${AEGIS_WEBHOOK_SECRET:-}
event_log_size: 100
"""

SERVICES = """\
services:
  qaagent: {url: "http://localhost:8080"}
  bugalizer: {url: "http://localhost:8090"}
"""


def with_step(step: str) -> str:
    """A valid config whose workflow `main` has ``step`` as steps[1]."""
    return SERVICES + (
        "workflows:\n  main:\n    steps:\n"
        "      - {type: discover, service: qaagent}\n"
        f"      - {step}\n"
    )


def with_service(service: str) -> str:
    return f"services:\n  qaagent: {service}\nworkflows: {{}}\n"


def with_section(section: str) -> str:
    return SERVICES + "workflows:\n  main: {steps: [{type: report}]}\n" + section


STEP = "workflows.main.steps[1]"


# -- a valid config --------------------------------------------------------------------------


def test_the_design_example_loads_with_every_value() -> None:
    config = parse(EXAMPLE, environ={"AEGIS_API_KEY": "k3y"})

    assert config.identity == Identity()
    qaagent = config.services["qaagent"]
    assert (qaagent.key, qaagent.name, qaagent.url) == (
        "qaagent",
        "QA Agent",
        "http://localhost:8080",
    )
    assert qaagent.api_key_env == "QAAGENT_API_KEY"
    assert qaagent.features == ("Route Discovery", "Test Orchestration")
    assert config.services["bugalizer"].health_endpoint == "/health"

    pipeline = config.workflows["full_pipeline"]
    assert (pipeline.key, pipeline.name, pipeline.timeout) == (
        "full_pipeline",
        "Full QA Pipeline",
        900.0,
    )
    assert [s.name for s in pipeline.steps] == [
        "discover",
        "test",
        "submit_bugs",
        "verify",
        "report",
    ]
    test = pipeline.steps[1]
    assert test.retries == 2
    assert test.retry_delay == 1.0
    assert test.max_retry_delay == 30.0
    assert test.retry_jitter == 0.1
    assert test.retry_on == ("timeout", "connection", "5xx", "429")
    assert (test.timeout, test.deadline) == (60.0, 240.0)
    assert dict(pipeline.steps[2].params) == {"project_id": "web-shop", "severity": "high"}
    assert pipeline.steps[2].condition == "has_failures"
    assert pipeline.steps[4].service is None

    smoke = config.workflows["smoke"]
    assert [(s.name, s.parallel) for s in smoke.steps] == [
        ("test-web", True),
        ("test-api", True),
        ("report", False),
    ]
    assert smoke.steps[1].params["path"] == "/api/runs?suite=api"

    assert config.history.path == "/srv/qa/aegis_history.db"
    assert config.server == ServerSpec(host="127.0.0.1", port=8000, max_concurrent_runs=4)
    assert config.auth.api_key == "k3y"
    assert config.webhooks[0].events == ("workflow.completed", "failure.detected")
    assert config.webhooks[0].secret == ""
    assert config.event_log_size == 100
    assert config.source is None


def test_defaults_fill_every_missing_key() -> None:
    config = parse(
        """\
        services:
          qa: {url: "https://qa.example"}
        workflows:
          main:
            steps: [{type: test, service: qa}]
        """
    )
    assert config.identity == Identity()
    assert config.services["qa"].name == "qa"
    assert config.services["qa"].features == ()
    main = config.workflows["main"]
    assert (main.name, main.description, main.timeout) == ("main", "", None)
    step = main.steps[0]
    assert (step.retries, step.retry_delay, step.timeout) == (
        0,
        DEFAULT_RETRY_DELAY,
        DEFAULT_STEP_TIMEOUT,
    )
    assert (step.condition, step.parallel, step.retry_on, step.deadline) == (
        None,
        False,
        None,
        None,
    )
    assert dict(step.params) == {}
    assert config.server == ServerSpec()
    assert config.webhooks == ()
    assert config.event_log_size == 100


def test_null_sections_mean_defaults() -> None:
    config = parse("services:\nworkflows:\nhistory:\nserver:\nauth:\nwebhooks:\naegis:\n")
    assert dict(config.services) == {} and dict(config.workflows) == {}
    assert config.history.path == "/srv/qa/aegis_history.db"
    assert config.server == ServerSpec()


def test_config_objects_are_frozen() -> None:
    config = parse(EXAMPLE)
    with pytest.raises(AttributeError):
        config.workflows["smoke"].steps[0].retries = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.services["x"] = config.services["qaagent"]  # type: ignore[index]


# -- step names ------------------------------------------------------------------------------


def test_repeated_types_are_numbered_among_steps_of_that_type() -> None:
    config = parse(
        SERVICES
        + """\
workflows:
  main:
    steps:
      - {type: discover, service: qaagent}
      - {type: test, service: qaagent}
      - {type: test, service: qaagent, name: api}
      - {type: test, service: qaagent}
      - {type: report}
"""
    )
    names = [s.name for s in config.workflows["main"].steps]
    assert names == ["discover", "test", "api", "test-3", "report"]


def test_step_names_are_per_workflow() -> None:
    config = parse(
        SERVICES
        + """\
workflows:
  a: {steps: [{type: report}]}
  b: {steps: [{type: report}, {type: report}]}
"""
    )
    assert [s.name for s in config.workflows["a"].steps] == ["report"]
    assert [s.name for s in config.workflows["b"].steps] == ["report", "report-2"]


def test_a_default_name_never_takes_a_name_the_user_chose() -> None:
    problems = problems_of(
        SERVICES
        + """\
workflows:
  main:
    steps:
      - {type: report, name: report-2}
      - {type: report}
      - {type: report}
"""
    )
    assert problems == [
        (
            "workflows.main.steps[1]",
            "its default name 'report-2' is already used by steps[0]; give this step a 'name'",
        )
    ]


# -- values ----------------------------------------------------------------------------------


def test_retry_on_codes_are_normalised_to_strings_without_repeats() -> None:
    config = parse(with_step('{type: test, service: qaagent, retry_on: [429, "503", 5xx, 429]}'))
    assert config.workflows["main"].steps[1].retry_on == ("429", "503", "5xx")


def test_an_empty_retry_on_retries_nothing() -> None:
    config = parse(with_step("{type: test, service: qaagent, retry_on: []}"))
    assert config.workflows["main"].steps[1].retry_on == ()


def test_integers_are_accepted_where_numbers_are_expected() -> None:
    config = parse(with_step("{type: test, service: qaagent, timeout: 5, retry_jitter: 1}"))
    step = config.workflows["main"].steps[1]
    assert (step.timeout, step.retry_jitter) == (5.0, 1.0)
    assert isinstance(step.timeout, float)


def test_a_step_that_needs_no_service_may_still_name_one() -> None:
    config = parse(with_step("{type: report, service: bugalizer}"))
    assert config.workflows["main"].steps[1].service == "bugalizer"


def test_with_values_stay_json_data() -> None:
    step_types = make_step_types()
    step_types["custom"] = StepType("custom", _execute, params=frozenset({"data"}))
    config = parse(
        with_step("{type: custom, service: qaagent, with: {data: {a: [1, 2.5, true, null, x]}}}"),
        step_types=step_types,
    )
    assert config.workflows["main"].steps[1].params["data"] == {"a": [1, 2.5, True, None, "x"]}


def test_webhook_events_default_to_all() -> None:
    config = parse(with_section("webhooks:\n  - url: http://hooks.example/x\n"))
    assert config.webhooks[0].events == ("*",)


def test_a_url_password_is_hidden_before_a_long_value_is_cut() -> None:
    password = "pa55word-" + "0123456789" * 6
    url = "htp://user:" + password + "@hooks.example/x"  # the cut falls in the password
    with pytest.raises(ConfigError) as caught:
        parse(with_section(f"webhooks: [{{url: '{url}'}}]\n"))
    assert "webhooks[0].url: expected" in str(caught.value)
    assert "htp://user:***@hooks.example/x" in str(caught.value)
    assert password[:6] not in str(caught.value)


def test_retries_are_bounded() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(with_step("{type: test, service: qaagent, retries: 1025}"))
    assert str(caught.value) == (
        "aegis.yaml: workflows.main.steps[1].retries: expected an integer from 0 to 100, got 1025"
    )
    config = parse(with_step("{type: test, service: qaagent, retries: 100}"))
    assert config.workflows["main"].steps[1].retries == 100


def test_problem_text_is_file_path_message() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(with_step("{type: test, service: qaagent, retries: abc}"))
    assert str(caught.value) == (
        "aegis.yaml: workflows.main.steps[1].retries: expected an integer from 0 to 100, got 'abc'"
    )


# -- one problem per mistake ---------------------------------------------------------------

MALFORMED = [
    # steps
    (
        "retries-text",
        with_step("{type: test, service: qaagent, retries: abc}"),
        f"{STEP}.retries",
        "expected an integer from 0 to 100, got 'abc'",
    ),
    (
        "retries-negative",
        with_step("{type: test, service: qaagent, retries: -1}"),
        f"{STEP}.retries",
        "expected an integer from 0 to 100, got -1",
    ),
    (
        "retries-bool",
        with_step("{type: test, service: qaagent, retries: true}"),
        f"{STEP}.retries",
        "expected an integer from 0 to 100, got true",
    ),
    (
        "retries-float",
        with_step("{type: test, service: qaagent, retries: 1.5}"),
        f"{STEP}.retries",
        "got 1.5",
    ),
    (
        "retry-delay-negative",
        with_step("{type: test, service: qaagent, retry_delay: -0.5}"),
        f"{STEP}.retry_delay",
        "expected a number >= 0, got -0.5",
    ),
    (
        "max-retry-delay-zero",
        with_step("{type: test, service: qaagent, max_retry_delay: 0}"),
        f"{STEP}.max_retry_delay",
        "expected a number > 0, got 0",
    ),
    (
        "jitter-too-big",
        with_step("{type: test, service: qaagent, retry_jitter: 1.5}"),
        f"{STEP}.retry_jitter",
        "expected a number from 0 to 1, got 1.5",
    ),
    (
        "timeout-zero",
        with_step("{type: test, service: qaagent, timeout: 0}"),
        f"{STEP}.timeout",
        "expected a number > 0, got 0",
    ),
    (
        "timeout-with-unit",
        with_step("{type: test, service: qaagent, timeout: 30s}"),
        f"{STEP}.timeout",
        "got '30s'",
    ),
    (
        "timeout-bool",
        with_step("{type: test, service: qaagent, timeout: false}"),
        f"{STEP}.timeout",
        "got false",
    ),
    (
        "timeout-infinite",
        with_step("{type: test, service: qaagent, timeout: .inf}"),
        f"{STEP}.timeout",
        "got inf",
    ),
    (
        "deadline-negative",
        with_step("{type: test, service: qaagent, deadline: -1}"),
        f"{STEP}.deadline",
        "expected a number > 0",
    ),
    (
        "parallel-quoted",
        with_step('{type: test, service: qaagent, parallel: "yes"}'),
        f"{STEP}.parallel",
        "expected true or false, got 'yes'",
    ),
    (
        "condition-typo",
        with_step("{type: test, service: qaagent, condition: on_sucess}"),
        f"{STEP}.condition",
        "unknown condition 'on_sucess' (did you mean 'on_success'?)",
    ),
    (
        "condition-unrelated",
        with_step("{type: test, service: qaagent, condition: sometimes}"),
        f"{STEP}.condition",
        "expected one of: always, on_success, on_failure, has_failures",
    ),
    (
        "condition-number",
        with_step("{type: test, service: qaagent, condition: 3}"),
        f"{STEP}.condition",
        "expected a condition (one of: always",
    ),
    (
        "retry-on-typo",
        with_step("{type: test, service: qaagent, retry_on: [tiemout]}"),
        f"{STEP}.retry_on[0]",
        "unknown retry_on item 'tiemout' (did you mean 'timeout'?)",
    ),
    (
        "retry-on-case",
        with_step("{type: test, service: qaagent, retry_on: [5XX]}"),
        f"{STEP}.retry_on[0]",
        "(did you mean '5xx'?)",
    ),
    (
        "retry-on-code-range",
        with_step("{type: test, service: qaagent, retry_on: [timeout, 600]}"),
        f"{STEP}.retry_on[1]",
        "status code from 100 to 599, got 600",
    ),
    (
        "retry-on-code-text",
        with_step('{type: test, service: qaagent, retry_on: ["099"]}'),
        f"{STEP}.retry_on[0]",
        "got '099'",
    ),
    (
        "retry-on-bool",
        with_step("{type: test, service: qaagent, retry_on: [true]}"),
        f"{STEP}.retry_on[0]",
        "got true",
    ),
    (
        "retry-on-not-list",
        with_step("{type: test, service: qaagent, retry_on: timeout}"),
        f"{STEP}.retry_on",
        "expected a list of failure kinds, got 'timeout'",
    ),
    (
        "type-missing",
        with_step("{service: qaagent}"),
        f"{STEP}.type",
        "missing; expected a step type (one of: discover, test, verify, submit_bugs, report)",
    ),
    ("type-null", with_step("{type: null, service: qaagent}"), f"{STEP}.type", "got null"),
    (
        "type-typo",
        with_step("{type: tset, service: qaagent}"),
        f"{STEP}.type",
        "unknown step type 'tset' (did you mean 'test'?)",
    ),
    (
        "service-typo",
        with_step("{type: test, service: qaagnet}"),
        f"{STEP}.service",
        "unknown service 'qaagnet' (did you mean 'qaagent'?)",
    ),
    (
        "service-missing",
        with_step("{type: test}"),
        f"{STEP}.service",
        "missing; step type 'test' needs a service (one of: qaagent, bugalizer)",
    ),
    (
        "service-null",
        with_step("{type: verify, service: null}"),
        f"{STEP}.service",
        "step type 'verify' needs a service",
    ),
    (
        "service-key-typo",
        with_step("{type: test, servce: qaagent}"),
        f"{STEP}.servce",
        "unknown key 'servce' (did you mean 'service'?)",
    ),
    (
        "retry-on-code-not-ascii",
        with_step("{type: test, service: qaagent, retry_on: ['٤٢٩']}"),
        f"{STEP}.retry_on[0]",
        "unknown retry_on item '٤٢٩'",
    ),
    (
        "service-number",
        with_step("{type: test, service: 8080}"),
        f"{STEP}.service",
        "expected a string, got 8080",
    ),
    (
        "step-key-typo",
        with_step("{type: test, service: qaagent, retires: 2}"),
        f"{STEP}.retires",
        "unknown key 'retires' (did you mean 'retries'?)",
    ),
    (
        "step-key-unrelated",
        with_step("{type: test, service: qaagent, colour: red}"),
        f"{STEP}.colour",
        "unknown key 'colour' (expected one of: type, name, service",
    ),
    (
        "type-key-typo",
        with_step("{tpye: test, service: qaagent}"),
        f"{STEP}.tpye",
        "unknown key 'tpye' (did you mean 'type'?)",
    ),
    (
        "step-not-mapping",
        with_step("test"),
        STEP,
        "expected a step (a mapping with a 'type'), got 'test'",
    ),
    (
        "step-name-empty",
        with_step('{type: test, service: qaagent, name: ""}'),
        f"{STEP}.name",
        "expected a non-empty string, got ''",
    ),
    (
        "step-name-duplicate",
        SERVICES
        + "workflows:\n  main: {steps: [{type: report, name: sum}, {type: report, name: sum}]}\n",
        "workflows.main.steps[1].name",
        "duplicate step name 'sum' (already used by steps[0])",
    ),
    (
        "with-param-typo",
        with_step("{type: test, service: qaagent, with: {pth: /x}}"),
        f"{STEP}.with.pth",
        "unknown parameter 'pth' for step type 'test' (did you mean 'path'?)",
    ),
    (
        "with-not-mapping",
        with_step("{type: test, service: qaagent, with: [path]}"),
        f"{STEP}.with",
        "expected a mapping of step parameters, got a list",
    ),
    (
        "with-check-params",
        with_step("{type: test, service: qaagent, with: {path: api/runs}}"),
        f"{STEP}.with.path",
        "expected a path starting with '/', got 'api/runs'",
    ),
    (
        "with-no-params",
        with_step("{type: report, with: {path: /x}}"),
        f"{STEP}.with.path",
        "step type 'report' takes no parameters",
    ),
    (
        "with-required-param",
        with_step("{type: submit_bugs, service: bugalizer, with: {}}"),
        f"{STEP}.with.project_id",
        "expected the bugalizer project id",
    ),
    (
        "with-not-json",
        with_step("{type: test, service: qaagent, with: {path: !!binary aGk=}}"),
        f"{STEP}.with.path",
        "expected a JSON value (text, number, boolean, list, mapping), got a value of type bytes",
    ),
    (
        "with-nan",
        with_step("{type: test, service: qaagent, with: {path: [.nan]}}"),
        f"{STEP}.with.path[0]",
        "got nan",
    ),
    # workflows
    (
        "steps-empty",
        SERVICES + "workflows:\n  main: {steps: []}\n",
        "workflows.main.steps",
        "expected a non-empty list of steps, got an empty list",
    ),
    (
        "steps-missing",
        SERVICES + "workflows:\n  main: {name: Main}\n",
        "workflows.main.steps",
        "missing; expected a non-empty list of steps",
    ),
    (
        "steps-mapping",
        SERVICES + "workflows:\n  main: {steps: {type: report}}\n",
        "workflows.main.steps",
        "got a mapping",
    ),
    (
        "workflow-timeout",
        SERVICES + "workflows:\n  main: {timeout: 0, steps: [{type: report}]}\n",
        "workflows.main.timeout",
        "expected a number > 0, got 0",
    ),
    (
        "workflow-key-typo",
        SERVICES + "workflows:\n  main: {step: [{type: report}]}\n",
        "workflows.main.step",
        "unknown key 'step' (did you mean 'steps'?)",
    ),
    (
        "workflow-key-invalid",
        SERVICES + "workflows:\n  full pipeline: {steps: [{type: report}]}\n",
        "workflows.full pipeline",
        "invalid workflow key 'full pipeline': use letters, digits",
    ),
    (
        "workflow-not-mapping",
        SERVICES + "workflows:\n  main: [report]\n",
        "workflows.main",
        "expected a mapping, got a list",
    ),
    (
        "workflows-list",
        SERVICES + "workflows: [main]\n",
        "workflows",
        "expected a mapping of workflow keys to workflows, got a list",
    ),
    # services
    (
        "url-missing",
        with_service("{name: QA}"),
        "services.qaagent.url",
        "missing; expected an http:// or https:// URL",
    ),
    (
        "url-key-typo",
        with_service("{ulr: 'http://qa'}"),
        "services.qaagent.ulr",
        "unknown key 'ulr' (did you mean 'url'?)",
    ),
    (
        "url-scheme",
        with_service("{url: 'ftp://qa.example'}"),
        "services.qaagent.url",
        "expected an http:// or https:// URL with a host, got 'ftp://qa.example'",
    ),
    ("url-no-host", with_service("{url: 'http://'}"), "services.qaagent.url", "got 'http://'"),
    (
        "url-bad-port",
        with_service("{url: 'http://qa:99999'}"),
        "services.qaagent.url",
        "got 'http://qa:99999'",
    ),
    (
        "url-space",
        with_service("{url: 'http://qa example'}"),
        "services.qaagent.url",
        "URL with a host",
    ),
    ("url-number", with_service("{url: 8080}"), "services.qaagent.url", "got 8080"),
    (
        "health-endpoint",
        with_service("{url: 'http://qa', health_endpoint: health}"),
        "services.qaagent.health_endpoint",
        "expected a path starting with '/', got 'health'",
    ),
    (
        "features-text",
        with_service("{url: 'http://qa', features: Discovery}"),
        "services.qaagent.features",
        "expected a list of strings, got 'Discovery'",
    ),
    (
        "features-item",
        with_service("{url: 'http://qa', features: [Discovery, 3]}"),
        "services.qaagent.features[1]",
        "expected a string, got 3",
    ),
    (
        "repo-url",
        with_service("{url: 'http://qa', repo_url: 'javascript:alert(1)'}"),
        "services.qaagent.repo_url",
        "expected an http:// or https:// URL, or ''",
    ),
    (
        "service-name-empty",
        with_service("{url: 'http://qa', name: ' '}"),
        "services.qaagent.name",
        "expected a non-empty string",
    ),
    (
        "service-key-typo",
        with_service("{url: 'http://qa', healthendpoint: /h}"),
        "services.qaagent.healthendpoint",
        "did you mean 'health_endpoint'?",
    ),
    (
        "service-key-invalid",
        "services:\n  qa/agent: {url: 'http://qa'}\n",
        "services.qa/agent",
        "invalid service key 'qa/agent'",
    ),
    (
        "service-key-number",
        "services:\n  1: {url: 'http://qa'}\n",
        "services.1",
        "invalid service key 1",
    ),
    (
        "services-list",
        "services: [qaagent]\n",
        "services",
        "expected a mapping of service keys to services, got a list",
    ),
    # other sections
    (
        "history-max-runs",
        with_section("history: {max_runs: -1}\n"),
        "history.max_runs",
        "expected an integer >= 0, got -1",
    ),
    (
        "history-path-empty",
        with_section("history: {path: ''}\n"),
        "history.path",
        "expected a file path or ':memory:', got ''",
    ),
    (
        "server-port",
        with_section("server: {port: 70000}\n"),
        "server.port",
        "expected an integer from 0 to 65535, got 70000",
    ),
    ("server-port-quoted", with_section("server: {port: '8000'}\n"), "server.port", "got '8000'"),
    (
        "server-max-runs",
        with_section("server: {max_concurrent_runs: 0}\n"),
        "server.max_concurrent_runs",
        "expected an integer >= 1, got 0",
    ),
    (
        "server-cors",
        with_section("server: {cors_origins: '*'}\n"),
        "server.cors_origins",
        "expected a list of strings, got '*'",
    ),
    (
        "server-host-empty",
        with_section("server: {host: ''}\n"),
        "server.host",
        "expected a non-empty string",
    ),
    (
        "server-not-mapping",
        with_section("server: 8000\n"),
        "server",
        "expected a mapping, got 8000",
    ),
    (
        "webhooks-mapping",
        with_section("webhooks: {url: 'http://h'}\n"),
        "webhooks",
        "expected a list of webhooks, got a mapping",
    ),
    (
        "webhook-url-missing",
        with_section("webhooks: [{events: ['*']}]\n"),
        "webhooks[0].url",
        "missing; expected an http:// or https:// URL",
    ),
    (
        "webhook-not-mapping",
        with_section("webhooks: ['http://h']\n"),
        "webhooks[0]",
        "expected a webhook (a mapping with a 'url'), got 'http://h'",
    ),
    (
        "webhook-event-typo",
        with_section("webhooks: [{url: 'http://h', events: [workflow.complete]}]\n"),
        "webhooks[0].events[0]",
        "unknown event 'workflow.complete' (did you mean 'workflow.completed'?)",
    ),
    (
        "webhook-events-empty",
        with_section("webhooks: [{url: 'http://h', events: []}]\n"),
        "webhooks[0].events",
        "expected a non-empty list of event names or '*'",
    ),
    (
        "event-log-size",
        with_section("event_log_size: 0\n"),
        "event_log_size",
        "expected an integer >= 1, got 0",
    ),
    (
        "identity-typo",
        with_section("aegis: {name: QA, tagine: Hi}\n"),
        "aegis.tagine",
        "unknown key 'tagine' (did you mean 'tagline'?)",
    ),
    (
        "top-key-typo",
        with_section("workflow: {}\n"),
        "workflow",
        "unknown key 'workflow' (did you mean 'workflows'?)",
    ),
    ("top-key-number", with_section("8000: port\n"), "8000", "unknown key 8000"),
]


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_each_malformed_config_gives_exactly_its_problem(
    text: str, path: str, fragment: str
) -> None:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0][0] == path
    assert fragment in problems[0][1]


def test_every_problem_is_reported_together() -> None:
    problems = problems_of(
        """\
        aegis: {nme: QA}
        services:
          bugalizer: {url: "ftp://bugs"}
        workflows:
          main:
            steps:
              - {type: tset, service: bugalizer}
              - {type: test, service: bugalyzer, retries: abc}
              - {type: report, retry_jitter: 2}
        server: {port: -1}
        event_log_size: zero
        """
    )
    assert [path for path, _ in problems] == [
        "aegis.nme",
        "services.bugalizer.url",
        "workflows.main.steps[0].type",
        "workflows.main.steps[1].service",
        "workflows.main.steps[1].retries",
        "workflows.main.steps[2].retry_jitter",
        "server.port",
        "event_log_size",
    ]


# -- messages that must not leak secrets -----------------------------------------------------


def test_an_api_key_in_place_of_its_variable_name_is_not_echoed() -> None:
    problems = problems_of(with_service("{url: 'http://qa', api_key_env: sk-live-0123456789}"))
    assert problems == [
        (
            "services.qaagent.api_key_env",
            "expected the name of an environment variable (like QAAGENT_API_KEY),"
            " not the key itself",
        )
    ]


def test_a_secret_of_the_wrong_type_is_not_echoed() -> None:
    problems = problems_of(with_section("auth: {api_key: 123456789}\n"))
    assert problems == [("auth.api_key", "expected a string (quote the value)")]


def test_the_password_of_a_malformed_url_is_not_echoed() -> None:
    problems = problems_of(with_service("{url: 'htp://bot:pa55word@qa:1'}"))
    assert problems == [
        (
            "services.qaagent.url",
            "expected an http:// or https:// URL with a host, got 'htp://bot:***@qa:1'",
        )
    ]


# -- step types --------------------------------------------------------------------------------


def test_a_failing_param_check_becomes_a_problem() -> None:
    def broken(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        raise KeyError("oops")

    step_types = make_step_types()
    step_types["test"] = StepType("test", _execute, params=frozenset({"path"}), check_params=broken)
    problems = problems_of(with_step("{type: test, service: qaagent}"), step_types=step_types)
    assert problems == [(f"{STEP}.with", "could not check the parameters: KeyError: 'oops'")]


def test_a_param_check_may_report_on_the_whole_mapping() -> None:
    def whole(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        return [("", "expected 'a' or 'b'")]

    step_types = make_step_types()
    step_types["test"] = StepType(
        "test", _execute, params=frozenset({"a", "b"}), check_params=whole
    )
    problems = problems_of(with_step("{type: test, service: qaagent}"), step_types=step_types)
    assert problems == [(f"{STEP}.with", "expected 'a' or 'b'")]


def test_a_misspelt_parameter_is_not_also_reported_missing() -> None:
    problems = problems_of(
        with_step("{type: submit_bugs, service: bugalizer, with: {projct_id: shop}}")
    )
    assert problems == [
        (
            f"{STEP}.with.projct_id",
            "unknown parameter 'projct_id' for step type 'submit_bugs'"
            " (did you mean 'project_id'?)",
        )
    ]


def test_custom_step_types_extend_the_registry() -> None:
    step_types = make_step_types()
    step_types["lint"] = StepType(
        "lint", _execute, needs_service=False, params=frozenset({"strict"})
    )
    config = parse(with_step("{type: lint, with: {strict: true}}"), step_types=step_types)
    step = config.workflows["main"].steps[1]
    assert (step.type, step.name, dict(step.params)) == ("lint", "lint", {"strict": True})


def test_no_services_defined_is_said_so() -> None:
    problems = problems_of("workflows:\n  main: {steps: [{type: test, service: qa}]}\n")
    assert problems == [
        ("workflows.main.steps[0].service", "unknown service 'qa' (none are defined)")
    ]
    problems = problems_of("workflows:\n  main: {steps: [{type: test}]}\n")
    assert problems == [
        (
            "workflows.main.steps[0].service",
            "missing; step type 'test' needs a service (none are defined)",
        )
    ]


def test_an_unknown_type_does_not_also_ask_for_a_service() -> None:
    problems = problems_of(with_step("{type: lint}"))
    assert [path for path, _ in problems] == [f"{STEP}.type"]


def test_long_values_are_shortened_in_messages() -> None:
    problems = problems_of(with_step(f"{{type: test, service: qaagent, retries: {'x' * 200}}}"))
    message = problems[0][1]
    assert message.endswith("...'")
    assert len(message) < 120


def test_ready_endpoint_and_public_url() -> None:
    config = parse(
        'aegis: {public_url: "https://aegis.example"}\n'
        + with_service('{url: "http://q", ready_endpoint: /health/ready}')
    )
    assert config.identity.public_url == "https://aegis.example"
    assert config.services["qaagent"].ready_endpoint == "/health/ready"
    assert parse(with_service('{url: "http://q"}')).services["qaagent"].ready_endpoint is None
    problems = problems_of(
        "aegis: {public_url: ftp://x}\n" + with_service('{url: "http://q", ready_endpoint: ready}')
    )
    assert sorted(path for path, _ in problems) == [
        "aegis.public_url",
        "services.qaagent.ready_endpoint",
    ]


def test_control_characters_in_key_paths_are_escaped_when_shown() -> None:
    text = 'services: {}\nworkflows:\n  "x\\e[2J\\ry":\n    steps: []\n"top\\a": 1\n'
    with pytest.raises(ConfigError) as caught:
        parse(text)
    shown = str(caught.value)
    assert "\x1b" not in shown and "\r" not in shown and "\x07" not in shown
    assert "aegis.yaml: workflows.x\\x1b[2J\\ry: invalid workflow key" in shown
    assert "aegis.yaml: top\\x07: unknown key" in shown
    # the problems themselves keep the key as written, for callers that match on it
    assert "workflows.x\x1b[2J\ry" in [p.path for p in caught.value.problems]
