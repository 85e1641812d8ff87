"""How steps talk to services: one shared client per run, and one request helper.

Every failure of a request is translated here, once, into a ``StepError`` whose kind the
engine's retry policy understands:

    httpx.TimeoutException                     -> timeout
    refused, DNS, reset, closed before answer  -> connection (naming the proxy, if any)
    a proxy variable httpx cannot use          -> connection (naming the variable)
    3xx, non-2xx, or a status not expected     -> http      (status_code, retry_after)
    2xx that is not the contracted JSON        -> protocol  (also: over 10 MiB, NaN)
    an answer that is not valid HTTP           -> protocol

This is the only module under ``aegis.steps`` that imports httpx at module level; step
modules import it inside their ``execute`` so that loading the registry stays cheap.
"""

from __future__ import annotations

import functools
import json as jsonlib
import math
import os
import re
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import httpx

from aegis import __version__
from aegis.config.model import ServiceSpec
from aegis.errors import StepError
from aegis.steps.base import StepContext
from aegis.text import printable

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_RESPONSE_BYTES",
    "Answer",
    "describe_answer",
    "describe_failure",
    "join_url",
    "open_client",
    "parse_retry_after",
    "protocol_error",
    "request",
    "request_json",
    "require_count",
    "require_list",
    "require_object",
    "service_headers",
    "ssl_context",
]

MAX_RESPONSE_BYTES = 10 * 1024 * 1024
# An error answer is only quoted, so reading more of it than an excerpt needs is waste.
MAX_ERROR_BYTES = 64 * 1024
EXCERPT_CHARS = 200
CONNECT_TIMEOUT = 10.0
USER_AGENT = f"aegis/{__version__}"
RETRY_AFTER_STATUSES = (429, 503)
# Loopback never goes through a proxy: with HTTP_PROXY set and no NO_PROXY (common on CI
# hosts), services on this machine, the demo ones included, would be unreachable.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# The variables httpx reads a proxy from (lower case too), the most specific first.
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """The process's one TLS context, made on first use as httpx makes its default.

    Loading the CA bundle takes tens of milliseconds and megabytes: done for every run's
    client, it was most of the cost of a short run, and of a server's memory growth.
    """
    return httpx.create_ssl_context()


