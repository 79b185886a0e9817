"""Shared fixtures: a real PostgreSQL server (started once per session on 127.0.0.1)."""

import pytest
from pg_server import PostgresServer, available


@pytest.fixture(scope="session")
def postgres_server():
    reason = available()
    if reason:
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server
