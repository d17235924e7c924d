"""New customers on the PostgreSQL store: made in a transaction of their own, committed at
once (store.postgres.customers, schema migration 12)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest

from devkit.postgres import PostgresServer
from engage_listener.config.model import StoreConfig
from engage_listener.errors import StoreError, WriteConflict
from engage_listener.store.interface import Store
from engage_listener.store.open import build_store
from tests.support.postgres import lock_waiters, pg_store, pg_url, postgres_server

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
    """An operator's transaction that holds the address cannot hold a mail for ever: the
    function waits on locks for 10 s at most (200 ms here), then the mail fails (a store
    error: tried again later), not taken for a conflict."""
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT proconfig FROM pg_proc WHERE proname = 'engage_customer'")
        assert await cur.fetchall() == [(["lock_timeout=10s"],)]
        await conn.execute(
            "ALTER FUNCTION engage_customer(text, text, text, text) SET lock_timeout = '200ms'"
        )
    async with await psycopg.AsyncConnection.connect(pg_url) as holder:
        await holder.execute(_NEW, ("Ana", "ana@example.com"))  # not committed
        started = time.monotonic()
        with pytest.raises(StoreError) as raised:
            async with pg_store.transaction() as tx:
                await tx.create_customer("Ana", "ana@example.com", "auto")
        assert not isinstance(raised.value, WriteConflict)
        assert time.monotonic() - started < 5
        assert "lock" in str(raised.value)


async def test_the_address_made_meanwhile_is_read_again(pg_url: str, pg_store: Store) -> None:
    """Another transaction commits the address between the function's look-up and its
    INSERT: the function reads it again, returns it as not made, and leaves no customer
    of its own behind."""
    async with await psycopg.AsyncConnection.connect(pg_url) as holder:
        cur = await holder.execute(_NEW, ("Ana", "ana@example.com"))  # not committed
        ana = (await cur.fetchone() or (0,))[0]

        async def make() -> tuple[int, bool]:
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
                cur = await conn.execute(
                    "SELECT customer, made FROM engage_customer(%s, %s, %s, %s)",
                    ("ana@example.com", "Ana", "auto", "now"),
                )
                row = await cur.fetchone()
                assert row is not None
                return int(row[0]), bool(row[1])

        making = asyncio.create_task(make())
        await lock_waiters(pg_url, 1)  # its INSERT waits for the holder's address
        await holder.commit()
        assert await making == (ana, False)
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM customers")
        assert await cur.fetchone() == (1,)


async def test_transactions_read_committed_whatever_the_default(
    postgres_server: PostgresServer, pg_url: str
) -> None:
    """A retried mail must see what the other transaction committed: the store's
    connections read committed even where the database defaults to repeatable read."""
    database = pg_url.rsplit("/", 1)[1]
    postgres_server.sql(
        f"ALTER DATABASE {database} SET default_transaction_isolation = 'repeatable read'"
    )
    store = build_store(StoreConfig(Path("unused"), url=pg_url))
    await store.open()
    try:
        async with store.transaction() as tx:
            row = await tx._one("SHOW transaction_isolation")  # type: ignore[attr-defined]
            await tx.create_customer("Ana", "ana@example.com", "auto")
        async with store._customers.connection() as apart:  # type: ignore[attr-defined]
            cur = await apart.execute("SHOW default_transaction_isolation")
            isolation = await cur.fetchone()
    finally:
        await store.close()
    assert row == ("read committed",) and isolation == ("read committed",)


_NEW = (
    "WITH c AS (INSERT INTO customers (name, source, created_at) VALUES (%s, 'import', 'now')"
    " RETURNING id), a AS (INSERT INTO customer_addresses (address, customer_id)"
    " SELECT %s, id FROM c) SELECT id FROM c"
)
