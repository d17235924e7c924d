"""Operators' `sql:` routing hooks on the mail's own PostgreSQL connection and transaction.

`awaiting` is how SQL hooks (`sql:` files, `pg:` routines) run on this store: each
statement is awaited on the mail's connection, the transaction's queued writes going out
with the first one. `run_sync` and `run_inline`, below, are the `Transaction` protocol's
other two ways, which SQLite needs; no hook takes them here since `awaiting` (kept, and
tested, for the protocol).

`run_sync` runs the hook's work on a thread; each statement it executes is handed back to
the event loop, where the mail's async connection runs it, and waited for on the thread.
`run_inline` runs the work on the event loop itself: each statement goes through psycopg's
blocking wait on the same connection (psycopg runs its sync and async cursors on the same
generators), bounded by the deadline, after which the statement is cancelled on the server.

Decisions:

* Awaited, not inline: a `pg:` CALL sent with the mail's queued writes (its new customer,
  case, message) waited on the event loop whenever one of them waited on another
  transaction's lock (two listeners creating the same customer at once), up to
  INLINE_LIMIT, and a daemon with 8 listeners stalled long enough to lose its leases
  (bench, `--daemons 1`). Awaited, the wait holds up that mail only; the hook needs no
  savepoint of its own (nothing is run again elsewhere: a failing hook fails the mail),
  and a statement past RoutingTimeout is cancelled by the `canceller` as before. A queued
  write that fails with the hook's first statement is the transaction's error
  (`StoreError`), never the hook's (`Deferred.run_after_queue`).
* Inside a savepoint, as in SQLite: a stopped inline run is undone (`StoppedEarly`) and
  the hook runs again off the loop; the mail's other writes stay.
* The inline run's RELEASE goes on the transaction's queue (`deferred`) when it has one:
  released with the next statement; whatever fails before then rolls back the enclosing
  savepoint or transaction, which takes this savepoint along.
* The transaction's queued writes, the SAVEPOINT and the run's first statement go out
  together in libpq's pipeline mode (`in_one_round_trip`): for a `pg:` hook (one CALL)
  the whole run is one round trip, where it was three (queue, SAVEPOINT, CALL). A queued
  write or the SAVEPOINT that fails there is the transaction's error, raised as it is (as
  when the queue was sent first); a failure after the SAVEPOINT is undone as before. A
  run that sends nothing gives the queue back to the transaction.
* A statement past `stop_at` is cancelled by the process's one `canceller` thread, armed
  and disarmed per run (a `threading.Timer` per mail cost a thread start on the loop).
* psycopg's blocking wait and pipeline generators are not public API; if the wait is
  missing (another psycopg), the inline run is stopped before it starts, and every hook
  runs through `run_sync`; without pipeline mode (libpq < 14) the first statements are
  sent one after the other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import psycopg

from engage_listener.errors import StoppedEarly, StoreError
from engage_listener.store.interface import AsyncExecute, SqlCursor, SyncExecute
from engage_listener.store.postgres.canceller import CANCELLER
from engage_listener.store.postgres.deferred import Deferred
from engage_listener.store.postgres.dialect import to_pyformat

T = TypeVar("T")
MAX_TIMER_SECONDS = 3600.0
_SAVEPOINT = "SAVEPOINT engage_inline"
_RELEASE = "RELEASE SAVEPOINT engage_inline"

_blocking_wait: Callable[..., Any] | None
try:  # psycopg's own blocking wait (see Decisions)
    from psycopg.waiting import wait as _blocking_wait
except ImportError:  # pragma: no cover - another psycopg
    _blocking_wait = None
_PIPELINE = psycopg.AsyncPipeline.is_supported() and hasattr(psycopg.AsyncPipeline, "_exit_gen")


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


def awaiting(conn: psycopg.AsyncConnection[Any], queued: Deferred, stop_at: float) -> AsyncExecute:
    """An `execute` for a SQL hook to await: the transaction's queued writes go out with
    its first statement (one round trip), nothing waits on the event loop (a lock wait, a
    slow procedure hold up this mail only), and a statement past `stop_at` is cancelled
    on the server by the `canceller` (its error is the hook's: timed out)."""

    async def execute(sql: str, params: Mapping[str, object]) -> SqlCursor:
        far = stop_at - time.monotonic() >= MAX_TIMER_SECONDS
        token = None if far else CANCELLER.arm(stop_at, conn.cancel)
        try:  # text results, as the hook's statements always had them
            cur = await queued.run_after_queue(to_pyformat(sql), dict(params), binary=False)
            rows = await cur.fetchall() if cur.description else []
        finally:
            if token is not None:
                CANCELLER.disarm(token)
        return Rows(cur.description, rows)

    return execute


async def run_sync(conn: psycopg.AsyncConnection[Any], work: Callable[[SyncExecute], T]) -> T:
    """`work(execute)` on a thread; its statements run on this loop's connection."""
    loop = asyncio.get_running_loop()

    def execute(sql: str, params: Mapping[str, object]) -> SqlCursor:
        return asyncio.run_coroutine_threadsafe(_execute(conn, sql, params), loop).result()

    return await asyncio.to_thread(work, execute)


def _plain(conn: psycopg.AsyncConnection[Any], sql: str) -> None:
    assert _blocking_wait is not None
    _blocking_wait(conn.cursor()._execute_gen(sql), conn.pgconn.socket)


class _Inline:
    """The inline run's `execute`: its first statement goes out in one round trip with the
    transaction's queued writes and the SAVEPOINT (`in_one_round_trip`); the others as
    they come. `saved`: the savepoint was made (there is something to undo)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], queued: list[tuple[str, Any]]):
        self.conn = conn
        self.prefix: list[tuple[str, Any]] | None = [*queued, (_SAVEPOINT, None)]
        self.saved = False
        self.failed_before: BaseException | None = None  # a queued write's, or SAVEPOINT's

    def execute(self, sql: str, params: Mapping[str, object]) -> SqlCursor:
        query, values = to_pyformat(sql), dict(params)
        if self.prefix is None:
            cur = self.conn.cursor()
            _wait(cur._execute_gen(query, values), self.conn)
            return _rows(cur)
        prefix, self.prefix = self.prefix, None
        writes = self.conn.cursor()  # the queued writes' results are not read: one cursor
        cursors = [writes] * (len(prefix) - 1) + [self.conn.cursor(), self.conn.cursor()]
        statements = [(c, q, v, True) for c, (q, v) in zip(cursors, prefix, strict=False)]
        statements.append((cursors[-1], query, values, False))  # as the hook sends it: text
        try:
            in_one_round_trip(self.conn, statements)
        except BaseException as exc:
            self.saved = cursors[-2].pgresult is not None  # the SAVEPOINT's result came
            if not self.saved:
                self.failed_before = exc
            raise
        self.saved = True
        return _rows(cursors[-1])


def _wait(gen: Any, conn: psycopg.AsyncConnection[Any]) -> Any:
    assert _blocking_wait is not None
    return _blocking_wait(gen, conn.pgconn.socket)


def _rows(cur: psycopg.AsyncCursor[Any]) -> SqlCursor:
    if cur.pgresult is None or not cur.description:
        return Rows(None, [])
    return Rows(cur.description, cur._tx.load_rows(0, cur.pgresult.ntuples, cur._make_row))


def in_one_round_trip(
    conn: psycopg.AsyncConnection[Any],
    statements: list[tuple[psycopg.AsyncCursor[Any], str, Any, bool]],
) -> None:
    """(cursor, sql, params, binary) each, blocking, in libpq's pipeline mode: one round
    trip; the first error is raised once every result came (those before it are set on
    their cursors). Without pipeline mode (libpq < 14), one after the other."""
    if not _PIPELINE:
        for cur, sql, params, binary in statements:
            _wait(cur._execute_gen(sql, params, binary=binary), conn)
        return
    # What `AsyncConnection.pipeline()` does, driven by the blocking wait: its generators
    # are the sync and async pipelines' own.
    pipeline = conn._pipeline = psycopg.AsyncPipeline(conn)
    failure: BaseException | None = None
    try:
        _wait(pipeline._enter_gen(), conn)
        for cur, sql, params, binary in statements:
            _wait(cur._execute_gen(sql, params, binary=binary), conn)
    except BaseException as exc:
        failure = exc
    try:
        _wait(pipeline._exit_gen(), conn)
    except BaseException as exc:
        failure = failure or exc
    finally:
        pipeline._exit(failure)
        conn._pipeline = None
    if failure is not None:
        raise failure


def run_inline(
    conn: psycopg.AsyncConnection[Any],
    work: Callable[[SyncExecute], T],
    stop_at: float,
    queued: Deferred | None = None,
) -> T:
    """`work(execute)` on the event loop, in a savepoint, stopped at `stop_at`; the
    transaction's `queued` writes (see `deferred`) and the SAVEPOINT go out with its first
    statement, in one round trip."""
    if _blocking_wait is None or time.monotonic() >= stop_at:
        raise StoppedEarly("no blocking wait in this psycopg: run off the loop")
    taken = queued.take() if queued is not None else []
    inline = _Inline(conn, taken)
    # A statement still running at stop_at is cancelled on the server (the loop is busy
    # waiting for it, so the canceller's thread does it); none for a distant deadline.
    far = stop_at - time.monotonic() >= MAX_TIMER_SECONDS
    token = None if far else CANCELLER.arm(stop_at, conn.cancel)
    try:
        try:
            result = work(inline.execute)
        finally:  # before any undo: no cancel may reach the ROLLBACK
            if token is not None:
                CANCELLER.disarm(token)
    except Exception as exc:
        _undo(conn, inline, taken, queued, stop_at, exc)
        raise
    if inline.prefix is not None:  # no statement was sent: nothing to release
        _put_back(taken, queued)
    elif queued is not None:  # sent with the transaction's next statement
        queued.add(_RELEASE)
    else:
        _plain(conn, _RELEASE)
    return result


def _put_back(taken: list[tuple[str, Any]], queued: Deferred | None) -> None:
    if queued is not None:
        for sql, params in taken:
            queued.add(sql, params)


def _undo(
    conn: psycopg.AsyncConnection[Any],
    inline: _Inline,
    taken: list[tuple[str, Any]],
    queued: Deferred | None,
    stop_at: float,
    exc: Exception,
) -> None:
    """After `work` failed: roll back to the savepoint and raise `StoppedEarly` if it was
    stopped (or return: `exc` is raised). A queued write (or the SAVEPOINT) that failed is
    the transaction's error, raised as it is, as when it was sent before the hook."""
    stopped = time.monotonic() >= stop_at
    if inline.prefix is not None:  # nothing was sent: the queue stays for the transaction
        _put_back(taken, queued)
    elif not inline.saved:
        if stopped:  # the cancel hit a queued write: the transaction is gone
            raise StoreError(f"stopped inline, the transaction is gone: {exc}") from exc
        raise inline.failed_before or exc
    else:
        try:
            _plain(conn, "ROLLBACK TO SAVEPOINT engage_inline")
            _plain(conn, _RELEASE)
        except psycopg.Error as undo:
            raise StoreError(f"stopped inline, the transaction is gone: {undo}") from exc
    if stopped:
        raise StoppedEarly(str(exc)) from exc
