"""Planner statistics of a young PostgreSQL store (store.postgres.statistics): its tables
are analyzed as they grow, before autovacuum would look, so that a mail's statements are
planned with lookups by index rather than scans of tables planned while empty."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg

from engage_listener.store.interface import MailKey, Store
from engage_listener.store.postgres.connect import POOL_MAX
from engage_listener.store.postgres.statistics import HOT, REFRESH_AT, refresh
from tests.support.postgres import pg_store, pg_url, postgres_server

__all__ = ["pg_store", "pg_url", "postgres_server"]  # fixtures
_ANALYZED = (
    "SELECT relname, analyze_count FROM pg_stat_user_tables WHERE relname = ANY(%s)"
    " ORDER BY relname"
)


async def _analyzed(url: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(_ANALYZED, (list(HOT),))
        return {str(row[0]): int(row[1]) for row in await cur.fetchall()}


async def _ledger_rows(url: str, first: int, count: int) -> None:
    """Rows written, their count reported to the statistics before the INSERT returns (a
    backend reports at most once a second otherwise, or when it ends, which the server
    may do after our next query)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SELECT pg_stat_force_next_flush()")  # PostgreSQL 15+
        await conn.execute(
            "INSERT INTO ledger (listener, mailbox, epoch, item, sha256, state, created_at)"
            " SELECT 'L', 'INBOX', '1', n::text, 'x', 'committed', 'now'"
            " FROM generate_series(%s::int, %s::int) AS n",
            (first, first + count - 1),
        )


async def _refresh(url: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await refresh(conn)


async def test_tables_never_analyzed_are_then_when_they_have_doubled(
    pg_store: Store, pg_url: str
) -> None:
    url = pg_url
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("ALTER TABLE ledger SET (autovacuum_enabled = off)")  # ours only
    assert await _refresh(url) == sorted(HOT)  # a new store: none was ever analyzed
    assert await _refresh(url) == []
    await _ledger_rows(url, 1, 60)  # was empty: more rows changed than it held
    assert await _refresh(url) == ["ledger"]
    await _ledger_rows(url, 61, 30)  # 60 held, 30 more: not doubled
    assert await _refresh(url) == []
    await _ledger_rows(url, 91, 40)  # 70 changes since 60: doubled
    assert await _refresh(url) == ["ledger"]


async def test_the_store_refreshes_them_as_mails_are_settled(pg_store: Store, pg_url: str) -> None:
    """In the background, at REFRESH_AT mails settled by this store, on a connection of its
    own: a batch that needs every connection of the pool meanwhile gets them."""
    store: Any = pg_store
    keys = [MailKey("L", "INBOX", "1", str(n)) for n in range(REFRESH_AT[0])]
    await store.mark_done(keys[:-1], "moved")
    assert not store._statistics.running
    assert set((await _analyzed(url := pg_url)).values()) == {0}
    async with contextlib.AsyncExitStack() as held:  # the pool's every connection
        for _ in range(POOL_MAX - 1):
            await held.enter_async_context(store.connection())
        await store.mark_done(keys[-1:], "moved")  # (the last one it needs)
        assert store._statistics.running
        await asyncio.wait_for(store._statistics.wait(), 30)
    assert set((await _analyzed(url)).values()) == {1}
    await store.mark_done(keys[:10], "moved")  # no threshold crossed: nothing more
    assert not store._statistics.running


async def test_closing_the_store_stops_a_refresh(pg_store: Store) -> None:
    store: Any = pg_store
    keys = [MailKey("L", "INBOX", "1", str(n)) for n in range(REFRESH_AT[0])]
    await store.mark_done(keys, "moved")
    assert store._statistics.running
    await store.close()
    assert not store._statistics.running
    store._statistics.settled(10**6)  # closed: starts nothing
    assert not store._statistics.running
