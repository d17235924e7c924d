"""The PostgreSQL store's reads and writes for operator commands, the outbox sender,
control and status. A part of `store.PostgresStore`, kept apart for size; each write is
its own transaction. The SQL mirrors `store.sqlite.operator`.

Decisions (several daemons share these tables, issue 16):

* Acknowledgements are claimed like webhook events (`webhooks.claimable`): `due_outbox`
  takes rows `FOR UPDATE SKIP LOCKED` into `claimed_by`; the sender's own steps before DATA
  (attempts counted, `sending`) are written only while the claim is still its own, so a row
  taken over from a daemon thought dead is never sent by both; final states always are.
* `stranded_outbox` is what `recover()` turns `uncertain`: `sending` rows of daemons no
  longer alive, asked every round (a daemon may die while the others run), never this
  daemon's own.
* Heartbeats carry their daemon: each replaces its own rows only, so `status` sees every
  daemon's listeners.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from engage_listener.observe.logs import scrub
from engage_listener.store.common_sql import ACK_COLUMNS, ACK_FROM, ack_row, now_iso
from engage_listener.store.postgres.transaction import PostgresTransaction
from engage_listener.store.postgres.webhooks import claimable
from engage_listener.store.records import (
    AckRow,
    CaseState,
    CaseSummary,
    ControlField,
    ControlRow,
    Customer,
    Heartbeat,
    ListenerCounts,
    OutboxRow,
    OutboxState,
    Quarantined,
)

_QUARANTINE_COLUMNS = (
    "id, listener, mailbox, item, message_id, sender, subject, reason, attempts, state,"
    " case_id, created_at, octet_length(raw)"
)
_OUTBOX_FIELDS = ("attempts", "last_error", "smtp_reply", "sent_at", "next_attempt_at")
_HEARTBEAT_COLUMNS = (
    "listener, state, pid, last_success_at, last_error, backlog, oldest_unprocessed,"
    " paused_until, updated_at"
)
_CASES = (
    "SELECT c.id, c.case_number, c.listener, c.sender, c.subject, c.status, c.inbox,"
    " (SELECT count(*) FROM messages m WHERE m.case_id = c.id),"
    " (SELECT count(*) FROM attachments a JOIN messages m ON a.message_row = m.id"
    "  WHERE m.case_id = c.id), c.created_at,"
    " (SELECT o.state || coalesce(': ' || o.last_error, '') FROM outbox o"
    "  WHERE o.case_id = c.id ORDER BY o.id DESC LIMIT 1),"
    " c.related_case_id, r.case_number"
    " FROM cases c LEFT JOIN cases r ON r.id = c.related_case_id ORDER BY c.id"
)


def _quarantined(r: Any) -> Quarantined:
    return Quarantined(
        int(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], str(r[5]), str(r[6]), str(r[7]),
        int(r[8]), r[9], None if r[10] is None else int(r[10]), str(r[11]), int(r[12]),
    )  # fmt: skip


def _summary(r: Any) -> CaseSummary:
    return CaseSummary(
        int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), r[5], r[6], int(r[7]),
        int(r[8]), str(r[9]), r[10], None if r[11] is None else int(r[11]), r[12],
    )  # fmt: skip


class OperatorQueries:
    """See `store.Store`; `query` and `transaction` come from the store, `owner` and
    `_claim` too (`webhooks.WebhookQueries`)."""

    owner: str | None
    _sending: set[int]  # outbox rows this process marked `sending` and has not settled

    def _claim(self, **params: Any) -> dict[str, Any]:
        raise NotImplementedError

    async def query(self, sql: str, params: Any = ()) -> list[Any]:
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[PostgresTransaction]:
        raise NotImplementedError

    async def _count(self, sql: str, params: tuple[Any, ...]) -> int:
        rows = await self.query(sql, params)
        return int(rows[0][0]) if rows else 0

    async def _write_one(self, sql: str, params: Any = ()) -> None:
        async with self.transaction() as tx:
            await tx.execute(sql, params)

    # ----- cases, customers, quarantine -----------------------------------------------
    async def list_cases(self) -> list[CaseSummary]:
        return [_summary(r) for r in await self.query(_CASES)]

    async def case_state(self, case_id: int) -> CaseState | None:
        rows = await self.query(
            "SELECT listener, status, case_number FROM cases WHERE id = %s", (case_id,)
        )
        return CaseState(str(rows[0][0]), rows[0][1], str(rows[0][2])) if rows else None

    async def list_customers(self) -> list[Customer]:
        rows = await self.query(
            "SELECT c.id, c.name, string_agg(a.address, ' ') FROM customers c"
            " LEFT JOIN customer_addresses a ON a.customer_id = c.id GROUP BY c.id ORDER BY c.id"
        )
        return [Customer(int(r[0]), str(r[1]), tuple(sorted((r[2] or "").split()))) for r in rows]

    async def list_quarantine(self, *, include_replayed: bool = False) -> list[Quarantined]:
        where = "" if include_replayed else " WHERE state = 'held'"
        sql = f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine{where} ORDER BY id"  # noqa: S608
        return [_quarantined(r) for r in await self.query(sql)]

    async def get_quarantine(self, entry_id: int) -> tuple[Quarantined, bytes] | None:
        sql = f"SELECT {_QUARANTINE_COLUMNS}, raw FROM quarantine WHERE id = %s"  # noqa: S608
        rows = await self.query(sql, (entry_id,))
        return (_quarantined(rows[0]), bytes(rows[0][13])) if rows else None

    async def mark_replayed(self, entry_id: int, case_id: int | None) -> None:
        await self._write_one(
            "UPDATE quarantine SET state = 'replayed', case_id = %s, replayed_at = %s"
            " WHERE id = %s",
            (case_id, now_iso(), entry_id),
        )

    # ----- the outbox -----------------------------------------------------------------
    async def outbox_in_state(self, state: OutboxState) -> list[int]:
        rows = await self.query("SELECT id FROM outbox WHERE state = %s ORDER BY id", (state,))
        return [int(r[0]) for r in rows]

    async def due_outbox(self, now: float, limit: int) -> list[OutboxRow]:
        """Claimed for this daemon (`claimed_by`): rows another live daemon claimed are
        left to it, locked ones skipped (see `webhooks.claimable`)."""
        rows = await self.query(
            "UPDATE outbox u SET claimed_by = %(me)s FROM (SELECT o.id FROM outbox o"  # noqa: S608 - fixed text
            " WHERE o.state = 'pending' AND o.next_attempt_at <= %(now)s"
            f" AND {claimable('o')} ORDER BY o.id LIMIT %(limit)s FOR UPDATE OF o SKIP LOCKED)"
            " pick WHERE u.id = pick.id RETURNING u.id, u.listener, u.recipient, u.attempts,"
            " u.mime",
            self._claim(now=float(now), limit=limit),
        )
        found = [OutboxRow(int(r[0]), str(r[1]), str(r[2]), int(r[3]), bytes(r[4])) for r in rows]
        return sorted(found, key=lambda row: row.id)

    async def stranded_outbox(self) -> list[int]:
        """`sending` rows whose sender is gone: claimed by no daemon, or by one whose
        heartbeat is stale; never this daemon's own (it may be sending them now)."""
        rows = await self.query(
            "SELECT o.id FROM outbox o WHERE o.state = 'sending'"  # noqa: S608 - fixed text
            " AND (%(me)s::text IS NULL OR o.claimed_by IS DISTINCT FROM %(me)s)"
            f" AND {claimable('o')} ORDER BY o.id",
            self._claim(),
        )
        return [int(r[0]) for r in rows if int(r[0]) not in self._sending]

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
        if "last_error" in fields:
            fields["last_error"] = scrub(str(fields["last_error"]))
        if "next_attempt_at" in fields:
            fields["next_attempt_at"] = float(fields["next_attempt_at"])
        assignments = ", ".join(f"{name} = %s" for name in ("state", *fields))
        mine, values = "", (state, *fields.values(), row_id)
        if state in {"pending", "sending"} and self.owner is not None:  # still ours
            mine, values = " AND claimed_by = %s", (*values, self.owner)
        async with self.transaction() as tx:
            cur = await tx.execute(
                f"UPDATE outbox SET {assignments} WHERE id = %s{mine}",  # noqa: S608 - fixed names
                values,
            )
        if state == "sending":  # this process's own: never stranded while it lives
            self._sending.add(row_id)
        else:
            self._sending.discard(row_id)
        return int(cur.rowcount) == 1

    async def list_acks(self, states: Sequence[OutboxState] | None = None) -> list[AckRow]:
        sql = f"SELECT {ACK_COLUMNS} {ACK_FROM}"
        if states is None:
            rows = await self.query(sql + " WHERE o.state != 'sent' ORDER BY o.id")
        else:
            rows = await self.query(f"{sql} WHERE o.state = ANY(%s) ORDER BY o.id", (list(states),))
        return [ack_row(r) for r in rows]

    # ----- operator control -----------------------------------------------------------
    async def read_control(self, listener: str) -> ControlRow | None:
        rows = await self.query(
            "SELECT paused_until, reset_from FROM listener_control WHERE listener = %s",
            (listener,),
        )
        return ControlRow(rows[0][0], rows[0][1]) if rows else None

    async def set_control(self, listener: str, field: ControlField, value: str | None) -> None:
        assert field in {"paused_until", "reset_from"}
        await self._write_one(
            f"INSERT INTO listener_control (listener, {field}, updated_at) VALUES (%s, %s, %s)"  # noqa: S608
            f" ON CONFLICT (listener) DO UPDATE SET {field} = excluded.{field},"
            " updated_at = excluded.updated_at",
            (listener, value, now_iso()),
        )

    async def clear_reset(self, listener: str, reset_from: str) -> None:
        await self._write_one(
            "UPDATE listener_control SET reset_from = NULL, updated_at = %s"
            " WHERE listener = %s AND reset_from = %s",
            (now_iso(), listener, reset_from),
        )

    async def paused_until(self) -> dict[str, str | None]:
        rows = await self.query("SELECT listener, paused_until FROM listener_control")
        return {str(r[0]): r[1] for r in rows}

    # ----- status ---------------------------------------------------------------------
    async def write_heartbeats(self, beats: Sequence[Heartbeat]) -> None:
        """This daemon's rows become exactly its running workers; with an owner (several
        daemons), other daemons' rows stay, except those of the listeners beating here
        (this daemon took them over). Without one, every row is replaced, as in SQLite."""
        async with self.transaction() as tx:
            if self.owner is None:
                await tx.execute("DELETE FROM heartbeats")
            else:
                await tx.execute(
                    "DELETE FROM heartbeats WHERE daemon = %s OR listener = ANY(%s)",
                    (self.owner, [b.listener for b in beats]),
                )
            for b in beats:
                await tx.execute(
                    f"INSERT INTO heartbeats ({_HEARTBEAT_COLUMNS}, daemon)"  # noqa: S608
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (b.listener, b.state, b.pid, b.last_success_at,
                     None if b.last_error is None else scrub(b.last_error), b.backlog,
                     b.oldest_unprocessed, b.paused_until, b.updated_at, self.owner),
                )  # fmt: skip

    async def heartbeats(self) -> list[Heartbeat]:
        rows = await self.query(f"SELECT {_HEARTBEAT_COLUMNS} FROM heartbeats ORDER BY listener")  # noqa: S608
        return [
            Heartbeat(str(r[0]), str(r[1]), int(r[2]), r[3], r[4],
                      None if r[5] is None else int(r[5]), r[6], r[7], str(r[8]))
            for r in rows
        ]  # fmt: skip

    async def listener_counts(self, listener: str, since: str) -> ListenerCounts:
        rows = await self.query(
            "SELECT (SELECT count(*) FROM ledger WHERE listener = %s AND created_at >= %s"
            "  AND state != 'quarantined'),"
            " (SELECT count(*) FROM ledger WHERE listener = %s AND state != 'quarantined'),"
            " (SELECT count(*) FROM quarantine WHERE listener = %s AND state = 'held'),"
            " (SELECT count(*) FROM outbox WHERE listener = %s"
            "  AND state IN ('pending', 'sending'))",
            (listener, since, listener, listener, listener),
        )
        today, total, held, acks = (int(v) for v in rows[0])
        return ListenerCounts(today, total, held, acks)
