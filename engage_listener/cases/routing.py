"""Routing one mail: the listener's Rules, then its routing hook, as one decision.

The engine evaluates the Rules (`cases.rules`) before it looks for the mail's case: a
rule's SetProcess decides which process the case is found or opened in, and Discard or
Quarantine must come before a customer or case is made. Once the case is known, the
hook (if any) runs with the whole mail and the Rules' outcome in its `HookContext`,
and `combine` merges the two: the hook's decision wins field by field where it says
something, tags add up. `apply` writes the result to the case in the mail's transaction.

Decisions:
- Discard and Quarantine raise (`Discarded`, `QuarantineNow`) so the mail's transaction
  rolls back whatever was written for it (the case it opened, the hook's SQL writes; not
  a new customer on PostgreSQL, committed apart: store.postgres.customers);
  the engine then keeps a discarded mail marked ignored, and intake quarantines the
  other at once (no attempts counted), as UnknownSender Quarantine does.
- NoAcknowledgement of a rule is the hook's default: a hook returning acknowledge True
  overrides it, as it overrides any other field of the Rules' outcome it sets.
"""

from __future__ import annotations

from collections.abc import Iterable

from engage_listener.cases.hook_types import (
    AttachmentView,
    CaseView,
    CustomerView,
    HookContext,
    MessageView,
    RoutingDecision,
)
from engage_listener.cases.rules import Headers, RuleOutcome, delivered_to
from engage_listener.errors import QuarantineNow
from engage_listener.mail import parser
from engage_listener.store.interface import CaseInfo, Customer, Transaction


class Discarded(Exception):
    """Routing discarded the mail: kept, marked ignored, no case."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def check_rules(outcome: RuleOutcome) -> None:
    """Quarantine (QuarantineNow) or discard (Discarded) as the Rules said, before any
    customer or case is made."""
    rule = f"rule {outcome.matched[-1] if outcome.matched else '?'}"
    if outcome.quarantine is not None:  # the reason is `rule NAME` when none was given
        reason = outcome.quarantine
        raise QuarantineNow(reason if reason == rule else f"{rule}: {reason}")
    if outcome.discard:
        raise Discarded(f"{rule}: Discard")


def combine(rules: RuleOutcome, hook: RoutingDecision | None) -> RoutingDecision:
    """The Rules' outcome overridden by the hook's decision, field by field."""
    base = RoutingDecision(
        inbox=rules.inbox,
        priority=rules.priority,
        tags=rules.tags,
        acknowledge=None if rules.acknowledge else False,
        process=rules.process,
        discard=rules.discard,
        quarantine=rules.quarantine,
    )
    if hook is None:
        return base
    return RoutingDecision(
        inbox=hook.inbox if hook.inbox is not None else base.inbox,
        priority=hook.priority if hook.priority is not None else base.priority,
        tags=tuple(dict.fromkeys((*base.tags, *hook.tags))),
        acknowledge=hook.acknowledge if hook.acknowledge is not None else base.acknowledge,
        process=hook.process if hook.process is not None else base.process,
        status=hook.status,
        discard=hook.discard or base.discard,
        quarantine=hook.quarantine if hook.quarantine is not None else base.quarantine,
    )


async def apply(
    tx: Transaction, case_id: int, row: int, decision: RoutingDecision, hook: str
) -> None:
    """Quarantine or discard (raising, see the module), else write the decision."""
    if decision.quarantine is not None:
        raise QuarantineNow(f"{hook}: {decision.quarantine}")
    if decision.discard:
        raise Discarded(f"{hook}: discard")
    await tx.apply_decision(
        case_id,
        row,
        decision.inbox,
        decision.priority,
        decision.tags,
        decision.acknowledge,
        process=decision.process,
        status=decision.status,
    )


def hook_context(
    listener: str,
    info: CaseInfo,
    is_new: bool,
    message: MessageView,
    customer: Customer | None,
    rules: RuleOutcome,
) -> HookContext:
    """What the hook sees of the case, the mail, the customer and the Rules."""
    return HookContext(
        listener=listener,
        case=CaseView(
            info.id, info.case_number, info.process, info.status, info.inbox, info.subject, is_new
        ),
        message=message,
        customer=CustomerView(customer.id, customer.name, customer.addresses) if customer else None,
        rules=rules,
    )


def message_view(
    row: int,
    mail: parser.ParsedMail,
    automatic: str | None,
    new_text: str,
    own_addresses: Iterable[str],
) -> MessageView:
    """The whole mail as a hook sees it (headers decoded and read-only, no bytes)."""
    sender = mail.sender or parser.Address("", "")
    headers = Headers(mail.headers)  # once: delivered_to reads it too
    return MessageView(
        row,
        mail.message_id,
        sender.address,
        sender.name,
        mail.subject,
        mail.text,
        tuple(a.filename for a in mail.attachments),
        automatic,
        to=mail.to,
        cc=mail.cc,
        reply_to=mail.reply_to,
        delivered_to=delivered_to(headers, mail.to, mail.cc, own_addresses),
        headers=headers,
        new_text=new_text,
        attachments=tuple(
            AttachmentView(a.filename, a.content_type, a.size, a.inline) for a in mail.attachments
        ),
        html=mail.html is not None,
    )
