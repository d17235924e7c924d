"""Round trips one mail costs on the PostgreSQL store (issue 16 point 9), counted from
libpq's trace (`RoundTrips`), never timed: a single listener is a serial chain of round
trips, and each costs the daemon CPU (psycopg's send, wait and decode) and a wake-up of
the server. A change that adds one to the typical mail fails here."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devkit.postgres import PostgresServer
from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.cases.hooks import SqlHook, load_hook
from engage_listener.config.model import StoreConfig
from engage_listener.store.interface import MailKey, NewCase, Store
from engage_listener.store.open import build_store
from tests.support.helpers import make_mail
from tests.support.paths import REPO
from tests.support.postgres import RoundTrips, fresh_database, postgres_server

__all__ = ["postgres_server"]  # a fixture
EXAMPLE = REPO / "examples" / "routing" / "pa_sys_msg_in.pgsql"
OWNER = "daemon-a"

# One mail of a known customer that opens a case, routed by the example `pg:` function,
# fenced (the daemon's lease checked with the ledger row), in a group commit as the IMAP
# listener takes a batch: the arrival (`find_arrival`: the duplicate check, the customer,
# its open and closed cases of the subject, and the ids of the message row and the new
# case, with the previous mail's queued writes, its fenced ledger row and RELEASE, and
# this one's SAVEPOINT), then the routing CALL, awaited (with the queued writes, the case
# and the message among them). The fenced ledger row is queued (its lease
# check raises when the lease is not held: schema migration 10). It was 10: the
# customer, the closed case by subject, the case read for the hook and the hook's
# SAVEPOINT were a round trip each; then 6: the fenced ledger row waited for its answer;
# then 5: the cases by subject, the new case and the message (each INSERT ... RETURNING)
# were a round trip each.
IN_A_GROUP = 2
# A reply that joins the case its In-Reply-To names: the arrival, the case of the header
# with whether the sender takes part in it (one read: it was two), the case's info (its
# status, for RequireApproval, then the hook's view; read after the case's row is locked
# by the message's `updated_at`), the routing CALL.
REPLY_IN_A_GROUP = 4
# A follow-up that joins its customer's open case by subject: the arrival (which found the
# case), the case's info (as for a reply), the routing CALL.
BY_SUBJECT_IN_A_GROUP = 3
# The same mail alone (a batch of one, as IDLE brings them): the pool's check of the
# connection, BEGIN with the first read, the fenced ledger row with the COMMIT. It was 13:
# BEGIN and COMMIT were a round trip each too; then 8: the fenced ledger row, then COMMIT.
ALONE = 4
# Statements the mail sends (each costs psycopg's Python work, round trip or not), in a
# group: the arrival, the case, the message, its participants (one multi-row INSERT: it
# was one a participant), the hook's CALL, the routing decision's UPDATE, the ledger row,
# the mail's RELEASE and the next mail's SAVEPOINT; alone, BEGIN and COMMIT instead of
# the mail's savepoint. A new customer adds none there: it is made at once on a
# connection of its own (store.postgres.customers), one statement in a round trip of its
# own (NEW_CUSTOMER); it was one more statement queued in the mail's transaction, whose
# uncommitted address other listeners' transactions waited and deadlocked on. The new
# case's `updated_at` is no longer touched by the message, and the hook, awaited, needs
# no SAVEPOINT and RELEASE of its own (it ran inline, where a stopped run was undone and
# done again on a thread).
STATEMENTS = {True: 9, False: 10}
NEW_CUSTOMER = 1


@pytest.fixture
async def url(postgres_server: PostgresServer) -> str:
    return fresh_database(postgres_server)


@pytest.fixture
async def store(url: str, postgres_server: PostgresServer) -> AsyncIterator[Store]:
    """A fenced store (it holds listener L's lease) with the example routing function."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        opened = build_store(StoreConfig(Path("unused"), url=url), owner=OWNER)
        await opened.open()
        await conn.execute(EXAMPLE.read_text().encode())
        await conn.execute(
            f"INSERT INTO daemons VALUES ('{OWNER}', 'host', 1, now(), now(), NULL);"
            f" INSERT INTO listener_leases (listener, owner, fence, expires_at)"
            f" VALUES ('L', '{OWNER}', 1, now() + interval '1 hour')".encode()
        )
    try:
        yield opened
    finally:
        await opened.close()


async def _traced(store: Store, tmp_path: Path) -> RoundTrips:
    """The pool's one connection (min_size 1, used by one task at a time), traced."""
    async with store.connection() as conn:  # type: ignore[attr-defined]
        return RoundTrips(conn, tmp_path / "libpq.trace")


async def _traced_customers(store: Store, tmp_path: Path) -> RoundTrips:
    """The connection that makes new customers (its pool's only one, made here), traced."""
    async with store._customers.connection() as conn:  # type: ignore[attr-defined]
        return RoundTrips(conn, tmp_path / "customers.trace")


def _engine(store: Store) -> tuple[CaseEngine, SqlHook]:
    hook = load_hook("pg:engage_routing.pa_sys_msg_in", REPO, 10, "postgres")
    assert isinstance(hook, SqlHook)
    return CaseEngine(store, EngineSettings("L", extract_attachments=True, hook=hook)), hook


@pytest.mark.parametrize(("grouped", "expected"), [(True, IN_A_GROUP), (False, ALONE)])
@pytest.mark.parametrize("new_customer", [False, True], ids=["known", "new-customer"])
async def test_round_trips_of_a_typical_mail(
    store: Store, tmp_path: Path, grouped: bool, expected: int, new_customer: bool
) -> None:
    """A new customer costs the mail's transaction nothing more: it is made apart, in one
    round trip of its own."""
    engine, hook = _engine(store)
    trips = await _traced(store, tmp_path)
    customer_trips = await _traced_customers(store, tmp_path)
    counts, statements, apart = [], [], []
    async with store.group() if grouped else contextlib.nullcontext():
        for n in range(1, 10):  # psycopg prepares a statement on its 5th use: then steady
            hook.inline = True  # a loaded machine may have moved it off the loop
            before, sent = trips.count(), trips.statements()
            made = customer_trips.count()
            sender = f"nuevo{n}@example.com" if new_customer else "ana@example.com"
            raw = make_mail(n, sender=sender, subject=f"Consulta {n}")
            done = await engine.ingest(MailKey("L", "INBOX", "1", str(n)), raw)
            counts.append(trips.count() - before)
            statements.append(trips.statements() - sent)
            apart.append(customer_trips.count() - made)
            assert done.new_case and done.case_id is not None
    trips.stop()
    customer_trips.stop()
    assert counts[-3:] == [expected] * 3, counts
    assert statements[-3:] == [STATEMENTS[grouped]] * 3, statements
    assert apart[-3:] == [NEW_CUSTOMER if new_customer else 0] * 3, apart
    assert new_customer or apart[1:] == [0] * 8, apart  # the first mail made Ana
    async with store.transaction() as tx:
        info = await tx.case_info(done.case_id)
    assert info.inbox == "General"  # the function did route it


async def test_the_case_info_of_a_new_case_costs_no_round_trip(
    store: Store, tmp_path: Path
) -> None:
    trips = await _traced(store, tmp_path)
    async with store.transaction() as tx:
        ref = await tx.create_case(NewCase("L", None, "a@example.com", "A", "Hola", "hola"))
        before = trips.count()
        info = await tx.case_info(ref.id)
        assert await tx.case_info(ref.id) is info
        assert trips.count() == before
    trips.stop()
    assert (info.case_number, info.status, info.subject, info.tags) == (
        ref.case_number, "open", "Hola", (),
    )  # fmt: skip


async def test_an_inline_hook_starts_no_thread_per_mail(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One canceller thread for the process, armed per run; no `threading.Timer` a mail."""
    engine, hook = _engine(store)
    await engine.ingest(MailKey("L", "INBOX", "1", "0"), make_mail(0))  # it may start once
    started: list[Any] = []
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        started.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    for n in range(1, 4):
        hook.inline = True
        await engine.ingest(MailKey("L", "INBOX", "1", str(n)), make_mail(n))
    assert started == []


async def test_a_mail_that_joins_a_case_takes_no_case_number(store: Store) -> None:
    """The arrival takes a case id only for a mail that will open a case: one that joins
    its customer's case by subject, or names one, leaves no gap in the case numbers."""
    engine, _ = _engine(store)
    numbers = []
    mails = [
        make_mail(1, sender="ana@example.com", subject="Factura", message_id="<t1@example.com>"),
        make_mail(2, sender="ana@example.com", subject="RE: Factura"),  # joins by subject
        make_mail(3, sender="ana@example.com", subject="Otra").replace(
            b"MIME-Version", b"In-Reply-To: <t1@example.com>\r\nMIME-Version"
        ),  # joins by header
        make_mail(4, sender="luis@example.com", subject="Hola"),  # opens
    ]
    for n, raw in enumerate(mails, 1):
        done = await engine.ingest(MailKey("L", "INBOX", "1", str(n)), raw)
        numbers.append((done.new_case, done.case_number))
    first = int(str(numbers[0][1]))
    assert numbers == [
        (True, f"{first:06d}"), (False, f"{first:06d}"), (False, f"{first:06d}"),
        (True, f"{first + 1:06d}"),
    ]  # fmt: skip


@pytest.mark.parametrize(("by", "expected"), [("header", REPLY_IN_A_GROUP),
                                              ("subject", BY_SUBJECT_IN_A_GROUP)])  # fmt: skip
async def test_round_trips_of_a_follow_up(
    store: Store, tmp_path: Path, by: str, expected: int
) -> None:
    engine, hook = _engine(store)
    first = make_mail(0, sender="ana@example.com", subject="Factura", message_id="<t0@x.org>")
    case = (await engine.ingest(MailKey("L", "INBOX", "1", "0"), first)).case_id
    trips = await _traced(store, tmp_path)
    counts = []
    async with store.group():
        for n in range(1, 10):
            hook.inline = True
            before = trips.count()
            if by == "header":
                raw = make_mail(n, sender="ana@example.com", subject=f"Otra {n}").replace(
                    b"MIME-Version", b"In-Reply-To: <t0@x.org>\r\nMIME-Version"
                )
            else:
                raw = make_mail(n, sender="ana@example.com", subject="RE: Factura")
            done = await engine.ingest(MailKey("L", "INBOX", "1", str(n)), raw)
            counts.append(trips.count() - before)
            assert done.case_id == case and not done.new_case
    trips.stop()
    assert counts[-3:] == [expected] * 3, counts
