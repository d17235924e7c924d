"""The PostgreSQL transaction's marks for the SQL both stores share (see
`common_writes.TxSql`), and with them `common_follow_ups`: which open (or closed) cases a
mail names, and who takes part in a case. A part of `transaction.PostgresTransaction`, the
first of its mixins, kept apart for size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engage_listener.store.common_follow_ups import CommonFollowUps
from engage_listener.store.postgres.dialect import format_marks


class FollowUpQueries(CommonFollowUps):
    """See `store.Transaction`; `execute`, `_one`, `_all` and `_write` come from the
    transaction."""

    def _write(self, sql: str, params: Any = ()) -> None:
        raise NotImplementedError

    _same = "IS NOT DISTINCT FROM"

    def _sql(self, sql: str) -> str:
        return format_marks(sql)

    def _in(self, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
        return "= ANY(?)", (list(values),)

    async def _send(self, sql: str, params: Any = ()) -> None:
        self._write(sql, params)  # queued: sent with the next read
