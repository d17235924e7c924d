"""The records and states the store takes and gives, independent of any database.

Plain frozen dataclasses and `Literal` states: what a caller of `store.interface` holds
in its hands. No driver, no SQL. The rows only operators and `status` read (whole cases,
quarantine, the outboxes' listings, heartbeats) are defined in `store.operator_rows`,
for size, and imported from here like the rest.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from engage_listener.config.webhook import WebhookEventName
from engage_listener.store.operator_rows import (
    HEADER_BYTES,
    AckRow,
    CaseDetail,
    CaseState,
    CaseSummary,
    Heartbeat,
    ListenerCounts,
    Quarantined,
    StoredAttachment,
    StoredMessage,
    WebhookEventRow,
)

__all__ = [
    "HEADER_BYTES", "OPEN_STATUSES", "OUTBOX_STATES", "WEBHOOK_STATES", "AckRow", "CaseCandidate",
    "CaseDetail", "CaseInfo", "CaseRef", "CaseState", "CaseStatus", "CaseSummary", "ControlField",
    "ControlRow", "Customer", "Heartbeat", "LedgerEntry", "LedgerState", "ListenerCounts",
    "MailKey", "MailSeen", "NewAck", "NewAttachment", "NewCase", "NewMessage", "NewWebhookEvent",
    "OutboxRow", "OutboxState", "QuarantineState", "Quarantined", "SettledState",
    "StoredAttachment", "StoredMessage", "SubjectKey", "WebhookDelivery", "WebhookEventRow",
    "WebhookState",
]  # fmt: skip

# States as the store keeps them (text columns); a `Literal` so a typo is a type error.
CaseStatus = Literal["open", "pending-approval", "rejected", "closed"]
# committed: in the store, not yet settled on the server; moved/deleted: settled there;
# quarantined: kept in quarantine (and, for IMAP, in the error folder).
LedgerState = Literal["committed", "moved", "deleted", "quarantined"]
SettledState = Literal["moved", "deleted", "quarantined"]  # what `mark_done` records
# See outbox.delivery for the life of an acknowledgement.
OutboxState = Literal["pending", "sending", "sent", "failed", "uncertain", "closed", "suppressed"]
QuarantineState = Literal["held", "replayed"]
# See outbox.webhooks for the life of a webhook event: pending until the receiver answers
# 2xx (delivered), failed past MaxAttempts or on a refusal, closed by an operator.
WebhookState = Literal["pending", "delivered", "failed", "closed"]
WEBHOOK_STATES: tuple[WebhookState, ...] = ("pending", "delivered", "failed", "closed")
ControlField = Literal["paused_until", "reset_from"]

OPEN_STATUSES: tuple[CaseStatus, ...] = ("open", "pending-approval")  # new mail may join
OUTBOX_STATES: tuple[OutboxState, ...] = (
    "pending",
    "sending",
    "sent",
    "failed",
    "uncertain",
    "closed",
    "suppressed",
)


@dataclass(frozen=True)
class MailKey:
    """Where a mail was seen, unique for the life of its source: the ledger's key.

    Source-neutral: `mailbox` is the folder (or "" for a source with one maildrop),
    `epoch` the incarnation of the item ids (IMAP: the folder's UIDVALIDITY; POP3: the
    generation of a reused UIDL, "0" first), `item` the mail's id there (IMAP: UID;
    POP3: UIDL). A source builds its keys; the store only compares them.
    """

    listener: str
    mailbox: str
    epoch: str
    item: str


@dataclass(frozen=True)
class LedgerEntry:
    """One mail the ledger holds under (listener, mailbox, item): its epoch, state,
    SHA-256, and the size of what the store kept (None if unknown)."""

    epoch: str
    state: LedgerState
    sha256: str
    size: int | None


@dataclass(frozen=True)
class NewCase:
    listener: str
    process: str | None
    sender: str
    sender_name: str
    subject: str
    normalized_subject: str
    status: CaseStatus = "open"
    customer_id: int | None = None
    related_case_id: int | None = None  # the case it named but may not join


@dataclass(frozen=True)
class CaseRef:
    id: int
    case_number: str


@dataclass(frozen=True)
class CaseCandidate:
    """An open case a mail names (by header or token), with what decides if it may join."""

    id: int
    case_number: str
    listener: str
    process: str | None
    closed_at: str | None = None  # a closed case (ISO UTC): see cases.closed
    # Whether the address asked with `cases_by_message_ids` takes part in the case (see
    # `is_participant`); None: not asked.
    takes_part: bool | None = None

    @property
    def ref(self) -> CaseRef:
        return CaseRef(self.id, self.case_number)


@dataclass(frozen=True)
class NewMessage:
    listener: str
    message_id: str | None
    in_reply_to: str | None
    sender: str
    sender_name: str
    subject: str
    sent_at: dt.datetime | None
    received_at: dt.datetime
    sha256: str
    raw: bytes
    parsed: bool
    body_text: str
    body_html: str | None
    defects: str
    automatic: str | None = None
    # the mail without its attachments (ExtractAttachments True, when any were removed);
    # None: the stored body is `raw` itself (nothing removed, or ExtractAttachments False)
    stored_mime: bytes | None = None
    ignored: bool = False  # automatic mail stored without a case
    new_text: str | None = None  # what the customer wrote (mail.reply.new_text); None: unknown


@dataclass(frozen=True)
class NewAttachment:
    filename: str
    content_type: str
    content: bytes
    content_id: str | None = None
    inline: bool = False
    raw_of_message: bool = False  # `content` is the message's raw: stored there, not again


@dataclass(frozen=True)
class NewAck:
    """An acknowledgement to deliver after commit (the outbox row)."""

    listener: str
    case_id: int
    message_row: int
    recipient: str
    subject: str
    smtp_message_id: str
    mime: bytes


@dataclass(frozen=True)
class NewWebhookEvent:
    """A case event for the CRM, queued in the transaction that made it (the outbox row).

    `body` is the JSON sent, byte for byte, every attempt; `event_id` (in it too) is what
    the receiver drops repeats by."""

    listener: str
    case_id: int
    message_row: int | None
    event: WebhookEventName
    event_id: str
    body: bytes


@dataclass(frozen=True)
class WebhookDelivery:
    """A webhook event due for delivery."""

    id: int
    listener: str
    case_id: int
    event: WebhookEventName
    event_id: str
    attempts: int
    body: bytes


@dataclass(frozen=True)
class Customer:
    id: int
    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class SubjectKey:
    """What a mail's case is looked up by when no header or token names one: the case
    process it goes to and its normalized subject (`cases_by_subject`)."""

    process: str | None
    normalized: str
    # The mail names no case (no header, no token) and would open one were its customer
    # without a case by this subject: the PostgreSQL store then takes the new case's id
    # in the same read (its `arrival`).
    opens: bool = False


@dataclass(frozen=True)
class MailSeen:
    """What the store knows of a mail as it arrives (`find_arrival`): the message row of
    the same mail taken before (a duplicate), the customer of the sender's address, and,
    when asked with a `SubjectKey`, that customer's open and closed case by it (what
    `cases_by_subject` says; (None, None) without a customer; None when not asked)."""

    duplicate: int | None
    customer: Customer | None
    by_subject: tuple[CaseRef | None, CaseCandidate | None] | None = None


@dataclass(frozen=True)
class CaseInfo:
    """A case as routing hooks see it."""

    id: int
    case_number: str
    process: str | None
    status: CaseStatus
    inbox: str | None
    subject: str
    customer_id: int | None
    priority: int | None = None
    tags: tuple[str, ...] = ()  # sorted


@dataclass(frozen=True)
class OutboxRow:
    """An acknowledgement due for delivery."""

    id: int
    listener: str
    recipient: str
    attempts: int
    mime: bytes


@dataclass(frozen=True)
class ControlRow:
    """An operator's pending requests for a listener (ISO times, aware), if any."""

    paused_until: str | None
    reset_from: str | None
