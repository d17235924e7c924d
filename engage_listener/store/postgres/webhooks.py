"""The webhook outbox in PostgreSQL (migration 9): queueing in the case's transaction, the
sender's reads and writes, the operator's `webhooks` commands. The SQL mirrors
`store.sqlite.webhooks`.

Decisions:

* Claimed, not only read: several daemons share the table, each with a sender, so
  `due_webhook_events` takes its rows with `FOR UPDATE SKIP LOCKED` and marks them
  `claimed_by` this daemon. A row claimed by a live daemon (its `daemons` heartbeat is
  fresh: `claimable`) is left to it; a dead daemon's rows are taken by the next sender.
  Delivery stays at least once (the receiver drops repeats by event id); the claim only
  keeps two live daemons from POSTing the same event.
* In order per case, across daemons: an event waits while an earlier event of its case is
  pending or failed, whoever has claimed it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from engage_listener.observe.logs import scrub
from engage_listener.store.common_sql import now_iso
from engage_listener.store.records import (
    NewWebhookEvent,
    WebhookDelivery,
    WebhookEventRow,
    WebhookState,
)

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


def claimable(alias: str) -> str:
    """SQL: the row `alias` is free for this sender (named parameters `me`, `alive`): not
    claimed, claimed by this daemon, or by one whose heartbeat is stale or that stopped."""
    return (
        f"({alias}.claimed_by IS NULL OR {alias}.claimed_by = %(me)s OR NOT EXISTS"  # noqa: S608 - fixed names
        f" (SELECT 1 FROM daemons d WHERE d.id = {alias}.claimed_by AND d.stopped_at IS NULL"
        " AND d.heartbeat_at > now() - make_interval(secs => %(alive)s)))"
    )


def _row(r: Any) -> WebhookEventRow:
    due = r[12]
    return WebhookEventRow(
        id=int(r[0]), event_id=str(r[1]), listener=str(r[2]), case_id=int(r[3]),
        case_number=None if r[4] is None else str(r[4]), event=r[5], state=r[6],
        attempts=int(r[7]), last_error=r[8], response=r[9], created_at=str(r[10]),
        delivered_at=r[11],
        next_attempt_at=(
            dt.datetime.fromtimestamp(float(due), dt.UTC).isoformat(timespec="seconds")
            if r[6] == "pending" and due
            else None
        ),
    )  # fmt: skip


class WebhookWrites:
    """See `store.Transaction`; `execute` and `_one` come from the transaction."""

    async def execute(self, sql: str, params: Any = ()) -> Any:
        raise NotImplementedError

    async def _one(self, sql: str, params: Any = ()) -> Any:
        raise NotImplementedError

    async def add_webhook_event(self, event: NewWebhookEvent) -> int:
        row = await self._one(
            "INSERT INTO webhook_events (event_id, listener, case_id, message_row, event, body,"
            " state, created_at) VALUES (%s, %s, %s, %s, %s, %b, 'pending', %s) RETURNING id",
            (event.event_id, event.listener, event.case_id, event.message_row, event.event,
             event.body, now_iso()),
        )  # fmt: skip
        return int(row[0])

    async def get_webhook_event(self, row_id: int) -> WebhookEventRow | None:
        row = await self._one(f"SELECT {_COLUMNS} {_FROM} WHERE w.id = %s", (row_id,))
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
        again = ", attempts = 0, next_attempt_at = %s" if next_attempt_at is not None else ""
        values = () if next_attempt_at is None else (float(next_attempt_at),)
        cur = await self.execute(
            f"UPDATE webhook_events SET state = %s{again}, last_error = %s"  # noqa: S608
            " WHERE id = %s AND state = ANY(%s)",
            (state, *values, scrub(note), row_id, list(allowed)),
        )
        return int(cur.rowcount) == 1


class WebhookQueries:
    """See `store.Store`; `query`, `_write_one` and `_claim` come from the store."""

    async def query(self, sql: str, params: Any = ()) -> list[Any]:
        raise NotImplementedError

    async def _write_one(self, sql: str, params: Any = ()) -> None:
        raise NotImplementedError

    def _claim(self, **params: Any) -> dict[str, Any]:
        raise NotImplementedError

    async def due_webhook_events(self, now: float, limit: int) -> list[WebhookDelivery]:
        rows = await self.query(
            "UPDATE webhook_events u SET claimed_by = %(me)s FROM (SELECT w.id"  # noqa: S608 - fixed text
            " FROM webhook_events w WHERE w.state = 'pending' AND w.next_attempt_at <= %(now)s"
            f" AND {_NOT_BEHIND} AND {claimable('w')} ORDER BY w.id LIMIT %(limit)s"
            " FOR UPDATE OF w SKIP LOCKED) pick WHERE u.id = pick.id"
            " RETURNING u.id, u.listener, u.case_id, u.event, u.event_id, u.attempts, u.body",
            self._claim(now=float(now), limit=limit),
        )
        return sorted(
            (WebhookDelivery(int(r[0]), str(r[1]), int(r[2]), r[3], str(r[4]), int(r[5]),
                             bytes(r[6])) for r in rows),
            key=lambda d: d.id,
        )  # fmt: skip

    async def next_webhook_attempt(self) -> float | None:
        rows = await self.query(
            "SELECT min(w.next_attempt_at) FROM webhook_events w"  # noqa: S608
            f" WHERE w.state = 'pending' AND {_NOT_BEHIND} AND {claimable('w')}",
            self._claim(),
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
        if "last_error" in fields:
            fields["last_error"] = scrub(str(fields["last_error"]))
        if "next_attempt_at" in fields:
            fields["next_attempt_at"] = float(fields["next_attempt_at"])
        assignments = ", ".join(f"{name} = %s" for name in ("state", *fields))
        await self._write_one(
            f"UPDATE webhook_events SET {assignments} WHERE id = %s",  # noqa: S608 - fixed names
            (state, *fields.values(), row_id),
        )

    async def postpone_webhook_events(self, listeners: Sequence[str], until: float) -> None:
        await self._write_one(
            "UPDATE webhook_events SET next_attempt_at = %s WHERE state = 'pending'"
            " AND next_attempt_at < %s AND listener = ANY(%s)",
            (float(until), float(until), list(listeners)),
        )

    async def list_webhook_events(
        self, states: Sequence[WebhookState] | None = None
    ) -> list[WebhookEventRow]:
        sql = f"SELECT {_COLUMNS} {_FROM}"
        if states is None:
            rows = await self.query(sql + " WHERE w.state != 'delivered' ORDER BY w.id")
        else:
            rows = await self.query(f"{sql} WHERE w.state = ANY(%s) ORDER BY w.id", (list(states),))
        return [_row(r) for r in rows]
