"""Acknowledging one mail in its transaction: to whom, whether at all, and queueing it.

The engine calls `acknowledge` after routing; the acknowledgement is written to the
outbox in the mail's own transaction (delivered after commit by `outbox.delivery`).
`AckSettings.recipient` says who gets it: the sender, or under ReplyTo a usable
Reply-To (`cases.addresses`). Loop protection (`cases.ack.skip_reason`), the per-
recipient and per-listener limits and RequireAuthenticated apply to that recipient.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from engage_listener.cases.ack import AckIdentity, build_ack, skip_reason
from engage_listener.cases.addresses import chosen_address
from engage_listener.cases.rules import RuleOutcome
from engage_listener.config.ack import (
    DEFAULT_MAX_PER_HOUR,
    DEFAULT_MAX_PER_RECIPIENT_PER_HOUR,
    AddressChoice,
)
from engage_listener.config.templates import AckTemplate
from engage_listener.mail import parser
from engage_listener.mail.authres import unauthenticated
from engage_listener.mail.fields import recipient_key
from engage_listener.store.interface import CaseRef, Customer, NewAck, Transaction


@dataclass(frozen=True)
class Arrival:
    """A mail that joined or opened a case, as routing and acknowledgement see it."""

    case: CaseRef
    is_new: bool
    row: int
    mail: parser.ParsedMail
    customer: Customer | None
    automatic: str | None
    raw: bytes = b""  # the mail as received (RequireAuthenticated reads its header)
    new_text: str = ""  # what the customer wrote (mail.reply.new_text)
    rules: RuleOutcome = field(default_factory=RuleOutcome)  # what the Rules decided
    reopened: bool = False  # it reopened a closed case (ReopenDays)


@dataclass(frozen=True)
class AckSettings:
    """How and when this listener acknowledges (from its Acknowledgement block)."""

    identity: AckIdentity
    template: AckTemplate
    own_addresses: tuple[str, ...]
    on_follow_ups: bool = False
    max_per_recipient_per_hour: int = DEFAULT_MAX_PER_RECIPIENT_PER_HOUR
    max_per_hour: int = DEFAULT_MAX_PER_HOUR  # all recipients together
    require_authenticated: str | None = None  # AuthServId whose dmarc=pass is required
    recipient: AddressChoice = "From"  # ReplyTo: a usable Reply-To, else From (addresses)


async def acknowledge(
    tx: Transaction,
    listener: str,
    ack: AckSettings | None,
    own: Sequence[str],
    arrival: Arrival,
    hook_says: bool | None,
) -> str | None:
    """Queue the acknowledgement in this transaction; returns "queued" or why not
    (None: the listener does not acknowledge). `own`: the listener's own addresses."""
    if ack is None:
        return None
    case, mail, customer = arrival.case, arrival.mail, arrival.customer
    sender = chosen_address(mail, ack.recipient, own) or parser.Address("", "")
    reason = skip_reason(
        sender=sender.address,
        automatic=arrival.automatic,
        own_addresses=own,
        hook_acknowledge=hook_says,
        is_new_case=arrival.is_new,
        on_follow_ups=ack.on_follow_ups,
    ) or unauthenticated(ack.require_authenticated, arrival.raw)
    if reason:
        return f"skipped: {reason}"
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat(timespec="seconds")
    limit_key = recipient_key(sender.address)  # victim+1@ and victim+2@ count together
    if await tx.recent_acks(limit_key, since) >= ack.max_per_recipient_per_hour:
        return f"skipped: rate limit of {ack.max_per_recipient_per_hour} per hour reached"
    try:
        message = build_ack(
            ack.identity,
            ack.template,
            to_address=sender.address,
            to_name=sender.name,
            case_number=case.case_number,
            original_subject=mail.subject,
            original_message_id=mail.message_id,
            original_references=mail.references,
            customer_name=customer.name if customer else sender.name,
            received_at=dt.datetime.now(dt.UTC),
        )
    except ValueError as exc:
        return f"skipped: {exc}"
    row = NewAck(
        listener,
        case.id,
        arrival.row,
        sender.address,
        str(message["Subject"]),
        str(message["Message-ID"]),
        message.as_bytes(),
    )
    if await tx.listener_acks(listener, since) >= ack.max_per_hour:
        why = f"MaxPerHour: {ack.max_per_hour} acknowledgements in the last hour"
        await tx.add_outbox(row, state="suppressed", last_error=why)  # recorded, never sent
        return f"suppressed: {why}"
    await tx.add_outbox(row)
    return "queued"
