"""The engine resolves ``${{ }}`` in ``with:`` before each attempt, and records params."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

import pytest
from fakes import FakeClock, parse_yaml

from aegis.config.params import ParamError
from aegis.engine.runner import Engine
from aegis.errors import StepError
from aegis.events import Event, EventBus
from aegis.history.memory import MemoryHistory
from aegis.records import StepStatus
from aegis.steps.base import StepContext, StepType


class Recorder:
    """Step types that note the ``with:`` each attempt was given."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.fail_first: set[str] = set()

    def types(self) -> dict[str, StepType]:
        async def capture(ctx: StepContext) -> dict[str, Any]:
            self.seen.append((ctx.spec.name, dict(ctx.spec.params)))
            if ctx.spec.name in self.fail_first:
                self.fail_first.discard(ctx.spec.name)
                raise StepError("http", "HTTP 503 from svc", status_code=503)
            echo = ctx.spec.params.get("echo")
            return {"outputs": {"id": "run-7", "n": 2}, "echoed": echo}

        async def tests(ctx: StepContext) -> dict[str, Any]:
            failures = [{"test": "t::a", "message": "boom"}, {"test": "t::b", "message": "no"}]
            return {"total": 3, "passed": 1, "failed": 2, "failures": failures}

        def check(params: Mapping[str, Any]) -> list[tuple[str, str]]:
            path = params.get("path")
            if path is None or (isinstance(path, str) and path.startswith("/")):
                return []
            return [("path", f"expected a path starting with '/', got {path!r}")]

        keys = frozenset({"path", "args", "echo", "count", "flag", "whole"})
        return {
            "capture": StepType("capture", capture, needs_service=False, params=keys,
                                check_params=check),
            "tests": StepType("tests", tests, needs_service=False, params=frozenset()),
        }  # fmt: skip


def build(steps: str, recorder: Recorder, params: str = "") -> Any:
    text = "workflows:\n  wf:\n"
    if params:
        text += "    params:\n" + textwrap.indent(textwrap.dedent(params), "      ")
    text += "    steps:\n" + textwrap.indent(textwrap.dedent(steps), "      ")
    return parse_yaml(text, step_types=recorder.types())


def engine(config: Any, recorder: Recorder, **kw: Any) -> Engine:
    return Engine(config, recorder.types(), history=MemoryHistory(), clock=FakeClock(), **kw)


PARAMS = """
suite: {type: choice, choices: [smoke, full], default: smoke}
count: {type: integer, default: 2}
token: {type: string, secret: true}
"""


async def test_params_earlier_steps_failures_and_the_run_reach_the_step() -> None:
    recorder = Recorder()
    config = build(
        """
        - {type: capture, name: start}
        - {type: tests}
        - type: capture
          name: use
          with:
            path: "/runs/${{ steps.start.outputs.id }}/${{ params.suite }}"
            args: ["-k", "${{ failures[].test }}"]
            count: "${{ params.count }}"
            whole: "${{ steps.start }}"
            echo: "${{ run.workflow }}:${{ run.trigger }}:${{ length(run.id) }}"
        """,
        recorder,
        PARAMS,
    )
    run = await engine(config, recorder).run("wf", trigger="api", params={"suite": "full"})
    assert run.params == {"suite": "full", "count": 2, "token": None}
    name, given = recorder.seen[-1]
    assert name == "use"
    assert given == {
        "path": "/runs/run-7/full",
        "args": ["-k", ["t::a", "t::b"]],
        "count": 2,
        "whole": {
            "data": {"outputs": {"id": "run-7", "n": 2}, "echoed": None},
            "outputs": {"id": "run-7", "n": 2},
            "status": "succeeded",
        },
        "echo": "wf:api:12",
    }
    # the spec in the config is untouched: the next run resolves afresh
    assert config.workflows["wf"].steps[2].params["count"] == "${{ params.count }}"


