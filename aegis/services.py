"""Service health: is each configured service answering its health endpoint, and how fast.

A service is ``up`` when its ``health_endpoint`` answers 2xx, ``down`` otherwise; when it
names a ``ready_endpoint`` too (a deeper readiness check), an up service whose readiness
check fails is ``degraded``. The service's own status word (``"status": "degraded"`` in
its JSON answer) is kept as ``service_status``. Checks run concurrently, each bounded by
its own timeout, so one dead service costs at most that timeout once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aegis.config.model import ServiceSpec
from aegis.records import format_timestamp

__all__ = ["DEFAULT_HEALTH_TIMEOUT", "Health", "check_all", "check_service", "status_word"]

DEFAULT_HEALTH_TIMEOUT = 5.0
# A health answer is read only this far for its status word; a longer one has none.
MAX_HEALTH_BYTES = 4096
MAX_WORD = 40


@dataclass(frozen=True)
class Health:
    """The outcome of one health check."""

    key: str
    name: str
    url: str
    status: str  # "up", "degraded" or "down"
    latency_ms: float | None
    error: str | None
    checked_at: str
    service_status: str | None = None  # the word the service's own answer carried

    @property
    def up(self) -> bool:
        """Whether it answers (a degraded service still does)."""
        return self.status != "down"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "checked_at": self.checked_at,
            "service_status": self.service_status,
        }


def status_word(body: bytes | None) -> str | None:
    """The ``status`` string of a JSON object answer, if short and printable."""
    import json

    try:
        payload = json.loads(body) if body else None
    except ValueError:
        return None
    word = payload.get("status") if isinstance(payload, dict) else None
    if isinstance(word, str) and 0 < len(word) <= MAX_WORD and word.isprintable():
        return word
    return None


async def check_service(
    service: ServiceSpec,
    client: Any,
    *,
    environ: Mapping[str, str],
    timeout: float = DEFAULT_HEALTH_TIMEOUT,
) -> Health:
    """GET the service's health endpoint, then its ready endpoint if it names one; any
    2xx within ``timeout`` passes. ``latency_ms`` is the health endpoint's."""
    from aegis.secrets import hide_url_passwords

    began = time.perf_counter()
    error, word = await _probe(service, service.health_endpoint, client, environ, timeout)
    latency = round((time.perf_counter() - began) * 1000, 1)
    status = "down" if error else "up"
    if error is None and service.ready_endpoint is not None:
        error, ready_word = await _probe(service, service.ready_endpoint, client, environ, timeout)
        word = ready_word or word
        status = "degraded" if error else "up"
    return Health(
        key=service.key,
        name=service.name,
        url=hide_url_passwords(service.url),  # what `aegis status` and the API show
        status=status,
        latency_ms=None if status == "down" else latency,
        error=None if error is None else hide_url_passwords(error),
        checked_at=format_timestamp(datetime.now(timezone.utc)),
        service_status=word,
    )


async def _probe(
    service: ServiceSpec, endpoint: str, client: Any, environ: Mapping[str, str], timeout: float
) -> tuple[str | None, str | None]:
    """``GET endpoint``: why it failed (``None``: a 2xx came) and the answer's status word."""
    from aegis.steps.http import describe_failure, service_headers

    url = service.url.rstrip("/") + endpoint
    try:
        status, word = await asyncio.wait_for(
            _status_and_word(client, url, service_headers(service, environ)), timeout
        )
    except asyncio.TimeoutError:
        return f"no answer from {url} within {timeout:g}s", None
    except Exception as exc:  # every transport failure is a failed check, with its reason
        return describe_failure(exc, service.key, url), None
    if not 200 <= status < 300:
        return f"HTTP {status} from {url}", word
    return None, word


async def _status_and_word(
    client: Any, url: str, headers: Mapping[str, str]
) -> tuple[int, str | None]:
    """The answer's status, and its status word read from at most ``MAX_HEALTH_BYTES``
    of an uncompressed body: a huge answer or a gzip bomb costs nothing."""
    async with client.stream("GET", url, headers=dict(headers)) as response:
        if response.headers.get("content-encoding", "identity") != "identity":
            return response.status_code, None
        body = bytearray()
        async for piece in response.aiter_raw():
            body += piece
            if len(body) > MAX_HEALTH_BYTES:
                return response.status_code, None
        return response.status_code, status_word(bytes(body))


async def check_all(
    services: Iterable[ServiceSpec],
    *,
    environ: Mapping[str, str],
    timeout: float = DEFAULT_HEALTH_TIMEOUT,
    client: Any = None,
) -> list[Health]:
    """Check every service at once; results come back in the order given."""
    from aegis.steps.http import open_client

    if client is None:
        async with open_client() as own:
            return await check_all(services, environ=environ, timeout=timeout, client=own)
    checks = (check_service(s, client, environ=environ, timeout=timeout) for s in services)
    return list(await asyncio.gather(*checks))
