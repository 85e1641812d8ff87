"""Finding and reading config files: discovery, YAML parsing, interpolation, paths."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from aegis.config import (
    CONFIG_ENV,
    Config,
    ConfigError,
    find_config,
    load_config,
    parse_config,
)
from aegis.steps import registry
from aegis.steps.base import StepContext, StepType


async def _execute(ctx: StepContext) -> dict[str, Any]:
    return {}


def make_step_types() -> dict[str, StepType]:
    """Stand-ins for the built-in step types, with the same names and parameters."""
    return {
        "discover": StepType("discover", _execute),
        "test": StepType("test", _execute),
        "verify": StepType("verify", _execute),
        "submit_bugs": StepType(
            "submit_bugs", _execute, params=frozenset({"path", "project_id", "severity"})
        ),
        "report": StepType("report", _execute, needs_service=False, params=frozenset()),
    }


MINIMAL = """\
services:
  qa: {url: "http://localhost:8080"}
workflows:
  main:
    steps:
      - {type: test, service: qa}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    return load_config(
        path, environ={} if environ is None else environ, step_types=make_step_types()
    )


def parse(text: str, environ: Mapping[str, str] | None = None) -> Config:
    return parse_config(
        textwrap.dedent(text),
        file="aegis.yaml",
        base_dir=Path("/srv/qa"),
        environ={} if environ is None else environ,
        step_types=make_step_types(),
    )


def problems_of(text: str, environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse(text, environ)
    return [(p.path, p.message) for p in caught.value.problems]


def error_of(path: Path | str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(path)
    return str(caught.value)


# -- discovery -------------------------------------------------------------------------------


def test_an_explicit_path_wins_over_the_environment_and_the_directory(tmp_path: Path) -> None:
    explicit = write(tmp_path / "elsewhere.yaml", MINIMAL)
    named = write(tmp_path / "named.yaml", MINIMAL)
    write(tmp_path / "aegis.yaml", MINIMAL)
    found = find_config(str(explicit), environ={CONFIG_ENV: str(named)}, cwd=tmp_path)
    assert found == explicit


def test_an_explicit_path_is_kept_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "conf" / "qa.yaml", MINIMAL)
    monkeypatch.chdir(tmp_path)
    assert find_config("conf/qa.yaml", environ={}) == Path("conf/qa.yaml")


def test_a_missing_explicit_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    write(tmp_path / "aegis.yaml", MINIMAL)
    with pytest.raises(ConfigError) as caught:
        find_config(str(missing), environ={}, cwd=tmp_path)
    assert str(caught.value) == f"{missing}: no such file"


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        find_config(str(tmp_path), environ={})
    assert str(caught.value) == f"{tmp_path}: is a directory, not a config file"


def test_a_fifo_or_a_socket_is_named_for_what_it_is(tmp_path: Path) -> None:
    import socket

    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as caught:
        find_config(str(fifo), environ={})
    assert str(caught.value) == f"{fifo}: is a FIFO (named pipe), not a config file"

    sock = tmp_path / "s.yaml"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sock))
        with pytest.raises(ConfigError) as caught:
            find_config(str(sock), environ={})
    assert str(caught.value) == f"{sock}: is a socket, not a config file"

    with pytest.raises(ConfigError) as caught:
        find_config("/dev/null", environ={})
    assert str(caught.value) == "/dev/null: is a device, not a config file"

    under_a_file = write(tmp_path / "plain", "x") / "aegis.yaml"
    with pytest.raises(ConfigError) as caught:
        find_config(str(under_a_file), environ={})
    assert str(caught.value).endswith("no such file (a part of the path is not a directory)")


