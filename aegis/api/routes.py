"""Routes as data: what the API answers, matched without a server.

A ``Route`` names a method, a path template (``/api/runs/{run_id}``), the handler, and what
the OpenAPI document says about it: summary, parameters, answers. ``Router`` compiles the
templates once and has three outcomes for a request::

    no template matches the path        -> HttpError 404
    a template matches, the method not  -> HttpError 405 with an ``Allow`` header
    both match                          -> Match(route, path_params)

Parameters are declared once and used twice: ``Param.parse`` validates a request's value
(``HttpError`` 400 when it is wrong), ``Param.schema`` describes it in the OpenAPI document.
``Request``, ``Response`` and ``HttpError`` are the plain types handlers take and give.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import unquote

__all__ = [
    "ERROR_CODES",
    "JSON_TYPE",
    "MAX_INTEGER",
    "Answer",
    "Handler",
    "HttpError",
    "Match",
    "Param",
    "Request",
    "Response",
    "Route",
    "Router",
    "Writer",
    "dump_json",
    "error_body",
    "json_response",
]

# Stable codes for the error body; HTTPStatus phrases differ between Python versions (413).
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
    505: "http_version_not_supported",
}

JSON_TYPE = "application/json"
# Bounds every integer parameter keeps (within SQLite's 64-bit INTEGER), stated in the
# OpenAPI document when the parameter declares none of its own.
MAX_INTEGER = 10**18 - 1
MAX_NUMBER_CHARS = 64  # longer digit strings are refused before int() or float() reads them
_INTEGER = re.compile(r"-?[0-9]+")
# Decimals as any language prints a float, exponent included (JavaScript's 1e-7, 1e+21).
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_TEMPLATE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def dump_json(data: Any) -> bytes:
    """Compact JSON bytes; NaN and infinities are refused rather than sent as invalid JSON."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


# ------------------------------------------------------------------ requests and answers


@dataclass
class Request:
    """One request as a handler sees it; ``params`` holds path and validated query values."""

    method: str
    path: str
    query: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # anything with .get(name): the server passes http.server's case-insensitive Message
    headers: Any = field(default_factory=dict)
    body: bytes = b""
    params: dict[str, Any] = field(default_factory=dict)


class Writer(Protocol):
    """Where an event stream goes: ``write`` sends (raising ``OSError`` once the client
    is gone); ``gone`` tells, without sending, that the client closed or stopped reading."""

    def write(self, data: bytes) -> None: ...

    def gone(self) -> bool: ...


@dataclass
class Response:
    """An answer. ``stream`` (for Server-Sent Events) writes the body itself, unbounded."""

    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    stream: Callable[[Writer], None] | None = None


def json_response(status: int, data: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, dump_json(data), JSON_TYPE, headers or {})


