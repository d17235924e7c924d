"""POP3 against hostile loopback servers (and the real Dovecot): no credentials without
STLS, every read bounded, MaxMessageSize, and a reused UIDL never deleted unseen."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from devkit.dovecot import DovecotSandbox
from engage_listener.errors import TlsError, TransientError
from engage_listener.sources.pop3.session import Pop3Endpoint
from engage_listener.sources.pop3.wire import ReadLimitExceeded, ReadLimits
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.fixtures import StartHostilePop3
from tests.support.helpers import db_rows, eventually, make_mail
from tests.support.pop3 import dovecot_pop3, pop3_listener
from tests.support.servers.hostile_pop3 import HostilePop3, Mail, PeakRss

PASSWORD = "pop-Secret-4711"
TOKEN = "ya29.pop3-access-token-0815"
NO_STLS = "server offered no STLS; refusing to send credentials in clear"
MB = 1024 * 1024


class FixedToken:
    """A token provider that hands out one access token."""

    async def token(self, *, force_refresh: bool = False) -> str:
        return TOKEN


def hostile_endpoint(server: HostilePop3, **changes: Any) -> Pop3Endpoint:
    ep = Pop3Endpoint(server.host, server.port, False, "cliente", PASSWORD, timeout=5.0)
    return dataclasses.replace(ep, **changes)


def subjects(db: Path, listener: str = "Pop") -> list[str]:
    rows = db_rows(db, "SELECT subject FROM cases WHERE listener = ? ORDER BY id", (listener,))
    return [str(r[0]) for r in rows]


# ----- 1. no silent TLS downgrade ---------------------------------------------------------


async def test_no_stls_offered_no_password_sent_and_the_listener_fails_permanently(
    hostile_pop3: StartHostilePop3, store: SqliteStore, db: Path
) -> None:
    server = hostile_pop3([Mail("u1", make_mail(1))])
    listener = pop3_listener(hostile_endpoint(server), store)
    with pytest.raises(TlsError, match=NO_STLS):
        await listener.run_once()
    task = asyncio.create_task(listener.run())
    await eventually(lambda: listener.state == "failing", what="listener failing")
    listener.stop.set()
    await asyncio.wait_for(task, 10)
    received = server.got()
    assert NO_STLS in (listener.last_error or "")
    assert b"CAPA" in received  # it did ask
    assert b"USER" not in received and b"PASS" not in received
    assert PASSWORD.encode() not in received
    assert server.logins == 0 and subjects(db) == []


async def test_no_stls_offered_no_xoauth2_token_sent(
    hostile_pop3: StartHostilePop3, store: SqliteStore
) -> None:
    server = hostile_pop3([Mail("u1", make_mail(1))])
    ep = hostile_endpoint(server, password="", token_provider=FixedToken())
    with pytest.raises(TlsError, match=NO_STLS):
        await pop3_listener(ep, store).run_once()
    received = server.got()
    assert b"AUTH" not in received and TOKEN.encode() not in received
    assert base64.b64encode(f"auth=Bearer {TOKEN}".encode())[:20] not in received


async def test_a_refused_stls_is_a_permanent_error_before_any_login(
    hostile_pop3: StartHostilePop3, store: SqliteStore
) -> None:
    server = hostile_pop3([Mail("u1", make_mail(1))], offer_stls=True)
    ep = hostile_endpoint(server, allow_plaintext_login=True)  # even then: no quiet fallback
    with pytest.raises(TlsError, match=r"STLS .* failed: -ERR TLS not available"):
        await pop3_listener(ep, store).run_once()
    received = server.got()
    assert b"STLS" in received and b"PASS" not in received and PASSWORD.encode() not in received


async def test_allow_plaintext_login_logs_in_and_warns_every_connection(
    hostile_pop3: StartHostilePop3, store: SqliteStore, db: Path
) -> None:
    server = hostile_pop3([Mail("u1", make_mail(1))])
    ep = hostile_endpoint(server, allow_plaintext_login=True)
    with capture_logs() as logs:
        first = await pop3_listener(ep, store).run_once()
        second = await pop3_listener(ep, store).run_once()
    received = server.got()
    assert (first.ingested, first.deleted, second.found) == (1, 1, 0)
    assert b"PASS " + PASSWORD.encode() in received and server.logins == 2
    warnings = [e for e in logs if e["event"] == "plaintext_login"]
    assert len(warnings) == 2 and all(e["log_level"] == "warning" for e in warnings)
    assert subjects(db) == ["Consulta 1"]


# ----- 2. every read bounded -------------------------------------------------------------


def shrunk(server: HostilePop3, **limits: Any) -> Pop3Endpoint:
    return hostile_endpoint(
        server,
        allow_plaintext_login=True,
        max_message_size=4 * MB,
        limits=ReadLimits(**{"size_allowance": MB, "allowance": 1.5, **limits}),
    )


@pytest.mark.parametrize(
    ("mode", "limits", "error"),
    [
        ("endless", {}, "an answer longer than"),
        ("trickle", {}, "deadline"),
        ("endless-line", {"line_max": 256 * 1024}, "a line longer than 262144 bytes"),
    ],
)
async def test_a_hostile_retr_aborts_the_session_within_its_deadline(
    hostile_pop3: StartHostilePop3,
    store: SqliteStore,
    db: Path,
    mode: str,
    limits: dict[str, Any],
    error: str,
) -> None:
    server = hostile_pop3([Mail("u1", make_mail(1))], retr=mode, trickle_every=0.2)
    listener = pop3_listener(shrunk(server, **limits), store)
    started = time.monotonic()
    with PeakRss() as rss, pytest.raises(ReadLimitExceeded, match=error) as info:
        await listener.run_once()
    elapsed = time.monotonic() - started
    assert isinstance(info.value, TransientError)  # back-off and reconnect, not a verdict
    assert elapsed < 1.5 + 2.0, f"{mode}: took {elapsed:.1f} s"
    assert rss.growth < 64 * MB, f"{mode}: RSS grew {rss.growth / MB:.0f} MB"
    assert subjects(db) == []


async def test_a_trickling_server_backs_off_while_another_listener_takes_its_mail(
    hostile_pop3: StartHostilePop3, store: SqliteStore, db: Path
) -> None:
    slow = hostile_pop3([Mail("u1", make_mail(1))], retr="trickle", trickle_every=0.2)
    sane = hostile_pop3([Mail("v1", make_mail(2, subject="sano"))])
    bad = pop3_listener(shrunk(slow), store, lid="Slow")
    good = pop3_listener(hostile_endpoint(sane, allow_plaintext_login=True), store, lid="Sane")
    tasks = [asyncio.create_task(bad.run()), asyncio.create_task(good.run())]
    try:
        await eventually(lambda: subjects(db, "Sane") == ["sano"], what="sane listener")
        await eventually(lambda: bad.state == "backing off", timeout=5, what="slow backs off")
    finally:
        bad.stop.set()
        good.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert "deadline" in (bad.last_error or "")
    assert subjects(db, "Slow") == []


# ----- 3. a reused UIDL is fetched, never deleted unseen ----------------------------------


@pytest.mark.parametrize("same_size", [False, True], ids=["other-size", "same-size"])
async def test_a_reused_uidl_is_fetched_and_ingested_not_deleted_unseen(
    hostile_pop3: StartHostilePop3, store: SqliteStore, db: Path, same_size: bool
) -> None:
    first = make_mail(1, subject="primera")
    second = make_mail(2, subject="segunda", body="Otra consulta, otro texto.")
    if same_size:  # only the hash can tell them apart
        second = second[: len(first)] if len(second) > len(first) else second
        second += b"x" * (len(first) - len(second))
        assert len(second) == len(first) and second != first
    server = hostile_pop3([Mail("u1", first)])
    ep = hostile_endpoint(server, allow_plaintext_login=True)
    assert (await pop3_listener(ep, store).run_once()).ingested == 1
    assert server.mails == []
    server.mails = [Mail("u1", second)]  # the server hands the old UIDL to a new mail
    with capture_logs() as logs:
        again = await pop3_listener(ep, store).run_once()
    assert (again.ingested, again.already_known, again.deleted) == (1, 0, 1)
    assert server.mails == []
    assert subjects(db) == ["primera", "segunda"]
    assert [e["uid"] for e in logs if e["event"] == "uidl_reused"] == ["u1"]
    assert db_rows(db, "SELECT item, epoch, state FROM ledger ORDER BY epoch") == [
        ("u1", "0", "deleted"),
        ("u1", "1", "deleted"),
    ]


async def test_leave_on_server_takes_a_mail_under_a_reused_uidl_once(
    hostile_pop3: StartHostilePop3, store: SqliteStore, db: Path
) -> None:
    server = hostile_pop3([Mail("u1", make_mail(1, subject="primera"))])
    ep = hostile_endpoint(server, allow_plaintext_login=True)
    listener = pop3_listener(ep, store, leave_on_server=True)
    assert (await listener.run_once()).ingested == 1
    server.mails = [Mail("u1", make_mail(2, subject="segunda, más larga"))]
    assert (await listener.run_once()).ingested == 1
    again = await pop3_listener(ep, store, leave_on_server=True).run_once()  # cold cache
    assert (again.ingested, again.already_known) == (0, 1)
    assert subjects(db) == ["primera", "segunda, más larga"]


# ----- MaxMessageSize with the real Dovecot -------------------------------------------------


async def test_an_oversize_mail_is_quarantined_from_its_header_and_left_on_the_server(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, db: Path
) -> None:
    big = make_mail(2, subject="enorme", body="relleno " * 40_000)  # about 320 kB
    dovecot.append_many(mailbox_user, "INBOX", [make_mail(1), big, make_mail(3)])
    ep = dovecot_pop3(dovecot, mailbox_user, max_message_size=100_000)
    first = await pop3_listener(ep, store).run_once()
    assert (first.ingested, first.quarantined, first.deleted) == (2, 1, 2)
    assert dovecot.count(mailbox_user, "INBOX") == 1  # the big one stays
    [(reason, subject, raw)] = db_rows(db, "SELECT reason, subject, raw FROM quarantine")
    assert reason.startswith("oversize: ") and reason.endswith("bytes > MaxMessageSize 100000")
    size = int(reason.split()[1])
    assert size > 300_000
    assert subject == "enorme" and b"Subject: enorme" in raw and b"relleno" not in raw
    for _ in range(2):  # later polls: not quarantined again, never deleted
        again = await pop3_listener(ep, store).run_once()
        assert (again.quarantined, again.already_known, again.deleted) == (0, 1, 0)
    assert dovecot.count(mailbox_user, "INBOX") == 1
    assert db_rows(db, "SELECT count(*) FROM quarantine") == [(1,)]
    assert sorted(subjects(db)) == ["Consulta 1", "Consulta 3"]
