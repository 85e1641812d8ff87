"""Validation: from the parsed, interpolated YAML tree to the frozen ``Config``.

``build_config`` walks every section, converts each value to its model type and records
each problem with its key path (``workflows.smoke.steps[1].retries``) instead of stopping
at the first; at the end it raises one ``ConfigError`` carrying all of them. A value that
cannot be used is replaced by its default so the walk can go on and find the rest.

The tree comes from ``aegis.config.load``, which marks two kinds of values for this module:
``EnvText`` (a scalar that was one whole ``${...}``; typed keys read its YAML meaning) and
``UNRESOLVED`` (an interpolation that already failed and was reported).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from aegis.config.model import (
    CATCH_UP_MODES,
    DEFAULT_HEALTH_ENDPOINT,
    DEFAULT_LEASE,
    DEFAULT_MAX_QUEUED_RUNS,
    DEFAULT_RETRY_DELAY,
    DEFAULT_STEP_TIMEOUT,
    INTERRUPT_MODES,
    OVERLAP_MODES,
    AuthSpec,
    ConcurrencySpec,
    Config,
    HistorySpec,
    Identity,
    ScheduleSpec,
    ServerSpec,
    ServiceSpec,
    StepSpec,
    WebhookSpec,
    WorkflowSpec,
    frozen_mapping,
)
from aegis.config.params import (
    NAME_PATTERN,
    PARAM_TYPES,
    ParamError,
    ParamSpec,
    coerce_params,
    coerce_value,
)
from aegis.engine.conditions import CONDITIONS as ENGINE_CONDITIONS
from aegis.errors import ERROR_KINDS, ConfigError, ConfigProblem
from aegis.events import EVENT_TYPES
from aegis.secrets import hide_url_passwords
from aegis.templates import has_templates, template_problems

if TYPE_CHECKING:  # the step modules import the config model: importing them here would cycle
    from aegis.steps.base import StepType

__all__ = [
    "CONDITIONS",
    "DEFAULT_HISTORY_FILE",
    "MAX_RETRIES",
    "MEMORY_PATH",
    "UNRESOLVED",
    "EnvText",
    "build_config",
    "describe",
    "join_index",
    "join_key",
]

# The engine's conditions (aegis.engine.conditions); repeated so loading a config does not
# import the engine.
CONDITIONS = tuple(ENGINE_CONDITIONS)  # one list of names: the engine's
STATUS_CLASSES = ("4xx", "5xx")
DEFAULT_HISTORY_FILE = "aegis_history.db"
MEMORY_PATH = ":memory:"
DEFAULT_EVENT_LOG_SIZE = 100
ALL_EVENTS = "*"

TOP_KEYS = (
    "aegis",
    "services",
    "workflows",
    "history",
    "server",
    "auth",
    "webhooks",
    "event_log_size",
)
IDENTITY_KEYS = ("name", "tagline", "public_url")
SERVICE_KEYS = (
    "name",
    "url",
    "description",
    "health_endpoint",
    "ready_endpoint",
    "api_key_env",
    "features",
    "repo_url",
    "docs_url",
)
WORKFLOW_KEYS = (
    "name", "description", "timeout", "params", "schedule", "concurrency", "on_interrupt",
    "steps",
)  # fmt: skip
PARAM_KEYS = ("type", "default", "required", "choices", "description", "secret")
SCHEDULE_KEYS = ("cron", "every", "timezone", "params", "overlap", "catch_up")
CONCURRENCY_KEYS = ("limit", "on_conflict")
STEP_KEYS = (
    "type",
    "name",
    "service",
    "condition",
    "parallel",
    "retries",
    "retry_delay",
    "max_retry_delay",
    "retry_jitter",
    "retry_on",
    "timeout",
    "deadline",
    "with",
)
HISTORY_KEYS = ("path", "url", "password_env", "max_runs", "max_age", "lease")
SERVER_KEYS = (
    "host", "port", "max_concurrent_runs", "max_queued_runs", "max_connections", "cors_origins"
)  # fmt: skip
AUTH_KEYS = ("api_key", "protect")
PROTECT_CHOICES = ("writes", "all")
WEBHOOK_KEYS = ("url", "events", "secret")

KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
# A duration: one or more NUMBER UNIT parts, like 15m, 1h30m, 30d, 2.5s.
DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_SHOWN = 60  # longest string quoted back in a message
MAX_RETRIES = 100  # a step's extra attempts; more is a mistake (or a loop better written)

T = TypeVar("T")
D = TypeVar("D")
Converter = Callable[[object], T]


class EnvText(str):
    """A string that was one whole ``${...}`` interpolation.

    ``scalar`` is the same text re-read as a YAML scalar: keys that want a number or a
    boolean use it, so ``port: ${PORT}`` works, while ``name: ${NAME}`` keeps the text even
    when it looks like a number. ``with:`` values, whose type only the step knows, use it
    only when the YAML value was ``plain`` (unquoted): quoting keeps a string.
    """

    scalar: object
    plain: bool

    def __new__(cls, text: str, scalar: object, *, plain: bool = True) -> EnvText:
        self = super().__new__(cls, text)
        self.scalar = scalar
        self.plain = plain
        return self


# Stands for a value whose interpolation failed; its problem is already on the list.
UNRESOLVED: Any = object()


def join_key(path: str, key: object) -> str:
    """``path.key``, or just ``key`` at the top level."""
    return f"{path}.{key}" if path else str(key)


def join_index(path: str, index: int) -> str:
    return f"{path}[{index}]"


def describe(value: object) -> str:
    """A value as a message shows it: YAML words for YAML things, strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # URL passwords hidden before the cut: a cut through one would leave its head
        value = hide_url_passwords(value)
        shown = value if len(value) <= MAX_SHOWN else value[: MAX_SHOWN - 3] + "..."
        return repr(str(shown))
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return f"a value of type {type(value).__name__}"


