"""The SQLite store's part of operator commands, the outbox sender, control and status
that is its own (one daemon owns the file); the rest, said alike by both stores, is in
`common_queries`. A part of `store.SqliteStore`, kept apart for size; each write is its
own transaction.

Decisions:

* No claims: the daemon that owns the file is the only sender, so `due_outbox` reads
  and `stranded_outbox` is every `sending` row this process is not sending.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from engage_listener.store.common_queries import HEARTBEAT_COLUMNS, CommonQueries
from engage_listener.store.records import Heartbeat, OutboxRow, OutboxState
from engage_listener.store.sqlite.transaction import SqliteTransaction


class OperatorQueries(CommonQueries):
    """See `store.Store`; `query`, `transaction` and `_sending` come from the store."""

    _octet_length = "length"
    _string_agg = "group_concat"

    def transaction(self) -> AbstractAsyncContextManager[SqliteTransaction]:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql  # SQLite's own marks

    def _outbox_fence(self, state: OutboxState) -> tuple[str, tuple[Any, ...]] | None:
        return None  # one daemon owns the file: nobody else claims a row

    def _in(self, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
        return f"IN ({', '.join('?' for _ in values)})", tuple(values)

    # ----- the outbox -----------------------------------------------------------------
    async def due_outbox(self, now: float, limit: int) -> list[OutboxRow]:
        rows = await self.query(
            "SELECT id, listener, recipient, attempts, mime FROM outbox"
            " WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY id LIMIT ?",
            (now, limit),
        )
        return [OutboxRow(int(r[0]), str(r[1]), str(r[2]), int(r[3]), bytes(r[4])) for r in rows]

    async def stranded_outbox(self) -> list[int]:
        """`sending` rows this process is not sending: left by a daemon that ended."""
        rows = await self.query("SELECT id FROM outbox WHERE state = 'sending' ORDER BY id")
        return [int(r[0]) for r in rows if int(r[0]) not in self._sending]

    # ----- status ---------------------------------------------------------------------
    async def write_heartbeats(self, beats: Sequence[Heartbeat]) -> None:
        async with self.transaction() as tx:  # the rows are exactly the running workers
            await tx.execute("DELETE FROM heartbeats")
            for b in beats:
                await tx.execute(
                    f"INSERT INTO heartbeats ({HEARTBEAT_COLUMNS})"  # noqa: S608
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (b.listener, b.state, b.pid, b.last_success_at, b.last_error, b.backlog,
                     b.oldest_unprocessed, b.paused_until, b.updated_at),
                )  # fmt: skip