class HttpError(Exception):
    """An error answer: the JSON error body with ``status``, ``code`` and ``message``."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.message = message or _phrase(status)
        self.headers = headers or {}
        self.extra = extra or {}
        super().__init__(f"{status} {self.message}")

    @property
    def code(self) -> str:
        return ERROR_CODES.get(self.status, f"http_{self.status}")

    def response(self) -> Response:
        return json_response(self.status, error_body(self), dict(self.headers))


def error_body(error: HttpError) -> dict[str, Any]:
    return {
        "error": {
            "status": error.status,
            "code": error.code,
            "message": error.message,
            **error.extra,
        }
    }


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# ------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Param:
    """A path, query or header parameter: how it is validated and how it is documented.

    ``type`` is ``string``, ``integer`` or ``number``. A missing optional parameter takes
    ``default``. Integers are plain ASCII decimals within ``MAX_INTEGER`` either way unless
    the parameter declares tighter bounds; numbers are ASCII decimals with an optional
    exponent (no ``+`` sign, ``_``, ``nan`` or ``inf``), and every parsed number is finite.
    Strings are non-empty; a header's value is taken without surrounding spaces and tabs.
    """

    name: str
    where: str = "query"
    type: str = "string"
    description: str = ""
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    enum: tuple[str, ...] | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.where not in ("path", "query", "header"):
            raise ValueError(f"parameter {self.name}: unknown location {self.where!r}")
        if self.type not in ("string", "integer", "number"):
            raise ValueError(f"parameter {self.name}: unknown type {self.type!r}")

    def parse(self, raw: str) -> Any:
        """The value of ``raw``; raises ``HttpError`` 400 naming what was expected."""
        text = raw.strip(" \t") if self.where == "header" else raw
        value: Any = text
        short = len(text) <= MAX_NUMBER_CHARS
        if self.type == "integer":
            value = int(text) if short and _INTEGER.fullmatch(text) else None
        elif self.type == "number":
            value = float(text) if short and _NUMBER.fullmatch(text) else None
            if value is not None and not math.isfinite(value):
                value = None  # 1e999
        if value is None or not self._acceptable(value):
            raise HttpError(400, f"{self.where} parameter '{self.name}' must be {self.expected()}")
        return value

    def _acceptable(self, value: Any) -> bool:
        if isinstance(value, str):
            if self.enum is not None:
                return value in self.enum
            return bool(value) and (self.max_length is None or len(value) <= self.max_length)
        low, high = self._bounds()
        return (
            (low is None or value >= low)
            and (high is None or value <= high)
            and (self.exclusive_minimum is None or value > self.exclusive_minimum)
        )

    def _bounds(self) -> tuple[float | None, float | None]:
        """The minimum and maximum in force: the declared ones, for integers else
        ``MAX_INTEGER`` (and its negative, without an exclusive minimum)."""
        low, high = self.minimum, self.maximum
        if self.type == "integer":
            if low is None and self.exclusive_minimum is None:
                low = -MAX_INTEGER
            if high is None:
                high = MAX_INTEGER
        return low, high

    def expected(self) -> str:
        """What a valid value looks like, in words (for the 400 message)."""
        if self.enum is not None:
            return "one of " + ", ".join(self.enum)
        if self.type == "string":
            limit = f" of at most {self.max_length} characters" if self.max_length else ""
            return f"a non-empty string{limit}"
        noun = "an integer" if self.type == "integer" else "a number"
        low, high = self._bounds()
        if low is not None and high is not None:
            return f"{noun} from {_shown(low)} to {_shown(high)}"
        bounds = []
        if self.exclusive_minimum is not None:
            bounds.append(f"above {_shown(self.exclusive_minimum)}")
        if low is not None:
            bounds.append(f"at least {_shown(low)}")
        if high is not None:
            bounds.append(f"at most {_shown(high)}")
        return " ".join([noun, " and ".join(bounds)]).strip()

    def schema(self) -> dict[str, Any]:
        """The JSON Schema of the value."""
        schema: dict[str, Any] = {"type": self.type}
        low, high = self._bounds()
        free_text = self.type == "string" and self.enum is None
        for key, value in (
            ("minimum", low),
            ("maximum", high),
            ("exclusiveMinimum", self.exclusive_minimum),
            ("minLength", 1 if free_text else None),
            ("maxLength", self.max_length),
            # a header value of spaces and tabs only arrives empty
            ("pattern", "[^ \t]" if free_text and self.where == "header" else None),
            ("default", self.default),
        ):
            if value is not None:
                schema[key] = value
        if self.enum is not None:
            schema["enum"] = list(self.enum)
        return schema


def _shown(bound: float) -> str:
    """A bound in a message: integers in full (``:g`` would round 10**18 - 1 to 1e+18)."""
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


# ----------------------------------------------------------------------------- routes

Handler = Callable[[Any, Request], Response]


@dataclass(frozen=True)
class Answer:
    """One documented answer of a route: status, description and the schema of its body.

    ``schema`` names a component of the OpenAPI document (``None``: no JSON body).
    """

    status: int
    description: str
    schema: str | None = None
    media: str = JSON_TYPE


@dataclass(frozen=True)
class Route:
    """One method on one path template, with what the API documentation says about it.

    ``errors`` lists the error statuses this route answers besides the ones every route
    may give (500, 503). ``auth`` is true for routes that need the API key when one is set;
    with ``auth.protect: all`` every route but the ``public`` ones does.
    """

    method: str
    path: str
    handler: Handler
    summary: str
    answers: tuple[Answer, ...]
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    body: str | None = None
    tag: str = "api"
    description: str = ""
    operation: str = ""

    @property
    def auth(self) -> bool:
        return self.method == "POST"

    @property
    def public(self) -> bool:
        """Never needs the key, even with ``auth.protect: all``: the page's own files
        (it asks for the key itself) and the liveness check."""
        return self.tag == "landing" or self.path == "/health"

    @property
    def name(self) -> str:
        """The operation id: ``operation``, else the handler's name."""
        return self.operation or self.handler.__name__

    def path_names(self) -> list[str]:
        return _TEMPLATE_PARAM.findall(self.path)

    def parse(self, request: Request) -> dict[str, Any]:
        """The route's query and header parameters of ``request``, validated.

        Raises ``HttpError`` 400 for a bad value, a missing required value, or a
        parameter given more than once.
        """
        values: dict[str, Any] = {}
        for param in self.params:
            if param.where == "path":
                continue
            raw = self._raw(param, request)
            if raw is None:
                if param.required:
                    raise HttpError(400, f"{param.where} parameter '{param.name}' is required")
                values[param.name] = param.default
            else:
                values[param.name] = param.parse(raw)
        return values

    @staticmethod
    def _raw(param: Param, request: Request) -> str | None:
        if param.where == "header":
            value = request.headers.get(param.name)
            return None if value is None else str(value)
        given = request.query.get(param.name)
        if not given:
            return None
        if len(given) > 1:
            raise HttpError(400, f"query parameter '{param.name}' is given more than once")
        return given[0]


