"""The rows of the operator commands and `status`, not of the mail path: whole cases
(`cases`, `cases show|export`, `approve`, `reject`), quarantine, the acknowledgement and
webhook outbox listings (`acks`, `webhooks`), heartbeats (the daemon writes them, `status`
reads them) and a listener's counts.

Callers import these from `store.records` (or `store.interface`), which re-export them;
they are kept apart from the records one mail is ingested with for size only.

Decisions:

* A listing never holds what it must not show: an acknowledgement's MIME and a webhook
  event's body stay in the store (`AckRow`, `WebhookEventRow`), a case's mails come
  without their raw bytes (`StoredMessage.header` is at most HEADER_BYTES of it).
* The states (`CaseStatus`...) and `CaseRef` are `store.records`' and appear here in
  annotations only, imported for type checking: `records` imports this module to
  re-export it, so a run-time import back would be a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engage_listener.config.webhook import WebhookEventName

if TYPE_CHECKING:
    from engage_listener.store.records import (
        CaseRef,
        CaseStatus,
        OutboxState,
        QuarantineState,
        WebhookState,
    )


@dataclass(frozen=True)
class CaseSummary:
    """One row of `engage-listener cases`."""

    id: int
    case_number: str
    listener: str
    sender: str
    subject: str
    status: CaseStatus
    inbox: str | None
    messages: int
    attachments: int
    created_at: str
    ack: str | None = None  # state of the latest acknowledgement, with the error if failed
    related_case_id: int | None = None  # the case this one's first mail named, not joined
    related_case_number: str | None = None


@dataclass(frozen=True)
class CaseDetail:
    """One case whole, for `cases show` and `cases export` (its mails: `StoredMessage`).

    `related` are the other cases linked to this one: the case its first mail named
    (`related_case_id`) and the cases whose first mail named this one, by number."""

    id: int
    case_number: str
    listener: str
    process: str | None
    status: CaseStatus
    inbox: str | None
    priority: int | None
    subject: str
    sender: str
    sender_name: str
    customer_id: int | None
    created_at: str
    updated_at: str
    closed_at: str | None
    close_reason: str | None
    reopened_at: str | None
    related_case_id: int | None
    related: tuple[CaseRef, ...] = ()
    tags: tuple[str, ...] = ()  # sorted


@dataclass(frozen=True)
class StoredMessage:
    """One mail of a case as stored, without its raw bytes: `header` is the start of the
    raw mail (at most HEADER_BYTES), where To, Cc and Reply-To are read from."""

    id: int
    case_id: int | None
    message_id: str | None
    sender: str
    sender_name: str
    subject: str
    sent_at: str | None
    received_at: str
    size: int
    automatic: str | None
    body_text: str
    new_text: str | None
    has_html: bool
    header: bytes
    acknowledge: bool | None  # routing's say on its acknowledgement (None: none)
    ack: str | None  # state of its latest acknowledgement, with the error if any


@dataclass(frozen=True)
class StoredAttachment:
    """One attachment's description (its bytes: `Store.attachment_content`)."""

    id: int
    message_row: int
    filename: str
    content_type: str
    size: int
    inline: bool


HEADER_BYTES = 65536  # how much of a raw mail `StoredMessage.header` holds


@dataclass(frozen=True)
class CaseState:
    """A case's listener, status and number (`approve`, `reject`)."""

    listener: str
    status: CaseStatus
    case_number: str


@dataclass(frozen=True)
class Quarantined:
    """A mail that could not be processed, kept with the reason (`quarantine list`)."""

    id: int
    listener: str
    mailbox: str
    item: str
    message_id: str | None
    sender: str
    subject: str
    reason: str
    attempts: int
    state: QuarantineState
    case_id: int | None
    created_at: str
    size: int


@dataclass(frozen=True)
class Heartbeat:
    """One running listener, as the daemon last saw it (ISO UTC times)."""

    listener: str
    state: str
    pid: int
    last_success_at: str | None
    last_error: str | None
    backlog: int | None
    oldest_unprocessed: str | None
    paused_until: str | None
    updated_at: str


@dataclass(frozen=True)
class ListenerCounts:
    """What the store counts for one listener's status."""

    processed_today: int  # ledger rows since the given time, not quarantined
    processed_total: int  # ledger rows, not quarantined
    quarantined: int  # held in quarantine
    pending_acks: int  # pending or sending


@dataclass(frozen=True)
class AckRow:
    """One outbox row (an acknowledgement) for `engage-listener acks`; never its MIME."""

    id: int
    listener: str
    case_id: int
    case_number: str | None
    recipient: str
    subject: str
    state: OutboxState
    attempts: int
    last_error: str | None
    smtp_message_id: str
    smtp_reply: str | None
    created_at: str
    sent_at: str | None
    next_attempt_at: str | None  # ISO UTC, pending rows only


@dataclass(frozen=True)
class WebhookEventRow:
    """One webhook event for `engage-listener webhooks`; never its body."""

    id: int
    event_id: str
    listener: str
    case_id: int
    case_number: str | None
    event: WebhookEventName
    state: WebhookState
    attempts: int
    last_error: str | None
    response: str | None  # the receiver's status line when delivered
    created_at: str
    delivered_at: str | None
    next_attempt_at: str | None  # ISO UTC, pending rows only
