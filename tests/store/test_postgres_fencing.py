"""Fencing with the ledger row queued (issue 16 points 3 and 9): the lease is checked by
the ledger INSERT itself (`engage_hold_lease`, migration 10), which goes out with the
next read or the COMMIT, not on a round trip of its own. A lease lost between a mail's
writes and its commit must still give `LeaseLost` (never a plain `StoreError`, which a
batch would retry) and commit nothing, alone and in a group commit, whichever mail of
the group it hits. Against a real PostgreSQL (tests.support.postgres)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devkit.postgres import PostgresServer
from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.config.model import StoreConfig
from engage_listener.errors import LeaseLost
from engage_listener.service.leases import LeaseTables
from engage_listener.store.interface import MailKey, NewCase, NewMessage, Store
from engage_listener.store.open import build_store
from tests.support.helpers import make_mail
from tests.support.postgres import fresh_database, lock_waiters

MessageFactory = Callable[..., NewMessage]  # the `message` fixture (conftest)
Admin = psycopg.AsyncConnection[Any]

OWNER, OTHER = "daemon-a", "daemon-b"
COUNTS = "SELECT (SELECT count(*) FROM cases), (SELECT count(*) FROM messages),"
COUNTS += " (SELECT count(*) FROM ledger)"
SHORT_LEASE = "interval '5 seconds'"  # two mails fit in it on any machine; then it expires


@pytest.fixture
def url(postgres_server: PostgresServer) -> str:
    return fresh_database(postgres_server)


@pytest.fixture
async def admin(url: str) -> AsyncIterator[Admin]:
    """What the lease manager of another daemon does, on a connection of its own."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        yield conn


@pytest.fixture
async def store(url: str, admin: Admin) -> AsyncIterator[Store]:
    """A fenced store holding listener L's lease for an hour, with one mail committed."""
    opened = build_store(StoreConfig(Path("unused"), url=url), owner=OWNER)
    await opened.open()
    for daemon in (OWNER, OTHER):
        await admin.execute(
            "INSERT INTO daemons VALUES (%s, 'host', 1, now(), now(), NULL)", (daemon,)
        )
    await admin.execute(
        "INSERT INTO listener_leases (listener, owner, fence, expires_at)"
        " VALUES ('L', %s, 1, now() + interval '1 hour')",
        (OWNER,),
    )
    await _engine(opened).ingest(_key(0), make_mail(0))
    try:
        yield opened
    finally:
        await opened.close()


def _key(n: int) -> MailKey:
    return MailKey("L", "INBOX", "7", str(n))


def _engine(store: Store) -> CaseEngine:
    return CaseEngine(store, EngineSettings("L", extract_attachments=True))


async def _take_over(admin: Admin, within: float = 10) -> None:
    """Another daemon takes the lease: at once where nothing checked it yet (a take-over
    that waits there would be a lock held too early: a failure after `within` s)."""
    async with asyncio.timeout(within):
        await admin.execute(
            "UPDATE listener_leases SET owner = %s, fence = fence + 1 WHERE listener = 'L'",
            (OTHER,),
        )


async def _counts(admin: Admin) -> tuple[object, ...]:
    cur = await admin.execute(COUNTS)
    row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def _ledger(store: Store, *items: int) -> dict[str, str]:
    return dict(await store.known_states("L", "INBOX", "7", [str(i) for i in items]))


async def test_a_mail_alone_whose_lease_is_taken_before_its_commit_commits_nothing(
    store: Store, admin: Admin, message: MessageFactory
) -> None:
    before = await _counts(admin)
    with pytest.raises(LeaseLost, match=f"daemon {OWNER} does not hold the lease of listener L"):
        async with store.transaction() as tx:
            case = await tx.create_case(NewCase("L", None, "a@example.com", "A", "Hola", "hola"))
            mail = message()
            row = await tx.add_message(case.id, mail)
            await tx.add_ledger(_key(1), row, mail)  # queued: nothing checked yet
            await _take_over(admin)
    assert await _counts(admin) == before
    assert await _ledger(store, 0, 1) == {"0": "committed"}
    with pytest.raises(LeaseLost):  # and the settlement of mail 0 is refused too
        await store.mark_done([_key(0)], "moved")
    assert await _ledger(store, 0) == {"0": "committed"}


