"""Shared fixtures: the demo services on loopback, and step contexts over one HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from postgres_server import PostgresServer
from pyz_helpers import build_pyz, snapshot_project
from reliability_report import (  # noqa: F401  (hooks and fixture of the reliability suite)
    pytest_collection_finish,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_deselected,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    reliability,
)

from aegis.config.model import ServiceSpec, StepSpec, WorkflowSpec, frozen_mapping
from aegis.demo import DemoServices
from aegis.engine.state import RunState
from aegis.steps.base import StepContext
from aegis.steps.http import open_client


@pytest.fixture
def demo() -> Iterator[DemoServices]:
    """A qaagent and a bugalizer on ephemeral loopback ports, stopped after the test."""
    with DemoServices() as services:
        yield services


@pytest.fixture
def demo_services(demo: DemoServices) -> DemoServices:
    """The same pair under the name the CLI tests use."""
    return demo


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    """The run-wide client that steps share, as ``open_client()`` makes it."""
    async with open_client() as client:
        yield client


MakeContext = Callable[..., StepContext]


@pytest.fixture
def make_context(http_client: httpx.AsyncClient) -> MakeContext:
    """Builds a ``StepContext`` for one step, as the engine would hand it over."""

    def make(
        step_type: str,
        url: str | None = "http://svc.test",
        *,
        service: str = "svc",
        params: Mapping[str, Any] | None = None,
        state: RunState | None = None,
        environ: Mapping[str, str] | None = None,
        api_key_env: str | None = None,
        workflow: str = "pipeline",
        run_id: str = "run-1",
    ) -> StepContext:
        spec = StepSpec(
            type=step_type,
            name=step_type,
            service=service if url else None,
            params=frozen_mapping(dict(params or {})),
        )
        service_spec = (
            ServiceSpec(key=service, name=service.title(), url=url, api_key_env=api_key_env)
            if url
            else None
        )
        return StepContext(
            spec=spec,
            workflow=WorkflowSpec(key=workflow, name=workflow.title(), steps=(spec,)),
            run_id=run_id,
            service=service_spec,
            state=state or RunState(),
            http=http_client,
            environ=environ or {},
        )

    return make


# A private PostgreSQL server, once per session; a fresh database for each test.
@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """The URL (with its password) of a new, empty database on the private server."""
    name = postgres.database()
    try:
        yield postgres.url(name)
    finally:
        postgres.drop(name)


# The built single file, once per session, from a snapshot of the package.
@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return snapshot_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="session")
def pyz(tmp_path_factory: pytest.TempPathFactory, project: Path) -> Path:
    return build_pyz(tmp_path_factory.mktemp("dist") / "aegis.pyz", "--project", str(project))
