"""The case store's interface and records, independent of any database.

The listener and the case engine talk to these protocols only, so the embedded
SQLite store can be joined by a PostgreSQL one without touching them.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
SyncExecute = Callable[[str, Any], sqlite3.Cursor]  # sqlite3.Connection.execute


@dataclass(frozen=True)
class LedgerKey:
    """Where a mail was seen: unique for the life of the mailbox (RFC 3501 UIDs)."""

    listener: str
    folder: str
    uidvalidity: int
    uid: int


@dataclass(frozen=True)
class NewCase:
    listener: str
    process: str | None
    sender: str
    sender_name: str
    subject: str
    normalized_subject: str
    status: str = "open"
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
    stored_mime: bytes | None = None  # the mail without its attachments (ExtractAttachments)
    ignored: bool = False  # automatic mail stored without a case


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
class Customer:
    id: int
    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class CaseInfo:
    """A case as routing hooks see it."""

    id: int
    case_number: str
    process: str | None
    status: str
    inbox: str | None
    subject: str
    customer_id: int | None


@dataclass(frozen=True)
class Quarantined:
    """A mail that could not be processed, kept with the reason (`quarantine list`)."""

    id: int
    listener: str
    folder: str
    uid: int
    message_id: str | None
    sender: str
    subject: str
    reason: str
    attempts: int
    state: str
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
    status: str
    inbox: str | None
    messages: int
    attachments: int
    created_at: str
    ack: str | None = None  # state of the latest acknowledgement, with the error if failed
    related_case_id: int | None = None  # the case this one's first mail named, not joined
    related_case_number: str | None = None


class Transaction(Protocol):
    """Writes of one message, committed together or not at all."""

    async def execute(self, sql: str, params: Any = ()) -> Any:
        """Raw SQL in this transaction (operator commands, control, outbox)."""
        ...

    def interrupt(self) -> None:
        """Abort the statement running now (a routing procedure past its timeout)."""
        ...

    async def run_sync(self, work: Callable[[SyncExecute], T]) -> T:
        """`work(execute)` with plain sqlite3 calls, off the event loop (SQL hooks)."""
        ...

    def run_inline(self, work: Callable[[SyncExecute], T], stop_at: float) -> T:
        """`work(execute)` on the event loop (quick SQL hooks). Stopped at `stop_at`
        (time.monotonic()): undone and `StoppedEarly`, or `StoreError` if the transaction
        went with it."""
        ...

    async def find_duplicate(
        self, listener: str, sha256: str, message_id: str | None
    ) -> int | None:
        """Message row of the same mail (same bytes and Message-ID) seen under another key."""
        ...

    async def case_of_message(self, message_row: int) -> CaseRef | None: ...

    async def find_customer(self, address: str) -> Customer | None: ...

    async def get_customer(self, customer_id: int) -> Customer | None: ...

    async def create_customer(self, name: str, address: str, source: str) -> Customer: ...

    async def cases_by_message_ids(self, message_ids: Sequence[str]) -> list[CaseCandidate]:
        """Open cases holding mails with these Message-IDs, newest case first."""
        ...

    async def case_by_number(self, case_number: str) -> CaseCandidate | None:
        """The open case with this number (or id, for a bare number)."""
        ...

    async def is_participant(self, case_id: int, address: str) -> bool:
        """Whether `address` is one of the case customer's addresses or was in the From,
        To or Cc of one of its mails."""
        ...

    async def add_participants(self, case_id: int, addresses: Sequence[str]) -> None: ...

    async def open_case_by_subject(
        self, customer_id: int | None, process: str | None, normalized_subject: str
    ) -> CaseRef | None: ...

    async def case_info(self, case_id: int) -> CaseInfo: ...

    async def create_case(self, case: NewCase) -> CaseRef: ...

    async def add_message(self, case_id: int | None, message: NewMessage) -> int: ...

    async def add_attachment(self, message_row: int, attachment: NewAttachment) -> None: ...

    async def apply_decision(
        self,
        case_id: int,
        message_row: int,
        inbox: str | None,
        priority: int | None,
        tags: Sequence[str],
        acknowledge: bool | None,
    ) -> None: ...

    async def add_ledger(self, key: LedgerKey, message_row: int, message: NewMessage) -> None: ...

    async def recent_acks(self, recipient_key: str, since: str) -> int:
        """Acknowledgements to `recipient_key` (`ack.recipient_key`) created since the ISO
        time `since`, not failed nor suppressed (the per-recipient limit)."""
        ...

    async def listener_acks(self, listener: str, since: str) -> int:
        """Acknowledgements of `listener` created since `since`, not suppressed (MaxPerHour)."""
        ...

    async def add_outbox(
        self, ack: NewAck, *, state: str = "pending", last_error: str | None = None
    ) -> int:
        """Queue an acknowledgement (`pending`), or record one held back (`suppressed`)."""
        ...

    async def add_quarantine(
        self, key: LedgerKey, raw: bytes, message: NewMessage, reason: str, attempts: int
    ) -> int:
        """Keep the mail with its reason, and a ledger row so it is never taken again."""
        ...


class Store(Protocol):
    """Persistence of cases, messages and the exactly-once ledger."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    def group(self) -> AbstractAsyncContextManager[None]:
        """Commit the transactions this task opens inside the block together, at its end."""
        ...

    async def known_states(
        self, listener: str, folder: str, uidvalidity: int, uids: Sequence[int]
    ) -> dict[int, str]:
        """Ledger state of those UIDs already in the ledger (committed, quarantined, ...)."""
        ...

    async def known_message_ids(self, listener: str, message_ids: Sequence[str]) -> set[str]:
        """Which of these Message-IDs this listener already has (date resets)."""
        ...

    async def record_failure(self, key: LedgerKey, error: str) -> int:
        """Count one more failed attempt at a mail; returns the attempts so far."""
        ...

    async def mark_done(
        self, listener: str, folder: str, uidvalidity: int, uids: Sequence[int], state: str
    ) -> None:
        """Record that these mails were moved or deleted on the server."""
        ...

    async def list_cases(self) -> list[CaseSummary]: ...

    async def query(self, sql: str, params: Any = ()) -> list[Any]:
        """Read-only rows (operator commands, the outbox sender)."""
        ...
