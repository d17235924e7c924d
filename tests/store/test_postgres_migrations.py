"""The PostgreSQL store's migrations after its baseline (version 7): a database made by an
earlier program is brought up to date when a daemon opens it, as SQLite's are
(test_sqlite_migrations). Against a real PostgreSQL (tests.support.postgres)."""

from __future__ import annotations

from pathlib import Path

import psycopg

from devkit.postgres import PostgresServer
from engage_listener.config.model import StoreConfig
from engage_listener.store.open import build_store
from engage_listener.store.postgres.schema import BASELINE, MIGRATIONS
from tests.support.postgres import fresh_database, postgres_server

__all__ = ["postgres_server"]  # a fixture

UPDATED = "2025-06-01T10:00:00+00:00"


async def _baseline(url: str) -> None:
    """A database as the program of schema 7 left it, with a case closed by hand-written
    SQL (status only) and an open one."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute(
            "CREATE TABLE schema_version (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute(MIGRATIONS[BASELINE].encode())
        await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (BASELINE,))
        for number, status in (("000001", "closed"), ("000002", "open")):
            await conn.execute(
                "INSERT INTO cases (case_number, listener, sender, subject, normalized_subject,"
                " customer_id, status, created_at, updated_at)"
                " VALUES (%s, 'L', 'a@example.com', 'Factura', 'factura', 1, %s, %s, %s)",
                (number, status, "2025-01-01T00:00:00+00:00", UPDATED),
            )


async def test_migration_8_gives_cases_closed_before_their_last_change_as_close_time(
    postgres_server: PostgresServer,
) -> None:
    url = fresh_database(postgres_server)
    await _baseline(url)
    store = build_store(StoreConfig(Path("unused"), url=url))
    await store.open()
    try:
        closed, still_open = await store.case_detail(1), await store.case_detail(2)
        assert closed is not None and still_open is not None
        assert (closed.status, closed.closed_at, closed.close_reason) == ("closed", UPDATED, None)
        assert (still_open.status, still_open.closed_at) == ("open", None)
        async with store.transaction() as tx:  # a follow-up to it finds it closed
            found = await tx.closed_case_by_subject(1, None, "factura")
            assert found is not None and (found.id, found.closed_at) == (1, UPDATED)
            assert await tx.reopen_case(1, "2025-07-01T00:00:00+00:00")
    finally:
        await store.close()
    database = url.rsplit("/", 1)[1]
    indexes = postgres_server.sql(
        "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes"
        " WHERE tablename = 'cases' AND indexname IN ('cases_related', 'cases_updated')",
        database=database,
    )
    assert indexes.strip() == "cases_related,cases_updated"
    versions = postgres_server.sql(
        "SELECT version FROM schema_version ORDER BY 1", database=database
    )
    assert versions.split() == [str(v) for v in sorted(MIGRATIONS)]
