"""The run's client as httpx makes it: proxies from the environment, international host
names, and answers that are not HTTP, each against real servers on loopback."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeContext

from aegis.config.model import ServiceSpec
from aegis.demo import DemoServices
from aegis.errors import StepError
from aegis.services import check_all
from aegis.steps import http
from aegis.steps.http import open_client, request_json

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
# Linux routes all of 127/8 to loopback, but only 127.0.0.1 is "loopback" to Aegis's
# proxy rule: a request there goes through a proxy like any remote host, and needs no DNS.
REMOTE = "http://127.0.0.2:9"


@pytest.fixture
def clean_proxies(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


async def failure(ctx: Any) -> StepError:
    with pytest.raises(StepError) as caught:
        await request_json(ctx, "GET", "/api/routes")
    return caught.value


# ---------------------------------------------------------------------------- proxies


async def test_loopback_bypasses_proxies(
    demo: DemoServices, clean_proxies: pytest.MonkeyPatch
) -> None:
    # The demo bugalizer stands in for the proxy: it answers whatever reaches it.
    clean_proxies.setenv("HTTP_PROXY", demo.bugalizer_url)
    localhost = demo.qaagent_url.replace("127.0.0.1", "localhost")
    async with open_client() as client:
        for url in (demo.qaagent_url, localhost):
            assert (await client.get(url + "/health")).json()["service"] == "qaagent"
        assert demo.bugalizer.calls == []
        proxied = await client.get("http://qa.example/health")
    assert proxied.json()["service"] == "bugalizer"
    assert demo.bugalizer.calls[0].headers["host"] == "qa.example"


async def test_a_socks_proxy_is_used_and_named_when_it_fails(
    make_context: MakeContext, demo: DemoServices, clean_proxies: pytest.MonkeyPatch
) -> None:
    clean_proxies.setenv("ALL_PROXY", "socks5://127.0.0.1:1")
    async with open_client() as client:
        local = make_context("discover", demo.qaagent_url, service="qaagent")
        answer = await request_json(
            type(local)(**{**local.__dict__, "http": client}), "GET", "/api/routes"
        )
        assert len(answer["routes"]) == 6
        remote = make_context("discover", REMOTE)
        error = await failure(type(remote)(**{**remote.__dict__, "http": client}))
    assert error.kind == "connection"
    assert error.message == (
        f"cannot connect to svc at {REMOTE}/api/routes through the proxy in "
        "ALL_PROXY (socks5://127.0.0.1:1): connection refused"
    )


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("ALL_PROXY", "ftp://proxy.test:21", "unknown scheme for proxy URL"),
        ("https_proxy", "http://[::1", "invalid"),
    ],
)
async def test_a_proxy_httpx_cannot_use_fails_the_step_naming_the_variable(
    make_context: MakeContext,
    demo: DemoServices,
    clean_proxies: pytest.MonkeyPatch,
    variable: str,
    value: str,
    reason: str,
) -> None:
    clean_proxies.setenv(variable, value)
    async with open_client() as client:
        local = make_context("discover", demo.qaagent_url, service="qaagent")
        answer = await request_json(
            type(local)(**{**local.__dict__, "http": client}), "GET", "/api/routes"
        )
        assert len(answer["routes"]) == 6  # loopback is still reached directly
        remote = make_context("discover", REMOTE.replace("http:", "https:"))
        error = await failure(type(remote)(**{**remote.__dict__, "http": client}))
    assert error.kind == "connection"
    assert error.message.startswith(
        f"cannot connect to svc at https://127.0.0.2:9/api/routes: the proxy in {variable} "
        f"({value}) cannot be used: {reason}"
    )


async def test_status_reports_an_unusable_proxy_as_a_service_down(
    demo: DemoServices, clean_proxies: pytest.MonkeyPatch
) -> None:
    clean_proxies.setenv("ALL_PROXY", "ftp://user:hunter22@proxy.test:21")
    services = [
        ServiceSpec(key="qaagent", name="QA", url=demo.qaagent_url),
        ServiceSpec(key="remote", name="Remote", url=REMOTE),
    ]
    local, remote = await check_all(services, environ={})
    assert local.up
    assert not remote.up and remote.error is not None
    assert "the proxy in ALL_PROXY (ftp://user:***@proxy.test:21) cannot be used" in remote.error
    assert "hunter22" not in remote.error


@pytest.mark.parametrize(
    ("environ", "url", "named"),
    [
        ({"HTTP_PROXY": "http://p:1"}, "http://qa.example/x", "HTTP_PROXY (http://p:1)"),
        ({"https_proxy": "http://p:2"}, "https://qa.example/x", "https_proxy (http://p:2)"),
        ({"HTTPS_PROXY": "http://p:2"}, "http://qa.example/x", None),
        ({"ALL_PROXY": "socks5://p:3"}, "http://qa.example/x", "ALL_PROXY (socks5://p:3)"),
        ({"ALL_PROXY": "socks5://p:3"}, "http://localhost:8/x", None),
        ({"ALL_PROXY": "socks5://p:3"}, "http://[::1]:8/x", None),
        ({"ALL_PROXY": "socks5://p:3", "NO_PROXY": "*"}, "http://qa.example/x", None),
        ({"ALL_PROXY": "socks5://p:3", "no_proxy": "x.org, .example"}, "http://qa.example/", None),
        ({"ALL_PROXY": "socks5://p:3", "NO_PROXY": "example"}, "http://qa.example/", None),
        ({"ALL_PROXY": "socks5://p:3", "NO_PROXY": "other.example"}, "http://qa.example/",
         "ALL_PROXY (socks5://p:3)"),
        ({"ALL_PROXY": "socks5://p:3"}, "http://[::1", None),
    ],
)  # fmt: skip
def test_connection_errors_name_the_proxy_httpx_chose(
    clean_proxies: pytest.MonkeyPatch, environ: dict[str, str], url: str, named: str | None
) -> None:
    for name, value in environ.items():
        clean_proxies.setenv(name, value)
    assert http._proxy_for(url) == named


# ---------------------------------------------------------------------------- names and TLS


@pytest.fixture(scope="module")
def idna_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-subj", "/CN=xn--strae-oqa.de", "-addext", "subjectAltName=DNS:xn--strae-oqa.de",
            "-days", "1", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


class _Seen(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.hosts.append(self.headers["Host"])  # type: ignore[attr-defined]
        body = b'{"routes": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def tls_server(idna_certificate: tuple[Path, Path]) -> Iterator[tuple[Any, list[str]]]:
    key, cert = idna_certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server_names: list[str] = []
    context.sni_callback = lambda sock, name, ctx: server_names.append(name) and None
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Seen)
    server.hosts = []  # type: ignore[attr-defined]
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, server_names
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def test_an_international_host_is_reached_by_its_idna_name_everywhere(
    make_context: MakeContext,
    tls_server: tuple[Any, list[str]],
    idna_certificate: tuple[Path, Path],
    clean_proxies: pytest.MonkeyPatch,
) -> None:
    server, server_names = tls_server
    port = server.server_address[1]
    looked_up: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def resolver(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        looked_up.append(name)
        if name == "xn--strae-oqa.de":
            return real_getaddrinfo("127.0.0.1", *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    clean_proxies.setattr(socket, "getaddrinfo", resolver)
    trusting = ssl.create_default_context(cafile=str(idna_certificate[1]))
    clean_proxies.setattr(http, "ssl_context", lambda: trusting)
    async with open_client() as client:
        ctx = make_context("discover", f"https://straße.de:{port}")
        answer = await request_json(
            type(ctx)(**{**ctx.__dict__, "http": client}), "GET", "/api/routes"
        )
    assert answer == {"routes": []}
    assert looked_up == ["xn--strae-oqa.de"]  # DNS
    assert server_names == ["xn--strae-oqa.de"]  # TLS (SNI, and the certificate it matched)
    assert server.hosts == [f"xn--strae-oqa.de:{port}"]  # Host


# ---------------------------------------------------------------------------- not HTTP


@pytest.fixture
def raw_server() -> Iterator[tuple[str, list[bytes]]]:
    """Answers each connection with the bytes queued for it, then holds it open."""
    answers: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)
            conn.recv(65536)
            conn.sendall(answers.pop(0) if answers else b"")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", answers
    finally:
        stop.set()
        thread.join(10)
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.parametrize(
    "status_line",
    [b"HTTP/1.1 099 Too Early\r\n", b"HTTP/1.1 000 Zero\r\n", b"HTTP/1.1 1000 Big\r\n",
     b"HTTP/1.1 abc Letters\r\n", b"HELLO WORLD\r\n", b"HTTP/1.1 20 Short\r\n"],
)  # fmt: skip
async def test_a_malformed_status_line_fails_at_once_as_protocol(
    make_context: MakeContext, raw_server: tuple[str, list[bytes]], status_line: bytes
) -> None:
    url, answers = raw_server
    answers.append(status_line + b"Content-Length: 2\r\n\r\n{}")
    began = time.monotonic()
    error = await asyncio.wait_for(failure(make_context("discover", url)), timeout=20)
    assert time.monotonic() - began < 5  # at once, not when the attempt's timeout ends
    assert error.kind == "protocol"
    assert error.message.startswith(f"svc at {url}/api/routes did not answer in valid HTTP: ")
