"""Mails are parsed ahead while the event loop waits (on a COMMIT), within bounds."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from devkit.dovecot import DovecotSandbox
from engage_listener.cases.engine import CaseEngine, EngineSettings, Prepared
from engage_listener.cases.ingested import Ingested
from engage_listener.intake import parse_ahead
from engage_listener.intake.parse_ahead import AHEAD_BYTES, AHEAD_COUNT, ParseAhead
from engage_listener.mail.parser import parse
from engage_listener.service.build import build_listener
from engage_listener.store.interface import MailKey
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness, db_rows, listener_config, make_mail


class Preparer:
    """A handler whose `prepare` notes what it saw; mails holding b"boom" make it fail."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def prepare(self, raw: bytes) -> object:
        self.seen.append(raw)
        if b"boom" in raw:
            raise ValueError("boom")
        return ("prepared", raw)

    async def ingest(self, key: MailKey, raw: bytes, prepared: object = None) -> Ingested:
        raise AssertionError("not used here")

    async def quarantine(self, key: MailKey, raw: bytes, reason: str, attempts: int) -> int:
        raise AssertionError("not used here")


def bodies(count: int, size: int = 100) -> list[tuple[int, bytes]]:
    return [(uid, b"%d:" % uid + b"x" * size) for uid in range(1, count + 1)]


def take(ahead: ParseAhead, mails: list[tuple[int, bytes]], uid: int) -> object:
    """What the batch does: take a mail with the very bytes that were fed."""
    return ahead.take(uid, dict(mails).get(uid, b""))


async def idle() -> None:
    """Let the loop run, as it does while the batch awaits a COMMIT."""
    for _ in range(3 * AHEAD_COUNT):
        await asyncio.sleep(0)


async def test_prepares_ahead_while_the_loop_waits_and_hands_it_over() -> None:
    handler, mails = Preparer(), bodies(5)
    ahead = ParseAhead(handler)
    ahead.feed(mails)
    assert handler.seen == []  # nothing before the loop turns
    await idle()
    assert handler.seen == [raw for _, raw in mails]
    assert take(ahead, mails, 1) == ("prepared", mails[0][1])
    assert take(ahead, mails, 1) is None  # handed over once; a retry parses again
    assert take(ahead, mails, 99) is None
    assert ahead.take(2, bytes(bytearray(mails[1][1]))) is None  # a copy: never trusted
    ahead.close()


async def test_holds_at_most_ahead_count_mails() -> None:
    handler, mails = Preparer(), bodies(AHEAD_COUNT + 10)
    ahead = ParseAhead(handler)
    ahead.feed(mails)
    await idle()
    assert len(handler.seen) == AHEAD_COUNT
    take(ahead, mails, 1), take(ahead, mails, 2)
    await idle()
    assert len(handler.seen) == AHEAD_COUNT + 2  # room for two more
    ahead.close()