def _near(word: object, choices: Collection[str]) -> list[str]:
    """The choice ``word`` is a near miss of (letter case aside), if any."""
    if not isinstance(word, str):
        return []
    by_folded = {choice.lower(): choice for choice in choices}
    import difflib  # only when there is a problem to suggest a fix for

    close = difflib.get_close_matches(word.lower(), list(by_folded), n=1, cutoff=0.6)
    return [by_folded[match] for match in close]


def suggest(word: str, choices: Collection[str]) -> str:
    """`` (did you mean 'X'?)`` for a near miss, else the list of choices."""
    near = _near(word, choices)
    if near:
        return f" (did you mean {near[0]!r}?)"
    if not choices:
        return " (none are defined)"
    return f" (expected one of: {', '.join(choices)})"


def unknown(what: str, word: object, choices: Collection[str]) -> str:
    hint = suggest(word, choices) if isinstance(word, str) else ""
    return f"unknown {what} {describe(word)}{hint}"


class _Invalid(Exception):
    """A converter's refusal: what it expected, or a whole message of its own."""

    def __init__(self, expected: str = "", *, message: str = "", show_value: bool = True) -> None:
        super().__init__(expected or message)
        self.expected = expected
        self.message = message
        self.show_value = show_value

    def explain(self, value: object) -> str:
        if self.message:
            return self.message
        if not self.show_value:  # the value may be a secret: never echo it
            return f"expected {self.expected}"
        # a malformed URL may still carry a password: shown as ***
        return f"expected {self.expected}, got {describe(_typed(value))}"


def _is_empty(value: object) -> bool:
    """Whether ``value`` is an interpolation that came out as YAML null (``${X:-}``)."""
    return isinstance(value, EnvText) and value.scalar is None


def _typed(value: object) -> object:
    """The YAML meaning of an interpolated scalar; other values as they are."""
    return value.scalar if isinstance(value, EnvText) else value


# -- converters: object -> model value, or _Invalid ----------------------------------------


def _text(value: object) -> str:
    if isinstance(value, str):
        return str(value)
    raise _Invalid("a string")


def _name(value: object) -> str:
    if isinstance(value, str) and value.strip():
        return str(value)
    raise _Invalid("a non-empty string")


def _secret(value: object) -> str:
    if isinstance(value, str):
        return str(value)
    raise _Invalid("a string (quote the value)", show_value=False)


def _boolean(value: object) -> bool:
    value = _typed(value)
    if isinstance(value, bool):
        return value
    raise _Invalid("true or false")


