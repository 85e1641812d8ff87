"""The reference services: their contracts, injected faults, call log and lifecycle."""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import aegis.demo as demo_module
from aegis.demo import (
    ROUTES,
    TESTS,
    Bugalizer,
    DemoService,
    DemoServices,
    Fault,
    QaAgent,
    main,
    padded_json,
    parse_fault,
    validate_report,
)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def valid_report(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "project_id": "web-shop",
        "title": "[aegis] t failed",
        "description": "boom",
        "reporter": "aegis",
        "severity": "high",
        "steps_to_reproduce": ["run it"],
        "expected_behavior": "passes",
        "actual_behavior": "fails",
        "labels": ["aegis", "wf"],
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


# --------------------------------------------------------------------------- common


@pytest.mark.parametrize("service", ["qaagent", "bugalizer"])
def test_health(demo: DemoServices, client: httpx.Client, service: str) -> None:
    url = demo.qaagent_url if service == "qaagent" else demo.bugalizer_url
    answer = client.get(url + "/health")
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"
    if service == "qaagent":
        assert answer.json()["service"] == service
    else:  # the real bugalizer's readiness answer
        assert answer.json()["checks"] == {"database": True, "ollama": True, "worker": None}


def test_unknown_path_and_wrong_method(demo: DemoServices, client: httpx.Client) -> None:
    assert client.get(demo.qaagent_url + "/nope").json() == {"detail": "Not Found"}
    wrong = client.delete(demo.qaagent_url + "/api/runs")
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")
    both = client.put(demo.bugalizer_url + "/api/v1/reports")
    assert both.headers["allow"] == "GET, POST"


def test_keep_alive_with_content_length(demo: DemoServices) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", demo.qaagent.port, timeout=10)
    try:
        for _ in range(3):
            connection.request("GET", "/health")
            answer = connection.getresponse()
            assert answer.getheader("Content-Length") == str(len(answer.read()))
            assert answer.getheader("Connection") is None
        assert answer.version == 11
    finally:
        connection.close()


def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ("Transfer-Encoding: chunked\r\n", 411),
        ("Content-Length: ten\r\n", 400),
        (f"Content-Length: {2 * 1024 * 1024}\r\n", 413),
    ],
)
def test_bodies_it_will_not_read(demo: DemoServices, headers: str, status: int) -> None:
    head = f"POST /api/runs HTTP/1.1\r\nHost: x\r\n{headers}"
    answer_status, answer = raw_request(demo.qaagent.port, head)
    assert answer_status == status
    assert b"Connection: close" in answer


