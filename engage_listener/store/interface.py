"""The case store's interface, independent of any database.

Callers (the case engine, intake, the outbox, status, the operator commands) talk to
these protocols only, with the records of `store.records`, so the embedded SQLite store
can be joined by a PostgreSQL one without touching them.

Decisions:

* No SQL crosses this interface: every read and write a caller needs is a named method.
  The one exception is the operators' own `sql:` routing hooks, run through
  `Transaction.run_sync`/`run_inline` inside the mail's transaction, in the dialect of
  the store (`SqlDialect` checks their files when the configuration is loaded).
* Each `Store` method that writes is its own transaction; `Transaction` methods are the
  writes of one mail (or one operator action), committed together.
* `Store` and `Transaction` are defined here from their parts in `interface_reads` (the
  operators', senders' and status's reads) and `interface_tx` (acknowledgements, webhook
  events, closing and reopening, customer imports), kept apart for size: callers import
  every name from this module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from engage_listener.store.interface_reads import (
    CaseReads,
    ControlAndStatus,
    OutboxReads,
    WebhookReads,
)
from engage_listener.store.interface_tx import (
    AckWrites,
    CaseLifecycle,
    CustomerWrites,
    WebhookWrites,
)
from engage_listener.store.records import (
    AckRow,
    CaseCandidate,
    CaseDetail,
    CaseInfo,
    CaseRef,
    CaseState,
    CaseStatus,
    CaseSummary,
    ControlRow,
    Customer,
    Heartbeat,
    LedgerEntry,
    LedgerState,
    ListenerCounts,
    MailKey,
    MailSeen,
    NewAck,
    NewAttachment,
    NewCase,
    NewMessage,
    NewWebhookEvent,
    OutboxRow,
    Quarantined,
    SettledState,
    StoredAttachment,
    StoredMessage,
    SubjectKey,
    WebhookDelivery,
    WebhookEventRow,
)

__all__ = [
    "AckRow", "AsyncExecute", "CaseCandidate", "CaseDetail", "CaseInfo", "CaseRef", "CaseState",
    "CaseSummary", "ControlRow", "Customer", "Heartbeat", "LedgerEntry", "ListenerCounts",
    "MailKey", "MailSeen", "NewAck", "NewAttachment", "NewCase", "NewMessage", "NewWebhookEvent",
    "OutboxRow", "Quarantined", "SqlCursor", "SqlDialect", "Store", "StoredAttachment",
    "StoredMessage", "SubjectKey", "SyncExecute", "Transaction", "WebhookDelivery",
    "WebhookEventRow",
]  # fmt: skip

T = TypeVar("T")


class SqlCursor(Protocol):
    """A statement's result as an operator's SQL hook reads it (DB-API cursor)."""

    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...

    def close(self) -> None: ...


SyncExecute = Callable[[str, Mapping[str, object]], SqlCursor]  # one statement, named params
# The same, awaited: the store's driver waits for the server without the event loop.
AsyncExecute = Callable[[str, Mapping[str, object]], Awaitable[SqlCursor]]


class SqlDialect(Protocol):
    """What loading an operator's SQL hook file needs to know of the store's SQL."""

    name: str  # "sqlite" or "postgres": how parameters and quotes are written

    def is_complete(self, text: str) -> bool:
        """Whether `text` ends with a complete statement (quotes, comments, triggers)."""
        ...

    def syntax_problem(self, text: str, names: Sequence[str]) -> str | None:
        """A syntax error in this statement, if any (unknown tables are no error)."""
        ...


class MailWrites(Protocol):
    """The operators' SQL hooks, and the case engine's look-ups and writes of one mail."""

    def interrupt(self) -> None:
        """Abort the statement running now (a routing procedure past its timeout)."""
        ...

    async def run_sync(self, work: Callable[[SyncExecute], T]) -> T:
        """`work(execute)` off the event loop: the operator's SQL hooks."""
        ...

    def run_inline(self, work: Callable[[SyncExecute], T], stop_at: float) -> T:
        """`work(execute)` on the event loop (quick SQL hooks). Stopped at `stop_at`
        (time.monotonic()): undone and `StoppedEarly`, or `StoreError` if the transaction
        went with it."""
        ...

    def awaiting(self, stop_at: float) -> AsyncExecute | None:
        """An `execute` for SQL hooks to await, each statement stopped at `stop_at`, where
        the driver waits for a server (PostgreSQL): no thread, nothing held inline. None
        where statements run in this process (SQLite: `run_inline`, `run_sync`)."""
        ...

    # ----- the case engine --------------------------------------------------------------
    async def find_duplicate(
        self, listener: str, sha256: str, message_id: str | None
    ) -> int | None:
        """Message row of the same mail (same bytes and Message-ID) seen under another key."""
        ...

    async def find_arrival(
        self,
        listener: str,
        sha256: str,
        message_id: str | None,
        address: str,
        subject: SubjectKey | None = None,
    ) -> MailSeen:
        """`find_duplicate` and `find_customer(address)` (None for an empty address) in
        one look-up: the reads every mail starts with (one round trip on PostgreSQL);
        with `subject`, also that customer's `cases_by_subject`. The PostgreSQL store
        also takes the ids the mail's message row (and a new customer for `address`)
        will have here, so that their INSERTs wait for no answer (see its Decisions)."""
        ...

    async def case_of_message(self, message_row: int) -> CaseRef | None: ...

    async def find_customer(self, address: str) -> Customer | None: ...

    async def get_customer(self, customer_id: int) -> Customer | None: ...

    async def create_customer(self, name: str, address: str, source: str) -> Customer:
        """A new customer for `address` (named `name`, or the address). A store shared by
        several writers may commit it at once, outside this transaction (it then stays
        if this transaction rolls back), and raise `WriteConflict` when the address
        already has a customer (the mail is then taken again and finds it)."""
        ...

    async def cases_by_message_ids(
        self, message_ids: Sequence[str], participant: str = ""
    ) -> list[CaseCandidate]:
        """Open cases holding mails with these Message-IDs, newest case first; with a
        `participant` address, each says whether it `is_participant` (`takes_part`):
        the reply's two reads in one."""
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

    async def cases_by_subject(
        self, customer_id: int | None, process: str | None, normalized_subject: str
    ) -> tuple[CaseRef | None, CaseCandidate | None]:
        """`open_case_by_subject` and `closed_case_by_subject` in one look-up: the two
        subject reads of a mail that opens a case (one round trip on PostgreSQL)."""
        ...

    async def case_info(self, case_id: int) -> CaseInfo:
        """The case as it stands in this transaction, with its priority and tags."""
        ...

    async def message_new_text(self, message_row: int) -> str | None:
        """The stored new text of a mail (None: not computed, or no such mail)."""
        ...

    async def create_case(self, case: NewCase) -> CaseRef: ...

    async def set_case_status(
        self, case_id: int, status: CaseStatus, *, touch: bool = False
    ) -> None:
        """Change a case's status (`touch`: and its updated_at). A case that becomes
        closed is closed now (a close time it had stays); one that leaves closed has none."""
        ...

    async def first_message(self, case_id: int) -> tuple[int, bytes]:
        """The row and raw bytes of the case's first mail (approval routes it)."""
        ...

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
        *,
        process: str | None = None,
        status: CaseStatus | None = None,
    ) -> None:
        """Routing's changes: None leaves a field as it is; tags are added (once each);
        `acknowledge` records routing's say on the mail's acknowledgement."""
        ...

    async def add_ledger(self, key: MailKey, message_row: int, message: NewMessage) -> None: ...

    async def add_quarantine(
        self, key: MailKey, raw: bytes, message: NewMessage, reason: str, attempts: int
    ) -> int:
        """Keep the mail with its reason, and a ledger row so it is never taken again."""
        ...


