"""Secrets never leave Aegis: the API key of the server, a service's API key, a webhook
secret, a password inside a service URL and a secret workflow param (its default, ``-p``
and the API's ``params``), each looked for in everything Aegis writes.

One module fixture drives real processes with those secrets in their environment and
collects every output: the CLI's stdout and stderr for each command (with and without
``--json``, and with ``AEGIS_DEBUG=1``), the server's access log and logging, every GET
route of the API (found in its OpenAPI document), the event log, the webhook deliveries
(all but the signature header, which is made from the secret), and the bytes of the
history file. A service that echoes the key it was sent back in its error answer makes
the step errors a place a secret could travel through too.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_api_http import Client, poll
from test_crashes import TIMEOUT, environ, read_until

from aegis.demo import DemoServices

AREA = "Secrets"

SECRETS = {
    "auth.api_key": "srv-key-5ecret-A1b2C3",
    # A slash, a plus and a space: its percent-encoded and JSON-escaped forms differ.
    "a service's API key (api_key_env)": "svc/key+5ecret D4e5F6",
    "a webhook secret": "hook-5ecret-G7h8I9",
    "a password in a service URL": "url-pa55-5ecret-J0k1",
    "a secret workflow param": "param-5ecret-M2n3O4",
}
PARAM = SECRETS["a secret workflow param"]
USER = "aegis"
PASSWORD = SECRETS["a password in a service URL"]
# What an echo of the Authorization header a URL's password becomes would show.
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

SERVING = re.compile(r"aegis: serving on (http://\S+) \(Ctrl-C to stop\)")


@dataclass
class Echo:
    """A service that fails every call, echoing the headers it got in its error answer,
    and a webhook receiver (``/hook``) that keeps what it was sent."""

    hooks: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        echo = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.startswith("/hook"):
                    echo.hooks.append((dict(self.headers.items()), body))
                    self._answer(200, {"ok": True})
                    return
                key = self.headers.get("X-API-Key", "")
                if self.path.startswith("/cut"):  # the key where a 200-character cut falls
                    self._answer(500, {"detail": "x" * 180 + " bad key " + key})
                    return
                if self.path.startswith("/moved"):  # percent-encoded, and form-encoded
                    query = f"key={urllib.parse.quote(key)}&k={urllib.parse.quote_plus(key)}"
                    self._answer(302, {}, location=f"/login?{query}")
                    return
                if self.path.startswith("/escaped"):  # PHP's json_encode: \/ for /
                    escaped = json.dumps(key).replace("/", "\\/")
                    self._answer(500, '{"seen":' + escaped + "}")
                    return
                seen = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                self._answer(500, {"detail": f"rejected {self.path} with headers {seen}"})

            do_POST = do_GET

            def _answer(self, status: int, payload: Any, location: str = "") -> None:
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


CONFIG = """
services:
  qaagent:
    url: "http://{user}:${{SVC_PASS}}@{qaagent}"
    api_key_env: QAAGENT_KEY
  echo:
    url: "http://{user}:${{SVC_PASS}}@{echo}"
    api_key_env: QAAGENT_KEY
  gone:
    url: "http://{user}:${{SVC_PASS}}@127.0.0.1:1"
    api_key_env: QAAGENT_KEY
workflows:
  pipeline:
    steps:
      - {{type: discover, service: qaagent}}
      - {{type: test, service: qaagent}}
      - {{type: report, condition: always}}
  leaky:
    params:
      token: {{type: string, secret: true, default: "${{PARAM_TOKEN}}"}}
    steps:
      - {{type: discover, service: echo, retries: 1, retry_delay: 0,
         with: {{path: "/routes?token=${{{{ params.token }}}}"}}}}
      - {{type: test, service: echo, condition: always}}
  unreachable:
    steps: [{{type: discover, service: gone, timeout: 5}}]
  echoes:
    steps:
      - {{type: discover, name: cut, service: echo, with: {{path: /cut}}}}
      - {{type: discover, name: moved, service: echo, condition: always, with: {{path: /moved}}}}
      - {{type: test, name: escaped, service: echo, condition: always, with: {{path: /escaped}}}}
history: {{path: history.db}}
server: {{host: 127.0.0.1, port: 0}}
auth: {{api_key: "${{AEGIS_API_KEY}}"}}
webhooks:
  - {{url: "http://{echo}/hook", events: ["*"], secret: "${{HOOK_SECRET}}"}}
  - {{url: "http://{user}:${{SVC_PASS}}@127.0.0.1:1/hook", events: [workflow.completed],
     secret: "${{HOOK_SECRET}}"}}
