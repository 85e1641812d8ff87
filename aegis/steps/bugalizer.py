"""The bugalizer API as steps use it: file a report, find the open ones by fingerprint,
and move a report towards ``closed``.

A ``Tracker`` says where reports go (the service, its reports path, the project). Every
call goes through ``aegis.steps.http.request_json``, so a failed call is a ``StepError``
like any other. ``submit_bugs`` files; ``verify`` closes what it found fixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from aegis.config.model import ServiceSpec, frozen_mapping
from aegis.errors import StepError
from aegis.steps.base import StepContext

__all__ = [
    "FINGERPRINT_LABEL",
    "MAX_PROJECT_ID",
    "REPORTS_PATH",
    "RUN_LABEL",
    "TERMINAL",
    "TOWARDS_CLOSED",
    "Tracker",
    "close_report",
    "file_report",
    "fingerprint",
    "open_reports",
    "refusal",
    "unanswered",
]

REPORTS_PATH = "/api/v1/reports"
MAX_PROJECT_ID = 100  # bugalizer refuses a longer project_id
PAGE_SIZE = 500  # the most one list call returns
MAX_PAGES = 20  # a lookup reads at most 10,000 reports
FINGERPRINT_LABEL = "aegis:fp:"
RUN_LABEL = "aegis:run:"
TERMINAL = frozenset({"closed", "rejected", "duplicate"})
# From each open status, the moves bugalizer's state machine allows that end in `closed`
# (a status missing here, fix_approved, has no way there a client may take).
TOWARDS_CLOSED: Mapping[str, tuple[str, ...]] = frozen_mapping(
    {
        "submitted": ("triaged", "closed"),
        "validating": ("triaged", "closed"),
        "triaged": ("closed",),
        "analyzing": ("triaged", "closed"),
        "clarification_needed": ("closed",),
        "fix_proposing": ("triaged", "closed"),
        "fix_proposed": ("closed",),
        "fix_committed": ("triaged", "closed"),
        "verified": ("closed",),
        "deferred": ("triaged", "closed"),
    }
)
# Answers that say the whole step is misconfigured, with what to check.
_AUTH_STATUSES = (401, 403)


@dataclass(frozen=True)
class Tracker:
    """Where bug reports go: a bugalizer service, its reports path and a project."""

    service: ServiceSpec
    path: str
    project_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service.key, "path": self.path, "project_id": self.project_id}


def fingerprint(project_id: str, workflow: str, test_id: str) -> str:
    """The label that names one test's bug in one project and workflow, in every run."""
    key = "\x1f".join((project_id, workflow, test_id)).encode("utf-8", "surrogatepass")
    return FINGERPRINT_LABEL + hashlib.sha256(key).hexdigest()[:16]


def unanswered(error: StepError) -> bool:
    """Whether the service may have stored what was sent although the call failed: no
    answer (timeout, connection lost), a 5xx (from a proxy in front, say), or a success
    that could not be used. Only a 4xx is a clear refusal."""
    status = error.status_code
    return not (error.kind == "http" and status is not None and 400 <= status < 500)


def refusal(error: StepError, tracker: Tracker, environ: Mapping[str, str]) -> str | None:
    """What to check when ``error`` refuses every report alike (a wrong or missing key, an
    unknown project or path, a body the service cannot read), else ``None``."""
    status = error.status_code if error.kind == "http" else None
    if status in _AUTH_STATUSES:
        variable = tracker.service.api_key_env
        if variable is None:
            hint = f"service '{tracker.service.key}' sends no key: give it an api_key_env"
        elif not environ.get(variable):
            hint = f"the key variable {variable} is not set"
        else:
            hint = f"check the key in {variable}, which is set"
        return f"{error.message} ({hint})"
    if status == 404:
        return (
            f"{error.message} (check with.project_id '{tracker.project_id}' and that "
            f"{tracker.service.url} serves {tracker.path})"
        )
    if status == 422:
        return f"{error.message} (the report's shape was refused; every report would be)"
    return None


def _at(ctx: StepContext, tracker: Tracker, path: str) -> StepContext:
    """``ctx`` aimed at ``path`` of the tracker's service (``request_json`` sends there)."""
    spec = dataclasses.replace(ctx.spec, params=frozen_mapping({"path": path}))
    return dataclasses.replace(ctx, spec=spec, service=tracker.service)


async def file_report(ctx: StepContext, tracker: Tracker, body: dict[str, Any]) -> str:
    """``POST`` one report; its id. Raises ``StepError`` (``protocol`` when no id came)."""
    from aegis.steps import http

    at = _at(ctx, tracker, tracker.path)
    answer = await http.request_json(at, "POST", tracker.path, json=body, expect=(201,))
    report_id = http.require_object(at, answer).get("id")
    if not isinstance(report_id, (str, int)) or isinstance(report_id, bool) or report_id == "":
        raise http.protocol_error(at, f"a filed report should carry an 'id', got {answer!r:.80}")
    return str(report_id)


async def open_reports(ctx: StepContext, tracker: Tracker) -> dict[str, dict[str, Any]]:
    """The project's open reports (newest first) by their fingerprint label; reports
    without one are left out. Reads at most ``MAX_PAGES`` pages of ``PAGE_SIZE``."""
    from aegis.steps import http

    found: dict[str, dict[str, Any]] = {}
    for page in range(MAX_PAGES):
        query = urlencode(
            {
                "project_id": tracker.project_id,
                "limit": PAGE_SIZE,
                "offset": page * PAGE_SIZE,
                "order": "desc",
            }
        )
        path = f"{tracker.path}?{query}"
        at = _at(ctx, tracker, path)
        body = http.require_object(at, await http.request_json(at, "GET", path))
        reports = http.require_list(at, body, "reports")
        for report in reports:
            if isinstance(report, dict) and report.get("status") not in TERMINAL:
                for label in _fingerprints(report.get("labels")):
                    found.setdefault(label, report)
        if len(reports) < PAGE_SIZE:
            break
    return found


def _fingerprints(labels: Any) -> Iterable[str]:
    if isinstance(labels, list):
        return (x for x in labels if isinstance(x, str) and x.startswith(FINGERPRINT_LABEL))
    return ()


async def close_report(
    ctx: StepContext, tracker: Tracker, report_id: str, reason: str
) -> dict[str, Any]:
    """Move one report as far towards ``closed`` as the state machine allows.

    Returns ``{"report_id", "from", "status"}`` and a ``note`` when it did not reach
    ``closed`` (a refused or failed move ends there); raises ``StepError`` when the
    report cannot be read.
    """
    from aegis.steps import http

    path = f"{tracker.path}/{quote(report_id, safe='')}"
    at = _at(ctx, tracker, path)
    report = http.require_object(at, await http.request_json(at, "GET", path))
    status = report.get("status")
    outcome: dict[str, Any] = {"report_id": report_id, "from": status, "status": status}
    if status == "closed":
        return {**outcome, "note": "already closed"}
    moves = TOWARDS_CLOSED.get(status) if isinstance(status, str) else None
    if moves is None:
        return {**outcome, "note": f"bugalizer allows no move from {status!r} to 'closed'"}
    at = _at(ctx, tracker, path + "/status")
    for target in moves:
        body = {"status": target, "resolution_reason": reason}
        try:
            await http.request_json(at, "PATCH", path + "/status", json=body)
        except StepError as exc:
            return {**outcome, "note": f"could not move it to {target!r}: {exc.message}"}
        outcome["status"] = target
    return outcome
