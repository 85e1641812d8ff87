"""The loaded configuration: frozen dataclasses, one per section of the YAML file.

These are *specs* (what to run). What happened when something ran lives in
``aegis.records``. Every default here is the documented default of its config key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEFAULT_HEALTH_ENDPOINT",
    "DEFAULT_RETRY_DELAY",
    "DEFAULT_STEP_TIMEOUT",
    "AuthSpec",
    "Config",
    "HistorySpec",
    "Identity",
    "ServerSpec",
    "ServiceSpec",
    "StepSpec",
    "WebhookSpec",
    "WorkflowSpec",
    "frozen_mapping",
]

DEFAULT_STEP_TIMEOUT = 30.0
DEFAULT_RETRY_DELAY = 1.0
DEFAULT_HEALTH_ENDPOINT = "/health"
EMPTY: MappingProxyType[str, Any] = MappingProxyType({})


def frozen_mapping(value: dict[str, Any] | None = None) -> MappingProxyType[str, Any]:
    """A read-only view of ``value`` (an empty one for ``None``)."""
    return MappingProxyType(dict(value)) if value else EMPTY


@dataclass(frozen=True)
class Identity:
    """The `aegis:` section: what the landing page calls this installation."""

    name: str = "Aegis"
    tagline: str = "The AI Quality Control Plane"


@dataclass(frozen=True)
class ServiceSpec:
    """One entry of `services:`, an HTTP server that does QA work."""

    key: str
    name: str
    url: str
    description: str = ""
    health_endpoint: str = DEFAULT_HEALTH_ENDPOINT
    api_key_env: str | None = None
    features: tuple[str, ...] = ()
    repo_url: str = ""
    docs_url: str = ""


@dataclass(frozen=True)
class StepSpec:
    """One step of a workflow. ``name`` is always filled in (``TYPE`` or ``TYPE-N``)."""

    type: str
    name: str
    service: str | None = None
    condition: str | None = None
    parallel: bool = False
    retries: int = 0
    retry_delay: float = DEFAULT_RETRY_DELAY
    max_retry_delay: float | None = None
    retry_jitter: float = 0.0
    retry_on: tuple[str, ...] | None = None  # None: every failure is retried
    timeout: float = DEFAULT_STEP_TIMEOUT
    deadline: float | None = None
    params: MappingProxyType[str, Any] = field(default_factory=frozen_mapping)  # `with:`


@dataclass(frozen=True)
class WorkflowSpec:
    """One entry of `workflows:`."""

    key: str
    name: str
    steps: tuple[StepSpec, ...]
    description: str = ""
    timeout: float | None = None


@dataclass(frozen=True)
class HistorySpec:
    """The `history:` section. ``path`` is absolute, or ``":memory:"``."""

    path: str = ":memory:"
    max_runs: int = 0


@dataclass(frozen=True)
class ServerSpec:
    """The `server:` section."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_concurrent_runs: int = 4
    # Open connections at once; past it the longest idle goes, or a new one gets 503.
    max_connections: int = 1000
    cors_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthSpec:
    """The `auth:` section. An empty ``api_key`` means no authentication."""

    api_key: str = ""


@dataclass(frozen=True)
class WebhookSpec:
    """One entry of `webhooks:`."""

    url: str
    events: tuple[str, ...] = ("*",)
    secret: str = ""


@dataclass(frozen=True)
class Config:
    """A whole, validated config file. ``source`` is the file it came from, if any."""

    services: MappingProxyType[str, ServiceSpec]
    workflows: MappingProxyType[str, WorkflowSpec]
    identity: Identity = field(default_factory=Identity)
    history: HistorySpec = field(default_factory=HistorySpec)
    server: ServerSpec = field(default_factory=ServerSpec)
    auth: AuthSpec = field(default_factory=AuthSpec)
    webhooks: tuple[WebhookSpec, ...] = ()
    event_log_size: int = 100
    source: str | None = None
