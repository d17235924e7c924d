"""The embedded store: SQLite through aiosqlite, WAL, synchronous=FULL.

FULL durability matters here: a mail is moved on the server right after its
transaction commits, so a commit lost to a power cut would be a lost mail.
One connection per process, and an asyncio lock makes every transaction
exclusive, since several listeners share the store.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from .errors import StoreError
from .sqlite_schema import MIGRATIONS
from .store import (
    CaseRef,
    CaseSummary,
    LedgerKey,
    NewAttachment,
    NewCase,
    NewMessage,
)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


class SqliteTransaction:
    """The writes of one message; see `store.Transaction`."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, params: Any = ()) -> aiosqlite.Cursor:
        """Raw access for SQL routing procedures that run inside the same transaction."""
        return await self._db.execute(sql, params)

    async def find_duplicate(self, listener: str, sha256: str, message_id: str | None) -> int | None:
        async with self._db.execute(
            "SELECT message_row FROM ledger WHERE listener = ? AND sha256 = ?"
            " AND message_id IS ? LIMIT 1",
            (listener, sha256, message_id),
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else None

    async def case_of_message(self, message_row: int) -> CaseRef:
        async with self._db.execute(
            "SELECT c.id, c.case_number FROM messages m JOIN cases c ON c.id = m.case_id"
            " WHERE m.id = ?",
            (message_row,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            raise StoreError(f"message row {message_row} has no case")
        return CaseRef(int(row[0]), str(row[1]))

    async def create_case(self, case: NewCase) -> CaseRef:
        now = _now()
        cur = await self._db.execute(
            "INSERT INTO cases (case_number, listener, process, customer_id, sender, sender_name,"
            " subject, normalized_subject, status, created_at, updated_at)"
            " VALUES (hex(randomblob(8)), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (case.listener, case.process, case.customer_id, case.sender, case.sender_name,
             case.subject, case.normalized_subject, case.status, now, now),
        )
        case_id = int(cur.lastrowid or 0)
        number = f"{case_id:06d}"
        await self._db.execute("UPDATE cases SET case_number = ? WHERE id = ?", (number, case_id))
        return CaseRef(case_id, number)

    async def add_message(self, case_id: int, message: NewMessage) -> int:
        m = message
        cur = await self._db.execute(
            "INSERT INTO messages (case_id, listener, message_id, in_reply_to, sender, sender_name,"
            " subject, sent_at, received_at, sha256, size, parsed, automatic, body_text,"
            " body_html, defects, stored_mime, raw)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (case_id, m.listener, m.message_id, m.in_reply_to, m.sender, m.sender_name,
             m.subject, _iso(m.sent_at), _iso(m.received_at), m.sha256, len(m.raw),
             int(m.parsed), m.automatic, m.body_text, m.body_html, m.defects, m.stored_mime,
             m.raw),
        )
        await self._db.execute(
            "UPDATE cases SET updated_at = ? WHERE id = ?", (_now(), case_id)
        )
        return int(cur.lastrowid or 0)

    async def add_attachment(self, message_row: int, attachment: NewAttachment) -> None:
        a = attachment
        await self._db.execute(
            "INSERT INTO attachments (message_row, filename, content_type, size, content_id,"
            " inline, content) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (message_row, a.filename, a.content_type, len(a.content), a.content_id,
             int(a.inline), a.content),
        )

    async def add_ledger(self, key: LedgerKey, message_row: int, message: NewMessage) -> None:
        await self._db.execute(
            "INSERT INTO ledger (listener, folder, uidvalidity, uid, message_row, message_id,"
            " sha256, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'committed', ?)",
            (key.listener, key.folder, key.uidvalidity, key.uid, message_row,
             message.message_id, message.sha256, _now()),
        )


class SqliteStore:
    """See `store.Store`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Open (creating 0600 if new) and migrate to the latest schema."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA synchronous=FULL")
            await self._db.execute("PRAGMA foreign_keys=ON")
            await self._db.execute("PRAGMA busy_timeout=10000")
            await self._migrate()
        except (OSError, aiosqlite.Error) as exc:
            await self.close()
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc

    async def _migrate(self) -> None:
        db = self._conn()
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise StoreError(
                f"store {self.path} has schema {version}, newer than this program knows "
                f"({len(MIGRATIONS)}); upgrade engage-listener"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await db.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version={number}; COMMIT;")

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTransaction]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""
        async with self._lock:
            db = self._conn()
            try:
                await db.execute("BEGIN IMMEDIATE")
            except aiosqlite.Error as exc:
                raise StoreError(f"store unavailable: {exc}") from exc
            try:
                yield SqliteTransaction(db)
                await db.execute("COMMIT")
            except aiosqlite.Error as exc:
                await _rollback(db)
                raise StoreError(f"store write failed: {exc}") from exc
            except BaseException:
                await _rollback(db)
                raise

    async def known_uids(
        self, listener: str, folder: str, uidvalidity: int, uids: Sequence[int]
    ) -> set[int]:
        if not uids:
            return set()
        found: set[int] = set()
        async with self._lock:
            db = self._conn()
            for start in range(0, len(uids), 500):
                chunk = list(uids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                async with db.execute(
                    f"SELECT uid FROM ledger WHERE listener = ? AND folder = ? "  # noqa: S608
                    f"AND uidvalidity = ? AND uid IN ({marks})",
                    (listener, folder, uidvalidity, *chunk),
                ) as cur:
                    found.update(int(r[0]) for r in await cur.fetchall())
        return found

    async def mark_done(
        self, listener: str, folder: str, uidvalidity: int, uids: Sequence[int], state: str
    ) -> None:
        now = _now()
        async with self.transaction() as tx:
            for uid in uids:
                await tx.execute(
                    "UPDATE ledger SET state = ?, done_at = ? WHERE listener = ? AND folder = ?"
                    " AND uidvalidity = ? AND uid = ?",
                    (state, now, listener, folder, uidvalidity, uid),
                )

    async def list_cases(self) -> list[CaseSummary]:
        sql = (
            "SELECT c.id, c.case_number, c.listener, c.sender, c.subject, c.status, c.inbox,"
            " (SELECT count(*) FROM messages m WHERE m.case_id = c.id),"
            " (SELECT count(*) FROM attachments a JOIN messages m ON a.message_row = m.id"
            "  WHERE m.case_id = c.id), c.created_at FROM cases c ORDER BY c.id"
        )
        async with self._lock, self._conn().execute(sql) as cur:
            rows = await cur.fetchall()
        return [
            CaseSummary(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]),
                        r[6], int(r[7]), int(r[8]), str(r[9]))
            for r in rows
        ]


async def _rollback(db: aiosqlite.Connection) -> None:
    try:
        await db.execute("ROLLBACK")
    except aiosqlite.Error:  # no transaction left to roll back
        return
