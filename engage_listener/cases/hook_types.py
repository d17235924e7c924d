"""What routing hooks see and return, shared by Python (`hooks`) and SQL (`hooks_sql`) hooks.

A hook sees the whole mail (`MessageView`: addresses, the delivered-to address, every
header decoded and read-only, the text and its new text, the attachments' names, types
and sizes), the case, the customer, and what the listener's Rules decided (`rules`, a
`cases.rules.RuleOutcome`), which its own decision then overrides field by field.

Decisions: every field added for issue 18 has a default and comes after the old ones,
so hooks (and tests) that build a `MessageView` or `HookContext` positionally keep
working; `attachment_names` stays beside `attachments`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, get_args

from engage_listener.cases.rules import Headers, RuleOutcome
from engage_listener.mail.parser import Address
from engage_listener.store.interface import AsyncExecute, SyncExecute
from engage_listener.store.records import CaseStatus

T = TypeVar("T")

DECISION_FIELDS = (
    "inbox",
    "priority",
    "tags",
    "acknowledge",
    "process",
    "status",
    "discard",
    "quarantine",
)
HOOK_STATUSES: tuple[CaseStatus, ...] = tuple(
    s for s in get_args(CaseStatus) if s != "rejected"
)  # a decision's status; rejecting is the supervisor's (`reject`)


@dataclass(frozen=True)
class CaseView:
    """The case being routed, as it stands in this mail's transaction."""

    id: int
    case_number: str
    process: str | None
    status: str
    inbox: str | None
    subject: str
    is_new: bool


@dataclass(frozen=True)
class AttachmentView:
    """One attachment as a hook sees it (never its bytes)."""

    filename: str
    content_type: str
    size: int
    inline: bool = False


@dataclass(frozen=True)
class MessageView:
    """The mail being routed; `row` is its id in the messages table.

    `headers` holds every header field, decoded, by name in any case (the first one of a
    repeated field); `delivered_to` is `Delivered-To`, else `X-Original-To`, else the To/Cc
    address that is one of the listener's own (`cases.rules.delivered_to`); `new_text`
    is what the customer wrote without the quoted history and signature.
    """

    row: int
    message_id: str | None
    sender: str
    sender_name: str
    subject: str
    text: str
    attachment_names: tuple[str, ...]
    automatic: str | None
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    delivered_to: str | None = None
    headers: Headers = field(default_factory=lambda: Headers({}))
    new_text: str = ""
    attachments: tuple[AttachmentView, ...] = ()
    html: bool = False  # the mail has an HTML body


@dataclass(frozen=True)
class CustomerView:
    id: int
    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class HookContext:
    """Everything a hook may read; views, so a hook cannot change the engine's state."""

    listener: str
    case: CaseView
    message: MessageView
    customer: CustomerView | None
    rules: RuleOutcome = field(default_factory=RuleOutcome)  # the Rules' outcome, before the hook


@dataclass(frozen=True)
class RoutingDecision:
    """What to change; None (or no tags, False) leaves the case as it is.

    `process` moves the case to another process, `status` sets it (open, closed,
    pending-approval); `discard` keeps the mail marked ignored and makes no case (the
    case this mail opened is undone, a case it joined keeps its other mail);
    `quarantine` (a reason) quarantines the mail instead.
    """

    inbox: str | None = None
    priority: int | None = None
    tags: tuple[str, ...] = ()
    acknowledge: bool | None = None
    process: str | None = None
    status: CaseStatus | None = None
    discard: bool = False
    quarantine: str | None = None


class SqlExecutor(Protocol):
    """The mail's open transaction (`store.Transaction`), as a SQL hook uses it."""

    def interrupt(self) -> None: ...  # abort the running statement (Connection.interrupt)

    async def run_sync(self, work: Callable[[SyncExecute], T]) -> T:
        """`work(execute)` on the store's thread: the store's own driver calls, one hop for
        them all, where `interrupt` reaches them."""
        ...

    def run_inline(self, work: Callable[[SyncExecute], T], stop_at: float) -> T:
        """`work(execute)` right here, on the event loop. Stopped at `stop_at`
        (time.monotonic()): undone and `StoppedEarly`, or `StoreError` if the transaction
        went with it."""
        ...

    def awaiting(self, stop_at: float) -> AsyncExecute | None:
        """An `execute` to await (PostgreSQL), stopped at `stop_at`; None: use the two
        above (SQLite)."""
        ...


class RoutingHook(Protocol):
    name: str

    async def run(self, ctx: HookContext, sql: SqlExecutor) -> RoutingDecision: ...


def as_decision(value: object) -> RoutingDecision:
    """A hook's result as a checked decision; anything odd is the hook's bug (TypeError)."""
    if value is None:
        return RoutingDecision()
    if isinstance(value, RoutingDecision):
        items: dict[Any, Any] = {k: getattr(value, k) for k in DECISION_FIELDS}
    elif isinstance(value, Mapping):
        items = dict(value)
    else:
        raise TypeError(f"a {type(value).__name__}, not a RoutingDecision, dict or None")
    unknown = sorted(str(k) for k in items if k not in DECISION_FIELDS)
    if unknown:
        raise TypeError(f"unknown key(s) {', '.join(unknown)}; use {', '.join(DECISION_FIELDS)}")
    kinds = (
        ("inbox", str),
        ("priority", int),
        ("acknowledge", bool),
        ("process", str),
        ("status", str),
        ("discard", bool),
        ("quarantine", str),
    )
    for key, kind in kinds:
        item = items.get(key)
        if item is not None and (type(item) is not kind or item == ""):
            raise TypeError(f"{key} must be {kind.__name__} or None, not {item!r}")
    tags = items.get("tags") or ()
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
        raise TypeError(f"tags must be a list or tuple of str, not {tags!r}")
    status = items.get("status")
    if status is not None and status not in HOOK_STATUSES:
        raise TypeError(f"status must be one of {', '.join(HOOK_STATUSES)}, not {status!r}")
    return RoutingDecision(
        items.get("inbox"),
        items.get("priority"),
        tuple(tags),
        items.get("acknowledge"),
        process=items.get("process"),
        status=status,
        discard=bool(items.get("discard")),
        quarantine=items.get("quarantine"),
    )