class Transaction(MailWrites, CaseLifecycle, AckWrites, WebhookWrites, CustomerWrites, Protocol):
    """Writes of one message (or one operator action), committed together or not at all."""


class Store(CaseReads, OutboxReads, WebhookReads, ControlAndStatus, Protocol):
    """Persistence of cases, messages, the exactly-once ledger, the outbox, operator
    control and heartbeats."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    def group(self) -> AbstractAsyncContextManager[None]:
        """Commit the transactions this task opens inside the block together, at its end."""
        ...

    # ----- the ledger -------------------------------------------------------------------
    async def known_states(
        self, listener: str, mailbox: str, epoch: str, items: Sequence[str]
    ) -> dict[str, LedgerState]:
        """Ledger state of those items already in the ledger (committed, quarantined, ...)."""
        ...

    async def unsettled(self, listener: str, mailbox: str, epoch: str) -> list[str]:
        """Items committed whose move or delete was never recorded (`mark_done`): a crash
        after the server moved them, or before it did."""
        ...

    async def ledger_history(self, listener: str, mailbox: str, item: str) -> list[LedgerEntry]:
        """Every mail taken under this item id in any epoch, oldest epoch first."""
        ...

    async def known_message_ids(self, listener: str, message_ids: Sequence[str]) -> set[str]:
        """Which of these Message-IDs this listener already has (date resets)."""
        ...

    async def record_failure(self, key: MailKey, error: str) -> int:
        """Count one more failed attempt at a mail; returns the attempts so far."""
        ...

    async def mark_done(self, keys: Sequence[MailKey], state: SettledState) -> None:
        """Record that these mails were moved, deleted or quarantined on the server."""
        ...
