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

from engage_listener.store.common_queries import HEARTBEAT_COLUMNS, CommonQueries, assignments
from engage_listener.store.records import Heartbeat, OutboxRow, OutboxState
from engage_listener.store.sqlite.transaction import SqliteTransaction

_OUTBOX_FIELDS = ("attempts", "last_error", "smtp_reply", "sent_at", "next_attempt_at")


class OperatorQueries(CommonQueries):
    """See `store.Store`; `query` and `transaction` come from the store, `_sending` (the
    outbox rows this process marked `sending` and has not settled) too."""

    _sending: set[int]
    _octet_length = "length"
    _string_agg = "group_concat"

    def transaction(self) -> AbstractAsyncContextManager[SqliteTransaction]:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql  # SQLite's own marks

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

    async def update_outbox(
        self,
        row_id: int,
        state: OutboxState,
        *,
        attempts: int | None = None,
        last_error: str | None = None,
        smtp_reply: str | None = None,
        sent_at: str | None = None,
        next_attempt_at: float | None = None,
    ) -> bool:
        values = (attempts, last_error, smtp_reply, sent_at, next_attempt_at)
        fields, params = assignments(dict(zip(_OUTBOX_FIELDS, values, strict=True)))
        await self._write_one(
            f"UPDATE outbox SET state = ?{', ' if fields else ''}{fields}"  # noqa: S608
            " WHERE id = ?",
            (state, *params, row_id),
        )
        if state == "sending":  # one daemon owns the file: nobody else claims a row
            self._sending.add(row_id)
        else:
            self._sending.discard(row_id)
        return True

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
