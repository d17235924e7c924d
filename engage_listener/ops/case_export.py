"""`cases export`: every case (of a listener, changed since a day) with its mails, for
other systems, as JSON Lines (one `case_view.case_document` a line) or CSV (one row a
mail, the case's columns repeated).

Decisions:

* Streamed: cases are read a page at a time (`Store.cases_page`) and each is written
  before the next is read, so memory holds one page and one case's mails whatever the
  size of the store, and the daemon's writes wait for one short read at most.
* `--since DAY` is 00:00 UTC of that day and selects cases changed since (a new mail, a
  status change: `updated_at`), which is what an incremental import needs.
* Values are written as stored: no terminal escaping (JSON escapes controls itself; CSV
  quotes), since the reader is a program.
* Except CSV cells a spreadsheet would run: a sender writes the subject, the text and the
  names, and `=HYPERLINK(...)`, `+cmd|...` or `@SUM(...)` in one of them is a formula
  when an operator opens the export in Excel or LibreOffice (CSV injection, OWASP). Such a
  cell (one that starts with =, +, -, @, a tab or a carriage return) gets a leading `'`,
  which the spreadsheet shows as text; `--csv-formulas keep` writes them as stored, for
  a program that wants the exact values (JSON Lines is never changed).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from typing import Any, Literal, TextIO

from engage_listener.ops.case_view import load_case
from engage_listener.store.interface import Store

__all__ = ["CSV_COLUMNS", "PAGE", "export_cases", "since_day", "spreadsheet_safe"]

Format = Literal["jsonl", "csv"]
Formulas = Literal["quote", "keep"]  # --csv-formulas
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PAGE = 100  # cases read at once
CSV_COLUMNS = (
    "case_id", "case_number", "listener", "process", "status", "inbox", "priority", "tags",
    "case_subject", "customer_id", "created_at", "updated_at", "closed_at", "close_reason",
    "related_cases", "message_row", "message_id", "from", "to", "cc", "reply_to", "date",
    "received_at", "subject", "text", "new_text", "has_html", "attachments", "acknowledgement",
)  # fmt: skip


def since_day(day: dt.date) -> str:
    """00:00 UTC of `day`, as the store's ISO times are written."""
    return dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC).isoformat(timespec="seconds")


def spreadsheet_safe(value: Any) -> Any:
    """A text cell a spreadsheet would take for a formula, quoted as text (see Decisions)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


async def export_cases(
    store: Store,
    out: TextIO,
    fmt: Format,
    *,
    since: str | None = None,
    listener: str | None = None,
    formulas: Formulas = "quote",
) -> int:
    """Write the chosen cases to `out`; returns how many."""
    writer = csv.writer(out, lineterminator="\r\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(CSV_COLUMNS)
    after, count = 0, 0
    while True:
        page = await store.cases_page(after, PAGE, since=since, listener=listener)
        if not page:
            return count
        for case in page:
            doc = await load_case(store, case)
            if writer is None:
                out.write(json.dumps(doc, ensure_ascii=False) + "\n")
            elif formulas == "keep":
                writer.writerows(_rows(doc))
            else:
                writer.writerows([list(map(spreadsheet_safe, row)) for row in _rows(doc)])
            count += 1
        after = page[-1].id


def _people(found: list[dict[str, str]]) -> str:
    return ", ".join(f"{p['name']} <{p['address']}>" if p["name"] else p["address"] for p in found)


def _rows(doc: dict[str, Any]) -> list[list[Any]]:
    """One row per mail (a case without mail: one row with the mail's columns empty)."""
    case = [
        doc["id"], doc["case_number"], doc["listener"], doc["process"], doc["status"],
        doc["inbox"], doc["priority"], ";".join(doc["tags"]), doc["subject"],
        doc["customer_id"], doc["created_at"], doc["updated_at"], doc["closed_at"],
        doc["close_reason"], ";".join(r["case_number"] for r in doc["related_cases"]),
    ]  # fmt: skip
    rows = []
    for m in doc["messages"]:
        ack = m["acknowledgement"]["state"] or ""
        rows.append([
            *case, m["id"], m["message_id"], _people([m["from"]]), _people(m["to"]),
            _people(m["cc"]), _people(m["reply_to"]), m["date"], m["received_at"],
            m["subject"], m["text"], m["new_text"], m["has_html"],
            ";".join(a["name"] for a in m["attachments"]), ack,
        ])  # fmt: skip
    return rows or [case + [None] * (len(CSV_COLUMNS) - len(case))]