def test_a_file_in_a_directory_we_may_not_search_says_so() -> None:
    """Run as an unprivileged user (root may search anything), on a copy of the package."""
    import shutil
    import tempfile

    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root and setpriv to run a check as another user")
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        base.chmod(0o755)
        shutil.copytree(
            Path(__file__).resolve().parent.parent / "aegis",
            base / "aegis",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        locked = base / "locked"
        locked.mkdir(mode=0o700)
        write(locked / "aegis.yaml", MINIMAL)
        done = subprocess.run(
            [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
             "env", f"PYTHONPATH={base}", "PYTHONDONTWRITEBYTECODE=1", "/usr/bin/python3",
             "-m", "aegis", "--config", str(locked / "aegis.yaml"), "status"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"{locked / 'aegis.yaml'}: cannot be reached: permission denied on a directory"
        " of the path\n"
    )


def test_the_environment_variable_comes_next(tmp_path: Path) -> None:
    named = write(tmp_path / "named.yaml", MINIMAL)
    write(tmp_path / "aegis.yaml", MINIMAL)
    assert find_config(environ={CONFIG_ENV: str(named)}, cwd=tmp_path) == named


def test_a_missing_file_named_by_the_environment_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        find_config(environ={CONFIG_ENV: "gone.yaml"}, cwd=tmp_path)
    assert str(caught.value) == "gone.yaml: no such file (named by $AEGIS_CONFIG)"


def test_an_empty_environment_variable_is_ignored(tmp_path: Path) -> None:
    found = write(tmp_path / "aegis.yaml", MINIMAL)
    assert find_config(environ={CONFIG_ENV: ""}, cwd=tmp_path) == found


def test_the_hidden_name_is_preferred_in_one_directory(tmp_path: Path) -> None:
    hidden = write(tmp_path / ".aegis.yaml", MINIMAL)
    write(tmp_path / "aegis.yaml", MINIMAL)
    assert find_config(environ={}, cwd=tmp_path) == hidden


def test_the_nearest_parent_wins(tmp_path: Path) -> None:
    write(tmp_path / "aegis.yaml", MINIMAL)
    nearer = write(tmp_path / "a" / ".aegis.yaml", MINIMAL)
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert find_config(environ={}, cwd=deep) == nearer


def test_a_directory_with_a_config_name_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "a" / "aegis.yaml").mkdir(parents=True)
    found = write(tmp_path / "aegis.yaml", MINIMAL)
    assert find_config(environ={}, cwd=tmp_path / "a") == found


def test_nothing_found_names_where_it_looked(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as caught:
        # A file named like a parent's config is out of reach only if none exists above
        # tmp_path; a stray one there would be found, which is the intended behaviour.
        find_config(environ={}, cwd=empty)
    message = str(caught.value)
    assert message.startswith(f"{empty}: no .aegis.yaml or aegis.yaml here or in any parent")
    assert "--config PATH" in message and CONFIG_ENV in message


def test_the_process_environment_and_directory_are_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = write(tmp_path / "named.yaml", MINIMAL)
    monkeypatch.setenv(CONFIG_ENV, str(named))
    assert find_config() == named
    monkeypatch.delenv(CONFIG_ENV)
    found = write(tmp_path / "aegis.yaml", MINIMAL)
    monkeypatch.chdir(tmp_path)
    assert find_config() == found


def test_a_relative_cwd_is_searched_upwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = write(tmp_path / "aegis.yaml", MINIMAL)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert find_config(environ={}, cwd=Path(".")) == found


def test_a_name_the_system_refuses_says_why() -> None:
    name = "x" * 5000  # ENAMETOOLONG: an OSError that pathlib does not swallow everywhere
    with pytest.raises(ConfigError) as caught:
        find_config(name, environ={})
    assert str(caught.value).endswith(": cannot be reached: file name too long")


def test_an_unsearchable_directory_is_passed_over(tmp_path: Path) -> None:
    # A path through a regular file cannot be searched (ENOTDIR), even by root.
    blocker = write(tmp_path / "file", "x")
    with pytest.raises(ConfigError):
        find_config(str(blocker / "aegis.yaml"), environ={})


# -- reading -----------------------------------------------------------------------------------


def test_a_file_loads_with_its_absolute_source(tmp_path: Path) -> None:
    path = write(tmp_path / "aegis.yaml", MINIMAL)
    config = load(path)
    assert config.source == str(path)
    assert config.workflows["main"].steps[0].service == "qa"


def test_problems_name_the_file_as_the_user_gave_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "conf" / "qa.yaml", "services: {qa: {}}\n")
    monkeypatch.chdir(tmp_path)
    assert (
        error_of("conf/qa.yaml")
        == "conf/qa.yaml: services.qa.url: missing; expected an http:// or https:// URL"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty; expected a mapping of sections"),
        (b"# only a comment\n\n", "the file is empty; expected a mapping of sections"),
        (b"---\n", "the file is empty; expected a mapping of sections"),
        (b"- a\n- b\n", "expected a mapping of sections (services, workflows, ...), got a list"),
        (
            b"just text\n",
            "expected a mapping of sections (services, workflows, ...), got 'just text'",
        ),
        (b"services: {}\n\xff\xfe\n", "line 2: not UTF-8 text (byte 0xff)"),
    ],
    ids=["empty", "comments", "empty-document", "list", "scalar", "not-utf8"],
)
def test_files_that_are_not_a_config(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "aegis.yaml"
    path.write_bytes(content)
    assert error_of(path) == f"{path}: {message}"


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "aegis.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert list(load(path).services) == ["qa"]


def test_a_missing_file(tmp_path: Path) -> None:
    assert error_of(tmp_path / "x.yaml") == f"{tmp_path / 'x.yaml'}: no such file"


def test_a_directory(tmp_path: Path) -> None:
    assert error_of(tmp_path) == f"{tmp_path}: is a directory, not a config file"


def test_an_unreadable_path(tmp_path: Path) -> None:
    blocked = write(tmp_path / "file", "x") / "aegis.yaml"
    assert error_of(blocked) == f"{blocked}: cannot read the file: not a directory"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_a_file_without_read_permission(tmp_path: Path) -> None:
    path = write(tmp_path / "aegis.yaml", MINIMAL)
    path.chmod(0)
    try:
        assert error_of(path) == f"{path}: cannot read the file: permission denied"
    finally:
        path.chmod(0o600)


# -- YAML ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services: [1, 2\nworkflows: {}\n", "line 2, column 10: expected ',' or ']', but got ':'"),
        ("aegis:\n  name: 'QA\n", "line 3, column 1: found unexpected end of stream"),
        (
            "aegis:\n\tname: QA\n",
            "line 2, column 1: found character '\\t' that cannot start any token",
        ),
        (
            "services: {}\n---\nworkflows: {}\n",
            "line 2, column 1: expected a single document in the stream,"
            " but found another document",
        ),
        (
            "a: !!python/object/apply:os.system [ls]\n",
            "line 1, column 4: could not determine a constructor",
        ),
        ("aegis: \x07\n", "line 1, column 8: character U+0007 is not allowed in YAML"),
        ("aegis: *nowhere\n", "line 1, column 8: found undefined alias 'nowhere'"),
        ("a: [" * 3000, "the YAML is nested too deeply"),
    ],
    ids=["flow", "quote", "tab", "two-documents", "unsafe-tag", "control-char", "alias", "deep"],
)
def test_yaml_errors_give_line_and_column_without_traceback(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    [problem] = caught.value.problems
    assert (problem.file, problem.path) == ("aegis.yaml", "")
    assert problem.message.startswith(message), problem.message


def test_an_unquoted_interpolation_in_brackets_gets_a_hint() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("server: {port: ${PORT}}\n")
    assert str(caught.value).endswith(
        "; put a value that uses ${...} inside [...] or {...} in quotes"
    )


def test_a_syntax_error_names_its_context_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("aegis:\n  name: 'QA\n")
    assert "(while scanning a quoted scalar on line 2)" in str(caught.value)


def test_a_yaml_error_without_a_position_still_reads_well() -> None:
    import yaml

    from aegis.config.load import _marked_message

    assert _marked_message(yaml.MarkedYAMLError(problem="broken"), "") == "broken"
    assert _marked_message(yaml.MarkedYAMLError(), "") == "invalid YAML"


def test_duplicate_keys_are_problems_with_their_lines() -> None:
    problems = problems_of(
        """\
        services:
          qa: {url: "http://a"}
          qa: {url: "http://b"}
        workflows:
          main:
            steps:
              - type: report
                retries: 1
                retries: 2
        """
    )
    assert problems == [
        ("services.qa", "line 3: duplicate key 'qa' (first on line 2)"),
        ("workflows.main.steps[0].retries", "line 9: duplicate key 'retries' (first on line 8)"),
    ]


def test_merge_keys_are_not_duplicates() -> None:
    config = parse(
        """\
        services:
          qa: {url: "http://qa"}
        workflows:
          main:
            steps:
              - &base {type: test, service: qa, retries: 2, timeout: 5}
              - {<<: *base, name: again, retries: 3}
        """
    )
    second = config.workflows["main"].steps[1]
    assert (second.name, second.retries, second.timeout) == ("again", 3, 5.0)


def test_an_alias_that_contains_itself_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("aegis: &a [*a]\n")
    assert str(caught.value) == (
        "aegis.yaml: aegis[0]: line 1: an alias refers to a value that contains it"
    )


def test_a_small_file_that_expands_hugely_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(ConfigError) as caught:
        parse("\n".join(lines) + "\n")
    assert "too large: more than 100000 values once aliases are expanded" in str(caught.value)


@pytest.mark.parametrize("depth", [65, 200, 400, 800])
def test_deep_nesting_is_refused_before_it_can_overflow(depth: int) -> None:
    value = "[" * depth + "x" + "]" * depth
    with pytest.raises(ConfigError) as caught:
        parse(f"workflows: {{m: {{steps: [{{type: test, with: {{path: {value}}}}}]}}}}\n")
    message = caught.value.problems[0].message
    assert "nested too deeply" in message


def test_nesting_up_to_the_limit_is_fine() -> None:
    value = "[" * 50 + "x" + "]" * 50
    with pytest.raises(ConfigError) as caught:  # only the unknown parameter is wrong
        parse(f"workflows: {{m: {{steps: [{{type: report, with: {{path: {value}}}}}]}}}}\n")
    assert [p.path for p in caught.value.problems] == ["workflows.m.steps[0].with.path"]


def test_dates_stay_text() -> None:
    config = parse('aegis: {name: 2026-01-01, tagline: "x"}\n')
    assert config.identity.name == "2026-01-01"


def test_problems_come_in_file_order() -> None:
    problems = problems_of(
        """\
        event_log_size: 0
        services:
          qa: {url: "${QA_URL}"}
        aegis: {nmae: x}
        """
    )
    assert [path for path, _ in problems] == ["event_log_size", "services.qa.url", "aegis.nmae"]


# -- interpolation ---------------------------------------------------------------------------


def service_url(text: str, environ: Mapping[str, str]) -> str:
    config = parse(f"services:\n  qa:\n    url: {text}\n", environ)
    return config.services["qa"].url


@pytest.mark.parametrize(
    ("text", "environ", "url"),
    [
        ("${QA_URL}", {"QA_URL": "http://qa:1"}, "http://qa:1"),
        ("${QA_URL:-http://fallback}", {}, "http://fallback"),
        ("${QA_URL:-http://fallback}", {"QA_URL": ""}, "http://fallback"),
        ("${QA_URL:-http://fallback}", {"QA_URL": "http://set"}, "http://set"),
        ("http://${HOST}:${PORT}/x", {"HOST": "h", "PORT": "9"}, "http://h:9/x"),
        ('"http://h/$$HOME"', {"HOME": "/root"}, "http://h/$HOME"),
        ('"http://h/$$${P}"', {"P": "x"}, "http://h/$x"),
        ("http://h/a$b", {}, "http://h/a$b"),
        ("http://h/${ Q }", {}, None),
    ],
    ids=[
        "set",
        "default",
        "empty-takes-default",
        "set-wins",
        "several",
        "dollar",
        "dollar-then-var",
        "lone-dollar",
        "spaces",
    ],
)
def test_interpolation_in_strings(text: str, environ: dict[str, str], url: str | None) -> None:
    if url is None:
        with pytest.raises(ConfigError, match="invalid interpolation"):
            service_url(text, environ)
    else:
        assert service_url(text, environ) == url


@pytest.mark.parametrize(
    ("text", "environ", "url"),
    [
        ('"${A:-${B}}"', {"B": "http://b"}, "http://b"),
        ('"${A:-${OTHER:-http://zz}}"', {}, "http://zz"),
        ('"${A:-${B}}"', {"A": "http://a"}, "http://a"),  # B unset, but not needed
        ('"${A:-http://${H:-h}:${P:-9}}/x"', {"P": "1"}, "http://h:1/x"),
        ('"${A:-http://h/$${B}}"', {}, "http://h/${B}"),
        ('"${A:-http://h}}"', {}, "http://h}"),
    ],
    ids=["nested", "nested-default", "outer-set", "several-nested", "dollar", "brace-after"],
)
def test_a_default_may_itself_interpolate(
    text: str, environ: dict[str, str], url: str | None
) -> None:
    assert service_url(text, environ) == url


def test_a_nested_whole_interpolation_is_still_read_as_a_scalar() -> None:
    config = parse("server:\n  port: ${PORT:-${FALLBACK_PORT:-8123}}\n", {})
    assert config.server.port == 8123


def test_nested_interpolation_problems_name_the_key() -> None:
    [(path, problem)] = problems_of("aegis: {name: '${A:-${B}}'}\n")
    assert path == "aegis.name"
    assert problem.startswith("environment variable 'B' is not set")
    deep = "${A:-" * 10 + "x" + "}" * 10
    [(path, problem)] = problems_of(f"aegis: {{name: '{deep}'}}\n")
    assert path == "aegis.name" and "nests deeper than 8" in problem


def test_an_empty_variable_without_default_is_empty() -> None:
    config = parse("auth: {api_key: '${KEY}'}\n", {"KEY": ""})
    assert config.auth.api_key == ""


def test_an_unset_variable_is_a_problem_at_its_key() -> None:
    problems = problems_of(
        """\
        services:
          qa: {url: "${QA_URL}"}
        webhooks:
          - url: "https://h/${A}/${B}"
        """
    )
    assert problems == [
        (
            "services.qa.url",
            "environment variable 'QA_URL' is not set (give a default: ${QA_URL:-...})",
        ),
        ("webhooks[0].url", "environment variable 'A' is not set (give a default: ${A:-...})"),
        ("webhooks[0].url", "environment variable 'B' is not set (give a default: ${B:-...})"),
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("'${1X}'", "invalid interpolation '${1X}': expected ${NAME} or ${NAME:-default}"),
        ("'${X-d}'", "invalid interpolation '${X-d}'"),
        ("'${}'", "invalid interpolation '${}'"),
        ("'a${X'", "unclosed '${' (write '$$' for a literal '$')"),
    ],
)
def test_malformed_interpolations(value: str, message: str) -> None:
    [(path, problem)] = problems_of(f"aegis: {{name: {value}}}\n")
    assert path == "aegis.name"
    assert problem.startswith(message)


