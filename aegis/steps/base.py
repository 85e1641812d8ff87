"""The contract between the engine and a step type.

A step type is a ``StepType``: a name, an ``execute`` coroutine function taking a
``StepContext`` and returning the step's data (a JSON-able dict), and what the config
validator needs to know about it. ``execute`` signals a failed attempt by raising
``StepError`` with a kind; anything else it raises is reported as kind ``error``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegis.config.model import Config, ServiceSpec, StepSpec, WorkflowSpec
from aegis.engine.state import RunState
from aegis.secrets import Redactor

if TYPE_CHECKING:
    from aegis.engine.clock import Clock

__all__ = ["ParamCheck", "StepContext", "StepType", "check_path"]

# Checks a step's `with:` mapping and returns a (key, message) pair per problem found.
# It always gets a mapping of plain JSON values (`{}` when `with:` is absent), unknown keys
# included; the validator does not call it when the mapping already has a problem.
ParamCheck = Callable[[Mapping[str, Any]], list[tuple[str, str]]]


def _system_clock() -> Clock:
    # imported when a context is made, not with the registry: the clock brings asyncio,
    # which `config validate` must not pay for (bench: heavy imports)
    from aegis.engine.clock import SystemClock

    return SystemClock()


@dataclass
class StepContext:
    """Everything one attempt of a step may use.

    ``http`` is the run's one shared ``httpx.AsyncClient``. ``scratch`` survives from one
    attempt of this step to the next (``submit_bugs`` remembers what was accepted there).
    ``progress`` is the data so far of a step that does several things: when an attempt
    fails without a ``StepError`` carrying ``data`` (it timed out, say), the engine
    records ``progress`` as the step's data, so what was done is never lost. ``config``
    is the run's whole config (a step may need another service than its own).
    ``clock`` is the engine's (steps that wait, like a polling ``http`` step, sleep on it).
    ``redactor`` hides the run's secrets: a step that shortens outside text (a service's
    answer) hides them first, since a cut through an echoed key leaves most of it behind.
    """

    spec: StepSpec
    workflow: WorkflowSpec
    run_id: str
    service: ServiceSpec | None
    state: RunState
    http: Any
    environ: Mapping[str, str]
    scratch: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    config: Config | None = None
    clock: Clock = field(default_factory=lambda: _system_clock())
    redactor: Redactor = field(default_factory=Redactor)


@dataclass(frozen=True)
class StepType:
    """A kind of step that workflows can name in ``type:``."""

    name: str
    execute: Callable[[StepContext], Awaitable[dict[str, Any]]]
    # whether a step needs `service:`; a function of `with:` when it depends on it
    needs_service: bool | Callable[[Mapping[str, Any]], bool] = True
    params: frozenset[str] = frozenset({"path"})  # the `with:` keys it accepts
    check_params: ParamCheck | None = None
    description: str = ""

    def service_needed(self, params: Mapping[str, Any]) -> bool:
        """Whether a step of this type with ``params`` as its ``with:`` needs a service."""
        if callable(self.needs_service):
            return self.needs_service(params)
        return self.needs_service


def check_path(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The problem with ``with.path``, if any: it must be a string starting with ``/``."""
    path = params.get("path")
    if path is None or (isinstance(path, str) and path.startswith("/")):
        return []
    return [("path", f"expected a path starting with '/', got {path!r}")]
