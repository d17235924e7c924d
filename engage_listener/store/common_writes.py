"""The transaction's reads and writes both stores say alike: acknowledgements' and webhook
events' states changed by operators, a case's status (closing, reopening), customers.
Written once with `?` marks; mixed into `SqliteTransaction` and `PostgresTransaction`
through their `operator_tx` and `transaction_more` mixins.

Decisions:

* `TxSql` is what a transaction supplies to the shared SQL: `execute`, `_one` and `_all`
  (the transaction's own), `_sql` and `_in` (its store's marks, see `common_reads`), and
  `_send` (a write nobody reads the result of: PostgreSQL queues it, `deferred`). Each
  store's `follow_ups.FollowUpQueries`, first of the transaction's mixins, says them.
* Inserts differ on purpose (lastrowid against RETURNING, a large bytea sent by COPY) and
  stay with each store.
* `closed_at` is kept by every write of a case's status: a case that becomes closed (an
  operator, a routing hook, the idle sweep) is closed from then on (a close time it had
  already stays); one that leaves `closed` has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engage_listener.observe.logs import scrub
from engage_listener.store.common_queries import WEBHOOK_COLUMNS, WEBHOOK_FROM, webhook_row
from engage_listener.store.common_sql import ACK_COLUMNS, ACK_FROM, LAST_MAIL, ack_row, now_iso
from engage_listener.store.records import (
    AckRow,
    CaseStatus,
    OutboxState,
    WebhookEventRow,
    WebhookState,
)


class TxSql:
    """See Decisions: what a transaction gives the shared SQL."""

    async def execute(self, sql: str, params: Any = ()) -> Any:
        raise NotImplementedError

    async def _one(self, sql: str, params: Any = ()) -> Any:
        raise NotImplementedError

    async def _all(self, sql: str, params: Any = ()) -> list[Any]:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        raise NotImplementedError

    def _in(self, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
        raise NotImplementedError

    async def _send(self, sql: str, params: Any = ()) -> None:
        raise NotImplementedError

    async def _changed(self, sql: str, params: Any = ()) -> bool:
        """`sql` (`?` marks) changed exactly one row."""
        cur = await self.execute(self._sql(sql), params)
        return int(cur.rowcount) == 1

    async def _row(self, sql: str, params: Any = ()) -> Any:
        """The first row of `sql` (`?` marks), or None."""
        return await self._one(self._sql(sql), params)


class CommonWrites(TxSql):
    """See `store.Transaction`."""

    # ----- acknowledgements and webhook events ----------------------------------------
    async def recent_acks(self, recipient_key: str, since: str) -> int:
        row = await self._row(
            "SELECT count(*) FROM outbox WHERE recipient_key = ? AND created_at >= ?"
            " AND state NOT IN ('failed', 'suppressed')",
            (recipient_key, since),
        )
        return int(row[0]) if row else 0

    async def listener_acks(self, listener: str, since: str) -> int:
        row = await self._row(
            "SELECT count(*) FROM outbox WHERE listener = ? AND created_at >= ?"
            " AND state != 'suppressed'",
            (listener, since),
        )
        return int(row[0]) if row else 0

    async def get_ack(self, ack_id: int) -> AckRow | None:
        row = await self._row(f"SELECT {ACK_COLUMNS} {ACK_FROM} WHERE o.id = ?", (ack_id,))
        return ack_row(row) if row else None

    async def change_ack(
        self,
        ack_id: int,
        state: OutboxState,
        note: str,
        allowed: Sequence[OutboxState],
        *,
        next_attempt_at: float | None = None,
    ) -> bool:
        return await self._change("outbox", "", (ack_id, state, note, allowed), next_attempt_at)

    async def get_webhook_event(self, row_id: int) -> WebhookEventRow | None:
        row = await self._row(f"SELECT {WEBHOOK_COLUMNS} {WEBHOOK_FROM} WHERE w.id = ?", (row_id,))
        return webhook_row(row) if row else None

    async def change_webhook_event(
        self,
        row_id: int,
        state: WebhookState,
        note: str,
        allowed: Sequence[WebhookState],
        *,
        next_attempt_at: float | None = None,
    ) -> bool:
        again = ", attempts = 0"
        return await self._change("webhook_events", again, (row_id, state, note, allowed),
                                  next_attempt_at)  # fmt: skip

    async def _change(
        self,
        table: str,
        again: str,
        change: tuple[int, str, str, Sequence[str]],
        next_attempt_at: float | None,
    ) -> bool:
        """Row `id` of `table` to `state` with `note`, if its state is one `allowed`; with
        `next_attempt_at`, sent again then (and `again` set too)."""
        row_id, state, note, allowed = change
        match, states = self._in(allowed)
        due = "" if next_attempt_at is None else f"{again}, next_attempt_at = ?"
        values = () if next_attempt_at is None else (float(next_attempt_at),)
        return await self._changed(
            f"UPDATE {table} SET state = ?{due}, last_error = ?"  # noqa: S608 - fixed text
            f" WHERE id = ? AND state {match}",
            (state, *values, scrub(note), row_id, *states),
        )

    # ----- cases (approval, operator commands, the idle sweep) ------------------------
    async def set_case_status(
        self, case_id: int, status: CaseStatus, *, touch: bool = False
    ) -> None:
        now = now_iso()
        await self.execute(
            self._sql(
                "UPDATE cases SET status = ?, closed_at = CASE WHEN ? = 'closed'"
                " THEN coalesce(closed_at, ?) END,"
                " updated_at = CASE WHEN ? THEN ? ELSE updated_at END WHERE id = ?"
            ),
            (status, status, now, touch, now, case_id),
        )

    async def close_case(
        self, case_id: int, reason: str | None, at: str, *, idle_before: str | None = None
    ) -> bool:
        idle = "" if idle_before is None else f" AND {LAST_MAIL} < ?"
        return await self._changed(
            "UPDATE cases SET status = 'closed', closed_at = ?, close_reason = ?,"  # noqa: S608
            " updated_at = ? WHERE id = ? AND status IN ('open', 'pending-approval')" + idle,
            (at, reason, at, case_id, *(() if idle_before is None else (idle_before,))),
        )

    async def reopen_case(self, case_id: int, at: str) -> bool:
        return await self._changed(
            "UPDATE cases SET status = 'open', closed_at = NULL, close_reason = NULL,"
            " reopened_at = ?, updated_at = ? WHERE id = ? AND status = 'closed'",
            (at, at, case_id),
        )

    async def first_message(self, case_id: int) -> tuple[int, bytes]:
        row = await self._row(
            "SELECT id, raw FROM messages WHERE case_id = ? ORDER BY id LIMIT 1", (case_id,)
        )
        return int(row[0]), bytes(row[1])

    # ----- customers (`customers import`) ---------------------------------------------
    async def customer_by_external_id(self, external_id: str) -> int | None:
        row = await self._row("SELECT id FROM customers WHERE external_id = ?", (external_id,))
        return int(row[0]) if row else None

    async def address_owner(self, address: str) -> int | None:
        row = await self._row(
            "SELECT customer_id FROM customer_addresses WHERE address = ?", (address,)
        )
        return int(row[0]) if row else None

    async def update_customer(self, customer_id: int, name: str, external_id: str | None) -> None:
        await self.execute(
            self._sql(
                "UPDATE customers SET name = coalesce(nullif(?, ''), name),"
                " external_id = coalesce(?, external_id) WHERE id = ?"
            ),
            (name, external_id, customer_id),
        )

    async def add_customer_address(self, customer_id: int, address: str) -> None:
        await self.execute(
            self._sql(
                "INSERT INTO customer_addresses (address, customer_id) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING"
            ),
            (address, customer_id),
        )