async def test_templates_are_resolved_again_before_each_attempt() -> None:
    recorder = Recorder()
    recorder.fail_first.add("use")
    config = build(
        """
        - {type: capture, name: start}
        - type: capture
          name: use
          retries: 1
          retry_delay: 0
          with: {echo: "${{ params.suite }}"}
        """,
        recorder,
        PARAMS,
    )
    run = await engine(config, recorder).run("wf")
    assert [a.success for a in run.steps[1].attempts] == [False, True]
    assert [given for name, given in recorder.seen if name == "use"] == [
        {"echo": "smoke"},
        {"echo": "smoke"},
    ]


async def test_a_step_in_a_later_batch_sees_only_earlier_batches() -> None:
    recorder = Recorder()
    config = build(
        """
        - {type: capture, name: a, parallel: true}
        - {type: capture, name: b, parallel: true}
        - {type: capture, name: c, with: {whole: "${{ keys(steps) }}"}}
        """,
        recorder,
    )
    await engine(config, recorder).run("wf")
    assert recorder.seen[-1] == ("c", {"whole": ["a", "b"]})


async def test_a_failing_expression_is_a_failed_attempt_of_kind_error() -> None:
    recorder = Recorder()
    config = build(
        """
        - {type: capture, name: bad, with: {echo: "${{ length(params.count) }}"}}
        - {type: capture, name: after, condition: always}
        """,
        recorder,
        PARAMS,
    )
    run = await engine(config, recorder).run("wf")
    bad = run.steps[0]
    assert bad.status is StepStatus.FAILED and bad.error_kind == "error"
    assert bad.error is not None
    assert bad.error.startswith("with.echo: cannot resolve ${{ length(params.count) }}: ")
    assert [name for name, _ in recorder.seen] == ["after"]  # the step itself never ran


async def test_a_resolved_value_the_step_type_refuses_fails_the_attempt() -> None:
    recorder = Recorder()
    config = build(
        "- {type: capture, name: c, with: {path: '${{ params.suite }}'}}", recorder, PARAMS
    )
    run = await engine(config, recorder).run("wf")
    assert run.steps[0].error == (
        "after resolving its templates: with.path: expected a path starting with '/', got 'smoke'"
    )
    assert run.steps[0].error_kind == "error" and recorder.seen == []


async def test_secret_params_are_hidden_in_the_record_and_in_events() -> None:
    recorder = Recorder()
    config = build(
        "- {type: capture, name: c, with: {echo: 'key=${{ params.token }}'}}", recorder, PARAMS
    )
    events: list[Event] = []
    bus = EventBus()
    bus.subscribe(events.append)
    run = await engine(config, recorder, bus=bus).run("wf", params={"token": "hunter22"})
    assert recorder.seen == [("c", {"echo": "key=hunter22"})]  # the step gets the real value
    assert run.params["token"] == "***"
    assert run.steps[0].data["echoed"] == "key=***"
    assert "hunter22" not in repr(run.to_dict()) and "hunter22" not in repr(events)


async def test_bad_params_are_refused_before_anything_is_recorded() -> None:
    recorder = Recorder()
    config = build("- {type: capture}", recorder, PARAMS)
    history = MemoryHistory()
    eng = Engine(config, recorder.types(), history=history, clock=FakeClock())
    with pytest.raises(ParamError) as caught:
        await eng.run("wf", params={"suite": "bogus", "nope": 1})
    assert [p.name for p in caught.value.problems] == ["nope", "suite"]
    assert history.count() == 0


async def test_steps_without_templates_get_their_spec_as_it_is() -> None:
    recorder = Recorder()
    config = build("- {type: capture, name: c, with: {echo: '${PLAIN:-x} {{ y }}'}}", recorder)
    run = await engine(config, recorder).run("wf")
    assert recorder.seen == [("c", {"echo": "x {{ y }}"})]
    assert run.params == {}


async def test_a_short_secret_param_is_not_hunted_in_text() -> None:
    # like the config's secrets: hiding every "ab" would hide ordinary text, not a secret
    recorder = Recorder()
    config = build(
        "- {type: capture, name: c, with: {echo: 'about ${{ params.token }}'}}", recorder, PARAMS
    )
    run = await engine(config, recorder).run("wf", params={"token": "ab"})
    assert run.params["token"] == "***"
    assert run.steps[0].data["echoed"] == "about ab"
