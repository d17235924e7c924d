"""POP3 and POP3S listeners against the real Dovecot: delete after commit, lost deletions,
LeaveOnServer, servers without UIDL, TLS, errors, limits, and IMAP alongside."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from devkit.dovecot import DovecotSandbox, free_port
from engage_listener.cases.engine import CaseEngine
from engage_listener.cases.ingested import Ingested
from engage_listener.errors import (
    AuthenticationError,
    ConnectionLostError,
    TlsError,
    TransientError,
)
from engage_listener.observe.protolog import ProtocolLog
from engage_listener.service.build import build_listener
from engage_listener.sources.pop3 import session as pop3
from engage_listener.sources.pop3.listener import ledger_key
from engage_listener.sources.pop3.session import Pop3Session
from engage_listener.store.interface import MailKey
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.fakes import FakeClock
from tests.support.helpers import db_rows, eventually, listener_config, make_mail
from tests.support.pop3 import POLL_SECONDS, dovecot_pop3, pop3_engine, pop3_listener

INBOX = "INBOX"


class KillAfter:
    """A handler that drops the server connection right after its n-th commit."""

    def __init__(self, inner: CaseEngine, dovecot: DovecotSandbox, user: str, n: int) -> None:
        self.inner, self.dovecot, self.user, self.n = inner, dovecot, user, n
        self.calls = 0

    async def ingest(self, key: MailKey, raw: bytes, prepared: object = None) -> Ingested:
        done = await self.inner.ingest(key, raw)
        self.calls += 1
        if self.calls == self.n:
            await asyncio.to_thread(self.dovecot.kill_connections, self.user)
        return done

    async def quarantine(self, key: MailKey, raw: bytes, reason: str, attempts: int) -> int:
        return await self.inner.quarantine(key, raw, reason, attempts)


class RefuseSubject:
    """A handler that fails every mail whose subject contains `word`."""

    def __init__(self, inner: CaseEngine, word: bytes) -> None:
        self.inner, self.word = inner, word

    async def ingest(self, key: MailKey, raw: bytes, prepared: object = None) -> Ingested:
        if self.word in raw:
            raise ValueError("cannot route this one")
        return await self.inner.ingest(key, raw)

    async def quarantine(self, key: MailKey, raw: bytes, reason: str, attempts: int) -> int:
        return await self.inner.quarantine(key, raw, reason, attempts)


def case_count(db: Path, listener: str = "Pop") -> int:
    return int(db_rows(db, "SELECT count(*) FROM cases WHERE listener = ?", (listener,))[0][0])


async def test_mail_is_ingested_then_deleted(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, db: Path
) -> None:
    dovecot.append_many(mailbox_user, INBOX, [make_mail(i) for i in range(3)])
    result = await pop3_listener(dovecot_pop3(dovecot, mailbox_user), store).run_once()
    assert (result.found, result.ingested, result.deleted) == (3, 3, 3)
    assert dovecot.count(mailbox_user, INBOX) == 0
    assert sorted(r[0] for r in db_rows(db, "SELECT subject FROM cases")) == [
        f"Consulta {i}" for i in range(3)
    ]
    rows = db_rows(db, "SELECT mailbox, epoch, item, state FROM ledger")
    assert len(rows) == 3  # POP3's key: no mailbox, generation 0 of each UIDL
    assert all(m == "" and i and (e, s) == ("0", "deleted") for m, e, i, s in rows)


async def test_leave_on_server_takes_each_mail_once_across_polls(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, db: Path
) -> None:
    dovecot.append_many(mailbox_user, INBOX, [make_mail(i) for i in range(2)])
    clock = FakeClock()
    listener = pop3_listener(
        dovecot_pop3(dovecot, mailbox_user), store, clock=clock, leave_on_server=True
    )
    task = asyncio.create_task(listener.run())
    try:
        await eventually(lambda: listener.batches == 1 and clock.sleepers > 0, what="1st poll")
        dovecot.append(mailbox_user, INBOX, make_mail(2))
        clock.advance(POLL_SECONDS - 1)
        await asyncio.sleep(0.2)
        assert listener.batches == 1, "polled before the interval"
        clock.advance(1)
        await eventually(lambda: listener.batches == 2 and clock.sleepers > 0, what="2nd poll")
        clock.advance(POLL_SECONDS)
        await eventually(lambda: listener.batches == 3 and clock.sleepers > 0, what="3rd poll")
    finally:
        listener.stop.set()
        await asyncio.wait_for(task, 10)
    assert listener.state == "stopped"
    assert dovecot.count(mailbox_user, INBOX) == 3
    assert case_count(db) == 3
    assert db_rows(db, "SELECT count(*), min(state) FROM ledger") == [(3, "committed")]


async def test_lost_deletions_are_redone_without_a_second_case(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, db: Path
) -> None:
    """Commit and DELE, then the connection drops before QUIT: the server keeps the mail."""
    dovecot.append_many(mailbox_user, INBOX, [make_mail(i) for i in range(3)])
    ep = dovecot_pop3(dovecot, mailbox_user)
    session = await Pop3Session.open(ep)
    listing = await session.list_uidls()
    for number, uidl in listing[:2]:
        await pop3_engine(store).ingest(ledger_key("Pop", uidl), await session.retrieve(number))
        await session.delete(number)
    session.abort()
    assert dovecot.count(mailbox_user, INBOX) == 3, "DELE must not commit without QUIT"
    result = await pop3_listener(ep, store).run_once()
    assert (result.already_known, result.ingested, result.deleted) == (2, 1, 3)
    assert dovecot.count(mailbox_user, INBOX) == 0
    assert case_count(db) == 3


async def test_connection_killed_mid_poll_loses_and_duplicates_nothing(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, db: Path
) -> None:
    dovecot.append_many(mailbox_user, INBOX, [make_mail(i) for i in range(4)])
    ep = dovecot_pop3(dovecot, mailbox_user)
    killer = KillAfter(pop3_engine(store), dovecot, mailbox_user, 2)
    with pytest.raises(TransientError):
        await pop3_listener(ep, store, handler=killer).run_once()
    assert dovecot.count(mailbox_user, INBOX) == 4  # no QUIT: no deletion committed
    assert case_count(db) == 2
    result = await pop3_listener(ep, store).run_once()
    assert (result.already_known, result.ingested, result.deleted) == (2, 2, 4)
    assert dovecot.count(mailbox_user, INBOX) == 0
    assert case_count(db) == 4
    assert db_rows(db, "SELECT count(*) FROM messages") == [(4,)]


async def test_server_without_uidl_falls_back_to_header_hashes(
    dovecot: DovecotSandbox,
    mailbox_user: str,
    store: SqliteStore,
    db: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_uidl(conn: Any) -> Any:  # a real -ERR from the server: "Unknown command"
        return conn._longcmd("XUIDL")

    monkeypatch.setattr(pop3._Conn, "uidl", no_uidl)
    dovecot.append_many(mailbox_user, INBOX, [make_mail(i) for i in range(3)])
    ep = dovecot_pop3(dovecot, mailbox_user)
    session = await Pop3Session.open(ep)
    try:
        listing = await session.list_uidls()
    finally:
        await session.quit()
    assert session.uidl_supported is False
    assert [n for n, _ in listing] == [1, 2, 3]
    assert all(u.startswith("sha256:") and len(u) == 71 for _, u in listing)
    assert len({u for _, u in listing}) == 3
    first = await pop3_listener(ep, store, leave_on_server=True).run_once()
    again = await pop3_listener(ep, store).run_once()
    assert (first.ingested, again.already_known, again.ingested, again.deleted) == (3, 3, 0, 3)
    assert dovecot.count(mailbox_user, INBOX) == 0
    assert case_count(db) == 3


@pytest.mark.parametrize("implicit", [True, False], ids=["pop3s", "stls"])
async def test_tls_with_the_servers_own_ca(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, implicit: bool
) -> None:
    dovecot.append(mailbox_user, INBOX, make_mail(1))
    ep = dovecot_pop3(dovecot, mailbox_user, implicit=implicit)
    session = await Pop3Session.open(ep)
    assert session.tls == ("implicit" if implicit else "stls")
    await session.quit()
    assert (await pop3_listener(ep, store).run_once()).deleted == 1


@pytest.mark.parametrize("implicit", [True, False], ids=["pop3s", "stls"])
async def test_untrusted_certificate_is_refused(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, implicit: bool
) -> None:
    dovecot.append(mailbox_user, INBOX, make_mail(1))
    ep = dovecot_pop3(dovecot, mailbox_user, implicit=implicit, ca_file=None)
    with pytest.raises(TlsError, match="not trusted"):
        await pop3_listener(ep, store).run_once()
    assert dovecot.count(mailbox_user, INBOX) == 1


async def test_bad_password_is_reported_and_run_keeps_going(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore
) -> None:
    ep = dovecot_pop3(dovecot, mailbox_user, password="wrong-secret")
    listener = pop3_listener(ep, store)
    with pytest.raises(AuthenticationError, match="login refused") as info:
        await listener.run_once()
    assert "wrong-secret" not in str(info.value)
    task = asyncio.create_task(listener.run())
    await eventually(lambda: listener.state == "failing", what="listener failing")
    assert "login refused" in (listener.last_error or "")
    listener.stop.set()
    await asyncio.wait_for(task, 10)  # run() never raised
    assert listener.state == "stopped"


async def test_unreachable_server_backs_off(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore
) -> None:
    ep = dovecot_pop3(dovecot, mailbox_user, port=free_port())
    listener = pop3_listener(ep, store)
    with pytest.raises(ConnectionLostError, match=r"connecting to .*refused"):
        await listener.run_once()
    task = asyncio.create_task(listener.run())
    await eventually(lambda: listener.state == "backing off", what="backing off")
    listener.stop.set()
    await asyncio.wait_for(task, 10)


async def test_sync_max_changes_count_is_respected(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, db: Path
) -> None:
    dovecot.append_many(mailbox_user, INBOX, [make_mail(i) for i in range(5)])
    ep = dovecot_pop3(dovecot, mailbox_user)
    result = await pop3_listener(ep, store, sync_max_changes_count=2).run_once()
    assert (result.ingested, result.deferred, result.deleted) == (2, 3, 2)
    assert dovecot.count(mailbox_user, INBOX) == 3
    clock = FakeClock()  # never advanced: the rest must follow at once, 2 per poll
    listener = pop3_listener(ep, store, clock=clock, sync_max_changes_count=2)
    task = asyncio.create_task(listener.run())
    try:
        await eventually(lambda: listener.state == "idle", what="backlog drained")
    finally:
        listener.stop.set()
        await asyncio.wait_for(task, 10)
    assert listener.batches == 2
    assert dovecot.count(mailbox_user, INBOX) == 0
    assert case_count(db) == 5


async def test_failing_mail_is_retried_then_quarantined_and_deleted(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, db: Path
) -> None:
    dovecot.append_many(
        mailbox_user, INBOX, [make_mail(1), make_mail(2, subject="veneno"), make_mail(3)]
    )
    ep = dovecot_pop3(dovecot, mailbox_user)
    handler = RefuseSubject(pop3_engine(store), b"veneno")
    first = await pop3_listener(ep, store, handler=handler, max_attempts=2).run_once()
    assert (first.ingested, first.failed, first.quarantined, first.deleted) == (2, 1, 0, 2)
    assert dovecot.count(mailbox_user, INBOX) == 1  # kept for the next attempt
    second = await pop3_listener(ep, store, handler=handler, max_attempts=2).run_once()
    assert (second.failed, second.quarantined, second.deleted) == (0, 1, 1)
    assert dovecot.count(mailbox_user, INBOX) == 0
    assert db_rows(db, "SELECT subject, attempts FROM quarantine") == [("veneno", 2)]
    assert db_rows(db, "SELECT state FROM ledger WHERE quarantine_id IS NOT NULL") == [
        ("quarantined",)
    ]


async def test_protocol_log_masks_the_password_and_bodies(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, tmp_path: Path
) -> None:
    dovecot.append(mailbox_user, INBOX, make_mail(1))
    path = tmp_path / "pop3.log"
    ep = dovecot_pop3(dovecot, mailbox_user, protolog_factory=lambda: ProtocolLog(path))
    await pop3_listener(ep, store).run_once()
    text = path.read_text()
    assert "PASS ***" in text and "STLS" in text and "DELE 1" in text and "QUIT" in text
    assert DovecotSandbox.PASSWORD not in text
    assert "bytes of literal data" in text and "Hola, necesito ayuda" not in text


async def test_imap_and_pop3_listeners_side_by_side(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, db: Path
) -> None:
    imap_user, pop_user = mailbox_user, mailbox_user + "-pop"
    dovecot.create_folder(imap_user, "IMAP/Done")
    imap_mails = [make_mail(i, sender="imap@example.com", subject=f"IMAP {i}") for i in range(2)]
    dovecot.append_many(imap_user, "IMAP/New", imap_mails)
    dovecot.append_many(pop_user, INBOX, [make_mail(i) for i in range(3)])
    clock, stop = FakeClock(), asyncio.Event()
    imap = build_listener(listener_config(dovecot, imap_user, id="Imap"), store, clock, stop)
    pop = pop3_listener(dovecot_pop3(dovecot, pop_user), store, clock=clock, stop=stop)
    tasks = [asyncio.create_task(imap.run()), asyncio.create_task(pop.run())]
    try:
        await eventually(lambda: dovecot.count(imap_user, "IMAP/Done") == 2, what="IMAP")
        await eventually(lambda: pop.state == "idle", what="POP3 poll done")
        dovecot.append(pop_user, INBOX, make_mail(9))
        clock.advance(POLL_SECONDS)
        await eventually(lambda: pop.batches == 2 and pop.state == "idle", what="2nd poll")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
    assert dovecot.count(pop_user, INBOX) == 0
    assert (case_count(db, "Imap"), case_count(db, "Pop")) == (2, 4)
