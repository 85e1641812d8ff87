"""Workflow params: what a workflow asks for, and the one check of what a trigger gives.

``workflows.KEY.params.NAME`` declares a ``ParamSpec``. ``coerce_params`` turns the values
a trigger brings (``aegis run -p NAME=VALUE`` strings, or the JSON of ``POST
/api/workflows/{key}/run``) into the values a run uses, with defaults filled in, and
reports every problem at once in one ``ParamError``. The CLI, the API (and later
schedules and reruns) all go through it, so a value means the same wherever it came from.

A run's record shows its params through ``shown_params``: a ``secret`` param as ``***``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aegis.errors import UsageError

__all__ = [
    "NAME_PATTERN",
    "PARAM_TYPES",
    "ParamError",
    "ParamProblem",
    "ParamSpec",
    "coerce_params",
    "coerce_value",
    "param_schema",
    "param_to_dict",
    "params_schema",
    "secret_param_values",
    "shown_params",
]

PARAM_TYPES = ("string", "integer", "number", "boolean", "choice")
# A name a template can reach as `params.NAME` without quoting.
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HIDDEN = "***"
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_INTEGER = re.compile(r"[-+]?[0-9]+")
_MAX_DIGITS = 64  # longer digit strings are refused before int() or float() reads them


@dataclass(frozen=True)
class ParamSpec:
    """One entry of ``workflows.KEY.params``. ``default`` is ``None`` when there is none."""

    name: str
    type: str = "string"
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] = ()
    description: str = ""
    secret: bool = False

    def expected(self) -> str:
        """What a valid value looks like, in words."""
        if self.type == "choice":
            return "one of: " + ", ".join(self.choices)
        return {
            "string": "a string",
            "integer": "an integer",
            "number": "a number",
            "boolean": "true or false",
        }[self.type]


@dataclass(frozen=True)
class ParamProblem:
    """What is wrong with one param of a trigger; ``spec`` is None for an unknown name."""

    name: str
    message: str
    spec: ParamSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "problem": self.message}
        if self.spec is not None:
            out["type"] = self.spec.type
            if self.spec.choices:
                out["choices"] = list(self.spec.choices)
        return out


class ParamError(UsageError):
    """The params a trigger gave cannot run the workflow; ``problems`` lists every one."""

    def __init__(self, workflow: str, problems: list[ParamProblem]) -> None:
        self.workflow = workflow
        self.problems = tuple(problems)
        lines = "; ".join(f"param '{p.name}': {p.message}" for p in self.problems)
        super().__init__(f"workflow '{workflow}': {lines}")


class _Refused(ValueError):
    """A value that does not fit its param's type."""


def coerce_value(spec: ParamSpec, value: object, *, text: bool = False) -> object:
    """``value`` as ``spec``'s type; raises ``ValueError`` saying what was expected.

    With ``text``, a string is read the way ``-p NAME=VALUE`` gives it (``"3"`` is the
    integer 3, ``"yes"`` true); otherwise the value must have the JSON type itself.
    """
    kind = spec.type
    if kind in ("string", "choice"):
        if not isinstance(value, str) or not _encodable(value):
            raise _Refused(f"expected {spec.expected()}, got {_shown(value, spec)}")
        if kind == "choice" and value not in spec.choices:
            raise _Refused(f"expected {spec.expected()}, got {_shown(value, spec)}")
        return value
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if text and isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise _Refused(f"expected true or false, got {_shown(value, spec)}")
    number = _number(value) if text or not isinstance(value, str) else None
    if number is None:
        raise _Refused(f"expected {spec.expected()}, got {_shown(value, spec)}")
    if kind == "integer":
        if isinstance(number, float):
            if not number.is_integer():
                raise _Refused(f"expected an integer, got {_shown(value, spec)}")
            number = int(number)
        return number
    return number


def _number(value: object) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if not isinstance(value, str) or len(value) > _MAX_DIGITS:
        return None
    text = value.strip()
    if _INTEGER.fullmatch(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) and text.lower() not in ("nan", "inf") else None


