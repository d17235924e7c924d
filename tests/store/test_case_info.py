"""`case_info` inside one transaction: what a routing hook and the CRM's events see of a
case after each write that can change it (a store may remember it between reads, as the
PostgreSQL store does to save a round trip; it must never show a stale one)."""

from __future__ import annotations

import time
from collections.abc import Callable

from engage_listener.store.interface import (
    CaseInfo,
    NewCase,
    NewMessage,
    Store,
    SyncExecute,
    Transaction,
)

MessageFactory = Callable[..., NewMessage]  # the `message` fixture


def _set_inbox(inbox: str, case_id: int) -> Callable[[SyncExecute], None]:
    """A hook's own SQL: it may change the case behind the store's back."""

    def work(execute: SyncExecute) -> None:
        sql = "UPDATE cases SET inbox = :inbox WHERE id = :id"
        execute(sql, {"inbox": inbox, "id": case_id}).close()

    return work


async def _fresh(store: Store, case_id: int) -> CaseInfo:
    async with store.transaction() as tx:
        return await tx.case_info(case_id)


async def _steps(tx: Transaction, case_id: int, message_row: int) -> list[tuple[str, CaseInfo]]:
    seen = [("created", await tx.case_info(case_id))]
    await tx.apply_decision(case_id, message_row, "Ventas", 2, ["b", "a"], None, process="P")
    seen.append(("decision", await tx.case_info(case_id)))
    await tx.apply_decision(
        case_id, message_row, None, None, ["c"], True, status="pending-approval"
    )
    seen.append(("decision status", await tx.case_info(case_id)))
    await tx.set_case_status(case_id, "open")
    seen.append(("status", await tx.case_info(case_id)))
    tx.run_inline(_set_inbox("Inline", case_id), time.monotonic() + 30)
    seen.append(("inline hook", await tx.case_info(case_id)))
    await tx.run_sync(_set_inbox("Thread", case_id))
    seen.append(("thread hook", await tx.case_info(case_id)))
    assert await tx.close_case(case_id, "done", "2026-01-01T00:00:00+00:00")
    seen.append(("closed", await tx.case_info(case_id)))
    assert await tx.reopen_case(case_id, "2026-01-02T00:00:00+00:00")
    seen.append(("reopened", await tx.case_info(case_id)))
    return seen


async def test_case_info_follows_every_write_in_the_transaction(
    store: Store, message: MessageFactory
) -> None:
    async with store.transaction() as tx:
        customer = await tx.create_customer("Ana", "ana@example.com", "auto")
        ref = await tx.create_case(
            NewCase("L", "ventas", "ana@example.com", "Ana", "Factura", "factura",
                    customer_id=customer.id)
        )  # fmt: skip
        row = await tx.add_message(ref.id, message())
        seen = await _steps(tx, ref.id, row)
    what = [(step, i.process, i.status, i.inbox, i.priority, i.tags) for step, i in seen]
    assert what == [
        ("created", "ventas", "open", None, None, ()),
        ("decision", "P", "open", "Ventas", 2, ("a", "b")),
        ("decision status", "P", "pending-approval", "Ventas", 2, ("a", "b", "c")),
        ("status", "P", "open", "Ventas", 2, ("a", "b", "c")),
        ("inline hook", "P", "open", "Inline", 2, ("a", "b", "c")),
        ("thread hook", "P", "open", "Thread", 2, ("a", "b", "c")),
        ("closed", "P", "closed", "Thread", 2, ("a", "b", "c")),
        ("reopened", "P", "open", "Thread", 2, ("a", "b", "c")),
    ]
    first = seen[0][1]
    assert (first.id, first.case_number, first.subject, first.customer_id) == (
        ref.id, ref.case_number, "Factura", customer.id,
    )  # fmt: skip
    assert await _fresh(store, ref.id) == seen[-1][1]  # as committed
