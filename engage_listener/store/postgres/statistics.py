"""Planner statistics of the tables a mail's statements read, refreshed while they are young.

Decisions:

* PostgreSQL plans a statement from its statistics of the tables. A table never analyzed
  (a new database, or one `store copy` just filled) is planned as if nearly empty, and
  such plans filter where they should look up: the arrival's duplicate check went
  through every ledger row of the listener (and, written as it was, three times: see
  `arrival`), the reply look-up through every open case; the cost of a mail grew with
  the number before it. psycopg prepares a statement at its 5th use, and the server
  keeps that plan until the tables' statistics change. Autovacuum analyzes a table once
  a tenth of it changed, but looks only once a minute (`autovacuum_naptime`): a new
  store's first minute ran on those plans, and so did every benchmark run. Analyzed,
  the server spent 1.6-1.8 ms a mail instead of 2.9-4.0 on the 1,000 mails after the
  first 1,000 (bench/README.md).
* So the store analyzes them itself, after REFRESH_AT mails settled by this daemon (each
  count once), in the background, on a short-lived connection of its own (not one of the
  pool's, which batches wait for): a mail never waits for it. Only stale tables: never
  analyzed, or changed (rows inserted, updated, deleted) since their last analysis by
  more rows than they then held, and at least 50: autovacuum's rule with a scale factor
  of 1 instead of 0.1, so a store with a history is left to autovacuum. `store copy`
  analyzes what it filled before it ends (`analyze`).
* Whole tables: an ANALYZE of some columns only does not reset the table's count of
  changes, so the rule above would find `messages` stale at every look. Its large
  values (the raw mail) are not read for statistics anyway.
* SKIP_LOCKED (PostgreSQL 12+): a table that autovacuum (or another daemon) is working
  on is left to it; waiting would make autovacuum give way to us, and a VACUUM of a
  large table start again. ANALYZE of a table the role does not own is skipped by the
  server with a warning, not an error: a store on tables made by another role is left
  to autovacuum. Any failure here is ignored; the next mails only keep their plans.
* A table analyzed while small may be planned with a scan where it will need an index
  (a seq scan of 300 addresses beats an index on the server's cost model); checking at
  every doubling of the mails settled keeps such a plan for as long as the table takes
  to double at most (analyzing at 100 mails and then at 1,000 made it worse than never).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg

from engage_listener.observe.logs import get_logger

__all__ = ["HOT", "REFRESH_AT", "Refresher", "analyze", "refresh"]

Connect = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]

# The tables a mail's reads use.
HOT = ("case_participants", "cases", "customer_addresses", "customers", "ledger", "messages")
REFRESH_AT = tuple(2**k for k in range(6, 18))  # mails settled by this daemon: 64 ... 131,072

_STALE = (
    "SELECT c.relname FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid"
    " WHERE c.oid = ANY(%s::text[]::regclass[]) AND (coalesce(s.last_analyze,"
    " s.last_autoanalyze) IS NULL OR s.n_mod_since_analyze > greatest(c.reltuples, 50))"
)


async def analyze(conn: psycopg.AsyncConnection[Any], tables: Sequence[str]) -> None:
    """ANALYZE `tables` (outside a transaction: `conn` in autocommit mode)."""
    if tables:
        await conn.execute(f"ANALYZE (SKIP_LOCKED) {', '.join(tables)}".encode())


async def refresh(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Analyze the HOT tables that are stale (see Decisions); the ones analyzed."""
    cur = await conn.execute(_STALE, (list(HOT),))
    stale = sorted(str(row[0]) for row in await cur.fetchall())
    await analyze(conn, stale)
    return stale


class Refresher:
    """Counts the mails the store settled and, at REFRESH_AT, refreshes the statistics in
    the background, on a connection `connect` opens for it (see Decisions). A doubling
    reached while a refresh runs is looked at once more when it ends."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._settled = 0
        self._again = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def settled(self, count: int) -> None:
        before, self._settled = self._settled, self._settled + count
        if self._closed or not any(before < at <= self._settled for at in REFRESH_AT):
            return
        if self._task is not None:
            self._again = True
            return
        self._task = asyncio.create_task(self._run(), name="pg-statistics")

    async def wait(self) -> None:
        """Until the refresh in progress (if any) has ended (for the tests)."""
        if self._task is not None:
            await asyncio.wait([self._task])

    async def close(self) -> None:
        """Stop a refresh in progress; start no other."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # never raises: the caller's own cancel still does

    async def _run(self) -> None:
        try:
            while not self._closed:
                self._again = False
                with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
                    async with await self._connect() as conn:
                        tables = await refresh(conn)
                    get_logger(component="store").debug("store_statistics", analyzed=tables)
                if not self._again:
                    return
        finally:
            self._task = None
