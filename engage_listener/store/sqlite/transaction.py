"""The writes and look-ups of one message, inside one SQLite transaction."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from engage_listener.errors import StoppedEarly, StoreError
from engage_listener.mail.fields import recipient_key
from engage_listener.observe.logs import scrub
from engage_listener.store.common_sql import case_number, now_iso
from engage_listener.store.interface import (
    AsyncExecute,
    CaseCandidate,
    CaseInfo,
    CaseRef,
    Customer,
    MailKey,
    MailSeen,
    NewAck,
    NewAttachment,
    NewCase,
    NewMessage,
    SyncExecute,
)
from engage_listener.store.records import CaseStatus, LedgerState, OutboxState, SubjectKey
from engage_listener.store.sqlite.connection import AsyncCursor, Connection
from engage_listener.store.sqlite.follow_ups import FollowUpQueries
from engage_listener.store.sqlite.operator_tx import OperatorWrites
from engage_listener.store.sqlite.webhooks import WebhookWrites

__all__ = ["SqliteTransaction", "now_iso"]

T = TypeVar("T")
BLOB_PIECE = 1 << 20  # blobs larger than this are written piece by piece
PROGRESS_STEPS = 1000  # SQLite VM steps between two deadline checks of an inline hook

# New mail may still join open cases and new ones awaiting approval (RequireApproval).


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _scrubbed(params: Any) -> Any:
    """Parameters with every registered secret masked in their text values."""
    if isinstance(params, dict):
        return {k: scrub(v) if isinstance(v, str) else v for k, v in params.items()}
    if isinstance(params, (tuple, list)):
        return tuple(scrub(v) if isinstance(v, str) else v for v in params)
    return params


class SqliteTransaction(FollowUpQueries, OperatorWrites, WebhookWrites):
    """See `store.Transaction`; only valid inside `SqliteStore.transaction()`."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    async def execute(self, sql: str, params: Any = ()) -> AsyncCursor:
        """One statement in this transaction (this store's own SQL; tests)."""
        if "last_error" in sql:  # error text (outbox, attempts, heartbeats): no secret in it
            params = _scrubbed(params)
        return self._db.execute(sql, params)

    async def run_sync(self, work: Callable[[SyncExecute], T]) -> T:
        """`work(execute)` on the store's thread (SQL hooks: arbitrary, interruptible SQL)."""
        return await self._db.in_thread(work, self._db.raw.execute)

    def awaiting(self, stop_at: float) -> AsyncExecute | None:
        """None: SQLite runs in this process (`run_inline`, else `run_sync`)."""
        return None

    def run_inline(self, work: Callable[[SyncExecute], T], stop_at: float) -> T:
        """`work(execute)` on the event loop (quick SQL hooks), inside a savepoint. A
        statement still running at `stop_at` is aborted: the work is undone and
        `StoppedEarly` raised, or `StoreError` if the abort made SQLite roll back the whole
        transaction (it does for an interrupted write)."""
        raw = self._db.raw
        raw.execute("SAVEPOINT engage_inline")
        raw.set_progress_handler(lambda: time.monotonic() >= stop_at, PROGRESS_STEPS)
        try:
            result = work(raw.execute)
        except Exception as exc:
            raw.set_progress_handler(None, 0)  # before the undo: it would abort that too
            late = time.monotonic() >= stop_at
            if not raw.in_transaction:
                if late:
                    raise StoreError(f"stopped inline, the transaction is gone: {exc}") from exc
                raise
            raw.execute("ROLLBACK TO engage_inline")
            raw.execute("RELEASE engage_inline")
            if late:
                raise StoppedEarly(str(exc)) from exc
            raise
        finally:
            raw.set_progress_handler(None, 0)
        raw.execute("RELEASE engage_inline")
        return result

    def interrupt(self) -> None:
        self._db.interrupt()

    def _insert(self, table: str, values: dict[str, Any]) -> int:
        """INSERT one row; its big blobs are written afterwards in pieces.

        Binding a blob makes SQLite take a private copy of it: a 50 MB mail would be
        held twice. A zeroblob of the right size, then incremental writes, avoid that.
        """
        big = {
            name: value
            for name, value in values.items()
            if isinstance(value, bytes | bytearray) and len(value) > BLOB_PIECE
        }
        marks = ", ".join("zeroblob(?)" if name in big else "?" for name in values)
        params = [len(big[name]) if name in big else value for name, value in values.items()]
        cur = self._db.raw.execute(
            f"INSERT INTO {table} ({', '.join(values)}) VALUES ({marks})",  # noqa: S608
            params,
        )
        row = int(cur.lastrowid or 0)
        for name, value in big.items():
            with self._db.raw.blobopen(table, name, row) as blob:
                view = memoryview(value)
                for start in range(0, len(value), BLOB_PIECE):
                    blob.write(view[start : start + BLOB_PIECE])
        return row

    async def _one(self, sql: str, params: Any = ()) -> Any:
        return await (await self.execute(sql, params)).fetchone()

    # ----- look-ups ---------------------------------------------------------------
    async def find_duplicate(
        self, listener: str, sha256: str, message_id: str | None
    ) -> int | None:
        row = await self._one(
            "SELECT message_row FROM ledger WHERE listener = ? AND sha256 = ?"
            " AND message_id IS ? AND message_row IS NOT NULL LIMIT 1",
            (listener, sha256, message_id),
        )
        return int(row[0]) if row else None

    async def find_arrival(
        self,
        listener: str,
        sha256: str,
        message_id: str | None,
        address: str,
        subject: SubjectKey | None = None,
    ) -> MailSeen:  # several reads: microseconds each here
        duplicate = await self.find_duplicate(listener, sha256, message_id)
        customer = await self.find_customer(address) if address else None
        if subject is None:
            return MailSeen(duplicate, customer)
        by_subject = await self.cases_by_subject(
            customer.id if customer else None, subject.process, subject.normalized
        )
        return MailSeen(duplicate, customer, by_subject)

    async def case_of_message(self, message_row: int) -> CaseRef | None:
        row = await self._one(
            "SELECT c.id, c.case_number FROM messages m JOIN cases c ON c.id = m.case_id"
            " WHERE m.id = ?",
            (message_row,),
        )
        return CaseRef(int(row[0]), str(row[1])) if row else None

    async def find_customer(self, address: str) -> Customer | None:
        row = await self._one(
            "SELECT customer_id FROM customer_addresses WHERE address = ?", (address.lower(),)
        )
        return await self.get_customer(int(row[0])) if row else None

    async def get_customer(self, customer_id: int) -> Customer | None:
        row = await self._one("SELECT id, name FROM customers WHERE id = ?", (customer_id,))
        if row is None:
            return None
        cur = await self.execute(
            "SELECT address FROM customer_addresses WHERE customer_id = ? ORDER BY address",
            (customer_id,),
        )
        addresses = tuple(str(r[0]) for r in await cur.fetchall())
        return Customer(int(row[0]), str(row[1]), addresses)

    async def create_customer(self, name: str, address: str, source: str) -> Customer:
        cur = await self.execute(
            "INSERT INTO customers (name, source, created_at) VALUES (?, ?, ?)",
            (name or address, source, now_iso()),
        )
        customer_id = int(cur.lastrowid or 0)
        await self.execute(
            "INSERT INTO customer_addresses (address, customer_id) VALUES (?, ?)",
            (address.lower(), customer_id),
        )
        return Customer(customer_id, name or address, (address.lower(),))

    async def open_case_by_subject(
        self, customer_id: int | None, process: str | None, normalized_subject: str
    ) -> CaseRef | None:
        if customer_id is None or not normalized_subject:
            return None
        row = await self._one(
            "SELECT id, case_number FROM cases WHERE customer_id = ? AND process IS ?"
            " AND normalized_subject = ? AND status IN ('open', 'pending-approval')"
            " ORDER BY id DESC LIMIT 1",
            (customer_id, process, normalized_subject),
        )
        return CaseRef(int(row[0]), str(row[1])) if row else None

    async def cases_by_subject(
        self, customer_id: int | None, process: str | None, normalized_subject: str
    ) -> tuple[CaseRef | None, CaseCandidate | None]:  # two reads: microseconds each here
        found = await self.open_case_by_subject(customer_id, process, normalized_subject)
        return found, await self.closed_case_by_subject(customer_id, process, normalized_subject)

    async def case_info(self, case_id: int) -> CaseInfo:
        row = await self._one(
            "SELECT id, case_number, process, status, inbox, subject, customer_id, priority"
            " FROM cases WHERE id = ?",
            (case_id,),
        )
        cur = await self.execute(
            "SELECT tag FROM case_tags WHERE case_id = ? ORDER BY tag", (case_id,)
        )
        tags = tuple(str(r[0]) for r in await cur.fetchall())
        return CaseInfo(
            int(row[0]), str(row[1]), row[2], row[3], row[4], str(row[5]), row[6], row[7], tags
        )

    async def message_new_text(self, message_row: int) -> str | None:
        row = await self._one("SELECT new_text FROM messages WHERE id = ?", (message_row,))
        return None if row is None or row[0] is None else str(row[0])

    # ----- writes -------------------------------------------------------------------
    async def create_case(self, case: NewCase) -> CaseRef:
        now = now_iso()
        cur = await self.execute(
            "INSERT INTO cases (case_number, listener, process, customer_id, related_case_id,"
            " sender, sender_name, subject, normalized_subject, status, created_at, updated_at)"
            " VALUES (hex(randomblob(8)), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                case.listener,
                case.process,
                case.customer_id,
                case.related_case_id,
                case.sender,
                case.sender_name,
                case.subject,
                case.normalized_subject,
                case.status,
                now,
                now,
            ),
        )
        case_id = int(cur.lastrowid or 0)
        number = case_number(case_id)
        await self.execute("UPDATE cases SET case_number = ? WHERE id = ?", (number, case_id))
        return CaseRef(case_id, number)

    async def add_message(self, case_id: int | None, message: NewMessage) -> int:
        m = message
        row = self._insert(
            "messages",
            {
                "case_id": case_id,
                "listener": m.listener,
                "message_id": m.message_id,
                "in_reply_to": m.in_reply_to,
                "sender": m.sender,
                "sender_name": m.sender_name,
                "subject": m.subject,
                "sent_at": _iso(m.sent_at),
                "received_at": _iso(m.received_at),
                "sha256": m.sha256,
                "size": len(m.raw),
                "parsed": int(m.parsed),
                "automatic": m.automatic,
                "ignored": int(m.ignored),
                "body_text": m.body_text,
                "new_text": m.new_text,
                "body_html": m.body_html,
                "defects": m.defects,
                "stored_mime": m.stored_mime,
                "raw": m.raw,
            },
        )
        if case_id is not None:
            await self.execute("UPDATE cases SET updated_at = ? WHERE id = ?", (now_iso(), case_id))
        return row

    async def add_attachment(self, message_row: int, attachment: NewAttachment) -> None:
        a = attachment
        self._insert(
            "attachments",
            {
                "message_row": message_row,
                "filename": a.filename,
                "content_type": a.content_type,
                "size": len(a.content),
                "content_id": a.content_id,
                "inline": int(a.inline),
                "raw_of_message": int(a.raw_of_message),
                "content": b"" if a.raw_of_message else a.content,
            },
        )

    async def apply_decision(
        self,
        case_id: int,
        message_row: int,
        inbox: str | None,
        priority: int | None,
        tags: Sequence[str],
        acknowledge: bool | None,
        *,
        process: str | None = None,
        status: CaseStatus | None = None,
    ) -> None:
        if inbox is not None or priority is not None or process is not None or status:
            await self.execute(
                "UPDATE cases SET inbox = coalesce(?, inbox), priority = coalesce(?, priority),"
                " process = coalesce(?, process), status = coalesce(?, status),"
                " closed_at = CASE WHEN coalesce(?, status) = 'closed'"
                " THEN coalesce(closed_at, ?) END WHERE id = ?",
                (inbox, priority, process, status, status, now_iso(), case_id),
            )
        for tag in tags:
            await self.execute(
                "INSERT OR IGNORE INTO case_tags (case_id, tag) VALUES (?, ?)", (case_id, tag)
            )
        if acknowledge is not None:
            await self.execute(
                "UPDATE messages SET acknowledge = ? WHERE id = ?", (int(acknowledge), message_row)
            )

    async def add_outbox(
        self, ack: NewAck, *, state: OutboxState = "pending", last_error: str | None = None
    ) -> int:
        cur = await self.execute(
            "INSERT INTO outbox (listener, case_id, message_row, recipient, recipient_key,"
            " subject, smtp_message_id, mime, state, last_error, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ack.listener,
                ack.case_id,
                ack.message_row,
                ack.recipient.lower(),
                recipient_key(ack.recipient),
                ack.subject,
                ack.smtp_message_id,
                ack.mime,
                state,
                last_error,
                now_iso(),
            ),
        )
        return int(cur.lastrowid or 0)

    async def add_ledger(self, key: MailKey, message_row: int, message: NewMessage) -> None:
        await self._ledger(key, message_row, None, message, "committed")

    async def add_quarantine(
        self, key: MailKey, raw: bytes, message: NewMessage, reason: str, attempts: int
    ) -> int:
        quarantine_id = self._insert(
            "quarantine",
            {
                "listener": key.listener,
                "mailbox": key.mailbox,
                "epoch": key.epoch,
                "item": key.item,
                "message_id": message.message_id,
                "sender": message.sender,
                "subject": message.subject,
                "sha256": message.sha256,
                "reason": scrub(reason),
                "attempts": attempts,
                "created_at": now_iso(),
                "raw": raw,
            },
        )
        await self._ledger(key, None, quarantine_id, message, "quarantined")
        return quarantine_id

    async def _ledger(
        self,
        key: MailKey,
        message_row: int | None,
        quarantine_id: int | None,
        message: NewMessage,
        state: LedgerState,
    ) -> None:
        await self.execute(
            "INSERT INTO ledger (listener, mailbox, epoch, item, message_row, quarantine_id,"
            " message_id, sha256, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key.listener,
                key.mailbox,
                key.epoch,
                key.item,
                message_row,
                quarantine_id,
                message.message_id,
                message.sha256,
                state,
                now_iso(),
            ),
        )
        await self.execute(
            "DELETE FROM attempts WHERE listener = ? AND mailbox = ? AND epoch = ? AND item = ?",
            (key.listener, key.mailbox, key.epoch, key.item),
        )
