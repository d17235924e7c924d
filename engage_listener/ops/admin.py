"""Operator commands on the store: customers import/list, quarantine list/show, acks.

Kept apart from the hot path (engine, listener): these run from a second
process while the daemon works, through the same store interface.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engage_listener.outbox.delivery import CLOSABLE, POLL, RESENDABLE
from engage_listener.store.interface import Customer, Quarantined
from engage_listener.store.sqlite.store import SqliteStore
from engage_listener.store.sqlite.transaction import SqliteTransaction, now_iso

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


async def import_customers(store: SqliteStore, path: Path) -> ImportResult:
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
    tx: SqliteTransaction,
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
        cur = await tx.execute(
            "INSERT INTO customers (name, external_id, source, created_at) VALUES (?, ?, ?, ?)",
            (name or addresses[0], external, "import", now_iso()),
        )
        customer_id = int(cur.lastrowid or 0)
        result.created += 1
    else:
        await tx.execute(
            "UPDATE customers SET name = coalesce(nullif(?, ''), name),"
            " external_id = coalesce(?, external_id) WHERE id = ?",
            (name, external, customer_id),
        )
        result.updated += 1
    for address in addresses:
        owner = await _owner(tx, address)
        if owner is not None and owner != customer_id:
            result.problems.append(f"{where}: {address} already belongs to customer {owner}")
            continue
        await tx.execute(
            "INSERT OR IGNORE INTO customer_addresses (address, customer_id) VALUES (?, ?)",
            (address, customer_id),
        )
        result.addresses += 1


async def _existing(
    tx: SqliteTransaction, external: str | None, addresses: list[str]
) -> int | None:
    if external:
        cur = await tx.execute("SELECT id FROM customers WHERE external_id = ?", (external,))
        row = await cur.fetchone()
        if row:
            return int(row[0])
    for address in addresses:
        owner = await _owner(tx, address)
        if owner is not None:
            return owner
    return None


async def _owner(tx: SqliteTransaction, address: str) -> int | None:
    cur = await tx.execute(
        "SELECT customer_id FROM customer_addresses WHERE address = ?", (address,)
    )
    row = await cur.fetchone()
    return int(row[0]) if row else None


async def list_customers(store: SqliteStore) -> list[Customer]:
    rows = await store.query(
        "SELECT c.id, c.name, group_concat(a.address, ' ') FROM customers c"
        " LEFT JOIN customer_addresses a ON a.customer_id = c.id GROUP BY c.id ORDER BY c.id"
    )
    return [Customer(int(r[0]), str(r[1]), tuple(sorted((r[2] or "").split()))) for r in rows]


_QUARANTINE_COLUMNS = (
    "id, listener, folder, uid, message_id, sender, subject, reason, attempts, state, case_id,"
    " created_at, length(raw)"
)


def _quarantined(row: Any) -> Quarantined:
    r = list(row)
    return Quarantined(
        int(r[0]),
        str(r[1]),
        str(r[2]),
        int(r[3]),
        r[4],
        str(r[5]),
        str(r[6]),
        str(r[7]),
        int(r[8]),
        str(r[9]),
        r[10],
        str(r[11]),
        int(r[12]),
    )


async def list_quarantine(
    store: SqliteStore, *, include_replayed: bool = False
) -> list[Quarantined]:
    where = "" if include_replayed else " WHERE state = 'held'"
    sql = f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine{where} ORDER BY id"  # noqa: S608
    rows = await store.query(sql)
    return [_quarantined(r) for r in rows]


async def get_quarantine(store: SqliteStore, entry_id: int) -> tuple[Quarantined, bytes] | None:
    sql = f"SELECT {_QUARANTINE_COLUMNS}, raw FROM quarantine WHERE id = ?"  # noqa: S608
    rows = await store.query(sql, (entry_id,))
    return (_quarantined(rows[0]), bytes(rows[0][13])) if rows else None


async def mark_replayed(store: SqliteStore, entry_id: int, case_id: int | None) -> None:
    async with store.transaction() as tx:
        await tx.execute(
            "UPDATE quarantine SET state = 'replayed', case_id = ?, replayed_at = ? WHERE id = ?",
            (case_id, now_iso(), entry_id),
        )


async def reject_case(store: SqliteStore, case_id: int, number: str, status: str) -> str:
    """A supervisor turns down a case awaiting approval: it is never routed nor acknowledged."""
    if status != "pending-approval":
        return f"case {number} is {status}, not pending-approval"
    async with store.transaction() as tx:
        await tx.execute(
            "UPDATE cases SET status = 'rejected', updated_at = ? WHERE id = ?",
            (now_iso(), case_id),
        )
    return f"case {number} rejected"


@dataclass(frozen=True)
class AckRow:
    """One outbox row (an acknowledgement) for `engage-listener acks`; never its MIME."""

    id: int
    listener: str
    case_id: int
    case_number: str | None
    recipient: str
    subject: str
    state: str  # pending, sending, sent, failed, uncertain, closed, suppressed
    attempts: int
    last_error: str | None
    smtp_message_id: str
    smtp_reply: str | None
    created_at: str
    sent_at: str | None
    next_attempt_at: str | None  # ISO UTC, pending rows only


@dataclass(frozen=True)
class AckChange:
    """What `acks resend`/`acks close` did with one id: `done` is False when nothing
    changed (unknown id, or a state the command refuses); `text` is the line to print."""

    id: int
    done: bool
    text: str


_ACK_COLUMNS = (
    "o.id, o.listener, o.case_id, c.case_number, o.recipient, o.subject, o.state, o.attempts,"
    " o.last_error, o.smtp_message_id, o.smtp_reply, o.created_at, o.sent_at, o.next_attempt_at"
)


def _ack_row(r: Any) -> AckRow:
    due = r[13]
    return AckRow(
        id=int(r[0]),
        listener=str(r[1]),
        case_id=int(r[2]),
        case_number=None if r[3] is None else str(r[3]),
        recipient=str(r[4]),
        subject=str(r[5]),
        state=str(r[6]),
        attempts=int(r[7]),
        last_error=r[8],
        smtp_message_id=str(r[9]),
        smtp_reply=r[10],
        created_at=str(r[11]),
        sent_at=r[12],
        next_attempt_at=(
            dt.datetime.fromtimestamp(float(due), dt.UTC).isoformat(timespec="seconds")
            if r[6] == "pending" and due
            else None
        ),
    )


async def list_acks(store: SqliteStore, states: Sequence[str] | None = None) -> list[AckRow]:
    """Outbox rows in `states`, oldest first; by default every row not `sent`."""
    sql = f"SELECT {_ACK_COLUMNS} FROM outbox o LEFT JOIN cases c ON c.id = o.case_id"  # noqa: S608
    if states is None:
        rows = await store.query(sql + " WHERE o.state != 'sent' ORDER BY o.id")
    else:
        marks = ", ".join("?" for _ in states)
        rows = await store.query(f"{sql} WHERE o.state IN ({marks}) ORDER BY o.id", tuple(states))
    return [_ack_row(r) for r in rows]


async def _get_ack(tx: SqliteTransaction, ack_id: int) -> AckRow | None:
    cur = await tx.execute(
        f"SELECT {_ACK_COLUMNS} FROM outbox o LEFT JOIN cases c ON c.id = o.case_id"  # noqa: S608
        " WHERE o.id = ?",
        (ack_id,),
    )
    row = await cur.fetchone()
    return _ack_row(row) if row else None


def _refusal(row: AckRow, wanted: Sequence[str]) -> str:
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
    store: SqliteStore, ack_ids: Sequence[int], allowed: Sequence[str], *, resend: bool
) -> list[AckChange]:
    changes: list[AckChange] = []
    marks = ", ".join("?" for _ in allowed)
    for ack_id in ack_ids:
        async with store.transaction() as tx:  # read and write under one write lock
            row = await _get_ack(tx, ack_id)
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
                assignments, values = "state = 'pending', next_attempt_at = ?", [time.time()]
                text = (
                    f"{what} queued again (was {row.state}): the running daemon sends it "
                    f"within {POLL:.0f} s, or the next run --once does"
                )
            else:
                note = f"closed by the operator at {now_iso()} ({was})"
                assignments, values = "state = 'closed'", []
                text = f"{what} closed (was {row.state}): it will not be sent"
            cur = await tx.execute(
                f"UPDATE outbox SET {assignments}, last_error = ?"  # noqa: S608 - fixed text
                f" WHERE id = ? AND state IN ({marks})",
                (*values, note, ack_id, *allowed),
            )
            done = cur.rowcount == 1
            changes.append(AckChange(ack_id, done, text if done else f"{what}: changed meanwhile"))
    return changes


async def resend_acks(store: SqliteStore, ack_ids: Sequence[int]) -> list[AckChange]:
    """`acks resend`: uncertain, failed (or closed) rows become pending and due now; the
    daemon's sender (or the next `run --once`) delivers them. Any other state is refused."""
    return await _change_acks(store, ack_ids, RESENDABLE, resend=True)


async def close_acks(store: SqliteStore, ack_ids: Sequence[int]) -> list[AckChange]:
    """`acks close`: the operator decided an uncertain or failed acknowledgement is never sent."""
    return await _change_acks(store, ack_ids, CLOSABLE, resend=False)
