"""Workflow params through every front end: ``aegis run -p``, the API, history, OpenAPI."""

from __future__ import annotations

import io
import json
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aegis.api.app import ApiApp
from aegis.api.server import AccessLog
from aegis.cli import main
from aegis.config import load_config

CONFIG = """
workflows:
  suite:
    params:
      suite: {type: choice, choices: [smoke, full], default: smoke, description: which tests}
      count: {type: integer, default: 2}
      token: {type: string, secret: true}
    steps:
      - {type: report, condition: always}
  plain:
    steps:
      - {type: report}
history:
  path: history.db
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "aegis.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    return path


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, environ={})
    assert "Traceback" not in err.getvalue()
    return code, out.getvalue(), err.getvalue()


def test_run_with_params_records_them_and_history_shows_them(config_file: Path) -> None:
    base = ("--config", str(config_file))
    code, out, _ = cli(*base, "run", "suite", "-p", "suite=full", "--param", "token=hunter22",
                       "-p", "count=5", "--json", "--quiet")  # fmt: skip
    assert code == 0
    run = json.loads(out)
    assert run["params"] == {"suite": "full", "count": 5, "token": "***"}
    code, out, _ = cli(*base, "history", "show", run["run_id"], "--json")
    assert json.loads(out)["params"] == {"suite": "full", "count": 5, "token": "***"}
    code, out, _ = cli(*base, "history", "show", run["run_id"])
    assert "  params suite=full, count=5, token=***" in out
    code, out, _ = cli(*base, "history", "--json")
    assert json.loads(out)["runs"][0]["params"]["suite"] == "full"
    assert "hunter22" not in config_file.with_name("history.db").read_bytes().decode("latin-1")


def test_unknown_and_wrong_params_exit_2_naming_each(config_file: Path) -> None:
    base = ("--config", str(config_file))
    code, _, err = cli(*base, "run", "suite", "-p", "nope=1", "-p", "suite=bogus")
    assert code == 2
    assert "param 'nope': unknown param (known: suite, count, token)" in err
    assert "param 'suite': expected one of: smoke, full, got 'bogus'" in err
    code, _, err = cli(*base, "run", "plain", "-p", "nope=1")
    assert code == 2 and "param 'nope': unknown param" in err
    assert not config_file.with_name("history.db").exists()  # nothing ran, nothing recorded


def test_malformed_param_options_are_usage_errors(config_file: Path) -> None:
    base = ("--config", str(config_file))
    code, _, err = cli(*base, "run", "suite", "-p", "suite")
    assert code == 2 and "-p takes NAME=VALUE, not 'suite'" in err
    code, _, err = cli(*base, "run", "suite", "-p", "=x")
    assert code == 2 and "-p takes NAME=VALUE" in err
    code, _, err = cli(*base, "run", "suite", "-p", "count=1", "-p", "count=2")
    assert code == 2 and "-p count: given more than once" in err


def test_config_show_describes_params_and_hides_a_secret_default(tmp_path: Path) -> None:
    path = tmp_path / "aegis.yaml"
    path.write_text(
        "workflows: {w: {params: {key: {secret: true, default: s3cr3t-value}},"
        " steps: [{type: report}]}}\n"
    )
    code, out, _ = cli("--config", str(path), "config", "show", "--json")
    assert code == 0
    shown = json.loads(out)["workflows"]["w"]["params"]["key"]
    assert shown == {
        "type": "string",
        "default": "***",
        "required": False,
        "choices": [],
        "description": "",
        "secret": True,
    }


# -- the API -------------------------------------------------------------------------------


@pytest.fixture
def api(config_file: Path) -> Iterator[str]:
    config = load_config(config_file, environ={})
    app = ApiApp(config, environ={}, port=0, access_log=AccessLog(io.StringIO())).start()
    try:
        yield app.url
    finally:
        app.stop()


def request(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    sent = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(sent, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_run_with_bad_params_answers_400_naming_each(api: str) -> None:
    status, body = request(f"{api}/api/workflows/suite/run", "POST",
                           {"params": {"suite": "bogus", "nope": 1, "count": "x"}})  # fmt: skip
    assert status == 400
    assert body["error"]["params"] == [
        {"name": "nope", "problem": "unknown param (known: suite, count, token)"},
        {
            "name": "suite",
            "problem": "expected one of: smoke, full, got 'bogus'",
            "type": "choice",
            "choices": ["smoke", "full"],
        },
        {"name": "count", "problem": "expected an integer, got 'x'", "type": "integer"},
    ]
    assert "param 'suite': expected one of: smoke, full" in body["error"]["message"]
    status, body = request(f"{api}/api/workflows/suite/run", "POST", {"params": ["smoke"]})
    assert status == 400 and "'params' must be a JSON object" in body["error"]["message"]
    status, body = request(f"{api}/api/runs")
    assert body["total"] == 0  # nothing was queued


def test_a_run_with_params_records_them(api: str) -> None:
    status, run = request(f"{api}/api/workflows/suite/run?wait=30", "POST",
                          {"params": {"suite": "full", "token": "hunter22"}})  # fmt: skip
    assert status == 200
    assert run["params"] == {"suite": "full", "count": 2, "token": "***"}
    status, again = request(f"{api}/api/runs/{run['run_id']}")
    assert again["params"] == run["params"]
    status, plain = request(f"{api}/api/workflows/plain/run?wait=30", "POST", {})
    assert status == 200 and plain["params"] == {}


def test_workflows_and_openapi_describe_params(api: str) -> None:
    _, workflow = request(f"{api}/api/workflows/suite")
    assert workflow["params"]["suite"] == {
        "type": "choice",
        "default": "smoke",
        "required": False,
        "choices": ["smoke", "full"],
        "description": "which tests",
        "secret": False,
    }
    _, document = request(f"{api}/api/openapi.json")
    schemas = document["components"]["schemas"]
    assert schemas["Params.suite"]["properties"]["suite"]["enum"] == ["smoke", "full", None]
    assert schemas["Params.plain"] == {
        "type": "object",
        "properties": {},
        "required": [],
        "additionalProperties": False,
    }
    assert schemas["RunRequest"]["properties"]["params"] == {
        "anyOf": [
            {"$ref": "#/components/schemas/Params.suite"},
            {"$ref": "#/components/schemas/Params.plain"},
        ]
    }
    assert "params" in schemas["Workflow"]["properties"]
    assert "params" in schemas["Run"]["properties"]
