"""The reference qaagent's start-and-poll API, shaped like the real qaagent's.

    POST /api/branches/{branch}/run-tests   {"suite"?: str, "tests"?: [id, ...]}
         -> 202 {"run_id", "branch", "status": "queued"}
    GET  /api/runs/{run_id}
         -> 200 {"run_id", "branch", "suite", "status": "running" | "completed",
                 "summary": {"total", "passed", "failed"} (once completed)}
    GET  /api/runs/{run_id}/findings
         -> 200 {"run_id", "summary", "findings": [{"test_id", "title", "message"}]}
            409 while the run is not completed

A started run reports ``running`` to its first ``polls_until_done`` reads, then
``completed``, so a client has to poll. ``{branch}`` is one path segment, decoded as it
arrives: the answer's ``branch`` is what the service understood. ``tests`` re-runs just
those tests (flaky ones pass then), as the contract's ``verify_only`` does.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aegis.demo.service import BadRequest, Request, Response

__all__ = ["StartedRuns"]

Outcomes = list[tuple[str, str | None]]  # (test id, failure message or None)

_START = re.compile(r"/api/branches/([^/]+)/run-tests")
_RUN = re.compile(r"/api/runs/([^/]+)")
_FINDINGS = re.compile(r"/api/runs/([^/]+)/findings")


@dataclass
class _Run:
    run_id: str
    branch: str
    suite: str | None
    outcomes: Outcomes
    polls_left: int

    def summary(self) -> dict[str, Any]:
        failed = sum(1 for _, message in self.outcomes if message is not None)
        total = len(self.outcomes)
        return {"total": total, "passed": total - failed, "failed": failed}


class StartedRuns:
    """Test runs started by one request and read by later ones (see the module doc)."""

    def __init__(
        self,
        full_run: Callable[[str | None], Outcomes],
        rerun: Callable[[Any], Outcomes],
        polls_until_done: int = 1,
    ) -> None:
        self._full_run = full_run
        self._rerun = rerun
        self.polls_until_done = polls_until_done
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}

    @staticmethod
    def handles(path: str) -> bool:
        """Whether ``path`` is one of this API's (``/api/runs`` itself is the contract's)."""
        return any(p.fullmatch(path) for p in (_START, _RUN, _FINDINGS))

    def answer(self, request: Request) -> Response:
        """The answer to a request for one of this API's paths."""
        start = _START.fullmatch(request.path)
        if start is not None:
            return self._only("POST", request) or self._start(request, unquote(start.group(1)))
        findings = _FINDINGS.fullmatch(request.path)
        if findings is not None:
            return self._only("GET", request) or self._findings(unquote(findings.group(1)))
        run = _RUN.fullmatch(request.path)
        assert run is not None  # handles() said so
        return self._only("GET", request) or self._read(unquote(run.group(1)))

    @staticmethod
    def _only(method: str, request: Request) -> Response | None:
        if request.method == method:
            return None
        return Response(405, {"detail": "Method Not Allowed"}, headers={"Allow": method})

    def _start(self, request: Request, branch: str) -> Response:
        body = request.json() if request.body else {}
        if not isinstance(body, dict):
            raise BadRequest(422, {"detail": "the body should be a JSON object"})
        suite = body.get("suite")
        if suite is not None and not isinstance(suite, str):
            raise BadRequest(422, {"detail": "suite should be a string"})
        tests = body.get("tests")
        outcomes = self._full_run(suite) if tests is None else self._rerun(tests)
        with self._lock:
            run = _Run(f"tr-{len(self._runs) + 1}", branch, suite, outcomes, self.polls_until_done)
            self._runs[run.run_id] = run
        return Response(202, {"run_id": run.run_id, "branch": branch, "status": "queued"})

    def _find(self, run_id: str) -> _Run:
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            raise BadRequest(404, {"detail": f"no run {run_id!r}"})
        return run

    def _read(self, run_id: str) -> Response:
        run = self._find(run_id)
        with self._lock:
            running = run.polls_left > 0
            run.polls_left = max(run.polls_left - 1, 0)
        answer: dict[str, Any] = {
            "run_id": run.run_id,
            "branch": run.branch,
            "suite": run.suite,
            "status": "running" if running else "completed",
        }
        if not running:
            answer["summary"] = run.summary()
        return Response(200, answer)

    def _findings(self, run_id: str) -> Response:
        run = self._find(run_id)
        if run.polls_left > 0:
            raise BadRequest(409, {"detail": f"run {run_id!r} is still running"})
        findings = [
            {"test_id": test_id, "title": f"{test_id} failed", "message": message}
            for test_id, message in run.outcomes
            if message is not None
        ]
        return Response(200, {"run_id": run.run_id, "summary": run.summary(), "findings": findings})
