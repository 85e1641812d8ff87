"""The step registry: a plain, extendable mapping of the built-in step types."""

from __future__ import annotations

from aegis.steps.base import StepType
from aegis.steps.registry import default_step_types


def test_builtins_are_registered_by_name() -> None:
    types = default_step_types()
    assert list(types) == [
        "discover",
        "test",
        "submit_bugs",
        "verify",
        "report",
        "command",
        "http",
    ]
    for name, step_type in types.items():
        assert isinstance(step_type, StepType)
        assert step_type.name == name
        assert step_type.description and "\n" not in step_type.description
        needed = step_type.service_needed({})
        assert needed is (name not in ("report", "command"))
        assert ("path" in step_type.params) is needed


def test_each_call_gives_a_fresh_mapping_a_caller_may_extend() -> None:
    types = default_step_types()
    types["custom"] = StepType(name="custom", execute=types["report"].execute)
    assert "custom" not in default_step_types()
