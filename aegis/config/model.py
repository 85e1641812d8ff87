"""The loaded configuration: frozen dataclasses, one per section of the YAML file.

These are *specs* (what to run). What happened when something ran lives in
``aegis.records``. Every default here is the documented default of its config key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from aegis.config.params import ParamSpec

__all__ = [
    "CATCH_UP_MODES",
    "DEFAULT_HEALTH_ENDPOINT",
    "DEFAULT_LEASE",
    "DEFAULT_MAX_QUEUED_RUNS",
    "DEFAULT_RETRY_DELAY",
    "DEFAULT_STEP_TIMEOUT",
    "INTERRUPT_MODES",
    "OVERLAP_MODES",
    "AuthSpec",
    "ConcurrencySpec",
    "Config",
    "HistorySpec",
    "Identity",
    "ScheduleSpec",
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
DEFAULT_MAX_QUEUED_RUNS = 1000
# What a trigger does when runs of its workflow are going: schedules' `overlap` and
# `concurrency.on_conflict` take the same words.
OVERLAP_MODES = ("skip", "queue", "cancel_running")
# What becomes of a run whose worker stopped (PostgreSQL queue): `workflows.KEY.on_interrupt`.
INTERRUPT_MODES = ("interrupted", "requeue")
DEFAULT_LEASE = 30.0  # seconds a worker's claim on a run lasts unless renewed
CATCH_UP_MODES = ("none", "last")
EMPTY: MappingProxyType[str, Any] = MappingProxyType({})


def frozen_mapping(value: dict[str, Any] | None = None) -> MappingProxyType[str, Any]:
    """A read-only view of ``value`` (an empty one for ``None``)."""
    return MappingProxyType(dict(value)) if value else EMPTY


@dataclass(frozen=True)
class Identity:
    """The `aegis:` section: what the landing page calls this installation."""

    name: str = "Aegis"
    tagline: str = "The AI Quality Control Plane"
    public_url: str = ""  # where people reach `aegis serve`; bug reports link runs there


@dataclass(frozen=True)
class ServiceSpec:
    """One entry of `services:`, an HTTP server that does QA work."""

    key: str
    name: str
    url: str
    description: str = ""
    health_endpoint: str = DEFAULT_HEALTH_ENDPOINT
    ready_endpoint: str | None = None  # a deeper check than liveness; failing = degraded
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
class ScheduleSpec:
    """One entry of `workflows.KEY.schedule`: a ``cron`` expression in ``timezone``, or a
    fixed interval (``every``, seconds, counted from the Unix epoch)."""

    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    params: MappingProxyType[str, Any] = field(default_factory=frozen_mapping)
    overlap: str = "skip"  # one of OVERLAP_MODES
    catch_up: str = "none"  # one of CATCH_UP_MODES

    @property
    def key(self) -> str:
        """What names this schedule where its last fire time is kept: a changed
        schedule is a new one."""
        if self.cron is not None:
            return f"cron {self.cron} {self.timezone}"
        return f"every {self.every or 0:g}s"


@dataclass(frozen=True)
class ConcurrencySpec:
    """`workflows.KEY.concurrency`: at most ``limit`` runs queued or running at once;
    a trigger past it is queued, refused (``skip``) or replaces them (``cancel_running``)."""

    limit: int = 1
    on_conflict: str = "queue"  # one of OVERLAP_MODES


@dataclass(frozen=True)
class WorkflowSpec:
    """One entry of `workflows:`."""

    key: str
    name: str
    steps: tuple[StepSpec, ...]
    description: str = ""
    timeout: float | None = None
    params: MappingProxyType[str, ParamSpec] = field(default_factory=frozen_mapping)
    schedules: tuple[ScheduleSpec, ...] = ()
    concurrency: ConcurrencySpec | None = None
    on_interrupt: str = "interrupted"  # one of INTERRUPT_MODES


@dataclass(frozen=True)
class HistorySpec:
    """The `history:` section. ``path`` is absolute, or ``":memory:"``; a ``url``
    (``postgresql://...``) replaces it, its password read from the URL, the variable
    ``password_env`` names, or ``PGPASSWORD``."""

    path: str = ":memory:"
    url: str | None = None
    password_env: str | None = None
    max_runs: int = 0
    max_age: float = 0.0  # seconds; 0: runs are kept whatever their age
    lease: float = DEFAULT_LEASE  # with a url: how long a worker's claim lasts unrenewed


@dataclass(frozen=True)
class ServerSpec:
    """The `server:` section."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_concurrent_runs: int = 4
    max_queued_runs: int = DEFAULT_MAX_QUEUED_RUNS
    # Open connections at once; past it the longest idle goes, or a new one gets 503.
    max_connections: int = 1000
    cors_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthSpec:
    """The `auth:` section. An empty ``api_key`` means no authentication.

    ``protect`` says what needs the key: ``writes`` (the POST routes) or ``all`` (every
    route but the landing page's files and ``/health``)."""

    api_key: str = ""
    protect: str = "writes"


@dataclass(frozen=True)
class WebhookSpec:
    """One entry of `webhooks:`."""

    url: str
    events: tuple[str, ...] = ("*",)
    secret: str = ""


@dataclass(frozen=True)
class Config:
    """A whole, validated config file. ``source`` is the file it came from, if any;
    ``base_dir`` the directory its relative paths are taken from."""

    services: MappingProxyType[str, ServiceSpec]
    workflows: MappingProxyType[str, WorkflowSpec]
    identity: Identity = field(default_factory=Identity)
    history: HistorySpec = field(default_factory=HistorySpec)
    server: ServerSpec = field(default_factory=ServerSpec)
    auth: AuthSpec = field(default_factory=AuthSpec)
    webhooks: tuple[WebhookSpec, ...] = ()
    event_log_size: int = 100
    source: str | None = None
    base_dir: str | None = None
