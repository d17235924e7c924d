"""The webhook outbox in PostgreSQL (migration 9): queueing in the case's transaction, the
sender's claims; what both stores say alike is in `common_queries` and `common_writes`.

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

from typing import Any

from engage_listener.store.common_queries import NOT_BEHIND
from engage_listener.store.common_sql import now_iso
from engage_listener.store.records import NewWebhookEvent, WebhookDelivery


def claimable(alias: str) -> str:
    """SQL: the row `alias` is free for this sender (named parameters `me`, `alive`): not
    claimed, claimed by this daemon, or by one whose heartbeat is stale or that stopped."""
    return (
        f"({alias}.claimed_by IS NULL OR {alias}.claimed_by = %(me)s OR NOT EXISTS"  # noqa: S608 - fixed names
        f" (SELECT 1 FROM daemons d WHERE d.id = {alias}.claimed_by AND d.stopped_at IS NULL"
        " AND d.heartbeat_at > now() - make_interval(secs => %(alive)s)))"
    )


def claim_due(table: str, alias: str, also: str, returning: str) -> str:
    """SQL: take for this sender (`claimed_by`) the `pending` rows of `table` that are due
    (named parameters `now`, `limit`, and those of `claimable`) and `also` hold, by id,
    skipping rows another transaction has locked; RETURNING `returning` of each (`u.`)."""
    return (
        f"UPDATE {table} u SET claimed_by = %(me)s FROM (SELECT {alias}.id FROM {table} {alias}"  # noqa: S608 - fixed names
        f" WHERE {alias}.state = 'pending' AND {alias}.next_attempt_at <= %(now)s{also}"
        f" AND {claimable(alias)} ORDER BY {alias}.id LIMIT %(limit)s"
        f" FOR UPDATE OF {alias} SKIP LOCKED) pick WHERE u.id = pick.id RETURNING {returning}"
    )


_DUE_EVENTS = claim_due(
    "webhook_events", "w", f" AND {NOT_BEHIND}",
    "u.id, u.listener, u.case_id, u.event, u.event_id, u.attempts, u.body",
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


class WebhookQueries:
    """See `store.Store`; `query` and `_claim` come from the store."""

    async def query(self, sql: str, params: Any = ()) -> list[Any]:
        raise NotImplementedError

    def _claim(self, **params: Any) -> dict[str, Any]:
        raise NotImplementedError

    async def due_webhook_events(self, now: float, limit: int) -> list[WebhookDelivery]:
        rows = await self.query(_DUE_EVENTS, self._claim(now=float(now), limit=limit))
        return sorted(
            (WebhookDelivery(int(r[0]), str(r[1]), int(r[2]), r[3], str(r[4]), int(r[5]),
                             bytes(r[6])) for r in rows),
            key=lambda d: d.id,
        )  # fmt: skip

    async def next_webhook_attempt(self) -> float | None:
        rows = await self.query(
            "SELECT min(w.next_attempt_at) FROM webhook_events w"  # noqa: S608
            f" WHERE w.state = 'pending' AND {NOT_BEHIND} AND {claimable('w')}",
            self._claim(),
        )
        return None if not rows or rows[0][0] is None else float(rows[0][0])
