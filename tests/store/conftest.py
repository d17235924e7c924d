"""The store contract suite: every test here runs against each store implementation.

A store implementation joins the suite by adding a builder to STORES: SQLite in the test's
folder, PostgreSQL in a fresh database of the session's server for each test (skipped,
saying why, where PostgreSQL is not installed). The tests use `store.interface` only: no
SQL, no implementation's own methods; `sqlite_store` is for the SQLite store's own tests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from engage_listener.config.model import StoreConfig
from engage_listener.store.interface import NewMessage, Store
from engage_listener.store.open import build_store
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.postgres import fresh_database, postgres_server

__all__ = ["postgres_server"]  # a fixture, for the tests that ask for it


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return build_store(StoreConfig(tmp_path / "store" / "cases.sqlite3"), "sqlite")


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    url = fresh_database(request.getfixturevalue("postgres_server"))
    return build_store(StoreConfig(tmp_path / "unused", url=url))


STORES: dict[str, Callable[[pytest.FixtureRequest, Path], Store]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
}


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An empty, opened store of each implementation."""
    opened = STORES[request.param](request, tmp_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An empty, opened SQLite store (its own tests: WAL, blobs, query plans)."""
    opened = SqliteStore(tmp_path / "store" / "cases.sqlite3")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


_numbers = itertools.count(1)
MessageFactory = Callable[..., NewMessage]


@pytest.fixture
def message() -> MessageFactory:
    """`message(listener="L", message_id=..., raw=...)`: a NewMessage as the engine makes."""

    def make(
        listener: str = "L",
        *,
        message_id: str | None = None,
        raw: bytes | None = None,
        sender: str = "cliente@example.com",
        subject: str = "Consulta",
    ) -> NewMessage:
        n = next(_numbers)
        body = raw if raw is not None else f"Subject: {subject}\r\n\r\nmail {n}\r\n".encode()
        return NewMessage(
            listener=listener,
            message_id=message_id if message_id is not None else f"<m{n}@example.com>",
            in_reply_to=None,
            sender=sender,
            sender_name="Cliente",
            subject=subject,
            sent_at=None,
            received_at=dt.datetime.now(dt.UTC),
            sha256=hashlib.sha256(body).hexdigest(),
            raw=body,
            parsed=True,
            body_text="texto",
            body_html=None,
            defects="",
        )

    return make
