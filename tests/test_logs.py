"""The CLI's log lines: plain, and a warning repeated word for word shown once with a count."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator, Mapping

import pytest
from test_api_http import poll

from aegis.cli import main
from aegis.config.model import WebhookSpec
from aegis.events import EventBus
from aegis.logs import REPEAT_WINDOW, CoalescingHandler, PlainFormatter, setup_logging
from aegis.webhooks import WebhookDispatcher

log = logging.getLogger("aegis.test")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    yield io.StringIO()


def handler_on(stream: io.StringIO, clock: Clock) -> Iterator[CoalescingHandler]:
    handler = CoalescingHandler(stream, clock=clock)
    handler.setFormatter(PlainFormatter(debug=False))
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.propagate = True
        log.setLevel(logging.NOTSET)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def handler(stream: io.StringIO, clock: Clock) -> Iterator[CoalescingHandler]:
    yield from handler_on(stream, clock)


def test_a_repeated_warning_is_shown_once_and_counted_at_close(
    stream: io.StringIO, handler: CoalescingHandler
) -> None:
    for _ in range(817):
        log.warning("%s: %d deliveries waiting", "hook", 1000)
    log.warning("something else")
    assert stream.getvalue().splitlines() == [
        "aegis: warning: hook: 1000 deliveries waiting",
        "aegis: warning: something else",
    ]
    handler.close()
    assert stream.getvalue().splitlines()[2:] == [
        "aegis: warning: hook: 1000 deliveries waiting (repeated 816 more times)"
    ]


def test_after_the_window_it_is_shown_again_with_the_count(
    stream: io.StringIO, handler: CoalescingHandler, clock: Clock
) -> None:
    log.error("disk full")
    clock.now = REPEAT_WINDOW - 1
    log.error("disk full")
    clock.now = REPEAT_WINDOW + 1
    log.error("disk full")
    clock.now = 3 * REPEAT_WINDOW
    log.error("disk full")
    handler.close()
    assert stream.getvalue().splitlines() == [
        "aegis: error: disk full",
        "aegis: error: disk full (repeated 1 more time)",
        "aegis: error: disk full",
    ]


def test_debug_lines_are_never_coalesced(stream: io.StringIO, handler: CoalescingHandler) -> None:
    for _ in range(3):
        log.debug("tick")
    assert stream.getvalue().count("aegis: debug: tick") == 3


def test_many_distinct_warnings_are_all_shown_and_memory_stays_bounded(
    stream: io.StringIO, handler: CoalescingHandler, clock: Clock
) -> None:
    log.warning("first")
    log.warning("first")
    clock.now = REPEAT_WINDOW  # the first one's window has passed
    for i in range(600):
        log.warning("warning %d", i)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 602 and "aegis: warning: first (repeated 1 more time)" in lines
    clock.now = 2 * REPEAT_WINDOW
    log.warning("last")
    assert len(handler._seen) == 1  # the others' windows have passed: forgotten


def test_a_stream_that_cannot_take_the_line_changes_nothing(clock: Clock) -> None:
    closed = io.StringIO()
    closed.close()
    for handler in handler_on(closed, clock):
        log.warning("lost")
        log.warning("lost")
        handler.close()


class Stepping:
    """A webhook transport that answers one delivery each time ``step()`` is called."""

    def __init__(self) -> None:
        self.allowed = threading.Semaphore(0)

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        self.allowed.acquire(timeout=30)
        return 200

    def close(self) -> None:
        self.allowed.release(1000)


def test_a_webhook_queue_overflowing_again_and_again_is_one_line_with_a_count() -> None:
    # The finding: 817 identical "1000 deliveries waiting" lines in one shutdown.
    err = io.StringIO()
    teardown = setup_logging(err, debug=False)
    transport = Stepping()
    hooks = WebhookDispatcher(
        [WebhookSpec("http://hooks.test/x")], transport=lambda: transport, max_pending=2
    )
    bus = EventBus()
    hooks.attach(bus)
    try:
        for round in range(20):
            bus.emit("step.completed", "run-1", "wf", i=round)
            bus.emit("step.completed", "run-1", "wf", i=round)
            bus.emit("step.completed", "run-1", "wf", i=round)  # one too many: a warning
            transport.allowed.release(2)
            poll(lambda: hooks.pending == 0)
        lines = err.getvalue().splitlines()
        assert lines == [
            "aegis: warning: webhooks[0] http://hooks.test: 2 deliveries waiting; "
            "newer events are not delivered until it catches up"
        ]
    finally:
        hooks.close(5)
        teardown()
    assert err.getvalue().splitlines()[-1].endswith("(repeated 19 more times)")


def test_the_cli_shows_a_repeated_warning_once(tmp_path: object) -> None:
    err = io.StringIO()
    config = f"{tmp_path}/aegis.yaml"
    with open(config, "w") as file:
        file.write("workflows:\n  w: {steps: [{type: report}]}\nhistory: {path: ':memory:'}\n")
    summary = f"{tmp_path}/no/such/dir/summary.md"
    for _ in range(2):
        code = main(
            ["--config", config, "run", "w", "--quiet"],
            stdout=io.StringIO(),
            stderr=err,
            environ={"GITHUB_STEP_SUMMARY": summary},
        )
        assert code == 0
    # two commands, two lines: each command's log is its own
    assert err.getvalue().count("cannot append to GITHUB_STEP_SUMMARY") == 2
