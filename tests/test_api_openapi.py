"""The OpenAPI document: generated from the route table, so both list the same routes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from aegis.api.handlers import ROUTES
from aegis.api.openapi import SCHEMAS, build_openapi
from aegis.api.routes import MAX_INTEGER, Router, dump_json


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    built = build_openapi(ROUTES, title="Aegis API", version="9.9", description="tests")
    return json.loads(dump_json(built))  # what the server sends: JSON all the way


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def test_every_route_is_documented_and_every_documented_route_exists(
    document: dict[str, Any],
) -> None:
    table = {(route.method, route.path) for route in ROUTES}
    documented = {(method, path) for method, path, _ in operations(document)}
    assert documented == table
    router = Router(ROUTES)
    for method, path, _ in operations(document):
        concrete = path.replace("{key}", "smoke").replace("{run_id}", "abc123")
        assert router.match(method, concrete).route.path == path


def test_the_document_header(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    assert document["info"] == {"title": "Aegis API", "version": "9.9", "description": "tests"}


def test_parameters_are_those_of_the_route(document: dict[str, Any]) -> None:
    by_route = {(r.method, r.path): r for r in ROUTES}
    for method, path, operation in operations(document):
        route = by_route[(method, path)]
        documented = [(p["name"], p["in"]) for p in operation.get("parameters", [])]
        assert documented == [(p.name, p.where) for p in route.params]
        for param in operation.get("parameters", []):
            assert param["schema"]["type"] in ("string", "integer", "number")
            if param["in"] == "path":
                assert param["required"] is True
                assert f"{{{param['name']}}}" in path


def test_answers_and_errors_have_schemas(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        responses = operation["responses"]
        assert {"500", "503"} <= set(responses), (method, path)
        for status, response in responses.items():
            assert response["description"]
            (media,) = response["content"]
            if int(status) >= 400:
                assert response["content"][media]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }
        if "{" in path:
            assert "404" in responses, (method, path)


def test_posts_need_the_api_key(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer"}
    for method, _, operation in operations(document):
        if method == "POST":
            assert operation["security"] == [{"apiKey": []}, {"bearer": []}]
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
        else:
            assert "security" not in operation


def test_the_run_route_in_detail(document: dict[str, Any]) -> None:
    run = document["paths"]["/api/workflows/{key}/run"]["post"]
    assert set(run["responses"]) >= {"200", "202", "400", "401", "404", "413"}
    assert "Location" in run["responses"]["202"]["headers"]
    wait = next(p for p in run["parameters"] if p["name"] == "wait")
    assert wait["schema"] == {"type": "number", "exclusiveMinimum": 0, "maximum": 300.0}
    assert run["requestBody"]["required"] is False
    stream = document["paths"]["/api/events/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    found = set(refs(document))
    assert found, "the document refers to its schemas"
    for ref in found:
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas, ref
    named = {a.schema for r in ROUTES for a in r.answers if a.schema and a.media.endswith("json")}
    assert named <= set(SCHEMAS)


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))


def test_a_parameter_without_a_description() -> None:
    from aegis.api.routes import Answer, Param, Route

    def plain(ctx: Any, request: Any) -> Any:
        raise NotImplementedError

    route = Route("GET", "/x", plain, "x", (Answer(200, "fine"),), params=(Param("q"),))
    (param,) = build_openapi([route], title="t", version="1")["paths"]["/x"]["get"]["parameters"]
    schema = {"type": "string", "minLength": 1}
    assert param == {"name": "q", "in": "query", "required": False, "schema": schema}


def test_parameter_schemas_state_what_the_server_enforces(document: dict[str, Any]) -> None:
    # Found by the API fuzz: a schema-valid empty string, 20-digit integer or blank header
    # was refused with 400. The document now states the bounds the parser keeps.
    for _, _, operation in operations(document):
        for param in operation.get("parameters", []):
            schema = param["schema"]
            if schema["type"] == "integer":
                assert "minimum" in schema and schema["maximum"] <= MAX_INTEGER, param
            if schema["type"] == "string" and "enum" not in schema:
                assert schema["minLength"] == 1, param
                assert ("pattern" in schema) == (param["in"] == "header"), param