def test_unresolved_values_are_not_reported_twice() -> None:
    problems = problems_of(
        """\
        services:
          qa: {url: "${U}", features: ["${F}"]}
        workflows:
          main:
            steps: ${STEPS}
          other:
            steps:
              - {type: "${T}", service: "${S}", retries: "${R}", with: {path: {a: "${P}"}}}
              - {type: submit_bugs, service: qa, with: "${W}"}
              - {type: test, service: qa, with: {path: ["${P2}"]}}
              - {type: test, service: qa, with: {path: {a: "${P3}"}}}
        server: ${SERVER}
        webhooks: ${HOOKS}
        """
    )
    assert [message.split("'")[1] for _, message in problems] == [
        "U",
        "F",
        "STEPS",
        "T",
        "S",
        "R",
        "P",
        "W",
        "P2",
        "P3",
        "SERVER",
        "HOOKS",
    ]


@pytest.mark.parametrize(
    ("text", "environ", "attribute", "expected"),
    [
        ("server:\n  port: ${PORT:-8000}", {}, "port", 8000),
        ("server:\n  port: ${PORT}", {"PORT": "9000"}, "port", 9000),
        ('server: {port: "${PORT}"}', {"PORT": "9001"}, "port", 9001),
        ("server:\n  host: ${HOST}", {"HOST": "1234"}, "host", "1234"),
    ],
    ids=["default", "block", "quoted-in-flow", "text-stays-text"],
)
def test_a_whole_interpolation_is_read_as_a_yaml_scalar_where_a_type_is_expected(
    text: str, environ: dict[str, str], attribute: str, expected: object
) -> None:
    assert getattr(parse(text + "\n", environ).server, attribute) == expected


