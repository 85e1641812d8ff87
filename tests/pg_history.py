"""A PostgreSQL history database shared by a test session, emptied before each test.

The store contract tests run against PostgreSQL too (tests/test_history.py and its
neighbours). A new database and its migration cost a third of a second a test; one
migrated database whose tables are truncated costs a few milliseconds. Tests of opening
and migrating use the ``pg_url`` fixture instead, a new empty database each.

Import ``pg_history_url`` (and ``pg_history_database``) into a test module to use them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from postgres_server import PostgresServer

__all__ = ["pg_history_database", "pg_history_url"]


@pytest.fixture(scope="session")
def pg_history_database(postgres: PostgresServer) -> Iterator[tuple[str, str]]:
    """(name, URL) of a database migrated once for the session."""
    from aegis.history.postgres import PostgresHistory

    name = postgres.database()
    PostgresHistory.open(postgres.url(name)).close()
    try:
        yield name, postgres.url(name)
    finally:
        postgres.drop(name)


@pytest.fixture
def pg_history_url(postgres: PostgresServer, pg_history_database: tuple[str, str]) -> str:
    """The URL of the session's history database, every table in it emptied."""
    name, url = pg_history_database
    postgres.sql(
        """DO $$ BEGIN EXECUTE (SELECT 'TRUNCATE ' || string_agg('aegis.' || tablename, ', ')
            || ' RESTART IDENTITY' FROM pg_tables WHERE schemaname = 'aegis'
            AND tablename <> 'schema_version'); END $$""",
        database=name,
    )
    return url
