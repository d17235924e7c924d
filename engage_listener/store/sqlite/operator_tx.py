"""Writes of operator commands and of case approval, inside one SQLite transaction.

A part of `transaction.SqliteTransaction`, kept apart for size: importing customers,
changing an acknowledgement's state, and a case's status.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engage_listener.store.common_sql import ACK_COLUMNS, ACK_FROM, LAST_MAIL, ack_row, now_iso
from engage_listener.store.records import AckRow, CaseStatus, OutboxState
from engage_listener.store.sqlite.connection import AsyncCursor


class OperatorWrites:
    """See `store.Transaction`; `execute` and `_one` come from the transaction."""

    async def execute(self, sql: str, params: Any = ()) -> AsyncCursor:
        raise NotImplementedError

    async def _one(self, sql: str, params: Any = ()) -> Any:
        raise NotImplementedError

    async def set_case_status(
        self, case_id: int, status: CaseStatus, *, touch: bool = False
    ) -> None:
        # A case that becomes closed (a routing hook's say) is closed now; one that leaves
        # `closed` has no close time any more.
        now = now_iso()
        touched = ", updated_at = ?" if touch else ""
        await self.execute(
            f"UPDATE cases SET status = ?, closed_at = CASE WHEN ? = 'closed'"  # noqa: S608
            f" THEN coalesce(closed_at, ?) END{touched} WHERE id = ?",
            (status, status, now, *((now,) if touch else ()), case_id),
        )

    async def close_case(
        self, case_id: int, reason: str | None, at: str, *, idle_before: str | None = None
    ) -> bool:
        idle = "" if idle_before is None else f" AND {LAST_MAIL} < ?"
        cur = await self.execute(
            "UPDATE cases SET status = 'closed', closed_at = ?, close_reason = ?, updated_at = ?"  # noqa: S608
            f" WHERE id = ? AND status IN ('open', 'pending-approval'){idle}",
            (at, reason, at, case_id, *(() if idle_before is None else (idle_before,))),
        )
        return cur.rowcount == 1

    async def reopen_case(self, case_id: int, at: str) -> bool:
        cur = await self.execute(
            "UPDATE cases SET status = 'open', closed_at = NULL, close_reason = NULL,"
            " reopened_at = ?, updated_at = ? WHERE id = ? AND status = 'closed'",
            (at, at, case_id),
        )
        return cur.rowcount == 1

    async def first_message(self, case_id: int) -> tuple[int, bytes]:
        row = await self._one(
            "SELECT id, raw FROM messages WHERE case_id = ? ORDER BY id LIMIT 1", (case_id,)
        )
        return int(row[0]), bytes(row[1])

    async def get_ack(self, ack_id: int) -> AckRow | None:
        row = await self._one(f"SELECT {ACK_COLUMNS} {ACK_FROM} WHERE o.id = ?", (ack_id,))
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
        marks = ", ".join("?" for _ in allowed)
        due = "" if next_attempt_at is None else ", next_attempt_at = ?"
        values = () if next_attempt_at is None else (next_attempt_at,)
        cur = await self.execute(
            f"UPDATE outbox SET state = ?{due}, last_error = ?"  # noqa: S608 - fixed text
            f" WHERE id = ? AND state IN ({marks})",
            (state, *values, note, ack_id, *allowed),
        )
        return cur.rowcount == 1

    async def customer_by_external_id(self, external_id: str) -> int | None:
        row = await self._one("SELECT id FROM customers WHERE external_id = ?", (external_id,))
        return int(row[0]) if row else None

    async def address_owner(self, address: str) -> int | None:
        row = await self._one(
            "SELECT customer_id FROM customer_addresses WHERE address = ?", (address,)
        )
        return int(row[0]) if row else None

    async def import_customer(self, name: str, external_id: str | None) -> int:
        cur = await self.execute(
            "INSERT INTO customers (name, external_id, source, created_at) VALUES (?, ?, ?, ?)",
            (name, external_id, "import", now_iso()),
        )
        return int(cur.lastrowid or 0)

    async def update_customer(self, customer_id: int, name: str, external_id: str | None) -> None:
        await self.execute(
            "UPDATE customers SET name = coalesce(nullif(?, ''), name),"
            " external_id = coalesce(?, external_id) WHERE id = ?",
            (name, external_id, customer_id),
        )

    async def add_customer_address(self, customer_id: int, address: str) -> None:
        await self.execute(
            "INSERT OR IGNORE INTO customer_addresses (address, customer_id) VALUES (?, ?)",
            (address, customer_id),
        )