def _encodable(value: str) -> bool:
    """Whether ``value`` is real text (JSON may carry lone surrogates, which no record can)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(value: object, spec: ParamSpec) -> str:
    if spec.secret:
        return "a secret value"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a value of type {type(value).__name__}"


def coerce_params(
    workflow: str,
    specs: Mapping[str, ParamSpec],
    given: Mapping[str, object],
    *,
    text: bool = False,
) -> dict[str, object]:
    """The params of a run of ``workflow``: ``given`` checked and converted against
    ``specs``, defaults filled in (``None`` for an optional param without one).

    ``text`` says the values are text to read (``-p NAME=VALUE``); otherwise they are
    JSON values of the param's type (null: not given).

    Raises ``ParamError`` naming every unknown param, wrong value and missing required one.
    """
    problems: list[ParamProblem] = []
    values: dict[str, object] = {}
    for name in given:
        if name not in specs:
            known = ", ".join(specs) if specs else "this workflow takes none"
            problems.append(ParamProblem(str(name), f"unknown param (known: {known})"))
    for name, spec in specs.items():
        if name not in given or given[name] is None:
            if spec.required:
                problems.append(ParamProblem(name, f"required; expected {spec.expected()}", spec))
            values[name] = spec.default
            continue
        try:
            values[name] = coerce_value(spec, given[name], text=text)
        except ValueError as exc:
            problems.append(ParamProblem(name, str(exc), spec))
    if problems:
        raise ParamError(workflow, problems)
    return values


def rerun_params(
    workflow: str,
    specs: Mapping[str, ParamSpec],
    recorded: Mapping[str, object],
    given: Mapping[str, object],
    *,
    text: bool = False,
) -> dict[str, object]:
    """The params of a rerun: the run's ``recorded`` ones, each overridden by ``given``
    (read as ``coerce_params`` reads them), checked against today's ``specs``.

    A secret param is recorded as ``***`` only, so a rerun must be given it again.
    Raises ``ParamError`` naming every problem.
    """
    problems: list[ParamProblem] = []
    values: dict[str, object] = {}
    for name, spec in specs.items():
        if name in given and given[name] is not None:
            try:
                values[name] = coerce_value(spec, given[name], text=text)
            except ValueError as exc:
                problems.append(ParamProblem(name, str(exc), spec))
        elif spec.secret and recorded.get(name) == HIDDEN:
            problems.append(
                ParamProblem(name, "secret, so not kept with the run: give it again", spec)
            )
        elif name in recorded:
            values[name] = recorded[name]
    unknown = {name: value for name, value in given.items() if name not in specs}
    try:
        values = coerce_params(workflow, specs, {**values, **unknown})
    except ParamError as exc:
        named = {problem.name for problem in problems}
        problems.extend(problem for problem in exc.problems if problem.name not in named)
    if problems:
        raise ParamError(workflow, problems)
    return values


def shown_params(specs: Mapping[str, ParamSpec], values: Mapping[str, object]) -> dict[str, Any]:
    """``values`` as a run's record keeps them: each secret one (when set) as ``***``."""
    shown: dict[str, Any] = {}
    for name, value in values.items():
        spec = specs.get(name)
        shown[name] = HIDDEN if spec is not None and spec.secret and value is not None else value
    return shown


def secret_param_values(specs: Mapping[str, ParamSpec], values: Mapping[str, object]) -> list[str]:
    """The values of the secret params, as text, for the run's redactor."""
    return [
        str(values[name]).lower() if isinstance(values[name], bool) else str(values[name])
        for name, spec in specs.items()
        if spec.secret and values.get(name) is not None
    ]


def param_to_dict(spec: ParamSpec, *, redact: bool = True) -> dict[str, Any]:
    """A param as the API and ``config show`` describe it (a secret default as ``***``
    unless ``redact`` is false)."""
    default = spec.default
    if redact and spec.secret and default is not None:
        default = HIDDEN
    return {
        "type": spec.type,
        "default": default,
        "required": spec.required,
        "choices": list(spec.choices),
        "description": spec.description,
        "secret": spec.secret,
    }


_JSON_TYPES = {
    "string": "string",
    "choice": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
}


def param_schema(spec: ParamSpec) -> dict[str, Any]:
    """The JSON Schema of the API value of ``spec`` (null stands for "not given")."""
    kind = _JSON_TYPES[spec.type]
    schema: dict[str, Any] = {"type": kind if spec.required else [kind, "null"]}
    if spec.choices:
        schema["enum"] = [*spec.choices] if spec.required else [*spec.choices, None]
    if spec.description:
        schema["description"] = spec.description
    if spec.default is not None and not spec.secret:
        schema["default"] = spec.default
    return schema


def params_schema(specs: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """The JSON Schema of a ``params`` object for a workflow with ``specs``."""
    return {
        "type": "object",
        "properties": {name: param_schema(spec) for name, spec in specs.items()},
        "required": [name for name, spec in specs.items() if spec.required],
        "additionalProperties": False,
    }
