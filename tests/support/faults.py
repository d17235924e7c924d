"""Shared by the fault-injection tests (test_faults*.py): mails, waits, and the one
check they all end with: every mail in the output folder once, one ledger row, one
message row and one case each."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from devkit.dovecot import DovecotSandbox
from engage_listener.sources.imap.listener import Listener
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness, db_rows, make_mail

NEW, DONE, OTHER = "IMAP/New", "IMAP/Done", "IMAP/Other"
OWN = "soporte@example.org"
MESSAGE_ID_RE = re.compile(rb"^Message-ID: (\S+)", re.M)
CASE_TOKEN_RE = re.compile(r"\[Case#(\d+)\]")
Logs = list[MutableMapping[str, Any]]  # events captured by structlog


# ----- helpers ------------------------------------------------------------------------
def mails(count: int, tag: str) -> list[bytes]:
    """`count` mails, each from its own sender (no rate limit, no case joining)."""
    return [
        make_mail(i, sender=f"{tag}.c{i}@example.com", message_id=f"<{tag}.{i}@faults.example>")
        for i in range(count)
    ]


def seed(sandbox: DovecotSandbox, user: str, raws: list[bytes], *extra_folders: str) -> None:
    """The output folder (and `extra_folders`) created, `raws` in the input folder."""
    for folder in (DONE, *extra_folders):
        sandbox.create_folder(user, folder)
    sandbox.append_many(user, NEW, raws)


def message_id(raw: bytes) -> str:
    match = MESSAGE_ID_RE.search(raw)
    assert match, raw[:200]
    return match.group(1).decode()


def ids_in(sandbox: DovecotSandbox, user: str, folder: str) -> list[str]:
    return sorted(message_id(raw) for raw in sandbox.messages(user, folder))


def count_rows(db: Path, table: str) -> int:
    """Rows in `table`, 0 while the store or the table does not exist yet."""
    try:
        return int(db_rows(db, f"SELECT count(*) FROM {table}")[0][0])
    except sqlite3.Error:
        return 0


def assert_exactly_once(
    sandbox: DovecotSandbox, user: str, db: Path, sent: Sequence[bytes]
) -> None:
    """Every mail in the output folder once; one ledger row, one message, one case each."""
    expected = sorted(message_id(raw) for raw in sent)
    n = len(expected)
    assert sandbox.count(user, NEW) == 0
    assert ids_in(sandbox, user, DONE) == expected
    assert db_rows(db, "SELECT count(*), count(DISTINCT message_id) FROM messages") == [(n, n)]
    stored = sorted(f"<{mid}>" for (mid,) in db_rows(db, "SELECT message_id FROM messages"))
    assert stored == expected
    assert db_rows(db, "SELECT count(*), count(DISTINCT message_row) FROM ledger") == [(n, n)]
    assert db_rows(db, "SELECT count(*) FROM cases") == [(n,)]
    assert db_rows(db, "SELECT count(DISTINCT case_id), count(case_id) FROM messages") == [(n, n)]


async def pump(
    clock: FakeClock, check: Callable[[], bool], *, timeout: float = 30.0, what: str = ""
) -> None:
    """Advance the fake clock (skipping back-off delays) until `check` holds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        clock.advance(5.0)
        await asyncio.sleep(0.05)


def idle_with(listener: Listener, db: Path, cases: int) -> Callable[[], bool]:
    return lambda: listener.state == "idle" and count_rows(db, "cases") == cases


def errors(logs: Logs) -> Logs:
    return [e for e in logs if e["event"] == "listener_error"]


def assert_no_unexpected_errors(logs: Logs) -> None:
    unexpected = [e for e in errors(logs) if e.get("kind") == "unexpected"]
    assert not unexpected, unexpected


@contextlib.asynccontextmanager
async def running(cfg: Any, db: Path, clock: FakeClock) -> AsyncIterator[tuple[Harness, Listener]]:
    async with Harness(cfg, db, clock) as h:
        listener = await h.start()
        yield h, listener
        assert h.task is not None and not h.task.done(), "the listener task ended"