@asynccontextmanager
async def open_client() -> AsyncIterator[httpx.AsyncClient]:
    """The one ``httpx.AsyncClient`` a run shares between its steps.

    Proxies come from the environment as httpx reads them, except for loopback, which is
    always reached directly. Only connecting has a timeout of its own: the engine bounds
    each attempt, and a second, lower read timeout here would fire first with a less
    useful message. Redirects are not followed (see ``request_json``).
    """
    options: dict[str, Any] = {
        "timeout": httpx.Timeout(None, connect=CONNECT_TIMEOUT),
        "follow_redirects": False,
        "headers": {"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING},
        "verify": ssl_context(),
    }
    # None: the client's own transport, which connects directly
    direct: dict[str, None] = {f"all://{host}": None for host in LOOPBACK_HOSTS}
    try:
        client = httpx.AsyncClient(mounts=direct, **options)
    except (ValueError, ImportError, httpx.InvalidURL) as exc:
        client = _client_refusing_proxied_requests(_proxy_problem(exc), options)
    async with client:
        yield client


def _proxy_problem(exc: BaseException) -> str:
    """Why the proxy settings cannot be used, naming the variable that holds them.

    httpx reads every proxy variable when a client is made, and refuses the whole client
    when one names a proxy it cannot use (an unknown scheme, a URL it cannot parse).
    """
    for name in PROXY_VARIABLES:
        variable, value = _variable(name)
        if not value:
            continue
        try:
            httpx.AsyncHTTPTransport(proxy=value if "://" in value else f"http://{value}")
        except (ValueError, ImportError, httpx.InvalidURL) as problem:
            return f"the proxy in {variable} ({value}) cannot be used: {_cause(problem)}"
    return f"the proxy settings in the environment cannot be used: {_cause(exc)}"


class _UnusableProxy(httpx.ConnectError):
    """A request that needed the proxy settings httpx could not use."""


def _proxy_for(url: str) -> str | None:
    """The proxy variable (and its value) that a request to ``url`` goes through, if any:
    named in connection errors, since httpx's own words do not say a proxy was involved.
    It follows httpx's reading: the scheme's variable, then ALL_PROXY; NO_PROXY exempts.
    """
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:  # not a URL at all: nothing was sent anywhere
        return None
    if host in LOOPBACK_HOSTS or f"[{host}]" in LOOPBACK_HOSTS:
        return None
    if _exempt(host, _variable("NO_PROXY")[1]):
        return None
    for name in (f"{parts.scheme.upper()}_PROXY", "ALL_PROXY"):
        variable, value = _variable(name)
        if value:
            return f"{variable} ({value})"
    return None


def _variable(name: str) -> tuple[str, str]:
    for variable in (name, name.lower()):
        if os.environ.get(variable):
            return variable, os.environ[variable]
    return name, ""


def _exempt(host: str, no_proxy: str) -> bool:
    for entry in (item.strip().lower() for item in no_proxy.split(",")):
        entry = entry.split("://")[-1].lstrip(".")
        if entry == "*" or host == entry or host.endswith("." + entry):
            return True
    return False


def _client_refusing_proxied_requests(problem: str, options: dict[str, Any]) -> httpx.AsyncClient:
    """A client that reaches loopback directly and fails every other request with
    ``problem``, so a bad proxy variable fails the steps that need it, readably."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise _UnusableProxy(problem, request=request)

    direct_transport = httpx.AsyncHTTPTransport(verify=options["verify"])
    mounts = {f"all://{host}": direct_transport for host in LOOPBACK_HOSTS}
    return httpx.AsyncClient(
        transport=httpx.MockTransport(refuse), mounts=mounts, trust_env=False, **options
    )


@dataclass
class _Exchange:
    """One request in flight, as error messages need to describe it."""

    service: str
    method: str
    url: str
    answered: bool = False
    redact: Callable[[str], str] | None = None  # hides secrets before text is shortened


async def request_json(
    ctx: StepContext,
    method: str,
    default_path: str,
    *,
    json: Any = None,
    expect: Iterable[int] = (200,),
) -> Any:
    """Send one request to the step's service and return its decoded JSON answer.

    The path is ``with.path`` when the step sets it, else ``default_path``; it may carry a
    query string. Raises ``StepError`` (kind ``timeout``, ``connection``, ``http`` or
    ``protocol``) for every way the exchange can fail.
    """
    service = _service_of(ctx)
    url = join_url(service.url, _path_of(ctx, default_path))
    exchange = _Exchange(service.key, method, url, redact=ctx.redactor.text)
    try:
        async with ctx.http.stream(
            method, url, json=json, headers=service_headers(service, ctx.environ)
        ) as response:
            exchange.answered = True
            return await _receive(exchange, response, tuple(expect))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _translate(exc, exchange) from exc


def describe_failure(exc: BaseException, service: str, url: str, method: str = "GET") -> str:
    """A one-line reason why a request to ``service`` at ``url`` failed with ``exc``.

    For callers outside steps (health checks) that use the shared client directly.
    """
    if isinstance(exc, (httpx.HTTPError, httpx.InvalidURL)):
        return _translate(exc, _Exchange(service, method, url)).message
    return f"request to {service} at {url} failed: {_cause(exc)}"


def join_url(base: str, path: str) -> str:
    """``base`` with ``path`` appended, keeping any path prefix the base URL has."""
    if not path:
        return base
    return base.rstrip("/") + "/" + path.lstrip("/")


def service_headers(service: ServiceSpec, environ: Mapping[str, str]) -> dict[str, str]:
    """``X-API-Key`` when the service names an ``api_key_env`` that is set and not empty."""
    key = environ.get(service.api_key_env) if service.api_key_env else None
    return {"X-API-Key": key} if key else {}


def _service_of(ctx: StepContext) -> ServiceSpec:
    if ctx.service is None:
        raise StepError("error", f"step {ctx.spec.name!r} needs a service")
    return ctx.service


def _path_of(ctx: StepContext, default_path: str) -> str:
    path = ctx.spec.params.get("path", default_path)
    if not isinstance(path, str):
        raise StepError("error", f"step {ctx.spec.name!r}: with.path must be a string")
    return path


async def _receive(exchange: _Exchange, response: httpx.Response, expect: tuple[int, ...]) -> Any:
    body = await _expected_body(exchange, response, expect)
    return _decode_json(exchange, response.status_code, body)


async def _expected_body(
    exchange: _Exchange, response: httpx.Response, expect: tuple[int, ...]
) -> bytearray:
    """The body of an answer whose status is expected; else the ``StepError`` for it."""
    status = response.status_code
    if 300 <= status < 400:
        raise _redirect_error(exchange, response)
    if status not in expect:
        body = await _read(exchange, response, MAX_ERROR_BYTES, strict=False)
        raise _status_error(exchange, response, body, expect)
    return await _read(exchange, response, MAX_RESPONSE_BYTES, strict=True)


def _decode_json(exchange: _Exchange, status: int, body: bytearray) -> Any:
    """The JSON in ``body``; raises a ``protocol`` ``StepError`` when it is not JSON."""
    answered = f"{exchange.service} answered HTTP {status} to {exchange.method} {exchange.url}"
    try:
        # UTF-8 only (RFC 8259): json.loads(bytes) would also take UTF-16 and let encoded
        # surrogates through, which nothing downstream could print or store.
        text = body.decode("utf-8-sig")
        answer = jsonlib.loads(text, parse_constant=_not_json, parse_float=_finite)
    except _NotFinite as exc:
        raise StepError("protocol", f"{answered} with {exc}, which JSON does not allow") from exc
    except ValueError as exc:  # also UnicodeDecodeError
        if not body.strip():
            raise StepError("protocol", f"{answered} with an empty body") from exc
        raise StepError(
            "protocol",
            f"{answered} with a body that is not JSON: "
            f"'{_excerpt(body.decode('utf-8', 'replace'), exchange.redact)}'",
        ) from exc
    except RecursionError as exc:  # [[[[… thousands deep: the parser gives up
        raise StepError("protocol", f"{answered} with JSON nested too deeply to read") from exc
    return _without_lone_surrogates(answer) if _SURROGATE_ESCAPE.search(text) else answer


# A \uD800-\uDFFF escape; a valid pair becomes one character when parsed, but a lone one
# stays a surrogate, which no UTF-8 output (stdout, the API, SQLite) can encode.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {
            _without_lone_surrogates(key): _without_lone_surrogates(item)
            for key, item in value.items()
        }
    return value


class _NotFinite(ValueError):
    """NaN or an infinity in an answer: Python reads them, but no JSON consumer of the run
    record (the API, ``--json``) could, so the answer is refused where it arrives."""


def _not_json(constant: str) -> Any:
    raise _NotFinite(constant)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise _NotFinite(f"the number {_excerpt(text)}")
    return value


async def _read(
    exchange: _Exchange, response: httpx.Response, limit: int, *, strict: bool
) -> bytearray:
    """The body, streamed and decoded; past ``limit`` bytes fail (``strict``) or stop.

    Memory stays near ``limit`` whatever the service sends: a compressed answer is
    inflated a bounded piece at a time, so a small gzip bomb cannot expand at once.
    """
    declared = response.headers.get("content-length", "")
    if strict and declared.isdigit() and int(declared) > limit:
        raise _too_large(exchange)
    inflater = _inflater(exchange, response)
    body = bytearray()
    async for raw in response.aiter_raw():
        pieces = inflater.pieces(raw, limit + 1 - len(body)) if inflater else (raw,)
        for piece in pieces:
            body += piece
            if len(body) > limit:
                if strict:
                    raise _too_large(exchange)
                del body[limit:]
                return body
    return body


# What the client asks for; httpx would add br and zstd when their packages happen to be
# installed, and then decode them without any bound on the output.
ACCEPT_ENCODING = "gzip, deflate"
# The most one step of inflating may produce, so a body near the limit is not held twice.
INFLATE_PIECE = 256 * 1024


class _Inflater:
    """Decodes a gzip or deflate body, never more than asked for from one input piece."""

    def __init__(self, exchange: _Exchange, encoding: str) -> None:
        self._where = f"{exchange.service} at {exchange.url}"
        self._raw_fallback = encoding == "deflate"  # some servers send deflate unwrapped
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 32)  # 32: gzip or zlib header

    def pieces(self, data: bytes, most: int) -> Iterator[bytes]:
        while data:
            try:
                out = self._zlib.decompress(data, min(max(most, 1), INFLATE_PIECE))
            except zlib.error as exc:
                if self._raw_fallback:
                    self._raw_fallback = False
                    self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise StepError(
                    "protocol", f"cannot decode the answer of {self._where}: {exc}"
                ) from exc
            self._raw_fallback = False
            data = self._zlib.unconsumed_tail
            if out:
                yield out


def _inflater(exchange: _Exchange, response: httpx.Response) -> _Inflater | None:
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _Inflater(exchange, encoding)
    raise StepError(
        "protocol",
        f"cannot decode the answer of {exchange.service} at {exchange.url}: "
        f"unsupported Content-Encoding {encoding!r}",
    )


def _too_large(exchange: _Exchange) -> StepError:
    return StepError(
        "protocol",
        f"answer from {exchange.service} to {exchange.method} {exchange.url} is larger than "
        f"{MAX_RESPONSE_BYTES // (1024 * 1024)} MiB",
    )


def _redirect_error(exchange: _Exchange, response: httpx.Response) -> StepError:
    # Following a redirect silently could turn a POST into a GET or leak the API key to
    # another host; the user should point the config at the final address instead.
    location = _excerpt(response.headers.get("location", "(no Location header)"), exchange.redact)
    return StepError(
        "http",
        f"HTTP {response.status_code} from {exchange.service}: redirect to {location} not "
        "followed; point the service url or the step's with.path at the final address",
        status_code=response.status_code,
    )


def _status_error(
    exchange: _Exchange, response: httpx.Response, body: bytearray, expect: tuple[int, ...]
) -> StepError:
    status = response.status_code
    if 200 <= status < 300:
        # A success the step cannot use (say 200 where 201 means "filed"): quoting the
        # body would hide what is wrong.
        detail = "expected " + " or ".join(str(code) for code in expect)
    else:
        detail = describe_answer(body, exchange.redact) or _reason(status)
    retry_after = None
    if status in RETRY_AFTER_STATUSES:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
    message = f"HTTP {status} from {exchange.service}" + (f": {detail}" if detail else "")
    return StepError("http", message, status_code=status, retry_after=retry_after)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def describe_answer(body: bytes | bytearray, redact: Callable[[str], str] | None = None) -> str:
    """A short, one-line excerpt of an error answer: its JSON message, else its text.

    FastAPI's ``detail`` (a string, or a list of ``{loc, msg}``) comes first, then an
    ``error`` (a string, or an object with a ``message``), then a ``message``. ``redact``
    hides secrets in the whole text before it is shortened.
    """
    text = body.decode("utf-8", "replace")
    try:
        payload = jsonlib.loads(text)
    except ValueError:
        payload = None
    return _excerpt(_json_message(payload) or text, redact)


def _json_message(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return None
    detail = payload.get("detail")
    if isinstance(detail, str) and detail:
        return detail
    if isinstance(detail, list) and detail:
        return "; ".join(_validation_item(item) for item in detail)
    error = payload.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    if isinstance(error, str) and error:
        return error
    message = payload.get("message")
    return message if isinstance(message, str) and message else None


def _validation_item(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    loc = item.get("loc")
    where = ".".join(str(part) for part in loc) if isinstance(loc, list) else ""
    msg = str(item.get("msg", "invalid"))
    return f"{where}: {msg}" if where else msg


def _excerpt(text: str, redact: Callable[[str], str] | None = None) -> str:
    """One line of at most ``EXCERPT_CHARS``; control characters are shown escaped, so
    a service's words cannot drive the terminal that prints the message (ESC[2J …).
    ``redact`` runs on the whole text first: a cut through a secret would leave all but
    its last characters, which no redactor could recognise afterwards."""
    if redact is not None:
        text = redact(text)
    flat = printable(" ".join(text.split()))
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP-date).

    ``None`` when the value is missing or unreadable; a date in the past gives ``0``.
    """
    if not value or not value.strip():
        return None
    value = value.strip()
    seconds: float | None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until(value, now or datetime.now(timezone.utc))
    if seconds is None or not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _seconds_until(http_date: str, now: datetime) -> float | None:
    try:
        moment = parsedate_to_datetime(http_date)
    except (TypeError, ValueError):  # TypeError on Python 3.10 for garbage
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - now).total_seconds()


