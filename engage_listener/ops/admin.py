"""Operator commands on the store: customers import/list, quarantine list/show, acks.

Kept apart from the hot path (engine, listener): these run from a second
process while the daemon works, through the same store interface.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engage_listener.outbox.delivery import CLOSABLE, POLL, RESENDABLE, now_iso
from engage_listener.store.interface import AckRow, Customer, Quarantined, Store, Transaction
from engage_listener.store.records import OutboxState

__all__ = ["AckChange", "AckRow", "ImportResult", "close_acks", "get_quarantine",
           "import_customers", "list_acks", "list_customers", "list_quarantine",
           "mark_replayed", "reject_case", "resend_acks"]  # fmt: skip

_NAME_COLUMNS = ("name", "nombre", "customer")
_ADDRESS_COLUMNS = ("addresses", "address", "emails", "email", "correo")
_ID_COLUMNS = ("external_id", "id", "customer_id")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


@dataclass
class ImportResult:
    created: int = 0
    updated: int = 0
    addresses: int = 0
    problems: list[str] = field(default_factory=list)


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


async def import_customers(store: Store, path: Path) -> ImportResult:
    """Create or update customers from CSV (name, addresses[, external_id]); one transaction."""
    text = path.read_text(encoding="utf-8-sig")
    header = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=header.count)  # spreadsheets export , or ; or tabs
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    result = ImportResult()
    if not rows:
        result.problems.append(f"{path}:1: the file is empty")
        return result
    name_col, addr_col = _column(rows[0], _NAME_COLUMNS), _column(rows[0], _ADDRESS_COLUMNS)
    id_col = _column(rows[0], _ID_COLUMNS)
    if name_col is None or addr_col is None:
        result.problems.append(f"{path}:1: the header needs a 'name' and an 'addresses' column")
        return result
    async with store.transaction() as tx:
        for line, row in enumerate(rows[1:], start=2):
            if not any(cell.strip() for cell in row):
                continue
            cell = row[addr_col] if addr_col < len(row) else ""
            name = row[name_col].strip() if name_col < len(row) else ""
            external = row[id_col].strip() if id_col is not None and id_col < len(row) else ""
            await _import_row(tx, f"{path}:{line}", name, cell, external or None, result)
    return result


async def _import_row(
    tx: Transaction,
    where: str,
    name: str,
    cell: str,
    external: str | None,
    result: ImportResult,
) -> None:
    addresses = [a.lower() for a in re.split(r"[\s,;]+", cell) if a]
    bad = [a for a in addresses if not _EMAIL.match(a)]
    if bad or not addresses:
        result.problems.append(f"{where}: not an e-mail address: {', '.join(bad) or '(none)'}")
        return
    customer_id = await _existing(tx, external, addresses)
    if customer_id is None:
        customer_id = await tx.import_customer(name or addresses[0], external)
        result.created += 1
    else:
        await tx.update_customer(customer_id, name, external)
        result.updated += 1
    for address in addresses:
        owner = await tx.address_owner(address)
        if owner is not None and owner != customer_id:
            result.problems.append(f"{where}: {address} already belongs to customer {owner}")
            continue
        await tx.add_customer_address(customer_id, address)
        result.addresses += 1


async def _existing(tx: Transaction, external: str | None, addresses: list[str]) -> int | None:
    if external:
        found = await tx.customer_by_external_id(external)
        if found is not None:
            return found
    for address in addresses:
        owner = await tx.address_owner(address)
        if owner is not None:
            return owner
    return None


async def list_customers(store: Store) -> list[Customer]:
    return await store.list_customers()


async def list_quarantine(store: Store, *, include_replayed: bool = False) -> list[Quarantined]:
    return await store.list_quarantine(include_replayed=include_replayed)


async def get_quarantine(store: Store, entry_id: int) -> tuple[Quarantined, bytes] | None:
    return await store.get_quarantine(entry_id)


async def mark_replayed(store: Store, entry_id: int, case_id: int | None) -> None:
    await store.mark_replayed(entry_id, case_id)


async def reject_case(store: Store, case_id: int, number: str, status: str) -> str:
    """A supervisor turns down a case awaiting approval: it is never routed nor acknowledged."""
    if status != "pending-approval":
        return f"case {number} is {status}, not pending-approval"
    async with store.transaction() as tx:
        await tx.set_case_status(case_id, "rejected", touch=True)
    return f"case {number} rejected"


@dataclass(frozen=True)
class AckChange:
    """What `acks resend`/`acks close` did with one id: `done` is False when nothing
    changed (unknown id, or a state the command refuses); `text` is the line to print."""

    id: int
    done: bool
    text: str


async def list_acks(store: Store, states: Sequence[OutboxState] | None = None) -> list[AckRow]:
    """Outbox rows in `states`, oldest first; by default every row not `sent`."""
    return await store.list_acks(states)


def _refusal(row: AckRow, wanted: Sequence[OutboxState]) -> str:
    what = f"acknowledgement {row.id} (case {row.case_number}, to {row.recipient})"
    reasons = {
        "sent": f"was sent at {row.sent_at} ({row.smtp_reply}); it is never sent twice",
        "pending": "is pending: the sender delivers it when due",
        "sending": "is being sent right now",
        "closed": "is already closed",
    }
    reason = reasons.get(row.state, f"is {row.state}")
    states = f"{', '.join(wanted[:-1])} or {wanted[-1]}"
    return f"{what} {reason}; only {states} ones can be changed, nothing done"


async def _change_acks(
    store: Store, ack_ids: Sequence[int], allowed: Sequence[OutboxState], *, resend: bool
) -> list[AckChange]:
    changes: list[AckChange] = []
    for ack_id in ack_ids:
        async with store.transaction() as tx:  # read and write under one write lock
            row = await tx.get_ack(ack_id)
            if row is None:
                changes.append(AckChange(ack_id, False, f"{ack_id}: no such acknowledgement"))
                continue
            if row.state not in allowed:
                changes.append(AckChange(ack_id, False, _refusal(row, allowed)))
                continue
            what = f"acknowledgement {ack_id} (case {row.case_number}, to {row.recipient})"
            was = f"was {row.state}" + (f": {row.last_error}" if row.last_error else "")
            if resend:  # due now: the sender takes pending rows whose next_attempt_at has come
                note = f"queued again by the operator at {now_iso()} ({was})"
                state: OutboxState = "pending"
                due: float | None = time.time()
                text = (
                    f"{what} queued again (was {row.state}): the running daemon sends it "
                    f"within {POLL:.0f} s, or the next run --once does"
                )
            else:
                note = f"closed by the operator at {now_iso()} ({was})"
                state, due = "closed", None
                text = f"{what} closed (was {row.state}): it will not be sent"
            done = await tx.change_ack(ack_id, state, note, allowed, next_attempt_at=due)
            changes.append(AckChange(ack_id, done, text if done else f"{what}: changed meanwhile"))
    return changes


async def resend_acks(store: Store, ack_ids: Sequence[int]) -> list[AckChange]:
    """`acks resend`: uncertain, failed (or closed) rows become pending and due now; the
    daemon's sender (or the next `run --once`) delivers them. Any other state is refused."""
    return await _change_acks(store, ack_ids, RESENDABLE, resend=True)


async def close_acks(store: Store, ack_ids: Sequence[int]) -> list[AckChange]:
    """`acks close`: the operator decided an uncertain or failed acknowledgement is never sent."""
    return await _change_acks(store, ack_ids, CLOSABLE, resend=False)
