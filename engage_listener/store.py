"""The case store's interface and records, independent of any database.

The listener and the case engine talk to these protocols only, so the embedded
SQLite store can be joined by a PostgreSQL one without touching them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol


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


@dataclass(frozen=True)
class CaseRef:
    id: int
    case_number: str


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


@dataclass(frozen=True)
class NewAttachment:
    filename: str
    content_type: str
    content: bytes
    content_id: str | None = None
    inline: bool = False


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


class Transaction(Protocol):
    """Writes of one message, committed together or not at all."""

    async def find_duplicate(self, listener: str, sha256: str, message_id: str | None) -> int | None:
        """Message row of the same mail (same bytes and Message-ID) seen under another key."""
        ...

    async def case_of_message(self, message_row: int) -> CaseRef: ...

    async def create_case(self, case: NewCase) -> CaseRef: ...

    async def add_message(self, case_id: int, message: NewMessage) -> int: ...

    async def add_attachment(self, message_row: int, attachment: NewAttachment) -> None: ...

    async def add_ledger(self, key: LedgerKey, message_row: int, message: NewMessage) -> None: ...


class Store(Protocol):
    """Persistence of cases, messages and the exactly-once ledger."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    async def known_uids(
        self, listener: str, folder: str, uidvalidity: int, uids: Sequence[int]
    ) -> set[int]:
        """Which of these UIDs are already committed in the ledger."""
        ...

    async def mark_done(
        self, listener: str, folder: str, uidvalidity: int, uids: Sequence[int], state: str
    ) -> None:
        """Record that these mails were moved or deleted on the server."""
        ...

    async def list_cases(self) -> list[CaseSummary]: ...
