"""Acknowledgements, a case's status (closing, reopening) and operator writes inside one
PostgreSQL transaction.

A part of `transaction.PostgresTransaction`, kept apart for size; the SQL mirrors
`store.sqlite.operator_tx` (and `transaction`'s acknowledgement writes).

Decisions:

* `closed_at` is kept by every write of a case's status, as in SQLite: a case that
  becomes closed (an operator, a routing hook, the idle sweep) is closed from then on
  (a close time it had already stays); one that leaves `closed` has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engage_listener.mail.fields import recipient_key
from engage_listener.observe.logs import scrub
from engage_listener.store.common_sql import ACK_COLUMNS, ACK_FROM, LAST_MAIL, ack_row, now_iso
from engage_listener.store.interface import NewAck
from engage_listener.store.records import AckRow, CaseStatus, OutboxState


class MoreWrites:
    """See `store.Transaction`; `execute`, `_one` and `_all` come from the transaction."""

    async def execute(self, sql: str, params: Any = ()) -> Any:
        raise NotImplementedError

    async def _one(self, sql: str, params: Any = ()) -> Any:
        raise NotImplementedError

    async def _all(self, sql: str, params: Any = ()) -> list[Any]:
        raise NotImplementedError

    def _write(self, sql: str, params: Any = ()) -> None:
        raise NotImplementedError

    def _forget(self, case_id: int | None = None) -> None:
        """The transaction's remembered `case_info` of that case is stale (see it)."""
        raise NotImplementedError

    # ----- acknowledgements -----------------------------------------------------------
    async def recent_acks(self, recipient_key: str, since: str) -> int:
        row = await self._one(
            "SELECT count(*) FROM outbox WHERE recipient_key = %s AND created_at >= %s"
            " AND state NOT IN ('failed', 'suppressed')",
            (recipient_key, since),
        )
        return int(row[0]) if row else 0

    async def listener_acks(self, listener: str, since: str) -> int:
        row = await self._one(
            "SELECT count(*) FROM outbox WHERE listener = %s AND created_at >= %s"
            " AND state != 'suppressed'",
            (listener, since),
        )
        return int(row[0]) if row else 0

    async def add_outbox(
        self, ack: NewAck, *, state: OutboxState = "pending", last_error: str | None = None
    ) -> int:
        row = await self._one(
            "INSERT INTO outbox (listener, case_id, message_row, recipient, recipient_key,"
            " subject, smtp_message_id, mime, state, last_error, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %b, %s, %s, %s) RETURNING id",
            (
                ack.listener, ack.case_id, ack.message_row, ack.recipient.lower(),
                recipient_key(ack.recipient), ack.subject, ack.smtp_message_id, ack.mime,
                state, None if last_error is None else scrub(last_error), now_iso(),
            ),
        )  # fmt: skip
        return int(row[0])

    async def get_ack(self, ack_id: int) -> AckRow | None:
        row = await self._one(f"SELECT {ACK_COLUMNS} {ACK_FROM} WHERE o.id = %s", (ack_id,))
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
        cur = await self.execute(
            "UPDATE outbox SET state = %s,"
            " next_attempt_at = coalesce(%s::double precision, next_attempt_at),"
            " last_error = %s WHERE id = %s AND state = ANY(%s)",
            (state, next_attempt_at, scrub(note), ack_id, list(allowed)),
        )
        return int(cur.rowcount) == 1

    # ----- cases and customers (approval, operator commands) --------------------------
    async def set_case_status(
        self, case_id: int, status: CaseStatus, *, touch: bool = False
    ) -> None:
        self._forget(case_id)
        now = now_iso()
        await self.execute(
            "UPDATE cases SET status = %s, closed_at = CASE WHEN %s = 'closed'"
            " THEN coalesce(closed_at, %s) END,"
            " updated_at = CASE WHEN %s THEN %s ELSE updated_at END WHERE id = %s",
            (status, status, now, touch, now, case_id),
        )

    async def close_case(
        self, case_id: int, reason: str | None, at: str, *, idle_before: str | None = None
    ) -> bool:
        self._forget(case_id)
        idle = "" if idle_before is None else f" AND {LAST_MAIL} < %s"
        cur = await self.execute(
            "UPDATE cases SET status = 'closed', closed_at = %s, close_reason = %s,"  # noqa: S608
            " updated_at = %s WHERE id = %s AND status IN ('open', 'pending-approval')" + idle,
            (at, reason, at, case_id, *(() if idle_before is None else (idle_before,))),
        )
        return int(cur.rowcount) == 1

    async def reopen_case(self, case_id: int, at: str) -> bool:
        self._forget(case_id)
        cur = await self.execute(
            "UPDATE cases SET status = 'open', closed_at = NULL, close_reason = NULL,"
            " reopened_at = %s, updated_at = %s WHERE id = %s AND status = 'closed'",
            (at, at, case_id),
        )
        return int(cur.rowcount) == 1

    async def first_message(self, case_id: int) -> tuple[int, bytes]:
        row = await self._one(
            "SELECT id, raw FROM messages WHERE case_id = %s ORDER BY id LIMIT 1", (case_id,)
        )
        return int(row[0]), bytes(row[1])

    async def customer_by_external_id(self, external_id: str) -> int | None:
        row = await self._one("SELECT id FROM customers WHERE external_id = %s", (external_id,))
        return int(row[0]) if row else None

    async def address_owner(self, address: str) -> int | None:
        row = await self._one(
            "SELECT customer_id FROM customer_addresses WHERE address = %s", (address,)
        )
        return int(row[0]) if row else None

    async def import_customer(self, name: str, external_id: str | None) -> int:
        row = await self._one(
            "INSERT INTO customers (name, external_id, source, created_at)"
            " VALUES (%s, %s, 'import', %s) RETURNING id",
            (name, external_id, now_iso()),
        )
        return int(row[0])

    async def update_customer(self, customer_id: int, name: str, external_id: str | None) -> None:
        await self.execute(
            "UPDATE customers SET name = coalesce(nullif(%s, ''), name),"
            " external_id = coalesce(%s, external_id) WHERE id = %s",
            (name, external_id, customer_id),
        )

    async def add_customer_address(self, customer_id: int, address: str) -> None:
        await self.execute(
            "INSERT INTO customer_addresses (address, customer_id) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING",
            (address, customer_id),
        )
