"""``config_to_dict``: the config as JSON for ``config show`` and the API, secrets hidden."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from aegis.config import REDACTED, Config, config_to_dict, load_config
from aegis.steps.base import StepContext, StepType


async def _execute(ctx: StepContext) -> dict[str, Any]:
    return {}


STEP_TYPES = {
    "test": StepType("test", _execute),
    "submit_bugs": StepType(
        "submit_bugs", _execute, params=frozenset({"path", "project_id", "severity"})
    ),
    "report": StepType("report", _execute, needs_service=False, params=frozenset()),
}

CONFIG = """\
aegis: {name: QA Hub, tagline: Quality}
services:
  qaagent:
    name: QA Agent
    url: http://localhost:8080
    api_key_env: QAAGENT_API_KEY
    features: [Discovery]
  bugalizer:
    url: https://bot:${BUG_PASSWORD}@bugs.example/api
workflows:
  pipeline:
    description: All of it
    timeout: 60
    steps:
      - {type: test, service: qaagent, retries: 1, retry_on: [5xx, 429]}
      - type: submit_bugs
        service: bugalizer
        condition: has_failures
        with: {project_id: shop, severity: high, path: /api/v1/reports}
      - {type: report, condition: always}
history: {path: runs.db, max_runs: 10}
server: {port: 9000, cors_origins: ["https://ui.example"]}
auth: {api_key: "${AEGIS_API_KEY}"}
webhooks:
  - url: https://ci.example/hook
    events: [workflow.completed]
    secret: "${HOOK_SECRET}"
  - url: https://ci.example/quiet
event_log_size: 50
"""

ENVIRON = {"AEGIS_API_KEY": "api-secret", "HOOK_SECRET": "hook-secret", "BUG_PASSWORD": "pw"}


def load(tmp_path: Path, text: str = CONFIG, environ: Mapping[str, str] = ENVIRON) -> Config:
    path = tmp_path / "aegis.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_config(path, environ=environ, step_types=STEP_TYPES)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load(tmp_path)


def test_sections_keep_the_file_s_keys(config: Config) -> None:
    data = config_to_dict(config)
    assert list(data) == [
        "aegis",
        "services",
        "workflows",
        "history",
        "server",
        "auth",
        "webhooks",
        "event_log_size",
    ]
    assert data["aegis"] == {"name": "QA Hub", "tagline": "Quality", "public_url": ""}
    assert data["event_log_size"] == 50
    assert data["server"] == {
        "host": "127.0.0.1",
        "port": 9000,
        "max_concurrent_runs": 4,
        "max_queued_runs": 1000,
        "max_connections": 1000,
        "cors_origins": ["https://ui.example"],
    }


def test_services_and_workflows_carry_their_keys(config: Config, tmp_path: Path) -> None:
    data = config_to_dict(config)
    assert data["services"]["qaagent"] == {
        "key": "qaagent",
        "name": "QA Agent",
        "url": "http://localhost:8080",
        "description": "",
        "health_endpoint": "/health",
        "ready_endpoint": None,
        "api_key_env": "QAAGENT_API_KEY",
        "features": ["Discovery"],
        "repo_url": "",
        "docs_url": "",
    }
    pipeline = data["workflows"]["pipeline"]
    assert (pipeline["key"], pipeline["name"], pipeline["timeout"]) == (
        "pipeline",
        "pipeline",
        60.0,
    )
    assert data["history"] == {
        "path": str(tmp_path / "runs.db"),
        "url": None,
        "password_env": None,
        "lease": "30s",
        "max_runs": 10,
        "max_age": None,
    }
    assert (pipeline["schedule"], pipeline["concurrency"]) == ([], None)


def test_steps_show_every_setting(config: Config) -> None:
    steps = config_to_dict(config)["workflows"]["pipeline"]["steps"]
    assert steps[0] == {
        "name": "test",
        "type": "test",
        "service": "qaagent",
        "condition": None,
        "parallel": False,
        "retries": 1,
        "retry_delay": 1.0,
        "max_retry_delay": None,
        "retry_jitter": 0.0,
        "retry_on": ["5xx", "429"],
        "timeout": 30.0,
        "deadline": None,
        "with": {},
    }
    assert steps[1]["with"] == {"project_id": "shop", "severity": "high", "path": "/api/v1/reports"}
    assert steps[2]["retry_on"] is None


def test_secrets_are_redacted(config: Config) -> None:
    data = config_to_dict(config)
    assert data["auth"] == {"api_key": REDACTED, "protect": "writes"}
    assert data["webhooks"][0] == {
        "url": "https://ci.example/hook",
        "events": ["workflow.completed"],
        "secret": REDACTED,
    }
    assert data["services"]["bugalizer"]["url"] == f"https://bot:{REDACTED}@bugs.example/api"
    text = json.dumps(data)
    assert not any(secret in text for secret in ENVIRON.values())


def test_empty_secrets_stay_empty_so_unset_is_visible(tmp_path: Path) -> None:
    data = config_to_dict(
        load(tmp_path, environ={"AEGIS_API_KEY": "", "HOOK_SECRET": "", "BUG_PASSWORD": "pw"})
    )
    assert data["auth"]["api_key"] == ""
    assert data["webhooks"][0]["secret"] == ""
    assert data["webhooks"][1] == {"url": "https://ci.example/quiet", "events": ["*"], "secret": ""}


def test_redaction_can_be_turned_off(config: Config) -> None:
    data = config_to_dict(config, redact=False)
    assert data["auth"]["api_key"] == "api-secret"
    assert data["webhooks"][0]["secret"] == "hook-secret"
    assert data["services"]["bugalizer"]["url"] == "https://bot:pw@bugs.example/api"


def test_a_url_with_a_user_but_no_password_is_unchanged(tmp_path: Path) -> None:
    config = load(tmp_path, "services:\n  qa: {url: 'https://bot@qa.example'}\n", {})
    assert config_to_dict(config)["services"]["qa"]["url"] == "https://bot@qa.example"


def test_the_result_is_strict_json_and_detached_from_the_config(config: Config) -> None:
    data = config_to_dict(config)
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    data["workflows"]["pipeline"]["steps"][1]["with"]["severity"] = "low"
    assert config.workflows["pipeline"].steps[1].params["severity"] == "high"


def test_a_postgresql_history_shows_its_url_without_the_password(tmp_path: Path) -> None:
    text = (
        "history: {url: 'postgresql://qa:s3cret-pw@db.internal:5432/qa', lease: 10s,"
        " password_env: QA_DB}\n"
        "workflows:\n  nightly: {on_interrupt: requeue, steps: [{type: report}]}\n"
    )
    config = load(tmp_path, text, {})
    data = config_to_dict(config)
    assert data["history"]["url"] == f"postgresql://qa:{REDACTED}@db.internal:5432/qa"
    assert (data["history"]["password_env"], data["history"]["lease"]) == ("QA_DB", "10s")
    assert data["workflows"]["nightly"]["on_interrupt"] == "requeue"
    assert "s3cret-pw" not in json.dumps(data)
    assert config_to_dict(config, redact=False)["history"]["url"].count("s3cret-pw") == 1
