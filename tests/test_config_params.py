"""Workflow params: the config section, and the one check of what a trigger gives."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import config_problems, parse_yaml

from aegis.config.params import (
    ParamError,
    ParamSpec,
    coerce_params,
    param_schema,
    params_schema,
    rerun_params,
    secret_param_values,
    shown_params,
)
from aegis.errors import UsageError

SPECS = {
    "suite": ParamSpec("suite", "choice", default="smoke", choices=("smoke", "full")),
    "count": ParamSpec("count", "integer", default=3),
    "ratio": ParamSpec("ratio", "number"),
    "fast": ParamSpec("fast", "boolean", default=False),
    "token": ParamSpec("token", "string", required=True, secret=True),
}


def load(text: str, environ: dict[str, str] | None = None) -> Any:
    return parse_yaml(text, environ)


problems = config_problems


# -- coercion -----------------------------------------------------------------------------


def test_text_values_are_read_as_their_type_and_defaults_fill_the_rest() -> None:
    given = {"suite": "full", "count": "7", "ratio": "0.5", "fast": "yes", "token": "s3cret"}
    values = coerce_params("wf", SPECS, given, text=True)
    assert values == {"suite": "full", "count": 7, "ratio": 0.5, "fast": True, "token": "s3cret"}
    assert coerce_params("wf", SPECS, {"token": "x"}, text=True) == {
        "suite": "smoke",
        "count": 3,
        "ratio": None,
        "fast": False,
        "token": "x",
    }


def test_every_problem_is_reported_at_once() -> None:
    given = {"nope": "1", "suite": "bogus", "count": "x", "fast": "maybe"}
    with pytest.raises(ParamError) as caught:
        coerce_params("wf", SPECS, given, text=True)
    error = caught.value
    assert isinstance(error, UsageError)
    assert [p.name for p in error.problems] == ["nope", "suite", "count", "fast", "token"]
    assert [p.to_dict() for p in error.problems] == [
        {"name": "nope", "problem": "unknown param (known: suite, count, ratio, fast, token)"},
        {
            "name": "suite",
            "problem": "expected one of: smoke, full, got 'bogus'",
            "type": "choice",
            "choices": ["smoke", "full"],
        },
        {"name": "count", "problem": "expected an integer, got 'x'", "type": "integer"},
        {"name": "fast", "problem": "expected true or false, got 'maybe'", "type": "boolean"},
        {"name": "token", "problem": "required; expected a string", "type": "string"},
    ]
    assert str(error).startswith("workflow 'wf': param 'nope': unknown param")


def test_json_values_must_have_the_type_itself() -> None:
    values = coerce_params("wf", SPECS, {"count": 4.0, "ratio": 2, "fast": True, "token": "t"})
    assert values["count"] == 4 and isinstance(values["count"], int)
    assert values["ratio"] == 2 and values["fast"] is True
    with pytest.raises(ParamError) as caught:
        coerce_params("wf", SPECS, {"count": "4", "ratio": "x", "fast": "true", "token": 5})
    assert [p.message for p in caught.value.problems] == [
        "expected an integer, got '4'",
        "expected a number, got 'x'",
        "expected true or false, got 'true'",
        "expected a string, got a secret value",  # a secret param's value is never echoed
    ]


def test_odd_values_are_refused_with_a_reason() -> None:
    cases = [
        ({"count": 1.5}, "expected an integer, got 1.5"),
        ({"count": True}, "expected an integer, got true"),
        ({"ratio": float("nan")}, "expected a number, got nan"),
        ({"suite": ["smoke"]}, "expected one of: smoke, full, got a list"),
        ({"suite": {"a": 1}}, "expected one of: smoke, full, got a mapping"),
        ({"suite": "\ud800"}, "expected one of: smoke, full, got '\\ud800'"),
    ]
    for given, message in cases:
        with pytest.raises(ParamError) as caught:
            coerce_params("wf", SPECS, {**given, "token": "t"})
        assert caught.value.problems[0].message == message
    with pytest.raises(ParamError):
        coerce_params("wf", SPECS, {"count": "9" * 100, "token": "t"}, text=True)
    with pytest.raises(ParamError) as caught:
        coerce_params("wf", SPECS, {"ratio": None, "suite": "x" * 100, "count": object()})
    assert [p.message for p in caught.value.problems] == [
        f"expected one of: smoke, full, got {'x' * 57 + '...'!r}",
        "expected an integer, got a value of type object",
        "required; expected a string",
    ]
    # null stands for "not given"
    assert coerce_params("wf", {"s": ParamSpec("s", default="d")}, {"s": None}) == {"s": "d"}


def test_a_rerun_keeps_the_recorded_params_and_takes_overrides() -> None:
    recorded = {"suite": "full", "count": 7, "ratio": None, "fast": True, "token": "***"}
    values = rerun_params("wf", SPECS, recorded, {"count": "9", "token": "t0ken"}, text=True)
    assert values == {"suite": "full", "count": 9, "ratio": None, "fast": True, "token": "t0ken"}
    # a param the workflow dropped since is left behind; one it gained takes its default
    specs = {k: v for k, v in SPECS.items() if k != "fast"}
    specs["extra"] = ParamSpec("extra", "string", default="x")
    again = rerun_params("wf", specs, {**recorded, "gone": 1}, {"token": "t0ken"})
    assert again == {"suite": "full", "count": 7, "ratio": None, "token": "t0ken", "extra": "x"}


def test_a_rerun_must_be_given_a_secret_again_and_hears_of_every_problem() -> None:
    recorded = {"suite": "full", "count": 7, "token": "***"}
    with pytest.raises(ParamError) as caught:
        rerun_params("wf", SPECS, recorded, {"count": "many", "nope": "1"}, text=True)
    named = {problem.name: problem.message for problem in caught.value.problems}
    assert set(named) == {"count", "token", "nope"}
    assert "give it again" in named["token"] and "unknown param" in named["nope"]


def test_a_workflow_without_params_names_none() -> None:
    with pytest.raises(ParamError) as caught:
        coerce_params("wf", {}, {"x": "1"}, text=True)
    assert caught.value.problems[0].message == "unknown param (known: this workflow takes none)"


def test_secret_values_are_hidden_in_the_record_but_known_to_the_redactor() -> None:
    values = coerce_params("wf", SPECS, {"token": "hunter22", "fast": True})
    assert shown_params(SPECS, values)["token"] == "***"
    assert shown_params(SPECS, {"token": None})["token"] is None
    flag = {"flag": ParamSpec("flag", "boolean", secret=True)}
    assert secret_param_values(SPECS, values) == ["hunter22"]
    assert secret_param_values(flag, {"flag": True}) == ["true"]


def test_json_schema_of_params() -> None:
    schema = params_schema(SPECS)
    assert schema["required"] == ["token"] and schema["additionalProperties"] is False
    assert schema["properties"]["suite"] == {
        "type": ["string", "null"],
        "enum": ["smoke", "full", None],
        "default": "smoke",
    }
    assert param_schema(SPECS["token"]) == {"type": "string"}  # no default shown for a secret


# -- the config section -------------------------------------------------------------------


def test_params_load_into_the_workflow_spec() -> None:
    config = load(
        """
        workflows:
          w:
            params:
              suite: {type: choice, choices: [smoke, full], default: smoke, description: which}
              count: {type: integer, default: "${COUNT}"}
              token: {secret: true, required: true}
            steps: [{type: report}]
        """,
        environ={"COUNT": "5"},
    )
    params = config.workflows["w"].params
    assert list(params) == ["suite", "count", "token"]
    assert params["suite"] == ParamSpec(
        "suite", "choice", "smoke", False, ("smoke", "full"), "which", False
    )
    assert params["count"].default == 5
    assert params["token"].type == "string" and params["token"].secret


def test_every_bad_param_declaration_is_a_problem_with_its_key_path() -> None:
    found = problems(
        """
        workflows:
          w:
            params:
              suite: {type: choice}
              mode: {type: string, choices: [a]}
              count: {type: integer, default: x}
              token: {type: bool, required: true, default: a}
              1st: {}
              extra: {type: string, colour: red}
              odd: 5
            steps: [{type: report}]
        """
    )
    assert found == [
        "workflows.w.params.suite.choices: missing; a 'choice' param needs a list of its choices",
        "workflows.w.params.mode.choices: only a param of type 'choice' takes choices",
        "workflows.w.params.count.default: expected an integer, got 'x'",
        "workflows.w.params.token.type: unknown param type 'bool' (did you mean 'boolean'?)",
        "workflows.w.params.token.default: a required param takes no default",
        "workflows.w.params.1st: invalid param name '1st': use letters, digits and '_',"
        " not starting with a digit",
        "workflows.w.params.extra.colour: unknown key 'colour' (expected one of: type, default,"
        " required, choices, description, secret)",
        "workflows.w.params.odd: expected a param (a mapping with a 'type'), got 5",
    ]


def test_params_must_be_a_mapping() -> None:
    found = problems("workflows: {w: {params: [a], steps: [{type: report}]}}")
    assert found == ["workflows.w.params: expected a mapping of param names to params, got a list"]
