"""Helpers of the worker tests: a loopback service whose ``/block`` answers only when
released, configs on a PostgreSQL history, and ``aegis serve`` / ``aegis worker`` as real
processes (``python -m aegis``), ready once they say so on stderr."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pyz_helpers import base_environ

ROOT = Path(__file__).parent.parent
SERVING = re.compile(r"aegis: serving on (http://\S+) \(Ctrl-C to stop\)")
WORKING = re.compile(r"aegis: worker (\S+) working on ")


class Loopback:
    """``/ok`` answers at once; ``/block`` waits until ``release()`` (counting arrivals)."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.blocked = 0
        self.hits = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner.hits += 1
                    if self.path.startswith("/block"):
                        owner.blocked += 1
                if self.path.startswith("/block"):
                    owner.released.wait(60)
                body = b'{"ok": true}'
                with contextlib.suppress(OSError):  # a cancelled run's client has gone
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def write_config(
    tmp_path: Path,
    pg_url: str,
    service: str,
    extra: str = "",
    *,
    name: str = "aegis.yaml",
    **server: Any,
) -> Path:
    """A config on ``pg_url``: ``quick`` (one quick step), ``slow`` (a step that blocks),
    ``slow_requeue`` (the same, requeued when its worker stops), ``one`` (slow, at most
    one at once, ``skip``), ``lined`` (slow, at most one, ``queue``); ``extra`` is YAML
    added under ``workflows:``; ``name`` the file's (configs beside each other share the
    history file)."""
    options = {"max_concurrent_runs": 4, **server}
    lines = "\n".join(f"  {k}: {v}" for k, v in options.items())
    slow = "steps: [{type: http, service: svc, timeout: 60, with: {path: /block}}]"
    text = textwrap.dedent(f"""\
        services:
          svc: {{url: "{service}"}}
        history:
          url: "{pg_url}"
          lease: 2s
        server:
          port: 0
        """)
    text += lines + "\n"
    text += textwrap.dedent(f"""\
        workflows:
          quick:
            steps: [{{type: http, service: svc, with: {{path: /ok}}}}]
          slow:
            {slow}
          slow_requeue:
            on_interrupt: requeue
            {slow}
          one:
            concurrency: {{limit: 1, on_conflict: skip}}
            {slow}
          lined:
            concurrency: {{limit: 1, on_conflict: queue}}
            {slow}
        """)
    text += textwrap.indent(textwrap.dedent(extra), "  ")
    path = tmp_path / name
    path.write_text(text)
    return path


def environ(tmp_path: Path) -> dict[str, str]:
    return base_environ(HOME=str(tmp_path), PYTHONPATH=str(ROOT), NO_COLOR="1")


class Proc:
    """A running ``aegis`` process; ``url`` for a server, ``worker_id`` for a worker."""

    def __init__(self, process: subprocess.Popen[str], found: str) -> None:
        self.process = process
        self.found = found
        self.err: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.err.append(line)

    def stderr(self) -> str:
        return "".join(self.err)

    def wait(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code


def start(config: Path, command: str, tmp_path: Path, *args: str) -> Proc:
    """``python -m aegis --config CONFIG COMMAND ARGS``, once it says it is ready."""
    pattern = SERVING if command == "serve" else WORKING
    process = subprocess.Popen(
        [sys.executable, "-m", "aegis", "--config", str(config), command, *args],
        cwd=tmp_path,
        env=environ(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        found = pattern.search(line)
        if found:
            return Proc(process, found.group(1))
    process.kill()
    pytest.fail(f"aegis {command} never said it was ready (exit {process.wait()}): {seen}")


@contextmanager
def processes(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            if proc.process.poll() is None:
                proc.process.kill()
            proc.wait()


def call(url: str, method: str = "GET", body: Any = None, **headers: str) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
