"""SQLite schema migrations: a store written by the previous schema opens and keeps working.

Migration 6 turned the ledger's key into the source-neutral (mailbox, epoch, item):
IMAP rows keep folder, UIDVALIDITY and UID as text; POP3 rows, written as
("#pop3:" + UIDL, 0, generation), become ("", generation, UIDL); quarantine replays
("#quarantine", 0, id) become ("#quarantine", "", id).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engage_listener.config.model import StoreConfig
from engage_listener.sources.pop3.ledger import ledger_key, seen
from engage_listener.store.interface import MailKey
from engage_listener.store.open import open_store
from engage_listener.store.sqlite.schema import MIGRATIONS

STAMP = "2024-03-10T10:00:00+00:00"


def _schema_5_store(path: Path) -> None:
    """A store as version 5 of the schema left it, with a row of each kind of key."""
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:5]:
        db.executescript(script)
    db.execute("PRAGMA user_version=5")
    db.execute(
        "INSERT INTO messages (id, listener, sender, subject, received_at, sha256, size,"
        " parsed, raw) VALUES (1, 'P', 'a@example.com', 's', ?, 'h1', 5, 1, x'0102030405')",
        (STAMP,),
    )
    db.execute(
        "INSERT INTO quarantine (id, listener, folder, uidvalidity, uid, sha256, reason,"
        " attempts, created_at, raw) VALUES (1, 'P', '#pop3:big', 0, 0, 'h2',"
        " 'oversize: 9 bytes', 1, ?, x'01')",
        (STAMP,),
    )
    ledger = (
        "INSERT INTO ledger (listener, folder, uidvalidity, uid, message_row, quarantine_id,"
        " sha256, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    db.executemany(
        ledger,
        [
            ("I", "INBOX", 1700, 42, None, None, "h0", "moved", STAMP),
            ("P", "#pop3:u1", 0, 0, 1, None, "h1", "deleted", STAMP),
            ("P", "#pop3:u1", 0, 1, None, None, "h3", "committed", STAMP),
            ("P", "#pop3:big", 0, 0, None, 1, "h2", "quarantined", STAMP),
            ("I", "#quarantine", 0, 7, None, None, "h4", "committed", STAMP),
        ],
    )
    db.execute("INSERT INTO attempts VALUES ('P', '#pop3:u2', 0, 0, 2, 'boom', ?)", (STAMP,))
    db.execute(
        "INSERT INTO heartbeats (listener, state, pid, last_batch_at, updated_at)"
        " VALUES ('I', 'idle', 1, NULL, ?)",
        (STAMP,),
    )
    db.commit()
    db.close()


async def test_a_schema_5_store_is_migrated_and_keeps_its_ledger(tmp_path: Path) -> None:
    path = tmp_path / "cases.sqlite3"
    _schema_5_store(path)
    store = await open_store(StoreConfig(path))
    try:
        assert await store.known_states("I", "INBOX", "1700", ["42", "43"]) == {"42": "moved"}
        assert await store.known_states("I", "#quarantine", "", ["7"]) == {"7": "committed"}
        u1 = await seen(store, "P", "u1")  # what the POP3 listener reads before a DELE
        assert [(s.generation, s.state, s.sha256, s.size) for s in u1] == [
            (0, "deleted", "h1", 5),
            (1, "committed", "h3", None),
        ]
        assert [(s.generation, s.state) for s in await seen(store, "P", "big")] == [
            (0, "quarantined")
        ]
        assert ledger_key("P", "u2") == MailKey("P", "", "0", "u2")
        assert await store.record_failure(ledger_key("P", "u2"), "again") == 3  # count kept
        [entry] = await store.list_quarantine()
        assert (entry.mailbox, entry.item, entry.reason) == ("", "big", "oversize: 9 bytes")
        [beat] = await store.heartbeats()
        assert (beat.listener, beat.state) == ("I", "idle")
    finally:
        await store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        columns = {r[1] for r in db.execute("PRAGMA table_info(heartbeats)")}
        assert "last_batch_at" not in columns
        quarantine = {r[1] for r in db.execute("PRAGMA table_info(quarantine)")}
        assert {"mailbox", "epoch", "item"} <= quarantine
        assert not {"folder", "uidvalidity", "uid"} & quarantine
    finally:
        db.close()


async def test_a_new_store_gets_every_migration(tmp_path: Path) -> None:
    store = await open_store(StoreConfig(tmp_path / "new.sqlite3"))
    await store.close()
    db = sqlite3.connect(tmp_path / "new.sqlite3")
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    finally:
        db.close()


async def test_cases_closed_before_schema_8_take_their_last_change_as_close_time(
    tmp_path: Path,
) -> None:
    """Issue 18.2: cases closed by hand-written SQL keep a close time (their updated_at),
    so ReopenDays counts from then; open cases have none."""
    path = tmp_path / "seven.sqlite3"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:7]:
        db.executescript(script)
    db.execute("PRAGMA user_version=7")
    for n, status in ((1, "closed"), (2, "open")):
        db.execute(
            "INSERT INTO cases (id, case_number, listener, sender, subject, status,"
            " created_at, updated_at) VALUES (?, ?, 'L', 'a@example.com', 's', ?, ?, ?)",
            (n, f"00000{n}", status, STAMP, STAMP),
        )
    db.commit()
    db.close()
    store = await open_store(StoreConfig(path))
    try:
        closed, still_open = await store.case_detail(1), await store.case_detail(2)
    finally:
        await store.close()
    assert closed is not None and (closed.status, closed.closed_at) == ("closed", STAMP)
    assert still_open is not None and still_open.closed_at is None
