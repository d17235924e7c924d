"""The store-level reads and writes both stores say alike for the senders, operator
control and status: the outboxes' listings, the webhook sender's writes, pauses and
resets, heartbeats, a listener's counts. Written once with `?` marks (see
`common_reads`); mixed into `SqliteStore` and `PostgresStore`.

Decisions:

* Claiming rows (`due_outbox`, `due_webhook_events`, `next_webhook_attempt`,
  `stranded_outbox`), `update_outbox` (a claim still held) and `write_heartbeats` (a row
  per daemon) differ on purpose: several PostgreSQL daemons share the tables, one SQLite
  daemon owns its file. They stay in each store's `operator` and `webhooks`.
* An error text is scrubbed of secrets before it is stored, by both stores (it is shown
  by `webhooks list` and `acks list`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from engage_listener.observe.logs import scrub
from engage_listener.store.common_reads import CommonReads
from engage_listener.store.common_sql import ACK_COLUMNS, ACK_FROM, ack_row, now_iso
from engage_listener.store.records import (
    AckRow,
    ControlField,
    ControlRow,
    Heartbeat,
    ListenerCounts,
    OutboxState,
    WebhookEventRow,
    WebhookState,
)

WEBHOOK_COLUMNS = (
    "w.id, w.event_id, w.listener, w.case_id, c.case_number, w.event, w.state, w.attempts,"
    " w.last_error, w.response, w.created_at, w.delivered_at, w.next_attempt_at"
)
WEBHOOK_FROM = "FROM webhook_events w LEFT JOIN cases c ON c.id = w.case_id"
# An event waits while an earlier event of its case is not delivered nor closed: in order.
NOT_BEHIND = (
    "NOT EXISTS (SELECT 1 FROM webhook_events e WHERE e.case_id = w.case_id"
    " AND e.state IN ('pending', 'failed') AND e.id < w.id)"
)
HEARTBEAT_COLUMNS = (
    "listener, state, pid, last_success_at, last_error, backlog, oldest_unprocessed,"
    " paused_until, updated_at"
)
_OUTBOX_FIELDS = ("attempts", "last_error", "smtp_reply", "sent_at", "next_attempt_at")
_WEBHOOK_FIELDS = ("attempts", "last_error", "response", "delivered_at", "next_attempt_at")


def webhook_row(r: Any) -> WebhookEventRow:
    """A row of `SELECT {WEBHOOK_COLUMNS} {WEBHOOK_FROM}` as a webhook event."""
    due = r[12]
    return WebhookEventRow(
        id=int(r[0]), event_id=str(r[1]), listener=str(r[2]), case_id=int(r[3]),
        case_number=None if r[4] is None else str(r[4]), event=r[5], state=r[6],
        attempts=int(r[7]), last_error=r[8], response=r[9], created_at=str(r[10]),
        delivered_at=r[11],
        next_attempt_at=(
            dt.datetime.fromtimestamp(float(due), dt.UTC).isoformat(timespec="seconds")
            if r[6] == "pending" and due
            else None
        ),
    )  # fmt: skip


def assignments(given: dict[str, Any]) -> tuple[str, list[Any]]:
    """`, name = ?...` for the fields given (not None), and their values: an error text
    scrubbed, a time as a float."""
    fields = {name: value for name, value in given.items() if value is not None}
    if "last_error" in fields:
        fields["last_error"] = scrub(str(fields["last_error"]))
    if "next_attempt_at" in fields:
        fields["next_attempt_at"] = float(fields["next_attempt_at"])
    return "".join(f", {name} = ?" for name in fields), list(fields.values())


class CommonQueries(CommonReads):
    """See `store.Store` and `CommonReads` (what the store supplies); `_sending` (the
    outbox rows this process marked `sending` and has not settled) and `_outbox_fence`
    come from the store too."""

    _sending: set[int]

    def _outbox_fence(self, state: OutboxState) -> tuple[str, tuple[Any, ...]] | None:
        """What else an outbox row must be for `update_outbox` to write `state` (SQL with
        `?` marks, and its parameters), or None: nothing, and the write always counts."""
        raise NotImplementedError

    # ----- the acknowledgement sender -------------------------------------------------
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
        fence = self._outbox_fence(state)
        mine, also = fence or ("", ())
        sql = f"UPDATE outbox SET state = ?{fields} WHERE id = ?{mine}"  # noqa: S608 - fixed names
        async with self.transaction() as tx:
            cur = await tx.execute(self._sql(sql), (state, *params, row_id, *also))
        if state == "sending":  # this process's own: never stranded while it lives
            self._sending.add(row_id)
        else:
            self._sending.discard(row_id)
        return fence is None or int(cur.rowcount) == 1

    # ----- the outboxes' listings -----------------------------------------------------
    async def unsettled(self, listener: str, mailbox: str, epoch: str) -> list[str]:
        rows = await self._rows(
            "SELECT item FROM ledger WHERE listener = ? AND mailbox = ? AND epoch = ?"
            " AND state = 'committed' ORDER BY item",
            (listener, mailbox, epoch),
        )
        return [str(r[0]) for r in rows]

    async def outbox_in_state(self, state: OutboxState) -> list[int]:
        rows = await self._rows("SELECT id FROM outbox WHERE state = ? ORDER BY id", (state,))
        return [int(r[0]) for r in rows]

    async def list_acks(self, states: Sequence[OutboxState] | None = None) -> list[AckRow]:
        rows = await self._listed(f"SELECT {ACK_COLUMNS} {ACK_FROM}", "o", "sent", states)
        return [ack_row(r) for r in rows]

    async def list_webhook_events(
        self, states: Sequence[WebhookState] | None = None
    ) -> list[WebhookEventRow]:
        select = f"SELECT {WEBHOOK_COLUMNS} {WEBHOOK_FROM}"
        return [webhook_row(r) for r in await self._listed(select, "w", "delivered", states)]

    async def _listed(
        self, select: str, alias: str, done: str, states: Sequence[str] | None
    ) -> list[Any]:
        """The rows of `select` in one of `states`, or in any but `done`, by id."""
        if states is None:
            where, params = f"!= '{done}'", ()
        else:
            where, params = self._in(states)
        return await self._rows(
            f"{select} WHERE {alias}.state {where} ORDER BY {alias}.id",
            params,
        )

    # ----- the webhook sender's writes ------------------------------------------------
    async def update_webhook_event(
        self,
        row_id: int,
        state: WebhookState,
        *,
        attempts: int | None = None,
        last_error: str | None = None,
        response: str | None = None,
        delivered_at: str | None = None,
        next_attempt_at: float | None = None,
    ) -> None:
        values = (attempts, last_error, response, delivered_at, next_attempt_at)
        fields, params = assignments(dict(zip(_WEBHOOK_FIELDS, values, strict=True)))
        await self._write_one(
            f"UPDATE webhook_events SET state = ?{fields} WHERE id = ?",  # noqa: S608
            (state, *params, row_id),
        )

    async def postpone_webhook_events(self, listeners: Sequence[str], until: float) -> None:
        match, params = self._in(listeners)
        await self._write_one(
            "UPDATE webhook_events SET next_attempt_at = ? WHERE state = 'pending'"  # noqa: S608
            f" AND next_attempt_at < ? AND listener {match}",
            (float(until), float(until), *params),
        )

    # ----- operator control -----------------------------------------------------------
    async def read_control(self, listener: str) -> ControlRow | None:
        rows = await self._rows(
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
        rows = await self._rows("SELECT listener, paused_until FROM listener_control")
        return {str(r[0]): r[1] for r in rows}

    # ----- status ---------------------------------------------------------------------
    async def heartbeats(self) -> list[Heartbeat]:
        rows = await self._rows(f"SELECT {HEARTBEAT_COLUMNS} FROM heartbeats ORDER BY listener")  # noqa: S608
        return [
            Heartbeat(str(r[0]), str(r[1]), int(r[2]), r[3], r[4],
                      None if r[5] is None else int(r[5]), r[6], r[7], str(r[8]))
            for r in rows
        ]  # fmt: skip

    async def listener_counts(self, listener: str, since: str) -> ListenerCounts:
        """One read: mails today and in all (not quarantined), held in quarantine,
        acknowledgements waiting."""
        rows = await self._rows(
            "SELECT (SELECT count(*) FROM ledger WHERE listener = ? AND created_at >= ?"
            "  AND state != 'quarantined'),"
            " (SELECT count(*) FROM ledger WHERE listener = ? AND state != 'quarantined'),"
            " (SELECT count(*) FROM quarantine WHERE listener = ? AND state = 'held'),"
            " (SELECT count(*) FROM outbox WHERE listener = ?"
            "  AND state IN ('pending', 'sending'))",
            (listener, since, listener, listener, listener),
        )
        today, total, held, acks = (int(v) for v in rows[0])
        return ListenerCounts(today, total, held, acks)
