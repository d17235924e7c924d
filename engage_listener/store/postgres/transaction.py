"""The writes and look-ups of one message, inside one PostgreSQL transaction.

Decisions:

* Binary results (`binary=True`): raw mail and attachments arrive as bytes, not as hex
  text twice their size (bench/README.md, "PostgreSQL driver").
* Fencing: a store built with an `owner` (the daemon's id) writes a mail's ledger row only
  while that daemon holds the listener's lease (`listener_leases`: owner, and expires_at
  later than the clock now), checked in the same transaction with `FOR KEY SHARE`: any
  UPDATE that changes the row's owner or fence (a take-over, a release, whatever way the
  lease manager writes it: (listener, owner, fence) is a unique key) waits until this
  commit is done, so ownership cannot change between the check and the commit. A
  renewal by the owner (expires_at only) does not wait (service.leases, Decisions).
  `LeaseLost` rolls the mail back, so it is not moved on the server.
* The check is `engage_hold_lease` (schema migration 10), called by the ledger INSERT:
  a lease not held RAISEs, failing the statement and so the transaction. The fenced row
  is then a queued write like the unfenced one (it was a round trip of its own, waiting
  for a row back): sent with the next read or with the COMMIT, always before it, and
  the error is raised as `LeaseLost` there (`deferred.fenced`); in a group, possibly by
  the next mail's first read, whose undo then raises it too. Either way the mail's
  transaction (or the group's) rolls back and nothing of it commits.
* Statements go through the transaction's `Deferred` queue: writes whose result is not
  read (`_write`) are sent with the next read, in one round trip (see `deferred`).
* A case's number is its id from the `cases` identity sequence, unique across daemons
  (`case_number`, as SQLite's). The id is taken first (by the arrival, or alone), so the
  INSERT is queued and `case_info` of the new case is known without reading it.
* A message added to a case touches its `updated_at` (which also locks a joined case's
  row, see below) unless this transaction made the case: it was just written, and the
  statement (Python work in the driver, a row version on the server) is saved.
* `case_info` is remembered for the rest of the transaction: `create_case` makes it from
  its own RETURNING, and a read keeps it; every write of this transaction that can change
  a case (status, close, reopen, routing's decision, a hook's own SQL) forgets it. Another
  transaction cannot change it meanwhile: a new case is seen by no one else before the
  commit, and a case a mail joins is locked by its `updated_at` UPDATE (sent before the
  first read of its info). The engine asks for it two or three times a mail: each was a
  round trip.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg

from engage_listener.errors import WriteConflict
from engage_listener.observe.logs import scrub
from engage_listener.store.common_sql import case_number, now_iso
from engage_listener.store.interface import (
    AsyncExecute,
    CaseInfo,
    CaseRef,
    Customer,
    MailKey,
    NewAttachment,
    NewCase,
    NewMessage,
    SyncExecute,
)
from engage_listener.store.postgres import hooks
from engage_listener.store.postgres.arrival import (
    CUSTOMER,
    DUPLICATE,
    ArrivalReads,
    customer_row,
)
from engage_listener.store.postgres.deferred import Deferred
from engage_listener.store.postgres.follow_ups import FollowUpQueries
from engage_listener.store.postgres.rows import Column, insert_row, next_id
from engage_listener.store.postgres.transaction_more import MoreWrites
from engage_listener.store.postgres.webhooks import WebhookWrites
from engage_listener.store.records import CaseStatus, LedgerState

__all__ = ["HOLD_LEASE", "PostgresTransaction", "now_iso"]

T = TypeVar("T")
# (name, address, source) -> (customer id, whether it was made): `customers.make`
MakeCustomer = Callable[[str, str, str], Awaitable[tuple[int, bool]]]

# Fails the transaction unless the daemon holds the listener's lease (see Decisions).
HOLD_LEASE = "SELECT engage_hold_lease(%s, %s)"

# What `CaseInfo` holds but the tags, in its order (case_info, create_case's RETURNING).
_INFO = "id, case_number, process, status, inbox, subject, customer_id, priority"


def _info(row: Any, tags: tuple[str, ...]) -> CaseInfo:
    return CaseInfo(
        int(row[0]), str(row[1]), row[2], row[3], row[4], str(row[5]),
        None if row[6] is None else int(row[6]), row[7], tags,
    )  # fmt: skip


# The ledger row, and the end of the mail's attempts; {where}: _FENCED or nothing.
_LEDGER = (
    "WITH done AS (DELETE FROM attempts WHERE listener = %s AND mailbox = %s"
    " AND epoch = %s AND item = %s) INSERT INTO ledger (listener, mailbox, epoch, item,"
    " message_row, quarantine_id, message_id, sha256, state, created_at)"
    " SELECT %s, %s, %s, %s, %s::bigint, %s::bigint, %s, %s, %s, %s{where}"
)
_FENCED = " WHERE engage_hold_lease(%s, %s)"  # true, or the statement fails


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _texts(**values: str | None) -> list[Column]:
    return [Column(name, "text", value) for name, value in values.items()]


class PostgresTransaction(ArrivalReads, FollowUpQueries, MoreWrites, WebhookWrites):
    """See `store.Transaction`; only valid inside `PostgresStore.transaction()`."""

    def __init__(self, deferred: Deferred, owner: str | None, make_customer: MakeCustomer) -> None:
        self._deferred = deferred
        self._make_customer = make_customer  # the store's: see `customers`
        self._conn = deferred.conn
        self._owner = owner
        self._infos: dict[int, CaseInfo] = {}  # see Decisions
        self._taken_ids()  # see arrival
        self._opened: set[int] = set()  # cases this transaction made (see Decisions)

    def _forget(self, case_id: int | None = None) -> None:
        """A write that may change case `case_id` (None: any case) was made."""
        if case_id is None:
            self._infos.clear()
        else:
            self._infos.pop(case_id, None)

    async def execute(self, sql: str, params: Any = ()) -> psycopg.AsyncCursor[Any]:
        """One statement (psycopg's %s placeholders) in this transaction, after the queued."""
        return await self._deferred.run(sql, params)

    def _write(self, sql: str, params: Any = ()) -> None:
        """A statement whose result nobody reads: sent with the next (see `deferred`)."""
        self._deferred.add(sql, params)

    async def _one(self, sql: str, params: Any = ()) -> Any:
        return await (await self.execute(sql, params)).fetchone()

    async def _all(self, sql: str, params: Any = ()) -> list[Any]:
        return await (await self.execute(sql, params)).fetchall()

    # ----- operators' SQL hooks -----------------------------------------------------
    async def run_sync(self, work: Callable[[SyncExecute], T]) -> T:
        self._forget()  # the operator's SQL may change any case
        await self._deferred.flush()
        return await hooks.run_sync(self._conn, work)

    def run_inline(self, work: Callable[[SyncExecute], T], stop_at: float) -> T:
        self._forget()
        return hooks.run_inline(self._conn, work, stop_at, self._deferred)

    def awaiting(self, stop_at: float) -> AsyncExecute | None:
        self._forget()
        return hooks.awaiting(self._conn, self._deferred, stop_at)

    def interrupt(self) -> None:
        """Cancel the running statement on the server. libpq's cancel opens a connection
        of its own and waits for it: on a thread, never on the event loop that calls this."""
        threading.Thread(target=self._conn.cancel, name="pg-cancel", daemon=True).start()

    # ----- look-ups -----------------------------------------------------------------
    async def find_duplicate(
        self, listener: str, sha256: str, message_id: str | None
    ) -> int | None:
        row = await self._one(DUPLICATE, (listener, sha256, message_id))
        return int(row[0]) if row else None

    async def case_of_message(self, message_row: int) -> CaseRef | None:
        row = await self._one(
            "SELECT c.id, c.case_number FROM messages m JOIN cases c ON c.id = m.case_id"
            " WHERE m.id = %s",
            (message_row,),
        )
        return CaseRef(int(row[0]), str(row[1])) if row else None

    async def find_customer(self, address: str) -> Customer | None:
        row = await self._one(
            f"SELECT {CUSTOMER} FROM customer_addresses a JOIN customers c"  # noqa: S608
            " ON c.id = a.customer_id WHERE a.address = %s",
            (address.lower(),),
        )
        return customer_row(row)

    async def get_customer(self, customer_id: int) -> Customer | None:
        row = await self._one(
            f"SELECT {CUSTOMER} FROM customers c WHERE c.id = %s",  # noqa: S608
            (customer_id,),
        )
        return customer_row(row)

    async def create_customer(self, name: str, address: str, source: str) -> Customer:
        """Committed at once, in a transaction of its own (see `customers`); the mail is
        taken again (`WriteConflict`) when the address has a customer already."""
        address, name = address.lower(), name or address
        customer_id, made = await self._make_customer(name, address, source)
        if not made:
            raise WriteConflict("the sender's customer was made by another transaction meanwhile")
        return Customer(customer_id, name, (address,))

    async def open_case_by_subject(
        self, customer_id: int | None, process: str | None, normalized_subject: str
    ) -> CaseRef | None:
        if customer_id is None or not normalized_subject:
            return None
        row = await self._one(
            "SELECT id, case_number FROM cases WHERE customer_id = %s"
            " AND process IS NOT DISTINCT FROM %s AND normalized_subject = %s"
            " AND status IN ('open', 'pending-approval') ORDER BY id DESC LIMIT 1",
            (customer_id, process, normalized_subject),
        )
        return CaseRef(int(row[0]), str(row[1])) if row else None

    async def case_info(self, case_id: int) -> CaseInfo:
        known = self._infos.get(case_id)
        if known is not None:  # see Decisions
            return known
        row = await self._one(  # one round trip: the tags as an array
            f"SELECT {_INFO}, ARRAY(SELECT tag FROM case_tags t"  # noqa: S608
            " WHERE t.case_id = cases.id ORDER BY tag) FROM cases WHERE id = %s",
            (case_id,),
        )
        info = self._infos[case_id] = _info(row, tuple(str(t) for t in row[8]))
        return info

    async def message_new_text(self, message_row: int) -> str | None:
        row = await self._one("SELECT new_text FROM messages WHERE id = %s", (message_row,))
        return None if row is None or row[0] is None else str(row[0])

    # ----- writes -------------------------------------------------------------------
    async def create_case(self, case: NewCase) -> CaseRef:
        case_id = self._take_case_id()  # see arrival
        if case_id is None:
            case_id = await next_id(self._deferred, "cases")
        now, number = now_iso(), case_number(case_id)
        self._write(
            "INSERT INTO cases (id, case_number, listener, process, customer_id,"
            " related_case_id, sender, sender_name, subject, normalized_subject, status,"
            " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s, %s)",
            (
                case_id, number, case.listener, case.process, case.customer_id,
                case.related_case_id, case.sender, case.sender_name, case.subject,
                case.normalized_subject, case.status, now, now,
            ),
        )  # fmt: skip
        self._infos[case_id] = CaseInfo(  # as the INSERT leaves it: no inbox, priority, tags
            case_id, number, case.process, case.status, None, case.subject, case.customer_id
        )
        self._opened.add(case_id)
        return CaseRef(case_id, number)

    async def add_message(self, case_id: int | None, message: NewMessage) -> int:
        m = message
        row = await insert_row(
            self._deferred,
            "messages",
            [
                Column("case_id", "bigint", case_id),
                *_texts(listener=m.listener, message_id=m.message_id, in_reply_to=m.in_reply_to,
                        sender=m.sender, sender_name=m.sender_name, subject=m.subject,
                        sent_at=_iso(m.sent_at), received_at=_iso(m.received_at),
                        sha256=m.sha256),
                Column("size", "bigint", len(m.raw)),
                Column("parsed", "integer", int(m.parsed)),
                Column("automatic", "text", m.automatic),
                Column("ignored", "integer", int(m.ignored)),
                *_texts(body_text=m.body_text, new_text=m.new_text, body_html=m.body_html,
                        defects=m.defects),
                Column("stored_mime", "bytea", m.stored_mime),
                Column("raw", "bytea", m.raw),
            ],
            row_id=self._take_message_id(),  # see arrival
        )  # fmt: skip
        if case_id is not None and case_id not in self._opened:  # see Decisions
            self._write("UPDATE cases SET updated_at = %s WHERE id = %s", (now_iso(), case_id))
        return row

    async def add_attachment(self, message_row: int, attachment: NewAttachment) -> None:
        a = attachment
        await insert_row(
            self._deferred,
            "attachments",
            [
                Column("message_row", "bigint", message_row),
                *_texts(filename=a.filename, content_type=a.content_type),
                Column("size", "bigint", len(a.content)),
                Column("content_id", "text", a.content_id),
                Column("inline", "integer", int(a.inline)),
                Column("raw_of_message", "integer", int(a.raw_of_message)),
                Column("content", "bytea", b"" if a.raw_of_message else a.content),
            ],
            returning=False,
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
        self._forget(case_id)
        if inbox is not None or priority is not None or process is not None or status:
            self._write(
                "UPDATE cases SET inbox = coalesce(%s, inbox),"
                " priority = coalesce(%s::integer, priority), process = coalesce(%s, process),"
                " status = coalesce(%s, status), closed_at = CASE WHEN coalesce(%s, status)"
                " = 'closed' THEN coalesce(closed_at, %s) END WHERE id = %s",
                (inbox, priority, process, status, status, now_iso(), case_id),
            )
        for tag in tags:
            self._write(
                "INSERT INTO case_tags (case_id, tag) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (case_id, tag),
            )
        if acknowledge is not None:
            self._write(
                "UPDATE messages SET acknowledge = %s WHERE id = %s",
                (int(acknowledge), message_row),
            )

    async def add_ledger(self, key: MailKey, message_row: int, message: NewMessage) -> None:
        self._ledger(key, message_row, None, message, "committed")

    async def add_quarantine(
        self, key: MailKey, raw: bytes, message: NewMessage, reason: str, attempts: int
    ) -> int:
        m = message
        quarantine_id = await insert_row(
            self._deferred,
            "quarantine",
            [
                *_texts(listener=key.listener, mailbox=key.mailbox, epoch=key.epoch,
                        item=key.item, message_id=m.message_id, sender=m.sender,
                        subject=m.subject, sha256=m.sha256, reason=scrub(reason)),
                Column("attempts", "integer", attempts),
                Column("created_at", "text", now_iso()),
                Column("raw", "bytea", raw),
            ],
        )  # fmt: skip
        self._ledger(key, None, quarantine_id, message, "quarantined")
        return quarantine_id

    def _ledger(
        self,
        key: MailKey,
        message_row: int | None,
        quarantine_id: int | None,
        message: NewMessage,
        state: LedgerState,
    ) -> None:
        where = (key.listener, key.mailbox, key.epoch, key.item)
        values = (
            *where, message_row, quarantine_id, message.message_id, message.sha256, state,
            now_iso(),
        )  # fmt: skip
        if self._owner is None:  # nothing to check
            self._write(_LEDGER.format(where=""), (*where, *values))
            return
        # Queued all the same: a lease not held fails it where it is sent (see Decisions).
        fenced = _LEDGER.format(where=_FENCED)
        self._write(fenced, (*where, *values, key.listener, self._owner))
