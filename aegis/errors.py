"""The one exception tree of Aegis.

    AegisError
    ├── ConfigError        a config file that cannot be used; carries every problem found
    ├── NotFound           an unknown workflow, service or run
    ├── Conflict           an action that the current state forbids (cancel a finished run)
    ├── QueueFull          no room for another queued run; try again later
    ├── UsageError         a command used wrongly (bad flag value, missing argument)
    └── StepError          one failed attempt of a step; carries its error kind
        (kinds: timeout, connection, http, protocol, error)

Foreign exceptions (httpx, yaml, sqlite3, OSError) are translated into these once, at the
edge where they are caught, with ``raise ... from exc``. The CLI turns an ``AegisError``
into a message and an exit code; nothing below ``cli.py`` prints or exits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aegis.text import printable

__all__ = [
    "ERROR_KINDS",
    "AegisError",
    "ConfigError",
    "ConfigProblem",
    "Conflict",
    "NotFound",
    "QueueFull",
    "StepError",
    "UsageError",
]

# The kinds of failure an attempt can have (DESIGN §3). `retry_on` may name any of them.
ERROR_KINDS = ("timeout", "connection", "http", "protocol", "error")


class AegisError(Exception):
    """Base of every error Aegis raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file: where (file and key path) and what."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        # The file name and the key path come from outside (a key may hold ESC): escaped,
        # so a config cannot drive the terminal that shows its problems.
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{printable(where)}: {self.message}"


class ConfigError(AegisError):
    """A config that cannot be used. ``problems`` lists every problem found, in order."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def single(cls, file: str, path: str, message: str) -> ConfigError:
        return cls([ConfigProblem(file, path, message)])


class NotFound(AegisError):
    """An unknown workflow, service or run was asked for."""


class Conflict(AegisError):
    """An action the current state of a thing forbids, such as cancelling a finished run.

    ``run_id`` names the run in the way, when there is one (a concurrency limit's).
    """

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class QueueFull(AegisError):
    """The run queue is full; ``retry_after`` is the seconds worth waiting."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UsageError(AegisError):
    """A command was used wrongly."""


class StepError(AegisError):
    """One failed attempt of a step.

    ``kind`` is one of ``ERROR_KINDS``; ``status_code`` is set for ``http`` failures;
    ``retry_after`` (seconds) is set when the service asked for a pause (429/503 with a
    ``Retry-After`` header) and replaces the engine's own backoff for the next wait.
    ``data`` is what the failed attempt did before it failed (reports it filed, say); the
    engine records it as the step's data when this is the step's last attempt.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after
        self.data = data
