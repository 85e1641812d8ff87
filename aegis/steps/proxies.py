"""Which requests go through a proxy, as the environment says (HTTP_PROXY and friends).

``httpx.AsyncClient`` reads these variables only when it makes its own transport; a run's
client brings one (``aegis.steps.transport``), so the same reading is done here and given
to the client as mounts. The rules are httpx's own, so that a CI host's proxy settings
mean to Aegis what they mean to every other httpx program:

- ``HTTP_PROXY``, ``HTTPS_PROXY`` and ``ALL_PROXY`` (either case) name the proxy for
  ``http://``, ``https://`` and every URL; a proxy given without a scheme is ``http://``;
- ``NO_PROXY`` lists hosts reached directly: ``*`` turns every proxy off; an address
  (IPv4 or IPv6) or ``localhost`` matches that host only; a name matches itself and its
  subdomains (``example.com`` also ``www.example.com``; ``.example.com`` only the
  subdomains); an entry with a scheme (``http://host``) is used as a URL pattern.
"""

from __future__ import annotations

import ipaddress
import urllib.request

__all__ = ["environment_proxies"]


def environment_proxies() -> dict[str, str | None]:
    """URL patterns (httpx mount keys) mapped to a proxy URL, or to ``None``: direct."""
    settings = urllib.request.getproxies()
    patterns: dict[str, str | None] = {}
    for scheme in ("http", "https", "all"):
        proxy = settings.get(scheme)
        if proxy:
            patterns[f"{scheme}://"] = proxy if "://" in proxy else f"http://{proxy}"
    for entry in (part.strip() for part in settings.get("no", "").split(",")):
        if entry == "*":
            return {}
        if entry:
            patterns[_direct_pattern(entry)] = None
    return patterns


def _direct_pattern(entry: str) -> str:
    if "://" in entry:
        return entry
    address = entry.split("/")[0]  # 10.0.0.0/8 is taken as the network's address
    version: int
    try:
        version = ipaddress.ip_address(address).version
    except ValueError:
        version = 0
    if version == 4 or entry.lower() == "localhost":
        return f"all://{entry}"
    if version == 6:
        return f"all://[{entry}]"
    return f"all://*{entry}"
