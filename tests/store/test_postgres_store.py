"""The PostgreSQL store's own behaviour (issue 16): migrations under an advisory lock,
case numbers from a sequence across daemons, fencing by lease, large mail, no secret in
errors. Against a real PostgreSQL (tests.support.postgres)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from devkit.postgres import PostgresServer
from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.config.model import Secret, StoreConfig
from engage_listener.errors import LeaseLost, StoreError
from engage_listener.store.interface import MailKey, NewAttachment, NewCase, NewMessage, Store
from engage_listener.store.open import build_store
from engage_listener.store.postgres.schema import LATEST, MIGRATIONS
from tests.support.helpers import make_mail
from tests.support.postgres import fresh_database

MessageFactory = Callable[..., NewMessage]  # the `message` fixture
KEY = MailKey("L", "INBOX", "7", "1")


def _store(url: str, owner: str | None = None) -> Store:
    return build_store(StoreConfig(Path("unused"), url=url), owner=owner)


@pytest.fixture
def url(postgres_server: PostgresServer) -> str:
    return fresh_database(postgres_server)


def _sql(server: PostgresServer, url: str, *statements: str) -> str:
    return server.sql(*statements, database=url.rsplit("/", 1)[1])


@pytest.fixture
async def stores(url: str) -> AsyncIterator[Callable[..., Store]]:
    """`make(owner=None)`: stores on the test's database, closed at the end."""
    made: list[Store] = []

    def make(owner: str | None = None) -> Store:
        made.append(_store(url, owner))
        return made[-1]

    yield make
    for store in made:
        await store.close()


async def test_daemons_starting_together_migrate_once(
    postgres_server: PostgresServer, url: str, stores: Callable[..., Store]
) -> None:
    await asyncio.gather(*(stores().open() for _ in range(5)))
    versions = _sql(postgres_server, url, "SELECT version FROM schema_version ORDER BY 1")
    assert versions.split() == [str(v) for v in sorted(MIGRATIONS)]  # each once
    tables = _sql(
        postgres_server, url,
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables"
        " WHERE tablename IN ('daemons', 'listener_leases', 'ledger')",
    )  # fmt: skip
    assert tables.strip() == "daemons,ledger,listener_leases"
    lz4 = _sql(
        postgres_server, url,
        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'",
    )  # fmt: skip
    compression = _sql(
        postgres_server, url,
        "SELECT attcompression FROM pg_attribute WHERE attrelid = 'messages'::regclass"
        " AND attname = 'raw' UNION ALL SELECT attcompression FROM pg_attribute"
        " WHERE attrelid = 'webhook_events'::regclass AND attname = 'body'",
    )  # fmt: skip
    expected = "l" if lz4.strip() == "t" else ""  # lz4 where it can, later migrations too
    assert [line.strip() for line in compression.splitlines()] == [expected, expected]


async def test_a_database_from_a_newer_program_is_refused(
    postgres_server: PostgresServer, url: str, stores: Callable[..., Store]
) -> None:
    await stores().open()
    _sql(postgres_server, url, f"INSERT INTO schema_version (version) VALUES ({LATEST + 1})")
    with pytest.raises(StoreError, match="newer than this program knows"):
        await stores().open()


@pytest.mark.parametrize(
    "damage",
    [
        "DROP INDEX listener_leases_holder",
        "DROP INDEX listener_leases_holder; CREATE INDEX listener_leases_holder"
        " ON listener_leases (listener, owner, fence)",  # not unique: no key update
    ],
)
async def test_a_database_without_the_fencing_key_is_refused(
    postgres_server: PostgresServer, url: str, stores: Callable[..., Store], damage: str
) -> None:
    """The unique index nothing reads from makes a take-over wait for the mails in flight:
    a tidy-up that dropped it would leave fencing silently off."""
    await stores().open()
    _sql(postgres_server, url, damage)
    with pytest.raises(StoreError, match="lacks the unique index listener_leases_holder"):
        await stores().open()


async def test_case_numbers_are_unique_across_daemons(stores: Callable[..., Store]) -> None:
    first, second = stores(), stores()
    await asyncio.gather(first.open(), second.open())

    async def cases(store: Store, n: int) -> list[str]:
        numbers = []
        for _ in range(n):
            async with store.transaction() as tx:
                case = await tx.create_case(NewCase("L", None, "a@example.com", "", "S", "s"))
                numbers.append(case.case_number)
        return numbers

    made = await asyncio.gather(cases(first, 15), cases(second, 15))
    numbers = made[0] + made[1]
    assert len(set(numbers)) == 30
    assert all(n.isdigit() and len(n) == 6 for n in numbers)
    assert sorted(c.case_number for c in await first.list_cases()) == sorted(numbers)