def test_interpolated_step_settings_take_their_types() -> None:
    config = parse(
        """\
        services: {qa: {url: "http://qa"}}
        workflows:
          main:
            steps:
              - type: test
                service: qa
                parallel: ${PARALLEL}
                retries: ${RETRIES:-2}
                timeout: ${TIMEOUT}
                deadline: ${DEADLINE:-}
                retry_on:
                  - ${CODE}
        auth:
          api_key: ${KEY}
        """,
        {"PARALLEL": "true", "TIMEOUT": "2.5", "CODE": "429", "KEY": "000123"},
    )
    step = config.workflows["main"].steps[0]
    assert (step.parallel, step.retries, step.timeout) == (True, 2, 2.5)
    assert step.deadline is None  # an empty default leaves the key unset
    assert step.retry_on == ("429",)
    assert config.auth.api_key == "000123"  # a secret keeps its exact text


def test_an_empty_interpolation_leaves_a_name_at_its_default_but_a_url_missing() -> None:
    config = parse("services:\n  qa:\n    url: http://qa\n    name: ${NAME:-}\n")
    assert config.services["qa"].name == "qa"
    problems = problems_of("services:\n  qa:\n    url: ${URL:-}\n")
    assert problems == [("services.qa.url", "expected an http:// or https:// URL, got ''")]


