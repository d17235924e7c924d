"""The lease statements against mails' fencing locks (issue 16 point 3). A mail's
transaction holds its listener's lease row FOR KEY SHARE until it commits: a renewal
(expires_at only) never waits for it, while a take-over or a release (owner, fence: the
unique key) waits for every mail that checked the row. The lease tables come from
`LEASE_DDL`, which must stay identical to the store's migrations (checked here too)."""

from __future__ import annotations

import asyncio

import psycopg

from devkit.postgres import PostgresServer
from engage_listener.service.leases import LeaseTables
from tests.support.leases import lease_db
from tests.support.postgres import lock_waiters, pg_store, pg_url, postgres_server

__all__ = ["lease_db", "pg_store", "pg_url", "postgres_server"]  # fixtures, used here
HOLD = "SELECT 1 FROM listener_leases WHERE listener = %s FOR KEY SHARE"  # the store's check
RENEWAL_SECONDS = 5.0  # a renewal that waited for a mail would wait for ever here
LEASES = (
    "INSERT INTO daemons VALUES ('d1', 'host', 1, now(), now(), NULL),"
    " ('d2', 'host', 2, now(), now(), NULL);"
    " INSERT INTO listener_leases (listener, owner, fence, expires_at) VALUES"
    " ('L-b', 'd1', 1, now() + interval '1 hour'), ('L-a', 'd1', 1, now() + interval '1 hour')"
)


async def test_a_renewal_goes_through_while_mails_hold_their_lease_rows(lease_db: str) -> None:
    """Mail A holds its lease row and waits for mail B, which holds its own: the renewal
    of both rows neither waits for them nor closes a deadlock with them. (With FOR SHARE
    it waited for A, and one UPDATE of both rows deadlocked with B's next check.)"""
    url = lease_db
    mail_a, mail_b = [await psycopg.AsyncConnection.connect(url) for _ in range(2)]
    coordinator = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        await coordinator.execute(LEASES + "; CREATE TABLE r (n integer); INSERT INTO r VALUES (1)")
        await mail_b.execute("UPDATE r SET n = 2")  # B holds what A will want
        await mail_b.execute(HOLD, ("L-b",))
        await mail_a.execute(HOLD, ("L-a",))
        a_waits = asyncio.create_task(mail_a.execute("UPDATE r SET n = 3"))
        await lock_waiters(url, 1)  # A on B
        renewal = LeaseTables(coordinator).renew("d1", ["L-a", "L-b"], 60)
        assert await asyncio.wait_for(renewal, RENEWAL_SECONDS) == {"L-a", "L-b"}
        await mail_b.execute(HOLD, ("L-b",))  # B's next ledger row checks its lease again
        await mail_b.commit()
        await a_waits
        await mail_a.commit()
    finally:
        for conn in (mail_a, mail_b, coordinator):
            await conn.close()


async def test_a_take_over_and_a_release_wait_for_the_mail_that_checked_the_lease(
    lease_db: str,
) -> None:
    """The lease of L-a has expired while its mail was in flight: another daemon's
    take-over waits for that mail's commit (fencing), and so does the owner's release."""
    url = lease_db
    mail = await psycopg.AsyncConnection.connect(url)
    coordinator = await psycopg.AsyncConnection.connect(url, autocommit=True)
    other = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        await coordinator.execute(LEASES)
        await mail.execute(HOLD, ("L-a",))
        await coordinator.execute("UPDATE listener_leases SET expires_at = now() - interval '1 s'")
        take = asyncio.create_task(LeaseTables(other).acquire("d2", ["L-a"], 60))
        release = asyncio.create_task(LeaseTables(coordinator).release("d1", ["L-b"]))
        await asyncio.wait_for(release, RENEWAL_SECONDS)  # no mail checked L-b
        await lock_waiters(url, 1)
        assert not take.done()
        await mail.commit()
        assert await asyncio.wait_for(take, RENEWAL_SECONDS) == {"L-a": 2}

        await mail.execute(HOLD, ("L-a",))  # d2's mail now
        release = asyncio.create_task(LeaseTables(other).release("d2", ["L-a"]))
        await lock_waiters(url, 1)
        assert not release.done()
        await mail.commit()
        await asyncio.wait_for(release, RENEWAL_SECONDS)
        leases = {row.listener: row for row in await LeaseTables(other).leases()}
        assert leases["L-a"].owner is None and not leases["L-a"].held
    finally:
        for conn in (mail, coordinator, other):
            await conn.close()


async def test_the_lease_tables_of_the_tests_are_those_the_store_makes(
    postgres_server: PostgresServer, lease_db: str, pg_store: object, pg_url: str
) -> None:
    """LEASE_DDL (what these tests create) against the migrated store's tables: the same
    columns and the same indexes (the key a renewal must not change included)."""
    shapes = []
    for url in (lease_db, pg_url):
        async with await psycopg.AsyncConnection.connect(url) as conn:
            columns = await conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable, column_default"
                " FROM information_schema.columns"
                " WHERE table_name IN ('daemons', 'listener_leases') ORDER BY 1, 2"
            )
            indexes = await conn.execute(
                "SELECT indexdef FROM pg_indexes"
                " WHERE tablename IN ('daemons', 'listener_leases') ORDER BY 1"
            )
            shapes.append((await columns.fetchall(), await indexes.fetchall()))
    assert shapes[0] == shapes[1]
    assert any("listener_leases_holder" in str(row) for row in shapes[1][1])
