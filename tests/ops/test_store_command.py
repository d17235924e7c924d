"""`engage-listener store migrate` (issue 16 point 2): the schema by hand, for both stores;
`store copy --from` (point 7): a SQLite store into PostgreSQL, closed cases included, and
refused where PostgreSQL would have no place for some of its data."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from devkit.postgres import PostgresServer
from engage_listener.config.model import StoreConfig
from engage_listener.ops.cli import main
from engage_listener.store.interface import (
    Heartbeat,
    MailKey,
    NewAck,
    NewAttachment,
    NewCase,
    NewMessage,
    NewWebhookEvent,
    Store,
)
from engage_listener.store.open import build_store
from engage_listener.store.postgres.schema import MIGRATIONS as PG_MIGRATIONS
from engage_listener.store.sqlite.schema import MIGRATIONS
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.config_xml import config_text, minimal_listener
from tests.support.postgres import fresh_database, postgres_server

__all__ = ["postgres_server"]  # a fixture


def test_migrate_creates_a_sqlite_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "el.xml"
    config.write_text(config_text(minimal_listener(), store="cases.sqlite3"))
    assert main(["store", "migrate", "--config", str(config)]) == 0
    with sqlite3.connect(tmp_path / "cases.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    assert "schema up to date" in capsys.readouterr().out


def test_migrate_a_postgresql_store_twice(
    postgres_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = fresh_database(postgres_server)
    config = tmp_path / "el.xml"
    config.write_text(config_text(minimal_listener(), store=url))
    for _ in range(2):
        assert main(["store", "migrate", "--config", str(config)]) == 0
    database = url.rsplit("/", 1)[1]
    versions = postgres_server.sql(
        "SELECT version FROM schema_version ORDER BY 1", database=database
    )
    assert versions.split() == [str(v) for v in sorted(PG_MIGRATIONS)]  # each once
    out = capsys.readouterr().out
    assert postgres_server.password not in out and ":***@127.0.0.1" in out


async def _fill_sqlite(path: Path) -> None:
    """A SQLite store with a row in every table the copy takes."""
    store = SqliteStore(path)
    await store.open()
    try:
        raw = b"Subject: Factura\r\n\r\nhola\r\n"
        mail = NewMessage(
            "L", "<m1@example.com>", None, "ana@example.com", "Ana", "Factura", None,
            dt.datetime(2024, 3, 1, tzinfo=dt.UTC), hashlib.sha256(raw).hexdigest(), raw,
            True, "hola", None, "",
        )  # fmt: skip
        async with store.transaction() as tx:
            customer = await tx.create_customer("Ana", "ana@example.com", "auto")
            case = await tx.create_case(
                NewCase("L", "ventas", "ana@example.com", "Ana", "Factura", "factura",
                        customer_id=customer.id)
            )  # fmt: skip
            row = await tx.add_message(case.id, mail)
            await tx.add_attachment(row, NewAttachment("a.pdf", "application/pdf", b"%PDF-1"))
            await tx.add_participants(case.id, ["otro@example.com"])
            await tx.apply_decision(case.id, row, "Facturacion", 2, ["vip"], True)
            await tx.add_ledger(MailKey("L", "INBOX", "9", "1"), row, mail)
            await tx.add_outbox(NewAck("L", case.id, row, "ana@example.com", "Re: Factura",
                                       "<ack1@example.org>", b"MIME"))  # fmt: skip
            await tx.add_quarantine(MailKey("L", "INBOX", "9", "2"), b"BAD", mail, "bad", 3)
            await tx.add_webhook_event(
                NewWebhookEvent("L", case.id, row, "case-opened", "ev-1", b'{"e":1}')
            )
        await store.record_failure(MailKey("L", "INBOX", "9", "3"), "boom")
        await store.set_control("L", "paused_until", "2030-01-01T00:00:00+00:00")
    finally:
        await store.close()


async def _read(url: str) -> tuple[Any, ...]:
    store = build_store(StoreConfig(Path("unused"), url=url))
    await store.open()
    try:
        async with store.transaction() as tx:
            info = await tx.case_info(1)
            participant = await tx.is_participant(1, "otro@example.com")
            new = await tx.create_case(NewCase("L", None, "b@example.com", "", "S", "s"))
        return (
            [(c.case_number, c.messages, c.attachments, c.ack) for c in await store.list_cases()],
            await store.list_customers(),
            await store.known_states("L", "INBOX", "9", ["1", "2"]),
            [(q.reason, q.attempts) for q in await store.list_quarantine()],
            (await store.get_quarantine(1) or (None, b""))[1],
            (info.inbox, info.priority, info.tags, participant, new.case_number),
            await store.record_failure(MailKey("L", "INBOX", "9", "3"), "again"),
            await store.read_control("L"),
            [(w.event_id, w.body) for w in await store.due_webhook_events(time.time(), 10)],
        )
    finally:
        await store.close()


async def _never_analyzed(url: str) -> list[str]:
    """The tables `store copy` filled that were never analyzed (store.postgres.statistics)."""
    import psycopg  # noqa: PLC0415 - PostgreSQL-only

    from engage_listener.store.postgres.copy import TABLES  # noqa: PLC0415

    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT relname FROM pg_stat_user_tables WHERE relname = ANY(%s)"
            " AND last_analyze IS NULL AND last_autoanalyze IS NULL ORDER BY relname",
            ([table.name for table in TABLES],),
        )
        return [str(row[0]) for row in await cur.fetchall()]


async def test_copy_a_sqlite_store_into_postgresql_twice(
    postgres_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "old.sqlite3"
    await _fill_sqlite(source)
    url = fresh_database(postgres_server)
    config = tmp_path / "el.xml"
    config.write_text(config_text(minimal_listener(), store=url))
    assert await asyncio.to_thread(main, ["store", "copy", "--from", str(source),
                                          "--config", str(config)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "messages" in out and "verified" in out and postgres_server.password not in out
    cases, customers, states, held, kept, info, attempts, control, events = await _read(url)
    assert cases == [("000001", 1, 1, "pending"), ("000002", 0, 0, None)]
    assert [(c.id, c.name, c.addresses) for c in customers] == [(1, "Ana", ("ana@example.com",))]
    assert states == {"1": "committed", "2": "quarantined"}
    assert (held, kept) == ([("bad", 3)], b"BAD")
    assert info == ("Facturacion", 2, ("vip",), True, "000002")  # numbering goes on
    assert attempts == 2  # the failure counted in SQLite is kept
    assert control is not None and control.paused_until == "2030-01-01T00:00:00+00:00"
    assert events == [("ev-1", b'{"e":1}')]  # webhook events too (migration 9)
    assert await _never_analyzed(url) == []  # the first mails are planned from statistics
    again = await asyncio.to_thread(
        main, ["store", "copy", "--from", str(source), "--config", str(config)]
    )
    assert again == 0 and "1 already there" in capsys.readouterr().out.replace("  ", " ")


async def test_copy_refuses_a_database_with_data_of_its_own(
    postgres_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "old.sqlite3"
    await _fill_sqlite(source)
    url = fresh_database(postgres_server)
    store = build_store(StoreConfig(Path("unused"), url=url))
    await store.open()
    async with store.transaction() as tx:  # another case 000001 already
        await tx.create_case(NewCase("M", None, "x@example.com", "", "Other", "other"))
    await store.close()
    config = tmp_path / "el.xml"
    config.write_text(config_text(minimal_listener(), store=url))
    code = await asyncio.to_thread(
        main, ["store", "copy", "--from", str(source), "--config", str(config)]
    )
    assert code == 1 and "new, empty database" in capsys.readouterr().err
    database = url.rsplit("/", 1)[1]
    assert postgres_server.sql("SELECT count(*) FROM customers", database=database).strip() == "0"


CLOSED_AT, REOPENED_AT = "2026-01-10T09:00:00+00:00", "2026-01-11T09:00:00+00:00"


async def _closed_cases(path: Path) -> list[int]:
    """A SQLite store with a case closed with a reason, one closed and reopened, one
    closed by a routing hook; their ids."""
    store = SqliteStore(path)
    await store.open()
    try:
        raw = b"Subject: Factura\r\n\r\nhola\r\n"
        mail = NewMessage(
            "L", "<c1@example.com>", None, "ana@example.com", "Ana", "Factura", None,
            dt.datetime(2024, 3, 1, tzinfo=dt.UTC), hashlib.sha256(raw).hexdigest(), raw,
            True, "hola", None, "",
        )  # fmt: skip
        async with store.transaction() as tx:
            made = [
                await tx.create_case(NewCase("L", "ventas", "ana@example.com", "Ana", "Factura",
                                             "factura"))
                for _ in range(3)
            ]  # fmt: skip
            closed, reopened, by_hook = (case.id for case in made)
            await tx.add_message(closed, mail)
            await tx.close_case(closed, "resuelto", CLOSED_AT)
            await tx.close_case(reopened, None, CLOSED_AT)
            await tx.reopen_case(reopened, REOPENED_AT)
            await tx.set_case_status(by_hook, "closed")
        return [closed, reopened, by_hook]
    finally:
        await store.close()


async def _details(store: Store, ids: list[int]) -> list[Any]:
    await store.open()
    try:
        return [(await store.case_detail(i), await store.case_messages(i)) for i in ids]
    finally:
        await store.close()


async def test_copy_keeps_closed_and_reopened_cases(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    source = tmp_path / "old.sqlite3"
    ids = await _closed_cases(source)
    url = fresh_database(postgres_server)
    config = tmp_path / "el.xml"
    config.write_text(config_text(minimal_listener(), store=url))
    code = await asyncio.to_thread(
        main, ["store", "copy", "--from", str(source), "--config", str(config)]
    )
    assert code == 0
    copied = await _details(build_store(StoreConfig(Path("unused"), url=url)), ids)
    assert copied == await _details(SqliteStore(source), ids)  # every field, every mail
    closed, reopened, by_hook = (detail for detail, _ in copied)
    assert closed is not None and reopened is not None and by_hook is not None
    assert (closed.status, closed.closed_at, closed.close_reason) == ("closed", CLOSED_AT,
                                                                     "resuelto")  # fmt: skip
    assert (reopened.status, reopened.closed_at, reopened.reopened_at) == ("open", None,
                                                                          REOPENED_AT)  # fmt: skip
    assert by_hook.status == "closed" and by_hook.closed_at
    store = build_store(StoreConfig(Path("unused"), url=url))
    await store.open()
    try:  # a follow-up to the closed case finds it, with its close time, in PostgreSQL
        async with store.transaction() as tx:
            [found] = await tx.closed_cases_by_message_ids(["<c1@example.com>"])
            by_number = await tx.closed_case_by_number(closed.case_number)
        assert (found.id, found.closed_at) == (closed.id, CLOSED_AT) and by_number == found
    finally:
        await store.close()


async def test_copy_refuses_sqlite_data_postgresql_has_no_place_for(
    postgres_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A newer SQLite schema is copied while nothing of it would be lost: a table the copy
    does not take must be empty, a copied table may have no column PostgreSQL lacks."""
    source = tmp_path / "old.sqlite3"
    await _fill_sqlite(source)
    store = SqliteStore(source)
    await store.open()
    await store.write_heartbeats(
        [Heartbeat("L", "idle", 42, None, None, 0, None, None, "2024-01-01T00:00:00+00:00")]
    )  # left behind: the running daemons write their own
    await store.close()
    url = fresh_database(postgres_server)
    config = tmp_path / "el.xml"
    config.write_text(config_text(minimal_listener(), store=url))
    database = url.rsplit("/", 1)[1]

    def copy(*statements: str) -> tuple[int, str]:
        with sqlite3.connect(source) as db:
            for statement in statements:
                db.execute(statement)
        db.close()
        code = main(["store", "copy", "--from", str(source), "--config", str(config)])
        return code, capsys.readouterr().err

    code, err = await asyncio.to_thread(
        copy, "CREATE TABLE notes (note TEXT)", "INSERT INTO notes VALUES ('kept')"
    )
    assert code == 1 and "has rows in notes" in err and "nothing was copied" in err
    assert postgres_server.sql("SELECT count(*) FROM customers", database=database).strip() == "0"
    code, err = await asyncio.to_thread(copy, "DELETE FROM notes", "ALTER TABLE cases ADD extra")
    assert code == 1 and "has columns extra of cases" in err
    code, err = await asyncio.to_thread(copy, "ALTER TABLE cases DROP COLUMN extra")
    assert (code, err) == (0, "")
    assert postgres_server.sql("SELECT count(*) FROM customers", database=database).strip() == "1"