def _lease(server: PostgresServer, url: str, owner: str, seconds: int) -> None:
    _sql(
        server, url,
        f"INSERT INTO daemons VALUES ('{owner}', 'host', 1, now(), now(), NULL)"
        " ON CONFLICT DO NOTHING",
        f"INSERT INTO listener_leases (listener, owner, fence, expires_at) VALUES"
        f" ('L', '{owner}', 1, now() + interval '{seconds} seconds') ON CONFLICT (listener)"
        " DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at,"
        " fence = listener_leases.fence + 1",
    )  # fmt: skip


async def _commit(store: Store, key: MailKey, mail: NewMessage) -> None:
    async with store.transaction() as tx:
        row = await tx.add_message(None, mail)
        await tx.add_ledger(key, row, mail)


async def test_a_daemon_commits_mail_only_while_it_holds_the_lease(
    postgres_server: PostgresServer,
    url: str,
    stores: Callable[..., Store],
    message: MessageFactory,
) -> None:
    mine = stores(owner="daemon-a")
    await mine.open()
    with pytest.raises(LeaseLost):  # no lease row at all
        await _commit(mine, KEY, message())
    _lease(postgres_server, url, "daemon-a", 60)
    await _commit(mine, KEY, message())
    _lease(postgres_server, url, "daemon-b", 60)  # taken over
    other = MailKey("L", "INBOX", "7", "2")
    with pytest.raises(LeaseLost):
        await _commit(mine, other, message())
    with pytest.raises(LeaseLost):
        await mine.mark_done([KEY], "moved")
    assert await mine.known_states("L", "INBOX", "7", ["1", "2"]) == {"1": "committed"}
    assert _sql(postgres_server, url, "SELECT count(*) FROM messages").strip() == "1"
    _lease(postgres_server, url, "daemon-a", -1)  # ours again, but expired
    with pytest.raises(LeaseLost):
        async with mine.transaction() as tx:
            await tx.add_quarantine(other, b"x", message(), "bad", 1)
    unfenced = stores()  # operator commands: no owner, no check
    await unfenced.open()
    await unfenced.mark_done([KEY], "moved")
    assert await mine.known_states("L", "INBOX", "7", ["1"]) == {"1": "moved"}


async def test_a_take_over_waits_for_a_fenced_commit_in_flight(
    url: str, stores: Callable[..., Store], postgres_server: PostgresServer,
    message: MessageFactory,
) -> None:  # fmt: skip
    """A take-over (any UPDATE of the lease row) waits until a mail checked against the old
    owner has committed, so ownership never changes between the check and the commit."""
    mine = stores(owner="daemon-a")
    await mine.open()
    _lease(postgres_server, url, "daemon-a", 60)
    taker = await _connect(url)
    checked, release = asyncio.Event(), asyncio.Event()

    async def commit_slowly() -> None:
        mail = message()
        async with mine.transaction() as tx:
            row = await tx.add_message(None, mail)
            await tx.add_ledger(KEY, row, mail)  # queued: a read sends it, and the check
            await tx.find_duplicate("L", "0" * 64, None)
            checked.set()
            await release.wait()

    work = asyncio.create_task(commit_slowly())
    await checked.wait()
    take = asyncio.create_task(
        taker.execute("UPDATE listener_leases SET owner = NULL WHERE listener = 'L'")
    )
    await asyncio.sleep(0.3)
    assert not take.done()  # blocked by the mail's FOR KEY SHARE (an owner change is a key update)
    release.set()
    await work
    await take
    await taker.commit()
    await taker.close()
    assert await mine.known_states("L", "INBOX", "7", ["1"]) == {"1": "committed"}
    with pytest.raises(LeaseLost):  # and now it is gone
        await mine.mark_done([KEY], "moved")


async def _connect(url: str) -> Any:
    import psycopg  # noqa: PLC0415 - a PostgreSQL-only test

    return await psycopg.AsyncConnection.connect(url)