def test_a_bad_interpolated_number_says_what_it_got() -> None:
    problems = problems_of("server:\n  port: ${PORT}\n", {"PORT": "eighty"})
    assert problems == [("server.port", "expected an integer from 0 to 65535, got 'eighty'")]


def test_with_values_are_typed_unless_quoted() -> None:
    config = parse(
        """\
        services: {qa: {url: "http://qa"}}
        workflows:
          main:
            steps:
              - type: submit_bugs
                service: qa
                with:
                  project_id: "${PROJECT}"
                  severity: ${SEVERITY}
                  path: x${P}
        """,
        {"PROJECT": "12345", "SEVERITY": "5", "P": "1"},
    )
    params = dict(config.workflows["main"].steps[0].params)
    assert params == {"project_id": "12345", "severity": 5, "path": "x1"}


def test_keys_are_not_interpolated() -> None:
    problems = problems_of("${SECTION}: {}\n", {"SECTION": "server"})
    [(path, message)] = problems
    assert path == "${SECTION}"
    assert message.startswith("unknown key '${SECTION}' (expected one of: aegis, services,")


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEGIS_TEST_NAME", "From Env")
    config = parse_config(
        "aegis: {name: '${AEGIS_TEST_NAME}'}\n",
        file="x.yaml",
        base_dir=Path("/"),
        step_types=make_step_types(),
    )
    assert config.identity.name == "From Env"


