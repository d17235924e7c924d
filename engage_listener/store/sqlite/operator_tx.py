"""Writes of operator commands inside one SQLite transaction that are SQLite's own: the
inserts (the new row's id is the cursor's lastrowid); the rest, said alike by both
stores, is in `common_writes`.

A part of `transaction.SqliteTransaction`, kept apart for size.
"""

from __future__ import annotations

from engage_listener.store.common_sql import now_iso
from engage_listener.store.common_writes import CommonWrites


class OperatorWrites(CommonWrites):
    """See `store.Transaction`; `execute` comes from the transaction."""

    async def import_customer(self, name: str, external_id: str | None) -> int:
        cur = await self.execute(
            "INSERT INTO customers (name, external_id, source, created_at) VALUES (?, ?, ?, ?)",
            (name, external_id, "import", now_iso()),
        )
        return int(cur.lastrowid or 0)
