"""Issue 18.2: a mail that would have joined a closed case (by its headers, its case token
or the customer's subject) reopens it when it was closed fewer than ReopenDays ago, and
otherwise opens a new case related to it. Automatic mail never reopens a case. On both
stores: the closed-case look-ups are each store's own SQL."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.config.model import StoreConfig
from engage_listener.store.interface import MailKey, Store
from engage_listener.store.open import build_store
from tests.support.postgres import fresh_database, postgres_server

__all__ = ["postgres_server"]  # a fixture, for the PostgreSQL store

_uids = itertools.count(1)
CUSTOMER = "ana@cliente.example"


@pytest.fixture(params=["postgres", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh store of each kind, open for the test."""
    if request.param == "sqlite":
        config = StoreConfig(tmp_path / "store.sqlite3")
    else:
        url = fresh_database(request.getfixturevalue("postgres_server"))
        config = StoreConfig(tmp_path / "unused", url=url)
    opened = build_store(config)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def key() -> MailKey:
    return MailKey("L", "IMAP/New", "1", str(next(_uids)))


def engine(store: Store, **settings: object) -> CaseEngine:
    return CaseEngine(
        store,
        EngineSettings(listener="L", extract_attachments=False, **settings),  # type: ignore[arg-type]
    )


def mail(
    n: int,
    sender: str = CUSTOMER,
    subject: str = "Factura duplicada",
    *,
    in_reply_to: str = "",
    automatic: bool = False,
) -> bytes:
    lines = [
        f"From: Someone <{sender}>",
        "To: soporte@example.org",
        f"Subject: {subject}",
        f"Message-ID: <c{n}@mail.example>",
        *([f"In-Reply-To: {in_reply_to}"] if in_reply_to else []),
        *(["Auto-Submitted: auto-replied"] if automatic else []),
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"texto {n}",
        "",
    ]
    return "\r\n".join(lines).encode()


async def _close(store: Store, case_id: int, days_ago: float) -> None:
    at = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    async with store.transaction() as tx:
        assert await tx.close_case(case_id, "resuelto", at.isoformat(timespec="seconds"))


def _follow_up(way: str, n: int, case_number: str) -> bytes:
    if way == "header":
        return mail(n, subject="otra cosa", in_reply_to="<c1@mail.example>")
    if way == "token":
        return mail(n, subject=f"RE: [Case#{case_number}] algo distinto")
    return mail(n, subject="RE: Factura duplicada")  # the customer's subject


WAYS = ("header", "token", "subject")


@pytest.mark.parametrize("way", WAYS)
async def test_a_follow_up_within_reopen_days_reopens_the_case(store: Store, way: str) -> None:
    e = engine(store)
    first = await e.ingest(key(), mail(1))
    assert first.case_id is not None
    await _close(store, first.case_id, days_ago=6.9)
    again = await e.ingest(key(), _follow_up(way, 2, first.case_number or ""))
    assert (again.case_id, again.new_case) == (first.case_id, False)
    detail = await store.case_detail(first.case_id)
    assert detail is not None
    assert (detail.status, detail.closed_at, detail.close_reason) == ("open", None, None)
    assert detail.reopened_at is not None
    assert len(await store.case_messages(first.case_id)) == 2


@pytest.mark.parametrize("way", WAYS)
async def test_a_follow_up_after_reopen_days_opens_a_related_case(store: Store, way: str) -> None:
    e = engine(store, reopen_days=7)
    first = await e.ingest(key(), mail(1))
    assert first.case_id is not None
    await _close(store, first.case_id, days_ago=7.1)
    later = await e.ingest(key(), _follow_up(way, 2, first.case_number or ""))
    assert later.new_case and later.case_id != first.case_id
    assert later.case_id is not None
    detail = await store.case_detail(later.case_id)
    assert detail is not None and detail.related_case_id == first.case_id
    old = await store.case_detail(first.case_id)
    assert old is not None and old.status == "closed"
    assert [m.id for m in await store.case_messages(first.case_id)] != []
    assert len(await store.case_messages(first.case_id)) == 1


async def test_reopen_days_0_never_reopens(store: Store) -> None:
    e = engine(store, reopen_days=0)
    first = await e.ingest(key(), mail(1))
    assert first.case_id is not None
    await _close(store, first.case_id, days_ago=0)
    later = await e.ingest(key(), _follow_up("header", 2, ""))
    assert later.new_case
    closed = await store.case_detail(first.case_id)
    assert closed is not None and closed.status == "closed"


async def test_automatic_mail_never_reopens(store: Store) -> None:
    """An out-of-office answering the closed thread is kept without a case (AutomaticMail
    Ignore), or opens a new related case (OpenCase); the closed case stays closed."""
    first = await engine(store).ingest(key(), mail(1))
    assert first.case_id is not None
    await _close(store, first.case_id, days_ago=1)
    auto = mail(2, subject="Fuera de oficina", in_reply_to="<c1@mail.example>", automatic=True)
    ignored = await engine(store).ingest(key(), auto)
    assert ignored.ignored and ignored.case_id is None
    auto = mail(3, subject="Fuera de oficina", in_reply_to="<c1@mail.example>", automatic=True)
    opened = await engine(store, automatic_mail="OpenCase").ingest(key(), auto)
    assert opened.new_case and opened.case_id is not None
    detail = await store.case_detail(opened.case_id)
    assert detail is not None and detail.related_case_id == first.case_id
    closed = await store.case_detail(first.case_id)
    assert closed is not None and closed.status == "closed"


async def test_a_stranger_naming_a_closed_case_never_reopens_it(store: Store) -> None:
    e = engine(store)
    first = await e.ingest(key(), mail(1))
    assert first.case_id is not None
    await _close(store, first.case_id, days_ago=1)
    stranger = await e.ingest(
        key(), mail(2, "intruso@evil.example", f"[Case#{first.case_number}] hola")
    )
    assert stranger.new_case and stranger.case_id is not None
    detail = await store.case_detail(stranger.case_id)
    assert detail is not None and detail.related_case_id == first.case_id
    closed = await store.case_detail(first.case_id)
    assert closed is not None and closed.status == "closed"


async def test_an_open_case_of_the_customer_wins_over_a_closed_one(store: Store) -> None:
    """The customer's newer open case with the subject takes the mail; the closed one is
    left closed (an open case always wins)."""
    e = engine(store)
    first = await e.ingest(key(), mail(1))
    assert first.case_id is not None
    await _close(store, first.case_id, days_ago=1)
    second = await e.ingest(key(), mail(2, subject="Otra consulta"))
    third = await e.ingest(key(), mail(3, subject="RE: Otra consulta"))
    assert (third.case_id, third.new_case) == (second.case_id, False)
    closed = await store.case_detail(first.case_id)
    assert closed is not None and closed.status == "closed"
