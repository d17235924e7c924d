"""Shared fixtures: one real Dovecot per test session, and a fresh mail user per test.

Every user logs in with the same password, so isolation comes from user names:
no two tests ever share a mailbox, and nothing needs cleaning between tests.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from engage_listener.sandbox import DOVECOT_BIN, DovecotSandbox
from engage_listener.store.sqlite.store import SqliteStore

_user_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DovecotSandbox]:
    """A Dovecot sandbox shared by the whole session (starting one costs ~1 s with stop)."""
    if not Path(DOVECOT_BIN).exists():
        pytest.skip(
            f"Dovecot not found at {DOVECOT_BIN}: the tests need a real Dovecot 2.3 "
            "(dovecot-imapd, dovecot-pop3d); run the test command from the README, "
            "which installs it"
        )
    sandbox = DovecotSandbox(tmp_path_factory.mktemp("dovecot"))
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def own_dovecot(tmp_path: Path) -> Iterator[DovecotSandbox]:
    """A private Dovecot this test may stop and restart."""
    if not Path(DOVECOT_BIN).exists():
        pytest.skip(f"Dovecot not found at {DOVECOT_BIN}")
    with DovecotSandbox(tmp_path / "dovecot") as sandbox:
        yield sandbox


@pytest.fixture
def mailbox_user(request: pytest.FixtureRequest) -> str:
    """A user name nobody else has used in this session, readable in the Dovecot log."""
    # Dovecot lowercases user names and allows only [a-z0-9._@-].
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return f"{name or 'user'}-{next(_user_numbers)}"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Where the test's store lives (read from outside with helpers.db_rows)."""
    return tmp_path / "store.sqlite3"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[SqliteStore]:
    """A fresh SQLite store at `db`, open for the test."""
    opened = SqliteStore(db)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
