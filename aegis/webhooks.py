"""Webhooks: every matching event POSTed to the URLs of ``webhooks:``, in the background.

A ``WebhookDispatcher`` listens on an ``EventBus``. The listener only serializes the event
and queues it, so it returns at once; one daemon thread per webhook sends that webhook's
deliveries one after another, so each receiver sees the events in the order they
happened. A delivery is::

    POST <url>
    Content-Type: application/json
    User-Agent: aegis/VERSION
    X-Aegis-Event: step.completed
    X-Aegis-Delivery: 0f6c2b8e-...        one per event and webhook; a retry repeats it
    X-Aegis-Signature: sha256=<hex>       with a secret: HMAC-SHA256 of the body bytes

    {"id":7,"type":"step.completed",...}  Event.to_dict() as compact JSON

A 2xx answer delivers it. Connection errors (refused, reset, DNS, no answer within the
timeout) and 5xx answers are retried, up to ``attempts`` in all, waiting ``backoff``,
then twice that, between them. Any other answer drops the delivery at once (redirects are
not followed). After a delivery was dropped for a retryable failure the webhook counts as
down: each later delivery gets a single attempt until one succeeds, so an unreachable
receiver costs one round of retries rather than one per event. At most ``max_pending``
deliveries wait per webhook; newer events are not delivered to it while that many do.
Failures are logged as warnings (the first of a streak in full, the rest counted at
``close``), never raised: webhooks neither block nor fail a run.

``close(timeout)`` stops taking events and waits up to ``timeout`` seconds for what is
queued; what is still pending then is abandoned (the threads are daemons, so the
process can exit). No retry wait is begun that would end after that deadline.

Sending goes through a small ``Transport`` so tests can swap it. The default one is a
synchronous httpx client, imported lazily and shared by the webhook threads: it honours
the same proxy settings and loopback exception as the steps' client, and needs no event
loop.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from aegis import __version__
from aegis.config.model import WebhookSpec
from aegis.events import Event, EventBus
from aegis.secrets import hide_url_passwords

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ALL_EVENTS",
    "DEFAULT_ATTEMPTS",
    "DEFAULT_BACKOFF",
    "DEFAULT_TIMEOUT",
    "EXIT_WAIT",
    "MAX_PENDING",
    "USER_AGENT",
    "HttpxTransport",
    "Transport",
    "WebhookDispatcher",
    "attempt",
    "delivery_headers",
    "encode_event",
    "hook_label",
    "retry_delay",
    "sign",
    "wants",
]

DEFAULT_TIMEOUT = 10.0  # seconds per attempt
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF = 0.5  # seconds before the second attempt; doubled before each later one
EXIT_WAIT = 5.0  # seconds `aegis run` waits at exit for pending deliveries
MAX_PENDING = 1000  # deliveries queued per webhook; events beyond are not delivered
ALL_EVENTS = "*"
MAX_ANSWER_BYTES = 64 * 1024  # of a receiver's answer read before the connection is dropped
USER_AGENT = f"aegis/{__version__}"

log = logging.getLogger("aegis.webhooks")


class Transport(Protocol):
    """Sends POSTs; called from several threads at once."""

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        """Send ``body`` and return the answer's status code. Raises ``OSError`` when no
        answer came (refused, reset, DNS, ``TimeoutError`` after ``timeout`` seconds)."""
        ...

    def close(self) -> None: ...


class HttpxTransport:
    """The default transport: a synchronous httpx client that never follows redirects
    and, like the steps' client, never sends loopback requests through a proxy."""

    def __init__(self) -> None:
        import httpx

        from aegis.steps.http import LOOPBACK_HOSTS

        self._httpx = httpx
        self._client = httpx.Client(
            follow_redirects=False,
            mounts={f"all://{host}": None for host in LOOPBACK_HOSTS},
        )

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        httpx = self._httpx
        try:
            with self._client.stream(
                "POST", url, content=body, headers=dict(headers), timeout=timeout
            ) as response:
                self._drain(response)
                return response.status_code
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"no answer within {timeout:g} s") from exc
        except httpx.TransportError as exc:
            raise ConnectionError(_describe_httpx(exc)) from exc

    def _drain(self, response: httpx.Response) -> None:
        """Read a short answer to its end so that the connection can be kept; a long or
        broken one is cut off, since its status is all that counts."""
        read = 0
        try:
            for chunk in response.iter_raw():
                read += len(chunk)
                if read > MAX_ANSWER_BYTES:
                    break
        except self._httpx.HTTPError:
            pass

    def close(self) -> None:
        self._client.close()