def _translate(exc: httpx.HTTPError | httpx.InvalidURL, exchange: _Exchange) -> StepError:
    where = f"{exchange.service} at {exchange.url}"
    if isinstance(exc, _UnusableProxy):
        return StepError("connection", f"cannot connect to {where}: {exc}")
    proxy = _proxy_for(exchange.url)
    if proxy:
        where += f" through the proxy in {proxy}"
    if isinstance(exc, httpx.InvalidURL):
        return StepError("connection", f"cannot connect to {where}: invalid URL ({exc})")
    if isinstance(exc, httpx.TimeoutException):
        doing = "connecting to" if isinstance(exc, httpx.ConnectTimeout) else "waiting for"
        return StepError("timeout", f"timed out {doing} {where}")
    if isinstance(exc, httpx.DecodingError):
        return StepError("protocol", f"cannot decode the answer of {where}: {_cause(exc)}")
    if isinstance(exc, httpx.RemoteProtocolError) and not _closed_early(exc):
        # A status line, header or chunk that is not HTTP: retrying will not mend it.
        return StepError("protocol", f"{where} did not answer in valid HTTP: {_quoted(exc)}")
    if exchange.answered:
        return StepError(
            "connection", f"connection to {where} lost while reading the answer: {_cause(exc)}"
        )
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)):
        # Connected, sent (part of) the request, then the line went dead: "cannot
        # connect" would send the user looking at the wrong thing.
        return StepError(
            "connection", f"connection to {where} lost before an answer: {_cause(exc)}"
        )
    return StepError("connection", f"cannot connect to {where}: {_cause(exc)}")


