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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from engage_listener.store.records import (
    AckRow,
    CaseCandidate,
    CaseDetail,
    CaseInfo,
    CaseRef,
    CaseState,
    CaseStatus,
    CaseSummary,
    ControlField,
    ControlRow,
    Customer,
    Heartbeat,
    LedgerEntry,
    LedgerState,
    ListenerCounts,
    MailKey,
    NewAck,
    NewAttachment,
    NewCase,
    NewMessage,
    NewWebhookEvent,
    OutboxRow,
    OutboxState,
    Quarantined,
    SettledState,
    StoredAttachment,
    StoredMessage,
    WebhookDelivery,
    WebhookEventRow,
    WebhookState,
)

__all__ = [
    "AckRow", "CaseCandidate", "CaseDetail", "CaseInfo", "CaseRef", "CaseState", "CaseSummary",
    "ControlRow", "Customer", "Heartbeat", "LedgerEntry", "ListenerCounts", "MailKey",
    "NewAck", "NewAttachment", "NewCase", "NewMessage", "NewWebhookEvent", "OutboxRow",
    "Quarantined", "SqlCursor", "SqlDialect", "Store", "StoredAttachment", "StoredMessage",
    "SyncExecute", "Transaction", "WebhookDelivery", "WebhookEventRow",
]  # fmt: skip

T = TypeVar("T")


class SqlCursor(Protocol):
    """A statement's result as an operator's SQL hook reads it (DB-API cursor)."""

    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...

    def close(self) -> None: ...


SyncExecute = Callable[[str, Mapping[str, object]], SqlCursor]  # one statement, named params


class SqlDialect(Protocol):
    """What loading an operator's SQL hook file needs to know of the store's SQL."""

    name: str  # "sqlite" or "postgres": how parameters and quotes are written

    def is_complete(self, text: str) -> bool:
        """Whether `text` ends with a complete statement (quotes, comments, triggers)."""
        ...

    def syntax_problem(self, text: str, names: Sequence[str]) -> str | None:
        """A syntax error in this statement, if any (unknown tables are no error)."""
        ...


class Transaction(Protocol):
    """Writes of one message (or one operator action), committed together or not at all."""

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

    # ----- the case engine --------------------------------------------------------------
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
        """Change a case's status (`touch`: and its updated_at)."""
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

    # ----- acknowledgements -------------------------------------------------------------
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

    # ----- webhook events (outbox.webhooks) ----------------------------------------------
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

    # ----- operator commands ------------------------------------------------------------
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


class Store(Protocol):
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

    # ----- cases, customers, quarantine (operator commands) -----------------------------
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

    # ----- the outbox -------------------------------------------------------------------
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

    # ----- webhook events ---------------------------------------------------------------
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

    # ----- operator control and status --------------------------------------------------
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
