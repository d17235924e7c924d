"""Two listeners making the same new customer at once (issue 16: several listeners and
daemons on one PostgreSQL): the second mail's transaction meets the first one's new
address, is rolled back (`WriteConflict`) and taken again at once, and joins that
customer; it was a listener error with seconds of back-off."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.errors import WriteConflict
from engage_listener.store.interface import MailKey, Store
from engage_listener.store.postgres.deferred import write_conflict
from tests.support.helpers import make_mail
from tests.support.postgres import lock_waiters, pg_store, pg_url, postgres_server

__all__ = ["pg_store", "pg_url", "postgres_server"]  # fixtures


async def test_a_customer_another_listener_makes_at_once_is_joined(
    pg_store: Store, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, url = pg_store, pg_url
    conflicts: list[str] = []
    real = CaseEngine._ingest

    async def noting(self: CaseEngine, *args: object) -> object:
        try:
            return await real(self, *args)  # type: ignore[arg-type]
        except WriteConflict as exc:
            conflicts.append(str(exc))
            raise

    monkeypatch.setattr(CaseEngine, "_ingest", noting)
    engine = CaseEngine(store, EngineSettings("L", extract_attachments=True))
    made, commit = asyncio.Event(), asyncio.Event()

    async def other_listener() -> int:
        async with store.transaction() as tx:
            customer = await tx.create_customer("Ana", "ana@example.com", "auto")
            await tx.find_customer("ana@example.com")  # the address sent, not committed
            made.set()
            await commit.wait()
        return customer.id

    other = asyncio.create_task(other_listener())
    await made.wait()
    ingest = asyncio.create_task(
        engine.ingest(MailKey("L", "INBOX", "1", "1"), make_mail(1, sender="ana@example.com"))
    )
    await lock_waiters(url, 1)
    commit.set()
    customer_id = await other
    done = await ingest
    assert len(conflicts) == 1 and "customer_addresses" in conflicts[0]
    async with store.transaction() as tx:
        info = await tx.case_info(done.case_id or 0)
        assert (await tx.find_customer("ana@example.com")).id == customer_id  # type: ignore[union-attr]
    assert info.customer_id == customer_id  # the other's customer, not a second one


async def test_what_a_mail_is_taken_again_for(pg_store: Store, pg_url: str) -> None:
    """A new row another committed first, or a deadlock, is taken again (`write_conflict`);
    the ledger's key is not: another daemon committed this very mail (the final guard)."""
    url = pg_url  # the store made its tables
    ledger = (
        "INSERT INTO ledger (listener, mailbox, epoch, item, sha256, state, created_at)"
        " VALUES ('L', 'INBOX', '1', '1', 'x', 'committed', 'now')"
    )
    address = "INSERT INTO customer_addresses (address, customer_id) VALUES (%s, %s)"
    seen: list[BaseException] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(ledger)
        cur = await conn.execute(
            "INSERT INTO customers (name, source, created_at) VALUES ('A', 'auto', 'now'),"
            " ('B', 'auto', 'now') RETURNING id"
        )
        a, b = [row[0] for row in await cur.fetchall()]
        await conn.execute(address, ("a@example.com", a))
        for sql, params in ((ledger, None), (address, ("a@example.com", b))):
            with pytest.raises(psycopg.errors.UniqueViolation) as caught:
                await conn.execute(sql, params)
            seen.append(caught.value)
    first = await psycopg.AsyncConnection.connect(url)
    second = await psycopg.AsyncConnection.connect(url)
    try:  # each locks a customer, then wants the other's: one of them is the victim
        await first.execute("UPDATE customers SET name = 'x' WHERE id = %s", (a,))
        await second.execute("UPDATE customers SET name = 'y' WHERE id = %s", (b,))
        results = await asyncio.gather(
            first.execute("UPDATE customers SET name = 'x' WHERE id = %s", (b,)),
            second.execute("UPDATE customers SET name = 'y' WHERE id = %s", (a,)),
            return_exceptions=True,
        )
        seen += [r for r in results if isinstance(r, BaseException)]
    finally:
        for conn in (first, second):
            await conn.close()
    assert [type(e).__name__ for e in seen] == ["UniqueViolation", "UniqueViolation",
                                               "DeadlockDetected"]  # fmt: skip
    assert [write_conflict(e) for e in seen] == [False, True, True]
