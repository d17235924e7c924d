"""A throwaway PostgreSQL for the tests that need one (issue 16).

Import the fixture into a test module (`from tests.support.postgres import postgres_server`);
it is meant to move into the shared test support later. Tests using it skip, saying why,
where PostgreSQL is not installed; `bash scripts/dev test` installs it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """A fresh database's URL (`fresh_database`)."""
    return fresh_database(postgres_server)


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[Any]:
    """The PostgreSQL store on `pg_url`, opened (its schema made), unfenced."""
    from engage_listener.config.model import StoreConfig  # noqa: PLC0415
    from engage_listener.store.open import build_store  # noqa: PLC0415

    opened = build_store(StoreConfig(Path("unused"), url=pg_url))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def lock_waiters(url: str, count: int, deadline: float = 10.0) -> None:
    """Until `count` backends wait on another transaction's lock (pg_stat_activity)."""
    import psycopg  # noqa: PLC0415 - PostgreSQL-only support

    stop = time.monotonic() + deadline
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while time.monotonic() < stop:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            )
            row = await cur.fetchone()
            if row is not None and row[0] >= count:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} backends waited on a lock")


class RoundTrips:
    """Counts one connection's round trips to the server, from libpq's own trace: each
    Sync (the end of an extended-protocol statement, or of a pipeline) and each simple
    Query is one wait for the server's answer. Deterministic, unlike any timing.

    `conn` is a psycopg connection (sync or async); `count()` is the number so far."""

    def __init__(self, conn: Any, path: Path) -> None:
        from psycopg import pq  # noqa: PLC0415 - PostgreSQL-only support

        self._path = path
        self._conn = conn
        # libpq closes the stream it is given (fclose) on untrace: a descriptor of its own
        conn.pgconn.trace(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def messages(self) -> list[str]:
        """The frontend's messages so far: 'Sync', 'Query', 'Parse', 'Bind'..."""
        lines = self._path.read_text(errors="replace").splitlines()
        return [f[2] for f in (line.split("\t") for line in lines) if len(f) > 2 and f[0] == "F"]

    def count(self) -> int:
        return sum(1 for m in self.messages() if m in ("Sync", "Query"))

    def statements(self) -> int:
        """Statements sent so far (each a Bind, or a simple Query): each costs the driver
        its Python work, in a round trip of its own or not."""
        return sum(1 for m in self.messages() if m in ("Bind", "Query"))

    def stop(self) -> None:
        self._conn.pgconn.untrace()
