"""The records and states the store takes and gives, independent of any database.

Plain frozen dataclasses and `Literal` states: what a caller of `store.interface` holds
in its hands. No driver, no SQL.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from engage_listener.config.webhook import WebhookEventName

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


@dataclass(frozen=True)
class Customer:
    id: int
    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class MailSeen:
    """What the store knows of a mail as it arrives (`find_arrival`): the message row of
    the same mail taken before (a duplicate), and the customer of the sender's address."""

    duplicate: int | None
    customer: Customer | None


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
class OutboxRow:
    """An acknowledgement due for delivery."""

    id: int
    listener: str
    recipient: str
    attempts: int
    mime: bytes


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
class ControlRow:
    """An operator's pending requests for a listener (ISO times, aware), if any."""

    paused_until: str | None
    reset_from: str | None


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
