"""The PostgreSQL store: several daemons may share one database (issue 16).

Decisions:

* A pool of connections (`connect.open_pool`) instead of SQLite's one connection and
  lock: listeners' transactions run side by side, each on a connection of its own, and
  PostgreSQL's row locks and the ledger's primary key keep them apart.
* `group()` holds one connection and one transaction for the task that opened it; the
  transactions that task opens inside become savepoints on it, as in the SQLite store.
  Reads of that task use the same connection, so they see the group's own writes.
* Writes nobody reads the result of are queued and sent with the next statement that is
  read (`deferred`: libpq's pipeline mode); a group's savepoints too, and the BEGIN and
  COMMIT of each transaction. The queue belongs to the connection's open transaction:
  the group's, or the single transaction's.
* Every database error becomes a `StoreError` whose message has no secret in it;
  `LeaseLost` (a `StoreError`) passes through as it is, and so does a lease not held
  found by the database (SQLSTATE LEASE_LOST, from a queued fenced write that a routing
  hook's pipeline sent): raised as `LeaseLost`. A group's savepoint whose undo fails
  after a lost lease raises the `LeaseLost`, not the undo's error (`deferred`).
* A new customer is made apart, committed at once, on a small pool of its own
  (`customers`); a young store's planner statistics are refreshed in the background, on a
  connection of their own, as the mails settled double (`statistics`). Neither takes a
  connection of the pool that batches wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from engage_listener.config.model import DEFAULT_LEASE_SECONDS, StoreConfig
from engage_listener.errors import StoreError, WriteConflict
from engage_listener.observe.logs import scrub
from engage_listener.store.postgres.case_reads import CaseReads
from engage_listener.store.postgres.connect import (
    connect_kwargs,
    first_connection,
    message,
    migrate,
    open_pool,
)
from engage_listener.store.postgres.customers import make, open_customer_pool
from engage_listener.store.postgres.deferred import Deferred, lease_lost, write_conflict
from engage_listener.store.postgres.dialect import POSTGRES_DIALECT
from engage_listener.store.postgres.operator import OperatorQueries
from engage_listener.store.postgres.statistics import Refresher
from engage_listener.store.postgres.transaction import HOLD_LEASE, PostgresTransaction, now_iso
from engage_listener.store.postgres.webhooks import WebhookQueries
from engage_listener.store.records import LedgerState, MailKey, SettledState

__all__ = ["POSTGRES_DIALECT", "PostgresStore", "from_config"]

Connection = psycopg.AsyncConnection[Any]


def from_config(config: StoreConfig, owner: str | None = None) -> PostgresStore:
    """The store `config` names (`Url`, `Password`, `CaFile`); see `store.open`."""
    assert config.url is not None
    password = config.password.reveal() if config.password is not None else None
    return PostgresStore(
        config.url,
        password=password,
        ca_file=config.ca_file,
        owner=owner,
        alive_seconds=config.lease_seconds / 2,
    )


@asynccontextmanager
async def _transaction(deferred: Deferred) -> AsyncIterator[None]:
    """BEGIN and COMMIT on the queue (see `deferred`): committed if the block ends well,
    rolled back if it raises. A failed ROLLBACK leaves the connection to the pool, which
    rolls back or drops a connection that comes back inside a transaction."""
    deferred.begin()
    try:
        yield
        await deferred.commit()
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            await deferred.rollback()
        raise


class PostgresStore(OperatorQueries, CaseReads, WebhookQueries):
    """See `store.Store`. `owner`: the daemon's id, whose lease every mail's ledger row
    and settlement is checked against (None: no fencing, as for operator commands), and
    under which the outbox's rows are claimed; a daemon whose heartbeat (`daemons`) is
    older than `alive_seconds` (LeaseSeconds / 2, as the coordinator counts) is dead, and
    its claims are taken over."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        ca_file: Path | None = None,
        owner: str | None = None,
        alive_seconds: float = DEFAULT_LEASE_SECONDS / 2,
    ) -> None:
        self.url = url
        self.owner = owner
        self.alive_seconds = alive_seconds
        self._sending: set[int] = set()
        self._kwargs = connect_kwargs(password, ca_file)
        self._pool: AsyncConnectionPool | None = None
        self._customers: AsyncConnectionPool | None = None  # see `customers`
        self._groups: dict[asyncio.Task[Any], Deferred] = {}
        self._statistics = Refresher(self._connect_apart)  # see `statistics`

    async def open(self) -> None:
        """Connect, and migrate to the latest schema (once, whoever starts first)."""
        self._statistics = Refresher(self._connect_apart)
        try:
            async with await first_connection(self.url, self._kwargs) as conn:
                await migrate(conn)  # and a wrong URL or password fails here, at once
            self._pool = await open_pool(self.url, self._kwargs)
            self._customers = await open_customer_pool(self.url, self._kwargs)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            await self.close()
            raise StoreError(message("cannot open the store", exc, self.url)) from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, customers = self._pool, self._customers
        self._pool = self._customers = None
        try:
            await self._statistics.close()
            if pool is not None:
                await pool.close()
        finally:
            if customers is not None:
                await customers.close()

    async def _connect_apart(self) -> psycopg.AsyncConnection[Any]:
        """A connection outside the pools, for the store's own background work."""
        return await first_connection(self.url, self._kwargs)

    def _pool_(self) -> AsyncConnectionPool:
        if self._pool is None:
            raise StoreError("the store is not open")
        return self._pool

    def _group(self) -> Deferred | None:
        task = asyncio.current_task()
        return self._groups.get(task) if task is not None else None

    @asynccontextmanager
    async def _errors(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except StoreError:
            raise
        except (psycopg.Error, PoolTimeout, PoolClosed) as exc:  # pool: none free in time
            lost = lease_lost(exc)
            if lost is not None:
                raise lost from None
            if write_conflict(exc):
                raise WriteConflict(message(what, exc, self.url)) from None
            raise StoreError(message(what, exc, self.url)) from None

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """The group's connection for this task (its queue sent), or one from the pool."""
        group = self._group()
        if group is not None:
            async with self._errors("store write failed"):
                await group.flush()
            yield group.conn
            return
        async with self._errors("store unavailable"), self._pool_().connection() as pooled:
            yield pooled

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A connection of the pool for work of the store's own modules (`copy`); its
        database errors are `StoreError`s."""
        async with self._connection() as conn, self._errors("store work failed"):
            yield conn

    @asynccontextmanager
    async def group(self) -> AsyncIterator[None]:
        """One commit for several transactions of this task (each becomes a savepoint).
        Nothing in it is durable before the block exits without an error."""
        task = asyncio.current_task()
        assert task is not None
        async with self._connection() as conn, self._errors("store write failed"):
            group = self._groups[task] = Deferred(conn)
            try:
                async with _transaction(group):
                    yield
            finally:
                del self._groups[task]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        """One mail's writes, committed together or not at all (a savepoint in a group)."""
        group = self._group()
        if group is not None:
            async with self._errors("store write failed"), self._savepoint(group):
                yield PostgresTransaction(group, self.owner, self._make_customer)
            return
        async with self._connection() as conn, self._errors("store write failed"):
            deferred = Deferred(conn)
            async with _transaction(deferred):
                yield PostgresTransaction(deferred, self.owner, self._make_customer)

    @staticmethod
    @asynccontextmanager
    async def _savepoint(group: Deferred) -> AsyncIterator[None]:
        """A savepoint in the group's transaction, queued (see `deferred`); its undo
        raises `LeaseLost` if it fails after a lost lease (see Decisions)."""
        name = group.savepoint()
        try:
            yield
        except BaseException as exc:
            await group.undo(name, exc)
            raise
        group.release(name)

    async def _make_customer(self, name: str, address: str, source: str) -> tuple[int, bool]:
        """A new customer, committed at once (see `customers`)."""
        if self._customers is None:
            raise StoreError("the store is not open")
        async with self._errors("store write failed"):
            return await make(self._customers, name, address, source)

    def _claim(self, **params: Any) -> dict[str, Any]:
        """The parameters of `webhooks.claimable`, with `params`."""
        return {"me": self.owner, "alive": float(self.alive_seconds), **params}

    async def query(self, sql: str, params: Any = ()) -> list[Any]:
        """Rows of one read (binary: bytea as bytes)."""
        async with self._connection() as conn, self._errors("store read failed"):
            cur = await conn.execute(sql, params or None, binary=True)
            return await cur.fetchall()

    # ----- the ledger -------------------------------------------------------------------
    async def known_states(
        self, listener: str, mailbox: str, epoch: str, items: Sequence[str]
    ) -> dict[str, LedgerState]:
        rows = await self.query(
            "SELECT item, state FROM ledger WHERE listener = %s AND mailbox = %s"
            " AND epoch = %s AND item = ANY(%s)",
            (listener, mailbox, epoch, list(items)),
        )
        return {str(r[0]): r[1] for r in rows}

    async def known_message_ids(self, listener: str, message_ids: Sequence[str]) -> set[str]:
        rows = await self.query(
            "SELECT message_id FROM messages WHERE listener = %s AND message_id = ANY(%s)",
            (listener, list(message_ids)),
        )
        return {str(r[0]) for r in rows}

    async def record_failure(self, key: MailKey, error: str) -> int:
        error = scrub(error)[:2000]  # scrubbed before cut: no half secret is left
        async with self.transaction() as tx:
            row = await tx._one(
                "INSERT INTO attempts (listener, mailbox, epoch, item, attempts, last_error,"
                " updated_at) VALUES (%s, %s, %s, %s, 1, %s, %s) ON CONFLICT"
                " (listener, mailbox, item, epoch) DO UPDATE SET"
                " attempts = attempts.attempts + 1, last_error = excluded.last_error,"
                " updated_at = excluded.updated_at RETURNING attempts",
                (key.listener, key.mailbox, key.epoch, key.item, error, now_iso()),
            )
        return int(row[0]) if row else 1

    async def mark_done(self, keys: Sequence[MailKey], state: SettledState) -> None:
        """Settle the keys; with an owner, only while it holds each listener's lease (its
        check fails the transaction otherwise: `LeaseLost`)."""
        now = now_iso()
        async with self.transaction() as tx:
            if self.owner is not None:
                for listener in sorted({key.listener for key in keys}):
                    tx._write(HOLD_LEASE, (listener, self.owner))
            for key in keys:  # queued: one round trip for all of them at the commit
                tx._write(
                    "UPDATE ledger SET state = %s, done_at = %s WHERE listener = %s"
                    " AND mailbox = %s AND epoch = %s AND item = %s",
                    (state, now, key.listener, key.mailbox, key.epoch, key.item),
                )
        if self._pool is not None:  # not while closing
            self._statistics.settled(len(keys))  # a young store's statistics
