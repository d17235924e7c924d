"""Writes whose results nobody reads, sent with the next statement that is read.

A mail costs some twenty statements; on psycopg each is a round trip (send, wake up on the
answer, decode it), and that, not the server's work, was most of the daemon's CPU per
mail on PostgreSQL (bench/README.md, "PostgreSQL store speed"). Writes without a result
the caller needs (the case's `updated_at`, participants, tags, small attachments, the
savepoints of a group commit, the ledger row when nothing is fenced) are queued here and
go out, in libpq's pipeline mode, together with the next statement whose result is read,
or at the end of the transaction: one round trip for all of them.

Decisions:

* Every statement of a transaction goes through its connection's `Deferred` (`run`), so
  the order on the server is the order of the calls: a read sees every write before it.
* An error of a queued write surfaces at the next flush, inside the same transaction (or
  savepoint), which then rolls back as it would have: the same outcome, raised later. In
  a group, a mail's last writes go out with the next mail's first read: an error there
  fails that next mail's undo too (its savepoint was never made), so the whole group
  fails and the batch takes its mails again one by one, as after any group failure.
* A fenced ledger row is such a write (schema migration 10): a lease not held is an
  error with SQLSTATE LEASE_LOST, raised here as `LeaseLost` wherever the queue goes out
  (a read, a flush, the COMMIT). When it comes with the next mail's first read in a
  group, that mail's undo fails too; `undo` then raises the `LeaseLost`, not the undo's
  own error, so the batch knows the lease is gone and stops moving mail.
* Savepoints of a group (`savepoint`, `release`, `undo`) are queued too: a mail that
  fails before anything of it was sent is undone by dropping its queue; otherwise
  `ROLLBACK TO SAVEPOINT` as psycopg would send it.
* The transaction itself is queued too (`begin`, `commit`): BEGIN goes out with the first
  statement, COMMIT with the last queued writes, where psycopg's `conn.transaction()`
  sent each alone: two round trips fewer per transaction (a mail outside a group, a
  group, `mark_done`). A transaction that sent nothing sends nothing at all; one that
  fails is rolled back (`rollback`), and a connection left in a transaction (the
  ROLLBACK failed too) is rolled back or dropped by the pool when it comes back.
* The queued writes share one cursor per transaction (their results are not read): a
  cursor made per statement was about 40% of psycopg's client CPU for one.
* Anything that uses the connection directly (COPY, a routing hook on a thread, a read of
  the store's own) flushes first (`flush`); an inline routing hook `take`s the queue and
  sends it in one pipeline with its SAVEPOINT and first statement (`hooks.run_inline`).
  An awaited hook statement goes with the queue like a read (`run_after_queue`), which
  tells the queue's failure (the transaction's) from the statement's (the hook's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg

from engage_listener.errors import LeaseLost, StoreError, WriteConflict
from engage_listener.observe.logs import scrub
from engage_listener.store.postgres.schema import LEASE_LOST

Connection = psycopg.AsyncConnection[Any]
_SAVEPOINT = "SAVEPOINT "
_BEGIN = "BEGIN"


def write_conflict(exc: BaseException) -> bool:
    """Whether `exc` is a collision with another transaction that taking the mail again
    resolves (`WriteConflict`): a new row it committed first (a unique key, but the
    ledger's, which says another daemon committed this very mail: the final guard, issue
    16 point 4), or a deadlock between them (two listeners' batches making the same new
    customers in another order)."""
    if isinstance(exc, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure):
        return True
    return (
        isinstance(exc, psycopg.errors.UniqueViolation)
        and exc.diag.constraint_name != "ledger_pkey"
    )


def lease_lost(exc: BaseException) -> LeaseLost | None:
    """`exc` as `LeaseLost` if it says the lease was not held (None: it does not)."""
    if isinstance(exc, LeaseLost):
        return exc
    if isinstance(exc, psycopg.Error) and exc.sqlstate == LEASE_LOST:
        return LeaseLost(exc.diag.message_primary or "the listener's lease is not held")
    return None


@contextlib.contextmanager
def fenced() -> Iterator[None]:
    """A database error saying the lease was not held is raised as `LeaseLost`."""
    try:
        yield
    except psycopg.Error as exc:
        lost = lease_lost(exc)
        if lost is None:
            raise
        raise lost from None


class Deferred:
    """The queue of one connection's open transaction (see the module)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._items: list[tuple[str, Any]] = []
        self._serial = 0
        self._writes: psycopg.AsyncCursor[Any] | None = None  # see Decisions

    def _writer(self) -> psycopg.AsyncCursor[Any]:
        if self._writes is None:
            self._writes = self.conn.cursor(binary=True)
        return self._writes

    @property
    def pending(self) -> bool:
        return bool(self._items)

    def add(self, sql: str, params: Any = None) -> None:
        """Queue a statement whose result nobody reads."""
        self._items.append((sql, params or None))

    async def run(self, sql: str, params: Any = None) -> psycopg.AsyncCursor[Any]:
        """The queue, then this statement, in one round trip; its cursor, results read."""
        if not self._items:
            return await self.conn.execute(sql, params or None, binary=True)
        items, self._items = self._items, []
        writer = self._writer()
        with fenced():
            async with self.conn.pipeline():
                for queued, values in items:
                    await writer.execute(queued, values)
                cursor = await self.conn.execute(sql, params or None, binary=True)
        return cursor

    async def run_after_queue(
        self, sql: str, params: Any = None, *, binary: bool = True
    ) -> psycopg.AsyncCursor[Any]:
        """`run`, telling a queued write's failure from the statement's own: the first is
        the transaction's error (`StoreError`, as when a read of the store's own sends the
        queue), the second is raised as it is (a routing hook's statement: `awaiting`)."""
        if not self._items:
            return await self.conn.execute(sql, params or None, binary=binary)
        items, self._items = self._items, []
        writer, last = self._writer(), self.conn.cursor(binary=True)
        try:
            with fenced():
                async with self.conn.pipeline():
                    for queued, values in items[:-1]:
                        await writer.execute(queued, values)
                    await last.execute(items[-1][0], items[-1][1])
                    cursor = await self.conn.execute(sql, params or None, binary=binary)
        except psycopg.Error as exc:  # LeaseLost (fenced) is no psycopg.Error: it passes
            if last.pgresult is None:  # the queue failed; the statement was never run
                kind = WriteConflict if write_conflict(exc) else StoreError
                raise kind(f"store write failed: {scrub(str(exc))}") from exc
            raise
        return cursor

    async def flush(self) -> None:
        """Send what is queued (before COPY, a hook's own statements, a commit)."""
        if not self._items:
            return
        items, self._items = self._items, []
        writer = self._writer()
        with fenced():
            if len(items) == 1:
                await writer.execute(items[0][0], items[0][1])
                return
            async with self.conn.pipeline():
                for queued, values in items:
                    await writer.execute(queued, values)

    def take(self) -> list[tuple[str, Any]]:
        """The queue, emptied: for a caller that sends it itself (an inline hook), or gives
        it back with `add` if it sends nothing."""
        items, self._items = self._items, []
        return items

    # ----- the transaction ---------------------------------------------------------------
    def begin(self) -> None:
        """Open the transaction with the first statement sent (see the module)."""
        self.add(_BEGIN)

    async def commit(self) -> None:
        """The queued writes and COMMIT, in one round trip; nothing if nothing was sent."""
        if self._items == [(_BEGIN, None)]:
            self._items.clear()
            return
        self.add("COMMIT")
        await self.flush()

    async def rollback(self) -> None:
        """Forget the queue; ROLLBACK unless the BEGIN itself was never sent."""
        begun = not (self._items and self._items[0][0] == _BEGIN)
        self._items.clear()
        if begun:
            await self.conn.execute("ROLLBACK")

    # ----- savepoints of a group commit -------------------------------------------------
    def savepoint(self) -> str:
        """Queue a new savepoint; returns its name."""
        self._serial += 1
        name = f"engage_mail_{self._serial}"
        self.add(_SAVEPOINT + name)
        return name

    def release(self, name: str) -> None:
        self.add(f"RELEASE SAVEPOINT {name}")

    async def undo(self, name: str, cause: BaseException) -> None:
        """Roll back to savepoint `name` and forget it (what failed after it, `cause`, is
        gone). If that fails and `cause` says the lease was lost (it may have come with
        this savepoint, which then was never made), `LeaseLost` is raised: see Decisions."""
        for index, (sql, _) in enumerate(self._items):
            if sql == _SAVEPOINT + name:  # never sent: nothing of it reached the server
                del self._items[index:]
                return
        self._items.clear()  # the savepoint was sent: everything queued came after it
        try:
            await self.conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
            await self.conn.execute(f"RELEASE SAVEPOINT {name}")
        except psycopg.Error:
            lost = lease_lost(cause)
            if lost is None:
                raise
            raise lost from None
