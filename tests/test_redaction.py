"""``aegis.secrets``: which values are secret, hiding them, and where the engine and the
health checks apply it (the whole-system check is tests/reliability/test_secrets.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from fakes import FakeClock, config, step, step_type

from aegis.config.model import AuthSpec, ServiceSpec, WebhookSpec, frozen_mapping
from aegis.engine.runner import Engine
from aegis.errors import StepError
from aegis.events import Event, EventBus
from aegis.history.memory import MemoryHistory
from aegis.secrets import Redactor, hide_url_passwords, secret_values
from aegis.steps.base import StepContext

KEY = "svc-key-123456"


def secret_config() -> Any:
    base = config(step("echo", service="svc", retries=1, retry_delay=0))
    service = ServiceSpec(
        key="svc", name="Service", url="http://bot:pa55word@127.0.0.1:9", api_key_env="SVC_KEY"
    )
    return replace(
        base,
        services=frozen_mapping({"svc": service}),
        auth=AuthSpec(api_key="server-key-1"),
        webhooks=(WebhookSpec(url="https://hook:hookpass@ci.test/h", secret="hook-secret"),),
    )


def test_secret_values_of_a_config() -> None:
    found = secret_values(secret_config(), {"SVC_KEY": KEY, "OTHER": "not-a-secret"})
    assert found == {KEY, "pa55word", "server-key-1", "hook-secret", "hookpass"}


def test_unset_empty_and_short_values_are_not_secrets() -> None:
    cfg = replace(secret_config(), auth=AuthSpec(api_key="abc"))
    assert secret_values(cfg, {"SVC_KEY": ""}) == {"pa55word", "hook-secret", "hookpass"}


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("GET http://bot:pa55@h:1/x failed", "GET http://bot:***@h:1/x failed"),
        (
            "at https://u:p@a.test and ftp://v:q@b.test",
            "at https://u:***@a.test and ftp://v:***@b.test",
        ),
        ("no password: http://user@h/x, mail a@b.c", "no password: http://user@h/x, mail a@b.c"),
        ("plain text", "plain text"),
    ],
)
def test_url_passwords_are_hidden(text: str, shown: str) -> None:
    assert hide_url_passwords(text) == shown


def test_redactor_hides_longest_secrets_first_in_text_data_and_errors() -> None:
    redactor = Redactor(["abcd", "abcdef"])
    assert redactor.text("key abcdef and abcd") == "key *** and ***"
    data = {"list": ["abcdef", 1, None], "tuple": ("xabcdx",), "abcd": {"n": 2.5}}
    assert redactor.data(data) == {"list": ["***", 1, None], "tuple": ("x***x",), "***": {"n": 2.5}}
    error = StepError("http", "HTTP 500: abcd", status_code=500, retry_after=2.0)
    hidden = redactor.error(error)
    assert (hidden.kind, hidden.message, hidden.status_code, hidden.retry_after) == (
        "http",
        "HTTP 500: ***",
        500,
        2.0,
    )
    clean = StepError("timeout", "timed out after 30s")
    assert redactor.error(clean) is clean
    assert Redactor().data(data) is data  # nothing to hide: the data is not copied


async def test_the_engine_hides_secrets_a_service_echoes_everywhere_it_records() -> None:
    async def echo(ctx: StepContext) -> dict[str, Any]:
        if ctx.state is not None and ctx.environ.get("PASS_NOW"):
            return {"seen": f"got {KEY}"}
        raise StepError("http", f"HTTP 401 from http://bot:pa55word@h: bad key {KEY}")

    events: list[Event] = []
    bus = EventBus()
    bus.subscribe(events.append)
    history = MemoryHistory()
    engine = Engine(
        secret_config(),
        {"echo": step_type("echo", echo, needs_service=True)},
        history=history,
        bus=bus,
        clock=FakeClock(),
        environ={"SVC_KEY": KEY},
    )
    run = await engine.run("wf")

    (result,) = run.steps
    assert result.error == "HTTP 401 from http://bot:***@h: bad key ***"
    assert [a.error for a in result.attempts] == [result.error, result.error]
    recorded = history.get(run.run_id)
    assert recorded is not None and recorded.to_dict() == run.to_dict()
    for text in [str(run.to_dict()), *(str(e.to_dict()) for e in events)]:
        assert KEY not in text and "pa55word" not in text
    assert {"step.retrying", "failure.detected"} <= {e.type for e in events}

    passing = Engine(
        secret_config(),
        {"echo": step_type("echo", echo, needs_service=True)},
        clock=FakeClock(),
        environ={"SVC_KEY": KEY, "PASS_NOW": "1"},
    )
    assert (await passing.run("wf")).steps[0].data == {"seen": "got ***"}


async def test_health_checks_hide_url_passwords() -> None:
    from aegis.services import check_all

    service = ServiceSpec(key="gone", name="Gone", url="http://bot:pa55word@127.0.0.1:1")
    (health,) = await asyncio.wait_for(check_all([service], environ={}), 30)
    assert health.status == "down" and health.url == "http://bot:***@127.0.0.1:1"
    assert health.error is not None and "pa55word" not in health.error
    assert "http://bot:***@127.0.0.1:1/health" in health.error
