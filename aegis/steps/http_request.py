"""``http``: any request to a service, for services that do not speak the Aegis contract.

``with:`` takes ``method`` (default ``GET``), ``path`` (required), ``path_params``,
``query``, ``headers``, ``json`` or ``body``, ``expect`` (statuses; default any 2xx),
``outputs`` (``NAME: JMESPATH`` over the JSON answer), ``poll`` (``until: JMESPATH``,
``every: SECONDS``: send again until the expression holds, within the attempt's timeout
and the step's deadline) and ``tests`` (JMESPath expressions giving ``total``,
``passed``, ``failed``, ``skipped`` and ``failures``, each failure an object with a
``test`` id and a ``message``), which make the step's data test results like a ``test``
step's, so ``submit_bugs``, ``verify`` and the verdict work on them.

``path`` is sent as written. A value that goes into it belongs in ``path_params``: each
``{name}`` in ``path`` is replaced by its value percent-encoded as ONE path segment, so a
``/``, ``..``, ``?`` or ``"`` in it cannot change which resource is asked for. In
``json`` a value stays a JSON value.
"""

from __future__ import annotations

import json as jsonlib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from aegis.errors import StepError
from aegis.steps.base import StepContext, StepType

__all__ = [
    "DEFAULT_POLL_SECONDS",
    "PARAMS",
    "STEP",
    "call",
    "check_params",
    "fill_path",
    "segment",
]

PARAMS = frozenset(
    {
        "method",
        "path",
        "path_params",
        "query",
        "headers",
        "json",
        "body",
        "expect",
        "outputs",
        "poll",
        "tests",
    }
)
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
TEST_KEYS = ("total", "passed", "failed", "skipped", "failures")
DEFAULT_POLL_SECONDS = 2.0
# The answer is kept in the step data (for templates and `history show`) up to this size.
MAX_KEPT_ANSWER = 64 * 1024
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SCALARS = (str, int, float, bool)


# ---------------------------------------------------------------------------- checking


def check_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems with an ``http`` step's ``with:``, each with its key."""
    problems = _check_request(params)
    outputs = params.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, dict) or not outputs:
            problems.append(("outputs", "expected a mapping of names to JMESPath expressions"))
        else:
            problems += _check_expressions("outputs", outputs)
    problems += _check_poll(params.get("poll"))
    problems += check_tests(params.get("tests"), required=False)
    return problems


