"""Schemathesis fuzzes the real API from its own ``/api/openapi.json``.

A real ``ApiApp`` listens on an ephemeral loopback port with the demo services behind it,
and every documented operation gets generated requests: valid ones (within the document's
schemas) and invalid ones (outside them). Each answer must pass four checks: no 5xx, a
status the document lists for the operation, the documented Content-Type, and a body
that conforms to the documented schema. Valid requests must also be accepted (or get
404 for a key that does not exist), and invalid ones refused with a 4xx, so the
document says exactly what the server enforces.

Besides the fully generated cases, the operations that take a workflow key or a run id
also get cases with a real key and a real run id, so the success answers (a run started,
a run read, a cancel refused) are checked against their schemas too. The workflow runs
only a quick ``discover`` against the demo qaagent, so fuzzed run submissions are
harmless and fast.

Generation is derandomized (a fixed seed per operation) and bounded, so the cases and the
recorded outcome are the same on every run. The event stream is left out: it is endless
by design and the hostile-input tests cover its parameters.
"""

from __future__ import annotations

import io
import logging
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

import hypothesis  # noqa: E402  (after the skip: both come with the test extra)
import requests  # noqa: E402
from hypothesis import HealthCheck, Phase  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.errors import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from aegis.api.app import ApiApp  # noqa: E402
from aegis.api.server import AccessLog  # noqa: E402
from aegis.config import parse_config  # noqa: E402
from aegis.demo import DemoServices  # noqa: E402
from aegis.steps.registry import default_step_types  # noqa: E402

AREA = "Hostile HTTP input"

# Cases per operation and generation mode (operations whose inputs are few run out
# sooner): about 4,000 requests in all, half a minute on a slow 2-core machine.
MAX_EXAMPLES = 250
SEEDED_EXAMPLES = 80
REQUEST_TIMEOUT = 30.0
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
)
# What the generated requests are, and the check that only applies to them.
MODES = {
    "valid": (GenerationMode.POSITIVE, positive_data_acceptance),
    "invalid": (GenerationMode.NEGATIVE, negative_data_rejection),
}
CHECK_TEXT = {
    "not_a_server_error": "no answer is a 5xx",
    "status_code_conformance": "every status is one the document lists for the operation",
    "content_type_conformance": "every Content-Type is the documented one",
    "response_schema_conformance": "every body conforms to the documented schema",
    "positive_data_acceptance": "a request the document allows is not refused (2xx, or 404 "
    "for an unknown key or run, 409 for a finished run)",
    "negative_data_rejection": "a request the document forbids is refused with a 4xx",
}
# Endless by design: an accepted GET never ends, so it cannot be fuzzed request by
# request (schemathesis also counts an unknown extra query parameter as invalid, which
# the server rightly ignores). The hostile-input tests send it bad parameters instead.
SKIPPED = {"/api/events/stream"}

CONFIG = """
aegis: {name: Aegis under fuzz, tagline: Hostile input}
services:
  qaagent: {url: "%(qaagent)s"}
  bugalizer: {url: "%(bugalizer)s"}
workflows:
  smoke:
    steps:
      - {type: discover, service: qaagent, timeout: 5}
      - {type: report, condition: always}
history: {path: ":memory:"}
server: {max_concurrent_runs: 4}
"""


@dataclass
class Tally:
    """What one fuzz session did: operations, cases sent, failures per check."""

    operations: set[str] = field(default_factory=set)
    cases: int = 0
    failures: dict[str, list[str]] = field(default_factory=dict)

    def observed(self, check: str) -> str:
        failed = len(self.failures.get(check, []))
        return f"{len(self.operations)} operations, {self.cases} cases, {failed} failures"


@pytest.fixture
def api(tmp_path: Path, demo: DemoServices) -> Iterator[ApiApp]:
    text = CONFIG % {"qaagent": demo.qaagent_url, "bugalizer": demo.bugalizer_url}
    config = parse_config(
        textwrap.dedent(text),
        file="aegis.yaml",
        base_dir=tmp_path,
        environ={},
        step_types=default_step_types(),
    )
    app = ApiApp(config, environ={}, port=0, access_log=AccessLog(io.StringIO())).start()
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture
def tracebacks(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The log records of the session that carry a traceback (none may)."""
    caplog.set_level(logging.WARNING)

    def found() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.exc_info or r.exc_text]

    return found


def _settings(examples: int) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def _fuzz(
    operation: Any,
    strategy: Any,
    examples: int,
    *,
    checks: tuple[Any, ...],
    base_url: str,
    session: requests.Session,
    tally: Tally,
) -> bool:
    """Send up to ``examples`` cases of ``strategy``, checking each answer; whether any
    case could be generated at all."""
    label = operation.label

    def one(case: Any) -> None:
        tally.cases += 1
        response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT)
        for check in checks:
            try:
                case.validate_response(response, checks=[check])
            except FailureGroup:
                sent = f"{case.method} {response.request.url}"
                found = f"{label}: {sent} -> {response.status_code}: {response.text[:300]}"
                tally.failures.setdefault(check.__name__, []).append(found)

    test = hypothesis.given(case=strategy)(one)
    try:
        _settings(examples)(test)()
    except hypothesis.errors.Unsatisfiable:
        return False  # nothing about this operation can be invalid (no parameters, no body)
    return True


def _run_seed(base_url: str, session: requests.Session) -> str:
    answer = session.post(f"{base_url}/api/workflows/smoke/run?wait=30", timeout=REQUEST_TIMEOUT)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["run_id"])


@pytest.mark.parametrize("kind", list(MODES))
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    api: ApiApp,
    kind: str,
    tracebacks: Callable[[], list[str]],
    reliability: Any,
) -> None:
    mode, own_check = MODES[kind]
    checks = (*CHECKS, own_check)
    tally = Tally()
    with requests.Session() as session:
        fuzz = {"checks": checks, "base_url": api.url, "session": session, "tally": tally}
        seeds = {"key": "smoke", "run_id": _run_seed(api.url, session)}
        schema = schemathesis.openapi.from_url(
            f"{api.url}/api/openapi.json",
            config=schemathesis.Config(),  # the defaults, whatever schemathesis.toml is near
            timeout=REQUEST_TIMEOUT,
        )
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path in SKIPPED:
                continue
            strategy = operation.as_strategy(generation_mode=mode)
            if _fuzz(operation, strategy, MAX_EXAMPLES, **fuzz):
                tally.operations.add(operation.label)
            names = {p.name for p in operation.path_parameters}
            if mode is GenerationMode.POSITIVE and names and names <= seeds.keys():
                real = {name: seeds[name] for name in names}
                if operation.path.startswith("/api/services/"):
                    real["key"] = "qaagent"
                strategy = operation.as_strategy(generation_mode=mode, path_parameters=real)
                _fuzz(operation, strategy, SEEDED_EXAMPLES, **fuzz)

    failures = [f for found in tally.failures.values() for f in found]
    assert not failures, "\n".join(failures[:20])
    assert len(tally.operations) >= (17 if kind == "valid" else 5)
    assert tracebacks() == []
    for check in checks:
        name = check.__name__
        reliability.record(
            f"schemathesis fuzz from /api/openapi.json, {kind} requests: `{name}`",
            expected=CHECK_TEXT[name],
            observed=tally.observed(name),
        )
