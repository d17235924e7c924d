"""The store's reads of whole cases for operators and other systems: `cases show`,
`cases export`, `attachments save`, `cases close --idle-days`. A part of
`store.SqliteStore`, kept apart for size.

Decisions:

* Export pages by id (`cases_page`), never one query over every case: each page is one
  short read under the store's lock, so the daemon keeps writing while a large export
  runs, and the exporter holds one page at a time.
* A message's To, Cc and Reply-To were never columns: they are read from the start of
  its raw mail (`HEADER_BYTES`), which is always kept, so mails stored before this
  version show them too.
* The SQL is plain (substr on a blob, correlated sub-selects) so another store can
  say the same thing in its own dialect.
"""

from __future__ import annotations

from typing import Any

from engage_listener.store.common_sql import LAST_MAIL
from engage_listener.store.records import (
    HEADER_BYTES,
    CaseDetail,
    CaseRef,
    StoredAttachment,
    StoredMessage,
)

_CASE_COLUMNS = (
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


def _message(r: Any) -> StoredMessage:
    return StoredMessage(
        id=int(r[0]),
        case_id=r[1],
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


class CaseReads:
    """See `store.Store`; `query` comes from the store."""

    async def query(self, sql: str, params: Any = ()) -> list[Any]:
        raise NotImplementedError

    async def case_detail(self, case_id: int) -> CaseDetail | None:
        rows = await self.query(
            f"SELECT {_CASE_COLUMNS} FROM cases c WHERE c.id = ?",  # noqa: S608
            (case_id,),
        )
        return await self._detail(rows[0]) if rows else None

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
        rows = await self.query(
            f"SELECT {_CASE_COLUMNS} FROM cases c WHERE {' AND '.join(where)}"  # noqa: S608
            " ORDER BY c.id LIMIT ?",
            (*params, limit),
        )
        return [await self._detail(r) for r in rows]

    async def _detail(self, r: Any) -> CaseDetail:
        case_id, related_id = int(r[0]), r[16]
        tags = await self.query(
            "SELECT tag FROM case_tags WHERE case_id = ? ORDER BY tag", (case_id,)
        )
        linked = await self.query(
            "SELECT id, case_number FROM cases WHERE id = ? OR related_case_id = ? ORDER BY id",
            (related_id, case_id),
        )
        return CaseDetail(
            id=case_id,
            case_number=str(r[1]),
            listener=str(r[2]),
            process=r[3],
            status=r[4],
            inbox=r[5],
            priority=r[6],
            subject=str(r[7]),
            sender=str(r[8]),
            sender_name=str(r[9]),
            customer_id=r[10],
            created_at=str(r[11]),
            updated_at=str(r[12]),
            closed_at=r[13],
            close_reason=r[14],
            reopened_at=r[15],
            related_case_id=related_id,
            related=tuple(CaseRef(int(x[0]), str(x[1])) for x in linked),
            tags=tuple(str(t[0]) for t in tags),
        )

    async def case_messages(self, case_id: int) -> list[StoredMessage]:
        rows = await self.query(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE m.case_id = ? ORDER BY m.id",  # noqa: S608
            (case_id,),
        )
        return [_message(r) for r in rows]

    async def case_attachments(self, case_id: int) -> list[StoredAttachment]:
        rows = await self.query(
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
        rows = await self.query(
            "SELECT content FROM attachment_files WHERE id = ?", (attachment_id,)
        )
        return bytes(rows[0][0]) if rows else None

    async def idle_cases(self, before: str) -> list[int]:
        rows = await self.query(
            f"SELECT id FROM cases WHERE status = 'open' AND {LAST_MAIL} < ? ORDER BY id",  # noqa: S608
            (before,),
        )
        return [int(r[0]) for r in rows]