async def test_copy_checks_the_sqlite_tables_it_takes_not_the_schema_numbers(
    postgres_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL's schema has migrations of its own (10: the fencing function), so its
    version is past SQLite's: the copy takes a SQLite store at SQLite's latest all the
    same, and refuses one without a table it copies, naming it, before writing anything."""
    assert max(PG_MIGRATIONS) > len(MIGRATIONS)  # the case this test is about
    source = tmp_path / "old.sqlite3"
    await _fill_sqlite(source)
    url = fresh_database(postgres_server)
    config = tmp_path / "el.xml"
    config.write_text(config_text(minimal_listener(), store=url))
    database = url.rsplit("/", 1)[1]

    def copy() -> tuple[int, str]:
        code = main(["store", "copy", "--from", str(source), "--config", str(config)])
        return code, capsys.readouterr().err

    assert await asyncio.to_thread(copy) == (0, "")
    assert postgres_server.sql("SELECT count(*) FROM customers", database=database).strip() == "1"
    with sqlite3.connect(source) as db:
        db.execute("DROP TABLE listener_control")
    db.close()
    code, err = await asyncio.to_thread(copy)
    assert code == 1 and "without the tables listener_control" in err, err
    assert "nothing was copied" in err
    control = postgres_server.sql("SELECT count(*) FROM listener_control", database=database)
    assert control.strip() == "1"  # the first copy's row, nothing more, nothing less
