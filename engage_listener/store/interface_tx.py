"""The `Transaction` protocol's parts beyond a mail's own writes: what the case engine
and the operators' commands write in one transaction besides the mail (acknowledgements
and webhook events queued with the case, closing and reopening, customer imports).

Callers import `Transaction` from `store.interface`, which joins these parts; they are
kept apart for size only.

Decisions:

* One protocol per concern, each a Protocol itself, so `store.interface.Transaction`
  is their union and a store implements one mixin per part (`store.sqlite.follow_ups`,
  `store.sqlite.operator_tx`, `store.postgres.follow_ups`, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from engage_listener.store.records import (
    AckRow,
    CaseCandidate,
    NewAck,
    NewWebhookEvent,
    OutboxState,
    WebhookEventRow,
    WebhookState,
)

__all__ = ["AckWrites", "CaseLifecycle", "CustomerWrites", "WebhookWrites"]


class CaseLifecycle(Protocol):
    """Closed cases a follow-up names, and closing and reopening (issue 18 point 2)."""

    async def closed_cases_by_message_ids(self, message_ids: Sequence[str]) -> list[CaseCandidate]:
        """Closed cases holding mails with these Message-IDs, newest case first, with
        their `closed_at` (a follow-up to a closed case: see cases.closed)."""
        ...

    async def closed_case_by_number(self, case_number: str) -> CaseCandidate | None:
        """The closed case with this number (or id, for a bare number), with `closed_at`."""
        ...

    async def closed_case_by_subject(
        self, customer_id: int | None, process: str | None, normalized_subject: str
    ) -> CaseCandidate | None:
        """The customer's newest closed case of this process and subject, if any."""
        ...

    async def close_case(
        self, case_id: int, reason: str | None, at: str, *, idle_before: str | None = None
    ) -> bool:
        """Close an open (or pending-approval) case at the ISO time `at`, with the
        operator's reason; False (nothing written) if it was in another status, or, with
        `idle_before`, if its newest mail (else its creation) is not older than that."""
        ...

    async def reopen_case(self, case_id: int, at: str) -> bool:
        """Open a closed case again (its close time and reason are cleared); False
        (nothing written) if it was not closed."""
        ...


class AckWrites(Protocol):
    """Acknowledgements: their limits, queueing one, and the operator's changes (`acks`)."""

    async def recent_acks(self, recipient_key: str, since: str) -> int:
        """Acknowledgements to `recipient_key` (`ack.recipient_key`) created since the ISO
        time `since`, not failed nor suppressed (the per-recipient limit)."""
        ...

    async def listener_acks(self, listener: str, since: str) -> int:
        """Acknowledgements of `listener` created since `since`, not suppressed (MaxPerHour)."""
        ...

    async def add_outbox(
        self, ack: NewAck, *, state: OutboxState = "pending", last_error: str | None = None
    ) -> int:
        """Queue an acknowledgement (`pending`), or record one held back (`suppressed`)."""
        ...

    async def get_ack(self, ack_id: int) -> AckRow | None: ...

    async def change_ack(
        self,
        ack_id: int,
        state: OutboxState,
        note: str,
        allowed: Sequence[OutboxState],
        *,
        next_attempt_at: float | None = None,
    ) -> bool:
        """The operator's change of a row still in one of `allowed`; False if it was not."""
        ...


class WebhookWrites(Protocol):
    """Case events for the CRM, queued with the case's writes (`outbox.webhooks`)."""

    async def add_webhook_event(self, event: NewWebhookEvent) -> int:
        """Queue a case event for the CRM (`pending`, due now), with the case's writes."""
        ...

    async def get_webhook_event(self, row_id: int) -> WebhookEventRow | None: ...

    async def change_webhook_event(
        self,
        row_id: int,
        state: WebhookState,
        note: str,
        allowed: Sequence[WebhookState],
        *,
        next_attempt_at: float | None = None,
    ) -> bool:
        """The operator's change of a row still in one of `allowed` (attempts start again
        from 0 when it becomes `pending`); False if it was not."""
        ...


class CustomerWrites(Protocol):
    """Operator commands: importing customers and their addresses."""

    async def customer_by_external_id(self, external_id: str) -> int | None: ...

    async def address_owner(self, address: str) -> int | None:
        """The customer an address (lower-cased) belongs to."""
        ...

    async def import_customer(self, name: str, external_id: str | None) -> int:
        """A new customer from an import, without addresses yet."""
        ...

    async def update_customer(self, customer_id: int, name: str, external_id: str | None) -> None:
        """Set the name (unless empty) and the external id (unless None)."""
        ...

    async def add_customer_address(self, customer_id: int, address: str) -> None:
        """Give the customer this (lower-cased) address; one it has already is kept."""
        ...
