"""`cases show ID` and the documents `cases export` writes: a case and its mails as plain
data (dicts of str, int, bool, lists), then as text for a terminal.

Decisions:

* One shape for `show --json` and every line of `export --format jsonl`, so another
  system reads both with one parser.
* To, Cc and Reply-To come from the header block kept with each mail (the store never
  had columns for them), parsed by the same `mail.parser` the engine uses, so they read
  alike for old and new mails.
* Text output passes through `terminal.visible` in the caller: mail text is hostile.
"""

from __future__ import annotations

import re
from typing import Any

from engage_listener.mail import parser
from engage_listener.ops.terminal import visible, visible_lines
from engage_listener.store.interface import (
    CaseDetail,
    Store,
    StoredAttachment,
    StoredMessage,
)

__all__ = ["case_document", "load_case", "render_case"]

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def _addresses(found: tuple[parser.Address, ...]) -> list[dict[str, str]]:
    return [{"name": a.name, "address": a.address} for a in found]


def _header_fields(header: bytes) -> parser.ParsedMail:
    """The mail's address fields, from its header block alone (no body is parsed)."""
    end = _HEADER_END.search(header)
    block = header[: end.start()] if end else header
    return parser.parse(block + b"\r\n\r\n")


def message_document(m: StoredMessage, attachments: list[StoredAttachment]) -> dict[str, Any]:
    """One mail of a case: addresses, dates, texts, attachments, acknowledgement."""
    fields = _header_fields(m.header)
    return {
        "id": m.id,
        "message_id": m.message_id,
        "from": {"name": m.sender_name, "address": m.sender},
        "to": _addresses(fields.to),
        "cc": _addresses(fields.cc),
        "reply_to": _addresses(fields.reply_to),
        "date": m.sent_at,
        "received_at": m.received_at,
        "subject": m.subject,
        "size": m.size,
        "automatic": m.automatic,
        "text": m.body_text,
        "new_text": m.new_text,
        "has_html": m.has_html,
        "attachments": [
            {
                "id": a.id,
                "name": a.filename,
                "type": a.content_type,
                "size": a.size,
                "inline": a.inline,
            }
            for a in attachments
        ],
        "acknowledgement": {"routing": m.acknowledge, "state": m.ack},
    }


def case_document(
    case: CaseDetail, messages: list[StoredMessage], attachments: list[StoredAttachment]
) -> dict[str, Any]:
    """The case, its related cases and each of its mails (`message_document`)."""
    by_message: dict[int, list[StoredAttachment]] = {}
    for a in attachments:
        by_message.setdefault(a.message_row, []).append(a)
    return {
        "id": case.id,
        "case_number": case.case_number,
        "listener": case.listener,
        "process": case.process,
        "status": case.status,
        "inbox": case.inbox,
        "priority": case.priority,
        "tags": list(case.tags),
        "subject": case.subject,
        "sender": {"name": case.sender_name, "address": case.sender},
        "customer_id": case.customer_id,
        "created_at": case.created_at,
        "updated_at": case.updated_at,
        "closed_at": case.closed_at,
        "close_reason": case.close_reason,
        "reopened_at": case.reopened_at,
        "related_case_id": case.related_case_id,
        "related_cases": [{"id": r.id, "case_number": r.case_number} for r in case.related],
        "messages": [message_document(m, by_message.get(m.id, [])) for m in messages],
    }


async def load_case(store: Store, case: CaseDetail) -> dict[str, Any]:
    """`case_document` of a case read from the store (three reads)."""
    messages = await store.case_messages(case.id)
    attachments = await store.case_attachments(case.id)
    return case_document(case, messages, attachments)


def _people(found: list[dict[str, str]]) -> str:
    return ", ".join(f"{p['name']} <{p['address']}>" if p["name"] else p["address"] for p in found)


def _clean(value: Any, key: str = "") -> Any:
    """Every text of the document made `visible`; the mail texts keep their lines."""
    if isinstance(value, str):
        return visible_lines(value) if key in ("text", "new_text") else visible(value)
    if isinstance(value, dict):
        return {k: _clean(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def render_case(doc: dict[str, Any]) -> str:
    """`cases show` for a terminal (control characters from mail made visible)."""
    doc = _clean(doc)
    closed = ""
    if doc["status"] == "closed":
        reason = f": {doc['close_reason']}" if doc["close_reason"] else ""
        closed = f" (closed {doc['closed_at'] or '?'}{reason})"
    lines = [
        f"case {doc['case_number']} (id {doc['id']}), {doc['status']}{closed}",
        f"  listener {doc['listener']}, process {doc['process'] or '-'}, "
        f"inbox {doc['inbox'] or '-'}, priority {doc['priority'] or '-'}, "
        f"tags {', '.join(doc['tags']) or '-'}",
        f"  subject: {doc['subject']}",
        f"  customer {doc['customer_id'] or '-'}, opened {doc['created_at']}, "
        f"last change {doc['updated_at']}"
        + (f", reopened {doc['reopened_at']}" if doc["reopened_at"] else ""),
    ]
    if doc["related_cases"]:
        related = ", ".join(f"{r['case_number']} (id {r['id']})" for r in doc["related_cases"])
        lines.append(f"  related cases: {related}")
    for n, m in enumerate(doc["messages"], start=1):
        lines += _render_message(n, m)
    return "\n".join(lines)


def _render_message(n: int, m: dict[str, Any]) -> list[str]:
    ack = m["acknowledgement"]
    ack_text = ack["state"] or "none"
    if ack["routing"] is False:
        ack_text += " (routing said: no acknowledgement)"
    lines = [
        "",
        f"--- message {n} (id {m['id']}), {m['received_at']}"
        + (f", automatic: {m['automatic']}" if m["automatic"] else ""),
        f"  From:     {_people([m['from']])}",
        f"  To:       {_people(m['to'])}",
        f"  Cc:       {_people(m['cc'])}",
        f"  Reply-To: {_people(m['reply_to'])}",
        f"  Date:     {m['date'] or '-'}",
        f"  Subject:  {m['subject']}",
        f"  HTML:     {'yes' if m['has_html'] else 'no'}; acknowledgement: {ack_text}",
    ]
    for a in m["attachments"]:
        inline = ", inline" if a["inline"] else ""
        lines.append(
            f"  attachment {a['id']}: {a['name']} ({a['type']}, {a['size']} bytes{inline})"
        )
    if m["new_text"] is not None and m["new_text"].strip() != m["text"].strip():
        lines += ["  new text:", *_indent(m["new_text"])]
    lines += ["  text:", *_indent(m["text"])]
    return lines


def _indent(text: str) -> list[str]:
    return ["    " + line for line in (text.rstrip("\n").split("\n") if text else ["(empty)"])]