@dataclass(frozen=True)
class Match:
    route: Route
    path_params: dict[str, str]


class Router:
    """Matches requests against a route table compiled once, at construction.

    Raises ``ValueError`` for a table that cannot work: a method and path twice, or a
    template whose ``{names}`` differ from its declared path parameters.
    """

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        # Literal paths are a dict lookup; templates are tried in table order.
        self._static: dict[str, dict[str, Route]] = {}
        self._templates: dict[str, tuple[re.Pattern[str], dict[str, Route]]] = {}
        for route in self.routes:
            self._add(route)

    def _add(self, route: Route) -> None:
        names = route.path_names()
        declared = [p.name for p in route.params if p.where == "path"]
        if sorted(names) != sorted(declared):
            raise ValueError(f"{route.method} {route.path}: path parameters {declared} != {names}")
        if names:
            _, methods = self._templates.setdefault(route.path, (_compile(route.path), {}))
        else:
            methods = self._static.setdefault(route.path, {})
        if route.method in methods:
            raise ValueError(f"{route.method} {route.path} is in the table twice")
        methods[route.method] = route

    def match(self, method: str, path: str) -> Match:
        """The route for ``method`` on ``path`` (HEAD is answered as GET).

        Raises ``HttpError`` 404 when no template matches and 405 (with ``Allow``) when
        the path matches but the method does not.
        """
        methods, params = self._methods(path)
        route = methods.get("GET" if method == "HEAD" else method)
        if route is None:
            allow = ", ".join(allowed_methods(methods))
            raise HttpError(
                405,
                f"{method} is not allowed on {path} (allowed: {allow})",
                headers={"Allow": allow},
            )
        return Match(route, params)

    def allowed(self, path: str) -> list[str]:
        """The methods ``path`` answers; empty for an unknown path."""
        try:
            methods, _ = self._methods(path)
        except HttpError:
            return []
        return allowed_methods(methods)

    def _methods(self, path: str) -> tuple[dict[str, Route], dict[str, str]]:
        methods = self._static.get(path)
        if methods is not None:
            return methods, {}
        for pattern, candidates in self._templates.values():
            found = pattern.fullmatch(path)
            if found:
                params = {k: unquote(v) for k, v in found.groupdict().items()}
                return candidates, params
        raise HttpError(404, f"no route for {path}")


def allowed_methods(methods: Mapping[str, Route]) -> list[str]:
    allowed = set(methods)
    if "GET" in allowed:
        allowed.add("HEAD")
    return sorted(allowed)


def _compile(template: str) -> re.Pattern[str]:
    """A template as an anchored pattern; each ``{name}`` is one non-empty path segment."""
    parts = _TEMPLATE_PARAM.split(template)
    pattern = "".join(
        f"(?P<{part}>[^/]+)" if index % 2 else re.escape(part) for index, part in enumerate(parts)
    )
    return re.compile(pattern)
