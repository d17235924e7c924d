"""The `Store` protocol's reads and writes for operators, the senders and status: whole
cases (`cases show|export|close --idle-days`, `attachments save`), customers and
quarantine, the acknowledgement and webhook outboxes, operator control and heartbeats.

Callers import `Store` from `store.interface`, which joins these parts; they are kept
apart for size only.

Decisions:

* Each write here is its own transaction (committed when the method returns), as every
  `Store` method that writes; a caller needing several writes together uses
  `Store.transaction()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from engage_listener.store.records import (
    AckRow,
    CaseDetail,
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
    StoredAttachment,
    StoredMessage,
    WebhookDelivery,
    WebhookEventRow,
    WebhookState,
)

__all__ = ["CaseReads", "ControlAndStatus", "OutboxReads", "WebhookReads"]


class CaseReads(Protocol):
    """Cases, customers and quarantine for the operators' commands."""

    async def list_cases(self) -> list[CaseSummary]: ...

    async def case_state(self, case_id: int) -> CaseState | None: ...

    async def case_detail(self, case_id: int) -> CaseDetail | None:
        """The case whole, with its tags and related cases (`cases show`)."""
        ...

    async def cases_page(
        self, after_id: int, limit: int, *, since: str | None = None, listener: str | None = None
    ) -> list[CaseDetail]:
        """Up to `limit` cases with an id above `after_id`, by id: those of `listener`
        (every one for None) changed (updated_at) at or after the ISO time `since`. The
        caller pages through (`cases export` streams; nothing holds every case)."""
        ...

    async def case_messages(self, case_id: int) -> list[StoredMessage]:
        """The case's mails, oldest first, without their raw bytes."""
        ...

    async def case_attachments(self, case_id: int) -> list[StoredAttachment]:
        """The attachments of every mail of the case, by message then id."""
        ...

    async def attachment_content(self, attachment_id: int) -> bytes | None:
        """One attachment's bytes (for ExtractAttachments False: the whole mail)."""
        ...

    async def idle_cases(self, before: str) -> list[int]:
        """Ids of open cases whose newest mail (else their creation) is older than the
        ISO UTC time `before` (`cases close --idle-days`)."""
        ...

    async def list_customers(self) -> list[Customer]: ...

    async def list_quarantine(self, *, include_replayed: bool = False) -> list[Quarantined]:
        """Held entries (and replayed ones too if asked), oldest first."""
        ...

    async def get_quarantine(self, entry_id: int) -> tuple[Quarantined, bytes] | None:
        """The entry and the raw bytes kept."""
        ...

    async def mark_replayed(self, entry_id: int, case_id: int | None) -> None: ...


class OutboxReads(Protocol):
    """The acknowledgement outbox: the sender's reads and writes, `acks`."""

    async def outbox_in_state(self, state: OutboxState) -> list[int]:
        """Ids of the rows in `state`, in order."""
        ...

    async def due_outbox(self, now: float, limit: int) -> list[OutboxRow]:
        """Pending rows whose next attempt (epoch seconds) has come, oldest first, claimed
        for this sender: a store shared by several daemons hands a row to one of them
        (another live daemon's claims are left to it, a dead one's taken over)."""
        ...

    async def stranded_outbox(self) -> list[int]:
        """Ids of `sending` rows whose sender is gone (the process ended, or a daemon of a
        shared store is no longer alive): never a row this process is sending. Safe to ask
        at any time; the sender makes them `uncertain`."""
        ...

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
        """Set the state, and each other field given (None: left as it is); committed.
        Staying `pending` or becoming `sending` needs the row still claimed by this sender
        (a shared store: no other daemon took it over meanwhile); False when it was not,
        and nothing written. A final state (sent, failed, uncertain) is always written."""
        ...

    async def list_acks(self, states: Sequence[OutboxState] | None = None) -> list[AckRow]:
        """Rows in `states`, oldest first; by default every row not `sent`."""
        ...


class WebhookReads(Protocol):
    """The webhook outbox: the sender's reads and writes, `webhooks`."""

    async def due_webhook_events(self, now: float, limit: int) -> list[WebhookDelivery]:
        """Pending events whose next attempt (epoch seconds) has come and that no earlier
        event of their case still waits before (pending or failed): oldest first, claimed
        for this sender as `due_outbox` claims acknowledgements."""
        ...

    async def next_webhook_attempt(self) -> float | None:
        """When the earliest pending event not waiting behind another, and not claimed by
        another live daemon, is due (None: none)."""
        ...

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
        """Set the state, and each other field given (None: left as it is); committed."""
        ...

    async def postpone_webhook_events(self, listeners: Sequence[str], until: float) -> None:
        """Pending events of these listeners are not due before `until` (their receiver is
        unavailable); committed."""
        ...

    async def list_webhook_events(
        self, states: Sequence[WebhookState] | None = None
    ) -> list[WebhookEventRow]:
        """Rows in `states`, oldest first; by default every row not `delivered`."""
        ...


class ControlAndStatus(Protocol):
    """Operator control (pauses, resets) and what `status` reads."""

    async def read_control(self, listener: str) -> ControlRow | None: ...

    async def set_control(self, listener: str, field: ControlField, value: str | None) -> None:
        """Set one request (an ISO time) or clear it (None)."""
        ...

    async def clear_reset(self, listener: str, reset_from: str) -> None:
        """Clear the reset request if it is still `reset_from` (a newer one stays)."""
        ...

    async def write_heartbeats(self, beats: Sequence[Heartbeat]) -> None:
        """Replace this daemon's heartbeats with these (its running listeners). A store
        shared by several daemons keeps the others' rows, except for the listeners in
        `beats` (taken over); a store of one daemon replaces every row."""
        ...

    async def heartbeats(self) -> list[Heartbeat]: ...

    async def paused_until(self) -> dict[str, str | None]:
        """Every listener's requested pause (ISO) from operator control."""
        ...

    async def listener_counts(self, listener: str, since: str) -> ListenerCounts:
        """Counts for `status`; `since` (ISO UTC) starts "today"."""
        ...
