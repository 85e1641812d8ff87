"""The step registry: a plain mapping from a ``type:`` name to its ``StepType``.

Callers may extend the mapping with their own step types before handing it to the config
loader and the engine. Importing this module must stay cheap: step modules import httpx
only inside the functions that use it.
"""

from __future__ import annotations

from aegis.steps.base import StepType

__all__ = ["default_step_types"]


def default_step_types() -> dict[str, StepType]:
    """A fresh mapping of the built-in step types, keyed by name."""
    from aegis.steps import command, discover, http_request, report, submit_bugs, test, verify

    builtins = (
        discover.STEP,
        test.STEP,
        submit_bugs.STEP,
        verify.STEP,
        report.STEP,
        command.STEP,
        http_request.STEP,
    )
    return {step.name: step for step in builtins}