# -- paths -----------------------------------------------------------------------------------


def test_a_relative_history_path_is_beside_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "conf" / "aegis.yaml", "history: {path: data/../runs.db}\n")
    monkeypatch.chdir(tmp_path)
    config = load("conf/aegis.yaml")
    assert config.history.path == str(tmp_path / "conf" / "runs.db")


def test_the_default_history_is_beside_the_config_file(tmp_path: Path) -> None:
    config = load(write(tmp_path / "aegis.yaml", "history: {max_runs: 5}\n"))
    assert (config.history.path, config.history.max_runs) == (str(tmp_path / "aegis_history.db"), 5)
    config = load(write(tmp_path / "other.yaml", "aegis: {name: X}\n"))
    assert config.history.path == str(tmp_path / "aegis_history.db")


def test_memory_and_absolute_history_paths_stay(tmp_path: Path) -> None:
    assert (
        load(write(tmp_path / "a.yaml", "history: {path: ':memory:'}\n")).history.path == ":memory:"
    )
    absolute = tmp_path / "elsewhere" / "h.db"
    config = load(write(tmp_path / "b.yaml", f"history: {{path: '{absolute}'}}\n"))
    assert config.history.path == str(absolute)


def test_parse_config_resolves_against_the_given_directory() -> None:
    config = parse("history: {path: h.db}\n")
    assert config.history.path == "/srv/qa/h.db"
    assert config.source is None