def test_a_bug_in_a_handler_is_a_500(
    demo: DemoServices, client: httpx.Client, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    def broken(request: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setitem(demo.qaagent._table, "/api/routes", {"GET": broken})
    with caplog.at_level(logging.ERROR, logger="aegis.demo"):
        answer = client.get(demo.qaagent_url + "/api/routes")
    assert (answer.status_code, answer.json()) == (500, {"detail": "Internal Server Error"})
    assert "error answering GET /api/routes" in caplog.text


def test_server_errors_go_to_the_log_but_lost_clients_do_not(
    demo: DemoServices, caplog: Any
) -> None:
    server = demo.qaagent._server
    assert server is not None
    with caplog.at_level(logging.ERROR, logger="aegis.demo"):
        for error in (ConnectionResetError(), ValueError("bug")):
            try:
                raise error
            except Exception:
                server.handle_error(None, ("127.0.0.1", 1))
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [ValueError]


# --------------------------------------------------------------------------- qaagent


def test_routes_are_deterministic(demo: DemoServices, client: httpx.Client) -> None:
    first = client.get(demo.qaagent_url + "/api/routes").json()
    assert first == client.get(demo.qaagent_url + "/api/routes").json()
    assert first == {"routes": [dict(r) for r in ROUTES]}
    assert len(first["routes"]) == 6


def test_full_run(demo: DemoServices, client: httpx.Client) -> None:
    answer = client.post(demo.qaagent_url + "/api/runs", json={"routes": []}).json()
    assert (answer["total"], answer["passed"], answer["failed"]) == (len(TESTS), 8, 2)
    assert answer["run_id"] == "run-1"
    failing = {t.id: t.message for t in TESTS if t.message}
    assert {f["test"]: f["message"] for f in answer["failures"]} == failing


def test_suite_and_unknown_suite(demo: DemoServices, client: httpx.Client) -> None:
    api = client.post(demo.qaagent_url + "/api/runs?suite=api", json={}).json()
    assert (api["total"], api["failed"]) == (4, 1)
    unknown = client.post(demo.qaagent_url + "/api/runs?suite=mobile", json={})
    assert (unknown.status_code, unknown.json()) == (422, {"detail": "unknown suite 'mobile'"})


def test_verify_only_reruns_the_given_tests(demo: DemoServices, client: httpx.Client) -> None:
    ids = ["test_api_login_rate_limit", "test_checkout_applies_discount", "test_missing"]
    answer = client.post(
        demo.qaagent_url + "/api/runs", json={"verify_only": True, "tests": ids}
    ).json()
    assert (answer["total"], answer["passed"], answer["failed"]) == (3, 1, 2)
    assert [f["test"] for f in answer["failures"]] == ids[1:]
    assert answer["failures"][1]["message"] == "no such test"


@pytest.mark.parametrize(
    ("content", "loc"),
    [
        (b"{not json", ["body", 0]),
        (b"[1, 2]", ["body"]),
        (b'{"routes": "all"}', ["body", "routes"]),
        (b'{"verify_only": true, "tests": "a"}', ["body", "tests"]),
        (b'{"verify_only": true, "tests": [1]}', ["body", "tests"]),
        (b'{"verify_only": true}', ["body", "tests"]),
    ],
)
def test_bad_run_bodies(
    demo: DemoServices, client: httpx.Client, content: bytes, loc: list[Any]
) -> None:
    answer = client.post(demo.qaagent_url + "/api/runs", content=content)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == loc


def test_api_key_is_checked_except_on_health(client: httpx.Client) -> None:
    with DemoServices(api_key="k") as demo:
        url = demo.qaagent_url
        assert client.get(url + "/health").status_code == 200
        assert client.get(url + "/api/routes").status_code == 401
        assert client.get(url + "/api/routes", headers={"X-API-Key": "x"}).status_code == 401
        assert client.get(url + "/api/routes", headers={"X-API-Key": "k"}).status_code == 200


# --------------------------------------------------------------------------- bugalizer


def test_files_gets_and_lists_reports(demo: DemoServices, client: httpx.Client) -> None:
    url = demo.bugalizer_url + "/api/v1/reports"
    created = client.post(url, json=valid_report())
    assert created.status_code == 201
    report = created.json()
    assert re.fullmatch("[0-9a-f]{16}", report["id"])
    assert (report["status"], report["severity"], report["labels"]) == (
        "submitted",
        "high",
        ["aegis", "wf"],
    )
    minimal = valid_report(
        severity=...,
        steps_to_reproduce=...,
        expected_behavior=...,
        actual_behavior=...,
        labels=...,
    )
    second = client.post(url, json=minimal).json()
    assert (second["severity"], second["steps_to_reproduce"], second["labels"]) == (
        "medium",
        None,
        None,
    )
    assert second["analysis_mode"] == "auto"
    listed = client.get(url).json()
    assert listed["total"] == 2
    assert [r["id"] for r in listed["reports"]] == [second["id"], report["id"]]  # newest first
    assert client.get(url + "/" + report["id"]).json()["title"] == "[aegis] t failed"
    missing = client.get(url + "/0123456789abcdef")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Bug report not found"})


def test_the_list_filters_and_pages(client: httpx.Client) -> None:
    with DemoServices(projects=["a", "b"]) as demo:
        url = demo.bugalizer_url + "/api/v1/reports"
        ids = [
            client.post(url, json=valid_report(project_id=p, title=f"t{n}")).json()["id"]
            for n, p in enumerate("abab")
        ]
        client.patch(f"{url}/{ids[2]}/status", json={"status": "triaged"})

        def listed(**query: Any) -> tuple[list[str], int]:
            answer = client.get(url, params=query).json()
            return [r["id"] for r in answer["reports"]], answer["total"]

        assert listed(project_id="a") == ([ids[2], ids[0]], 2)
        assert listed(project_id="a", status="submitted") == ([ids[0]], 1)
        assert listed(order="asc", limit=2, offset=1) == (ids[1:3], 4)
        too_many = client.get(url, params={"limit": 501})
        assert too_many.status_code == 422
        assert too_many.json() == {
            "detail": [
                {
                    "loc": ["query", "limit"],
                    "msg": "Input should be less than or equal to 500",
                    "type": "less_than_equal",
                }
            ]
        }
        assert client.get(url, params={"order": "up"}).status_code == 422
        assert client.get(url, params={"offset": "x"}).status_code == 422
        assert client.get(url, params={"offset": -1}).status_code == 422


def test_status_moves_follow_the_state_machine(demo: DemoServices, client: httpx.Client) -> None:
    url = demo.bugalizer_url + "/api/v1/reports"
    report_id = client.post(url, json=valid_report()).json()["id"]
    status = f"{url}/{report_id}/status"
    skipped = client.patch(status, json={"status": "closed"})
    assert (skipped.status_code, skipped.json()) == (
        409,
        {"detail": "Invalid transition: 'submitted' → 'closed'"},
    )
    assert client.patch(status, json={"status": "triaged"}).json() == {
        "id": report_id,
        "previous_status": "submitted",
        "new_status": "triaged",
        "resolution_reason": None,
    }
    closed = client.patch(status, json={"status": "closed", "resolution_reason": "fixed"})
    assert closed.json()["new_status"] == "closed"
    assert demo.bugalizer.reports[0]["resolution_reason"] == "fixed"
    again = client.patch(status, json={"status": "triaged"})
    assert (again.status_code, again.json()) == (
        409,
        {"detail": "Cannot transition from terminal status 'closed'"},
    )
    assert client.patch(status, json={"status": "gone"}).json()["detail"][0]["type"] == "enum"
    assert client.patch(url + "/nope/status", json={"status": "triaged"}).status_code == 404


def test_readiness_can_be_degraded_and_liveness_stays_ok(
    demo: DemoServices, client: httpx.Client
) -> None:
    demo.bugalizer.degraded = True
    ready = client.get(demo.bugalizer_url + "/health")
    assert (ready.status_code, ready.json()["status"]) == (200, "degraded")
    live = client.get(demo.bugalizer_url + "/health/live")
    assert (live.status_code, live.json()["status"]) == (200, "ok")


def test_a_processed_fault_stores_the_report_then_spoils_the_answer(
    demo: DemoServices, client: httpx.Client
) -> None:
    url = demo.bugalizer_url + "/api/v1/reports"
    demo.bugalizer.inject("/api/v1/reports", Fault(mode="drop", processed=True, method="POST"))
    assert client.get(url).json()["total"] == 0  # a GET is not the fault's method
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(url, json=valid_report())
    demo.bugalizer.inject("/api/v1/reports", Fault(status=503, processed=True))
    assert client.post(url, json=valid_report()).status_code == 503
    assert len(demo.bugalizer.reports) == 2


def test_unknown_project_is_404(demo: DemoServices, client: httpx.Client) -> None:
    answer = client.post(demo.bugalizer_url + "/api/v1/reports", json=valid_report(project_id="x"))
    assert (answer.status_code, answer.json()) == (404, {"detail": "Project 'x' not found"})
    assert demo.bugalizer.reports == []


def test_bad_body_is_422_with_a_detail_list(demo: DemoServices, client: httpx.Client) -> None:
    answer = client.post(demo.bugalizer_url + "/api/v1/reports", json={"title": "t"})
    assert answer.status_code == 422
    assert answer.json()["detail"][0] == {
        "loc": ["body", "description"],
        "msg": "Field required",
        "type": "missing",
    }
    assert [p["loc"][1] for p in answer.json()["detail"]] == [
        "description",
        "reporter",
        "project_id",
    ]


def test_bad_json_is_422(demo: DemoServices, client: httpx.Client) -> None:
    answer = client.post(demo.bugalizer_url + "/api/v1/reports", content=b"{")
    assert answer.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize(
    ("changes", "loc", "kind"),
    [
        ({"title": ...}, ["body", "title"], "missing"),
        ({"description": ...}, ["body", "description"], "missing"),
        ({"title": 5}, ["body", "title"], "string_type"),
        ({"reporter": ["a"]}, ["body", "reporter"], "string_type"),
        ({"title": ""}, ["body", "title"], "string_too_short"),
        ({"title": "x" * 501}, ["body", "title"], "string_too_long"),
        ({"severity": "urgent"}, ["body", "severity"], "enum"),
        ({"steps_to_reproduce": "run it"}, ["body", "steps_to_reproduce"], "list_type"),
        ({"labels": ["a", 2]}, ["body", "labels", 1], "string_type"),
        ({"reporter": ...}, ["body", "reporter"], "missing"),
        ({"reporter": "r" * 201}, ["body", "reporter"], "string_too_long"),
        ({"project_id": "p" * 101}, ["body", "project_id"], "string_too_long"),
        ({"description": "d" * 50_001}, ["body", "description"], "string_too_long"),
        ({"description": ""}, ["body", "description"], "string_too_short"),
        ({"analysis_mode": "cloud"}, ["body", "analysis_mode"], "enum"),
        ({"environment": 3}, ["body", "environment"], "string_type"),
    ],
)
def test_validate_report(changes: dict[str, Any], loc: list[Any], kind: str) -> None:
    [problem] = validate_report(valid_report(**changes))
    assert (problem["loc"], problem["type"]) == (loc, kind)


def test_validate_report_accepts_a_full_body_and_rejects_a_non_object() -> None:
    assert validate_report(valid_report(title="x" * 500)) == []
    [problem] = validate_report(["not", "an", "object"])
    assert problem["loc"] == ["body"]
    assert "Input should be 'critical', 'high', 'medium' or 'low'" in str(
        validate_report(valid_report(severity="x"))
    )


def test_other_projects_can_be_configured(client: httpx.Client) -> None:
    with DemoServices(projects=["p-1"]) as demo:
        url = demo.bugalizer_url + "/api/v1/reports"
        assert client.post(url, json=valid_report(project_id="p-1")).status_code == 201
        assert client.post(url, json=valid_report()).status_code == 404


# --------------------------------------------------------------------------- faults


def test_fault_validation() -> None:
    bad_fields: list[dict[str, Any]] = [{"status": 42}, {"times": 0}, {"delay": -1}]
    for bad in bad_fields:
        with pytest.raises(ValueError):
            Fault(**bad)
    assert Fault().status == 503


def test_fail_the_next_n_calls(demo: DemoServices, client: httpx.Client) -> None:
    demo.qaagent.inject("/api/routes", Fault(status=429, times=2, retry_after="Wed, 1 Jan"))
    statuses = [client.get(demo.qaagent_url + "/api/routes") for _ in range(3)]
    assert [a.status_code for a in statuses] == [429, 429, 200]
    assert statuses[0].headers["retry-after"] == "Wed, 1 Jan"
    assert statuses[0].json() == {"detail": "injected fault: HTTP 429"}
    assert "retry-after" not in statuses[2].headers


def test_a_fault_applies_to_its_path_only(demo: DemoServices, client: httpx.Client) -> None:
    demo.qaagent.inject("/api/runs", Fault(status=500, times=None))
    assert client.get(demo.qaagent_url + "/api/routes").status_code == 200
    for _ in range(3):
        assert client.post(demo.qaagent_url + "/api/runs", json={}).status_code == 500
    demo.qaagent.clear_faults()
    assert client.post(demo.qaagent_url + "/api/runs", json={}).status_code == 200


def test_a_star_fault_applies_to_every_path(demo: DemoServices, client: httpx.Client) -> None:
    demo.bugalizer.inject("*", Fault(status=503, times=2))
    assert client.get(demo.bugalizer_url + "/health").status_code == 503
    assert client.get(demo.bugalizer_url + "/api/v1/reports").status_code == 503
    assert client.get(demo.bugalizer_url + "/health").status_code == 200


def test_a_slow_answer_is_still_the_real_one(demo: DemoServices, client: httpx.Client) -> None:
    demo.qaagent.inject("/api/routes", Fault(status=None, delay=0.2))
    started = time.monotonic()
    answer = client.get(demo.qaagent_url + "/api/routes")
    assert time.monotonic() - started >= 0.2
    assert answer.json()["routes"]


def test_down_drops_the_connection(demo: DemoServices, client: httpx.Client) -> None:
    demo.qaagent.inject("/api/routes", Fault(down=True))
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(demo.qaagent_url + "/api/routes")
    assert demo.qaagent.calls[-1].status is None
    assert client.get(demo.qaagent_url + "/api/routes").status_code == 200


def test_stop_ends_a_slow_answer_without_answering(
    demo: DemoServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrived = threading.Event()
    record = demo.qaagent.record

    def record_and_signal(*args: Any) -> None:
        record(*args)
        arrived.set()

    monkeypatch.setattr(demo.qaagent, "record", record_and_signal)
    demo.qaagent.inject("/api/routes", Fault(status=None, delay=60))
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            httpx.get(demo.qaagent_url + "/api/routes", timeout=30)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert arrived.wait(10)
    started = time.monotonic()
    demo.qaagent.stop()
    caller.join(10)
    assert time.monotonic() - started < 5
    assert [type(e) for e in outcome] == [httpx.RemoteProtocolError]


def raw_exchange(port: int, path: str = "/api/routes") -> tuple[bytes, BaseException | None]:
    """Send a GET on a bare socket; what came back, and how the line ended (None: closed)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError as exc:
            return received, exc
    return received, None


def split_answer(raw: bytes) -> tuple[dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")[1:]
    return {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}, body


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "explode"},
        {"trickle": -1},
        {"after": -1},
        {"size": 3},
        {"body": b"x", "payload": {"a": 1}},
        {"payload": {"a": 1}, "size": 1000},
    ],
)
def test_new_fault_fields_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Fault(**bad)


def test_the_old_positional_form_still_works() -> None:
    fault = Fault(503, 2, "5", 0.5, False)
    assert (fault.status, fault.times, fault.retry_after, fault.delay, fault.down) == (
        503,
        2,
        "5",
        0.5,
        False,
    )
    assert fault.mode == "answer" and Fault(down=True).effective_mode == "drop"


def test_reset_answers_nothing_and_resets_the_line(demo: DemoServices) -> None:
    demo.qaagent.inject("/api/routes", Fault(status=None, mode="reset"))
    received, ended = raw_exchange(demo.qaagent.port)
    assert (received, type(ended)) == (b"", ConnectionResetError)
    assert demo.qaagent.calls[-1].status is None


def test_reset_mid_body_sends_headers_and_part_of_the_body(demo: DemoServices) -> None:
    demo.qaagent.inject("/api/routes", Fault(status=None, mode="reset_mid_body"))
    received, ended = raw_exchange(demo.qaagent.port)
    headers, body = split_answer(received)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert 0 < len(body) < int(headers["content-length"])
    assert isinstance(ended, ConnectionResetError)


def test_stall_never_answers_and_does_not_hold_up_stop(
    demo: DemoServices, client: httpx.Client
) -> None:
    demo.qaagent.inject("/api/routes", Fault(status=None, mode="stall", times=2))
    with pytest.raises(httpx.ReadTimeout):
        client.get(demo.qaagent_url + "/api/routes", timeout=0.3)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            httpx.get(demo.qaagent_url + "/api/routes", timeout=30)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 10
    while len(demo.qaagent.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the call log, not timing the service
    started = time.monotonic()
    demo.qaagent.stop()
    caller.join(10)
    assert time.monotonic() - started < 5
    assert [type(e) for e in outcome] == [httpx.RemoteProtocolError]


def test_trickle_sends_the_real_answer_slowly(demo: DemoServices, client: httpx.Client) -> None:
    normal = client.get(demo.qaagent_url + "/api/routes").content
    demo.qaagent.inject("/api/routes", Fault(status=None, trickle=0.01))
    started = time.monotonic()
    with client.stream("GET", demo.qaagent_url + "/api/routes") as answer:
        pieces = list(answer.iter_raw())
    assert b"".join(pieces) == normal
    assert len(pieces) > 5  # it came in several pieces, a few bytes each
    assert time.monotonic() - started >= 0.01 * (len(normal) // 16 - 1)


@pytest.mark.parametrize(
    ("fault", "status", "body", "content_type"),
    [
        (Fault(200, body="{oops"), 200, b"{oops", "application/json"),
        (Fault(200, body=b""), 200, b"", "application/json"),
        (Fault(None, body="<html/>", content_type="text/html"), 200, b"<html/>", "text/html"),
        (Fault(201, payload={"routes": "all"}), 201, b'{"routes":"all"}', "application/json"),
        (Fault(status=None, content_type="text/plain"), 200, None, "text/plain"),
    ],
)  # fmt: skip
def test_bodies_and_content_types_can_be_replaced(
    demo: DemoServices,
    client: httpx.Client,
    fault: Fault,
    status: int,
    body: bytes | None,
    content_type: str,
) -> None:
    demo.qaagent.inject("/api/routes", fault)
    answer = client.get(demo.qaagent_url + "/api/routes")
    assert (answer.status_code, answer.headers["content-type"]) == (status, content_type)
    if body is None:
        assert answer.json()["routes"] == list(ROUTES)
    else:
        assert answer.content == body


def test_redirects_carry_a_location(demo: DemoServices, client: httpx.Client) -> None:
    target = demo.bugalizer_url + "/health"
    demo.qaagent.inject("/api/routes", Fault(307, location=target, retry_after=1))
    answer = client.get(demo.qaagent_url + "/api/routes")
    assert (answer.status_code, answer.headers["location"]) == (307, target)
    assert answer.headers["retry-after"] == "1"


@pytest.mark.parametrize("size", [26, 1000, 3 * 65536 + 7])
def test_padded_json_has_exactly_the_size_asked_for(size: int) -> None:
    document = b"".join(padded_json(size))
    assert len(document) == size
    assert json.loads(document)["routes"] == []


@pytest.mark.parametrize("chunked", [False, True])
def test_a_large_answer_is_streamed(demo: DemoServices, chunked: bool) -> None:
    size = 3 * 1024 * 1024
    demo.qaagent.inject("/api/routes", Fault(200, size=size, chunked=chunked))
    with httpx.stream("GET", demo.qaagent_url + "/api/routes", timeout=10) as answer:
        length = answer.headers.get("content-length")
        body = answer.read()
    assert length == (None if chunked else str(size))
    assert answer.headers.get("transfer-encoding") == ("chunked" if chunked else None)
    assert len(body) == size and json.loads(body)["routes"] == []


def test_gzip_compresses_whatever_the_body(demo: DemoServices, client: httpx.Client) -> None:
    demo.qaagent.inject("/api/routes", Fault(status=None, gzip=True))
    answer = client.get(demo.qaagent_url + "/api/routes")
    assert answer.headers["content-encoding"] == "gzip"
    assert answer.json()["routes"] == list(ROUTES)
    demo.qaagent.inject("/api/routes", Fault(200, size=20 * 1024 * 1024, gzip=True))
    with client.stream("GET", demo.qaagent_url + "/api/routes") as bomb:
        compressed = b"".join(bomb.iter_raw())
    assert len(compressed) < 100_000  # a bomb: tiny on the wire
    assert len(zlib.decompress(compressed, wbits=31)) == 20 * 1024 * 1024


def test_after_lets_the_first_calls_through(demo: DemoServices, client: httpx.Client) -> None:
    demo.qaagent.inject("/api/routes", Fault(500, after=2, times=1))
    statuses = [client.get(demo.qaagent_url + "/api/routes").status_code for _ in range(4)]
    assert statuses == [200, 200, 500, 200]


def test_the_call_log(demo: DemoServices, client: httpx.Client) -> None:
    client.post(demo.qaagent_url + "/api/runs?suite=api", json={"routes": [1]})
    client.post(demo.qaagent_url + "/api/runs", content=b"{oops")
    client.get(demo.qaagent_url + "/health", headers={"X-Trace": "t"})
    runs, bad, health = demo.qaagent.calls
    assert (runs.method, runs.path, runs.query, runs.json, runs.status) == (
        "POST",
        "/api/runs",
        "suite=api",
        {"routes": [1]},
        200,
    )
    assert (bad.json, bad.status) == (None, 422)
    assert (health.json, health.headers["x-trace"]) == (None, "t")
    assert demo.bugalizer.calls == []


# --------------------------------------------------------------------------- lifecycle


def test_stop_refuses_and_start_comes_back_on_the_same_port(client: httpx.Client) -> None:
    service = QaAgent().start()
    try:
        url = service.url
        assert service.start() is service  # already running: no second server
        assert client.get(url + "/health").status_code == 200
        service.stop()
        assert not service.running
        with pytest.raises(httpx.ConnectError):
            client.get(url + "/health")
        service.start()
        assert service.url == url
        assert client.get(url + "/health").status_code == 200
    finally:
        service.stop()
        service.stop()  # stopping twice is harmless


def test_a_service_that_cannot_listen_leaves_nothing_running() -> None:
    with DemoServices() as taken:
        demo = DemoServices(bugalizer_port=taken.bugalizer.port)
        with pytest.raises(OSError):
            demo.start()
        assert not demo.qaagent.running and not demo.bugalizer.running


def test_ipv6_url() -> None:
    service = Bugalizer("::1")
    assert service.url == "http://[::1]:0"
    try:
        service.start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert httpx.get(service.url + "/health").status_code == 200
    finally:
        service.stop()


# --------------------------------------------------------------------------- python -m aegis.demo


def test_main_serves_until_stopped(capsys: pytest.CaptureFixture[str]) -> None:
    stop = threading.Event()
    stop.set()
    assert main(["--qaagent-port", "0", "--bugalizer-port", "0"], stop=stop) == 0
    out = capsys.readouterr().out
    assert out.startswith("qaagent    http://127.0.0.1:")
    assert "bugalizer  http://127.0.0.1:" in out


def test_main_in_another_thread(capsys: pytest.CaptureFixture[str]) -> None:
    stop = threading.Event()
    stop.set()
    codes: list[int] = []
    worker = threading.Thread(
        target=lambda: codes.append(
            main(["--qaagent-port", "0", "--bugalizer-port", "0"], stop=stop)
        )
    )
    worker.start()
    worker.join(10)
    assert codes == [0]


@pytest.mark.parametrize(
    ("text", "service", "path", "fault"),
    [
        ("qaagent:/api/runs=status=503,times=2,retry_after=5", "qaagent", "/api/runs",
         Fault(503, times=2, retry_after=5)),
        ("bugalizer:*=mode=stall, times=none", "bugalizer", "*",
         Fault(mode="stall", times=None)),
        ("qaagent:/api/routes=status=none,trickle=0.5,gzip=true", "qaagent", "/api/routes",
         Fault(status=None, trickle=0.5, gzip=True)),
        ('qaagent:/api/routes={"status": 200, "payload": {"routes": "x"}}', "qaagent",
         "/api/routes", Fault(200, payload={"routes": "x"})),
        ("qaagent:/api/routes=body={oops", "qaagent", "/api/routes", Fault(body="{oops")),
        ("qaagent:/x=", "qaagent", "/x", Fault()),
        ('qaagent:/api/runs={"times": "none", "status": "502", "gzip": "true"}', "qaagent",
         "/api/runs", Fault(502, times=None, gzip=True)),
        ('qaagent:/x={"status": 200, "payload": "none", "body": null}', "qaagent", "/x",
         Fault(200, payload="none")),
    ],
)  # fmt: skip
def test_parse_fault(text: str, service: str, path: str, fault: Fault) -> None:
    assert parse_fault(text) == (service, path, fault)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("qaagent/api/runs=status=503", "expected SERVICE:PATH=SPEC"),
        ("qaagent:/api/runs", "expected SERVICE:PATH=SPEC"),
        ("bugalyzer:/x=status=500", "unknown service 'bugalyzer'"),
        ("qaagent:/x=staus=500", "unknown fault field 'staus'"),
        ("qaagent:/x=status", "expected KEY=VALUE in the fault spec, got 'status'"),
        ("qaagent:/x=status=42", "status must be an HTTP status code, got 42"),
        ("qaagent:/x=delay=soon", "bad fault 'delay=soon'"),
        ("qaagent:/x=[1]", "expected KEY=VALUE"),
        ("qaagent:/x={1: 2}", "Expecting property name"),
        ("qaagent:/x={} ", ""),
    ],
)
def test_parse_fault_rejects(text: str, problem: str) -> None:
    if not problem:
        assert parse_fault(text)[2] == Fault()
        return
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_fault(text)


def test_main_injects_faults_given_on_the_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    statuses: list[int] = []

    def call_while_serving(stop: threading.Event) -> None:
        url = capsys.readouterr().out.split()[1]
        with httpx.Client(timeout=10) as client:
            statuses.extend(client.get(url + "/api/routes").status_code for _ in range(3))

    monkeypatch.setattr(demo_module, "_wait", call_while_serving)
    argv = ["--qaagent-port", "0", "--bugalizer-port", "0"]
    assert main([*argv, "--fault", "qaagent:/api/routes=status=502,times=2"]) == 0
    assert statuses == [502, 502, 200]


def test_main_refuses_a_bad_fault(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--fault", "qaagent:/x=mode=explode"])
    assert exited.value.code == 2
    assert "argument --fault: mode must be one of" in capsys.readouterr().err


def test_a_fault_line_says_what_was_injected(capsys: pytest.CaptureFixture[str]) -> None:
    stop = threading.Event()
    stop.set()
    argv = ["--qaagent-port", "0", "--bugalizer-port", "0", "--fault", "bugalizer:*=mode=reset"]
    assert main(argv, stop=stop) == 0
    assert "fault      bugalizer *: status=503, mode='reset'" in capsys.readouterr().out


def test_main_reports_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    with DemoServices() as taken:
        code = main(["--qaagent-port", str(taken.qaagent.port), "--bugalizer-port", "0"])
    assert code == 1
    assert "cannot start the demo services on 127.0.0.1" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_module_runs_in_the_foreground_and_stops_cleanly(sig: signal.Signals) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = ["--qaagent-port", "0", "--bugalizer-port", "0", "--api-key", "k"]
    process = subprocess.Popen(
        [sys.executable, "-m", "aegis.demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        qaagent = process.stdout.readline().split()[1]
        bugalizer = process.stdout.readline().split()[1]
        assert process.stdout.readline().strip() == "Press Ctrl-C to stop."
        assert httpx.get(qaagent + "/health").status_code == 200
        assert httpx.get(bugalizer + "/api/v1/reports").status_code == 401
        process.send_signal(sig)
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert "Traceback" not in err


class SigtermWhileWaiting(threading.Event):
    def wait(self, timeout: float | None = None) -> bool:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # never reached in full: the handler interrupts it at once
        raise AssertionError("SIGTERM did not end the wait")


def test_main_stops_on_sigterm_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    before = signal.getsignal(signal.SIGTERM)
    code = main(["--qaagent-port", "0", "--bugalizer-port", "0"], stop=SigtermWhileWaiting())
    assert code == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_bare_service_has_health_only(client: httpx.Client) -> None:
    service = DemoService().start()
    try:
        assert client.get(service.url + "/health").json()["service"] == "service"
        assert client.get(service.url + "/api/routes").status_code == 404
    finally:
        service.stop()
