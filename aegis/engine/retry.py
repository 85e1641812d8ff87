"""Retry policy: which failures are retried, and how long to wait before the next try."""

from __future__ import annotations

from collections.abc import Callable

from aegis.config.model import StepSpec
from aegis.errors import StepError

__all__ = ["MAX_RETRY_WAIT", "RETRYABLE_4XX", "RETRY_AFTER_CAP", "retry_delay", "should_retry"]

# The longest a service's Retry-After may hold a step when max_retry_delay is not set: a
# "Retry-After: 86400" must not park a CI run for a day.
RETRY_AFTER_CAP = 60.0
# The client errors that can succeed when sent again unchanged (Request Timeout, Too
# Early, Too Many Requests). Any other 4xx (a wrong key, an unknown project, a body the
# service refuses) would be refused again, so without a retry_on it is not retried.
RETRYABLE_4XX = frozenset({408, 425, 429})
# The longest any wait between attempts may be, whatever the config says: doubling
# ``retry_delay`` per attempt passes every bound soon (2**1024 is not even a float).
MAX_RETRY_WAIT = 86400.0
# Doublings beyond this cannot matter: 2**40 seconds is far past MAX_RETRY_WAIT.
_MAX_DOUBLINGS = 40


def should_retry(error: StepError, retry_on: tuple[str, ...] | None) -> bool:
    """Whether ``error`` matches ``retry_on``.

    Items are error kinds (``timeout``), status classes (``5xx``) or status codes
    (``429``); the last two match only failures that carry a status code. ``None`` (no
    ``retry_on`` in the config) matches every failure except a 4xx answer other than
    those in ``RETRYABLE_4XX``.
    """
    status = error.status_code
    if retry_on is None:
        return status is None or status // 100 != 4 or status in RETRYABLE_4XX
    for item in retry_on:
        if item == error.kind:
            return True
        if status is not None and (item == str(status) or item == f"{status // 100}xx"):
            return True
    return False


def retry_delay(
    spec: StepSpec, failed_attempt: int, error: StepError, random: Callable[[], float]
) -> float:
    """Seconds to wait after failed attempt ``failed_attempt`` (0-based) before the next.

    ``2**k * retry_delay``, varied by ``retry_jitter`` (a fraction, applied both ways); a
    ``Retry-After`` from the service takes the place of the backoff. Either way the wait
    is capped by ``max_retry_delay``; without one, a ``Retry-After`` is still capped by
    ``RETRY_AFTER_CAP``, because the service, not the config, chose that number. No wait
    is longer than ``MAX_RETRY_WAIT``, however many attempts came before.
    """
    if error.retry_after is not None:
        wait = error.retry_after
        if spec.max_retry_delay is None:
            wait = min(wait, RETRY_AFTER_CAP)
    else:
        wait = spec.retry_delay * 2.0 ** min(failed_attempt, _MAX_DOUBLINGS)
        if spec.retry_jitter:
            wait *= 1 + spec.retry_jitter * (2 * random() - 1)
    if spec.max_retry_delay is not None:
        wait = min(wait, spec.max_retry_delay)
    return min(max(wait, 0.0), MAX_RETRY_WAIT)
