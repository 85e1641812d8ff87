"""Webhooks against a real receiver on loopback: headers, signatures over the raw body,
order, filters, retries, timeouts, the bound on ``close``, and whole runs (library, CLI,
a real process and the API server) that must not be slowed by a dead receiver.

Nothing waits by sleeping: tests wait on the receiver's condition with a deadline, and
retry waits are recorded instead of slept where the policy is under test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import http.client
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fakes import config as fake_config
from fakes import step, step_type

from aegis import __version__
from aegis.cli import main
from aegis.config.model import WebhookSpec
from aegis.demo import DemoServices, Fault
from aegis.events import EVENT_TYPES, Event, EventBus
from aegis.records import RunStatus
from aegis.runs import _finish_deliveries, run_workflow
from aegis.steps.base import StepContext
from aegis.webhooks import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BACKOFF,
    DEFAULT_TIMEOUT,
    EXIT_WAIT,
    HttpxTransport,
    WebhookDispatcher,
    encode_event,
    sign,
)

WAIT = 15.0  # ceiling for waiting on a condition; never reached when things work
SECRET = "s3cret-hook-key"


# ------------------------------------------------------------------------ the receiver


@dataclasses.dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]

    def signature_ok(self, secret: str) -> bool:
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("x-aegis-signature", ""))


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every POST's raw body and headers.

    ``answers[path]`` lists the statuses to give, in order, before answering 200;
    a path in ``hang`` reads the request and never answers (until the receiver stops).
    """

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answers: dict[str, list[int]] = {}
        self.hang: set[str] = set()
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each answer stalls on a delayed ACK

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                path = self.path
                with receiver.changed:
                    receiver.requests.append(
                        Received(path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    receiver.changed.notify_all()
                    planned = receiver.answers.get(path)
                    status = planned.pop(0) if planned else 200
                if path in receiver.hang:
                    receiver.stopping.wait(WAIT)
                    self.close_connection = True
                    return
                if path in ("/big", "/cut"):  # a long answer; one that breaks off
                    size = 200 * 1024 if path == "/big" else 100
                    self.send_response(status)
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    self.wfile.write(b"x" * (size if path == "/big" else 2))
                    self.close_connection = True
                    return
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", receiver.url("/redirected"))
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hangs up mid-request is no news here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def on(self, path: str) -> list[Received]:
        with self.changed:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, check: Callable[[], bool], timeout: float = WAIT) -> None:
        with self.changed:
            if not self.changed.wait_for(check, timeout):
                pytest.fail(f"the receiver did not see it within {timeout}s: {self.requests}")

    def wait_count(self, path: str, count: int) -> list[Received]:
        self.wait_for(lambda: len([r for r in self.requests if r.path == path]) >= count)
        return self.on(path)

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


class Logs(logging.Handler):
    """What ``aegis.webhooks`` logs, at every level (the CLI's own logging setup keeps
    ``aegis`` records from reaching pytest's root handler)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == logging.WARNING]

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture
def logs() -> Iterator[Logs]:
    handler, logger = Logs(), logging.getLogger("aegis.webhooks")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def closed_port() -> int:
    """A loopback port nobody listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unreachable_url() -> str:
    return f"http://127.0.0.1:{closed_port()}/hook"


class Sleeps(list[float]):
    """A ``sleep`` for the dispatcher that records the retry waits and returns at once."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def emit_all(bus: EventBus, run_id: str = "run-1") -> list[Event]:
    return [bus.emit(kind, run_id, "wf", n=i) for i, kind in enumerate(EVENT_TYPES)]


def dispatcher(*specs: WebhookSpec, **options: Any) -> tuple[WebhookDispatcher, EventBus]:
    bus = EventBus()
    options.setdefault("sleep", Sleeps())
    return WebhookDispatcher(specs, **options).attach(bus), bus


# ------------------------------------------------------------------------ deliveries


def test_the_policy_defaults_are_the_documented_ones() -> None:
    assert (DEFAULT_TIMEOUT, DEFAULT_ATTEMPTS, DEFAULT_BACKOFF, EXIT_WAIT) == (10.0, 3, 0.5, 5.0)


def test_a_signed_delivery_carries_the_event_and_a_signature_over_the_raw_body(
    receiver: Receiver,
) -> None:
    hooks, bus = dispatcher(WebhookSpec(receiver.url("/hook"), secret=SECRET))
    events = emit_all(bus)
    assert hooks.close(WAIT)
    got = receiver.on("/hook")
    assert [r.event for r in got] == [e.to_dict() for e in events]
    for r, event in zip(got, events, strict=True):
        assert r.signature_ok(SECRET)
        assert not r.signature_ok("another secret")
        assert r.body == encode_event(event)
        assert r.headers["content-type"] == "application/json"
        assert r.headers["user-agent"] == f"aegis/{__version__}"
        assert r.headers["x-aegis-event"] == event.type
        assert r.headers["x-aegis-signature"] == sign(SECRET, r.body)
        uuid.UUID(r.headers["x-aegis-delivery"])
    assert len({r.headers["x-aegis-delivery"] for r in got}) == len(events)
    assert all(SECRET not in r.body.decode() for r in got)


def test_without_a_secret_there_is_no_signature(receiver: Receiver) -> None:
    hooks, bus = dispatcher(WebhookSpec(receiver.url("/plain")))
    bus.emit("workflow.started", "run-1", "wf")
    assert hooks.close(WAIT)
    [got] = receiver.on("/plain")
    assert "x-aegis-signature" not in got.headers
    assert got.headers["x-aegis-event"] == "workflow.started"


def test_filters_take_exact_names_or_star(receiver: Receiver) -> None:
    hooks, bus = dispatcher(
        WebhookSpec(receiver.url("/all"), events=("*",)),
        WebhookSpec(receiver.url("/some"), events=("workflow.completed", "failure.detected")),
        WebhookSpec(receiver.url("/none"), events=("step.retrying",)),
    )
    emit_all(bus)
    assert hooks.close(WAIT)
    assert [r.event["type"] for r in receiver.on("/all")] == list(EVENT_TYPES)
    assert [r.event["type"] for r in receiver.on("/some")] == [
        "failure.detected",
        "workflow.completed",
    ]
    assert [r.event["type"] for r in receiver.on("/none")] == ["step.retrying"]


def test_events_arrive_in_order_per_webhook(receiver: Receiver) -> None:
    hooks, bus = dispatcher(
        WebhookSpec(receiver.url("/a")), WebhookSpec(receiver.url("/b"), secret=SECRET)
    )
    sent = [bus.emit("step.completed", f"run-{i % 3}", "wf", i=i).id for i in range(40)]
    assert hooks.close(WAIT)
    for path in ("/a", "/b"):
        assert [r.event["id"] for r in receiver.on(path)] == sent


def test_the_listener_returns_at_once_while_the_receiver_hangs(receiver: Receiver) -> None:
    receiver.hang.add("/slow")
    hooks, bus = dispatcher(WebhookSpec(receiver.url("/slow")), timeout=WAIT)
    began = time.monotonic()
    for i in range(200):
        bus.emit("step.started", "run-1", "wf", i=i)
    assert time.monotonic() - began < 1.0
    receiver.wait_count("/slow", 1)
    assert hooks.pending == 200
    assert not hooks.close(0)


def test_a_full_queue_drops_newer_events_and_says_so_once(logs: Logs) -> None:
    gate = threading.Event()
    transport = FakeTransport(gate=gate)
    hooks, bus = dispatcher(
        WebhookSpec("http://hooks.test/x"), transport=lambda: transport, max_pending=3
    )
    ids = [bus.emit("step.completed", "run-1", "wf", i=i).id for i in range(6)]
    assert hooks.pending == 3
    assert logs.warnings == [
        "webhooks[0] http://hooks.test: 3 deliveries waiting; "
        "newer events are not delivered until it catches up"
    ]
    gate.set()
    assert hooks.close(WAIT)
    assert [json.loads(post[1])["id"] for post in transport.posts] == ids[:3]
    assert logs.warnings[1:] == [
        "webhooks[0] http://hooks.test: 2 more events not delivered: too many waiting"
    ]


def test_values_json_cannot_encode_are_sent_as_text(receiver: Receiver) -> None:
    hooks, bus = dispatcher(WebhookSpec(receiver.url("/hook")))
    bus.emit("step.completed", "run-1", "wf", path=Path("/tmp/x"), text="é")
    assert hooks.close(WAIT)
    [got] = receiver.on("/hook")
    assert got.event["data"] == {"path": "/tmp/x", "text": "é"}
    assert got.body.isascii()


# ------------------------------------------------------------------------ retries


def test_5xx_is_retried_with_backoff_and_the_same_delivery_id(receiver: Receiver) -> None:
    receiver.answers["/flaky"] = [500, 503]
    sleeps = Sleeps()
    hooks, bus = dispatcher(WebhookSpec(receiver.url("/flaky"), secret=SECRET), sleep=sleeps)
    bus.emit("workflow.completed", "run-1", "wf")
    assert hooks.close(WAIT)
    got = receiver.on("/flaky")
    assert len(got) == 3
    assert len({r.headers["x-aegis-delivery"] for r in got}) == 1
    assert len({r.body for r in got}) == 1
    assert all(r.signature_ok(SECRET) for r in got)
    assert sleeps == [0.5, 1.0]


def test_connection_errors_are_retried_three_times_then_dropped_with_a_warning(
    logs: Logs,
) -> None:
    sleeps = Sleeps()
    url = f"http://hook-user:pw@127.0.0.1:{closed_port()}/private/token?key=abc"
    hooks, bus = dispatcher(WebhookSpec(url, secret=SECRET), sleep=sleeps)
    bus.emit("workflow.completed", "run-1", "wf")
    assert hooks.close(WAIT)
    assert sleeps == [0.5, 1.0]
    [message] = logs.warnings
    assert message.startswith("webhooks[0] http://127.0.0.1:")
    assert "workflow.completed delivery" in message and "run-1" in message
    assert "after 3 attempts" in message
    for secret in (SECRET, "pw", "hook-user", "private", "token", "abc"):
        assert secret not in logs.text


def test_4xx_and_redirects_are_not_retried(receiver: Receiver, logs: Logs) -> None:
    receiver.answers["/gone"] = [404]
    receiver.answers["/moved"] = [302]
    sleeps = Sleeps()
    hooks, bus = dispatcher(
        WebhookSpec(receiver.url("/gone")), WebhookSpec(receiver.url("/moved")), sleep=sleeps
    )
    bus.emit("workflow.completed", "run-1", "wf")
    assert hooks.close(WAIT)
    assert len(receiver.on("/gone")) == 1
    assert len(receiver.on("/moved")) == 1
    assert receiver.on("/redirected") == []
    assert sleeps == []
    assert "after 1 attempt: HTTP 404" in logs.text
    assert "HTTP 302 (redirects are not followed)" in logs.text


def test_a_receiver_that_never_answers_times_out_per_attempt(
    receiver: Receiver, logs: Logs
) -> None:
    receiver.hang.add("/stuck")
    hooks, bus = dispatcher(WebhookSpec(receiver.url("/stuck")), timeout=0.2, attempts=2)
    began = time.monotonic()
    bus.emit("workflow.completed", "run-1", "wf")
    assert hooks.close(WAIT)
    assert time.monotonic() - began < 5.0
    assert len(receiver.on("/stuck")) == 2
    assert "after 2 attempts: no answer within 0.2 s" in logs.text


def test_a_down_webhook_gets_one_attempt_per_delivery_until_it_answers(
    receiver: Receiver, logs: Logs
) -> None:
    # 3 failures drop the first delivery; the next two get one attempt each (both fail);
    # the fourth succeeds, so the fifth gets all three attempts again.
    receiver.answers["/down"] = [500, 500, 500, 502, 503, 200, 500, 500, 500]
    hooks, bus = dispatcher(WebhookSpec(receiver.url("/down")))
    ids = [bus.emit("step.completed", "run-1", "wf", i=i).id for i in range(5)]
    assert hooks.close(WAIT)
    assert [r.event["id"] for r in receiver.on("/down")] == [ids[0]] * 3 + ids[1:4] + [ids[4]] * 3
    warnings = logs.warnings
    assert len(warnings) == 3, warnings
    assert "after 3 attempts: HTTP 500; later deliveries get one attempt" in warnings[0]
    assert "answering again; 2 more deliveries dropped meanwhile" in warnings[1]
    assert "after 3 attempts: HTTP 500" in warnings[2]


def test_drops_in_a_streak_are_counted_in_one_line_at_close(
    logs: Logs,
) -> None:
    hooks, bus = dispatcher(WebhookSpec(unreachable_url()))
    for i in range(4):
        bus.emit("step.completed", "run-1", "wf", i=i)
    assert hooks.close(WAIT)
    warnings = logs.warnings
    assert len(warnings) == 2
    assert "dropped after 3 attempts" in warnings[0]
    assert warnings[1].endswith(": 3 more deliveries dropped")
    assert hooks.close(WAIT)  # closing again reports nothing new
    assert len(logs.warnings) == 2


# ------------------------------------------------------------------------ fake transports


class FakeTransport:
    """Answers ``statuses`` in order (an exception in the list is raised instead)."""

    def __init__(self, *statuses: int | BaseException, gate: threading.Event | None = None) -> None:
        self.statuses = list(statuses)
        self.posts: list[tuple[str, bytes, dict[str, str], float]] = []
        self.gate = gate
        self.entered = threading.Event()
        self.closed = False

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        self.posts.append((url, body, dict(headers), timeout))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(WAIT)
        answer = self.statuses.pop(0) if self.statuses else 200
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def close(self) -> None:
        self.closed = True


def test_no_retry_wait_is_begun_that_would_end_after_the_close_deadline(
    logs: Logs,
) -> None:
    gate = threading.Event()
    transport = FakeTransport(503, 503, gate=gate)
    hooks, bus = dispatcher(
        WebhookSpec("http://hooks.test/x"), transport=lambda: transport, backoff=60.0, sleep=None
    )
    bus.emit("workflow.completed", "run-1", "wf")
    assert transport.entered.wait(WAIT)
    closing = threading.Thread(target=hooks.close, args=(WAIT,))
    closing.start()
    gate.set()
    began = time.monotonic()
    closing.join(WAIT)
    assert not closing.is_alive() and time.monotonic() - began < 5.0
    assert len(transport.posts) == 1
    assert "after 1 attempt: HTTP 503; no time left to retry" in logs.text
    assert transport.closed


def test_close_waits_no_longer_than_its_timeout_then_abandons(
    logs: Logs,
) -> None:
    gate = threading.Event()
    transport = FakeTransport(gate=gate)
    hooks, bus = dispatcher(WebhookSpec("http://hooks.test/x"), transport=lambda: transport)
    for i in range(3):
        bus.emit("step.completed", "run-1", "wf", i=i)
    assert transport.entered.wait(WAIT)
    began = time.monotonic()
    assert hooks.close(0.3) is False
    took = time.monotonic() - began
    assert 0.25 <= took < 3.0
    assert "webhooks[0] http://hooks.test: 3 deliveries abandoned" in logs.text
    gate.set()  # the one in flight ends; nothing more is sent
    assert hooks.pending == 0
    bus.emit("workflow.completed", "run-1", "wf")  # after close: not even queued
    assert hooks.pending == 0


def test_events_after_close_are_not_delivered(receiver: Receiver) -> None:
    bus = EventBus()
    hooks = WebhookDispatcher([WebhookSpec(receiver.url("/late"))]).attach(bus)
    assert hooks.close(0)  # nothing pending: True at once
    hooks(bus.emit("workflow.started", "run-1", "wf"))  # called directly, as a racing emit
    assert hooks.pending == 0
    assert receiver.on("/late") == []


def test_a_keyboard_interrupt_while_closing_abandons_the_rest() -> None:
    gate = threading.Event()
    transport = FakeTransport(gate=gate)

    def interrupted() -> float:
        raise KeyboardInterrupt

    hooks, bus = dispatcher(
        WebhookSpec("http://hooks.test/x"), transport=lambda: transport, monotonic=interrupted
    )
    bus.emit("step.completed", "run-1", "wf")
    assert transport.entered.wait(WAIT)
    with pytest.raises(KeyboardInterrupt):
        hooks.close(WAIT)
    assert hooks.pending == 0
    gate.set()


def test_a_failing_transport_is_logged_and_later_deliveries_still_go(logs: Logs) -> None:
    class Broken(FakeTransport):
        def close(self) -> None:
            raise RuntimeError("cannot close")

    transport = Broken(RuntimeError("bug in transport"), 200)
    opened: list[Broken] = []

    def open_once() -> Broken:
        opened.append(transport)
        return transport

    hooks, bus = dispatcher(
        WebhookSpec("http://hooks.test/a"), WebhookSpec("http://hooks.test/b"), transport=open_once
    )
    bus.emit("step.completed", "run-1", "wf")
    bus.emit("workflow.completed", "run-1", "wf")
    assert hooks.close(WAIT)
    assert len(opened) == 1  # one transport, shared by the webhooks' threads
    [bug] = [r for r in logs.records if "internal error" in r.getMessage()]
    assert "dropped after 1 attempt: internal error" in bug.getMessage()
    assert bug.exc_info is not None  # shown only with AEGIS_DEBUG by the CLI's formatter
    assert "closing the webhooks' transport failed" in logs.text
    assert len(transport.posts) == 4
    assert {post[3] for post in transport.posts} == {DEFAULT_TIMEOUT}


def test_abandoning_ends_a_retry_wait_without_another_attempt() -> None:
    sleeping, resume = threading.Event(), threading.Event()

    def sleep(seconds: float) -> None:
        sleeping.set()
        resume.wait(WAIT)

    transport = FakeTransport(503)
    hooks, bus = dispatcher(
        WebhookSpec("http://hooks.test/x"), transport=lambda: transport, sleep=sleep
    )
    bus.emit("step.completed", "run-1", "wf")
    assert sleeping.wait(WAIT)
    assert hooks.close(0.05) is False
    resume.set()
    assert hooks.close(WAIT)  # the thread has ended, after one attempt only
    assert len(transport.posts) == 1


def test_a_transport_that_cannot_be_opened_is_an_internal_error(logs: Logs) -> None:
    def cannot_open() -> FakeTransport:
        raise RuntimeError("no transport")

    hooks, bus = dispatcher(WebhookSpec("http://hooks.test/x"), transport=cannot_open)
    bus.emit("step.completed", "run-1", "wf")
    assert hooks.close(WAIT)
    assert "dropped after 1 attempt: internal error" in logs.text


def test_an_oserror_without_a_message_is_named_by_its_type(
    logs: Logs,
) -> None:
    transport = FakeTransport(ConnectionResetError())
    hooks, bus = dispatcher(
        WebhookSpec("http://hooks.test/x"), transport=lambda: transport, attempts=1
    )
    bus.emit("step.completed", "run-1", "wf")
    assert hooks.close(WAIT)
    assert "after 1 attempt: ConnectionResetError" in logs.text


def test_a_url_password_in_a_transport_error_is_not_logged(logs: Logs) -> None:
    transport = FakeTransport(ConnectionError("cannot reach http://ci:hunter22@hooks.test/x"))
    hooks, bus = dispatcher(
        WebhookSpec("http://ci:hunter22@hooks.test/x"), transport=lambda: transport, attempts=1
    )
    bus.emit("step.completed", "run-1", "wf")
    assert hooks.close(WAIT)
    assert "cannot reach http://ci:***@hooks.test/x" in logs.text
    assert "hunter22" not in logs.text


def test_the_httpx_transport_translates_failures_to_oserror(receiver: Receiver) -> None:
    receiver.hang.add("/stuck")
    transport = HttpxTransport()
    try:
        assert transport.post(receiver.url("/ok"), b"{}", {}, 5.0) == 200
        with pytest.raises(TimeoutError, match=r"no answer within 0\.2 s"):
            transport.post(receiver.url("/stuck"), b"{}", {}, 0.2)
        with pytest.raises(ConnectionError):
            transport.post(unreachable_url(), b"{}", {}, 5.0)
        # only the status counts: a long answer is cut off, a broken one ignored
        assert transport.post(receiver.url("/big"), b"{}", {}, 5.0) == 200
        assert transport.post(receiver.url("/cut"), b"{}", {}, 5.0) == 200
        assert transport.post(receiver.url("/ok"), b"{}", {}, 5.0) == 200
    finally:
        transport.close()


# ------------------------------------------------------------------------ runs


async def ok(ctx: StepContext) -> dict[str, Any]:
    return {"ok": True}


async def signal_self(ctx: StepContext) -> dict[str, Any]:
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio_sleep_forever()
    return {}


async def asyncio_sleep_forever() -> None:
    import asyncio

    await asyncio.Event().wait()


TYPES = {"ok": step_type("ok", ok), "signal": step_type("signal", signal_self)}


def test_run_workflow_delivers_every_event_before_it_returns(receiver: Receiver) -> None:
    cfg = dataclasses.replace(
        fake_config(step("ok"), step("ok", "ok-2")),
        webhooks=(WebhookSpec(receiver.url("/run"), secret=SECRET),),
    )
    run = run_workflow(cfg, "wf", environ={}, warn=print, step_types=TYPES)
    got = receiver.on("/run")  # no waiting: run_workflow waited for the deliveries
    assert [r.event["type"] for r in got] == [
        "workflow.started",
        "step.started",
        "step.completed",
        "step.started",
        "step.completed",
        "workflow.completed",
    ]
    assert {r.event["run_id"] for r in got} == {run.run_id}
    assert all(r.signature_ok(SECRET) for r in got)


def test_a_signalled_run_still_delivers_its_completion(receiver: Receiver) -> None:
    cfg = dataclasses.replace(
        fake_config(step("signal"), step("ok")),
        webhooks=(WebhookSpec(receiver.url("/end"), events=("workflow.completed",)),),
    )
    run = run_workflow(cfg, "wf", environ={}, warn=print, step_types=TYPES)
    assert run.status is RunStatus.CANCELLED
    [got] = receiver.on("/end")
    assert got.event["data"]["status"] == "cancelled"


def test_a_receiver_that_never_answers_holds_run_workflow_no_longer_than_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("aegis.webhooks.EXIT_WAIT", 0.5)
    with socket.socket() as silent:  # connections complete in the backlog, never answered
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        cfg = dataclasses.replace(fake_config(step("ok")), webhooks=(WebhookSpec(url),))
        began = time.monotonic()
        run = run_workflow(cfg, "wf", environ={}, warn=print, step_types=TYPES)
        took = time.monotonic() - began
    assert run.status is RunStatus.SUCCEEDED
    assert 0.5 <= took < 3.0


def test_a_second_interrupt_while_waiting_stops_the_wait_quietly() -> None:
    class Interrupted:
        def close(self, timeout: float) -> bool:
            assert timeout == EXIT_WAIT
            raise KeyboardInterrupt

    _finish_deliveries(Interrupted())  # type: ignore[arg-type]


# ------------------------------------------------------------------------ the CLI


PIPELINE = """
services:
  qaagent: {url: "%(qaagent)s"}
  bugalizer: {url: "%(bugalizer)s"}
workflows:
  pipeline:
    steps:
      - {type: discover, service: qaagent}
      - {type: test, service: qaagent, retries: 2, retry_delay: 0.01}
      - {type: submit_bugs, service: bugalizer, condition: has_failures,
         with: {project_id: web-shop}}
      - {type: verify, service: qaagent, condition: has_failures}
      - {type: discover, name: broken, service: qaagent, condition: always,
         with: {path: /nowhere}}
      - {type: report, condition: always}
history: {path: history.db}
"""


def write_config(tmp_path: Path, demo: DemoServices, hooks: str = "", name: str = "a.yaml") -> Path:
    text = PIPELINE % {"qaagent": demo.qaagent_url, "bugalizer": demo.bugalizer_url}
    path = tmp_path / name
    path.write_text(text + textwrap.dedent(hooks))
    return path


def cli_run(
    path: Path, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str, float]:
    out, err = io.StringIO(), io.StringIO()
    began = time.monotonic()
    argv = ["--config", str(path), "run", "pipeline", "--json"]
    code = main(argv, stdout=out, stderr=err, environ=env or {})
    took = time.monotonic() - began
    assert "Traceback" not in err.getvalue()
    return code, json.loads(out.getvalue()), err.getvalue(), took


def test_acceptance_three_webhooks_neither_slow_nor_change_the_run(
    tmp_path: Path, demo: DemoServices, receiver: Receiver
) -> None:
    receiver.answers["/flaky"] = [500]
    plain = write_config(tmp_path, demo)
    hooked = write_config(
        tmp_path,
        demo,
        f"""
        webhooks:
          - url: {receiver.url("/all")}
            events: ["*"]
            secret: ${{HOOK_SECRET}}
          - url: {receiver.url("/flaky")}
            events: [workflow.completed]
          - url: {unreachable_url()}
            events: ["*"]
        """,
        name="hooked.yaml",
    )
    demo.qaagent.inject("/api/runs", Fault(status=503, times=1))
    base_code, base_run, _, base_took = cli_run(plain)
    demo.qaagent.inject("/api/runs", Fault(status=503, times=1))
    code, run, err, took = cli_run(hooked, {"HOOK_SECRET": SECRET})

    print(
        f"run without webhooks: {base_run['duration_ms']:.0f} ms, main() {base_took:.2f} s; "
        f"with three: {run['duration_ms']:.0f} ms, main() {took:.2f} s"
    )
    assert code == base_code == 3  # the `broken` step fails in both
    assert run["status"] == base_run["status"]
    assert run["duration_ms"] < base_run["duration_ms"] * 3 + 1000
    assert took < base_took + EXIT_WAIT + 2.0
    assert "webhooks[2] http://127.0.0.1:" in err and "dropped after 3 attempts" in err

    got = receiver.on("/all")  # everything arrived before `aegis run` returned
    events = [r.event for r in got]
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert {e["type"] for e in events} == set(EVENT_TYPES) - {"run.skipped"}  # none refused
    assert {e["run_id"] for e in events} == {run["run_id"]}
    assert len([e for e in events if e["type"] == "step.completed"]) == len(run["steps"])
    assert events[-1]["type"] == "workflow.completed"
    assert all(r.signature_ok(SECRET) for r in got)
    assert len({r.headers["x-aegis-delivery"] for r in got}) == len(got)

    flaky = receiver.on("/flaky")
    assert len(flaky) == 2  # the 500, then the retry
    assert flaky[0].body == flaky[1].body == got[-1].body
    assert flaky[0].headers["x-aegis-delivery"] == flaky[1].headers["x-aegis-delivery"]
    assert "x-aegis-signature" not in flaky[0].headers


def test_config_validate_rejects_unknown_events_and_show_hides_secrets(tmp_path: Path) -> None:
    path = tmp_path / "aegis.yaml"
    path.write_text(
        "webhooks:\n"
        "  - {url: 'https://bot:pw-in-url@hooks.example/x', events: [workflow.complete]}\n"
        "  - {url: 'https://hooks.example/y', events: ['*'], secret: '${HOOK_SECRET}'}\n"
        "workflows: {w: {steps: [{type: report}]}}\n"
    )
    out, err = io.StringIO(), io.StringIO()
    assert main(["config", "validate", str(path)], stdout=out, stderr=err, environ={}) == 1
    problems = out.getvalue() + err.getvalue()
    assert "webhooks[0].events[0]: unknown event 'workflow.complete'" in problems
    assert "did you mean 'workflow.completed'?" in problems

    path.write_text(path.read_text().replace("workflow.complete]", "workflow.completed]"))
    for extra in ([], ["--json"]):
        out = io.StringIO()
        argv = ["--config", str(path), "config", "show", *extra]
        assert main(argv, stdout=out, stderr=err, environ={"HOOK_SECRET": SECRET}) == 0
        assert SECRET not in out.getvalue() and "pw-in-url" not in out.getvalue()
        assert "***" in out.getvalue()


def test_a_process_with_a_dead_webhook_exits_within_the_wait(
    tmp_path: Path, demo: DemoServices
) -> None:
    plain = write_config(tmp_path, demo)
    hooked = write_config(
        tmp_path, demo, f"webhooks: [{{url: '{unreachable_url()}'}}]\n", name="hooked.yaml"
    )

    def wall(path: Path) -> tuple[int, float]:
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "aegis", "--config", str(path), "run", "pipeline", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "NO_COLOR": "1"},
            cwd=Path(__file__).parent.parent,
        )
        assert "Traceback" not in done.stderr
        return done.returncode, time.monotonic() - began

    base_code, base_took = wall(plain)
    code, took = wall(hooked)
    print(f"wall time: without webhooks {base_took:.2f} s, with a dead one {took:.2f} s")
    assert code == base_code
    assert took < base_took + EXIT_WAIT + 2.0


def test_sigterm_while_waiting_on_a_silent_receiver_keeps_every_output(tmp_path: Path) -> None:
    # The wait for deliveries came before `--json` and `--junit` were written, and a
    # SIGTERM there killed the process (exit 143) with neither, though the run was recorded.
    with socket.socket() as silent:  # connections complete in the backlog, never answered
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        config = tmp_path / "aegis.yaml"
        config.write_text(
            "workflows: {quick: {steps: [{type: report}]}}\n"
            "history: {path: history.db}\n"
            f"webhooks: [{{url: 'http://127.0.0.1:{silent.getsockname()[1]}/hook'}}]\n"
        )
        junit = tmp_path / "junit.xml"
        argv = ["--config", str(config), "run", "quick", "--json", "--junit", str(junit)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "aegis", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "NO_COLOR": "1"},
            cwd=Path(__file__).parent.parent,
        )
        try:
            from aegis.history import HistoryUnavailable
            from aegis.history.sqlite import SqliteHistory

            def recorded() -> bool:
                try:
                    with SqliteHistory(tmp_path / "history.db", read_only=True) as store:
                        return store.count(status="succeeded") == 1
                except HistoryUnavailable:  # not there yet, or its schema not yet made
                    return False

            deadline = time.monotonic() + 30
            while not recorded():  # the run is over: the process is at its outputs or wait
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.02)
            # (before the wait ends by itself, EXIT_WAIT after the run)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert json.loads(out)["status"] == "succeeded"
    assert junit.read_text().startswith("<?xml")
    assert "Traceback" not in err


# ------------------------------------------------------------------------ the API server


def test_the_api_server_delivers_run_events_and_closes_in_bounded_time(
    tmp_path: Path, demo: DemoServices, receiver: Receiver
) -> None:
    from aegis.api.app import ApiApp
    from aegis.config import parse_config
    from aegis.steps.registry import default_step_types

    text = write_config(
        tmp_path,
        demo,
        f"""
        webhooks:
          - {{url: "{receiver.url("/api")}", events: [workflow.started, workflow.completed],
              secret: {SECRET}}}
          - {{url: "{unreachable_url()}"}}
        """,
    ).read_text()
    config = parse_config(
        text, file="a.yaml", base_dir=tmp_path, environ={}, step_types=default_step_types()
    )
    app = ApiApp(config, environ={}, port=0).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", urlsplit(app.url).port, timeout=WAIT)
        conn.request("POST", "/api/workflows/pipeline/run?wait=20")
        reply = json.loads(conn.getresponse().read())
        conn.close()
        got = receiver.wait_count("/api", 2)
    finally:
        began = time.monotonic()
        app.stop()
        stopped = time.monotonic() - began
    assert [r.event["type"] for r in got] == ["workflow.started", "workflow.completed"]
    assert {r.event["run_id"] for r in got} == {reply["run_id"]}
    assert all(r.signature_ok(SECRET) for r in got)
    assert stopped < EXIT_WAIT + 3.0
