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
  count once), in the background: a mail never waits for it. Only stale tables: never
  analyzed (`reltuples` < 0), or changed by more rows than they held when last analyzed
  (grown to twice that at least): autovacuum's rule with a scale factor of 1 instead of
  0.1, so a store with a history is left to autovacuum. `store copy` analyzes what it
  filled before it ends (`analyze`).
* Of `messages`, only the columns statements look up by: its rows carry the raw mail.
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

from collections.abc import Sequence
from typing import Any

import psycopg

__all__ = ["HOT", "REFRESH_AT", "analyze", "refresh"]

# The tables a mail's reads use, and the columns to sample (None: all).
HOT: dict[str, tuple[str, ...] | None] = {
    "ledger": None,
    "cases": None,
    "case_participants": None,
    "customers": None,
    "customer_addresses": None,
    "messages": ("id", "case_id", "listener", "message_id"),
}
REFRESH_AT = tuple(2**k for k in range(6, 18))  # mails settled by this daemon: 64 ... 131,072

_STALE = (
    "SELECT c.relname FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid"
    " WHERE c.oid = ANY(%s::text[]::regclass[])"
    " AND (c.reltuples < 0 OR s.n_mod_since_analyze > greatest(c.reltuples, 50))"
)


def _target(table: str, columns: tuple[str, ...] | None) -> str:
    return table if columns is None else f"{table} ({', '.join(columns)})"


async def analyze(conn: psycopg.AsyncConnection[Any], tables: Sequence[str]) -> None:
    """ANALYZE `tables` (outside a transaction: `conn` in autocommit mode)."""
    if tables:
        targets = ", ".join(_target(table, HOT.get(table)) for table in tables)
        await conn.execute(f"ANALYZE (SKIP_LOCKED) {targets}".encode())


async def refresh(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Analyze the HOT tables that are stale (see Decisions); the ones analyzed."""
    cur = await conn.execute(_STALE, (list(HOT),))
    stale = sorted(str(row[0]) for row in await cur.fetchall())
    await analyze(conn, stale)
    return stale
