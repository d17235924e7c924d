"""Routing-hook inputs and the case rows hooks change, for the hook tests."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from engage_listener.cases.hooks import CaseView, CustomerView, HookContext, MessageView
from engage_listener.store.sqlite.store import SqliteStore


def sql_file(tmp_path: Path, text: str, name: str = "proc.sql") -> str:
    """Write an SQL hook into tmp_path (the 'config directory'); returns its spec."""
    (tmp_path / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return f"sql:{name}"


def context(
    case_id: int = 1,
    subject: str = "Hola",
    text: str = "",
    *,
    is_new: bool = True,
    automatic: str | None = None,
    customer: CustomerView | None = None,
) -> HookContext:
    """What a hook sees for one mail of case `case_id` (a customer only if given)."""
    return HookContext(
        listener="Default",
        case=CaseView(case_id, f"C-{case_id:06d}", "EIS", "open", None, subject, is_new),
        message=MessageView(
            7,
            "<m1@example.com>",
            "ana@example.com",
            "Ana Pérez",
            subject,
            text,
            ("factura.pdf",),
            automatic,
        ),
        customer=customer,
    )


async def insert_case(store: SqliteStore, subject: str) -> int:
    """A case row for hooks to change; returns its id."""
    async with store.transaction() as tx:
        cur = await tx.execute(
            "INSERT INTO cases (case_number, listener, process, sender, subject, created_at,"
            " updated_at) VALUES ('C-' || (SELECT count(*) + 1 FROM cases), 'Default', 'EIS',"
            " 'ana@example.com', ?, '2024-01-01T00:00:00+00:00', '2024-01-01T00:00:00+00:00')",
            (subject,),
        )
        return int(cur.lastrowid or 0)


async def case_row(store: SqliteStore, case_id: int) -> tuple[Any, ...]:
    """The case's routing fields (inbox, priority) as a hook left them."""
    rows = await store.query("SELECT inbox, priority FROM cases WHERE id = ?", (case_id,))
    return tuple(rows[0])