# h11 quotes the offending bytes as a Python repr: bytearray(b'HELLO WORLD')
_BYTES_REPR = re.compile(r"""bytearray\(b(['"])(.*?)\1\)""")


def _quoted(exc: httpx.RemoteProtocolError) -> str:
    """h11's words for a malformed answer, with the bytes it quotes shown as text."""
    return _BYTES_REPR.sub(lambda match: f"'{match[2]}'", _cause(exc))


def _closed_early(exc: httpx.RemoteProtocolError) -> bool:
    # httpx words the peer closing early in these two ways (httpcore and h11); every other
    # RemoteProtocolError is a malformed answer.
    text = str(exc).lower()
    return "disconnected" in text or "peer closed" in text


_ERRNO_PREFIX = re.compile(r"^\[Errno -?\d+\]\s*")


def _cause(exc: BaseException) -> str:
    """The most telling reason in an exception chain, e.g. ``connection refused``."""
    reason = ""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            reason = _os_reason(current) or reason
        current = current.__cause__ or current.__context__
    if not reason:
        reason = _ERRNO_PREFIX.sub("", str(exc)) or type(exc).__name__
    reason = reason.rstrip(".")
    return reason[:1].lower() + reason[1:]


def _os_reason(error: OSError) -> str | None:
    # asyncio words a refused connection "Connect call failed (host, port)"; the errno's
    # own text says what happened. Resolver errors have negative codes of their own.
    if error.errno and error.errno > 0 and not isinstance(error, socket.gaierror):
        return os.strerror(error.errno)
    return error.strerror


