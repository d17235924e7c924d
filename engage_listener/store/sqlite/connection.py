"""One SQLite connection shared by the event loop and one worker thread.

Why not a thread hop per statement (aiosqlite): a mail takes some thirty small
statements, and handing each to a thread and back cost more than the statements
themselves (the ingest benchmark spent most of its time waiting on those hops).
Here, what may wait runs on the store's own thread: BEGIN IMMEDIATE (another process
may hold the write lock, up to busy_timeout), COMMIT (the fsync), reads that may be
large, and statements of routing hooks (which can run long and are interrupted on
timeout). Statements inside a transaction this process holds run inline: they never
wait for a lock, and each takes microseconds.

The caller serialises use (`SqliteStore` holds an asyncio lock around every use), so
the connection is never used by two threads at once.

Checkpoints (copying committed WAL frames into the database file, with its own fsync)
run on a second connection and thread after each commit (`Checkpointer`), not inside the
COMMIT as SQLite's automatic checkpoint would: that halved the time a commit holds the
store. The automatic checkpoint stays on, at a larger size, in case those fall behind.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Pages of WAL after which a commit checkpoints by itself (SQLite's default: 1,000),
# should the background checkpoints fall behind; and the size a reset WAL file is cut to.
AUTOCHECKPOINT_PAGES = 10_000
WAL_SIZE_LIMIT = 64 * 1024 * 1024


class AsyncCursor:
    """A finished statement's cursor, read with awaits like the rest of the store API."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()


class Connection:
    """A sqlite3 connection (autocommit mode) with its own worker thread."""

    def __init__(self, raw: sqlite3.Connection, worker: ThreadPoolExecutor, path: Path) -> None:
        self.raw = raw
        self._worker = worker
        self._checkpointer = Checkpointer(path)

    @classmethod
    async def open(cls, path: Path) -> Connection:
        worker = ThreadPoolExecutor(1, thread_name_prefix="sqlite")
        try:
            raw = await asyncio.get_running_loop().run_in_executor(
                worker,
                lambda: sqlite3.connect(path, isolation_level=None, check_same_thread=False),
            )
        except BaseException:
            worker.shutdown(wait=False)
            raise
        return cls(raw, worker, path)

    def execute(self, sql: str, params: Any = ()) -> AsyncCursor:
        """Inline: only for statements that cannot wait (inside a held transaction)."""
        return AsyncCursor(self.raw.execute(sql, params))

    async def execute_in_thread(self, sql: str, params: Any = ()) -> AsyncCursor:
        return AsyncCursor(await self.in_thread(self.raw.execute, sql, params))

    async def fetch_in_thread(self, sql: str, params: Any = ()) -> list[Any]:
        return await self.in_thread(lambda: self.raw.execute(sql, params).fetchall())

    async def commit(self) -> None:
        """COMMIT (appending to the WAL, and its fsync), then a checkpoint in the background."""
        await self.in_thread(self.raw.execute, "COMMIT")
        self._checkpointer.soon()

    async def executescript(self, script: str) -> None:
        await self.in_thread(self.raw.executescript, script)

    async def in_thread(self, func: Callable[..., T], *args: Any) -> T:
        """Run `func` on the worker. If cancelled meanwhile, interrupt the statement (a
        routing procedure may run for minutes) and wait until it returns, so the caller's
        lock is never released while the connection is busy."""
        future = asyncio.get_running_loop().run_in_executor(self._worker, func, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self.raw.interrupt()
            await asyncio.wait([future])
            if not future.cancelled():
                future.exception()  # an "interrupted" error nobody waits for any more
            raise

    def interrupt(self) -> None:
        self.raw.interrupt()

    async def close(self) -> None:
        try:
            try:
                await asyncio.to_thread(self._checkpointer.close)
            finally:  # the last close merges the WAL into the database file
                await self.in_thread(self.raw.close)
        finally:
            self._worker.shutdown(wait=False)


class Checkpointer:
    """PASSIVE checkpoints on a connection and thread of their own: they never block the
    writer, which goes on appending to the WAL meanwhile. Opened at the first checkpoint;
    a failed one is left to the next commit (or to SQLite's automatic checkpoint)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
        self._raw: sqlite3.Connection | None = None
        self._running: Future[None] | None = None
        self._closed = False

    def soon(self) -> None:
        """Start one unless one is running (the next commit asks again). Never raises:
        it runs after a COMMIT that succeeded."""
        if self._closed or (self._running is not None and not self._running.done()):
            return
        try:
            self._running = self._worker.submit(self._checkpoint)
        except RuntimeError:  # closing meanwhile: the close merges the WAL anyway
            return

    def _checkpoint(self) -> None:
        try:
            if self._raw is None:  # mode=rw: never create a file that has gone
                uri = f"{self._path.resolve().as_uri()}?mode=rw"
                self._raw = sqlite3.connect(uri, uri=True, isolation_level=None)
                self._raw.execute("PRAGMA synchronous=FULL")  # fsync what it copies
            self._raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            pass  # the store's own connection reports real problems; this one only helps

    def close(self) -> None:
        """Waits for a running checkpoint (blocking: call it off the event loop)."""
        self._closed = True
        self._worker.submit(self._close_raw).result()
        self._worker.shutdown(wait=True)

    def _close_raw(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None
