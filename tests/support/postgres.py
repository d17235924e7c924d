"""A throwaway PostgreSQL for the tests that need one (issue 16).

Import the fixture into a test module (`from tests.support.postgres import postgres_server`);
it is meant to move into the shared test support later. Tests using it skip, saying why,
where PostgreSQL is not installed; `bash scripts/dev test` installs it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from devkit.postgres import BIN_ENV, PostgresServer, find_bin_dir

NOT_INSTALLED = (
    "PostgreSQL not found (initdb, postgres and psql in /usr/lib/postgresql/*/bin, on PATH "
    f"or in ${BIN_ENV}): these tests need a real server; install Debian's postgresql "
    "package, or run `bash scripts/dev test`, which does"
)


def require_postgres() -> None:
    """Skip the calling test, with the reason, when PostgreSQL is not installed."""
    if find_bin_dir() is None:
        pytest.skip(NOT_INSTALLED)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL for the whole session (initdb and start cost 1-3 s), stopped at the end.

    Tests isolate themselves with `create_database()` rather than by restarting it; a test
    that must stop or restart a server starts its own `PostgresServer`.
    """
    require_postgres()
    with PostgresServer() as server:
        yield server


_databases = itertools.count(1)


def fresh_database(server: PostgresServer) -> str:
    """A new, empty database on `server` for one test; its URL (the application's role)."""
    return server.create_database(f"t{os.getpid()}_{next(_databases)}")