# -- step types and imports ------------------------------------------------------------------


def test_the_default_registry_is_used_when_no_step_types_are_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "default_step_types", make_step_types)
    config = load_config(write(tmp_path / "aegis.yaml", MINIMAL), environ={})
    assert config.workflows["main"].steps[0].type == "test"


def test_the_built_in_step_types_accept_a_typical_config(tmp_path: Path) -> None:
    built_in = registry.default_step_types()
    text = MINIMAL + (
        "      - {type: submit_bugs, service: qa, with: {project_id: web}}\n"
        "      - {type: report}\n"
    )
    config = load_config(write(tmp_path / "aegis.yaml", text), environ={}, step_types=built_in)
    assert [s.name for s in config.workflows["main"].steps] == ["test", "submit_bugs", "report"]


def test_importing_the_config_package_does_not_import_yaml() -> None:
    code = "import aegis.config, sys; assert 'yaml' not in sys.modules, 'yaml imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


MAX_BYTES = 4 * 1024 * 1024  # aegis.config.load.MAX_BYTES


def test_an_oversized_file_is_refused_by_its_size_before_parsing(tmp_path: Path) -> None:
    huge = tmp_path / "aegis.yaml"
    with huge.open("wb") as stream:
        stream.truncate(50 * 1024 * 1024)  # sparse: 50 MB that cost nothing to write
    with pytest.raises(ConfigError) as caught:
        load_config(huge, environ={})
    assert str(caught.value) == (
        f"{huge}: too large: 52,428,800 bytes; a config file may have at most 4 MiB"
    )


def test_a_file_just_over_the_limit_is_refused_and_one_at_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "aegis.yaml"
    path.write_bytes(b"#" * MAX_BYTES + b"\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert "too large: 4,194,305 bytes" in str(caught.value)
    path.write_bytes(b"services: {}\n#" + b"x" * (MAX_BYTES - 15) + b"\n")
    assert load_config(path, environ={}).workflows == {}
    with pytest.raises(ConfigError) as caught:
        parse_config("#" * (MAX_BYTES + 1), file="inline", base_dir=tmp_path, environ={})
    assert str(caught.value) == (
        "inline: too large: 4,194,305 characters; a config file may have at most 4 MiB"
    )
