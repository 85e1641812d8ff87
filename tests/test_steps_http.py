"""The step HTTP helpers: one request, every way it can fail, each failure translated once."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import respx
from conftest import MakeContext

from aegis.config.model import ServiceSpec
from aegis.demo import DemoServices, Fault
from aegis.errors import StepError
from aegis.services import check_service
from aegis.steps import http
from aegis.steps.http import (
    MAX_RESPONSE_BYTES,
    describe_answer,
    join_url,
    open_client,
    parse_retry_after,
    request_json,
    require_count,
    require_list,
    require_object,
    service_headers,
)

URL = "http://svc.test/api/routes"


async def fail(ctx: Any, **kwargs: Any) -> StepError:
    with pytest.raises(StepError) as caught:
        await request_json(ctx, "GET", "/api/routes", **kwargs)
    return caught.value


# --------------------------------------------------------------------------- success


async def test_returns_decoded_json(make_context: MakeContext, respx_mock: respx.Router) -> None:
    respx_mock.get(URL).respond(200, json={"routes": [1, 2]})
    assert await request_json(make_context("discover"), "GET", "/api/routes") == {"routes": [1, 2]}


async def test_with_path_overrides_and_keeps_its_query(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    route = respx_mock.post("http://svc.test/base/api/runs", params={"suite": "api"})
    route.respond(201, json={"ok": True})
    ctx = make_context("test", "http://svc.test/base/", params={"path": "/api/runs?suite=api"})
    answer = await request_json(ctx, "POST", "/api/runs", json={"routes": []}, expect=(201,))
    assert answer == {"ok": True}
    assert json.loads(route.calls.last.request.content) == {"routes": []}


@pytest.mark.parametrize(
    ("environ", "sent"),
    [({"SVC_KEY": "s3cret"}, "s3cret"), ({"SVC_KEY": ""}, None), ({}, None)],
)
async def test_api_key_is_sent_only_when_its_variable_is_set(
    make_context: MakeContext,
    respx_mock: respx.Router,
    environ: dict[str, str],
    sent: str | None,
) -> None:
    route = respx_mock.get(URL).respond(200, json={})
    await request_json(
        make_context("discover", environ=environ, api_key_env="SVC_KEY"), "GET", "/api/routes"
    )
    assert route.calls.last.request.headers.get("x-api-key") == sent


def test_service_headers_without_api_key_env() -> None:
    service = ServiceSpec(key="svc", name="Svc", url="http://svc.test")
    assert service_headers(service, {"QAAGENT_API_KEY": "x"}) == {}


@pytest.mark.parametrize(
    ("base", "path", "joined"),
    [
        ("http://h:1", "/api/routes", "http://h:1/api/routes"),
        ("http://h:1/", "/api/routes", "http://h:1/api/routes"),
        ("http://h:1/qa", "api/runs?suite=x", "http://h:1/qa/api/runs?suite=x"),
        ("http://h:1/qa/", "", "http://h:1/qa/"),
    ],
)
def test_join_url(base: str, path: str, joined: str) -> None:
    assert join_url(base, path) == joined


async def test_open_client_shares_one_client_with_a_connect_timeout_only() -> None:
    async with open_client() as client:
        assert isinstance(client, httpx.AsyncClient)
        assert client.timeout.connect == http.CONNECT_TIMEOUT
        assert client.timeout.read is None
        assert client.follow_redirects is False
        assert client.headers["user-agent"].startswith("aegis/")
    assert client.is_closed


# --------------------------------------------------------------------------- transport failures


async def test_read_timeout_is_kind_timeout(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    respx_mock.get(URL).mock(side_effect=httpx.ReadTimeout("slow"))
    error = await fail(make_context("discover"))
    assert (error.kind, error.message) == ("timeout", f"timed out waiting for svc at {URL}")


async def test_connect_timeout_is_kind_timeout(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    respx_mock.get(URL).mock(side_effect=httpx.ConnectTimeout("slow"))
    error = await fail(make_context("discover"))
    assert (error.kind, error.message) == ("timeout", f"timed out connecting to svc at {URL}")


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"),
         "cannot connect to svc at URL: connection refused"),
        (httpx.ConnectError("[Errno -2] Name or service not known"),
         "cannot connect to svc at URL: name or service not known"),
        (httpx.ConnectError(""), "cannot connect to svc at URL: connectError"),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."),
         "connection to svc at URL lost before an answer: "
         "server disconnected without sending a response"),
        (httpx.ReadError("Connection reset by peer"),
         "connection to svc at URL lost before an answer: connection reset by peer"),
        (httpx.WriteError("Broken pipe"),
         "connection to svc at URL lost before an answer: broken pipe"),
        (httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."),
         "cannot connect to svc at URL: request URL has an unsupported protocol 'ftp://'"),
    ],
)  # fmt: skip
async def test_transport_errors_are_kind_connection(
    make_context: MakeContext, respx_mock: respx.Router, exc: Exception, message: str
) -> None:
    respx_mock.get(URL).mock(side_effect=exc)
    error = await fail(make_context("discover"))
    assert error.kind == "connection"
    assert error.message == message.replace(" at URL", f" at {URL}")
    assert error.__cause__ is exc


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("bad Content-Length", "bad Content-Length"),
        ("illegal status line: bytearray(b'SSH-2.0')", "illegal status line: 'SSH-2.0'"),
        ('illegal header line: bytearray(b"it\'s")', "illegal header line: 'it's'"),
    ],
)
async def test_an_answer_that_is_not_http_is_kind_protocol(
    make_context: MakeContext, respx_mock: respx.Router, text: str, shown: str
) -> None:
    respx_mock.get(URL).mock(side_effect=httpx.RemoteProtocolError(text))
    error = await fail(make_context("discover"))
    assert (error.kind, error.message) == (
        "protocol",
        f"svc at {URL} did not answer in valid HTTP: {shown}",
    )


async def test_a_body_cut_short_is_kind_connection(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    cut = httpx.RemoteProtocolError(
        "peer closed connection without sending complete message body (received 2 bytes, "
        "expected 100)"
    )
    respx_mock.get(URL).respond(200, content=chunks(b"{}", then=cut))
    error = await fail(make_context("discover"))
    assert error.kind == "connection"
    assert error.message.startswith(f"connection to svc at {URL} lost while reading the answer: ")


@pytest.mark.parametrize(
    ("deepest", "reason"),
    [
        (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)"), "connection refused"),
        (socket.gaierror(-2, "Name or service not known"), "name or service not known"),
        (OSError(None, "Odd failure"), "odd failure"),
        (OSError("no errno at all"), "something generic"),
    ],
)
def test_the_reason_is_the_deepest_os_error_in_the_chain(deepest: OSError, reason: str) -> None:
    middle = RuntimeError("wrapped")
    middle.__cause__ = deepest
    outer = httpx.ConnectError("Something generic.")
    outer.__context__ = middle
    deepest.__context__ = outer  # a cycle must not loop forever
    assert http._cause(outer) == reason


async def test_invalid_url_is_kind_connection(make_context: MakeContext) -> None:
    error = await fail(make_context("discover", "http://[::1"))
    assert error.kind == "connection"
    assert error.message.startswith("cannot connect to svc at http://[::1/api/routes: invalid URL")


async def chunks(*parts: bytes, then: Exception | None = None) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    if then is not None:
        raise then


async def test_connection_lost_mid_answer_is_kind_connection(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    body = chunks(b'{"routes": [', then=httpx.ReadError("Connection reset by peer"))
    respx_mock.get(URL).respond(200, content=body)
    error = await fail(make_context("discover"))
    assert error.kind == "connection"
    assert error.message == (
        f"connection to svc at {URL} lost while reading the answer: connection reset by peer"
    )


async def test_undecodable_content_encoding_is_kind_protocol(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    respx_mock.get(URL).respond(
        200, headers={"Content-Encoding": "gzip"}, content=chunks(b"not gzip")
    )
    error = await fail(make_context("discover"))
    assert error.kind == "protocol"
    assert error.message.startswith(f"cannot decode the answer of svc at {URL}: ")


# --------------------------------------------------------------------------- status codes


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (503, {"detail": "down for maintenance"}, "HTTP 503 from svc: down for maintenance"),
        (
            422,
            {"detail": [
                {"loc": ["body", "title"], "msg": "Field required", "type": "missing"},
                {"loc": ["body", "steps_to_reproduce", 0], "msg": "Input should be a valid string"},
            ]},
            "HTTP 422 from svc: body.title: Field required; "
            "body.steps_to_reproduce.0: Input should be a valid string",
        ),
        (422, {"detail": ["odd", {"msg": "no loc"}, {}]},
         "HTTP 422 from svc: odd; no loc; invalid"),
        (401, {"error": {"status": 401, "message": "bad key"}}, "HTTP 401 from svc: bad key"),
        (400, {"error": "bad request body"}, "HTTP 400 from svc: bad request body"),
        (500, {"message": "boom"}, "HTTP 500 from svc: boom"),
        (500, {"detail": "", "error": 3, "message": ""},
         'HTTP 500 from svc: {"detail":"","error":3,"message":""}'),
        (502, ["not", "an object"], 'HTTP 502 from svc: ["not","an object"]'),
        (500, "Internal\n   error  text", "HTTP 500 from svc: Internal error text"),
        (500, "", "HTTP 500 from svc: Internal Server Error"),
        (599, "", "HTTP 599 from svc"),
    ],
)  # fmt: skip
async def test_error_status_quotes_the_service(
    make_context: MakeContext, respx_mock: respx.Router, status: int, body: Any, message: str
) -> None:
    if isinstance(body, str):
        respx_mock.get(URL).respond(status, text=body)
    else:
        respx_mock.get(URL).respond(status, json=body)
    error = await fail(make_context("discover"))
    assert (error.kind, error.status_code, error.message) == ("http", status, message)
    assert error.retry_after is None


async def test_long_error_answers_are_cut_to_an_excerpt(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    respx_mock.get(URL).respond(500, text="x" * 200_000)
    error = await fail(make_context("discover"))
    excerpt = error.message.removeprefix("HTTP 500 from svc: ")
    assert len(excerpt) == http.EXCERPT_CHARS
    assert excerpt.endswith("…")


async def test_unexpected_success_status_is_an_http_failure(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    respx_mock.get(URL).respond(200, json={"id": "x"})
    error = await fail(make_context("discover"), expect=(201,))
    assert (error.kind, error.status_code) == ("http", 200)
    assert error.message == "HTTP 200 from svc: expected 201"


@pytest.mark.parametrize(
    ("headers", "where"),
    [({"Location": "https://svc.test/api/routes"}, "https://svc.test/api/routes"), ({}, None)],
)
async def test_redirects_are_not_followed(
    make_context: MakeContext, respx_mock: respx.Router, headers: dict[str, str], where: str | None
) -> None:
    respx_mock.get(URL).respond(301, headers=headers)
    error = await fail(make_context("discover"))
    assert (error.kind, error.status_code) == ("http", 301)
    assert f"redirect to {where or '(no Location header)'} not followed" in error.message
    assert len(respx_mock.calls) == 1


async def test_control_characters_in_an_answer_are_shown_escaped(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    detail = "\x1b[2J\x1b]0;owned\x07 gone\u200b"
    respx_mock.get(URL).respond(503, json={"detail": detail})
    error = await fail(make_context("discover"))
    assert error.message == "HTTP 503 from svc: \\x1b[2J\\x1b]0;owned\\x07 gone\\u200b"
    assert error.message.isprintable()


async def test_a_huge_location_is_quoted_as_an_excerpt(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    respx_mock.get(URL).respond(302, headers={"Location": "/" + "a" * 20_000})
    error = await fail(make_context("discover"))
    assert error.message.startswith("HTTP 302 from svc: redirect to /aaa")
    assert len(error.message) < 400


async def test_retry_after_seconds_on_429(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    respx_mock.get(URL).respond(429, headers={"Retry-After": "7"}, json={"detail": "slow down"})
    error = await fail(make_context("discover"))
    assert (error.status_code, error.retry_after) == (429, 7.0)
    assert error.message == "HTTP 429 from svc: slow down"


async def test_retry_after_http_date_on_503(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    later = datetime.now(timezone.utc) + timedelta(seconds=120)
    respx_mock.get(URL).respond(503, headers={"Retry-After": format_datetime(later, usegmt=True)})
    error = await fail(make_context("discover"))
    assert error.retry_after is not None
    assert 100 < error.retry_after <= 120


async def test_retry_after_is_ignored_on_other_statuses(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    respx_mock.get(URL).respond(500, headers={"Retry-After": "7"})
    assert (await fail(make_context("discover"))).retry_after is None


NOW = datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("-5", 0.0),
        ("Thu, 01 Jan 2026 10:01:00 GMT", 60.0),
        ("Thu, 01 Jan 2026 10:01:00 -0000", 60.0),  # a date without zone is taken as UTC
        ("Thu, 01 Jan 2026 09:00:00 GMT", 0.0),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("", None),
        ("  ", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_describe_answer_survives_bad_utf8() -> None:
    assert describe_answer(b"\xff\xfeoops") == "\ufffd\ufffdoops"


# --------------------------------------------------------------------------- success bodies


@pytest.mark.parametrize(
    ("body", "ending"),
    [
        (b"<html>hello</html>", "with a body that is not JSON: '<html>hello</html>'"),
        (b"\xff\xfe{}", "with a body that is not JSON: '\ufffd\ufffd{}'"),
        (b"\x1b[2J{", "with a body that is not JSON: '\\x1b[2J{'"),
        (b"", "with an empty body"),
        (b" \r\n ", "with an empty body"),
        (b"[" * 100_000 + b"]" * 100_000, "with JSON nested too deeply to read"),
    ],
)
async def test_success_that_is_not_json_is_kind_protocol(
    make_context: MakeContext, respx_mock: respx.Router, body: bytes, ending: str
) -> None:
    respx_mock.get(URL).respond(200, content=body)
    error = await fail(make_context("discover"))
    assert (error.kind, error.message) == (
        "protocol",
        f"svc answered HTTP 200 to GET {URL} {ending}",
    )


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        (b'{"t\\ud800": ["a\\uDFFFb", "\\ud83d\\ude00", 1, null]}',
         {"t\ufffd": ["a\ufffdb", "\U0001f600", 1, None]}),
        (b'\xef\xbb\xbf{"bom": "\\u00e9"}', {"bom": "\u00e9"}),
    ],
)  # fmt: skip
async def test_lone_surrogates_become_replacement_characters(
    make_context: MakeContext, respx_mock: respx.Router, body: bytes, answer: Any
) -> None:
    respx_mock.get(URL).respond(200, content=body)
    decoded = await request_json(make_context("discover"), "GET", "/api/routes")
    assert decoded == answer
    json.dumps(decoded, ensure_ascii=False).encode("utf-8")  # printable and storable


@pytest.mark.parametrize(
    "body", ['{"t": "a\ud800"}'.encode("utf-8", "surrogatepass"), '{"t": 1}'.encode("utf-16")]
)
async def test_json_that_is_not_utf8_is_kind_protocol(
    make_context: MakeContext, respx_mock: respx.Router, body: bytes
) -> None:
    respx_mock.get(URL).respond(200, content=body)
    error = await fail(make_context("discover"))
    assert error.kind == "protocol" and "with a body that is not JSON" in error.message


@pytest.mark.parametrize("body", [b'{"n": NaN}', b'{"n": -Infinity}', b'{"n": 1e999}'])
async def test_nan_and_infinities_are_kind_protocol(
    make_context: MakeContext, respx_mock: respx.Router, body: bytes
) -> None:
    respx_mock.get(URL).respond(200, content=body)
    error = await fail(make_context("discover"))
    assert error.kind == "protocol"
    assert error.message.endswith(", which JSON does not allow")


async def test_declared_huge_answer_is_refused_unread(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    size = str(MAX_RESPONSE_BYTES + 1)
    respx_mock.get(URL).respond(200, headers={"Content-Length": size}, content=b"{}")
    error = await fail(make_context("discover"))
    assert error.kind == "protocol"
    assert error.message == f"answer from svc to GET {URL} is larger than 10 MiB"


async def test_streamed_huge_answer_stops_at_the_limit(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    mib = b" " * (1024 * 1024)
    respx_mock.get(URL).respond(200, content=chunks(*[mib] * 11, then=AssertionError("read on")))
    error = await fail(make_context("discover"))
    assert error.kind == "protocol"
    assert "larger than 10 MiB" in error.message


def gzipped(data: bytes, repeat: int = 1, wbits: int = 31) -> bytes:
    compressor = zlib.compressobj(wbits=wbits)
    return b"".join(compressor.compress(data) for _ in range(repeat)) + compressor.flush()


@pytest.mark.parametrize(
    ("encoding", "wbits"),
    [("gzip", 31), ("x-gzip", 31), ("deflate", 15), ("deflate", -15), ("GZip ", 31)],
)
async def test_compressed_answers_are_decoded(
    make_context: MakeContext, respx_mock: respx.Router, encoding: str, wbits: int
) -> None:
    body = gzipped(b'{"routes": [1, 2]}', wbits=wbits)
    respx_mock.get(URL).respond(200, headers={"Content-Encoding": encoding}, content=body)
    assert await request_json(make_context("discover"), "GET", "/api/routes") == {"routes": [1, 2]}


async def test_a_gzip_bomb_stops_at_the_limit_with_bounded_memory(
    make_context: MakeContext, demo: DemoServices
) -> None:
    # 50 MiB of padding shrink to about 50 KiB; inflating it at once took 127 MiB.
    # (Over loopback: respx inflates a mocked gzip body itself, whole.)
    demo.qaagent.inject("/api/routes", Fault(status=None, size=50 * 1024 * 1024, gzip=True))
    ctx = make_context("discover", demo.qaagent_url, service="qaagent")
    tracemalloc.start()
    try:
        error = await fail(ctx)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (error.kind, error.message) == (
        "protocol",
        f"answer from qaagent to GET {demo.qaagent_url}/api/routes is larger than 10 MiB",
    )
    assert peak < 16 * 1024 * 1024


async def test_a_compressed_error_answer_is_quoted_and_read_no_further(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    bomb = gzipped(b'{"detail": "busy"}' + b" " * (1024 * 1024), repeat=1)
    headers = {"Content-Encoding": "gzip"}
    respx_mock.get(URL).respond(503, headers=headers, content=bomb)
    error = await fail(make_context("discover"))
    assert (error.kind, error.message) == ("http", "HTTP 503 from svc: busy")


async def test_an_unsupported_encoding_is_kind_protocol(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    respx_mock.get(URL).respond(200, headers={"Content-Encoding": "br"}, content=b"??")
    error = await fail(make_context("discover"))
    assert (error.kind, error.message) == (
        "protocol",
        f"cannot decode the answer of svc at {URL}: unsupported Content-Encoding 'br'",
    )


async def test_only_encodings_it_can_bound_are_asked_for(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    route = respx_mock.get(URL).respond(200, json={})
    await request_json(make_context("discover"), "GET", "/api/routes")
    assert route.calls.last.request.headers["accept-encoding"] == "gzip, deflate"


async def test_answer_of_exactly_the_limit_is_read(
    make_context: MakeContext, respx_mock: respx.Router
) -> None:
    body = b"[" + b" " * (MAX_RESPONSE_BYTES - 2) + b"]"
    respx_mock.get(URL).respond(200, content=chunks(body))
    assert await request_json(make_context("discover"), "GET", "/api/routes") == []


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"),
         "cannot connect to svc at http://h/health: connection refused"),
        (httpx.ReadTimeout("slow"), "timed out waiting for svc at http://h/health"),
        (httpx.InvalidURL("Invalid port: ':1'"),
         "cannot connect to svc at http://h/health: invalid URL (Invalid port: ':1')"),
        (RuntimeError("odd"), "request to svc at http://h/health failed: odd"),
    ],
)  # fmt: skip
def test_describe_failure(exc: BaseException, message: str) -> None:
    assert http.describe_failure(exc, "svc", "http://h/health") == message


# --------------------------------------------------------------------------- misuse


async def test_a_step_without_service_is_a_step_bug(make_context: MakeContext) -> None:
    error = await fail(make_context("discover", None))
    assert (error.kind, error.message) == ("error", "step 'discover' needs a service")


async def test_a_path_that_is_not_a_string_is_a_step_bug(make_context: MakeContext) -> None:
    error = await fail(make_context("discover", params={"path": 5}))
    assert error.kind == "error"
    assert "with.path must be a string" in error.message


# --------------------------------------------------------------------------- shape helpers


def test_require_object(make_context: MakeContext) -> None:
    ctx = make_context("discover")
    assert require_object(ctx, {"a": 1}) == {"a": 1}
    with pytest.raises(StepError, match=r"^unexpected answer from svc: the answer should be a "
                                        r"JSON object, got \[1\]$"):  # fmt: skip
        require_object(ctx, [1])


def test_require_list(make_context: MakeContext) -> None:
    ctx = make_context("discover")
    assert require_list(ctx, {"routes": []}, "routes") == []
    with pytest.raises(StepError, match="'routes' should be a list, got nothing"):
        require_list(ctx, {}, "routes")
    with pytest.raises(StepError, match="'routes' should be a list, got null"):
        require_list(ctx, {"routes": None}, "routes")


@pytest.mark.parametrize(
    ("value", "shown"),
    [(True, "True"), (-1, "-1"), ("3", "'3'"), ("x" * 50, "str"), (2.0, "2.0")],
)
def test_require_count_rejects(make_context: MakeContext, value: Any, shown: str) -> None:
    with pytest.raises(StepError) as caught:
        require_count(make_context("test"), {"total": value}, "total")
    assert caught.value.kind == "protocol"
    assert caught.value.message.endswith(f"'total' should be an integer >= 0, got {shown}")


def test_protocol_error_without_service_names_the_step(make_context: MakeContext) -> None:
    error = http.protocol_error(make_context("report", None), "odd")
    assert error.message == "unexpected answer from report: odd"


# --------------------------------------------------------------------------- real HTTP


async def test_real_answer_over_loopback(make_context: MakeContext, demo: DemoServices) -> None:
    answer = await request_json(make_context("discover", demo.qaagent_url), "GET", "/api/routes")
    assert len(answer["routes"]) == 6


async def test_refused_connection_over_loopback(
    make_context: MakeContext, demo: DemoServices
) -> None:
    demo.qaagent.stop()
    ctx = make_context("discover", demo.qaagent_url, service="qaagent")
    error = await fail(ctx)
    assert error.kind == "connection"
    assert error.message == (
        f"cannot connect to qaagent at {demo.qaagent_url}/api/routes: connection refused"
    )


async def test_dropped_connection_over_loopback(
    make_context: MakeContext, demo: DemoServices
) -> None:
    demo.qaagent.inject("/api/routes", Fault(down=True))
    error = await fail(make_context("discover", demo.qaagent_url, service="qaagent"))
    assert error.kind == "connection"
    assert error.message.endswith(": server disconnected without sending a response")


async def test_a_stopped_service_refuses_even_pooled_connections(
    make_context: MakeContext, demo: DemoServices
) -> None:
    ctx = make_context("discover", demo.qaagent_url, service="qaagent")
    await request_json(ctx, "GET", "/api/routes")  # leaves a keep-alive connection in the pool
    demo.qaagent.stop()
    assert (await fail(ctx)).kind == "connection"


@pytest.mark.parametrize(
    "fault",
    [Fault(200, size=50 * 1024 * 1024), Fault(200, size=50 * 1024 * 1024, gzip=True)],
    ids=["50 MiB", "gzip bomb"],
)
async def test_a_health_check_reads_little_of_a_huge_answer(
    demo: DemoServices, fault: Fault
) -> None:
    demo.qaagent.inject("/health", fault)
    service = ServiceSpec(key="qaagent", name="QA", url=demo.qaagent_url, api_key_env="K")
    async with open_client() as client:
        tracemalloc.start()
        try:
            health = await check_service(service, client, environ={"K": "b"})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert health.up and peak < 4 * 1024 * 1024
    assert demo.qaagent.calls[-1].headers["x-api-key"] == "b"


# --------------------------------------------------------------------------- import cost


def test_the_registry_imports_neither_httpx_nor_asyncio() -> None:
    # `config validate` loads the registry; it must stay cheap (bench: heavy imports)
    code = (
        "import sys\n"
        "from aegis.steps.registry import default_step_types\n"
        "types = default_step_types()\n"
        "assert 'http' in types and 'command' in types, types\n"
        "assert 'httpx' not in sys.modules, 'httpx imported'\n"
        "assert 'asyncio' not in sys.modules, 'asyncio imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