async def test_holds_at_most_ahead_bytes_but_a_bigger_mail_alone() -> None:
    handler = Preparer()
    mails = [
        (1, b"a" * (AHEAD_BYTES // 2 + 1)),
        (2, b"b" * (AHEAD_BYTES // 2 + 1)),
        (3, b"c" * (AHEAD_BYTES + 1)),
        (4, b"d"),
    ]
    ahead = ParseAhead(handler)
    ahead.feed(mails)
    await idle()
    assert handler.seen == [mails[0][1]]  # the second would pass AHEAD_BYTES
    take(ahead, mails, 1)
    await idle()
    assert len(handler.seen) == 2
    take(ahead, mails, 2)
    await idle()
    assert handler.seen[-1] == mails[2][1]  # bigger than the bound: prepared, held alone
    assert len(handler.seen) == 3
    take(ahead, mails, 3)
    await idle()
    assert len(handler.seen) == 4
    ahead.close()


async def test_chunks_fed_later_are_prepared_while_the_loop_waits() -> None:
    """The next chunk arrives while the batch works on this one: it is prepared at the
    next wait (the COMMIT at the end of this chunk), before the batch reaches it."""
    handler, mails = Preparer(), bodies(6)
    ahead = ParseAhead(handler)
    ahead.feed(mails[:3])
    await idle()
    for uid in (1, 2, 3):
        assert take(ahead, mails, uid) is not None
    await idle()  # nothing to do: it waits
    ahead.feed(mails[3:])
    await idle()
    assert handler.seen == [raw for _, raw in mails]
    taken = [take(ahead, mails, uid) for uid in (4, 5, 6)]
    assert taken == [("prepared", raw) for _, raw in mails[3:]]
    ahead.close()


async def test_mails_already_taken_are_skipped_and_failures_left_to_ingest() -> None:
    handler = Preparer()
    mails = [(1, b"one"), (2, b"boom"), (3, b"three"), (4, b"four")]
    ahead = ParseAhead(handler)
    ahead.feed(mails)
    assert take(ahead, mails, 1) is None  # the batch got there first: ingest parses it itself
    await idle()
    assert handler.seen == [b"boom", b"three", b"four"]
    assert take(ahead, mails, 2) is None  # prepare failed: ingest meets the error and handles it
    assert take(ahead, mails, 3) == ("prepared", b"three")
    assert ahead._taken == {2}  # what it remembers stays small: not every mail of a batch
    ahead.close()


async def test_close_stops_it() -> None:
    handler = Preparer()
    ahead = ParseAhead(handler)
    mails = bodies(AHEAD_COUNT + 5)
    ahead.feed(mails)
    await asyncio.sleep(0)
    ahead.close()
    await idle()
    assert len(handler.seen) <= 1
    assert take(ahead, mails, 1) is None  # nothing is held after close
    ahead.feed(bodies(3))  # a prefetch that ended after the batch: ignored
    await idle()
    assert len(handler.seen) <= 1


async def test_engine_prepares_what_ingest_would_parse() -> None:
    mail = (
        b"From: Ana <ana@example.com>\r\nSubject: =?utf-8?q?Factura_n=C2=BA_3?=\r\n"
        b"Auto-Submitted: auto-replied\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nHola\r\n"
    )
    for strip in (True, False):
        engine = CaseEngine(None, EngineSettings("Default", extract_attachments=strip))  # type: ignore[arg-type]
        future = engine.prepare(mail)  # started in a parse worker, not on the event loop
        assert isinstance(future, asyncio.Future)
        prepared = await future
        assert isinstance(prepared, Prepared)
        assert prepared.mail == parse(mail, strip=strip)
        assert prepared.mail.subject == "Factura nº 3"
        assert prepared.sha256 == hashlib.sha256(mail).hexdigest()
        assert prepared.automatic is not None and "auto" in prepared.automatic
    big = b"Subject: big\r\n\r\n" + b"x" * (2 * 1024 * 1024)  # any size: in the worker too
    assert (await engine.prepare(big)).mail.subject == "big"


async def test_ingest_uses_the_prepared_mail(store: SqliteStore) -> None:
    """What was parsed ahead is what gets stored: no second parse of the same bytes."""
    engine = CaseEngine(store, EngineSettings("Default", extract_attachments=True))
    raw = b"From: ana@example.com\r\nSubject: from the bytes\r\n\r\nHola\r\n"
    prepared = engine.prepare(raw.replace(b"from the bytes", b"parsed ahead"))
    done = await engine.ingest(MailKey("Default", "IMAP/New", "1", "1"), raw, prepared)
    rows = await store.query("SELECT subject FROM cases WHERE id = ?", (done.case_id,))
    assert rows[0][0] == "parsed ahead"
    raw = raw.replace(b"Hola", b"Otra")  # not a duplicate of the first
    await engine.ingest(MailKey("Default", "IMAP/New", "1", "2"), raw, ("not", "a mail"))
    rows = await store.query("SELECT subject FROM messages ORDER BY id DESC LIMIT 1")
    assert rows[0][0] == "from the bytes"  # anything else: parsed here


class Counting:
    """The real engine, counting the mails that reached `ingest` already parsed."""

    def __init__(self, inner: CaseEngine) -> None:
        self.inner, self.prepared, self.total = inner, 0, 0

    def prepare(self, raw: bytes) -> object:
        return self.inner.prepare(raw)

    async def ingest(self, key: MailKey, raw: bytes, prepared: object = None) -> Ingested:
        self.total += 1
        self.prepared += prepared is not None
        return await self.inner.ingest(key, raw, prepared)

    async def quarantine(self, key: MailKey, raw: bytes, reason: str, attempts: int) -> int:
        return await self.inner.quarantine(key, raw, reason, attempts)


async def test_a_real_batch_ingests_mails_parsed_ahead(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    """Across chunks (10, 20, 10 mails) and their COMMITs, some mails arrive parsed; every
    mail becomes one case either way."""
    user, db = mailbox_user, tmp_path / "s.sqlite3"
    dovecot.create_folder(user, "IMAP/Done")
    dovecot.append_many(
        user, "IMAP/New", [make_mail(i, sender=f"p{i}@example.com") for i in range(40)]
    )
    cfg = listener_config(dovecot, user)
    async with Harness(cfg, db, FakeClock()) as h:
        listener = build_listener(cfg, h.store, h.clock, h.stop)
        assert isinstance(listener.handler, CaseEngine)
        counting = Counting(listener.handler)
        listener.handler = counting
        result = await listener.run_once()
    assert result.ingested == counting.total == 40
    assert 0 < counting.prepared <= 40
    assert db_rows(db, "SELECT count(*), count(DISTINCT subject) FROM cases") == [(40, 40)]
    assert dovecot.count(user, "IMAP/Done") == 40


async def test_all_listeners_together_hold_at_most_the_process_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twenty listeners of one daemon: each may hold one mail, the rest share one bound."""
    monkeypatch.setattr(parse_ahead, "AHEAD_TOTAL_BYTES", 30_000)
    handlers = [Preparer() for _ in range(20)]
    aheads = [ParseAhead(handler) for handler in handlers]
    for ahead in aheads:
        ahead.feed(bodies(30, size=997))  # 1,000 bytes each
    await idle()
    held = [len(handler.seen) for handler in handlers]
    assert all(count >= 1 for count in held)  # nobody is starved
    assert 20 <= sum(held) <= 30  # 30,000 bytes between them, one each at least
    for ahead in aheads[:10]:
        ahead.close()  # what they held is free for the others
    await idle()
    assert sum(len(h.seen) for h in handlers[10:]) > sum(held[10:])
    for ahead in aheads[10:]:
        ahead.close()
