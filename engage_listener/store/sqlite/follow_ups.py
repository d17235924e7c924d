"""The SQLite transaction's marks for the SQL both stores share (see
`common_writes.TxSql`), and with them `common_follow_ups`: which open (or closed) cases a
mail names, and who takes part in a case. A part of `transaction.SqliteTransaction`, the
first of its mixins, kept apart for size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engage_listener.store.common_follow_ups import CommonFollowUps


class FollowUpQueries(CommonFollowUps):
    """See `store.Transaction`; `execute` and `_one` come from the transaction."""

    _same = "IS"

    def _sql(self, sql: str) -> str:
        return sql  # SQLite's own marks

    def _in(self, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
        return f"IN ({', '.join('?' for _ in values)})", tuple(values)

    async def _all(self, sql: str, params: Any = ()) -> list[Any]:
        cur = await self.execute(sql, params)
        return list(await cur.fetchall())

    async def _send(self, sql: str, params: Any = ()) -> None:
        await self.execute(sql, params)
