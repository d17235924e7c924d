"""Acknowledgements and a customer's import inside one PostgreSQL transaction.

A part of `transaction.PostgresTransaction`, kept apart for size: what is PostgreSQL's
own (inserts RETURNING their id, a bytea as `%b`); the rest, said alike by both stores,
is in `common_writes`. The acknowledgement counts mirror SQLite's `transaction`.
"""

from __future__ import annotations

from engage_listener.mail.fields import recipient_key
from engage_listener.observe.logs import scrub
from engage_listener.store.common_sql import now_iso
from engage_listener.store.common_writes import CommonWrites
from engage_listener.store.interface import NewAck
from engage_listener.store.records import CaseStatus, OutboxState


class MoreWrites(CommonWrites):
    """See `store.Transaction`; `_one` comes from the transaction."""

    def _forget(self, case_id: int | None = None) -> None:
        """The transaction's remembered `case_info` of that case is stale (see it)."""
        raise NotImplementedError

    # ----- a case's status: the shared SQL, and the remembered case_info forgotten ---
    async def set_case_status(
        self, case_id: int, status: CaseStatus, *, touch: bool = False
    ) -> None:
        self._forget(case_id)
        await super().set_case_status(case_id, status, touch=touch)

    async def close_case(
        self, case_id: int, reason: str | None, at: str, *, idle_before: str | None = None
    ) -> bool:
        self._forget(case_id)
        return await super().close_case(case_id, reason, at, idle_before=idle_before)

    async def reopen_case(self, case_id: int, at: str) -> bool:
        self._forget(case_id)
        return await super().reopen_case(case_id, at)

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

    # ----- cases and customers (approval, operator commands) --------------------------
    async def import_customer(self, name: str, external_id: str | None) -> int:
        row = await self._one(
            "INSERT INTO customers (name, external_id, source, created_at)"
            " VALUES (%s, %s, 'import', %s) RETURNING id",
            (name, external_id, now_iso()),
        )
        return int(row[0])
