"""Operators' `sql:` routing hooks on the mail's own PostgreSQL connection and transaction.

`run_sync` runs the hook's work on a thread; each statement it executes is handed back to
the event loop, where the mail's async connection runs it, and waited for on the thread.
`run_inline` runs the work on the event loop itself: each statement goes through psycopg's
blocking wait on the same connection (psycopg runs its sync and async cursors on the same
generators), bounded by the deadline, after which the statement is cancelled on the server.

Decisions:

* Inside a savepoint, as in SQLite: a stopped inline run is undone (`StoppedEarly`) and
  the hook runs again off the loop; the mail's other writes stay.
* The inline run's RELEASE goes on the transaction's queue (`deferred`) when it has one:
  released with the next statement; whatever fails before then rolls back the enclosing
  savepoint or transaction, which takes this savepoint along.
* psycopg's blocking wait is not public API; if it is missing (another psycopg), the inline
  run is stopped before it starts, and every hook runs through `run_sync`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import psycopg

from engage_listener.errors import StoppedEarly, StoreError
from engage_listener.store.interface import SqlCursor, SyncExecute
from engage_listener.store.postgres.deferred import Deferred
from engage_listener.store.postgres.dialect import to_pyformat

T = TypeVar("T")
MAX_TIMER_SECONDS = 3600.0

_blocking_wait: Callable[..., Any] | None
try:  # psycopg's own blocking wait (see Decisions)
    from psycopg.waiting import wait as _blocking_wait
except ImportError:  # pragma: no cover - another psycopg
    _blocking_wait = None


class Rows:
    """A statement's result, read in full: what `SqlCursor` asks of a hook's statement."""

    def __init__(self, description: Any, rows: list[Any]) -> None:
        self.description = description
        self._rows = rows

    def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    def close(self) -> None:
        self._rows.clear()


async def _execute(conn: psycopg.AsyncConnection[Any], sql: str, params: Any) -> SqlCursor:
    cur = await conn.execute(to_pyformat(sql), dict(params))
    rows = await cur.fetchall() if cur.description else []
    return Rows(cur.description, rows)


async def run_sync(conn: psycopg.AsyncConnection[Any], work: Callable[[SyncExecute], T]) -> T:
    """`work(execute)` on a thread; its statements run on this loop's connection."""
    loop = asyncio.get_running_loop()

    def execute(sql: str, params: Mapping[str, object]) -> SqlCursor:
        return asyncio.run_coroutine_threadsafe(_execute(conn, sql, params), loop).result()

    return await asyncio.to_thread(work, execute)


def _inline_execute(
    conn: psycopg.AsyncConnection[Any],
) -> Callable[[str, Mapping[str, object]], SqlCursor]:
    assert _blocking_wait is not None
    wait = _blocking_wait

    def execute(sql: str, params: Mapping[str, object]) -> SqlCursor:
        cur = conn.cursor()
        wait(cur._execute_gen(to_pyformat(sql), dict(params)), conn.pgconn.socket)
        if cur.pgresult is None or not cur.description:
            return Rows(None, [])
        rows = cur._tx.load_rows(0, cur.pgresult.ntuples, cur._make_row)
        return Rows(cur.description, rows)

    return execute


def _plain(conn: psycopg.AsyncConnection[Any], sql: str) -> None:
    assert _blocking_wait is not None
    _blocking_wait(conn.cursor()._execute_gen(sql), conn.pgconn.socket)


def run_inline(
    conn: psycopg.AsyncConnection[Any],
    work: Callable[[SyncExecute], T],
    stop_at: float,
    queued: Deferred | None = None,
) -> T:
    """`work(execute)` on the event loop, in a savepoint, stopped at `stop_at`; the
    transaction's `queued` writes (see `deferred`) are sent first."""
    if _blocking_wait is None or time.monotonic() >= stop_at:
        raise StoppedEarly("no blocking wait in this psycopg: run off the loop")
    for sql, params in queued.take() if queued is not None else ():  # as a rule, none
        _blocking_wait(conn.cursor()._execute_gen(sql, params), conn.pgconn.socket)
    _plain(conn, "SAVEPOINT engage_inline")
    # A statement still running at stop_at is cancelled on the server (the loop is busy
    # waiting for it, so a thread's timer does it); no timer for a distant deadline.
    left = stop_at - time.monotonic()
    timer = threading.Timer(left, conn.cancel) if left < MAX_TIMER_SECONDS else None
    if timer is not None:
        timer.start()
    try:
        result = work(_inline_execute(conn))
    except Exception as exc:
        if timer is not None:
            timer.cancel()
        try:
            _plain(conn, "ROLLBACK TO SAVEPOINT engage_inline")
            _plain(conn, "RELEASE SAVEPOINT engage_inline")
        except psycopg.Error as undo:
            raise StoreError(f"stopped inline, the transaction is gone: {undo}") from exc
        if time.monotonic() >= stop_at:
            raise StoppedEarly(str(exc)) from exc
        raise
    if timer is not None:
        timer.cancel()
    if queued is not None:  # sent with the transaction's next statement: one round trip less
        queued.add("RELEASE SAVEPOINT engage_inline")
    else:
        _plain(conn, "RELEASE SAVEPOINT engage_inline")
    return result
