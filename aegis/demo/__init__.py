"""Reference services that speak the contracts of DESIGN §4, for demos, tests and benchmarks.

``QaAgent`` discovers routes and runs tests; ``Bugalizer`` files bug reports. Both answer
with deterministic data on loopback, each on its own ``ThreadingHTTPServer`` in a
background thread, and both take injected faults (fail the next N calls, answer slowly,
drop or reset the connection, stall, trickle, send bodies that are not the contract,
huge or compressed ones, redirects; see ``Fault``) and log every call so tests can see
what was sent::

    with DemoServices() as demo:
        demo.qaagent.inject("/api/runs", Fault(status=503, times=1))
        ...  # point a config at demo.qaagent_url and demo.bugalizer_url
        assert demo.bugalizer.calls[-1].json["project_id"] == "web-shop"

``python -m aegis.demo`` (or ``aegis demo --services``) runs both in the foreground on the
ports that ``aegis.example.yaml`` names, until Ctrl-C; ``--fault SERVICE:PATH=SPEC`` injects
faults.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType, TracebackType
from typing import Any, TextIO

from aegis.demo.bugalizer import DEFAULT_PROJECTS, SEVERITIES, Bugalizer, validate_report
from aegis.demo.faults import FAULT_MODES, Fault, padded_json
from aegis.demo.qaagent import ROUTES, TESTS, DemoTest, QaAgent
from aegis.demo.service import DEFAULT_HOST, Call, DemoService

__all__ = [
    "DEFAULT_BUGALIZER_PORT",
    "DEFAULT_HOST",
    "DEFAULT_PROJECTS",
    "DEFAULT_QAAGENT_PORT",
    "FAULT_MODES",
    "ROUTES",
    "SEVERITIES",
    "TESTS",
    "Bugalizer",
    "Call",
    "DemoService",
    "DemoServices",
    "DemoTest",
    "Fault",
    "QaAgent",
    "main",
    "padded_json",
    "parse_fault",
    "validate_report",
]

DEFAULT_QAAGENT_PORT = 8080
DEFAULT_BUGALIZER_PORT = 8090


# --------------------------------------------------------------------------- both


class DemoServices:
    """A qaagent and a bugalizer, started and stopped together; a context manager."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        qaagent_port: int = 0,
        bugalizer_port: int = 0,
        *,
        api_key: str | None = None,
        projects: Sequence[str] = DEFAULT_PROJECTS,
    ) -> None:
        self.qaagent = QaAgent(host, qaagent_port, api_key=api_key)
        self.bugalizer = Bugalizer(host, bugalizer_port, api_key=api_key, projects=projects)

    @property
    def qaagent_url(self) -> str:
        return self.qaagent.url

    @property
    def bugalizer_url(self) -> str:
        return self.bugalizer.url

    def start(self) -> DemoServices:
        """Start both; raises ``OSError`` (with neither left running) if one cannot listen."""
        self.qaagent.start()
        try:
            self.bugalizer.start()
        except BaseException:
            self.qaagent.stop()
            raise
        return self

    def stop(self) -> None:
        self.qaagent.stop()
        self.bugalizer.stop()

    def __enter__(self) -> DemoServices:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- foreground


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m aegis.demo",
        description="Run the reference qaagent and bugalizer services until Ctrl-C.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument("--qaagent-port", type=int, default=DEFAULT_QAAGENT_PORT, metavar="PORT")
    parser.add_argument(
        "--bugalizer-port", type=int, default=DEFAULT_BUGALIZER_PORT, metavar="PORT"
    )
    parser.add_argument("--api-key", help="require this X-API-Key on both services")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        type=_fault_argument,
        metavar="SERVICE:PATH=SPEC",
        help="inject a fault (repeatable): SPEC is KEY=VALUE,... of Fault's fields or a JSON "
        "object, e.g. qaagent:/api/runs=status=503,times=2,retry_after=5 or "
        "qaagent:/api/routes=mode=stall,times=none",
    )
    return parser.parse_args(argv)


SERVICE_NAMES = ("qaagent", "bugalizer")


