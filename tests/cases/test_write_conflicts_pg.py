"""Listeners making the same new customers at once (issue 16: several listeners and
daemons on one PostgreSQL). A new customer is committed at once, outside the mail's
transaction (store.postgres.customers): no listener's transaction waits for another's
new address, and two batches making the same customers in opposite orders no longer
deadlock (they did: 1 s each, then mail by mail). A customer made by another since the
mail's first read makes the mail be taken again (`WriteConflict`), at once."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.errors import WriteConflict
from engage_listener.store.interface import MailKey, Store
from engage_listener.store.postgres.deferred import write_conflict
from tests.support.helpers import make_mail
from tests.support.postgres import pg_store, pg_url, postgres_server

__all__ = ["pg_store", "pg_url", "postgres_server"]  # fixtures
WITHIN = 10.0  # seconds: far more than a mail takes; a wait for a commit never ends here


def _noting_conflicts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    conflicts: list[str] = []
    real = CaseEngine._ingest

    async def noting(self: CaseEngine, *args: object) -> object:
        try:
            return await real(self, *args)  # type: ignore[arg-type]
        except WriteConflict as exc:
            conflicts.append(str(exc))
            raise

    monkeypatch.setattr(CaseEngine, "_ingest", noting)
    return conflicts


async def test_a_customer_another_listener_made_is_joined_before_its_commit(
    pg_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other listener's transaction is still open: the mail neither waits for it nor
    makes a second customer."""
    store = pg_store
    conflicts = _noting_conflicts(monkeypatch)
    engine = CaseEngine(store, EngineSettings("L", extract_attachments=True))
    made, commit = asyncio.Event(), asyncio.Event()

    async def other_listener() -> int:
        async with store.transaction() as tx:
            customer = await tx.create_customer("Ana", "ana@example.com", "auto")
            made.set()
            await commit.wait()
        return customer.id

    other = asyncio.create_task(other_listener())
    await made.wait()
    key, raw = MailKey("L", "INBOX", "1", "1"), make_mail(1, sender="ana@example.com")
    done = await asyncio.wait_for(engine.ingest(key, raw), WITHIN)
    commit.set()
    customer_id = await other
    async with store.transaction() as tx:
        info = await tx.case_info(done.case_id or 0)
    assert info.customer_id == customer_id and conflicts == []


async def test_batches_making_the_same_customers_in_opposite_orders_never_wait(
    pg_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two listeners' group commits, each open until both have taken both senders' mails:
    with the customers in the groups' transactions, each waited for the other's address
    and PostgreSQL killed one as a deadlock (taken again, it waited again)."""
    store = pg_store
    conflicts = _noting_conflicts(monkeypatch)
    senders = ["ana@example.com", "luis@example.com"]
    firsts, seconds = asyncio.Barrier(2), asyncio.Barrier(2)

    async def listener(name: str, order: list[str]) -> list[int | None]:
        engine = CaseEngine(store, EngineSettings(name, extract_attachments=True))
        cases = []
        async with store.group():
            for n, sender in enumerate(order, 1):
                raw = make_mail(n, sender=sender, subject=f"{name} {n}")
                done = await engine.ingest(MailKey(name, "INBOX", "1", str(n)), raw)
                cases.append(done.case_id)
                await (firsts if n == 1 else seconds).wait()
        return cases

    both = asyncio.gather(listener("A", senders), listener("B", senders[::-1]))
    cases_a, cases_b = await asyncio.wait_for(both, WITHIN)
    async with store.transaction() as tx:
        customers = {(await tx.case_info(case or 0)).customer_id for case in [*cases_a, *cases_b]}
        made = [await tx.find_customer(sender) for sender in senders]
    assert customers == {c.id for c in made if c is not None} and len(customers) == 2
    assert conflicts == []


async def test_a_customer_made_since_the_arrival_takes_the_mail_again(pg_store: Store) -> None:
    """Another made the sender's customer after this mail's first read: this one's
    `create_customer` says so (`WriteConflict`), and makes no second customer."""
    store = pg_store
    async with store.transaction() as tx:
        seen = await tx.find_arrival("L", "x" * 64, None, "ana@example.com")
        async with store.transaction() as other:  # another task would do the same
            ana = await other.create_customer("Ana", "ana@example.com", "auto")
        with pytest.raises(WriteConflict):
            await tx.create_customer("Ana", "Ana@Example.com", "auto")
    async with store.transaction() as tx:
        assert seen.customer is None and await tx.find_customer("ana@example.com") == ana


async def test_a_mail_whose_customer_was_made_meanwhile_is_taken_again_and_joins_it(
    pg_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another listener commits the sender's customer between this mail's first read and
    its `create_customer`: the mail is rolled back, taken again at once, and joins that
    customer; no second customer."""
    store: Any = pg_store
    conflicts = _noting_conflicts(monkeypatch)
    real, others = store._make_customer, []

    async def made_meanwhile(name: str, address: str, source: str) -> tuple[int, bool]:
        if not others:  # the other listener is first, once
            others.append(await real("Ana (other)", address, source))
        return await real(name, address, source)

    monkeypatch.setattr(store, "_make_customer", made_meanwhile)
    engine = CaseEngine(store, EngineSettings("L", extract_attachments=True))
    raw = make_mail(1, sender="ana@example.com")
    done = await engine.ingest(MailKey("L", "INBOX", "1", "1"), raw)
    async with store.transaction() as tx:
        info = await tx.case_info(done.case_id or 0)
        ana = await tx.find_customer("ana@example.com")
    assert len(conflicts) == 1 and others[0][1] is True
    assert info.customer_id == others[0][0] == ana.id and ana.name == "Ana (other)"


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