def _integer(minimum: int, maximum: int | None = None) -> Converter[int]:
    if maximum is None:
        expected = f"an integer >= {minimum}"
    else:
        expected = f"an integer from {minimum} to {maximum}"

    def convert(value: object) -> int:
        value = _typed(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(expected)
        if value < minimum or (maximum is not None and value > maximum):
            raise _Invalid(expected)
        return value

    return convert


def _number(
    minimum: float, *, exclusive: bool = False, maximum: float | None = None
) -> Converter[float]:
    if maximum is not None:
        expected = f"a number from {minimum:g} to {maximum:g}"
    else:
        expected = f"a number {'>' if exclusive else '>='} {minimum:g}"

    def convert(value: object) -> float:
        value = _typed(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(expected)
        number = float(value)
        too_low = number <= minimum if exclusive else number < minimum
        if not math.isfinite(number) or too_low or (maximum is not None and number > maximum):
            raise _Invalid(expected)
        return number

    return convert


def _http_url(value: object) -> str:
    expected = "an http:// or https:// URL with a host"
    if not isinstance(value, str) or any(c.isspace() for c in value):
        raise _Invalid(expected)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise _Invalid(expected) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(expected)
    return str(value)


def _optional_url(value: object) -> str:
    if value == "":
        return ""
    try:
        return _http_url(value)
    except _Invalid as exc:
        raise _Invalid("an http:// or https:// URL, or ''") from exc


def _endpoint(value: object) -> str:
    if isinstance(value, str) and value.startswith("/"):
        return str(value)
    raise _Invalid("a path starting with '/'")


def _env_name(value: object) -> str:
    if isinstance(value, str) and ENV_NAME_PATTERN.fullmatch(value):
        return str(value)
    raise _Invalid(
        "the name of an environment variable (like QAAGENT_API_KEY), not the key itself",
        show_value=False,
    )


def _history_path(value: object) -> str:
    if isinstance(value, str) and value.strip():
        return str(value)
    raise _Invalid(f"a file path or {MEMORY_PATH!r}")


def _history_url(value: object) -> str:
    """A ``postgresql://`` URL; its text is never shown (it may hold a password)."""
    from aegis.history.pg_connect import PgTarget

    value = _typed(value)
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("a postgresql://USER@HOST:PORT/DATABASE URL", show_value=False)
    try:
        PgTarget.parse(value.strip(), environ={})
    except ValueError as exc:
        raise _Invalid(message=f"not a usable PostgreSQL URL: {exc}") from None
    return value.strip()


def _duration(value: object) -> float:
    """A duration as seconds: a number of seconds, or text like ``15m``, ``1h30m``, ``30d``."""
    expected = "a duration like 30s, 15m, 2h or 30d (or a number of seconds) above 0"
    value = _typed(value)
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().replace(" ", "")
        parts = DURATION_PART.findall(text)
        if "".join(n + u for n, u in parts) == text:
            seconds = sum(float(n) * DURATION_UNITS[u] for n, u in parts)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise _Invalid(expected)
    return seconds


def _choice(what: str, choices: tuple[str, ...]) -> Converter[str]:
    def convert(value: object) -> str:
        if not isinstance(value, str):
            raise _Invalid(f"a {what} (one of: {', '.join(choices)})")
        if value not in choices:
            raise _Invalid(message=unknown(what, value, choices))
        return str(value)

    return convert


def _retry_on_item(value: object) -> str:
    value = _typed(value)
    if isinstance(value, str) and value not in ERROR_KINDS + STATUS_CLASSES:
        if not (len(value) == 3 and value.isascii() and value.isdigit()):
            raise _Invalid(message=unknown("retry_on item", value, ERROR_KINDS + STATUS_CLASSES))
        value = int(value)
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return str(value)
    raise _Invalid(
        f"an error kind ({', '.join(ERROR_KINDS)}), a status class ({', '.join(STATUS_CLASSES)})"
        " or a status code from 100 to 599"
    )


# -- the reader: fetches keys of a section, reporting what is wrong --------------------------


class _Section(dict[str, object]):
    """The allowed keys of one mapping of the file.

    ``valid`` is false when the value was not a mapping at all, and ``misspelt`` holds the
    allowed keys that an unknown key was a near miss of: in both cases the problem is
    already reported, so a "missing" key is not reported again.
    """

    def __init__(self, items: Mapping[str, object] | None = None, *, valid: bool = True) -> None:
        super().__init__(items or {})
        self.valid = valid
        self.misspelt: set[str] = set()

    def lacks(self, key: str) -> bool:
        """Whether ``key`` is missing for a reason not reported yet."""
        return self.valid and key not in self and key not in self.misspelt


class _Reader:
    def __init__(self, file: str, problems: list[ConfigProblem]) -> None:
        self.file = file
        self.problems = problems

    def report(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(self.file, path, message))

    def section(
        self, value: object, path: str, allowed: tuple[str, ...], what: str = "a mapping"
    ) -> _Section:
        """``value`` as a mapping of its allowed keys; unknown keys are reported.

        ``null`` is an empty section (every key left at its default).
        """
        if value is None or value is UNRESOLVED:
            return _Section()
        if not isinstance(value, dict):
            self.report(path, f"expected {what}, got {describe(value)}")
            return _Section(valid=False)
        section = _Section({key: item for key, item in value.items() if key in allowed})
        for key in value:
            if key not in allowed:
                self.report(join_key(path, key), unknown("key", key, allowed))
                section.misspelt.update(_near(key, allowed))
        return section

    def get(
        self,
        section: Mapping[str, object],
        key: str,
        path: str,
        convert: Converter[T],
        default: D,
    ) -> T | D:
        """The converted value of ``key``; ``default`` when it is absent, null or invalid."""
        raw = section.get(key)
        if raw is None or raw is UNRESOLVED:
            return default
        try:
            return convert(raw)
        except _Invalid as exc:
            if _is_empty(raw):  # `deadline: ${DEADLINE:-}` left empty: as if not there
                return default
            self.report(join_key(path, key), exc.explain(raw))
            return default

    def require(
        self, section: _Section, key: str, path: str, convert: Converter[T], what: str
    ) -> T | None:
        """Like ``get``, but a missing key is a problem too."""
        if section.lacks(key):
            self.report(join_key(path, key), f"missing; expected {what}")
            return None
        if key not in section:
            return None
        raw = section[key]
        if raw is None or _is_empty(raw):
            self.report(join_key(path, key), f"expected {what}, got {describe(raw)}")
            return None
        return self.get(section, key, path, convert, None)

    def items(
        self,
        section: Mapping[str, object],
        key: str,
        path: str,
        convert: Converter[T],
        what: str,
    ) -> tuple[T, ...] | None:
        """A list whose items are converted one by one (each problem at its index)."""
        raw = section.get(key)
        if raw is None or raw is UNRESOLVED:
            return None
        item_path = join_key(path, key)
        if not isinstance(raw, list):
            self.report(item_path, f"expected a list of {what}, got {describe(raw)}")
            return None
        converted: list[T] = []
        for index, item in enumerate(raw):
            if item is UNRESOLVED:
                continue
            try:
                converted.append(convert(item))
            except _Invalid as exc:
                self.report(join_index(item_path, index), exc.explain(item))
        return tuple(converted)

    def keyed(self, value: object, path: str, what: str) -> list[tuple[str, object]]:
        """The entries of a mapping keyed by config keys (services, workflows)."""
        if value is None or value is UNRESOLVED:
            return []
        if not isinstance(value, dict):
            self.report(
                path, f"expected a mapping of {what} keys to {what}s, got {describe(value)}"
            )
            return []
        for key in value:
            if not (isinstance(key, str) and KEY_PATTERN.fullmatch(key)):
                self.report(
                    join_key(path, key),
                    f"invalid {what} key {describe(key)}: use letters, digits, '_' and '-'",
                )
        return [(key, entry) for key, entry in value.items() if isinstance(key, str)]


# -- sections ------------------------------------------------------------------------------


def build_config(
    tree: object,
    *,
    file: str,
    base_dir: Path,
    step_types: Mapping[str, StepType],
    source: str | None = None,
    problems: list[ConfigProblem] | None = None,
) -> Config:
    """Validate ``tree`` (a parsed, interpolated config) and build its ``Config``.

    ``problems`` are ones found earlier (while parsing or interpolating); they are raised
    together with the ones found here. Raises ``ConfigError`` when there is any.
    """
    reader = _Reader(file, [] if problems is None else problems)
    if not isinstance(tree, dict):
        reader.report(
            "", f"expected a mapping of sections (services, workflows, ...), got {describe(tree)}"
        )
        raise ConfigError(reader.problems)
    top = reader.section(tree, "", TOP_KEYS)
    services = _services(reader, top.get("services"))
    config = Config(
        services=MappingProxyType(services),
        workflows=MappingProxyType(_workflows(reader, top.get("workflows"), services, step_types)),
        identity=_identity(reader, top.get("aegis")),
        history=_history(reader, top.get("history"), base_dir),
        server=_server(reader, top.get("server")),
        auth=_auth(reader, top.get("auth")),
        webhooks=_webhooks(reader, top.get("webhooks")),
        event_log_size=reader.get(top, "event_log_size", "", _integer(1), DEFAULT_EVENT_LOG_SIZE),
        source=source,
        base_dir=os.path.abspath(base_dir),
    )
    if reader.problems:
        raise ConfigError(reader.problems)
    return config


def _identity(reader: _Reader, raw: object) -> Identity:
    section = reader.section(raw, "aegis", IDENTITY_KEYS)
    default = Identity()
    return Identity(
        name=reader.get(section, "name", "aegis", _name, default.name),
        tagline=reader.get(section, "tagline", "aegis", _text, default.tagline),
        public_url=reader.get(section, "public_url", "aegis", _optional_url, ""),
    )


def _services(reader: _Reader, raw: object) -> dict[str, ServiceSpec]:
    return {
        key: _service(reader, key, entry) for key, entry in reader.keyed(raw, "services", "service")
    }


def _service(reader: _Reader, key: str, raw: object) -> ServiceSpec:
    path = join_key("services", key)
    section = reader.section(raw, path, SERVICE_KEYS)
    url = reader.require(section, "url", path, _http_url, "an http:// or https:// URL")
    return ServiceSpec(
        key=key,
        name=reader.get(section, "name", path, _name, key),
        url=url or "",
        description=reader.get(section, "description", path, _text, ""),
        health_endpoint=reader.get(
            section, "health_endpoint", path, _endpoint, DEFAULT_HEALTH_ENDPOINT
        ),
        ready_endpoint=reader.get(section, "ready_endpoint", path, _endpoint, None),
        api_key_env=reader.get(section, "api_key_env", path, _env_name, None),
        features=reader.items(section, "features", path, _text, "strings") or (),
        repo_url=reader.get(section, "repo_url", path, _optional_url, ""),
        docs_url=reader.get(section, "docs_url", path, _optional_url, ""),
    )


def _workflows(
    reader: _Reader,
    raw: object,
    services: Collection[str],
    step_types: Mapping[str, StepType],
) -> dict[str, WorkflowSpec]:
    return {
        key: _workflow(reader, key, entry, services, step_types)
        for key, entry in reader.keyed(raw, "workflows", "workflow")
    }


def _workflow(
    reader: _Reader,
    key: str,
    raw: object,
    services: Collection[str],
    step_types: Mapping[str, StepType],
) -> WorkflowSpec:
    path = join_key("workflows", key)
    section = reader.section(raw, path, WORKFLOW_KEYS)
    params = _workflow_params(reader, section.get("params"), join_key(path, "params"))
    steps = _steps(reader, section, path, services, step_types)
    _check_templates(reader, steps, params, join_key(path, "steps"))
    schedules = _schedules(reader, section.get("schedule"), join_key(path, "schedule"))
    _check_schedule_params(reader, key, schedules, params, section.get("schedule"), path)
    return WorkflowSpec(
        key=key,
        name=reader.get(section, "name", path, _name, key),
        steps=steps,
        description=reader.get(section, "description", path, _text, ""),
        timeout=reader.get(section, "timeout", path, _number(0, exclusive=True), None),
        params=MappingProxyType(params),
        schedules=schedules,
        concurrency=_concurrency(reader, section.get("concurrency"), join_key(path, "concurrency")),
        on_interrupt=reader.get(
            section, "on_interrupt", path, _choice("on_interrupt", INTERRUPT_MODES), "interrupted"
        ),
    )


def _workflow_params(reader: _Reader, raw: object, path: str) -> dict[str, ParamSpec]:
    if raw is None or raw is UNRESOLVED:
        return {}
    if not isinstance(raw, dict):
        reader.report(path, f"expected a mapping of param names to params, got {describe(raw)}")
        return {}
    specs = {}
    for name, entry in raw.items():
        if not (isinstance(name, str) and NAME_PATTERN.fullmatch(name)):
            reader.report(
                join_key(path, name),
                f"invalid param name {describe(name)}: use letters, digits and '_',"
                " not starting with a digit",
            )
            continue
        specs[name] = _param_spec(reader, name, entry, join_key(path, name))
    return specs


def _param_spec(reader: _Reader, name: str, raw: object, path: str) -> ParamSpec:
    section = reader.section(raw, path, PARAM_KEYS, what="a param (a mapping with a 'type')")
    kind = reader.get(section, "type", path, _choice("param type", PARAM_TYPES), "string")
    choices = reader.items(section, "choices", path, _name, "non-empty strings") or ()
    if kind == "choice" and not choices and "choices" not in section.misspelt:
        reader.report(
            join_key(path, "choices"), "missing; a 'choice' param needs a list of its choices"
        )
    elif choices and kind != "choice":
        reader.report(join_key(path, "choices"), "only a param of type 'choice' takes choices")
    spec = ParamSpec(
        name=name,
        type=kind,
        required=reader.get(section, "required", path, _boolean, False),
        choices=tuple(dict.fromkeys(choices)),
        description=reader.get(section, "description", path, _text, ""),
        secret=reader.get(section, "secret", path, _boolean, False),
    )
    raw_default = section.get("default")
    if raw_default is None or raw_default is UNRESOLVED:
        return spec
    if spec.required:
        reader.report(join_key(path, "default"), "a required param takes no default")
        return spec
    try:  # an interpolated default is read like a `-p NAME=VALUE` text
        if isinstance(raw_default, EnvText):
            default = coerce_value(spec, str(raw_default), text=True)
        else:
            default = coerce_value(spec, raw_default)
    except ValueError as exc:
        reader.report(join_key(path, "default"), str(exc))
        return spec
    return dataclasses.replace(spec, default=default)


def _check_templates(
    reader: _Reader, steps: tuple[StepSpec, ...], params: Mapping[str, ParamSpec], path: str
) -> None:
    """Report every ``${{ }}`` in the steps' ``with:`` that cannot work (aegis.templates)."""
    if not any(has_templates(spec.params) for spec in steps):
        return
    group: list[int] = []  # the batch of each step: consecutive `parallel` steps share one
    for index, spec in enumerate(steps):
        joins = index > 0 and spec.parallel and steps[index - 1].parallel
        group.append(group[-1] if joins else index)
    for index, spec in enumerate(steps):
        if not has_templates(spec.params):
            continue
        earlier = [s.name for i, s in enumerate(steps) if group[i] < group[index]]
        same = [s.name for i, s in enumerate(steps) if group[i] == group[index] and i != index]
        with_path = join_key(join_index(path, index), "with")
        for where, problem in template_problems(dict(spec.params), params, earlier, same):
            message = problem.message or unknown(problem.what, problem.word, problem.choices)
            reader.report(with_path + where, message)


def _schedules(reader: _Reader, raw: object, path: str) -> tuple[ScheduleSpec, ...]:
    """`schedule:` is one schedule (a mapping) or a list of them."""
    if raw is None or raw is UNRESOLVED:
        return ()
    if isinstance(raw, list):
        found = (_schedule(reader, item, join_index(path, i)) for i, item in enumerate(raw))
        return tuple(spec for spec in found if spec is not None)
    spec = _schedule(reader, raw, path)
    return () if spec is None else (spec,)


def _schedule(reader: _Reader, raw: object, path: str) -> ScheduleSpec | None:
    what = "a schedule (a mapping with 'cron' or 'every')"
    section = reader.section(raw, path, SCHEDULE_KEYS, what=what)
    if not section.valid:
        return None
    cron = reader.get(section, "cron", path, _name, None)
    every = reader.get(section, "every", path, _duration, None)
    timezone = reader.get(section, "timezone", path, _name, "UTC")
    if ("cron" in section) == ("every" in section):
        reader.report(path, "give either 'cron' or 'every' (exactly one)")
    elif "timezone" in section and "every" in section:
        reader.report(join_key(path, "timezone"), "only a 'cron' schedule takes a timezone")
    from aegis.schedules import cron_problem, timezone_problem  # only configs with schedules

    if cron is not None and (problem := cron_problem(cron)) is not None:
        reader.report(join_key(path, "cron"), problem)
    if "timezone" in section and (problem := timezone_problem(timezone)) is not None:
        reader.report(join_key(path, "timezone"), problem)
    raw_params = section.get("params")
    if raw_params is not None and not isinstance(raw_params, dict):
        reader.report(
            join_key(path, "params"), f"expected a mapping of params, got {describe(raw_params)}"
        )
        raw_params = None
    params = {
        str(key): _param_value(reader, value, join_key(join_key(path, "params"), key))
        for key, value in (raw_params or {}).items()
    }
    return ScheduleSpec(
        cron=cron,
        every=every,
        timezone=timezone,
        params=frozen_mapping(params),
        overlap=reader.get(section, "overlap", path, _choice("overlap", OVERLAP_MODES), "skip"),
        catch_up=reader.get(section, "catch_up", path, _choice("catch_up", CATCH_UP_MODES), "none"),
    )


def _check_schedule_params(
    reader: _Reader,
    key: str,
    schedules: tuple[ScheduleSpec, ...],
    params: Mapping[str, ParamSpec],
    raw: object,
    path: str,
) -> None:
    """Each schedule's ``params`` must be ones a run of the workflow can take."""
    for index, schedule in enumerate(schedules):
        where = join_key(path, "schedule")
        where = join_key(join_index(where, index) if isinstance(raw, list) else where, "params")
        try:
            coerce_params(key, params, schedule.params)
        except ParamError as exc:
            for problem in exc.problems:
                reader.report(join_key(where, problem.name), problem.message)


def _concurrency(reader: _Reader, raw: object, path: str) -> ConcurrencySpec | None:
    if raw is None or raw is UNRESOLVED:
        return None
    section = reader.section(raw, path, CONCURRENCY_KEYS)
    default = ConcurrencySpec()
    limit = reader.require(section, "limit", path, _integer(1), "an integer >= 1")
    on_conflict = reader.get(
        section, "on_conflict", path, _choice("on_conflict", OVERLAP_MODES), default.on_conflict
    )
    return ConcurrencySpec(limit=limit or default.limit, on_conflict=on_conflict)


def _steps(
    reader: _Reader,
    workflow: _Section,
    workflow_path: str,
    services: Collection[str],
    step_types: Mapping[str, StepType],
) -> tuple[StepSpec, ...]:
    path = join_key(workflow_path, "steps")
    raw = workflow.get("steps")
    if workflow.lacks("steps"):
        reader.report(path, "missing; expected a non-empty list of steps")
        return ()
    if "steps" not in workflow or raw is UNRESOLVED:
        return ()
    if not isinstance(raw, list) or not raw:
        reader.report(path, f"expected a non-empty list of steps, got {describe(raw)}")
        return ()
    drafts = [
        _step(reader, item, join_index(path, index), services, step_types)
        for index, item in enumerate(raw)
    ]
    return _name_steps(reader, path, drafts)


def _step(
    reader: _Reader,
    raw: object,
    path: str,
    services: Collection[str],
    step_types: Mapping[str, StepType],
) -> tuple[StepSpec, str | None]:
    """One step, unnamed yet, and the name the user gave it (if any)."""
    section = reader.section(raw, path, STEP_KEYS, what="a step (a mapping with a 'type')")
    step_type = _step_type(reader, section, path, step_types)
    type_name = step_type.name if step_type else "step"  # a placeholder: the type is reported
    spec = StepSpec(
        type=type_name,
        name="",
        service=_step_service(reader, section, path, step_type, services),
        condition=reader.get(section, "condition", path, _choice("condition", CONDITIONS), None),
        parallel=reader.get(section, "parallel", path, _boolean, False),
        retries=reader.get(section, "retries", path, _integer(0, MAX_RETRIES), 0),
        retry_delay=reader.get(section, "retry_delay", path, _number(0), DEFAULT_RETRY_DELAY),
        max_retry_delay=reader.get(
            section, "max_retry_delay", path, _number(0, exclusive=True), None
        ),
        retry_jitter=reader.get(section, "retry_jitter", path, _number(0, maximum=1), 0.0),
        retry_on=_retry_on(reader, section, path),
        timeout=reader.get(
            section, "timeout", path, _number(0, exclusive=True), DEFAULT_STEP_TIMEOUT
        ),
        deadline=reader.get(section, "deadline", path, _number(0, exclusive=True), None),
        params=_params(reader, section.get("with"), join_key(path, "with"), step_type),
    )
    return spec, reader.get(section, "name", path, _name, None)


def _step_type(
    reader: _Reader, section: _Section, path: str, step_types: Mapping[str, StepType]
) -> StepType | None:
    known = tuple(step_types)
    name = reader.require(section, "type", path, _text, f"a step type (one of: {', '.join(known)})")
    if name is None:
        return None
    step_type = step_types.get(name)
    if step_type is None:
        reader.report(join_key(path, "type"), unknown("step type", name, known))
    return step_type


def _step_service(
    reader: _Reader,
    section: _Section,
    path: str,
    step_type: StepType | None,
    services: Collection[str],
) -> str | None:
    raw = section.get("service")
    if raw is None:
        unreported = section.lacks("service") or "service" in section  # absent, or null
        needed = step_type is not None and step_type.service_needed(_raw_params(section))
        if step_type is not None and needed and unreported:
            choices = f"one of: {', '.join(services)}" if services else "none are defined"
            reader.report(
                join_key(path, "service"),
                f"missing; step type {step_type.name!r} needs a service ({choices})",
            )
        return None
    service = reader.get(section, "service", path, _text, None)
    if service is not None and service not in services:
        reader.report(join_key(path, "service"), unknown("service", service, tuple(services)))
    return service


def _raw_params(section: Mapping[str, object]) -> Mapping[str, Any]:
    raw = section.get("with")
    return raw if isinstance(raw, dict) else {}


def _retry_on(reader: _Reader, section: Mapping[str, object], path: str) -> tuple[str, ...] | None:
    items = reader.items(section, "retry_on", path, _retry_on_item, "failure kinds")
    return None if items is None else tuple(dict.fromkeys(items))


def _params(
    reader: _Reader, raw: object, path: str, step_type: StepType | None
) -> MappingProxyType[str, Any]:
    """The step's ``with:`` mapping, checked against the step type's parameters."""
    if raw is UNRESOLVED:
        return frozen_mapping()
    if raw is not None and not isinstance(raw, dict):
        reader.report(path, f"expected a mapping of step parameters, got {describe(raw)}")
        return frozen_mapping()
    already = len(reader.problems)
    values = {
        str(key): _param_value(reader, value, join_key(path, key))
        for key, value in (raw or {}).items()
    }
    if step_type is not None:
        _check_keys(reader, values, path, step_type)
        # A value rejected above would only confuse the step type's own check.
        if len(reader.problems) == already and not _has_unresolved(values):
            _check_params(reader, values, path, step_type)
    return frozen_mapping(values)


def _has_unresolved(value: object) -> bool:
    if value is UNRESOLVED:
        return True
    if isinstance(value, dict):
        return any(_has_unresolved(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_unresolved(item) for item in value)
    return False


def _param_value(reader: _Reader, value: object, path: str) -> object:
    """A ``with:`` value as plain JSON-able data; unquoted interpolations take their YAML
    meaning."""
    if isinstance(value, EnvText) and value.plain:
        value = value.scalar
    if value is None or value is UNRESOLVED or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, list):
        return [_param_value(reader, item, join_index(path, i)) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {
            str(key): _param_value(reader, item, join_key(path, key)) for key, item in value.items()
        }
    expected = "a JSON value (text, number, boolean, list, mapping)"
    reader.report(path, f"expected {expected}, got {describe(value)}")
    return None


def _check_keys(reader: _Reader, values: dict[str, object], path: str, step_type: StepType) -> None:
    accepted = sorted(step_type.params)
    for key in values:
        if key in step_type.params:
            continue
        if accepted:
            message = f"unknown parameter {key!r} for step type {step_type.name!r}"
            reader.report(join_key(path, key), message + suggest(key, accepted))
        else:
            reader.report(join_key(path, key), f"step type {step_type.name!r} takes no parameters")


def _check_params(
    reader: _Reader, values: dict[str, object], path: str, step_type: StepType
) -> None:
    if step_type.check_params is None:
        return
    try:
        found = step_type.check_params(values)
    except Exception as exc:  # a step type's own bug must still end as a config message
        reader.report(path, f"could not check the parameters: {type(exc).__name__}: {exc}")
        return
    for key, message in found:
        top = re.split(r"[.\[]", key, maxsplit=1)[0]
        if top and has_templates(values.get(top)):
            continue  # known only once the template is resolved, before each attempt
        reader.report(join_key(path, key) if key else path, message)


def _name_steps(
    reader: _Reader, path: str, drafts: list[tuple[StepSpec, str | None]]
) -> tuple[StepSpec, ...]:
    """Give every step its name: the user's, else ``TYPE``, or ``TYPE-N`` for the N-th repeat.

    Names the user chose are claimed first, so a default never takes one of them.
    """
    taken: dict[str, int] = {}
    for index, (_, name) in enumerate(drafts):
        if name is None:
            continue
        if name in taken:
            reader.report(
                join_key(join_index(path, index), "name"),
                f"duplicate step name {name!r} (already used by steps[{taken[name]}])",
            )
        else:
            taken[name] = index
    seen: Counter[str] = Counter()
    named = []
    for index, (spec, name) in enumerate(drafts):
        seen[spec.type] += 1
        if name is None:
            name = spec.type if seen[spec.type] == 1 else f"{spec.type}-{seen[spec.type]}"
            if taken.setdefault(name, index) != index:
                reader.report(
                    join_index(path, index),
                    f"its default name {name!r} is already used by steps[{taken[name]}];"
                    " give this step a 'name'",
                )
        named.append(dataclasses.replace(spec, name=name))
    return tuple(named)


def _history(reader: _Reader, raw: object, base_dir: Path) -> HistorySpec:
    section = reader.section(raw, "history", HISTORY_KEYS)
    path = reader.get(section, "path", "history", _history_path, DEFAULT_HISTORY_FILE)
    return HistorySpec(
        path=_beside(path, base_dir),
        url=reader.get(section, "url", "history", _history_url, None),
        password_env=reader.get(section, "password_env", "history", _env_name, None),
        max_runs=reader.get(section, "max_runs", "history", _integer(0), 0),
        max_age=reader.get(section, "max_age", "history", _duration, 0.0),
        lease=reader.get(section, "lease", "history", _lease, DEFAULT_LEASE),
    )


def _lease(value: object) -> float:
    """A lease: a duration of at least a second (shorter ones cannot be renewed in time)."""
    seconds = _duration(value)
    if seconds < 1:
        raise _Invalid("a duration of at least 1s, like 30s")
    return seconds


def _beside(path: str, base_dir: Path) -> str:
    """``path`` made absolute against the config file's directory (``:memory:`` stays)."""
    if path == MEMORY_PATH:
        return path
    return os.path.abspath(base_dir / Path(path).expanduser())


def _server(reader: _Reader, raw: object) -> ServerSpec:
    section = reader.section(raw, "server", SERVER_KEYS)
    default = ServerSpec()
    return ServerSpec(
        host=reader.get(section, "host", "server", _name, default.host),
        port=reader.get(section, "port", "server", _integer(0, 65535), default.port),
        max_concurrent_runs=reader.get(
            section, "max_concurrent_runs", "server", _integer(1), default.max_concurrent_runs
        ),
        max_queued_runs=reader.get(
            section, "max_queued_runs", "server", _integer(1), DEFAULT_MAX_QUEUED_RUNS
        ),
        max_connections=reader.get(
            section, "max_connections", "server", _integer(1), default.max_connections
        ),
        cors_origins=reader.items(section, "cors_origins", "server", _text, "strings") or (),
    )


def _auth(reader: _Reader, raw: object) -> AuthSpec:
    section = reader.section(raw, "auth", AUTH_KEYS)
    api_key = reader.get(section, "api_key", "auth", _secret, "")
    protect = reader.get(section, "protect", "auth", _choice("value", PROTECT_CHOICES), "writes")
    if protect == "all" and not api_key and section.get("api_key") is not UNRESOLVED:
        reader.report("auth.protect", "'all' needs auth.api_key: there is no key to ask for")
    return AuthSpec(api_key=api_key, protect=protect)


def _webhooks(reader: _Reader, raw: object) -> tuple[WebhookSpec, ...]:
    if raw is None or raw is UNRESOLVED:
        return ()
    if not isinstance(raw, list):
        reader.report("webhooks", f"expected a list of webhooks, got {describe(raw)}")
        return ()
    return tuple(_webhook(reader, entry, join_index("webhooks", i)) for i, entry in enumerate(raw))


def _webhook(reader: _Reader, raw: object, path: str) -> WebhookSpec:
    section = reader.section(raw, path, WEBHOOK_KEYS, what="a webhook (a mapping with a 'url')")
    url = reader.require(section, "url", path, _http_url, "an http:// or https:// URL")
    event = _choice("event", (*EVENT_TYPES, ALL_EVENTS))
    events = reader.items(section, "events", path, event, "event names")
    if section.get("events") == []:
        reader.report(join_key(path, "events"), "expected a non-empty list of event names or '*'")
    return WebhookSpec(
        url=url or "",
        events=tuple(dict.fromkeys(events)) if events else (ALL_EVENTS,),
        secret=reader.get(section, "secret", path, _secret, ""),
    )
