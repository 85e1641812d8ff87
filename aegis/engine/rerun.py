"""Rerunning a run: which of its steps a rerun ``--from-failed`` carries over.

A rerun from the failed step reuses, unchanged, every step before the first one that did
not succeed (failed, cancelled, skipped or never reached); from that step on, everything
runs again. A reused step keeps its record and data and is marked ``reused``; the engine
feeds it to the run's aggregates as if it had just run, so conditions, ``submit_bugs``,
``verify`` and ``report`` see the state a whole run would have given them.

The old run's steps are matched to the workflow as it is configured now, by position,
name and type: a step that was renamed, retyped or moved ends the carry-over there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from aegis.config.model import WorkflowSpec
from aegis.config.params import rerun_params
from aegis.errors import Conflict
from aegis.records import Run, StepResult, StepStatus

__all__ = ["carried_steps", "check_rerunnable", "rerun_inputs"]


def check_rerunnable(run: Run, workflow: WorkflowSpec | None) -> None:
    """Raise ``Conflict`` for a run that cannot be rerun: one still going, or one of a
    workflow the config no longer has."""
    if not run.status.finished:
        raise Conflict(f"run {run.run_id} is {run.status.value}; rerun it once it has finished")
    if workflow is None:
        raise Conflict(
            f"run {run.run_id} is of workflow '{run.workflow}', which the config no longer has"
        )


def carried_steps(workflow: WorkflowSpec, run: Run) -> dict[int, StepResult]:
    """The steps of ``run`` a rerun from its first failed step reuses, by position in
    ``workflow``, each marked ``reused``. Raises ``Conflict`` when every step of it
    succeeded: there is nothing to rerun from."""
    carried: dict[int, StepResult] = {}
    for index, spec in enumerate(workflow.steps):
        old = run.steps[index] if index < len(run.steps) else None
        if old is None or old.status is not StepStatus.SUCCEEDED:
            break
        if old.name != spec.name or old.type != spec.type:
            break
        carried[index] = replace(old, reused=True)
    if len(carried) == len(workflow.steps):
        raise Conflict(
            f"run {run.run_id} has no failed, skipped or unreached step to rerun from;"
            " rerun it without from_failed"
        )
    return carried


def rerun_inputs(
    workflows: Mapping[str, WorkflowSpec],
    old: Run,
    params: Mapping[str, object],
    *,
    from_failed: bool,
    text: bool = False,
) -> tuple[dict[str, object], dict[int, StepResult] | None]:
    """What a rerun of ``old`` is given, for the CLI and both run managers alike: its
    params again, each overridden by ``params`` (``text``: as typed on the CLI), and with
    ``from_failed`` the steps carried over. Raises what ``check_rerunnable`` raises."""
    workflow = workflows.get(old.workflow)
    check_rerunnable(old, workflow)
    assert workflow is not None  # check_rerunnable refused it otherwise
    values = rerun_params(old.workflow, workflow.params, old.params, params, text=text)
    return values, carried_steps(workflow, old) if from_failed else None