def protocol_error(ctx: StepContext, problem: str) -> StepError:
    """A ``protocol`` failure: the service answered 2xx but not with the contracted shape."""
    name = ctx.service.key if ctx.service else ctx.spec.name
    return StepError("protocol", f"unexpected answer from {name}: {problem}")


def require_object(ctx: StepContext, value: Any, what: str = "the answer") -> dict[str, Any]:
    """``value`` when it is a JSON object, else raises a ``protocol`` ``StepError``."""
    if not isinstance(value, dict):
        raise protocol_error(ctx, f"{what} should be a JSON object, got {_kind(value)}")
    return value


def require_list(ctx: StepContext, body: dict[str, Any], key: str) -> list[Any]:
    """``body[key]`` when it is a list, else raises a ``protocol`` ``StepError``."""
    value = body.get(key)
    if not isinstance(value, list):
        raise protocol_error(ctx, f"{key!r} should be a list, got {_kind(value, key in body)}")
    return value


def require_count(ctx: StepContext, body: dict[str, Any], key: str) -> int:
    """``body[key]`` when it is an integer >= 0, else raises a ``protocol`` ``StepError``."""
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise protocol_error(
            ctx, f"{key!r} should be an integer >= 0, got {_kind(value, key in body)}"
        )
    return value


