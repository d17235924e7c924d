"""What routing hooks see and return, shared by Python (`hooks`) and SQL (`hooks_sql`) hooks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from engage_listener.store.interface import SyncExecute

T = TypeVar("T")

DECISION_FIELDS = ("inbox", "priority", "tags", "acknowledge")


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
class MessageView:
    """The mail being routed; `row` is its id in the messages table."""

    row: int
    message_id: str | None
    sender: str
    sender_name: str
    subject: str
    text: str
    attachment_names: tuple[str, ...]
    automatic: str | None


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


@dataclass(frozen=True)
class RoutingDecision:
    """What to change; None (or no tags) leaves the case as it is."""

    inbox: str | None = None
    priority: int | None = None
    tags: tuple[str, ...] = ()
    acknowledge: bool | None = None


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
    for key, kind in (("inbox", str), ("priority", int), ("acknowledge", bool)):
        item = items.get(key)
        if item is not None and (type(item) is not kind or item == ""):
            raise TypeError(f"{key} must be {kind.__name__} or None, not {item!r}")
    tags = items.get("tags") or ()
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
        raise TypeError(f"tags must be a list or tuple of str, not {tags!r}")
    return RoutingDecision(
        items.get("inbox"), items.get("priority"), tuple(tags), items.get("acknowledge")
    )
