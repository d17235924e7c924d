"""The webhook outbox in SQLite (migration 9): queueing in the case's transaction, the
sender's reads; what both stores say alike is in `common_queries` and `common_writes`.

Two mixins, kept apart from `transaction` and `operator` for size: `WebhookWrites` is a
part of `SqliteTransaction`, `WebhookQueries` of `SqliteStore`.
"""

from __future__ import annotations

from typing import Any

from engage_listener.store.common_queries import NOT_BEHIND
from engage_listener.store.common_sql import now_iso
from engage_listener.store.records import NewWebhookEvent, WebhookDelivery
from engage_listener.store.sqlite.connection import AsyncCursor


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


class WebhookQueries:
    """See `store.Store`; `query` comes from the store."""

    async def query(self, sql: str, params: Any = ()) -> list[Any]:
        raise NotImplementedError

    async def due_webhook_events(self, now: float, limit: int) -> list[WebhookDelivery]:
        rows = await self.query(
            "SELECT w.id, w.listener, w.case_id, w.event, w.event_id, w.attempts, w.body"  # noqa: S608 - fixed text
            " FROM webhook_events w WHERE w.state = 'pending' AND w.next_attempt_at <= ?"
            f" AND {NOT_BEHIND} ORDER BY w.id LIMIT ?",
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
            f" WHERE w.state = 'pending' AND {NOT_BEHIND}"
        )
        return None if not rows or rows[0][0] is None else float(rows[0][0])
