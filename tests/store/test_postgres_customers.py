"""New customers on the PostgreSQL store: made in a transaction of their own, committed at
once (store.postgres.customers, schema migration 12)."""

from __future__ import annotations

import psycopg
import pytest

from engage_listener.store.interface import Store
from tests.support.postgres import pg_store, pg_url, postgres_server

__all__ = ["pg_store", "pg_url", "postgres_server"]  # fixtures


class _RolledBack(Exception):
    pass


async def test_a_new_customer_is_committed_before_its_mail(pg_store: Store, pg_url: str) -> None:
    """Seen by another connection while the mail's transaction is open, and kept when it
    rolls back: taken again, the mail finds it."""
    with pytest.raises(_RolledBack):
        async with pg_store.transaction() as tx:
            made = await tx.create_customer("", "Ana@Example.com", "auto")
            async with await psycopg.AsyncConnection.connect(pg_url) as other:
                cur = await other.execute(
                    "SELECT c.name, c.source FROM customers c JOIN customer_addresses a"
                    " ON a.customer_id = c.id WHERE a.address = 'ana@example.com'"
                )
                assert await cur.fetchall() == [("Ana@Example.com", "auto")]  # named as written
            raise _RolledBack
    async with pg_store.transaction() as tx:
        assert await tx.find_customer("ana@example.com") == made
    assert made.addresses == ("ana@example.com",)


async def test_a_broken_connection_is_replaced(pg_store: Store, pg_url: str) -> None:
    """The connection that made the last customer was ended (a server restart does the
    same); the next customer is made on a new one, not failed."""
    async with pg_store.transaction() as tx:
        await tx.create_customer("Ana", "ana@example.com", "auto")
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'engage-listener customers'"
        )
        assert [row[0] for row in await cur.fetchall()] == [True]
    async with pg_store.transaction() as tx:
        luis = await tx.create_customer("Luis", "luis@example.com", "auto")
    async with pg_store.transaction() as tx:
        assert await tx.find_customer("luis@example.com") == luis


async def test_waiting_for_an_address_is_bounded(pg_store: Store, pg_url: str) -> None:
    """An operator's transaction that holds an address cannot hold a mail for ever: the
    function waits on locks for 10 s at most."""
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        cur = await conn.execute("SELECT proconfig FROM pg_proc WHERE proname = 'engage_customer'")
        assert await cur.fetchall() == [(["lock_timeout=10s"],)]