def _describe_httpx(exc: httpx.TransportError) -> str:
    return str(exc) or type(exc).__name__


def sign(secret: str, body: bytes) -> str:
    """The ``X-Aegis-Signature`` value for ``body``: ``sha256=`` and the hex HMAC."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def encode_event(event: Event) -> bytes:
    """The delivery body: the event as compact, ASCII-only JSON."""
    return json.dumps(event.to_dict(), separators=(",", ":"), default=str).encode("ascii")


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what logs show of a webhook, since user
    info, paths and queries often carry tokens."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def hook_label(index: int, spec: WebhookSpec) -> str:
    """How logs name webhook ``index``: its place in the config and its origin."""
    return f"webhooks[{index}] {_origin(spec.url)}"


def wants(spec: WebhookSpec, event_type: str) -> bool:
    """Whether the webhook ``spec`` takes events of ``event_type``."""
    return ALL_EVENTS in spec.events or event_type in spec.events


def delivery_headers(event_type: str, delivery_id: str, signature: str | None) -> dict[str, str]:
    """The headers of a delivery (``signature``: ``sign``'s value, when the webhook has a
    secret)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Aegis-Event": event_type,
        "X-Aegis-Delivery": delivery_id,
    }
    if signature:
        headers["X-Aegis-Signature"] = signature
    return headers


def attempt(
    transport: Transport, url: str, body: bytes, headers: Mapping[str, str], timeout: float
) -> tuple[str, bool]:
    """One POST: ``("", False)`` when delivered, else what went wrong and whether it is
    worth retrying (connection errors, timeouts and 5xx are; other answers are not)."""
    try:
        status = transport.post(url, body, headers, timeout)
    except OSError as exc:
        # a transport's words may quote the URL; its password must not reach the log
        return hide_url_passwords(str(exc) or type(exc).__name__), True
    if 200 <= status < 300:
        return "", False
    if 300 <= status < 400:
        return f"HTTP {status} (redirects are not followed)", False
    return f"HTTP {status}", status >= 500


def retry_delay(backoff: float, made: int) -> float:
    """Seconds to wait after attempt number ``made`` failed: ``backoff``, then doubled."""
    return float(backoff * 2 ** (made - 1))


@dataclass(frozen=True)
class _Delivery:
    id: str
    event: str
    run_id: str
    body: bytes


class _Hook:
    """One webhook: its filter, its queue and thread, and how its deliveries went."""

    def __init__(self, index: int, spec: WebhookSpec) -> None:
        self.spec = spec
        self.label = hook_label(index, spec)
        self.queue: queue.SimpleQueue[_Delivery | None] = queue.SimpleQueue()
        self.pending = 0  # queued or being sent; guarded by the dispatcher's condition
        self.down = False  # the last delivery was dropped for a retryable failure
        self.failing = False  # in a streak of dropped deliveries
        self.dropped = 0
        self.reported = 0  # dropped deliveries already named in a warning
        self.overflowed = 0  # events not queued because MAX_PENDING were; under the lock
        self.overflow_reported = 0
        self.overflowing = False
        self.thread: threading.Thread | None = None

    def wants(self, event_type: str) -> bool:
        return wants(self.spec, event_type)


