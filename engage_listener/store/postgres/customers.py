"""New customers, each made in a transaction of its own and committed at once.

Decisions:

* Several listeners (of one daemon or of several) get mail from the same senders. While
  a mail's transaction (its batch's group commit) made its sender's customer, the new
  address stayed uncommitted until the whole group committed: another listener's group
  making the same customer waited for it, and two groups making two customers in
  opposite orders deadlocked (PostgreSQL finds it after `deadlock_timeout`, 1 s; the
  groups were rolled back and taken again mail by mail). On the bench's 8 mailboxes
  sharing senders two daemons were slower than one (bench/README.md). Now
  `engage_customer` (schema migration 12) makes the customer and its address in one
  statement, committed at once: no mail's transaction holds a new address.
* A pool of its own, of up to POOL_MAX connections, none until needed: a task holding a
  connection of the main pool (its group) that waited for a second one of the same pool
  could wait for ever once every connection was held by such tasks. The statement holds
  its connection alone, and waits for nothing of the main pool.
* No check of a connection before it is lent (a round trip a new customer): a connection
  broken meanwhile (the server restarted) fails, the pool drops it, and the statement is
  sent once more on another (`make`), up to POOL_MAX + 1 times (each idle connection may
  be broken). Safe: the function finds the customer an earlier try made (then says it
  did not make it: the mail is taken again, and finds it).
* When the address had a customer already (another listener made it since the mail's
  arrival read, or an earlier try did), the mail is taken again (`WriteConflict`): its
  arrival then finds that customer and its cases by subject (a customer the engine made
  has none, and it does not look).
* A mail rolled back after its customer was made (a failed routing hook, a failed group)
  leaves the customer, without a case; taken again, the mail finds it.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from engage_listener.store.common_sql import now_iso
from engage_listener.store.postgres.connect import read_committed

__all__ = ["POOL_MAX", "make", "open_customer_pool"]

POOL_MAX = 2  # connections that make customers, per daemon
_MAKE = "SELECT customer, made FROM engage_customer(%s, %s, %s, %s)"


async def open_customer_pool(url: str, kwargs: dict[str, Any]) -> AsyncConnectionPool:
    """The pool `make` uses: no connection until the first new customer."""
    pool: AsyncConnectionPool = AsyncConnectionPool(
        url,
        kwargs={**kwargs, "application_name": "engage-listener customers"},  # pg_stat_activity
        min_size=0,
        max_size=POOL_MAX,
        open=False,
        configure=read_committed,  # the function's re-read must see the other's commit
        name="engage-customers",
    )
    await pool.open()
    return pool


async def make(pool: AsyncConnectionPool, name: str, address: str, source: str) -> tuple[int, bool]:
    """(the customer of `address`, whether this call made it), committed. `address` is
    lower-cased already."""
    for tries_left in range(POOL_MAX, -1, -1):
        async with pool.connection() as conn:
            try:
                cur = await conn.execute(_MAKE, (address, name, source, now_iso()))
                row = await cur.fetchone()
            except psycopg.OperationalError:
                if not tries_left or not conn.broken:
                    raise  # a lock held too long, or the server gone: the mail's error
                continue  # the connection broke (see Decisions): once more, on another
        assert row is not None
        return int(row[0]), bool(row[1])
    raise AssertionError("unreachable")