@pytest.mark.parametrize("mails", [1, 2])
async def test_the_first_mail_of_a_group_losing_the_lease_fails_the_group_with_lease_lost(
    store: Store, admin: Admin, mails: int
) -> None:
    """Its ledger row goes out with the next mail's first read (2 mails), whose savepoint
    then was never made: its undo fails, and must raise the `LeaseLost`, not the undo's
    error; or with the group's COMMIT (1 mail)."""
    engine, before = _engine(store), await _counts(admin)
    reached: list[int] = []
    with pytest.raises(LeaseLost, match="does not hold the lease of listener L"):
        async with store.group():
            await engine.ingest(_key(1), make_mail(1))
            await _take_over(admin)
            for n in range(2, mails + 1):
                reached.append(n)
                await engine.ingest(_key(n), make_mail(n))
                reached.append(-n)  # not reached: the mail raised
    assert reached == list(range(2, mails + 1))
    assert await _counts(admin) == before
    assert await _ledger(store, 0, 1, 2) == {"0": "committed"}


async def test_a_later_mail_of_a_group_losing_the_lease_fails_the_group_with_lease_lost(
    store: Store, admin: Admin, url: str
) -> None:
    """Once a mail of the group checked the lease, the group holds it FOR KEY SHARE: a
    take-over waits for the group's end; the lease can still expire meanwhile: the next
    mail's check fails, and with it the whole group (its first mail too)."""
    await admin.execute(f"UPDATE listener_leases SET expires_at = now() + {SHORT_LEASE}")
    engine, before = _engine(store), await _counts(admin)
    reached: list[str] = []
    with pytest.raises(LeaseLost, match="does not hold the lease of listener L"):
        async with store.group():
            await engine.ingest(_key(1), make_mail(1))
            await engine.ingest(_key(2), make_mail(2))  # its first read sent mail 1's check
            reached.append("mail 2")  # within SHORT_LEASE: mail 1's check passed
            take = asyncio.create_task(_take_over(admin, within=60))
            await _expired(url)
            assert not take.done()  # held FOR KEY SHARE by the group's transaction
            await engine.ingest(_key(3), make_mail(3))  # sends mail 2's check: expired
    assert reached == ["mail 2"]
    await take  # went through once the group rolled back
    assert await _counts(admin) == before
    assert await _ledger(store, 0, 1, 2, 3) == {"0": "committed"}


async def test_the_owner_renews_its_lease_while_its_group_holds_it(
    store: Store, admin: Admin, url: str
) -> None:
    """The renewal changes expires_at only: it does not wait for the daemon's own group
    in flight (it did with FOR SHARE, and ran out of time on a loaded machine), while a
    take-over still waits for the group, which commits."""
    engine, before = _engine(store), await _counts(admin)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as other:
        async with store.group():
            await engine.ingest(_key(1), make_mail(1))
            await engine.ingest(_key(2), make_mail(2))  # its first read sent mail 1's check
            renewal = LeaseTables(admin).renew(OWNER, ["L"], 3600)
            assert await asyncio.wait_for(renewal, 5) == {"L"}
            take = asyncio.create_task(_take_over(other, within=60))
            await lock_waiters(url, 1)  # the group holds the row: the check went out
            assert not take.done()
        await take
    assert await _ledger(store, 0, 1, 2) == {str(n): "committed" for n in range(3)}
    assert (await _counts(admin))[2] == before[2] + 2


async def _expired(url: str) -> None:
    """Until the server's clock is past the lease (read on a connection of its own: a
    read does not wait for the group's lock)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        async with asyncio.timeout(30):
            while True:
                cur = await conn.execute(
                    "SELECT expires_at <= clock_timestamp() FROM listener_leases"
                    " WHERE listener = 'L'"
                )
                row = await cur.fetchone()
                if row is not None and row[0]:
                    return
                await asyncio.sleep(0.1)