def parse_fault(text: str) -> tuple[str, str, Fault]:
    """``SERVICE:PATH=SPEC`` as (service, path, fault); raises ``ValueError`` if unusable.

    SPEC is ``KEY=VALUE`` pairs joined by commas, or a JSON object, naming ``Fault``'s
    fields. Values read as ``none``, ``true``/``false``, a number, or else as text; in
    JSON, a string value is read the same way (``"times": "none"``), ``payload`` aside.
    """
    target, equals, spec = text.partition("=")
    service, colon, path = target.partition(":")
    if not equals or not colon or not path:
        raise ValueError(f"expected SERVICE:PATH=SPEC, got {text!r}")
    if service not in SERVICE_NAMES:
        raise ValueError(f"unknown service {service!r} (known: {', '.join(SERVICE_NAMES)})")
    fields = _spec_fields(spec)
    known = set(Fault.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown fault field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    try:
        return service, path, Fault(**fields)
    except TypeError as exc:  # a value of the wrong type, say delay=soon
        raise ValueError(f"bad fault {spec!r}: {exc}") from exc


def _spec_fields(spec: str) -> dict[str, Any]:
    if spec.lstrip().startswith("{"):
        fields = json.loads(spec)  # JSONDecodeError is a ValueError
        if not isinstance(fields, dict):
            raise ValueError("a JSON fault spec must be an object")
        # what KEY=VALUE accepts, JSON accepts: "times": "none" as well as null
        return {
            key: _spec_value(value) if isinstance(value, str) and key != "payload" else value
            for key, value in fields.items()
        }
    parsed: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"expected KEY=VALUE in the fault spec, got {item!r}")
        parsed[key.strip()] = _spec_value(value.strip())
    return parsed


def _spec_value(text: str) -> Any:
    words: dict[str, Any] = {"none": None, "null": None, "true": True, "false": False}
    if text.lower() in words:
        return words[text.lower()]
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


def _fault_argument(text: str) -> tuple[str, str, Fault]:
    try:
        return parse_fault(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None, *, stop: threading.Event | None = None) -> int:
    """Serve both demo services in the foreground until Ctrl-C, SIGTERM or ``stop``."""
    args = _parse_args(argv)
    return serve_services(
        args.host,
        args.qaagent_port,
        args.bugalizer_port,
        api_key=args.api_key,
        faults=args.fault,
        stop=stop,
    )


def serve_services(
    host: str = DEFAULT_HOST,
    qaagent_port: int = DEFAULT_QAAGENT_PORT,
    bugalizer_port: int = DEFAULT_BUGALIZER_PORT,
    *,
    api_key: str | None = None,
    faults: Sequence[tuple[str, str, Fault]] = (),
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Serve both services until Ctrl-C, SIGTERM or ``stop``: 0, or 1 if they cannot start.

    ``python -m aegis.demo`` and ``aegis demo --services`` (which a built file alone can
    run) both end here; the URLs, faults and how to stop go to ``stdout``.
    """
    out = stdout or sys.stdout
    demo = DemoServices(host, qaagent_port, bugalizer_port, api_key=api_key)
    try:
        demo.start()
    except OSError as exc:
        print(f"cannot start the demo services on {host}: {exc}", file=stderr or sys.stderr)
        return 1
    try:
        with demo:
            print(f"qaagent    {demo.qaagent_url}", file=out, flush=True)
            print(f"bugalizer  {demo.bugalizer_url}", file=out, flush=True)
            for service, path, fault in faults:
                getattr(demo, service).inject(path, fault)
                print(f"fault      {service} {path}: {_describe(fault)}", file=out, flush=True)
            print("Press Ctrl-C to stop.", file=out, flush=True)
            _wait(stop or threading.Event())
    except KeyboardInterrupt:
        pass  # Ctrl-C is how this is meant to end
    return 0


def _describe(fault: Fault) -> str:
    """Its status and the fields that differ from a plain ``Fault()``, as ``key=value``."""
    plain = Fault()
    changed = [
        f"{name}={getattr(fault, name)!r}"
        for name in Fault.__dataclass_fields__
        if name != "status" and getattr(fault, name) != getattr(plain, name)
    ]
    return ", ".join([f"status={fault.status}", *changed])


def _wait(stop: threading.Event) -> None:
    """Block until ``stop`` is set; SIGTERM ends the wait like Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        stop.wait()
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        stop.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
