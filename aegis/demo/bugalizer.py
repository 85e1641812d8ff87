"""The reference bugalizer: files, lists and moves bug reports as the real one does.

It keeps the contract of the public bugalizer (FastAPI): ``POST /api/v1/reports``
validated with the same limits and FastAPI's 422 ``detail`` list, 16-hex ids and status
``submitted``; ``GET /api/v1/reports`` with ``project_id``, ``status``, ``limit`` (≤ 500),
``offset`` and ``order``; ``GET /api/v1/reports/{id}``; ``PATCH
/api/v1/reports/{id}/status`` through the status state machine (409 from a terminal
status or for a move it does not allow); ``/health`` (readiness, ``degraded`` while
``degraded`` is set) and ``/health/live``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from aegis import __version__
from aegis.demo.service import (
    DEFAULT_HOST,
    BadRequest,
    DemoService,
    Handler,
    Request,
    Response,
    error_response,
)

__all__ = [
    "ANALYSIS_MODES",
    "DEFAULT_PROJECTS",
    "LIMITS",
    "MAX_LIST",
    "MAX_TITLE",
    "SEVERITIES",
    "STATUSES",
    "TERMINAL",
    "TRANSITIONS",
    "Bugalizer",
    "validate_report",
]

SEVERITIES = ("critical", "high", "medium", "low")
ANALYSIS_MODES = ("auto", "local_only", "hold")
DEFAULT_PROJECTS = ("web-shop",)
# (min, max) characters of the required strings.
LIMITS = {
    "title": (1, 500),
    "description": (1, 50_000),
    "reporter": (1, 200),
    "project_id": (1, 100),
}
MAX_TITLE = LIMITS["title"][1]
MAX_LIST = 500
_OPTIONAL_STRINGS = (
    "expected_behavior",
    "actual_behavior",
    "url",
    "feature_area",
    "environment",
)
_STRING_LISTS = ("steps_to_reproduce", "labels")

# The status state machine: where each status may move. Statuses the real server does not
# let a client enter yet (fix_approved, fix_committed, verified) are left out as targets.
TRANSITIONS: dict[str, frozenset[str]] = {
    "submitted": frozenset({"validating", "rejected", "triaged"}),
    "validating": frozenset({"triaged", "rejected"}),
    "triaged": frozenset({"analyzing", "fix_proposing", "deferred", "duplicate", "closed"}),
    "analyzing": frozenset({"clarification_needed", "fix_proposed", "triaged"}),
    "clarification_needed": frozenset({"analyzing", "closed"}),
    "fix_proposing": frozenset({"fix_proposed", "triaged"}),
    "fix_proposed": frozenset({"triaged", "closed"}),
    "fix_approved": frozenset(),
    "fix_committed": frozenset({"triaged"}),
    "verified": frozenset({"closed"}),
    "deferred": frozenset({"triaged"}),
    "closed": frozenset(),
    "rejected": frozenset(),
    "duplicate": frozenset(),
}
STATUSES = tuple(TRANSITIONS)
TERMINAL = frozenset({"closed", "rejected", "duplicate"})


class Bugalizer(DemoService):
    """The demo bug tracker. ``reports`` holds what was filed, oldest first; setting
    ``degraded`` makes ``/health`` answer ``"status": "degraded"`` (its LLM is down)."""

    name = "bugalizer"

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        api_key: str | None = None,
        projects: Sequence[str] = DEFAULT_PROJECTS,
    ) -> None:
        super().__init__(host, port, api_key=api_key)
        self.projects = frozenset(projects)
        self.degraded = False
        self._reports: dict[str, dict[str, Any]] = {}

    @property
    def reports(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(report) for report in self._reports.values()]

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {
            "/health": {"GET": self._readiness},
            "/health/live": {"GET": self._liveness},
            "/api/v1/reports": {"GET": self._list, "POST": self._file},
            "/api/v1/reports/{id}": {"GET": self._get},
            "/api/v1/reports/{id}/status": {"PATCH": self._move},
        }

    def _liveness(self, request: Request) -> Response:
        return Response(200, {"status": "ok", "version": __version__})

    def _readiness(self, request: Request) -> Response:
        llm = not self.degraded
        checks = {"database": True, "ollama": llm, "worker": None}
        status = "ok" if llm else "degraded"
        # "service" is ours (the real one leaves it out): tests tell the two demos apart by it
        answer = {"status": status, "service": self.name, "version": __version__}
        return Response(200, {**answer, "checks": checks})

    def _file(self, request: Request) -> Response:
        body = request.json()
        problems = validate_report(body)
        if problems:
            return Response(422, {"detail": problems})
        if body["project_id"] not in self.projects:
            return error_response(404, f"Project '{body['project_id']}' not found")
        now = _now()
        report = {
            "id": os.urandom(8).hex(),
            **{key: body[key] for key in LIMITS},
            "steps_to_reproduce": body.get("steps_to_reproduce"),
            **{key: body.get(key) for key in _OPTIONAL_STRINGS},
            "severity": body.get("severity", "medium"),
            "labels": body.get("labels"),
            "status": "submitted",
            "analysis_mode": body.get("analysis_mode", "auto"),
            "resolution_reason": None,
            "created_at": now,
            "updated_at": now,
        }
        with self._lock:
            self._reports[report["id"]] = report
        return Response(201, {**report, "warnings": []})

    def _list(self, request: Request) -> Response:
        query = {key: values[-1] for key, values in request.query.items()}
        limit = _query_int(query, "limit", 1, MAX_LIST)
        offset = _query_int(query, "offset", 0, None) or 0
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise BadRequest(
                422,
                _invalid(
                    ["query", "order"],
                    "String should match pattern '^(asc|desc)$'",
                    "string_pattern_mismatch",
                ),
            )
        matching = [
            report
            for report in self.reports
            if query.get("project_id") in (None, report["project_id"])
            and query.get("status") in (None, report["status"])
        ]
        if order == "desc":
            matching.reverse()  # newest first, as created
        page = matching[offset:] if limit is None else matching[offset : offset + limit]
        return Response(200, {"reports": page, "total": len(matching)})

    def _get(self, request: Request) -> Response:
        with self._lock:
            report = self._reports.get(request.params["id"])
            found = dict(report) if report is not None else None
        if found is None:
            return error_response(404, "Bug report not found")
        return Response(200, found)

    def _move(self, request: Request) -> Response:
        body = request.json()
        target = body.get("status") if isinstance(body, dict) else None
        if target not in TRANSITIONS:
            choices = ", ".join(f"'{s}'" for s in STATUSES)
            raise BadRequest(
                422, _invalid(["body", "status"], f"Input should be {choices}", "enum")
            )
        reason = body.get("resolution_reason")
        with self._lock:
            report = self._reports.get(request.params["id"])
            if report is None:
                return error_response(404, "Bug report not found")
            current = report["status"]
            if current in TERMINAL:
                return error_response(409, f"Cannot transition from terminal status '{current}'")
            if target not in TRANSITIONS[current]:
                return error_response(409, f"Invalid transition: '{current}' → '{target}'")
            report.update(status=target, resolution_reason=reason, updated_at=_now())
        answer = {"id": report["id"], "previous_status": current, "new_status": target}
        return Response(200, {**answer, "resolution_reason": reason})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _invalid(loc: list[Any], msg: str, kind: str) -> dict[str, Any]:
    return {"detail": [{"loc": loc, "msg": msg, "type": kind}]}


def _query_int(query: dict[str, str], key: str, low: int, high: int | None) -> int | None:
    text = query.get(key)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        msg = "Input should be a valid integer, unable to parse string as an integer"
        raise BadRequest(422, _invalid(["query", key], msg, "int_parsing")) from None
    if value < low:
        msg = f"Input should be greater than or equal to {low}"
        raise BadRequest(422, _invalid(["query", key], msg, "greater_than_equal"))
    if high is not None and value > high:
        msg = f"Input should be less than or equal to {high}"
        raise BadRequest(422, _invalid(["query", key], msg, "less_than_equal"))
    return value


def validate_report(body: Any) -> list[dict[str, Any]]:
    """Every problem with a report body, as FastAPI's ``detail`` items (empty when fine)."""
    if not isinstance(body, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        return [{"loc": ["body"], "msg": msg, "type": "model_attributes_type"}]
    problems: list[dict[str, Any]] = []
    for key, (low, high) in LIMITS.items():
        if key not in body:
            problems.append(_problem(key, "Field required", "missing"))
        elif not isinstance(body[key], str):
            problems.append(_problem(key, "Input should be a valid string", "string_type"))
        elif len(body[key]) < low:
            problems.append(
                _problem(key, f"String should have at least {low} character", "string_too_short")
            )
        elif len(body[key]) > high:
            problems.append(
                _problem(key, f"String should have at most {high} characters", "string_too_long")
            )
    for key in _STRING_LISTS:
        problems.extend(_string_list_problems(body, key))
    for key in _OPTIONAL_STRINGS:
        if body.get(key) is not None and not isinstance(body[key], str):
            problems.append(_problem(key, "Input should be a valid string", "string_type"))
    for key, allowed in (("severity", SEVERITIES), ("analysis_mode", ANALYSIS_MODES)):
        if key in body and body[key] not in allowed:
            problems.append(_problem(key, _enum_message(allowed), "enum"))
    return problems


def _enum_message(allowed: Sequence[str]) -> str:
    quoted = [f"'{value}'" for value in allowed]
    return f"Input should be {', '.join(quoted[:-1])} or {quoted[-1]}"


def _problem(key: str | list[Any], msg: str, kind: str) -> dict[str, Any]:
    loc = ["body", *key] if isinstance(key, list) else ["body", key]
    return {"loc": loc, "msg": msg, "type": kind}


def _string_list_problems(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        return [_problem(key, "Input should be a valid list", "list_type")]
    return [
        _problem([key, index], "Input should be a valid string", "string_type")
        for index, item in enumerate(value)
        if not isinstance(item, str)
    ]
