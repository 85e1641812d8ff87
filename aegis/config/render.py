"""A ``Config`` as plain JSON-able data, for ``aegis config show`` and the API.

Keys are those of the YAML file; each service and workflow also carries its ``key``.
Secrets (``auth.api_key``, webhook secrets, passwords inside URLs, the default of a
``secret`` param) are shown as ``***``
unless ``redact`` is false; an empty secret stays empty, so "not set" remains visible.
"""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aegis.config.model import (
    Config,
    ScheduleSpec,
    ServiceSpec,
    StepSpec,
    WebhookSpec,
    WorkflowSpec,
)
from aegis.config.params import param_to_dict

__all__ = ["REDACTED", "config_to_dict", "schedule_to_dict"]

REDACTED = "***"


def config_to_dict(config: Config, *, redact: bool = True) -> dict[str, Any]:
    """``config`` as a JSON-able dict (see the module docstring for secrets)."""
    return {
        "aegis": {
            "name": config.identity.name,
            "tagline": config.identity.tagline,
            "public_url": _url(config.identity.public_url, redact),
        },
        "services": {key: _service(spec, redact) for key, spec in config.services.items()},
        "workflows": {key: _workflow(spec, redact) for key, spec in config.workflows.items()},
        "history": {
            "path": config.history.path,
            "url": None if config.history.url is None else _url(config.history.url, redact),
            "password_env": config.history.password_env,
            "lease": _duration(config.history.lease),
            "max_runs": config.history.max_runs,
            "max_age": _duration(config.history.max_age),
        },
        "server": {
            "host": config.server.host,
            "port": config.server.port,
            "max_concurrent_runs": config.server.max_concurrent_runs,
            "max_queued_runs": config.server.max_queued_runs,
            "max_connections": config.server.max_connections,
            "cors_origins": list(config.server.cors_origins),
        },
        "auth": {
            "api_key": _secret(config.auth.api_key, redact),
            "protect": config.auth.protect,
        },
        "webhooks": [_webhook(spec, redact) for spec in config.webhooks],
        "event_log_size": config.event_log_size,
    }


def _service(spec: ServiceSpec, redact: bool) -> dict[str, Any]:
    return {
        "key": spec.key,
        "name": spec.name,
        "url": _url(spec.url, redact),
        "description": spec.description,
        "health_endpoint": spec.health_endpoint,
        "ready_endpoint": spec.ready_endpoint,
        "api_key_env": spec.api_key_env,
        "features": list(spec.features),
        "repo_url": spec.repo_url,
        "docs_url": spec.docs_url,
    }


def _workflow(spec: WorkflowSpec, redact: bool) -> dict[str, Any]:
    return {
        "key": spec.key,
        "name": spec.name,
        "description": spec.description,
        "timeout": spec.timeout,
        "params": {
            name: param_to_dict(param, redact=redact) for name, param in spec.params.items()
        },
        "schedule": [schedule_to_dict(s) for s in spec.schedules],
        "concurrency": None
        if spec.concurrency is None
        else {"limit": spec.concurrency.limit, "on_conflict": spec.concurrency.on_conflict},
        "on_interrupt": spec.on_interrupt,
        "steps": [_step(step) for step in spec.steps],
    }


def schedule_to_dict(spec: ScheduleSpec) -> dict[str, Any]:
    """One schedule as the config file would say it (``every`` as a duration)."""
    when: dict[str, Any] = (
        {"cron": spec.cron, "timezone": spec.timezone}
        if spec.cron is not None
        else {"every": _duration(spec.every or 0)}
    )
    return {
        **when,
        "params": copy.deepcopy(dict(spec.params)),
        "overlap": spec.overlap,
        "catch_up": spec.catch_up,
    }


def _duration(seconds: float) -> str | None:
    """Seconds as the shortest duration text that reads back the same (``None`` for 0)."""
    if not seconds:
        return None
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _step(spec: StepSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "type": spec.type,
        "service": spec.service,
        "condition": spec.condition,
        "parallel": spec.parallel,
        "retries": spec.retries,
        "retry_delay": spec.retry_delay,
        "max_retry_delay": spec.max_retry_delay,
        "retry_jitter": spec.retry_jitter,
        "retry_on": None if spec.retry_on is None else list(spec.retry_on),
        "timeout": spec.timeout,
        "deadline": spec.deadline,
        "with": copy.deepcopy(dict(spec.params)),
    }


def _webhook(spec: WebhookSpec, redact: bool) -> dict[str, Any]:
    return {
        "url": _url(spec.url, redact),
        "events": list(spec.events),
        "secret": _secret(spec.secret, redact),
    }


def _secret(value: str, redact: bool) -> str:
    return REDACTED if redact and value else value


def _url(url: str, redact: bool) -> str:
    """``url`` with the password of its user part hidden."""
    parts = urlsplit(url)
    if not redact or parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))
