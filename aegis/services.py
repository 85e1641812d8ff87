"""Service health: is each configured service answering its health endpoint, and how fast.

Checks run concurrently, each bounded by its own timeout, so one dead service costs at
most that timeout once, whatever the number of services.
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

__all__ = ["DEFAULT_HEALTH_TIMEOUT", "Health", "check_all", "check_service"]

DEFAULT_HEALTH_TIMEOUT = 5.0


@dataclass(frozen=True)
class Health:
    """The outcome of one health check."""

    key: str
    name: str
    url: str
    status: str  # "up" or "down"
    latency_ms: float | None
    error: str | None
    checked_at: str

    @property
    def up(self) -> bool:
        return self.status == "up"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "checked_at": self.checked_at,
        }


async def check_service(
    service: ServiceSpec,
    client: Any,
    *,
    environ: Mapping[str, str],
    timeout: float = DEFAULT_HEALTH_TIMEOUT,
) -> Health:
    """GET the service's health endpoint; any 2xx within ``timeout`` is up."""
    from aegis.secrets import hide_url_passwords
    from aegis.steps.http import describe_failure, service_headers, status_of

    url = service.url.rstrip("/") + service.health_endpoint
    began = time.perf_counter()
    error: str | None = None
    try:
        # the status is enough: the body is never read, however large it is
        status = await asyncio.wait_for(
            status_of(client, url, service_headers(service, environ)), timeout
        )
        if not 200 <= status < 300:
            error = f"HTTP {status} from {url}"
    except asyncio.TimeoutError:
        error = f"no answer from {url} within {timeout:g}s"
    except Exception as exc:  # every transport failure is "down", with its reason
        error = describe_failure(exc, service.key, url)
    latency = round((time.perf_counter() - began) * 1000, 1)
    return Health(
        key=service.key,
        name=service.name,
        url=hide_url_passwords(service.url),  # what `aegis status` and the API show
        status="down" if error else "up",
        latency_ms=None if error else latency,
        error=None if error is None else hide_url_passwords(error),
        checked_at=format_timestamp(datetime.now(timezone.utc)),
    )


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
