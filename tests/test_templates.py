"""Run-time templates: resolving ``${{ }}``, and the static checks of ``config validate``."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from fakes import config_problems, parse_yaml

from aegis.cli import main
from aegis.templates import TemplateError, compile_value, has_templates, resolve

CONTEXT = {
    "params": {"suite": "smoke", "count": 3, "name": 'a"b/../é'},
    "steps": {
        "start": {"data": {"id": 42, "tags": ["a", "b"]}, "outputs": {"id": 42}, "status": "ok"}
    },
    "run": {"id": "abc123", "workflow": "wf", "trigger": "cli"},
    "failures": [{"test": "t::one", "message": "no"}, {"test": "t::two", "message": None}],
}


def resolved(value: object) -> object:
    return resolve(compile_value(value), CONTEXT)


def test_a_whole_template_keeps_the_json_type() -> None:
    assert resolved("${{ params.count }}") == 3
    assert resolved("${{failures[].test}}") == ["t::one", "t::two"]
    assert resolved("${{ steps.start.data }}") == {"id": 42, "tags": ["a", "b"]}
    assert resolved("${{ steps.start.outputs.missing }}") is None
    assert resolved("${{ length(failures) }}") == 2


def test_a_template_inside_text_becomes_text() -> None:
    assert resolved("/runs/${{ steps.start.outputs.id }}/x") == "/runs/42/x"
    assert resolved("${{ params.suite }}-${{ run.id }}") == "smoke-abc123"
    assert resolved("tags=${{ steps.start.data.tags }}") == 'tags=["a","b"]'
    assert resolved("name: ${{ params.name }}") == 'name: a"b/../é'
    assert resolved(" ${{ params.count }}") == " 3"


def test_resolution_walks_lists_and_mappings_and_leaves_the_rest() -> None:
    value = {"a": ["x", "${{ params.count }}", 5, None], "b": {"c": "${{ run.workflow }}"}}
    assert resolved(value) == {"a": ["x", 3, 5, None], "b": {"c": "wf"}}
    assert resolved({"plain": "no template", "n": 1.5}) == {"plain": "no template", "n": 1.5}


def test_double_dollar_is_a_literal_template() -> None:
    assert resolved("$${{ params.count }} is ${{ params.count }}") == "${{ params.count }} is 3"
    assert resolved("$${{ nope( }}") == "${{ nope( }}"


def test_has_templates() -> None:
    assert has_templates({"a": [{"b": "x ${{ y }}"}]})
    assert not has_templates({"a": ["${y}", 1, None], "b": "{{ x }}"})


def test_an_expression_that_fails_names_its_key_path() -> None:
    with pytest.raises(TemplateError) as caught:
        resolved({"args": ["x", "${{ length(params.count) }}"]})
    message = str(caught.value)
    assert message.startswith("with.args[1]: cannot resolve ${{ length(params.count) }}: ")
    assert "length()" in message
    with pytest.raises(TemplateError) as caught:
        resolved({"p": "/${{ a[ }}"})
    assert str(caught.value).startswith("with.p: cannot resolve ${{ a[ }}: ")


# -- load time ---------------------------------------------------------------------------

WORKFLOW = """
services:
  qa: {url: "http://127.0.0.1:9"}
workflows:
  wf:
    params:
      suite: {type: choice, choices: [smoke, full], default: smoke}
    steps:
%s
"""


def steps_config(steps: str) -> str:
    return WORKFLOW % textwrap.indent(textwrap.dedent(steps), "      ")


def load(steps: str, environ: dict[str, str] | None = None) -> Any:
    return parse_yaml(steps_config(steps), environ)


def problems(steps: str) -> list[str]:
    return config_problems(steps_config(steps))


def test_load_time_interpolation_leaves_templates_as_written() -> None:
    config = load(
        """
        - type: discover
          service: qa
          with: {path: "/${PREFIX}/${{ params.suite }}/$${{ x }}/$$HOME"}
        - type: test
          service: qa
          with: {path: "${{ steps.discover.data.routes[0] }}"}
        """,
        environ={"PREFIX": "api"},
    )
    steps = config.workflows["wf"].steps
    assert steps[0].params["path"] == "/api/${{ params.suite }}/$${{ x }}/$HOME"
    assert steps[1].params["path"] == "${{ steps.discover.data.routes[0] }}"


def test_every_statically_wrong_template_is_a_problem_with_its_key_path() -> None:
    found = problems(
        """
        - type: discover
          service: qa
          with: {path: "/${{ params.suit }}"}
        - type: test
          service: qa
          with: {path: "/${{ steps.verify.data }}"}
        - type: verify
          service: qa
          with: {path: "/${{ parms.suite }}/${{ steps.discover.dta }}/${{ run.idd }}"}
        - type: test
          name: t2
          service: qa
          with: {path: "/${{ a[ }}/${{ lenght(failures) }}/${{ }}/${{ x"}
        - {type: discover, name: d1, service: qa, parallel: true}
        - type: discover
          name: d2
          service: qa
          parallel: true
          with: {path: "/${{ steps.d1.outputs }}/$${{ steps.nope }}"}
        """
    )
    step = "workflows.wf.steps"
    assert found == [
        f"{step}[0].with.path: unknown param 'suit' (did you mean 'suite'?)",
        f"{step}[1].with.path: unknown step 'verify': a template can only read steps that run"
        " before this one (earlier steps: discover)",
        f"{step}[2].with.path: unknown name 'parms' (did you mean 'params'?)",
        f"{step}[2].with.path: unknown step field 'dta' (did you mean 'data'?)",
        f"{step}[2].with.path: unknown run field 'idd' (did you mean 'id'?)",
        f"{step}[3].with.path: unclosed '${{{{' (end the expression with '}}}}')",
        f"{step}[3].with.path: invalid expression 'a[': the expression ends too early",
        f"{step}[3].with.path: unknown function 'lenght' (did you mean 'length'?)",
        f"{step}[3].with.path: empty expression",
        f"{step}[5].with.path: step 'd1' runs in the same parallel batch as this one;"
        " only steps of earlier batches can be read",
    ]


def test_a_steps_own_check_waits_for_the_resolved_value() -> None:
    # `path` must start with '/': a template can only be checked once it is resolved
    config = load(
        """
        - type: discover
          service: qa
          with: {path: "${{ params.suite }}"}
        """
    )
    assert config.workflows["wf"].steps[0].params["path"] == "${{ params.suite }}"
    assert problems("- {type: discover, service: qa, with: {path: nope}}") == [
        "workflows.wf.steps[0].with.path: expected a path starting with '/', got 'nope'"
    ]


def test_config_validate_reports_them_and_exits_1(tmp_path: Path) -> None:
    text = WORKFLOW % "      - {type: discover, service: qa, with: {path: '/${{ params.nope }}'}}"
    path = tmp_path / "aegis.yaml"
    path.write_text(text)
    err = io.StringIO()
    code = main(["config", "validate", str(path)], stdout=io.StringIO(), stderr=err, environ={})
    assert code == 1
    assert "workflows.wf.steps[0].with.path: unknown param 'nope'" in err.getvalue()


def test_a_config_without_templates_never_imports_jmespath(tmp_path: Path) -> None:
    path = tmp_path / "aegis.yaml"
    path.write_text("workflows: {wf: {steps: [{type: report}]}}\n")
    code = (
        "import sys; from aegis.cli import main\n"
        f"assert main(['config', 'validate', {str(path)!r}]) == 0\n"
        "assert 'jmespath' not in sys.modules, 'jmespath imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_syntax_errors_say_what_and_where() -> None:
    found = problems(
        """
        - type: discover
          service: qa
          with:
            path: /x
            extra: ["${{ a..b }}", {"k": "${{ a | | b }}"}, "${{ `bad }}"]
        """
    )
    step = "workflows.wf.steps[0].with"
    assert found[0].startswith(f"{step}.extra: unknown parameter 'extra' for step type")
    assert found[1].startswith(f"{step}.extra[0]: invalid expression 'a..b': Expecting: ")
    assert found[1].endswith("got: dot (at character 3)")
    assert found[2:] == [
        f"{step}.extra[1].k: invalid expression 'a | | b': unexpected '|' (at character 5)",
        f"{step}.extra[2]: invalid expression '`bad': Unclosed ` delimiter (at character 1)",
    ]
