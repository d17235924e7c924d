"""The store-level reads and writes both stores say alike: whole cases for operators,
customers and quarantine. Mixed into `SqliteStore` and `PostgresStore` (through their
`operator` mixins); `CommonQueries` (`common_queries`) builds on it.

Decisions:

* The SQL is written once, with SQLite's `?` marks; each store says how a statement
  becomes its own (`_sql`: as it is for SQLite, `%s` marks for psycopg) and how a list
  of values is matched (`_in`: `IN (?, ?)` against `= ANY(?)` with one array). Shared
  SQL therefore has no `?` or `%` inside quotes.
* What differs on purpose stays with its store: a case's tags and related cases
  (PostgreSQL reads them in the case's row with ARRAY sub-selects, one round trip per
  page), claims (`FOR UPDATE SKIP LOCKED`), RETURNING against lastrowid, and the
  ledger's writes (a lease checked, the attempts' upsert) and look-ups of many items
  (SQLite's in chunks of 500 marks, PostgreSQL's one array).
* A dialect's function name that differs (`length` of a blob against `octet_length`,
  `group_concat` against `string_agg`) is a class attribute of the store's mixin.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from engage_listener.store.common_sql import LAST_MAIL, now_iso
from engage_listener.store.records import (
    HEADER_BYTES,
    CaseDetail,
    CaseRef,
    CaseState,
    CaseSummary,
    Customer,
    LedgerEntry,
    Quarantined,
    StoredAttachment,
    StoredMessage,
)

_CASES = (
    "SELECT c.id, c.case_number, c.listener, c.sender, c.subject, c.status, c.inbox,"
    " (SELECT count(*) FROM messages m WHERE m.case_id = c.id),"
    " (SELECT count(*) FROM attachments a JOIN messages m ON a.message_row = m.id"
    "  WHERE m.case_id = c.id), c.created_at,"
    " (SELECT o.state || coalesce(': ' || o.last_error, '') FROM outbox o"
    "  WHERE o.case_id = c.id ORDER BY o.id DESC LIMIT 1),"
    " c.related_case_id, r.case_number"
    " FROM cases c LEFT JOIN cases r ON r.id = c.related_case_id ORDER BY c.id"
)
_QUARANTINE_COLUMNS = (
    "id, listener, mailbox, item, message_id, sender, subject, reason, attempts, state,"
    " case_id, created_at"
)
CASE_COLUMNS = (
    "c.id, c.case_number, c.listener, c.process, c.status, c.inbox, c.priority, c.subject,"
    " c.sender, c.sender_name, c.customer_id, c.created_at, c.updated_at, c.closed_at,"
    " c.close_reason, c.reopened_at, c.related_case_id"
)
_MESSAGE_COLUMNS = (  # fixed text and a number
    "m.id, m.case_id, m.message_id, m.sender, m.sender_name, m.subject, m.sent_at,"  # noqa: S608
    " m.received_at, m.size, m.automatic, m.body_text, m.new_text, m.body_html IS NOT NULL,"
    f" substr(m.raw, 1, {HEADER_BYTES}), m.acknowledge,"
    " (SELECT o.state || coalesce(': ' || o.last_error, '') FROM outbox o"
    "  WHERE o.message_row = m.id ORDER BY o.id DESC LIMIT 1)"
)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _summary(r: Any) -> CaseSummary:
    return CaseSummary(
        int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), r[5], r[6], int(r[7]),
        int(r[8]), str(r[9]), r[10], _int(r[11]), r[12],
    )  # fmt: skip


def _quarantined(r: Any) -> Quarantined:
    return Quarantined(
        int(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], str(r[5]), str(r[6]), str(r[7]),
        int(r[8]), r[9], _int(r[10]), str(r[11]), int(r[12]),
    )  # fmt: skip


def detail_row(r: Any, related: Iterable[tuple[Any, Any]], tags: Iterable[Any]) -> CaseDetail:
    """A row of `SELECT {CASE_COLUMNS}` as a case, with its related cases (id, number)
    and tags, as the store reads them."""
    return CaseDetail(
        id=int(r[0]), case_number=str(r[1]), listener=str(r[2]), process=r[3], status=r[4],
        inbox=r[5], priority=r[6], subject=str(r[7]), sender=str(r[8]),
        sender_name=str(r[9]), customer_id=_int(r[10]), created_at=str(r[11]),
        updated_at=str(r[12]), closed_at=r[13], close_reason=r[14], reopened_at=r[15],
        related_case_id=_int(r[16]),
        related=tuple(CaseRef(int(i), str(n)) for i, n in related),
        tags=tuple(str(t) for t in tags),
    )  # fmt: skip


def _message(r: Any) -> StoredMessage:
    return StoredMessage(
        id=int(r[0]),
        case_id=_int(r[1]),
        message_id=r[2],
        sender=str(r[3]),
        sender_name=str(r[4]),
        subject=str(r[5]),
        sent_at=r[6],
        received_at=str(r[7]),
        size=int(r[8]),
        automatic=r[9],
        body_text=str(r[10]),
        new_text=r[11],
        has_html=bool(r[12]),
        header=bytes(r[13] or b""),
        acknowledge=None if r[14] is None else bool(r[14]),
        ack=r[15],
    )


class CommonReads:
    """See `store.Store`. From the store: `query` and `transaction`; from its mixin:
    `_sql`, `_in`, `_octet_length` and `_string_agg` (see Decisions)."""

    _octet_length: str  # the SQL function: a blob's length in bytes
    _string_agg: str  # the SQL function: texts joined with a separator
    _case_columns: str  # CASE_COLUMNS, and what the store's `_details` reads besides

    async def query(self, sql: str, params: Any = ()) -> list[Any]:
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        """`sql`, written with `?` marks, in the store's own marks."""
        raise NotImplementedError

    def _in(self, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
        """SQL that matches a column against each of `values` (`?` marks), and its
        parameters."""
        raise NotImplementedError

    async def _details(self, rows: list[Any]) -> list[CaseDetail]:
        """Rows of `SELECT {_case_columns} FROM cases c` as cases, with their tags and
        related cases."""
        raise NotImplementedError

    async def _rows(self, sql: str, params: Any = ()) -> list[Any]:
        """The rows of `sql` (`?` marks)."""
        return await self.query(self._sql(sql), params)

    async def _write_one(self, sql: str, params: Any = ()) -> None:
        """`sql` (`?` marks) in a transaction of its own."""
        async with self.transaction() as tx:
            await tx.execute(self._sql(sql), params)

    # ----- cases, customers, quarantine -----------------------------------------------
    async def list_cases(self) -> list[CaseSummary]:
        return [_summary(r) for r in await self._rows(_CASES)]

    async def case_state(self, case_id: int) -> CaseState | None:
        rows = await self._rows(
            "SELECT listener, status, case_number FROM cases WHERE id = ?", (case_id,)
        )
        return CaseState(str(rows[0][0]), rows[0][1], str(rows[0][2])) if rows else None

    async def list_customers(self) -> list[Customer]:
        rows = await self._rows(
            f"SELECT c.id, c.name, {self._string_agg}(a.address, ' ') FROM customers c"  # noqa: S608
            " LEFT JOIN customer_addresses a ON a.customer_id = c.id GROUP BY c.id ORDER BY c.id"
        )
        return [Customer(int(r[0]), str(r[1]), tuple(sorted((r[2] or "").split()))) for r in rows]

    def _quarantine(self, more: str = "") -> str:
        columns = f"{_QUARANTINE_COLUMNS}, {self._octet_length}(raw){more}"
        return f"SELECT {columns} FROM quarantine"  # noqa: S608 - fixed names

    async def list_quarantine(self, *, include_replayed: bool = False) -> list[Quarantined]:
        where = "" if include_replayed else " WHERE state = 'held'"
        rows = await self._rows(f"{self._quarantine()}{where} ORDER BY id")
        return [_quarantined(r) for r in rows]

    async def get_quarantine(self, entry_id: int) -> tuple[Quarantined, bytes] | None:
        rows = await self._rows(f"{self._quarantine(', raw')} WHERE id = ?", (entry_id,))
        return (_quarantined(rows[0]), bytes(rows[0][13])) if rows else None

    async def mark_replayed(self, entry_id: int, case_id: int | None) -> None:
        await self._write_one(
            "UPDATE quarantine SET state = 'replayed', case_id = ?, replayed_at = ? WHERE id = ?",
            (case_id, now_iso(), entry_id),
        )

    # ----- the ledger -----------------------------------------------------------------
    async def ledger_history(self, listener: str, mailbox: str, item: str) -> list[LedgerEntry]:
        rows = await self._rows(
            f"SELECT l.epoch, l.state, l.sha256, COALESCE(m.size, {self._octet_length}(q.raw))"  # noqa: S608
            " FROM ledger l LEFT JOIN messages m ON m.id = l.message_row"
            " LEFT JOIN quarantine q ON q.id = l.quarantine_id"
            " WHERE l.listener = ? AND l.mailbox = ? AND l.item = ?"
            " ORDER BY length(l.epoch), l.epoch",
            (listener, mailbox, item),
        )
        return [LedgerEntry(str(r[0]), r[1], str(r[2]), _int(r[3])) for r in rows]

    # ----- a case's messages and attachments ------------------------------------------
    async def case_messages(self, case_id: int) -> list[StoredMessage]:
        rows = await self._rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE m.case_id = ? ORDER BY m.id",  # noqa: S608
            (case_id,),
        )
        return [_message(r) for r in rows]

    async def case_attachments(self, case_id: int) -> list[StoredAttachment]:
        rows = await self._rows(
            "SELECT a.id, a.message_row, a.filename, a.content_type, a.size, a.inline"
            " FROM attachments a JOIN messages m ON m.id = a.message_row"
            " WHERE m.case_id = ? ORDER BY a.message_row, a.id",
            (case_id,),
        )
        return [
            StoredAttachment(int(r[0]), int(r[1]), str(r[2]), str(r[3]), int(r[4]), bool(r[5]))
            for r in rows
        ]

    async def attachment_content(self, attachment_id: int) -> bytes | None:
        rows = await self._rows(
            "SELECT content FROM attachment_files WHERE id = ?", (attachment_id,)
        )
        return bytes(rows[0][0]) if rows else None

    async def idle_cases(self, before: str) -> list[int]:
        rows = await self._rows(
            f"SELECT id FROM cases WHERE status = 'open' AND {LAST_MAIL} < ? ORDER BY id",  # noqa: S608
            (before,),
        )
        return [int(r[0]) for r in rows]

    async def case_detail(self, case_id: int) -> CaseDetail | None:
        rows = await self._rows(
            f"SELECT {self._case_columns} FROM cases c WHERE c.id = ?",  # noqa: S608
            (case_id,),
        )
        found = await self._details(rows[:1])
        return found[0] if found else None

    async def cases_page(
        self, after_id: int, limit: int, *, since: str | None = None, listener: str | None = None
    ) -> list[CaseDetail]:
        where: list[str] = ["c.id > ?"]
        params: list[object] = [after_id]
        if since is not None:
            where.append("c.updated_at >= ?")
            params.append(since)
        if listener is not None:
            where.append("c.listener = ?")
            params.append(listener)
        rows = await self._rows(
            f"SELECT {self._case_columns} FROM cases c WHERE {' AND '.join(where)}"  # noqa: S608
            " ORDER BY c.id LIMIT ?",
            (*params, limit),
        )
        return await self._details(rows)
