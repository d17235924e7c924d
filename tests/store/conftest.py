"""The store contract suite: every test here runs against each store implementation.

A store implementation joins the suite by adding a builder to STORES (issue 16: a
PostgreSQL store whose builder creates a fresh database for each test). The tests use
`store.interface` only: no SQL, no implementation's own methods.
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


def _sqlite(tmp_path: Path) -> Store:
    return build_store(StoreConfig(tmp_path / "store" / "cases.sqlite3"), "sqlite")


STORES: dict[str, Callable[[Path], Store]] = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An empty, opened store of each implementation."""
    opened = STORES[request.param](tmp_path)
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
