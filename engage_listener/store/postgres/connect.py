"""Connections to the PostgreSQL store: the pool, error messages, and migrations.

Decisions:

* psycopg 3 with psycopg-pool (bench/README.md, "PostgreSQL driver"): libpq takes the
  operator's URL as it is, the pool checks a connection before lending it (one may have
  sat idle across a database restart) and reconnects with back-off.
* Connections are in autocommit mode: every transaction is an explicit BEGIN (queued,
  see `deferred`) or `conn.transaction()`, so a read never leaves a transaction open on a
  pooled connection.
* The password is passed beside the URL, never inside a conninfo string that could end
  up in an error; every message is scrubbed of registered secrets and shows the URL with
  its password masked.
* Migrations run in one transaction under `pg_advisory_xact_lock`: a second daemon
  starting at the same moment waits for the first, then finds the schema current.
* Every pooled connection runs its transactions at READ COMMITTED, whatever the
  database's or role's default (`read_committed`): a mail taken again after a conflict
  (`WriteConflict`) must see the row the other transaction committed, and a customer
  committed apart (`customers`) must satisfy the mail's foreign keys at once. Under
  REPEATABLE READ each retry would see the same snapshot and fail again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from engage_listener.config.model import mask_url
from engage_listener.errors import StoreError
from engage_listener.observe.logs import scrub
from engage_listener.store.open import libpq_options
from engage_listener.store.postgres.schema import (
    BASELINE,
    FENCING_KEY,
    LATEST,
    MIGRATION_LOCK,
    MIGRATIONS,
    lz4_statements,
)

POOL_MAX = 8  # connections per daemon: listeners' transactions, the outbox, status
CONNECT_SECONDS = 30.0


def message(what: str, exc: BaseException, url: str) -> str:
    """`what` failed on the store at `url`: the reason, with no secret in it."""
    return scrub(f"{what} ({mask_url(url)}): {str(exc).strip() or type(exc).__name__}")


def connect_kwargs(password: str | None, ca_file: Path | None) -> dict[str, Any]:
    return {"autocommit": True, **libpq_options(password, ca_file)}


async def first_connection(url: str, kwargs: dict[str, Any]) -> psycopg.AsyncConnection[Any]:
    """One connection outside the pool: the pool retries a refused login until its
    timeout, where this fails at once with the server's reason."""
    async with asyncio.timeout(CONNECT_SECONDS):
        return await psycopg.AsyncConnection.connect(url, **kwargs)


async def read_committed(conn: psycopg.AsyncConnection[Any]) -> None:
    """A new pooled connection's set-up (see Decisions)."""
    await conn.execute("SET default_transaction_isolation TO 'read committed'")


async def open_pool(url: str, kwargs: dict[str, Any]) -> AsyncConnectionPool:
    """A pool with its first connection made."""
    pool: AsyncConnectionPool = AsyncConnectionPool(
        url,
        kwargs=kwargs,
        min_size=1,
        max_size=POOL_MAX,
        open=False,
        check=AsyncConnectionPool.check_connection,
        configure=read_committed,
        name="engage-store",
    )
    try:
        await pool.open(wait=True, timeout=CONNECT_SECONDS)
    except BaseException:
        await pool.close()
        raise
    return pool


async def schema_version(conn: psycopg.AsyncConnection[Any]) -> int:
    """The database's schema version (0: no schema yet)."""
    cur = await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return 0
    cur = await conn.execute("SELECT max(version) FROM schema_version")
    row = await cur.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


async def migrate(conn: psycopg.AsyncConnection[Any]) -> int:
    """Bring the schema to LATEST under the migration lock; returns the version found."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        found = await schema_version(conn)
        if found > LATEST:
            raise StoreError(
                f"the PostgreSQL store has schema {found}, newer than this program knows"
                f" ({LATEST}); upgrade engage-listener"
            )
        if found == 0:
            await conn.execute("CREATE TABLE schema_version (version integer PRIMARY KEY,"
                               " applied_at timestamptz NOT NULL DEFAULT now())")  # fmt: skip
            found_or_base = BASELINE - 1
        else:
            found_or_base = found
        lz4 = await _has_lz4(conn)
        for number in range(found_or_base + 1, LATEST + 1):
            await conn.execute(MIGRATIONS[number].encode())
            for statement in lz4_statements(number) if lz4 else ():
                await conn.execute(statement.encode())
            await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
        await _check_fencing_key(conn)
    return found


async def _check_fencing_key(conn: psycopg.AsyncConnection[Any]) -> None:
    """Refuse to run without the unique key that makes a take-over wait for the mails in
    flight (schema migration 11): nothing uses the index for reading, so a tidy-up of
    "unused" indexes could drop it, and fencing would then fail silently."""
    cur = await conn.execute(
        "SELECT i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL FROM pg_index i"
        " WHERE i.indexrelid = to_regclass(%s)",
        (FENCING_KEY,),
    )
    row = await cur.fetchone()
    if not row or not row[0]:
        raise StoreError(
            f"the PostgreSQL store lacks the unique index {FENCING_KEY} (schema 11), which"
            " fences mail commits against take-overs; recreate it: CREATE UNIQUE INDEX"
            f" {FENCING_KEY} ON listener_leases (listener, owner, fence)"
        )


async def _has_lz4(conn: psycopg.AsyncConnection[Any]) -> bool:
    cur = await conn.execute(
        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
    )
    row = await cur.fetchone()
    return bool(row and row[0])
