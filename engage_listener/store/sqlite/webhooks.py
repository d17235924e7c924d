"""The webhook outbox in SQLite (migration 9): queueing in the case's transaction, the
sender's reads and writes, the operator's `webhooks` commands.

Two mixins, kept apart from `transaction` and `operator` for size: `WebhookWrites` is a
part of `SqliteTransaction`, `WebhookQueries` of `SqliteStore`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from engage_listener.store.common_sql import now_iso
from engage_listener.store.records import (
    NewWebhookEvent,
    WebhookDelivery,
    WebhookEventRow,
    WebhookState,
)
from engage_listener.store.sqlite.connection import AsyncCursor

if TYPE_CHECKING:
    from engage_listener.store.sqlite.transaction import SqliteTransaction

_COLUMNS = (
    "w.id, w.event_id, w.listener, w.case_id, c.case_number, w.event, w.state, w.attempts,"
    " w.last_error, w.response, w.created_at, w.delivered_at, w.next_attempt_at"
)
_FROM = "FROM webhook_events w LEFT JOIN cases c ON c.id = w.case_id"
# An event waits while an earlier event of its case is not delivered nor closed: in order.
_NOT_BEHIND = (
    "NOT EXISTS (SELECT 1 FROM webhook_events e WHERE e.case_id = w.case_id"
    " AND e.state IN ('pending', 'failed') AND e.id < w.id)"
)
_FIELDS = ("attempts", "last_error", "response", "delivered_at", "next_attempt_at")


def _row(r: Any) -> WebhookEventRow:
    due = r[12]
    return WebhookEventRow(
        id=int(r[0]),
        event_id=str(r[1]),
        listener=str(r[2]),
        case_id=int(r[3]),
        case_number=None if r[4] is None else str(r[4]),
        event=r[5],
        state=r[6],
        attempts=int(r[7]),
        last_error=r[8],
        response=r[9],
        created_at=str(r[10]),
        delivered_at=r[11],
        next_attempt_at=(
            dt.datetime.fromtimestamp(float(due), dt.UTC).isoformat(timespec="seconds")
            if r[6] == "pending" and due
            else None
        ),
    )


class WebhookWrites:
    """See `store.Transaction`; `execute` and `_one` come from the transaction."""

    async def execute(self, sql: str, params: Any = ()) -> AsyncCursor:
        raise NotImplementedError

    async def _one(self, sql: str, params: Any = ()) -> Any:
        raise NotImplementedError

    async def add_webhook_event(self, event: NewWebhookEvent) -> int:
        cur = await self.execute(
            "INSERT INTO webhook_events (event_id, listener, case_id, message_row, event, body,"
            " state, created_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
            (event.event_id, event.listener, event.case_id, event.message_row, event.event,
             event.body, now_iso()),
        )  # fmt: skip
        return int(cur.lastrowid or 0)

    async def get_webhook_event(self, row_id: int) -> WebhookEventRow | None:
        row = await self._one(f"SELECT {_COLUMNS} {_FROM} WHERE w.id = ?", (row_id,))
        return _row(row) if row else None

    async def change_webhook_event(
        self,
        row_id: int,
        state: WebhookState,
        note: str,
        allowed: Sequence[WebhookState],
        *,
        next_attempt_at: float | None = None,
    ) -> bool:
        marks = ", ".join("?" for _ in allowed)
        again = ", attempts = 0, next_attempt_at = ?" if next_attempt_at is not None else ""
        values = () if next_attempt_at is None else (next_attempt_at,)
        cur = await self.execute(
            f"UPDATE webhook_events SET state = ?{again}, last_error = ?"  # noqa: S608
            f" WHERE id = ? AND state IN ({marks})",
            (state, *values, note, row_id, *allowed),
        )
        return cur.rowcount == 1


class WebhookQueries:
    """See `store.Store`; `query` and `transaction` come from the store."""

    async def query(self, sql: str, params: Any = ()) -> list[Any]:
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[SqliteTransaction]:
        raise NotImplementedError

    async def due_webhook_events(self, now: float, limit: int) -> list[WebhookDelivery]:
        rows = await self.query(
            "SELECT w.id, w.listener, w.case_id, w.event, w.event_id, w.attempts, w.body"  # noqa: S608 - fixed text
            " FROM webhook_events w WHERE w.state = 'pending' AND w.next_attempt_at <= ?"
            f" AND {_NOT_BEHIND} ORDER BY w.id LIMIT ?",
            (now, limit),
        )
        return [
            WebhookDelivery(int(r[0]), str(r[1]), int(r[2]), r[3], str(r[4]), int(r[5]),
                            bytes(r[6]))
            for r in rows
        ]  # fmt: skip

    async def next_webhook_attempt(self) -> float | None:
        rows = await self.query(
            "SELECT min(w.next_attempt_at) FROM webhook_events w"  # noqa: S608
            f" WHERE w.state = 'pending' AND {_NOT_BEHIND}"
        )
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def update_webhook_event(
        self,
        row_id: int,
        state: WebhookState,
        *,
        attempts: int | None = None,
        last_error: str | None = None,
        response: str | None = None,
        delivered_at: str | None = None,
        next_attempt_at: float | None = None,
    ) -> None:
        given = dict(zip(_FIELDS, (attempts, last_error, response, delivered_at,
                                   next_attempt_at), strict=True))  # fmt: skip
        fields = {name: value for name, value in given.items() if value is not None}
        assignments = ", ".join(f"{name} = ?" for name in ("state", *fields))
        async with self.transaction() as tx:
            await tx.execute(
                f"UPDATE webhook_events SET {assignments} WHERE id = ?",  # noqa: S608
                (state, *fields.values(), row_id),
            )

    async def postpone_webhook_events(self, listeners: Sequence[str], until: float) -> None:
        marks = ", ".join("?" for _ in listeners)
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE webhook_events SET next_attempt_at = ? WHERE state = 'pending'"  # noqa: S608
                f" AND next_attempt_at < ? AND listener IN ({marks})",
                (until, until, *listeners),
            )

    async def list_webhook_events(
        self, states: Sequence[WebhookState] | None = None
    ) -> list[WebhookEventRow]:
        sql = f"SELECT {_COLUMNS} {_FROM}"
        if states is None:
            rows = await self.query(sql + " WHERE w.state != 'delivered' ORDER BY w.id")
        else:
            marks = ", ".join("?" for _ in states)
            sql = f"{sql} WHERE w.state IN ({marks}) ORDER BY w.id"
            rows = await self.query(sql, tuple(states))
        return [_row(r) for r in rows]
