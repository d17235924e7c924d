"""Delivers queued acknowledgements after their case committed, each at most once.

Rows are written by the case engine in the mail's own transaction, so an
acknowledgement is never lost. Once the server has accepted the recipients, and
just before DATA (the only step after which the server may hold the message), the
row is marked `sending` and committed; after the server's reply it becomes `sent`
(with the reply), `pending` again (4xx or connection trouble: retried with
back-off) or `failed` (5xx, with the server's reason). A crash before DATA leaves
the row `pending`: it is sent after the restart. A row still `sending` at
start-up (or, with several daemons on one PostgreSQL, claimed by a daemon no longer alive)
was interrupted while the server may already have accepted it: it becomes `uncertain` and
is never sent again automatically, so a customer never gets two. Several daemons share the
outbox: each row is claimed by one sender (`Store.due_outbox`), and a sender marks it
`sending` only while the claim is still its own.
Only an operator moves a row out of `uncertain` or `failed` (`engage-listener acks
resend`, back to `pending`, or `acks close`, to `closed`: never to be sent).
Intake never waits for any of this: the sender is its own task.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import time
from collections.abc import Awaitable, Callable, Mapping
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Protocol

from engage_listener.errors import EngageError, PermanentError
from engage_listener.observe.logs import Logger
from engage_listener.store.interface import OutboxRow, Store
from engage_listener.store.records import OUTBOX_STATES, OutboxState

if TYPE_CHECKING:  # smtp (aiosmtplib) is imported only once there is something to send
    from engage_listener.outbox.smtp import BeforeData, SmtpEndpoint, SmtpTemporaryError


class Send(Protocol):
    """`smtp.send_message`'s shape (tests wrap it to simulate crashes)."""

    def __call__(
        self, endpoint: SmtpEndpoint, message: EmailMessage, *, before_data: BeforeData
    ) -> Awaitable[str]: ...


RETRY_BASE = 30.0
RETRY_CAP = 3600.0
POLL = 30.0
BATCH = 50

# Every state an outbox row can be in. The sender takes only `pending` rows that are due;
# `closed` is written only by an operator (`acks close`): an acknowledgement never to be sent;
# `suppressed` by the engine past the listener's MaxPerHour (why in last_error): recorded so
# `acks` shows it, never sent, never retried.
STATES = OUTBOX_STATES
RESENDABLE: tuple[OutboxState, ...] = ("uncertain", "failed", "closed")  # `acks resend`
CLOSABLE: tuple[OutboxState, ...] = ("uncertain", "failed")  # `acks close`


INTERRUPTED = "interrupted while sending; the server may have accepted it, so it is not sent again"


class ClaimLost(EngageError):
    """The row was claimed by another daemon before DATA: this sender must not send it."""


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class OutboxSender:
    """One task for every listener's acknowledgements."""

    def __init__(
        self,
        store: Store,
        endpoints: Mapping[str, SmtpEndpoint],
        send: Send,
        *,
        wake: asyncio.Event,
        stop: asyncio.Event,
        log: Logger,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.endpoints = endpoints
        self.send = send
        self.wake = wake
        self.stop = stop
        self.log = log
        self.wall = wall

    async def recover(self) -> int:
        """Rows left `sending` by a sender that is gone (a crash; with several daemons, a
        daemon no longer alive) become `uncertain`, never re-sent automatically. Only a
        row still `sending` changes: one its sender settled meanwhile keeps its state."""
        rows = await self.store.stranded_outbox()
        recovered = 0
        for row_id in rows:
            async with self.store.transaction() as tx:
                changed = await tx.change_ack(row_id, "uncertain", INTERRUPTED, ["sending"])
            if changed:
                recovered += 1
                self.log.warning("ack_uncertain", outbox_id=row_id)
        return recovered

    async def run(self) -> None:
        """Deliver due rows until stopped; woken at once when the engine queues one. Each
        round first recovers stranded rows: another daemon may have died since the last."""
        while not self.stop.is_set():
            self.wake.clear()  # before looking: a row queued while sending wakes us again
            try:
                await self.recover()
                await self.deliver_due()
            except EngageError as exc:  # the store itself failing: try again later
                self.log.error("outbox_error", error=str(exc))
            waiters = {asyncio.ensure_future(e.wait()) for e in (self.wake, self.stop)}
            await asyncio.wait(waiters, timeout=POLL, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    async def deliver_due(self) -> int:
        """Send every row whose time has come, BATCH rows a round; returns how many were sent.

        Every row taken leaves `pending`-and-due (sent, failed, uncertain, or retried later),
        so the rounds end.
        """
        sent, taken = 0, BATCH
        while taken == BATCH and not self.stop.is_set():
            rows = await self.store.due_outbox(self.wall(), BATCH)
            taken = len(rows)
            for row in rows:
                if self.stop.is_set():
                    break
                sent += await self._deliver(row)
        return sent

    async def _deliver(self, row: OutboxRow) -> int:
        endpoint = self.endpoints.get(row.listener)
        if endpoint is None:
            await self._set(row.id, "failed", last_error="listener has no SMTP account now")
            return 0
        from engage_listener.outbox.smtp import SmtpTemporaryError  # noqa: PLC0415 - start-up time

        message = email.message_from_bytes(row.mime, policy=email.policy.SMTP)
        assert isinstance(message, EmailMessage)
        if not await self.store.update_outbox(row.id, "pending", attempts=row.attempts + 1):
            self.log.warning("ack_taken_over", outbox_id=row.id)  # claimed by another daemon
            return 0

        async def sending() -> None:  # committed before DATA: from here a crash is ambiguous
            if not await self.store.update_outbox(row.id, "sending"):
                raise ClaimLost(f"acknowledgement {row.id} was taken over by another daemon")

        try:
            reply = await self.send(endpoint, message, before_data=sending)
        except ClaimLost as exc:  # before DATA: nothing sent; its new owner sends it
            self.log.warning("ack_taken_over", outbox_id=row.id, error=str(exc))
            return 0
        except SmtpTemporaryError as exc:
            return await self._temporary(row, exc)
        except PermanentError as exc:
            await self._set(row.id, "failed", last_error=str(exc))
            self.log.error("ack_failed", outbox_id=row.id, recipient=row.recipient, error=str(exc))
            return 0
        await self._set(row.id, "sent", smtp_reply=reply, sent_at=now_iso())
        self.log.info(
            "ack_sent",
            outbox_id=row.id,
            recipient=row.recipient,
            reply=reply,
            message_id=str(message["Message-ID"]),
        )
        return 1

    async def _temporary(self, row: OutboxRow, exc: SmtpTemporaryError) -> int:
        if exc.maybe_sent:  # the server may have it: never risk a second copy
            await self._set(row.id, "uncertain", last_error=str(exc))
            self.log.warning("ack_uncertain", outbox_id=row.id, error=str(exc))
            return 0
        delay = min(RETRY_CAP, RETRY_BASE * 2**row.attempts)
        await self._set(row.id, "pending", last_error=str(exc), next_attempt_at=self.wall() + delay)
        self.log.warning(
            "ack_retry", outbox_id=row.id, recipient=row.recipient, error=str(exc), retry_in=delay
        )
        return 0

    async def _set(self, row_id: int, state: OutboxState, **fields: Any) -> None:
        """Update one row and commit: each state change is durable before the next step."""
        await self.store.update_outbox(row_id, state, **fields)
