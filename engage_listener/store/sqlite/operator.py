"""The store's reads and writes for operator commands, the outbox sender, control and
status. A part of `store.SqliteStore`, kept apart for size; each write is its own
transaction."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from engage_listener.store.common_sql import ACK_COLUMNS, ACK_FROM, ack_row, now_iso
from engage_listener.store.records import (
    AckRow,
    CaseState,
    ControlField,
    ControlRow,
    Customer,
    Heartbeat,
    ListenerCounts,
    OutboxRow,
    OutboxState,
    Quarantined,
)
from engage_listener.store.sqlite.transaction import SqliteTransaction

_QUARANTINE_COLUMNS = (
    "id, listener, mailbox, item, message_id, sender, subject, reason, attempts, state,"
    " case_id, created_at, length(raw)"
)
_OUTBOX_FIELDS = ("attempts", "last_error", "smtp_reply", "sent_at", "next_attempt_at")
_HEARTBEAT_COLUMNS = (
    "listener, state, pid, last_success_at, last_error, backlog, oldest_unprocessed,"
    " paused_until, updated_at"
)


def _quarantined(r: Any) -> Quarantined:
    return Quarantined(
        int(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], str(r[5]), str(r[6]), str(r[7]),
        int(r[8]), r[9], r[10], str(r[11]), int(r[12]),
    )  # fmt: skip


class OperatorQueries:
    """See `store.Store`; `query` and `transaction` come from the store, `_sending` (the
    outbox rows this process marked `sending` and has not settled) too."""

    _sending: set[int]

    async def query(self, sql: str, params: Any = ()) -> list[Any]:
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[SqliteTransaction]:
        raise NotImplementedError

    async def _count(self, sql: str, params: tuple[Any, ...]) -> int:
        rows = await self.query(sql, params)
        return int(rows[0][0]) if rows else 0

    async def _write_one(self, sql: str, params: Any = ()) -> None:
        async with self.transaction() as tx:
            await tx.execute(sql, params)

    # ----- cases, customers, quarantine -----------------------------------------------
    async def case_state(self, case_id: int) -> CaseState | None:
        rows = await self.query(
            "SELECT listener, status, case_number FROM cases WHERE id = ?", (case_id,)
        )
        return CaseState(str(rows[0][0]), rows[0][1], str(rows[0][2])) if rows else None

    async def list_customers(self) -> list[Customer]:
        rows = await self.query(
            "SELECT c.id, c.name, group_concat(a.address, ' ') FROM customers c"
            " LEFT JOIN customer_addresses a ON a.customer_id = c.id GROUP BY c.id ORDER BY c.id"
        )
        return [Customer(int(r[0]), str(r[1]), tuple(sorted((r[2] or "").split()))) for r in rows]

    async def list_quarantine(self, *, include_replayed: bool = False) -> list[Quarantined]:
        where = "" if include_replayed else " WHERE state = 'held'"
        sql = f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine{where} ORDER BY id"  # noqa: S608
        return [_quarantined(r) for r in await self.query(sql)]

    async def get_quarantine(self, entry_id: int) -> tuple[Quarantined, bytes] | None:
        sql = f"SELECT {_QUARANTINE_COLUMNS}, raw FROM quarantine WHERE id = ?"  # noqa: S608
        rows = await self.query(sql, (entry_id,))
        return (_quarantined(rows[0]), bytes(rows[0][13])) if rows else None

    async def mark_replayed(self, entry_id: int, case_id: int | None) -> None:
        await self._write_one(
            "UPDATE quarantine SET state = 'replayed', case_id = ?, replayed_at = ? WHERE id = ?",
            (case_id, now_iso(), entry_id),
        )

    # ----- the outbox -----------------------------------------------------------------
    async def outbox_in_state(self, state: OutboxState) -> list[int]:
        rows = await self.query("SELECT id FROM outbox WHERE state = ? ORDER BY id", (state,))
        return [int(r[0]) for r in rows]

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
        given = dict(zip(_OUTBOX_FIELDS, (attempts, last_error, smtp_reply, sent_at,
                                          next_attempt_at), strict=True))  # fmt: skip
        fields = {name: value for name, value in given.items() if value is not None}
        assignments = ", ".join(f"{name} = ?" for name in ("state", *fields))
        await self._write_one(
            f"UPDATE outbox SET {assignments} WHERE id = ?",  # noqa: S608 - fixed names
            (state, *fields.values(), row_id),
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

    async def list_acks(self, states: Sequence[OutboxState] | None = None) -> list[AckRow]:
        sql = f"SELECT {ACK_COLUMNS} {ACK_FROM}"
        if states is None:
            rows = await self.query(sql + " WHERE o.state != 'sent' ORDER BY o.id")
        else:
            marks = ", ".join("?" for _ in states)
            rows = await self.query(
                f"{sql} WHERE o.state IN ({marks}) ORDER BY o.id", tuple(states)
            )
        return [ack_row(r) for r in rows]

    # ----- operator control -----------------------------------------------------------
    async def read_control(self, listener: str) -> ControlRow | None:
        rows = await self.query(
            "SELECT paused_until, reset_from FROM listener_control WHERE listener = ?",
            (listener,),
        )
        return ControlRow(rows[0][0], rows[0][1]) if rows else None

    async def set_control(self, listener: str, field: ControlField, value: str | None) -> None:
        assert field in {"paused_until", "reset_from"}
        await self._write_one(
            f"INSERT INTO listener_control (listener, {field}, updated_at) VALUES (?, ?, ?)"  # noqa: S608
            f" ON CONFLICT (listener) DO UPDATE SET {field} = excluded.{field},"
            " updated_at = excluded.updated_at",
            (listener, value, now_iso()),
        )

    async def clear_reset(self, listener: str, reset_from: str) -> None:
        await self._write_one(
            "UPDATE listener_control SET reset_from = NULL, updated_at = ?"
            " WHERE listener = ? AND reset_from = ?",
            (now_iso(), listener, reset_from),
        )

    async def paused_until(self) -> dict[str, str | None]:
        rows = await self.query("SELECT listener, paused_until FROM listener_control")
        return {str(r[0]): r[1] for r in rows}

    # ----- status ---------------------------------------------------------------------
    async def write_heartbeats(self, beats: Sequence[Heartbeat]) -> None:
        async with self.transaction() as tx:  # the rows are exactly the running workers
            await tx.execute("DELETE FROM heartbeats")
            for b in beats:
                await tx.execute(
                    f"INSERT INTO heartbeats ({_HEARTBEAT_COLUMNS})"  # noqa: S608
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (b.listener, b.state, b.pid, b.last_success_at, b.last_error, b.backlog,
                     b.oldest_unprocessed, b.paused_until, b.updated_at),
                )  # fmt: skip

    async def heartbeats(self) -> list[Heartbeat]:
        rows = await self.query(f"SELECT {_HEARTBEAT_COLUMNS} FROM heartbeats")  # noqa: S608
        return [
            Heartbeat(str(r[0]), str(r[1]), int(r[2]), r[3], r[4],
                      None if r[5] is None else int(r[5]), r[6], r[7], str(r[8]))
            for r in rows
        ]  # fmt: skip

    async def listener_counts(self, listener: str, since: str) -> ListenerCounts:
        today = await self._count(
            "SELECT count(*) FROM ledger WHERE listener = ? AND created_at >= ?"
            " AND state != 'quarantined'",
            (listener, since),
        )
        total = await self._count(
            "SELECT count(*) FROM ledger WHERE listener = ? AND state != 'quarantined'",
            (listener,),
        )
        held = await self._count(
            "SELECT count(*) FROM quarantine WHERE listener = ? AND state = 'held'", (listener,)
        )
        acks = await self._count(
            "SELECT count(*) FROM outbox WHERE listener = ? AND state IN ('pending', 'sending')",
            (listener,),
        )
        return ListenerCounts(today, total, held, acks)