def _kind(value: Any, present: bool = True) -> str:
    if not present:
        return "nothing (missing)"
    if value is None:
        return "null"
    shown = repr(value)
    return shown if len(shown) <= 40 else type(value).__name__


@dataclass(frozen=True)
class Answer:
    """A service's answer to ``request``: the status, and the body as JSON (``None`` when
    the body is empty, or is not JSON and does not say it is) and as text."""

    status: int
    json: Any
    text: str


async def request(
    ctx: StepContext,
    method: str,
    path: str,
    *,
    query: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    expect: Iterable[int] | None = None,
) -> Answer:
    """Send any request to the step's service, for steps that are not on the contract.

    ``path`` is used as given (already percent-encoded), ``query`` is encoded by httpx;
    ``headers`` come after the service's own (``X-API-Key``). ``expect`` defaults to any
    2xx status. Raises ``StepError`` as ``request_json`` does.
    """
    service = _service_of(ctx)
    url = join_url(service.url, path)
    exchange = _Exchange(service.key, method, url)
    sent = {**service_headers(service, ctx.environ), **(headers or {})}
    expected = tuple(expect) if expect is not None else tuple(range(200, 300))
    try:
        async with ctx.http.stream(
            method, url, params=query, headers=sent, content=content
        ) as response:
            exchange.answered = True
            status = response.status_code
            body = await _expected_body(exchange, response, expected)
            says_json = "json" in response.headers.get("content-type", "").lower()
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _translate(exc, exchange) from exc
    text = body.decode("utf-8", "replace")
    if not body.strip():
        return Answer(status, None, text)
    try:
        return Answer(status, _decode_json(exchange, status, body), text)
    except StepError:
        if says_json:
            raise
        return Answer(status, None, text)
