"""Issue 18.10 against the real Dovecot: POP3 ReadFromDate by the Date header, and
`reset --date` on a LeaveOnServer listener taking what the ledger lacks from that day."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from devkit.dovecot import DovecotSandbox
from engage_listener.intake.control import read_control, request_date, resume
from engage_listener.sources.pop3.dates import DateFilter, header_date
from engage_listener.sources.pop3.listener import Pop3Listener
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.helpers import db_rows
from tests.support.pop3 import dovecot_pop3, pop3_listener

INBOX = "INBOX"
FEB = dt.datetime(2024, 2, 1, tzinfo=dt.UTC)


def dated(n: int, date: str | None) -> bytes:
    return (
        f"From: c{n}@cliente.example\r\nTo: soporte@example.org\r\nSubject: Fecha {n}\r\n"
        + (f"Date: {date}\r\n" if date else "")
        + f"Message-ID: <d{n}@cliente.example>\r\n\r\ntexto {n}\r\n"
    ).encode()


def put_dated(dovecot: DovecotSandbox, user: str, *dates: str | None) -> None:
    """Mails 1, 2... (subject "Fecha N") with these Date headers (None: no Date) into INBOX."""
    dovecot.append_many(user, INBOX, [dated(n, date) for n, date in enumerate(dates, 1)])


def listener(
    dovecot: DovecotSandbox, user: str, store: SqliteStore, *, leave: bool = False
) -> Pop3Listener:
    ep = dovecot_pop3(dovecot, user)
    return pop3_listener(ep, store, leave_on_server=leave, read_from=FEB)


def subjects(db: Path) -> list[str]:
    return sorted(str(r[0]) for r in db_rows(db, "SELECT subject FROM cases"))


async def test_mail_dated_before_read_from_date_is_left_untaken(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, db: Path
) -> None:
    put_dated(
        dovecot,
        mailbox_user,
        "Fri, 05 Jan 2024 10:00:00 +0000",
        "Sat, 10 Feb 2024 10:00:00 +0000",
        None,  # no Date: nothing says it is old, so it is taken
        "Wed, 31 Jan 2024 21:30:00 -0300",  # 00:30 UTC on 1 February
    )
    pop = listener(dovecot, mailbox_user, store)
    first = await pop.run_once()
    assert (first.found, first.ingested, first.too_old, first.deleted) == (4, 3, 1, 3)
    assert subjects(db) == ["Fecha 2", "Fecha 3", "Fecha 4"]
    assert dovecot.count(mailbox_user, INBOX) == 1  # the old one stays on the server
    again = await pop.run_once()
    assert (again.found, again.ingested, again.too_old, again.failed) == (1, 0, 1, 0)
    assert pop.backlog == 0  # mail left by date is no backlog


async def test_reset_on_leave_on_server_takes_what_the_ledger_lacks_from_that_day(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, db: Path
) -> None:
    put_dated(
        dovecot,
        mailbox_user,
        "Fri, 05 Jan 2024 10:00:00 +0000",
        "Sat, 20 Jan 2024 10:00:00 +0000",
        "Sat, 10 Feb 2024 10:00:00 +0000",
    )
    pop = listener(dovecot, mailbox_user, store, leave=True)
    assert (await pop.run_once()).ingested == 1
    now = dt.datetime.now(dt.UTC)
    await request_date(store, "Pop", dt.date(2024, 1, 10), "UTC", now)
    after_reset = await pop.run_once()
    assert (after_reset.ingested, after_reset.already_known, after_reset.too_old) == (1, 1, 1)
    assert subjects(db) == ["Fecha 2", "Fecha 3"]
    assert (await read_control(store, "Pop", now)).reset_from is None  # done: cleared
    assert (await pop.run_once()).ingested == 0  # the lowered date holds, nothing twice
    await request_date(store, "Pop", dt.date(2024, 1, 1), "UTC", now)
    assert (await pop.run_once()).ingested == 1
    assert subjects(db) == ["Fecha 1", "Fecha 2", "Fecha 3"]
    assert dovecot.count(mailbox_user, INBOX) == 3
    assert db_rows(db, "SELECT count(*), count(DISTINCT item) FROM ledger") == [(3, 3)]


async def test_a_pause_holds_pop3_intake_until_resume(
    dovecot: DovecotSandbox, mailbox_user: str, store: SqliteStore, db: Path
) -> None:
    dovecot.append(mailbox_user, INBOX, dated(1, "Sat, 10 Feb 2024 10:00:00 +0000"))
    pop = listener(dovecot, mailbox_user, store)
    now = dt.datetime.now(dt.UTC)
    await request_date(store, "Pop", now.date() + dt.timedelta(days=2), "UTC", now)
    held = await pop.run_once()
    assert (held.found, pop.state, pop.paused_until is not None) == (0, "paused", True)
    assert dovecot.count(mailbox_user, INBOX) == 1
    await resume(store, "Pop")
    assert (await pop.run_once()).ingested == 1


def test_the_date_filter_reads_the_header_and_remembers_old_mail() -> None:
    header = b"Subject: x\r\nDate: Fri, 05 Jan 2024 10:00:00 +0100\r\n"
    assert header_date(header) == dt.datetime(2024, 1, 5, 9, 0, tzinfo=dt.UTC)
    assert header_date(b"Subject: x\r\nDate: not a date\r\n") is None
    dates = DateFilter(FEB)
    assert dates.judge("u1", 10, header) and dates.known_old("u1", 10)
    assert not dates.known_old("u1", 11)  # another mail under the UIDL is judged again
    dates.lower_to(dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    assert not dates.known_old("u1", 10) and not dates.judge("u1", 10, header)
    dates.lower_to(dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    assert dates.since == FEB  # a reset never raises ReadFromDate
    assert DateFilter(None).since is None and not DateFilter(None).judge("u", 1, header)
