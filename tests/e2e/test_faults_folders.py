"""Fault injection: the input folder recreated under the daemon (a new UIDVALIDITY), and
another client moving and deleting mail from it during a batch."""

from __future__ import annotations

import asyncio
import imaplib
import random
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from devkit.dovecot import DovecotSandbox
from tests.support.fakes import FakeClock
from tests.support.faults import (
    DONE,
    NEW,
    OTHER,
    assert_exactly_once,
    assert_no_unexpected_errors,
    count_rows,
    idle_with,
    ids_in,
    mails,
    message_id,
    pump,
    running,
    seed,
)
from tests.support.helpers import db_rows, eventually, listener_config


# ----- 5. UIDVALIDITY changing under the daemon ------------------------------------
async def test_input_folder_recreated_while_idle(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    user, db, clock = mailbox_user, tmp_path / "store.sqlite3", FakeClock()
    first, second = mails(3, "uv1"), mails(5, "uv2")
    seed(dovecot, user, first)
    cfg = listener_config(dovecot, user, sync_max_changes_count=5)
    with capture_logs() as logs:
        async with running(cfg, db, clock) as (_, listener):
            await eventually(idle_with(listener, db, 3), what="backlog done, idle")
            dovecot.delete_folder(user, NEW)
            await eventually(lambda: listener.state != "idle", what="folder loss noticed")
            dovecot.append_many(user, NEW, second)  # a new folder: a new UIDVALIDITY
            await pump(clock, idle_with(listener, db, 8), what="new mail processed")
    assert_no_unexpected_errors(logs)
    assert db_rows(db, "SELECT count(DISTINCT epoch) FROM ledger") == [(2,)]
    assert_exactly_once(dovecot, user, db, first + second)


def recreate_with(dovecot: DovecotSandbox, user: str, folder: str, raws: list[bytes]) -> None:
    """Delete `folder` and create it again with `raws`, as fast as one client can."""
    conn = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
    try:
        conn.login(user, DovecotSandbox.PASSWORD)
        assert conn.delete(f'"{folder}"')[0] == "OK"
        assert conn.create(f'"{folder}"')[0] == "OK"
        for raw in raws:
            assert conn.append(f'"{folder}"', "", None, raw)[0] == "OK"
    finally:
        conn.logout()


async def _swap_input_folder_at_once(dovecot: DovecotSandbox, user: str, db: Path) -> None:
    first, second = mails(1, f"{user}.a"), mails(2, f"{user}.b")
    seed(dovecot, user, first)
    cfg = listener_config(dovecot, user, sync_max_changes_count=5)
    clock = FakeClock()
    async with running(cfg, db, clock) as (_, listener):
        await eventually(idle_with(listener, db, 1), what="backlog done, idle")
        recreate_with(dovecot, user, NEW, second)  # before the session notices
        await pump(clock, idle_with(listener, db, 3), timeout=4, what=f"new mail of {user}")
    assert_exactly_once(dovecot, user, db, first + second)


@pytest.mark.slow
async def test_input_folder_recreated_at_once_behind_the_session(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    """Dovecot either drops the stale session (then all is well) or keeps it; the outcome is
    a race, so several attempts are made: each one must take the new mail."""
    for attempt in range(12):
        await _swap_input_folder_at_once(
            dovecot, f"{mailbox_user}-{attempt}", tmp_path / f"store{attempt}.sqlite3"
        )


# ----- 6. another client moving and deleting mail during a batch -----------------------
def _meddle(dc: DovecotSandbox, user: str, move: list[int], delete: list[int]) -> None:
    """Another IMAP client: moves then deletes some UIDs of the input folder, in rounds."""
    conn = imaplib.IMAP4(dc.host, dc.imap_port, timeout=30)
    try:
        conn.login(user, DovecotSandbox.PASSWORD)
        assert conn.select(f'"{NEW}"')[0] == "OK"
        for round_ in range(5):
            moving = ",".join(str(u) for u in move[round_ * 10 : (round_ + 1) * 10])
            deleting = ",".join(str(u) for u in delete[round_ * 4 : (round_ + 1) * 4])
            # NO when the daemon has already moved them all: the other client lost the race
            assert conn.uid("MOVE", moving, f'"{OTHER}"')[0] in ("OK", "NO")
            assert conn.uid("STORE", deleting, "+FLAGS.SILENT", r"(\Deleted)")[0] in ("OK", "NO")
            assert conn.expunge()[0] == "OK"
            time.sleep(0.02)
    finally:
        conn.logout()


@pytest.mark.slow
async def test_another_client_moves_and_deletes_mail_during_a_batch(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    user, db, clock = mailbox_user, tmp_path / "store.sqlite3", FakeClock()
    sent = mails(1000, "oc")
    seed(dovecot, user, sent, OTHER)
    by_uid = dict(zip(dovecot.uids(user, NEW), (message_id(m) for m in sent), strict=True))
    rng = random.Random(1234)
    chosen = rng.sample(sorted(by_uid), 70)
    move, delete = sorted(chosen[:50]), sorted(chosen[50:])
    cfg = listener_config(dovecot, user)
    with capture_logs() as logs:
        async with running(cfg, db, clock) as (_, listener):
            await eventually(lambda: count_rows(db, "cases") >= 20, timeout=30, what="batch")
            meddling = asyncio.create_task(asyncio.to_thread(_meddle, dovecot, user, move, delete))
            assert listener.state == "processing", "the batch ended before the other client"
            await meddling
            await pump(
                clock,
                lambda: listener.state == "idle" and dovecot.count(user, NEW) == 0,
                timeout=60,
                what="input folder empty",
            )
    assert_no_unexpected_errors(logs)
    everything = set(by_uid.values())
    deleted = {by_uid[u] for u in delete}
    done, other = ids_in(dovecot, user, DONE), ids_in(dovecot, user, OTHER)
    assert len(done) == len(set(done)) and len(other) == len(set(other))
    assert not set(done) & set(other)
    assert set(other) <= {by_uid[u] for u in move}
    assert everything - set(done) - set(other) <= deleted, "a mail vanished"
    stored = [f"<{mid}>" for (mid,) in db_rows(db, "SELECT message_id FROM messages")]
    assert len(stored) == len(set(stored)), "a mail was made into two cases"
    assert set(done) <= set(stored) <= everything
    n = len(stored)
    assert db_rows(db, "SELECT count(*) FROM ledger") == [(n,)]
    assert db_rows(db, "SELECT count(*), count(DISTINCT case_id) FROM messages") == [(n, n)]
    assert count_rows(db, "cases") == n