"""


@dataclass
class Outputs:
    texts: dict[str, bytes] = field(default_factory=dict)

    def add(self, name: str, data: str | bytes) -> None:
        self.texts[name] = data.encode() if isinstance(data, str) else data

    def leaks(self, secret: str) -> list[str]:
        forms = [form.encode() for form in encodings(secret)]
        forms += [BASIC.encode()] if secret == PASSWORD else []
        return [name for name, data in self.texts.items() if any(f in data for f in forms)]


def encodings(secret: str) -> set[str]:
    """The forms a secret is echoed in, raw and encoded, each also as its first 12
    characters: what a cut through an echo would leave."""
    escaped = json.dumps(secret)[1:-1]
    whole = {
        secret,
        urllib.parse.quote(secret),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        escaped,
        escaped.replace("/", "\\/"),
    }
    return whole | {form[:12] for form in whole}


def run_cli(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aegis", "--config", str(config), *args],
        env=env,
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


CLI_COMMANDS = [
    ("run", "pipeline"),
    ("run", "pipeline", "--json"),
    ("run", "leaky"),
    ("run", "leaky", "--json"),
    ("run", "leaky", "-p", f"token={PARAM}"),
    ("run", "unreachable", "--json"),
    ("run", "echoes"),
    ("run", "echoes", "--json", "--junit", "echoes.xml"),
    ("status",),
    ("status", "--json"),
    ("config", "show"),
    ("config", "show", "--json"),
    ("config", "validate"),
    ("history",),
    ("history", "--json"),
]


def exercise_cli(config: Path, env: dict[str, str], outputs: Outputs) -> str:
    """Every CLI command; returns the id of a run whose steps failed against the echo."""
    leaky = ""
    for args in CLI_COMMANDS:
        done = run_cli(config, env, *args)
        assert "Traceback" not in done.stderr, done.stderr
        outputs.add(f"`aegis {' '.join(args)}` stdout", done.stdout)
        outputs.add(f"`aegis {' '.join(args)}` stderr", done.stderr)
        if args == ("run", "leaky", "--json"):
            leaky = json.loads(done.stdout)["run_id"]
            assert done.returncode == 3
    outputs.add("`aegis run echoes --junit` file", (config.parent / "echoes.xml").read_bytes())
    # a config with mistakes around the secrets: validation must not echo them
    bad = config.parent / "bad.yaml"
    bad.write_text(
        'services: {qa: {url: "htp://aegis:${SVC_PASS}@h", api_key_env: "${QAAGENT_KEY}"}}\n'
        "workflows: {w: {steps: [{type: discover, service: qa}]}}\n"
        'webhooks: [{url: "ftp://x:${HOOK_SECRET}@h/", secret: "${HOOK_SECRET}"}]\n'
        'auth: {api_key: ["${AEGIS_API_KEY}"]}\n'
    )
    for args in (("config", "validate", str(bad)), ("--config", str(bad), "run", "w")):
        done = subprocess.run(
            [sys.executable, "-m", "aegis", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert done.returncode in (1, 2) and "bad.yaml: services.qa.url" in done.stderr, done
        outputs.add(f"`aegis {args[0]} {args[1]}` of an invalid config", done.stdout + done.stderr)
    debug = run_cli(config, {**env, "AEGIS_DEBUG": "1"}, "run", "leaky")
    outputs.add("`AEGIS_DEBUG=1 aegis run leaky` stdout and stderr", debug.stdout + debug.stderr)
    for args in (("history", "show", leaky), ("history", "show", leaky, "--json")):
        done = run_cli(config, env, *args)
        assert done.returncode == 0, done.stderr
        outputs.add(f"`aegis {' '.join(args)}` stdout and stderr", done.stdout + done.stderr)
    return leaky


def get_paths(client: Client, run_id: str) -> list[str]:
    """Every GET path of the API, its templates filled with each key it can take."""
    document = client.get("/api/openapi.json").data
    fills = {
        "/api/services/{key}": ["qaagent", "echo", "gone"],
        "/api/workflows/{key}": ["pipeline", "leaky", "unreachable"],
        "/api/runs/{run_id}": [run_id],
        "/api/tests/{test_id}": ["test_checkout_applies_discount", "test_api_login_rate_limit"],
    }
    paths = []
    for template, operations in document["paths"].items():
        if "get" not in operations or template.endswith("/stream"):
            continue
        prefix = next((p for p in fills if template.startswith(p)), None)
        if prefix is None:
            paths.append(template)
            continue
        name = prefix[prefix.index("{") :]
        paths += [template.replace(name, value) for value in fills[prefix]]
    return paths


def exercise_server(config: Path, env: dict[str, str], outputs: Outputs, leaky: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "aegis", "--config", str(config), "serve"],
        env={**env, "AEGIS_DEBUG": "1"},
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = Client(read_until(process, SERVING).group(1))
        key = SECRETS["auth.api_key"]
        for how in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
            for workflow in ("leaky", "pipeline", "echoes"):
                reply = client.post(f"/api/workflows/{workflow}/run?wait=30", headers=how)
                outputs.add(f"POST /api/workflows/{workflow}/run answer", reply.body)
                assert reply.status == 200, reply.body
        given = json.dumps({"params": {"token": PARAM}}).encode()
        reply = client.post("/api/workflows/leaky/run?wait=30", headers=how, body=given)
        outputs.add("POST /api/workflows/leaky/run with params: answer", reply.body)
        assert reply.status == 200 and json.loads(reply.body)["params"] == {"token": "***"}
        # a wrong key, and the key where it does not belong: in the query string
        wrong = client.post("/api/workflows/leaky/run", headers={"X-API-Key": key + "x"})
        outputs.add("POST with a wrong key: answer", wrong.body)
        queried = client.post(f"/api/workflows/pipeline/run?api_key={key}&token={key}")
        outputs.add("POST with the key in the query: answer", queried.body)
        assert wrong.status == 401 and queried.status == 401
        for path in get_paths(client, leaky):
            reply = client.get(path)
            assert reply.status == 200, (path, reply.status)
            outputs.add(f"GET {path}", json.dumps(dict(reply.headers)).encode() + reply.body)
        events = client.get("/api/events?limit=1000").data["events"]
        assert {"step.retrying", "failure.detected", "workflow.completed"} <= {
            e["type"] for e in events
        }
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0 and "Traceback" not in err, err
    outputs.add("`aegis serve` stdout", out)
    outputs.add("`aegis serve` stderr: access log and logging (AEGIS_DEBUG=1)", err)
    assert '"POST /api/workflows/pipeline/run?api_key=***&token=***" 401' in err


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outputs]:
    directory = tmp_path_factory.mktemp("secrets")
    echo = Echo()
    echo_address = echo.start()
    with DemoServices() as demo:
        demo.qaagent.api_key = SECRETS["a service's API key (api_key_env)"]
        config = directory / "aegis.yaml"
        qaagent = demo.qaagent_url.removeprefix("http://")
        config.write_text(CONFIG.format(user=USER, qaagent=qaagent, echo=echo_address))
        env = {
            **environ(directory),
            "AEGIS_API_KEY": SECRETS["auth.api_key"],
            "QAAGENT_KEY": SECRETS["a service's API key (api_key_env)"],
            "HOOK_SECRET": SECRETS["a webhook secret"],
            "SVC_PASS": PASSWORD,
            "PARAM_TOKEN": PARAM,
        }
        found = Outputs()
        try:
            leaky = exercise_cli(config, env, found)
            exercise_server(config, env, found, leaky)
            poll(lambda: echo.hooks, timeout=10)
        finally:
            echo.stop()
        # the keys did reach the services that needed them
        assert any(c.headers.get("x-api-key") == env["QAAGENT_KEY"] for c in demo.qaagent.calls)
    for number, (headers, body) in enumerate(echo.hooks):
        assert headers.get("X-Aegis-Signature", "").startswith("sha256=")
        shown = {k: v for k, v in headers.items() if k != "X-Aegis-Signature"}
        found.add(f"webhook delivery {number}", json.dumps(shown).encode() + body)
    refused = found.texts["`aegis run pipeline --json` stderr"].decode()
    assert "webhooks[1] http://127.0.0.1:1: workflow.completed delivery" in refused, refused
    for file in sorted(directory.glob("history.db*")):
        found.add(f"history file {file.name}", file.read_bytes())
    print(f"\nsecrets: looked in {len(found.texts)} outputs ({len(echo.hooks)} webhook deliveries)")
    yield found


@pytest.mark.parametrize("kind", list(SECRETS))
def test_a_secret_appears_in_no_output(reliability: Any, outputs: Outputs, kind: str) -> None:
    leaks = outputs.leaks(SECRETS[kind])
    assert leaks == [], f"{kind} leaked into: {leaks}"
    reliability.record(
        f"{kind}: every output grepped for it",
        expected="found nowhere: CLI output (every command, --json, AEGIS_DEBUG), server "
        "log, API answers, events, webhook deliveries, history file",
        observed="found in none of them, webhook deliveries and the history file's bytes included",
    )


def test_secrets_echoed_by_a_service_are_hidden_in_step_errors(
    reliability: Any, outputs: Outputs
) -> None:
    name = "`aegis run leaky --json` stdout"
    run = json.loads(outputs.texts[name])
    errors = [a["error"] for s in run["steps"] for a in s["attempts"] if a["error"]]
    assert errors and all("***" in error for error in errors), errors
    assert any("/routes?token=***" in error for error in errors), errors  # the secret param
    reliability.record(
        "a service that echoes the API key and credentials back in its error answer",
        expected="the step fails with the service's message, the secrets in it shown as ***",
        observed=f"{len(errors)} failed attempts, each error with *** where the secrets were",
    )


def test_a_key_echoed_cut_percent_encoded_and_json_escaped_is_hidden(
    reliability: Any, outputs: Outputs
) -> None:
    run = json.loads(outputs.texts["`aegis run echoes --json --junit echoes.xml` stdout"])
    errors = {step["name"]: step["error"] for step in run["steps"]}
    assert set(errors) == {"cut", "moved", "escaped"}
    for name, error in errors.items():
        assert "***" in error, (name, error)
    key = SECRETS["a service's API key (api_key_env)"]
    assert outputs.leaks(key) == []
    reliability.record(
        "a service echoing its key at a 200-character cut, percent- and form-encoded in a "
        "redirect, and JSON-escaped with \\/",
        expected="the key, whole or any head of it, in none of the outputs, files, answers, "
        "events or webhooks; the step errors show ***",
        observed=f"{len(errors)} step errors, each with *** where the key was; no form of "
        "the key in any output, the JUnit file included",
    )
