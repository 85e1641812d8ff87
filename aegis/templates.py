"""Run-time templates: ``${{ EXPRESSION }}`` in a step's ``with:`` values.

An expression is a JMESPath path (no code, no eval) over the run's context::

    {"params":   {NAME: value},                       the run's params (real values)
     "steps":    {STEP: {"data", "outputs", "status"}},  steps of earlier batches
     "run":      {"id", "workflow", "trigger"},
     "failures": [{"test", "message"}]}               the open failing tests

The engine resolves a step's ``with:`` just before each attempt (``resolve``); step types
only ever see the result. A string that is exactly one ``${{ }}`` becomes the value of
the expression, whatever its JSON type; a template inside other text becomes text
(strings as they are, anything else as JSON). ``$${{`` stands for a literal ``${{``.
An expression ends at the first ``}}``.

Load-time ``${VAR}`` interpolation (``aegis.config.load``) leaves all of this untouched.
``check`` finds what can be known wrong before a run (bad syntax, an unknown param, a step
that does not run earlier) for ``config validate``. ``jmespath`` is imported only where an
expression is compiled, so a config without templates never loads it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONTEXT_NAMES",
    "MARK",
    "Template",
    "TemplateError",
    "TemplateProblem",
    "check",
    "compile_value",
    "has_templates",
    "resolve",
    "template_problems",
]

MARK = "${{"
# `$${{ ... }}` (escaped) or `${{ ... }}`; an expression ends at the first `}}`.
_TEMPLATE = re.compile(r"(\$?)\$\{\{(.*?)\}\}", re.DOTALL)
CONTEXT_NAMES = ("params", "steps", "run", "failures")
RUN_FIELDS = ("id", "workflow", "trigger")
STEP_FIELDS = ("data", "outputs", "status")
# Node types whose children are all read from the same input as the node itself.
_SAME_INPUT = frozenset(
    {
        "function_expression",
        "multi_select_list",
        "multi_select_dict",
        "key_val_pair",
        "comparator",
        "and_expression",
        "or_expression",
        "not_expression",
    }
)
# Node types whose first child is read from their input and the rest from its result.
_LEFT_ONLY = frozenset(
    {
        "subexpression",
        "index_expression",
        "pipe",
        "projection",
        "value_projection",
        "filter_projection",
        "flatten",
    }
)


class TemplateError(ValueError):
    """A template that cannot be resolved: its expression failed against the context."""


@dataclass(frozen=True)
class TemplateProblem:
    """Something statically wrong with one expression.

    ``what``/``word``/``choices`` describe an unknown name (for a "did you mean" hint);
    otherwise ``message`` says it all.
    """

    message: str = ""
    what: str = ""
    word: str = ""
    choices: tuple[str, ...] = ()


def has_templates(value: object) -> bool:
    """Whether ``value`` (JSON-like data) holds a ``${{`` anywhere in its strings."""
    if isinstance(value, str):
        return MARK in value
    if isinstance(value, Mapping):
        return any(has_templates(item) for item in value.values())
    if isinstance(value, list):
        return any(has_templates(item) for item in value)
    return False


def _expressions(text: str) -> Iterator[tuple[str, bool]]:
    """Each ``(expression, escaped)`` of ``text``, in order."""
    for match in _TEMPLATE.finditer(text):
        yield match.group(2).strip(), bool(match.group(1))


def _unclosed(text: str) -> bool:
    return MARK in _TEMPLATE.sub("", text)


# -- static checks ---------------------------------------------------------------------


def check(
    expression: str, params: Collection[str], earlier: Collection[str], batch: Collection[str]
) -> list[TemplateProblem]:
    """What is statically wrong with one expression.

    ``params`` are the declared param names, ``earlier`` the steps of earlier batches,
    ``batch`` the other steps of this step's own parallel batch.
    """
    import jmespath
    from jmespath.exceptions import JMESPathError

    if not expression:
        return [TemplateProblem("empty expression")]
    try:
        tree: dict[str, Any] = dict(jmespath.compile(expression).parsed)
    except JMESPathError as exc:
        return [TemplateProblem(f"invalid expression {expression!r}: {_syntax(exc)}")]
    problems = _unknown_functions(tree)
    for node in _read_from_context(tree):
        for problem in _check_chain(_leading_fields(node), params, earlier, batch):
            if problem not in problems:
                problems.append(problem)
    return problems


def _syntax(exc: Exception) -> str:
    """A JMESPath syntax error in a few words: what is wrong, and where."""
    where = getattr(exc, "lex_position", None)
    value = getattr(exc, "token_value", None)
    if type(exc).__name__ == "IncompleteExpressionError":
        return "the expression ends too early"
    what = getattr(exc, "message", None) or getattr(exc, "msg", None) or type(exc).__name__
    if what == "invalid token" and value is not None:
        what = f"unexpected {value!r}"
    return f"{what} (at character {where + 1})" if isinstance(where, int) else str(what)


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _unknown_functions(node: dict[str, Any]) -> list[TemplateProblem]:
    from jmespath.functions import Functions

    known = Functions().FUNCTION_TABLE
    found = []
    stack = [node]
    while stack:
        current = stack.pop()
        name = current.get("value")
        if current.get("type") == "function_expression" and name not in known:
            found.append(TemplateProblem(what="function", word=str(name), choices=tuple(known)))
        stack.extend(current.get("children") or [])
    return found


def _read_from_context(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``node`` and every node under it that is evaluated against the whole context."""
    yield node
    kind = node.get("type")
    children = node.get("children") or []
    if kind in _SAME_INPUT:
        for child in children:
            yield from _read_from_context(child)
    elif kind in _LEFT_ONLY and children:
        yield from _read_from_context(children[0])


def _leading_fields(node: dict[str, Any]) -> list[str]:
    """The field names an expression starts with: ``steps.a.outputs[0]`` -> steps, a, outputs."""
    kind = node.get("type")
    if kind == "field":
        return [str(node["value"])]
    children = node.get("children") or []
    if kind == "subexpression":
        names: list[str] = []
        for child in children:  # `a.b.c` is one node with three fields
            names += _leading_fields(child)
            if child.get("type") != "field":
                break
        return names
    if kind in _LEFT_ONLY and children:
        return _leading_fields(children[0])
    return []


def _check_chain(
    names: list[str], params: Collection[str], earlier: Collection[str], batch: Collection[str]
) -> list[TemplateProblem]:
    if not names:
        return []
    root = names[0]
    if root not in CONTEXT_NAMES:
        return [TemplateProblem(what="name", word=root, choices=CONTEXT_NAMES)]
    if len(names) < 2:
        return []
    second = names[1]
    if root == "params" and second not in params:
        return [TemplateProblem(what="param", word=second, choices=tuple(params))]
    if root == "run" and second not in RUN_FIELDS:
        return [TemplateProblem(what="run field", word=second, choices=RUN_FIELDS)]
    if root == "steps":
        if second in batch:
            return [
                TemplateProblem(
                    f"step {second!r} runs in the same parallel batch as this one;"
                    " only steps of earlier batches can be read"
                )
            ]
        if second not in earlier:
            return [_not_earlier(second, earlier)]
        if len(names) > 2 and names[2] not in STEP_FIELDS:
            return [TemplateProblem(what="step field", word=names[2], choices=STEP_FIELDS)]
    return []


def _not_earlier(name: str, earlier: Collection[str]) -> TemplateProblem:
    known = ", ".join(earlier) if earlier else "none: this is the first step"
    return TemplateProblem(
        f"unknown step {name!r}: a template can only read steps that run before this one"
        f" (earlier steps: {known})"
    )


def template_problems(
    value: object, params: Collection[str], earlier: Collection[str], batch: Collection[str]
) -> Iterator[tuple[str, TemplateProblem]]:
    """Each ``(relative key path, problem)`` of the templates in ``value``.

    The path is ``''`` for ``value`` itself, ``.key`` and ``[index]`` below it.
    """
    if isinstance(value, str):
        if MARK not in value:
            return
        if _unclosed(value):
            yield "", TemplateProblem("unclosed '${{' (end the expression with '}}')")
        for expression, escaped in _expressions(value):
            if not escaped:
                for problem in check(expression, params, earlier, batch):
                    yield "", problem
    elif isinstance(value, Mapping):
        for key, item in value.items():
            for path, problem in template_problems(item, params, earlier, batch):
                yield f".{key}{path}", problem
    elif isinstance(value, list):
        for index, item in enumerate(value):
            for path, problem in template_problems(item, params, earlier, batch):
                yield f"[{index}]{path}", problem


# -- resolving -------------------------------------------------------------------------


Search = Callable[[Any], Any]


@dataclass(frozen=True)
class Template:
    """One ``with:`` value made ready to resolve: ``parts`` alternate literal text and
    compiled expressions; ``whole`` when the value is exactly one expression."""

    parts: tuple[str | tuple[str, Search], ...]
    whole: bool

    def resolve(self, context: Mapping[str, Any]) -> Any:
        if self.whole:
            part = self.parts[0]
            assert not isinstance(part, str)
            return _search(part[0], part[1], context)
        pieces = []
        for part in self.parts:
            if isinstance(part, str):
                pieces.append(part)
            else:
                pieces.append(_as_text(_search(part[0], part[1], context)))
        return "".join(pieces)


def _search(text: str, search: Search, context: Mapping[str, Any]) -> Any:
    from jmespath.exceptions import JMESPathError

    try:
        return search(context)
    except JMESPathError as exc:
        raise TemplateError(f"${{{{ {text} }}}}: {_reason(exc)}") from None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _compile_text(text: str) -> str | Template:
    import jmespath
    from jmespath.exceptions import JMESPathError

    matches = list(_TEMPLATE.finditer(text))
    parts: list[str | tuple[str, Search]] = []
    last = 0
    for match in matches:
        parts.append(text[last : match.start()])
        last = match.end()
        expression = match.group(2).strip()
        if match.group(1):  # `$${{ x }}`: the literal text `${{ x }}`
            parts.append(match.group(0)[1:])
            continue
        try:
            parts.append((expression, jmespath.compile(expression).search))
        except JMESPathError as exc:  # config validate reports it; a run fails the attempt
            message = f"${{{{ {expression} }}}}: {_reason(exc)}"
            parts.append((expression, _failing(message)))
    parts.append(text[last:])
    kept = tuple(part for part in parts if part != "")
    whole = len(matches) == 1 and len(kept) == 1 and not isinstance(kept[0], str)
    if all(isinstance(part, str) for part in kept):
        return "".join(part for part in kept if isinstance(part, str))
    return Template(kept, whole)


def _failing(message: str) -> Search:
    def search(context: Any) -> Any:
        raise TemplateError(message)

    return search


def compile_value(value: Any) -> Any:
    """``value`` with each string that holds a template replaced by a ``Template``."""
    if isinstance(value, str):
        return _compile_text(value) if MARK in value else value
    if isinstance(value, Mapping):
        return {key: compile_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [compile_value(item) for item in value]
    return value


def resolve(compiled: Any, context: Mapping[str, Any], path: str = "with") -> Any:
    """A value from ``compile_value`` with every template resolved against ``context``.

    Raises ``TemplateError`` for an expression that fails (a function given a value of
    the wrong type), naming its key path under ``path``.
    """
    if isinstance(compiled, Template):
        try:
            return compiled.resolve(context)
        except TemplateError as exc:
            raise TemplateError(f"{path}: cannot resolve {exc}") from None
    if isinstance(compiled, dict):
        return {key: resolve(item, context, f"{path}.{key}") for key, item in compiled.items()}
    if isinstance(compiled, list):
        return [resolve(item, context, f"{path}[{i}]") for i, item in enumerate(compiled)]
    return compiled