async def test_a_30_mb_mail_round_trips(
    postgres_server: PostgresServer, url: str, stores: Callable[..., Store]
) -> None:
    """Sent in pieces (binary COPY) rather than as one INSERT parameter: every column of
    those rows must arrive as an INSERT would have written it."""
    store = stores()
    await store.open()
    raw = bytes(range(256)) * (30 * 4096)  # 30 MiB
    mail = NewMessage(
        "L", "<big@example.com>", None, "a@example.com", "", "Big", None,
        dt.datetime.now(dt.UTC), hashlib.sha256(raw).hexdigest(), raw, True, "", None, "",
    )  # fmt: skip
    async with store.transaction() as tx:
        case = await tx.create_case(NewCase("L", None, "a@example.com", "", "Big", "big"))
        row = await tx.add_message(case.id, mail)
        await tx.add_attachment(row, NewAttachment("big.eml", "message/rfc822", raw,
                                                   raw_of_message=True))  # fmt: skip
        await tx.add_attachment(row, NewAttachment("big.bin", "application/x", raw[::-1],
                                                   content_id="<c1>", inline=True))  # fmt: skip
        await tx.add_ledger(KEY, row, mail)
        await tx.add_quarantine(MailKey("L", "INBOX", "7", "2"), raw, mail, "too big", 1)
    async with store.transaction() as tx:
        assert await tx.first_message(case.id) == (row, raw)
    [entry] = await store.list_quarantine()
    found = await store.get_quarantine(entry.id)
    assert found is not None and found[1] == raw and entry.size == len(raw)
    [history] = await store.ledger_history("L", "INBOX", "1")
    assert history.size == len(raw)
    [summary] = await store.list_cases()
    assert (summary.messages, summary.attachments) == (1, 2)
    files = _sql(
        postgres_server, url,
        "SELECT filename, size, inline, content_id, octet_length(content), md5(content)"
        " FROM attachment_files ORDER BY id",
    )  # fmt: skip
    assert files.split() == [
        f"big.eml|{len(raw)}|0||{len(raw)}|{hashlib.md5(raw).hexdigest()}",
        f"big.bin|{len(raw)}|1|<c1>|{len(raw)}|{hashlib.md5(raw[::-1]).hexdigest()}",
    ]
    fields = _sql(
        postgres_server, url,
        "SELECT case_id, listener, message_id, sender, size, parsed, ignored, received_at"
        " = %s, in_reply_to IS NULL, stored_mime IS NULL FROM messages".replace(
            "%s", f"'{mail.received_at.isoformat(timespec='seconds')}'"
        ),
    )  # fmt: skip
    assert fields.strip() == f"{case.id}|L|<big@example.com>|a@example.com|{len(raw)}|1|0|t|t|t"


async def test_errors_name_the_store_without_its_password(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    config = StoreConfig(
        tmp_path,
        url=postgres_server.url_for("engage").replace(f":{_quoted(postgres_server)}@", "@"),
        password=Secret("Wrong-Password-123"),
    )
    store = build_store(config)
    with pytest.raises(StoreError) as raised:
        await store.open()
    text = str(raised.value)
    assert "Wrong-Password-123" not in text and postgres_server.password not in text
    assert "cannot open the store" in text and "127.0.0.1" in text


def _quoted(server: PostgresServer) -> str:
    return quote(server.password, safe="")


async def test_two_daemons_taking_the_same_mail_make_one_case(stores: Callable[..., Store]) -> None:
    """Point 4: while ownership changes hands, two daemons may both take a mail; the
    ledger's primary key lets one commit and rolls the other back whole."""
    first, second = stores(), stores()
    await asyncio.gather(first.open(), second.open())
    engines = [
        CaseEngine(s, EngineSettings("L", extract_attachments=True)) for s in (first, second)
    ]
    for round_ in range(3):
        key, raw = MailKey("L", "INBOX", "7", str(round_)), make_mail(round_, subject="Factura")
        done = await asyncio.gather(*(e.ingest(key, raw) for e in engines), return_exceptions=True)
        assert sorted(type(d).__name__ for d in done) == ["Ingested", "StoreError"], done
    assert await first.known_states("L", "INBOX", "7", ["0", "1", "2"]) == dict.fromkeys(
        ["0", "1", "2"], "committed"
    )
    [case] = await second.list_cases()  # three mails of one customer and subject: one case
    assert case.messages == 3


async def test_extract_attachments_false_keeps_the_mail_bytes_once(
    postgres_server: PostgresServer, url: str, stores: Callable[..., Store]
) -> None:
    """As test_store_eml_once for SQLite: the .eml attachment is the message's raw, not a
    second copy, yet listed and readable through attachment_files (also a large one)."""
    store = stores()
    await store.open()
    engine = CaseEngine(store, EngineSettings("L", extract_attachments=False))
    mails = [make_mail(1, subject="Planos"), make_mail(2, subject="Planos", body="x" * (3 << 20))]
    for uid, raw in enumerate(mails, start=1):
        await engine.ingest(MailKey("L", "IMAP/New", "1", str(uid)), raw)
    stored = _sql(
        postgres_server, url,
        "SELECT (SELECT sum(octet_length(raw)) + coalesce(sum(octet_length(stored_mime)), 0)"
        " FROM messages) + (SELECT sum(octet_length(content)) FROM attachments)",
    )  # fmt: skip
    assert int(stored) == sum(len(raw) for raw in mails)
    listed = _sql(
        postgres_server, url,
        "SELECT content_type, size, md5(content) FROM attachment_files ORDER BY id",
    )  # fmt: skip
    assert listed.split() == [
        f"message/rfc822|{len(raw)}|{hashlib.md5(raw).hexdigest()}" for raw in mails
    ]
