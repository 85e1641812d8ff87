"""``HealthCache``: service health for a page that polls, without hammering the services.

``all()`` answers from the cache while it is younger than ``ttl``. When it is stale, one
refresh checks every service at once and every caller that arrives meanwhile awaits that
same refresh, so a dead service costs at most its ``timeout`` once per period however
many pages poll. ``one(key)`` checks one service live and keeps its answer.

It lives on the API's loop and uses one HTTP client (``aegis.steps.http.open_client``)
for its whole life, opened at the first check and closed by ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from aegis.config.model import ServiceSpec
from aegis.errors import NotFound
from aegis.services import DEFAULT_HEALTH_TIMEOUT, Health, check_service

__all__ = ["DEFAULT_HEALTH_TTL", "HealthCache"]

DEFAULT_HEALTH_TTL = 10.0


class HealthCache:
    """Cached health of ``services``; ``clock`` is monotonic seconds (for tests).

    ``client`` is an ``httpx.AsyncClient`` to use instead of opening one; it is not
    closed here.
    """

    def __init__(
        self,
        services: Mapping[str, ServiceSpec],
        *,
        environ: Mapping[str, str],
        ttl: float = DEFAULT_HEALTH_TTL,
        timeout: float = DEFAULT_HEALTH_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        client: Any = None,
    ) -> None:
        self._services = dict(services)
        self._environ = environ
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._client = client
        self._owned = contextlib.AsyncExitStack()
        self._client_lock = asyncio.Lock()
        self._closed = False
        # key -> (clock reading when its check began, its answer): an answer only replaces
        # one from a check that began earlier, so a slow refresh cannot undo a live check.
        self._cache: dict[str, tuple[float, Health]] = {}
        self._refreshed_at: float | None = None
        self._refresh: asyncio.Task[None] | None = None

    async def all(self) -> list[Health]:
        """Every service's health in config order, from the cache when it is fresh.

        Raises ``RuntimeError`` after ``close``.
        """
        if not self._fresh():
            if self._refresh is None:
                self._refresh = asyncio.ensure_future(self._refresh_all())
            # Shielded: one caller giving up must not cancel the refresh the others await.
            await asyncio.shield(self._refresh)
        return [self._cache[key][1] for key in self._services]

    async def one(self, key: str) -> Health:
        """A live check of service ``key``, kept in the cache.

        Raises ``NotFound`` for an unknown key and ``RuntimeError`` after ``close``.
        """
        service = self._services.get(key)
        if service is None:
            known = ", ".join(sorted(self._services)) or "none"
            raise NotFound(f"unknown service '{key}' (known: {known})")
        return await self._check(service)

    async def close(self) -> None:
        """Stop any refresh and close the client this cache opened. Closing twice is fine."""
        self._closed = True
        refresh, self._refresh = self._refresh, None
        if refresh is not None:
            refresh.cancel()
            await asyncio.wait([refresh])
        await self._owned.aclose()

    def _fresh(self) -> bool:
        if self._refreshed_at is None:
            return False
        return self._clock() - self._refreshed_at < self._ttl

    async def _refresh_all(self) -> None:
        try:
            await asyncio.gather(*(self._check(s) for s in self._services.values()))
            self._refreshed_at = self._clock()
        finally:
            self._refresh = None

    async def _check(self, service: ServiceSpec) -> Health:
        client = await self._http()
        began = self._clock()
        health = await check_service(service, client, environ=self._environ, timeout=self._timeout)
        kept = self._cache.get(service.key)
        if kept is None or kept[0] <= began:
            self._cache[service.key] = (began, health)
        return health

    async def _http(self) -> Any:
        if self._closed:
            raise RuntimeError("the health cache is closed")
        async with self._client_lock:  # concurrent first checks must open one client
            if self._client is None:
                from aegis.steps.http import open_client  # httpx only when checks run

                self._client = await self._owned.enter_async_context(open_client())
        return self._client
