"""Case events for the CRM, queued in the transaction that made them (issue 18 point 7).

The engine (and any operator action that opens, closes or reopens a case) calls
`queue_event` inside its transaction; `outbox.webhooks` POSTs the row after commit. So an
event exists exactly when its change committed: a crash before the commit loses both, a
crash after it loses neither.

Decisions:

* The body is built here, once, and stored: every attempt sends the same bytes (the
  signature covers a fresh timestamp), and the CRM sees the case as it was when the event
  happened, not as it is when a late retry goes out.
* `id` is a random UUID, the receiver's key to drop repeats (delivery is at least once).
* case-opened carries the first mail; message-added is each later mail that joins an open
  case. A case awaiting approval (RequireApproval) is opened for the CRM when approved;
  mails that join it before that are in that case-opened's `messages` count, not events.
* The mail's text is its new text (what the customer wrote), cut at TEXT_LIMIT characters.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Collection
from typing import Any

from engage_listener.cases.acknowledging import Arrival
from engage_listener.config.webhook import WebhookEventName
from engage_listener.mail import parser
from engage_listener.store.interface import Customer, NewWebhookEvent, Transaction
from engage_listener.store.records import CaseStatus

TEXT_LIMIT = 32_000
BODY_VERSION = 1


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def message_json(
    row: int, mail: parser.ParsedMail, new_text: str, customer: Customer | None
) -> dict[str, Any]:
    """The mail an event is about, as the CRM receives it."""
    return {
        "id": row,
        "message_id": mail.message_id,
        "from": mail.sender.address if mail.sender else "",
        "from_name": mail.sender.name if mail.sender else "",
        "to": [a.address for a in mail.to],
        "cc": [a.address for a in mail.cc],
        "subject": mail.subject,
        "date": _iso(mail.date),
        "text": new_text[:TEXT_LIMIT],
        "text_truncated": len(new_text) > TEXT_LIMIT,
        "attachments": [
            {"name": a.filename, "type": a.content_type, "size": a.size} for a in mail.attachments
        ],
        "customer_id": customer.id if customer else None,
    }


async def queue_event(
    tx: Transaction,
    listener: str,
    wanted: Collection[WebhookEventName],
    event: WebhookEventName,
    case_id: int,
    message: dict[str, Any] | None = None,
    *,
    message_row: int | None = None,
    extra: dict[str, Any] | None = None,
) -> bool:
    """Queue `event` of a case in `tx` if the listener's Webhook wants it; True if queued.

    `message` is `message_json` of the mail the event is about (None for an operator's
    close or reopen); `extra` adds fields (a close's reason)."""
    if event not in wanted:
        return False
    info = await tx.case_info(case_id)
    event_id = str(uuid.uuid4())
    body: dict[str, Any] = {
        "id": event_id,
        "type": event,
        "version": BODY_VERSION,
        "occurred_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "listener": listener,
        "case": {
            "id": info.id,
            "number": info.case_number,
            "status": info.status,
            "subject": info.subject,
            "process": info.process,
            "inbox": info.inbox,
            "priority": info.priority,
            "tags": list(info.tags),
            "customer_id": info.customer_id,
        },
        "message": message,
        **(extra or {}),
    }
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    row = message_row if message_row is not None else (message or {}).get("id")
    await tx.add_webhook_event(NewWebhookEvent(listener, case_id, row, event, event_id, data))
    return True


def status_event(before: CaseStatus, after: CaseStatus) -> WebhookEventName | None:
    """The event a status change is for the CRM: closing an open case, reopening one."""
    if after == "closed" and before != "closed":
        return "case-closed"
    if before == "closed" and after == "open":
        return "case-reopened"
    return None


async def queue_status_change(
    tx: Transaction,
    listener: str,
    wanted: Collection[WebhookEventName],
    case_id: int,
    before: CaseStatus,
    after: CaseStatus,
    *,
    message: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> bool:
    """Queue the event of a case's status change (an operator's close or reopen, a mail that
    reopens a closed case), if it is one the CRM hears of; True if queued."""
    event = status_event(before, after)
    if event is None:
        return False
    return await queue_event(tx, listener, wanted, event, case_id, message, extra=extra)


async def tell_crm(
    tx: Transaction, listener: str, wanted: Collection[WebhookEventName], arrival: Arrival
) -> bool:
    """Queue the Webhook's events of a mail: case-reopened if it reopened a closed case,
    case-opened or message-added, then case-closed if routing closed the case; True if any
    was queued."""
    if not wanted:
        return False
    case_id = arrival.case.id
    message = message_json(arrival.row, arrival.mail, arrival.new_text, arrival.customer)
    told = False
    if arrival.reopened:
        told = await queue_event(tx, listener, wanted, "case-reopened", case_id, message)
    first: WebhookEventName = "case-opened" if arrival.is_new else "message-added"
    told = await queue_event(tx, listener, wanted, first, case_id, message) or told
    change = status_event("open", (await tx.case_info(case_id)).status)  # open before routing
    if change is not None:
        told = await queue_event(tx, listener, wanted, change, case_id, message) or told
    return told
