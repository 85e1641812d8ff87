"""The reference bugalizer: files, lists and moves bug reports as the real one does."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from aegis.demo.service import DEFAULT_HOST, DemoService, Handler, Request, Response, error_response

__all__ = ["DEFAULT_PROJECTS", "MAX_TITLE", "SEVERITIES", "Bugalizer", "validate_report"]

MAX_TITLE = 500
SEVERITIES = ("critical", "high", "medium", "low")
DEFAULT_PROJECTS = ("web-shop",)


class Bugalizer(DemoService):
    """The demo bug tracker: ``POST /api/v1/reports`` validated as the real one does it,
    and ``GET /api/v1/reports`` listing what was filed."""

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
        self._reports: list[dict[str, Any]] = []

    @property
    def reports(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(report) for report in self._reports]

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {"/api/v1/reports": {"GET": self._list, "POST": self._file}}

    def _list(self, request: Request) -> Response:
        reports = self.reports
        return Response(200, {"reports": reports, "total": len(reports)})

    def _file(self, request: Request) -> Response:
        body = request.json()
        problems = validate_report(body)
        if problems:
            return Response(422, {"detail": problems})
        if body["project_id"] not in self.projects:
            return error_response(404, f"Project {body['project_id']!r} not found")
        with self._lock:
            report = {
                "id": f"BUG-{len(self._reports) + 1:04d}",
                "status": "new",
                "created_at": datetime.now(timezone.utc).isoformat(),
                **{key: body.get(key, _DEFAULTS.get(key)) for key in _REPORT_FIELDS},
            }
            self._reports.append(report)
        return Response(201, report)


_REPORT_FIELDS = (
    "project_id",
    "title",
    "description",
    "reporter",
    "severity",
    "steps_to_reproduce",
    "expected_behavior",
    "actual_behavior",
    "labels",
)
_DEFAULTS: dict[str, Any] = {"severity": "medium", "steps_to_reproduce": [], "labels": []}
_REQUIRED = ("project_id", "title", "description")
_OPTIONAL_STRINGS = ("reporter", "expected_behavior", "actual_behavior")
_STRING_LISTS = ("steps_to_reproduce", "labels")


def validate_report(body: Any) -> list[dict[str, Any]]:
    """Every problem with a report body, as FastAPI's ``detail`` items (empty when fine)."""
    if not isinstance(body, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        return [{"loc": ["body"], "msg": msg, "type": "model_attributes_type"}]
    problems: list[dict[str, Any]] = []
    for key in _REQUIRED:
        if key not in body:
            problems.append({"loc": ["body", key], "msg": "Field required", "type": "missing"})
    for key in (*_REQUIRED, *_OPTIONAL_STRINGS):
        if key in body and not isinstance(body[key], str):
            problems.append(_problem(key, "Input should be a valid string", "string_type"))
    for key in _STRING_LISTS:
        problems.extend(_string_list_problems(body, key))
    title = body.get("title")
    if isinstance(title, str) and not 1 <= len(title) <= MAX_TITLE:
        problems.append(_title_length_problem(title))
    if "severity" in body and body["severity"] not in SEVERITIES:
        msg = "Input should be " + ", ".join(f"'{s}'" for s in SEVERITIES[:-1])
        problems.append(_problem("severity", f"{msg} or '{SEVERITIES[-1]}'", "enum"))
    return problems


def _problem(key: str | list[Any], msg: str, kind: str) -> dict[str, Any]:
    loc = ["body", *key] if isinstance(key, list) else ["body", key]
    return {"loc": loc, "msg": msg, "type": kind}


def _string_list_problems(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    if key not in body:
        return []
    value = body[key]
    if not isinstance(value, list):
        return [_problem(key, "Input should be a valid list", "list_type")]
    return [
        _problem([key, index], "Input should be a valid string", "string_type")
        for index, item in enumerate(value)
        if not isinstance(item, str)
    ]


def _title_length_problem(title: str) -> dict[str, Any]:
    if not title:
        return _problem("title", "String should have at least 1 character", "string_too_short")
    return _problem(
        "title", f"String should have at most {MAX_TITLE} characters", "string_too_long"
    )