class WebhookDispatcher:
    """Delivers the events of a bus to ``specs`` in the background (see the module
    docstring). Use as ``WebhookDispatcher(config.webhooks).attach(bus)``, then
    ``close(timeout)`` when done.

    ``timeout`` (seconds per attempt), ``attempts`` and ``backoff`` set the delivery
    policy. ``transport`` is called once, by ``attach``, and what it returns is shared by
    the webhook threads. ``sleep`` (the waits between attempts; by default they end
    early when deliveries are abandoned), ``new_id`` and ``monotonic`` are for tests.
    """

    def __init__(
        self,
        specs: Sequence[WebhookSpec],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        sleep: Callable[[float], object] | None = None,
        transport: Callable[[], Transport] = HttpxTransport,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        monotonic: Callable[[], float] = time.monotonic,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.timeout = timeout
        self.attempts = max(attempts, 1)
        self.backoff = backoff
        self._abandoned = threading.Event()
        self._sleep = self._abandoned.wait if sleep is None else sleep
        self._open_transport = transport
        self._transport: Transport | None = None
        self._transport_lock = threading.Lock()
        self._new_id = new_id
        self._monotonic = monotonic
        self._max_pending = max_pending
        self._hooks = [_Hook(index, spec) for index, spec in enumerate(specs)]
        self._changed = threading.Condition()
        self._closed = False
        self._deadline: float | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._delivered_count = 0
        self._failed_count = 0

    # ------------------------------------------------------------------ taking events

    def attach(self, bus: EventBus) -> WebhookDispatcher:
        """Open the transport and subscribe to ``bus``; returns ``self``.

        Opening now (an httpx client loads its CA certificates, tens of milliseconds of
        CPU) keeps that work out of the run that follows. If it fails, the first
        delivery tries again and reports it.
        """
        try:
            self._shared_transport()
        except Exception:
            log.debug("opening the webhooks' transport failed", exc_info=True)
        self._unsubscribe = bus.subscribe(self)
        return self

    def __call__(self, event: Event) -> None:
        """The bus listener: queue ``event`` for every webhook that wants it."""
        hooks = [hook for hook in self._hooks if hook.wants(event.type)]
        if not hooks:
            return
        body = encode_event(event)  # once: every webhook signs the same bytes
        with self._changed:
            if self._closed:
                log.debug("event %d after the webhooks were closed: not delivered", event.id)
                return
            for hook in hooks:
                if hook.pending >= self._max_pending:
                    self._overflow(hook)
                    continue
                hook.overflowing = False
                hook.pending += 1
                hook.queue.put(_Delivery(self._new_id(), event.type, event.run_id, body))
                if hook.thread is None:
                    hook.thread = threading.Thread(
                        target=self._work, args=(hook,), name=f"aegis-{hook.label}", daemon=True
                    )
                    hook.thread.start()

    def _overflow(self, hook: _Hook) -> None:
        hook.overflowed += 1
        if hook.overflowing:
            return  # counted, and named in one line at close
        hook.overflowing = True
        hook.overflow_reported += 1
        log.warning(
            "%s: %d deliveries waiting; newer events are not delivered until it catches up",
            hook.label,
            hook.pending,
        )

    @property
    def pending(self) -> int:
        """Deliveries queued or being sent."""
        with self._changed:
            return sum(hook.pending for hook in self._hooks)

    # ------------------------------------------------------------------ closing

    def close(self, timeout: float) -> bool:
        """Stop taking events and wait up to ``timeout`` seconds for pending deliveries.

        Returns True when every delivery was done (sent or dropped). Otherwise the rest
        are abandoned, with a warning per webhook, and it returns False. Closing again
        only waits again.
        """
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        done = False
        try:
            with self._changed:
                if not self._closed:
                    self._closed = True
                    for hook in self._hooks:
                        hook.queue.put(None)  # the thread ends after what is queued
                end = self._monotonic() + timeout
                if self._deadline is None:
                    self._deadline = end
                done = self._changed.wait_for(
                    lambda: all(hook.pending == 0 for hook in self._hooks), max(timeout, 0)
                )
        finally:
            if not done:
                self._abandoned.set()
            self._report(timeout)
        if done:  # the threads end right after their last delivery
            for hook in self._hooks:
                if hook.thread is not None:
                    hook.thread.join(max(end - self._monotonic(), 0))
            self._close_transport()
        return done

    def _close_transport(self) -> None:
        with self._transport_lock:
            transport, self._transport = self._transport, None
        if transport is not None:
            try:
                transport.close()
            except Exception:
                log.debug("closing the webhooks' transport failed", exc_info=True)

    def _report(self, timeout: float) -> None:
        with self._changed:
            for hook in self._hooks:
                if hook.dropped > hook.reported:
                    more = hook.dropped - hook.reported
                    log.warning("%s: %d more %s dropped", hook.label, more, _deliveries(more))
                    hook.reported = hook.dropped
                if hook.overflowed > hook.overflow_reported:
                    more = hook.overflowed - hook.overflow_reported
                    log.warning(
                        "%s: %d more %s not delivered: too many waiting",
                        hook.label,
                        more,
                        _events(more),
                    )
                    hook.overflow_reported = hook.overflowed
                if hook.pending and self._abandoned.is_set():
                    log.warning(
                        "%s: %d %s abandoned: not done within the %g s wait",
                        hook.label,
                        hook.pending,
                        _deliveries(hook.pending),
                        timeout,
                    )
                    hook.pending = 0

    # ------------------------------------------------------------------ delivering

    def _work(self, hook: _Hook) -> None:
        """One webhook's thread: its deliveries, in order, until closed or abandoned."""
        while (delivery := hook.queue.get()) is not None:
            if self._abandoned.is_set():
                return
            try:
                self._deliver(hook, delivery)
            except Exception:  # a bug here must not stop later deliveries
                self._failed(hook, delivery, "internal error", 1, retryable=False, bug=True)
            finally:
                with self._changed:
                    hook.pending = max(hook.pending - 1, 0)
                    self._changed.notify_all()

    def _deliver(self, hook: _Hook, delivery: _Delivery) -> None:
        headers = self._headers(hook, delivery)
        allowed = 1 if hook.down else self.attempts
        failure, retryable = self._attempt(hook, delivery, headers)
        made = 1
        while failure and retryable and made < allowed:
            delay = retry_delay(self.backoff, made)
            if not self._may_wait(delay):
                failure += "; no time left to retry"
                break
            self._sleep(delay)
            if self._abandoned.is_set():
                return
            failure, retryable = self._attempt(hook, delivery, headers)
            made += 1
        if failure:
            self._failed(hook, delivery, failure, made, retryable=retryable)
        else:
            self._delivered(hook)

    def _headers(self, hook: _Hook, delivery: _Delivery) -> dict[str, str]:
        secret = hook.spec.secret
        signature = sign(secret, delivery.body) if secret else None
        return delivery_headers(delivery.event, delivery.id, signature)

    def _attempt(
        self, hook: _Hook, delivery: _Delivery, headers: Mapping[str, str]
    ) -> tuple[str, bool]:
        transport = self._shared_transport()
        return attempt(transport, hook.spec.url, delivery.body, headers, self.timeout)

    def _shared_transport(self) -> Transport:
        """The shared transport, opened on first use."""
        with self._transport_lock:
            if self._transport is None:
                self._transport = self._open_transport()
            return self._transport

    def _may_wait(self, delay: float) -> bool:
        """False when a wait of ``delay`` would end after the deadline ``close`` set."""
        deadline = self._deadline
        return deadline is None or self._monotonic() + delay <= deadline

    def counts(self) -> tuple[int, int]:
        """Deliveries made, and deliveries dropped after their attempts, so far."""
        return self._delivered_count, self._failed_count

    def _delivered(self, hook: _Hook) -> None:
        self._delivered_count += 1
        if hook.dropped > hook.reported:
            more = hook.dropped - hook.reported
            log.warning(
                "%s: answering again; %d more %s dropped meanwhile",
                hook.label,
                more,
                _deliveries(more),
            )
            hook.reported = hook.dropped
        hook.down = hook.failing = False

    def _failed(
        self,
        hook: _Hook,
        delivery: _Delivery,
        failure: str,
        attempts: int,
        *,
        retryable: bool,
        bug: bool = False,
    ) -> None:
        if self._abandoned.is_set():
            return
        self._failed_count += 1
        hook.dropped += 1
        hook.down = retryable
        if hook.failing:  # counted, and named in one line at close
            log.debug("%s: %s delivery dropped: %s", hook.label, delivery.event, failure)
            return
        hook.failing = True
        hook.reported += 1
        tries = f"{attempts} {'attempt' if attempts == 1 else 'attempts'}"
        later = "; later deliveries get one attempt until it answers" if retryable else ""
        log.warning(
            "%s: %s delivery %s (run %s) dropped after %s: %s%s",
            hook.label,
            delivery.event,
            delivery.id,
            delivery.run_id,
            tries,
            failure,
            later,
            exc_info=bug,
        )


def _deliveries(count: int) -> str:
    return "delivery" if count == 1 else "deliveries"


def _events(count: int) -> str:
    return "event" if count == 1 else "events"
