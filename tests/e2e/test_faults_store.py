"""Fault injection: the store failing under the listener (locked by another process,
the disk full). Nothing is moved on the server that did not commit; the listener backs
off, further each time, and recovers."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from devkit.dovecot import DovecotSandbox
from tests.support.fakes import FakeClock
from tests.support.faults import (
    DONE,
    NEW,
    Logs,
    assert_exactly_once,
    count_rows,
    errors,
    idle_with,
    mails,
    pump,
    seed,
)
from tests.support.helpers import Harness, eventually, listener_config


# ----- 4. the store failing -----------------------------------------------------------
@contextlib.asynccontextmanager
async def store_locked(h: Harness, db: Path) -> AsyncIterator[None]:
    """Another process holds the store's write lock for the duration."""
    # The store waits 10 s for a lock; keep the test fast (its own connection only).
    h.store._conn().execute("PRAGMA busy_timeout=200")
    blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


async def wait_for_errors(clock: FakeClock, logs: Logs, count: int) -> None:
    await pump(clock, lambda: len(errors(logs)) >= count, what=f"{count} listener errors")


async def test_store_locked_by_another_process_moves_nothing_then_recovers(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    user, db, clock = mailbox_user, tmp_path / "store.sqlite3", FakeClock()
    sent = mails(60, "lock")
    seed(dovecot, user, sent)
    cfg = listener_config(dovecot, user)
    with capture_logs() as logs:
        async with Harness(cfg, db, clock) as h:
            async with store_locked(h, db):
                listener = await h.start()
                for attempt in range(1, 4):  # the first failure, then two retries
                    await wait_for_errors(clock, logs, attempt)
                    assert listener.state == "backing off"
                    assert "locked" in (listener.last_error or "")
                    assert dovecot.count(user, DONE) == 0, "moved while the store failed"
                assert dovecot.count(user, NEW) == len(sent)
            assert count_rows(db, "ledger") == 0
            await pump(clock, idle_with(listener, db, len(sent)), what="recovered")
            assert h.task is not None and not h.task.done()
    assert {e["error_type"] for e in errors(logs)} == {"StoreError"}
    assert all(e["kind"] == "transient" for e in errors(logs))
    assert_exactly_once(dovecot, user, db, sent)


async def test_repeated_failures_after_connecting_back_off_exponentially(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    user, db, clock = mailbox_user, tmp_path / "store.sqlite3", FakeClock()
    seed(dovecot, user, mails(5, "bo"))
    cfg = listener_config(dovecot, user)
    with capture_logs() as logs:
        async with Harness(cfg, db, clock) as h, store_locked(h, db):
            await h.start()
            await wait_for_errors(clock, logs, 4)
    found = errors(logs)[:4]
    assert [e["failures"] for e in found] == [1, 2, 3, 4]
    assert found[3]["retry_in"] >= 8.0  # 16 s with jitter 0.5..1


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MB tmpfs that the test can fill up (needs root, or CAP_SYS_ADMIN)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a small tmpfs, which needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def fill_disk(directory: Path, leave: int) -> Path:
    """Fill the file system of `directory`, leaving about `leave` bytes; returns the filler."""
    headroom, filler = directory / "headroom", directory / "filler"
    headroom.write_bytes(b"\0" * leave)
    with filler.open("wb", buffering=0) as out:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9):
            block = b"\0" * size
            try:
                while out.write(block) == size:
                    pass
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    headroom.unlink()
    return filler


async def test_disk_full_moves_only_what_committed_then_recovers(
    dovecot: DovecotSandbox, mailbox_user: str, small_disk: Path
) -> None:
    user, db, clock = mailbox_user, small_disk / "store.sqlite3", FakeClock()
    sent = mails(80, "full")
    seed(dovecot, user, sent)
    cfg = listener_config(dovecot, user)
    with capture_logs() as logs:
        async with Harness(cfg, db, clock) as h:
            filler = fill_disk(small_disk, leave=160 * 1024)  # room for a few mails only
            listener = await h.start()
            await eventually(lambda: listener.state == "backing off", timeout=30, what="full")
            assert "full" in (listener.last_error or ""), listener.last_error
            committed, moved = count_rows(db, "ledger"), dovecot.count(user, DONE)
            assert 0 < committed < len(sent)
            assert moved == committed, "moved a mail that did not commit (or kept one back)"
            for attempt in range(2, 4):  # retries while the disk is still full
                await wait_for_errors(clock, logs, attempt)
                assert listener.state == "backing off"
                assert dovecot.count(user, DONE) == moved == count_rows(db, "ledger")
            filler.unlink()
            await pump(clock, idle_with(listener, db, len(sent)), what="recovered")
            assert h.task is not None and not h.task.done()
    assert {e["error_type"] for e in errors(logs)} == {"StoreError"}
    # The chunk's single commit failed first; mail by mail, some then fitted.
    assert any(e["event"] == "group_commit_failed" for e in logs)
    assert_exactly_once(dovecot, user, db, sent)
