"""``aegis.secrets``: which values are secret, hiding them, and where the engine and the
health checks apply it (the whole-system check is tests/reliability/test_secrets.py)."""

from __future__ import annotations

import asyncio
import json
import re
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


ODD_KEY = "sk/live+K3y 5ecret-ABCDEFGH"  # a slash, a plus and a space: encodings differ


@pytest.fixture
def echoing_service() -> Any:
    """A loopback service that echoes the X-API-Key it gets in the ways services do:
    at the cut of a long message, percent-encoded in a redirect, JSON-escaped."""
    import threading
    import urllib.parse
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            key = self.headers.get("X-API-Key", "")
            escaped = json.dumps(key).replace("/", "\\/")  # PHP's json_encode
            status, headers, body = {
                "/cut": (500, {}, json.dumps({"detail": "x" * 180 + " bad key " + key})),
                "/cut-text": (200, {}, "not json: " + "y" * 175 + key),
                "/location": (302, {"Location": "/login?key=" + urllib.parse.quote(key)}, ""),
                "/form": (302, {"Location": "/in?k=" + urllib.parse.quote_plus(key)}, ""),
                "/escaped": (500, {}, '{"seen":' + escaped + "}"),
            }[self.path]
            data = body.encode()
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


PATHS = ("/cut", "/cut-text", "/location", "/form", "/escaped")


async def test_an_echoed_key_is_hidden_raw_cut_percent_encoded_and_json_escaped(
    echoing_service: str,
) -> None:
    import urllib.parse

    from aegis.steps.registry import default_step_types

    steps = [
        step("discover", f"echo{n}", service="svc", condition="always", params={"path": path})
        for n, path in enumerate(PATHS)
    ]
    service = ServiceSpec(key="svc", name="Echo", url=echoing_service, api_key_env="SVC_KEY")
    cfg = replace(config(*steps), services=frozen_mapping({"svc": service}))
    events: list[Event] = []
    bus = EventBus()
    bus.subscribe(events.append)
    engine = Engine(cfg, default_step_types(), bus=bus, environ={"SVC_KEY": ODD_KEY})
    run = await engine.run("wf")

    errors = [s.error or "" for s in run.steps]
    for error in errors:
        assert "***" in error, errors
    texts = [json.dumps(run.to_dict()), *(json.dumps(e.to_dict()) for e in events)]
    forms = {
        ODD_KEY[:12],  # what a cut at 200 characters left of the key
        urllib.parse.quote(ODD_KEY)[:12],
        urllib.parse.quote_plus(ODD_KEY)[:12],
        "sk\\/live",
        "K3y",
    }
    for text in texts:
        assert not [form for form in forms if form in text], text


def test_the_redactor_matches_every_common_encoding_in_any_case() -> None:
    import urllib.parse

    redactor = Redactor([ODD_KEY, 'q"u\\o€te😀'])
    for secret in redactor.secrets:
        for form in (
            secret,
            urllib.parse.quote(secret),
            re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), urllib.parse.quote(secret)),
            urllib.parse.quote_plus(secret),
            json.dumps(secret)[1:-1],
            json.dumps(secret).replace("/", "\\/")[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1],
        ):
            assert redactor.text(f"<{form}>") == "<***>", form
    assert redactor.text("50% off + a \\ path") == "50% off + a \\ path"
