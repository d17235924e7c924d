"""The PostgreSQL store's reads and writes for operator commands, the outbox sender,
control and status that is its own: claims and a daemon's heartbeats; the rest, said
alike by both stores, is in `common_queries`. A part of `store.PostgresStore`, kept apart
for size; each write is its own transaction.

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
from engage_listener.store.common_queries import HEARTBEAT_COLUMNS, CommonQueries
from engage_listener.store.postgres.dialect import format_marks
from engage_listener.store.postgres.transaction import PostgresTransaction
from engage_listener.store.postgres.webhooks import claim_due, claimable
from engage_listener.store.records import Heartbeat, OutboxRow, OutboxState

_DUE_OUTBOX = claim_due("outbox", "o", "", "u.id, u.listener, u.recipient, u.attempts, u.mime")


class OperatorQueries(CommonQueries):
    """See `store.Store`; `query` and `transaction` come from the store, `owner` and
    `_claim` too (`webhooks.WebhookQueries`)."""

    owner: str | None
    _octet_length = "octet_length"
    _string_agg = "string_agg"

    def _claim(self, **params: Any) -> dict[str, Any]:
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[PostgresTransaction]:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return format_marks(sql)

    def _outbox_fence(self, state: OutboxState) -> tuple[str, tuple[Any, ...]] | None:
        """The sender's own steps before DATA only while its claim holds; final states
        always; without an owner (operator commands) no claim to check."""
        if state in {"pending", "sending"} and self.owner is not None:  # still ours
            return " AND claimed_by = ?", (self.owner,)
        return "", ()

    def _in(self, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
        return "= ANY(?)", (list(values),)

    # ----- the outbox -----------------------------------------------------------------
    async def due_outbox(self, now: float, limit: int) -> list[OutboxRow]:
        """Claimed for this daemon (`claimed_by`): rows another live daemon claimed are
        left to it, locked ones skipped (see `webhooks.claimable`)."""
        rows = await self.query(
            _DUE_OUTBOX,
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
                    f"INSERT INTO heartbeats ({HEARTBEAT_COLUMNS}, daemon)"  # noqa: S608
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (b.listener, b.state, b.pid, b.last_success_at,
                     None if b.last_error is None else scrub(b.last_error), b.backlog,
                     b.oldest_unprocessed, b.paused_until, b.updated_at, self.owner),
                )  # fmt: skip
