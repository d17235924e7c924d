"""The lease statements against mails' fencing locks (issue 16 point 3): a renewal never
holds one lease row while it waits for another, so it cannot close a deadlock with the
mail transactions that hold their listener's row FOR SHARE and wait on each other."""

from __future__ import annotations

import asyncio

import psycopg

from engage_listener.service.leases import LeaseTables
from tests.support.leases import lease_db
from tests.support.postgres import lock_waiters, postgres_server

__all__ = ["lease_db", "postgres_server"]  # fixtures, imported to be used here
HOLD = "SELECT 1 FROM listener_leases WHERE listener = %s FOR SHARE"  # as the store's check


async def test_a_renewal_waits_for_a_busy_mail_without_deadlocking_the_next(
    lease_db: str,
) -> None:
    """Mail A holds its lease row and waits for mail B; the renewal waits for A; B then
    checks its own lease row. One UPDATE of both rows (B's row first in the table) held
    B's row meanwhile: B waited for it, a deadlock, and the renewal failed."""
    url = lease_db
    conns = [await psycopg.AsyncConnection.connect(url) for _ in range(2)]
    coordinator = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        await coordinator.execute(
            "INSERT INTO daemons VALUES ('d1', 'host', 1, now(), now(), NULL);"
            " INSERT INTO listener_leases (listener, owner, fence, expires_at) VALUES"
            " ('L-b', 'd1', 1, now() + interval '1 hour'),"
            " ('L-a', 'd1', 1, now() + interval '1 hour');"
            " CREATE TABLE r (n integer); INSERT INTO r VALUES (1)"
        )
        mail_a, mail_b = conns
        await mail_b.execute("UPDATE r SET n = 2")  # B holds what A will want
        await mail_a.execute(HOLD, ("L-a",))
        a_waits = asyncio.create_task(mail_a.execute("UPDATE r SET n = 3"))
        renewal = asyncio.create_task(
            LeaseTables(coordinator).renew("d1", ["L-a", "L-b"], 60)
        )
        await lock_waiters(url, 2)  # A on B, the renewal on A
        await mail_b.execute(HOLD, ("L-b",))  # B's next ledger row checks its lease
        await mail_b.commit()
        await a_waits
        await mail_a.commit()
        assert await asyncio.wait_for(renewal, 10) == {"L-a", "L-b"}
    finally:
        for conn in (*conns, coordinator):
            await conn.close()