def _check_request(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    method = params.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        problems.append(("method", f"expected one of {', '.join(METHODS)}, got {method!r}"))
    path = params.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        problems.append(("path", f"required: a path starting with '/', got {path!r}"))
    names = params.get("path_params", {})
    if not isinstance(names, dict) or not all(isinstance(v, _SCALARS) for v in names.values()):
        problems.append(("path_params", "expected a mapping of names to text or numbers"))
    elif isinstance(path, str):
        for name in _PLACEHOLDER.findall(path):
            if name not in names:
                problems.append(("path", f"{{{name}}} has no value in path_params"))
    for key in ("query", "headers"):
        value = params.get(key)
        if value is not None and not isinstance(value, dict):
            problems.append((key, f"expected a mapping, got {value!r}"))
    if "json" in params and "body" in params:
        problems.append(("body", "give 'json' or 'body', not both"))
    body = params.get("body")
    if body is not None and not isinstance(body, str):
        problems.append(("body", f"expected text (use 'json' for a JSON value), got {body!r}"))
    expect = params.get("expect")
    if expect is not None and not _statuses(expect):
        problems.append(("expect", f"expected a status or a list of statuses, got {expect!r}"))
    return problems


def _statuses(value: Any) -> list[int] | None:
    items = value if isinstance(value, list) else [value]
    if not items or not all(
        isinstance(i, int) and not isinstance(i, bool) and 100 <= i <= 599 for i in items
    ):
        return None
    return items


def _check_poll(poll: Any) -> list[tuple[str, str]]:
    if poll is None:
        return []
    if not isinstance(poll, dict) or "until" not in poll:
        return [("poll", "expected a mapping with 'until' (a JMESPath) and 'every' (seconds)")]
    problems = [("poll." + k, "unknown key") for k in poll if k not in ("until", "every")]
    every = poll.get("every", DEFAULT_POLL_SECONDS)
    if isinstance(every, bool) or not isinstance(every, (int, float)) or every <= 0:
        problems.append(("poll.every", f"expected a number of seconds > 0, got {every!r}"))
    return problems + _check_expressions("poll", {"until": poll["until"]})


def check_tests(tests: Any, *, required: bool) -> list[tuple[str, str]]:
    """Problems with ``with.tests``: a mapping of ``TEST_KEYS`` with ``failures`` at least."""
    if tests is None:
        return [("tests", "required: how the answer maps to test results")] if required else []
    if not isinstance(tests, dict) or "failures" not in tests:
        return [("tests", "expected a mapping with at least 'failures' (a JMESPath)")]
    problems = [
        ("tests." + key, f"unknown key (expected {', '.join(TEST_KEYS)})")
        for key in tests
        if key not in TEST_KEYS
    ]
    return problems + _check_expressions("tests", tests)


def _check_expressions(where: str, expressions: Mapping[str, Any]) -> list[tuple[str, str]]:
    import jmespath
    from jmespath.exceptions import JMESPathError

    problems: list[tuple[str, str]] = []
    for name, expression in expressions.items():
        key = f"{where}.{name}"
        if not isinstance(expression, str) or not expression.strip():
            problems.append((key, f"expected a JMESPath expression, got {expression!r}"))
            continue
        try:
            jmespath.compile(expression)
        except JMESPathError as exc:
            problems.append((key, f"not a JMESPath expression: {_first_line(exc)}"))
    return problems


def _first_line(exc: Exception) -> str:
    """jmespath's message without the expression it quotes on further lines."""
    text = str(exc).strip()
    line = text.splitlines()[0].rstrip(":").removesuffix(", for expression") if text else ""
    position = getattr(exc, "lex_position", None)
    if isinstance(position, int) and "column" not in line:
        line += f" (at column {position})"
    return line or type(exc).__name__


# ---------------------------------------------------------------------------- the request


def segment(value: Any) -> str:
    """``value`` percent-encoded as one path segment (``.`` and ``..`` included)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (str, int, float)):
        text = str(value)
    else:
        raise StepError("error", f"a path parameter should be text or a number, got {value!r}")
    if not text:
        raise StepError("error", "a path parameter is empty, which would change the path")
    if text in (".", ".."):  # a dot segment would name another resource
        return "%2E" * len(text)
    return quote(text, safe="")


def fill_path(path: str, values: Mapping[str, Any]) -> str:
    """``path`` with each ``{name}`` replaced by ``segment(values[name])``."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise StepError("error", f"with.path: {{{name}}} has no value in path_params")
        return segment(values[name])

    return _PLACEHOLDER.sub(one, path)


def _request_parts(params: Mapping[str, Any]) -> tuple[bytes | None, dict[str, str]]:
    headers = {str(k): _header(v) for k, v in (params.get("headers") or {}).items()}
    if "json" in params:
        content = jsonlib.dumps(params["json"], ensure_ascii=False, separators=(",", ":"))
        headers.setdefault("Content-Type", "application/json")
        return content.encode("utf-8"), headers
    body = params.get("body")
    return (None if body is None else str(body).encode("utf-8")), headers


def _header(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _query(params: Mapping[str, Any]) -> dict[str, Any] | None:
    query = params.get("query")
    if not query:
        return None
    return {
        str(k): [_header(i) for i in v] if isinstance(v, list) else _header(v)
        for k, v in query.items()
        if v is not None
    }


async def call(ctx: StepContext, *, tests_required: bool = False) -> dict[str, Any]:
    """Send the step's request (again, while polling) and read its answer into data."""
    from aegis.steps import http

    params = ctx.spec.params
    method = str(params.get("method", "GET")).upper()
    path = fill_path(str(params.get("path", "/")), params.get("path_params") or {})
    content, headers = _request_parts(params)
    expect = _statuses(params["expect"]) if "expect" in params else None
    poll = params.get("poll")
    polls = 0
    while True:
        answer = await http.request(
            ctx, method, path, query=_query(params), headers=headers, content=content, expect=expect
        )
        polls += 1
        if poll:  # kept in the record if the step times out while polling
            ctx.progress.update(status=answer.status, polls=polls, answer=_kept(answer))
        if not poll or truthy(_search(ctx, "poll.until", poll["until"], answer.json)):
            break
        await ctx.clock.sleep(float(poll.get("every", DEFAULT_POLL_SECONDS)))
    data: dict[str, Any] = {"status": answer.status}
    if len(answer.text) <= MAX_KEPT_ANSWER:
        data["answer"] = _kept(answer)
    if poll:
        data["polls"] = polls
    outputs = params.get("outputs")
    if outputs:
        data["outputs"] = {
            name: _search(ctx, f"outputs.{name}", expr, answer.json)
            for name, expr in outputs.items()
        }
    tests = params.get("tests")
    if tests:
        data.update(_test_results(ctx, tests, answer.json))
    elif tests_required:
        raise StepError("error", f"step {ctx.spec.name!r}: with.tests is required")
    return data


def _kept(answer: Any) -> Any:
    """What the step data keeps of an answer: its JSON, else its text; None when large."""
    if len(answer.text) > MAX_KEPT_ANSWER:
        return None
    return answer.json if answer.json is not None else answer.text


def truthy(value: Any) -> bool:
    """JMESPath's truth: false, null and empty text, lists and objects are false."""
    if value is None or value is False:
        return False
    return not (isinstance(value, (str, list, dict)) and not value)


def _search(ctx: StepContext, key: str, expression: str, answer: Any) -> Any:
    import jmespath
    from jmespath.exceptions import JMESPathError

    from aegis.steps import http

    if answer is None:
        raise http.protocol_error(ctx, f"with.{key} needs a JSON answer, and it was not JSON")
    try:
        return jmespath.search(expression, answer)
    except JMESPathError as exc:
        raise http.protocol_error(ctx, f"with.{key} {expression!r}: {_first_line(exc)}") from exc


def _test_results(ctx: StepContext, tests: Mapping[str, Any], answer: Any) -> dict[str, Any]:
    """The answer as test results, checked as a ``test`` step's answer is."""
    from aegis.steps import http
    from aegis.steps.test import test_results

    found = {key: _search(ctx, f"tests.{key}", expr, answer) for key, expr in tests.items()}
    failures = found["failures"]
    if failures is None:
        failures = []
    if not isinstance(failures, list):
        raise http.protocol_error(ctx, f"with.tests.failures gave {failures!r:.60}, not a list")
    failures = [_failure(item) for item in failures]
    failed = found.get("failed", len(failures))
    skipped = found.get("skipped", 0)
    if "total" in found:
        total = found["total"]
        passed = found.get("passed", _difference(total, failed, skipped))
    else:
        passed = found.get("passed", 0)
        total = _sum(passed, failed, skipped)
    body = {"total": total, "passed": passed, "failed": failed, "failures": failures}
    results = test_results(ctx, body)
    if isinstance(skipped, int) and not isinstance(skipped, bool) and skipped:
        results["skipped"] = skipped
    return results


def _failure(item: Any) -> Any:
    """A failure item with a text ``test`` id when the service gave a number."""
    test = item.get("test") if isinstance(item, dict) else None
    if isinstance(test, (int, float)) and not isinstance(test, bool):
        return {**item, "test": str(test)}
    return item


def _difference(total: Any, failed: Any, skipped: Any) -> Any:
    if all(isinstance(v, int) and not isinstance(v, bool) for v in (total, failed, skipped)):
        return max(total - failed - skipped, 0)
    return None  # reported by the count check


def _sum(*counts: Any) -> Any:
    if all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
        return sum(counts)
    return None


async def execute(ctx: StepContext) -> dict[str, Any]:
    return await call(ctx)


STEP = StepType(
    name="http",
    execute=execute,
    params=PARAMS,
    check_params=check_params,
    description="Send any request to a service; poll it, keep outputs, read test results.",
)
