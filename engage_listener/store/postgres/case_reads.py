"""The PostgreSQL store's reads of whole cases for operators and other systems: `cases
show`, `cases export`, `attachments save`, `cases close --idle-days`. A part of
`store.PostgresStore`, kept apart for size; it says what `store.sqlite.case_reads` says.

Decisions:

* A case's tags and related cases come in the case's own row (ARRAY sub-selects), not
  by two more queries per case as in SQLite: each query here is a round trip and a
  connection from the pool, and `cases export` reads every case a page at a time.
* Export pages by id (`cases_page`), never one query over every case: the exporter holds
  one page at a time, and each page is a short read beside the daemons' writes.
* A message's To, Cc and Reply-To are read from the start of its raw mail
  (`HEADER_BYTES`), cut on the server: only that much of each mail crosses the wire.
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

_LINKED = "FROM cases r WHERE r.id = c.related_case_id OR r.related_case_id = c.id ORDER BY r.id"
_CASE_COLUMNS = (  # fixed text
    "c.id, c.case_number, c.listener, c.process, c.status, c.inbox, c.priority, c.subject,"  # noqa: S608
    " c.sender, c.sender_name, c.customer_id, c.created_at, c.updated_at, c.closed_at,"
    " c.close_reason, c.reopened_at, c.related_case_id,"
    " ARRAY(SELECT t.tag FROM case_tags t WHERE t.case_id = c.id ORDER BY t.tag),"
    f" ARRAY(SELECT r.id {_LINKED}), ARRAY(SELECT r.case_number {_LINKED})"
)
_MESSAGE_COLUMNS = (  # fixed text and a number
    "m.id, m.case_id, m.message_id, m.sender, m.sender_name, m.subject, m.sent_at,"  # noqa: S608
    " m.received_at, m.size, m.automatic, m.body_text, m.new_text, m.body_html IS NOT NULL,"
    f" substr(m.raw, 1, {HEADER_BYTES}), m.acknowledge,"
    " (SELECT o.state || coalesce(': ' || o.last_error, '') FROM outbox o"
    "  WHERE o.message_row = m.id ORDER BY o.id DESC LIMIT 1)"
)


def _detail(r: Any) -> CaseDetail:
    return CaseDetail(
        id=int(r[0]),
        case_number=str(r[1]),
        listener=str(r[2]),
        process=r[3],
        status=r[4],
        inbox=r[5],
        priority=r[6],
        subject=str(r[7]),
        sender=str(r[8]),
        sender_name=str(r[9]),
        customer_id=None if r[10] is None else int(r[10]),
        created_at=str(r[11]),
        updated_at=str(r[12]),
        closed_at=r[13],
        close_reason=r[14],
        reopened_at=r[15],
        related_case_id=None if r[16] is None else int(r[16]),
        related=tuple(CaseRef(int(i), str(n)) for i, n in zip(r[18], r[19], strict=True)),
        tags=tuple(str(t) for t in r[17]),
    )


def _message(r: Any) -> StoredMessage:
    return StoredMessage(
        id=int(r[0]),
        case_id=None if r[1] is None else int(r[1]),
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
            f"SELECT {_CASE_COLUMNS} FROM cases c WHERE c.id = %s",  # noqa: S608
            (case_id,),
        )
        return _detail(rows[0]) if rows else None

    async def cases_page(
        self, after_id: int, limit: int, *, since: str | None = None, listener: str | None = None
    ) -> list[CaseDetail]:
        where: list[str] = ["c.id > %s"]
        params: list[object] = [after_id]
        if since is not None:
            where.append("c.updated_at >= %s")
            params.append(since)
        if listener is not None:
            where.append("c.listener = %s")
            params.append(listener)
        rows = await self.query(
            f"SELECT {_CASE_COLUMNS} FROM cases c WHERE {' AND '.join(where)}"  # noqa: S608
            " ORDER BY c.id LIMIT %s",
            (*params, limit),
        )
        return [_detail(r) for r in rows]

    async def case_messages(self, case_id: int) -> list[StoredMessage]:
        rows = await self.query(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE m.case_id = %s ORDER BY m.id",  # noqa: S608
            (case_id,),
        )
        return [_message(r) for r in rows]

    async def case_attachments(self, case_id: int) -> list[StoredAttachment]:
        rows = await self.query(
            "SELECT a.id, a.message_row, a.filename, a.content_type, a.size, a.inline"
            " FROM attachments a JOIN messages m ON m.id = a.message_row"
            " WHERE m.case_id = %s ORDER BY a.message_row, a.id",
            (case_id,),
        )
        return [
            StoredAttachment(int(r[0]), int(r[1]), str(r[2]), str(r[3]), int(r[4]), bool(r[5]))
            for r in rows
        ]

    async def attachment_content(self, attachment_id: int) -> bytes | None:
        rows = await self.query(
            "SELECT content FROM attachment_files WHERE id = %s", (attachment_id,)
        )
        return bytes(rows[0][0]) if rows else None

    async def idle_cases(self, before: str) -> list[int]:
        rows = await self.query(
            f"SELECT id FROM cases WHERE status = 'open' AND {LAST_MAIL} < %s ORDER BY id",  # noqa: S608
            (before,),
        )
        return [int(r[0]) for r in rows]
