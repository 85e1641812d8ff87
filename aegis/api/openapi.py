"""The OpenAPI 3.1 document of the API, generated from the route table.

Paths, methods, parameters and answers come from the ``Route`` entries themselves, so the
document cannot drift from what the server routes; this module adds the schemas of the
JSON bodies (``SCHEMAS``) that the routes' answers name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aegis.config.model import OVERLAP_MODES

from .routes import JSON_TYPE, Answer, Route

if TYPE_CHECKING:
    from aegis.config.model import WorkflowSpec

__all__ = ["SCHEMAS", "build_openapi"]

# Errors any route may answer, besides those it lists.
COMMON_ERRORS = (500, 503)
SECURITY_SCHEMES = {
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "bearer": {"type": "http", "scheme": "bearer"},
}


def _obj(required: Iterable[str] | None = None, **properties: Any) -> dict[str, Any]:
    """An object schema whose properties are all required unless ``required`` says."""
    return {
        "type": "object",
        "required": list(properties if required is None else required),
        "properties": properties,
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _maybe(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
NUMBER = {"type": "number"}
BOOLEAN = {"type": "boolean"}
TIMESTAMP = {"type": "string", "format": "date-time"}
RUN_STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "timed_out", "interrupted"]
STEP_STATUSES = ["succeeded", "failed", "skipped", "cancelled"]
OVERLAP = OVERLAP_MODES
TEST_OUTCOMES = ["failed", "passed_on_rerun", "passed"]
ERROR_KINDS = ["timeout", "connection", "http", "protocol", "error"]

_STEP_RESULT: dict[str, Any] = {
    "name": STRING,
    "type": STRING,
    "service": _maybe("string"),
    "status": {"type": "string", "enum": STEP_STATUSES},
    "skipped": BOOLEAN,
    "skip_reason": _maybe("string"),
    "error": _maybe("string"),
    "error_kind": {"type": ["string", "null"], "enum": [*ERROR_KINDS, None]},
    "duration_ms": NUMBER,
    "reused": {"type": "boolean", "description": "carried over from the run this one reran"},
}
_RUN: dict[str, Any] = {
    "run_id": STRING,
    "workflow": STRING,
    "status": {"type": "string", "enum": RUN_STATUSES},
    "verdict": {"type": ["string", "null"], "enum": ["passed", "failed", None]},
    "started_at": TIMESTAMP,
    "finished_at": _maybe("string", format="date-time"),
    "duration_ms": _maybe("number"),
    "trigger": STRING,
    "params": {
        "type": "object",
        "description": "the params the run was given, a secret param's value as ***",
    },
    "rerun_of": _maybe("string", description="the run this one reran"),
}
_SERVICE_CARD: dict[str, Any] = {
    "key": STRING,
    "name": STRING,
    "description": STRING,
    "url": STRING,
    "features": _array(STRING),
    "repo_url": STRING,
    "docs_url": STRING,
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _obj(
        error=_obj(
            required=["status", "code", "message"],
            status=INTEGER,
            code=STRING,
            message=STRING,
            error_id={"type": "string", "description": "with 500: find the traceback in the log"},
            run_id={"type": "string", "description": "with 409: the run in the way"},
        )
    ),
    "ServerHealth": _obj(status={"const": "ok"}, version=STRING, uptime_s=NUMBER),
    "Health": _obj(
        status={"type": "string", "enum": ["up", "degraded", "down"]},
        latency_ms=_maybe("number"),
        error=_maybe("string"),
        checked_at=TIMESTAMP,
        service_status=_maybe("string"),
    ),
    "ServiceHealth": {"allOf": [_ref("Health"), _obj(key=STRING)]},
    "ServiceCard": _obj(**_SERVICE_CARD),
    "Service": _obj(**_SERVICE_CARD, health={"oneOf": [_ref("Health"), {"type": "null"}]}),
    "ServiceList": _obj(services=_array(_ref("Service"))),
    "Portfolio": _obj(
        aegis=_obj(name=STRING, tagline=STRING),
        version=STRING,
        services=_array(_ref("ServiceCard")),
    ),
    "Step": _obj(
        name=STRING,
        type=STRING,
        service=_maybe("string"),
        condition=_maybe("string"),
        parallel=BOOLEAN,
        retries=INTEGER,
        retry_delay=NUMBER,
        max_retry_delay=_maybe("number"),
        retry_jitter=NUMBER,
        retry_on={"type": ["array", "null"], "items": STRING},
        timeout=NUMBER,
        deadline=_maybe("number"),
        **{"with": {"type": "object", "description": "the step type's own settings"}},
    ),
    "Param": _obj(
        type={"type": "string", "enum": ["string", "integer", "number", "boolean", "choice"]},
        default={"description": "used when the trigger gives none; a secret one as ***"},
        required=BOOLEAN,
        choices=_array(STRING),
        description=STRING,
        secret=BOOLEAN,
    ),
    "Workflow": _obj(
        key=STRING,
        name=STRING,
        description=STRING,
        timeout=_maybe("number"),
        params={"type": "object", "additionalProperties": _ref("Param")},
        schedule=_array(_ref("Schedule")),
        concurrency={
            "oneOf": [
                _obj(limit=INTEGER, on_conflict={"type": "string", "enum": list(OVERLAP)}),
                {"type": "null"},
            ]
        },
        on_interrupt={"type": "string", "enum": ["interrupted", "requeue"]},
        steps=_array(_ref("Step")),
    ),
    "Schedule": _obj(
        cron=STRING,
        timezone=STRING,
        every={"type": "string", "description": "a duration, like 15m"},
        params={"type": "object"},
        overlap={"type": "string", "enum": list(OVERLAP)},
        catch_up={"type": "string", "enum": ["none", "last"]},
        next_fires={
            "type": "array",
            "items": TIMESTAMP,
            "description": "GET /api/workflows/{key} only: the next fire times",
        },
    ),
    "RerunRequest": _obj(
        [],  # both optional
        from_failed={
            "type": "boolean",
            "default": False,
            "description": "carry over the steps before the first failed one",
        },
        params={"type": "object", "description": "params that replace the old run's"},
    ),
    "WorkflowList": _obj(workflows=_array(_ref("Workflow"))),
    "RunRequest": {
        "type": "object",
        "description": "optional; `params` gives the workflow's params (Params.KEY describes"
        " those of workflow KEY; an unknown or wrong one is a 400 naming each)",
        "properties": {"params": {"type": "object"}},
    },
    "RunAccepted": _obj(
        run_id=STRING,
        status={"type": "string", "enum": ["queued", "running"]},
        url={"type": "string", "description": "where to poll the run: /api/runs/{run_id}"},
    ),
    "Attempt": _obj(
        attempt=INTEGER,
        started_at=TIMESTAMP,
        duration_ms=NUMBER,
        success=BOOLEAN,
        error=_maybe("string"),
        error_kind={"type": ["string", "null"], "enum": [*ERROR_KINDS, None]},
        status_code=_maybe("integer"),
    ),
    "StepSummary": _obj(**_STEP_RESULT),
    "StepResult": _obj(
        **_STEP_RESULT,
        data={"type": "object", "description": "what the step type reported"},
        attempts=_array(_ref("Attempt")),
    ),
    "RunSummary": _obj(**_RUN, steps=_array(_ref("StepSummary"))),
    "Run": _obj(**_RUN, steps=_array(_ref("StepResult"))),
    "RunList": _obj(
        runs=_array(_ref("RunSummary")),
        total={"type": "integer", "description": "runs matching the filters, in all"},
        limit=INTEGER,
        offset=INTEGER,
    ),
    "Event": _obj(
        id=INTEGER,
        type={"type": "string"},
        timestamp=TIMESTAMP,
        run_id=STRING,
        workflow=STRING,
        data={"type": "object"},
    ),
    "EventList": _obj(events=_array(_ref("Event"))),
    "EventStream": {"type": "string", "description": "text/event-stream"},
    "Trends": _obj(
        workflow=STRING,
        limit=INTEGER,
        runs=_array(
            _obj(
                run_id=STRING,
                started_at=TIMESTAMP,
                status={"type": "string", "enum": RUN_STATUSES},
                verdict={"type": ["string", "null"], "enum": ["passed", "failed", None]},
                duration_ms=_maybe("number"),
                failing_tests=_maybe("integer", description="null: the run reported no tests"),
            )
        ),
    ),
    "TestSummary": _obj(
        test_id=STRING,
        workflow=STRING,
        runs={"type": "integer", "description": "runs of the workflow since first seen"},
        failures=INTEGER,
        flips={"type": "integer", "description": "failures followed by a pass"},
        flakiness={"type": "number", "description": "flips per run, 0 to 1"},
        last_outcome={"type": "string", "enum": TEST_OUTCOMES},
        last_run=STRING,
        last_seen_at=TIMESTAMP,
        last_failure={"anyOf": [_ref("RunMoment"), {"type": "null"}]},
        last_pass={"anyOf": [_ref("RunMoment"), {"type": "null"}]},
        last_message=_maybe("string"),
    ),
    "RunMoment": _obj(at=TIMESTAMP, run_id=STRING),
    "TestList": _obj(tests=_array(_ref("TestSummary")), flaky=BOOLEAN),
    "TestOutcome": _obj(
        test_id=STRING,
        workflow=STRING,
        run_id=STRING,
        run_url=STRING,
        started_at=TIMESTAMP,
        outcome={"type": "string", "enum": TEST_OUTCOMES},
        message=_maybe("string"),
        bug_report=_maybe("string", description="the id of the bug report filed for it"),
    ),
    "TestDetail": _obj(
        test_id=STRING,
        workflows=_array(_ref("TestSummary")),
        outcomes=_array(_ref("TestOutcome")),
    ),
    "OpenApi": {"type": "object", "description": "an OpenAPI 3.1 document"},
}

_ERROR_HEADERS = {
    401: {"WWW-Authenticate": 'Bearer realm="aegis"'},
    429: {"Retry-After": "seconds to wait before trying again"},
    405: {"Allow": "the methods the path answers"},
}


def build_openapi(
    routes: Iterable[Route],
    *,
    title: str,
    version: str,
    description: str = "",
    workflows: Mapping[str, WorkflowSpec] | None = None,
    protect_all: bool = False,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``routes``; ``workflows`` adds a ``Params.KEY``
    schema per workflow and limits a run request's ``params`` to theirs; with
    ``protect_all`` reads need the key too."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        keyed = route.auth or (protect_all and not route.public)
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, keyed)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": {**SCHEMAS, **_workflow_params(workflows or {})},
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


def _workflow_params(workflows: Mapping[str, WorkflowSpec]) -> dict[str, Any]:
    """``Params.KEY`` for each workflow, and a ``RunRequest`` and ``RerunRequest`` whose
    ``params`` is one of them."""
    if not workflows:
        return {}
    from aegis.config.params import params_schema

    found = {f"Params.{key}": params_schema(spec.params) for key, spec in workflows.items()}
    one_of_them = {"anyOf": [_ref(name) for name in found]}
    request = dict(SCHEMAS["RunRequest"])
    request["properties"] = {"params": one_of_them}
    rerun = dict(SCHEMAS["RerunRequest"])
    described = {"description": "params that replace the old run's (those of its workflow)"}
    rerun["properties"] = {**rerun["properties"], "params": {**one_of_them, **described}}
    return {**found, "RunRequest": request, "RerunRequest": rerun}


def _operation(route: Route, keyed: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "tags": [route.tag],
        "responses": _responses(route, keyed),
    }
    if route.description:
        operation["description"] = route.description
    if route.params:
        operation["parameters"] = [_parameter(p) for p in route.params]
    if route.body:
        operation["requestBody"] = {
            "required": False,
            "content": {JSON_TYPE: {"schema": _ref(route.body)}},
        }
    if keyed:
        # Only enforced when auth.api_key is set; either scheme will do.
        operation["security"] = [{"apiKey": []}, {"bearer": []}]
    return operation


def _parameter(param: Any) -> dict[str, Any]:
    spec = {
        "name": param.name,
        "in": param.where,
        "required": param.required or param.where == "path",
        "schema": param.schema(),
    }
    if param.description:
        spec["description"] = param.description
    return spec


def _responses(route: Route, keyed: bool) -> dict[str, Any]:
    responses = {str(answer.status): _answer(answer) for answer in route.answers}
    errors = {*route.errors, *COMMON_ERRORS}
    if keyed:
        errors.add(401)
    for status in sorted(errors):
        responses[str(status)] = _error(status)
    return responses


def _answer(answer: Answer) -> dict[str, Any]:
    schema = _ref(answer.schema) if answer.schema else STRING
    spec: dict[str, Any] = {
        "description": answer.description,
        "content": {answer.media: {"schema": schema}},
    }
    if answer.status == 202 and answer.schema == "RunAccepted":
        spec["headers"] = {"Location": {"schema": STRING, "description": "the run's URL"}}
    return spec


def _error(status: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "description": HTTPStatus(status).phrase,
        "content": {JSON_TYPE: {"schema": _ref("Error")}},
    }
    headers = _ERROR_HEADERS.get(status)
    if headers:
        spec["headers"] = {
            name: {"schema": STRING, "description": text} for name, text in headers.items()
        }
    return spec
