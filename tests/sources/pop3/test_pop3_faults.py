"""POP3 when things go wrong: a server that never greets, a message expunged between
UIDL and RETR, a failing POP3 listener beside an IMAP one that keeps working."""

from __future__ import annotations

import asyncio
import imaplib
import socket
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from devkit.dovecot import DovecotSandbox, free_port
from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.cases.ingested import Ingested
from engage_listener.config.model import Secret
from engage_listener.errors import ConnectionLostError
from engage_listener.intake.retry import BACKOFF_CAP, PERMANENT_RETRY
from engage_listener.service.build import build_listener, build_pop3_listener
from engage_listener.sources.pop3.session import Pop3Endpoint
from engage_listener.store.interface import MailKey
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.fakes import FakeClock
from tests.support.helpers import db_rows, eventually, listener_config, make_mail
from tests.support.pop3 import dovecot_pop3, pop3_listener

INBOX = "INBOX"
NEW, DONE = "IMAP/New", "IMAP/Done"


# ----- a server that accepts the connection and never greets ----------------------------


@pytest.fixture
def mute_server() -> Iterator[socket.socket]:
    """A listening socket nobody accepts on: the kernel completes the TCP handshake, and
    the client then waits for a greeting that never comes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server


async def test_a_server_that_never_greets_times_out_without_blocking_the_loop(
    mute_server: socket.socket, store: SqliteStore
) -> None:
    port = mute_server.getsockname()[1]
    timeout = 0.6
    ep = Pop3Endpoint("127.0.0.1", port, False, "u", "p", timeout=timeout)
    clock = FakeClock()
    listener = pop3_listener(ep, store, clock=clock)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        with capture_logs() as logs:
            started = time.monotonic()
            task = asyncio.create_task(listener.run())
            await eventually(lambda: listener.state == "backing off", what="backing off")
            elapsed = time.monotonic() - started
            listener.stop.set()
            await asyncio.wait_for(task, 5)
    finally:
        ticking.cancel()
    assert elapsed >= timeout * 0.9, "gave up before the timeout"
    assert elapsed < timeout + 3, "the socket timeout was not applied to the greeting"
    # poplib blocks in its worker thread: the event loop went on ticking all along.
    assert ticks >= elapsed / 0.01 / 3, f"{ticks} ticks in {elapsed:.2f} s"
    assert listener.last_error == f"connecting to 127.0.0.1:{port}: timed out"
    errors = [e for e in logs if e["event"] == "listener_error"]
    assert len(errors) == 1
    assert errors[0]["kind"] == "transient" and errors[0]["error_type"] == "ConnectionLostError"
    assert "exc_info" not in errors[0]  # reported plainly, without a traceback
    # The connection the listener gave up on was closed, not leaked.
    mute_server.settimeout(2)
    conn, _ = mute_server.accept()
    with conn:
        conn.settimeout(2)
        assert conn.recv(100) == b""
    # The same error for a single pass (`run --once`).
    with pytest.raises(ConnectionLostError, match="timed out"):
        await pop3_listener(ep, store, clock=clock).run_once()


# ----- RETR answered -ERR: the message went away between UIDL and RETR --------------------


def expunge(dovecot: DovecotSandbox, user: str, subject: str) -> None:
    """Another client (IMAP here) removes one message while our POP3 session is open."""
    conn = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
    try:
        conn.login(user, DovecotSandbox.PASSWORD)
        conn.select(INBOX)
        typ, data = conn.search(None, "SUBJECT", f'"{subject}"')
        numbers = data[0].split()
        assert typ == "OK" and len(numbers) == 1, (typ, data)
        conn.store(numbers[0].decode(), "+FLAGS", r"(\Deleted)")
        assert conn.expunge()[0] == "OK"
    finally:
        conn.logout()


class ExpungeWhenIngested:
    """Ingests normally; once the mail with subject `trigger` is committed, another
    client expunges the one with subject `victim` (before our RETR or DELE of it)."""

    def __init__(
        self, store: SqliteStore, dovecot: DovecotSandbox, user: str, trigger: str, victim: str
    ) -> None:
        self.inner = CaseEngine(store, EngineSettings("Pop", extract_attachments=False))
        self.dovecot, self.user, self.trigger, self.victim = dovecot, user, trigger, victim

    async def ingest(self, key: MailKey, raw: bytes, prepared: object = None) -> Ingested:
        done = await self.inner.ingest(key, raw)
        if f"Subject: {self.trigger}\r\n".encode() in raw:
            await asyncio.to_thread(expunge, self.dovecot, self.user, self.victim)
        return done

    async def quarantine(self, key: MailKey, raw: bytes, reason: str, attempts: int) -> int:
        return await self.inner.quarantine(key, raw, reason, attempts)


async def test_retr_refused_for_a_message_expunged_meanwhile(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, db: Path
) -> None:
    user = mailbox_user
    dovecot.append_many(user, INBOX, [make_mail(i) for i in range(4)])
    ep = dovecot_pop3(dovecot, user)
    handler = ExpungeWhenIngested(store, dovecot, user, "Consulta 0", "Consulta 1")
    with capture_logs() as logs:
        result = await pop3_listener(ep, store, handler=handler).run_once()
    assert (result.found, result.ingested, result.failed, result.deleted) == (4, 3, 1, 3)
    failed = [e for e in logs if e["event"] == "message_failed"]
    assert len(failed) == 1
    assert failed[0]["number"] == 2 and failed[0]["log_level"] == "error"
    assert failed[0]["error"] == (
        f"RETR 2 on {dovecot.host}:{dovecot.pop3_port}: the server answered "
        "-ERR Message 2 expunged."
    )
    assert "exc_info" not in failed[0]
    assert not [e for e in logs if e["event"] in ("listener_error", "quit_failed")]
    # Nothing lost: every mail still on the server became a case, and left the server.
    subjects = sorted(r[0] for r in db_rows(db, "SELECT subject FROM cases"))
    assert subjects == ["Consulta 0", "Consulta 2", "Consulta 3"]
    assert dovecot.count(user, INBOX) == 0
    assert db_rows(db, "SELECT count(*), min(state), max(state) FROM ledger") == [
        (3, "deleted", "deleted")
    ]
    again = await pop3_listener(ep, store).run_once()
    assert (again.found, again.failed) == (0, 0)


async def test_a_message_expunged_between_its_commit_and_its_dele(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, db: Path
) -> None:
    user = mailbox_user
    dovecot.append_many(user, INBOX, [make_mail(i) for i in range(4)])
    ep = dovecot_pop3(dovecot, user)
    # Dovecot accepts the DELE of a mail another client expunged: it is gone either way.
    handler = ExpungeWhenIngested(store, dovecot, user, "Consulta 1", "Consulta 1")
    with capture_logs() as logs:
        result = await pop3_listener(ep, store, handler=handler).run_once()
    assert (result.found, result.ingested, result.failed, result.deleted) == (4, 4, 0, 4)
    assert not [e for e in logs if e["log_level"] in ("warning", "error")]
    assert sorted(r[0] for r in db_rows(db, "SELECT subject FROM cases")) == [
        f"Consulta {i}" for i in range(4)
    ]
    assert dovecot.count(user, INBOX) == 0
    again = await pop3_listener(ep, store).run_once()
    assert (again.found, again.ingested) == (0, 0)
    assert db_rows(db, "SELECT count(*) FROM cases") == [(4,)]


# ----- a failing POP3 listener beside a working IMAP one -------------------------------------


@pytest.mark.parametrize("fault", ["wrong password", "closed port"])
async def test_a_failing_pop3_listener_does_not_stop_the_imap_one(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, db: Path, fault: str
) -> None:
    imap_user, pop_user = mailbox_user, mailbox_user + "-pop"
    dovecot.create_folder(imap_user, DONE)
    dovecot.append_many(imap_user, NEW, [make_mail(i, subject=f"IMAP {i}") for i in range(2)])
    dovecot.append_many(pop_user, INBOX, [make_mail(i) for i in range(2)])
    clock, stop = FakeClock(), asyncio.Event()
    imap = build_listener(
        listener_config(dovecot, imap_user, id="Imap", sync_max_changes_count=1),
        store,
        clock,
        stop,
    )
    broken: dict[str, Any] = (
        {"password": Secret("not-the-password"), "port": dovecot.pop3_port}
        if fault == "wrong password"
        else {"port": free_port()}
    )
    pop_cfg = listener_config(dovecot, pop_user, id="Pop", protocol="pop3", **broken)
    pop = build_pop3_listener(pop_cfg, store, clock, stop)
    expected_state = "failing" if fault == "wrong password" else "backing off"
    expected_error = "login refused" if fault == "wrong password" else "refused"

    def pop_errors() -> list[MutableMapping[str, Any]]:
        return [e for e in logs if e["event"] == "listener_error" and e["listener"] == "Pop"]

    def imap_done(count: int) -> Callable[[], bool]:
        return lambda: dovecot.count(imap_user, DONE) == count

    def pop_failed(count: int) -> Callable[[], bool]:
        return lambda: len(pop_errors()) == count

    with capture_logs() as logs:
        tasks = [asyncio.create_task(imap.run()), asyncio.create_task(pop.run())]
        try:
            await eventually(imap_done(2), what="IMAP backlog")
            await eventually(lambda: pop.state == expected_state, what=f"POP3 {expected_state}")
            assert expected_error in (pop.last_error or "")
            # While POP3 keeps failing (and retrying), IMAP keeps taking new mail.
            for n in range(2):
                dovecot.append(imap_user, NEW, make_mail(10 + n, subject=f"IMAP late {n}"))
                await eventually(imap_done(3 + n), what="IMAP new mail")
                assert len(pop_errors()) == n + 1
                clock.advance(max(BACKOFF_CAP, PERMANENT_RETRY))  # POP3 retries, fails again
                await eventually(pop_failed(n + 2), what="POP3 retried")
                assert pop.state == expected_state and pop.batches == 0
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 15)
    assert all(
        e["kind"] == ("permanent" if fault == "wrong password" else "transient")
        and "exc_info" not in e
        for e in pop_errors()
    )
    assert not [e for e in logs if e["event"] == "listener_error" and e["listener"] == "Imap"]
    assert (imap.state, pop.state) == ("stopped", "stopped")
    assert dovecot.count(pop_user, INBOX) == 2  # untouched
    assert db_rows(db, "SELECT listener, count(*) FROM cases GROUP BY listener") == [("Imap", 4)]
