"""`reset` cannot jam intake (issue 14, point 8), against the real Dovecot.

The reset of the output folder fetched every matching body at once, skipped mail by
Message-ID alone, and a mail that failed made it raise before every normal batch.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from devkit.dovecot import DovecotSandbox
from engage_listener.cases.hooks import HookContext, RoutingDecision, SqlExecutor
from engage_listener.intake.control import request_date
from engage_listener.service.build import build_listener
from engage_listener.sources.imap.batch import CHUNK_COUNT
from engage_listener.sources.imap.listener import CONTROL_POLL
from engage_listener.sources.imap.session import ImapSession
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.fakes import FakeClock
from tests.support.helpers import db_rows, eventually, listener_config, make_mail

NEW, DONE, ERROR = "IMAP/New", "IMAP/Done", "IMAP/Error"
UTC = dt.UTC


class PoisonHook:
    """Routes every mail but those whose subject says 'veneno', which always fail."""

    name = "poison"

    async def run(self, ctx: HookContext, sql: SqlExecutor) -> RoutingDecision:
        if "veneno" in ctx.message.subject:
            raise RuntimeError("the procedure always fails on this mail")
        return RoutingDecision()


async def ask_for_reset(store: SqliteStore, listener: str, clock: FakeClock) -> None:
    two_days_ago = (clock.wall() - dt.timedelta(days=2)).date()
    assert "re-examined" in await request_date(store, listener, two_days_ago, "UTC", clock.wall())


def subjects(db: Path) -> list[str]:
    return sorted(s for (s,) in db_rows(db, "SELECT subject FROM cases"))


async def test_two_different_mails_sharing_a_message_id_both_become_cases_after_a_reset(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, store: SqliteStore, db: Path
) -> None:
    shared = "<shared.id@example.com>"
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append(mailbox_user, NEW, make_mail(1, subject="Primera", message_id=shared))
    cfg = listener_config(dovecot, mailbox_user)
    clock = FakeClock()
    listener = build_listener(cfg, store, clock, asyncio.Event())
    await listener.run_once()
    # Another mail with the same Message-ID reached the output folder without a case.
    dovecot.append(mailbox_user, DONE, make_mail(2, subject="Segunda", message_id=shared))
    await ask_for_reset(store, cfg.id, clock)
    await listener.run_once()
    await listener.run_once()
    assert subjects(db) == ["Primera", "Segunda"]  # the first one not a second time
    assert db_rows(db, "SELECT reset_from FROM listener_control") == [(None,)]
    assert dovecot.count(mailbox_user, DONE) == 2  # both stay where they are


async def test_a_mail_that_always_fails_in_a_reset_is_quarantined_and_intake_goes_on(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, store: SqliteStore, db: Path
) -> None:
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append(mailbox_user, DONE, make_mail(1, subject="veneno"))
    dovecot.append(mailbox_user, NEW, make_mail(2, subject="Normal 1"))
    cfg = listener_config(dovecot, mailbox_user, max_attempts=2)
    clock = FakeClock()
    listener = build_listener(cfg, store, clock, asyncio.Event(), PoisonHook())
    await ask_for_reset(store, cfg.id, clock)

    first = await listener.run_once()  # the reset fails once, the batch still runs
    assert first.ingested == 1 and subjects(db) == ["Normal 1"]
    assert db_rows(db, "SELECT reset_from IS NOT NULL FROM listener_control") == [(1,)]

    dovecot.append(mailbox_user, NEW, make_mail(3, subject="Normal 2"))
    second = await listener.run_once()  # second attempt: quarantined, reset finished
    assert second.ingested == 1 and subjects(db) == ["Normal 1", "Normal 2"]
    ((reason, attempts),) = db_rows(db, "SELECT reason, attempts FROM quarantine")
    assert "always fails" in reason and attempts == 2
    assert dovecot.count(mailbox_user, ERROR) == 1
    assert dovecot.count(mailbox_user, DONE) == 2  # the two normal mails
    assert db_rows(db, "SELECT reset_from FROM listener_control") == [(None,)]

    dovecot.append(mailbox_user, NEW, make_mail(4, subject="Normal 3"))
    third = await listener.run_once()
    assert third.ingested == 1 and len(subjects(db)) == 3
    assert db_rows(db, "SELECT count(*) FROM quarantine") == [(1,)]


async def test_a_failing_reset_mail_is_retried_at_the_next_control_check_by_a_running_listener(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, store: SqliteStore, db: Path
) -> None:
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append(mailbox_user, DONE, make_mail(1, subject="veneno"))
    dovecot.append(mailbox_user, NEW, make_mail(2, subject="Normal"))
    cfg = listener_config(dovecot, mailbox_user, max_attempts=2)
    clock, stop = FakeClock(), asyncio.Event()
    listener = build_listener(cfg, store, clock, stop, PoisonHook())
    await ask_for_reset(store, cfg.id, clock)
    task = asyncio.create_task(listener.run())
    try:
        await eventually(lambda: subjects(db) == ["Normal"], what="normal intake")
        await eventually(lambda: listener.state == "idle" and clock.sleepers > 0, what="idle")
        assert db_rows(db, "SELECT count(*) FROM quarantine") == [(0,)]
        clock.advance(CONTROL_POLL + 1)
        await eventually(
            lambda: db_rows(db, "SELECT reset_from FROM listener_control") == [(None,)],
            what="reset finished",
        )
        assert dovecot.count(mailbox_user, ERROR) == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_a_reset_over_many_mails_fetches_them_in_chunks(
    dovecot: DovecotSandbox,
    mailbox_user: str,
    tmp_path: Path,
    store: SqliteStore,
    db: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    count = 25
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.append_many(mailbox_user, DONE, [make_mail(i) for i in range(count)])
    fetched: list[int] = []
    real_fetch = ImapSession.fetch_bodies

    async def counting_fetch(
        self: ImapSession, uids: Sequence[int], *args: Any, **kwargs: Any
    ) -> list[tuple[int, bytes]]:
        fetched.append(len(uids))
        return await real_fetch(self, uids, *args, **kwargs)

    monkeypatch.setattr(ImapSession, "fetch_bodies", counting_fetch)
    cfg = listener_config(dovecot, mailbox_user)
    clock = FakeClock()
    listener = build_listener(cfg, store, clock, asyncio.Event())
    await ask_for_reset(store, cfg.id, clock)
    await listener.run_once()
    assert len(subjects(db)) == count
    assert sum(fetched) == count and len(fetched) > 1, fetched
    assert max(fetched) <= min(count - 1, CHUNK_COUNT), fetched


async def test_a_reset_never_fetches_a_mail_over_max_message_size_whole(
    dovecot: DovecotSandbox,
    mailbox_user: str,
    tmp_path: Path,
    store: SqliteStore,
    db: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.append(mailbox_user, DONE, make_mail(1, subject="enorme", body="x" * 20_000))
    dovecot.append(mailbox_user, DONE, make_mail(2, subject="normal"))
    fetched: list[int] = []
    real_fetch = ImapSession.fetch_bodies

    async def counting_fetch(
        self: ImapSession, uids: Sequence[int], *args: Any, **kwargs: Any
    ) -> list[tuple[int, bytes]]:
        fetched.extend(uids)
        return await real_fetch(self, uids, *args, **kwargs)

    monkeypatch.setattr(ImapSession, "fetch_bodies", counting_fetch)
    cfg = listener_config(dovecot, mailbox_user, max_message_size=10_000)
    clock = FakeClock()
    listener = build_listener(cfg, store, clock, asyncio.Event())
    await ask_for_reset(store, cfg.id, clock)
    await listener.run_once()
    assert subjects(db) == ["normal"] and fetched == [2]
    ((reason,),) = db_rows(db, "SELECT reason FROM quarantine")
    assert reason.startswith("oversize")
    assert dovecot.count(mailbox_user, ERROR) == 1
