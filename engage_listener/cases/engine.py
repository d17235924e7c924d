"""The case engine: one raw mail becomes a case (or joins one), in one transaction.

Everything for a mail (case, message, attachments, the routing procedure's changes
and the ledger row) commits together or not at all, which is what lets the listener
move the mail on the server afterwards without ever losing it or making a second case
of it. A routing hook that fails rolls it all back. The sender's new customer too on
SQLite; on PostgreSQL, shared by several writers, a new customer is committed at once,
apart (store.postgres.customers), and stays when the mail rolls back or a hook
discards or quarantines it: a customer without a case, whom the sender's next mail
finds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt

from engage_listener.cases.acknowledging import AckSettings, Arrival, acknowledge
from engage_listener.cases.addresses import automatic_unless_replied_to, chosen_address
from engage_listener.cases.follow_ups import (
    Scope,
    closed_case,
    named_case,
    names_a_case,
    participants,
    reopens,
)
from engage_listener.cases.hooks import RoutingDecision, RoutingHook
from engage_listener.cases.ingested import Ingested
from engage_listener.cases.routing import (
    Discarded,
    apply,
    check_rules,
    combine,
    hook_context,
    message_view,
)
from engage_listener.cases.rules import RuleOutcome, evaluate, mail_view
from engage_listener.cases.settings import EngineSettings
from engage_listener.cases.stored import add_attachments, new_message
from engage_listener.cases.webhooks import tell_crm
from engage_listener.errors import QuarantineNow, WriteConflict
from engage_listener.mail import parser
from engage_listener.mail.parse_pool import Prepared
from engage_listener.mail.parse_shared import prepare_for_quarantine, shared
from engage_listener.mail.subjects import normalize_subject
from engage_listener.store.interface import (
    CaseCandidate,
    CaseRef,
    Customer,
    MailKey,
    NewCase,
    NewMessage,
    Store,
    SubjectKey,
    Transaction,
)
from engage_listener.store.records import CaseStatus

__all__ = ["PENDING", "REPLAY_MAILBOX", "AckSettings", "CaseEngine", "EngineSettings", "Prepared"]

REPLAY_MAILBOX = "#quarantine"  # ledger mailbox of mails replayed from quarantine
# A mail whose transaction met another's new row (`WriteConflict`: the same new customer
# made by two listeners at once) is taken again at once, this many times; it was a
# listener error with a back-off of seconds, and in a group a retry of every mail.
CONFLICT_RETRIES = 2
PENDING: CaseStatus = "pending-approval"


class CaseEngine:
    """Ingests mails of one listener into the store (see `intake.contract.Handler`)."""

    def __init__(
        self, store: Store, settings: EngineSettings, ack_queued: asyncio.Event | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        # Set after a commit that queued an acknowledgement or a webhook event (the daemon
        # hands in one that wakes both senders).
        self.ack_queued = ack_queued

    def prepare(self, raw: bytes) -> asyncio.Future[Prepared]:
        """What `ingest` would first do, started ahead of it in a parse worker (its future
        is what `ingest` takes as `prepared`); see parse_pool."""
        return shared().submit(raw, self.settings.extract_attachments)

    async def ingest(self, key: MailKey, raw: bytes, prepared: object = None) -> Ingested:
        """Parse (unless `prepare` did), then commit customer, case, message, attachments,
        routing and ledger. A mail the Rules or the hook discard is kept, ignored."""
        if isinstance(prepared, asyncio.Future):  # from `prepare`; parse-timeout raises here
            prepared = await shared().take(prepared)  # the pool counts the waits
        if not isinstance(prepared, Prepared):
            prepared = await _prepare(raw, strip=self.settings.extract_attachments)
        s = self.settings
        mail = prepared.mail
        automatic = automatic_unless_replied_to(
            prepared.automatic, mail, s.uses_reply_to, s.all_own_addresses
        )
        message = new_message(self.settings, raw, prepared, automatic, prepared.new_text)
        try:
            for _ in range(CONFLICT_RETRIES):
                with contextlib.suppress(WriteConflict):  # rolled back: taken again, it
                    return await self._ingest(key, raw, mail, automatic, message)  # finds
            return await self._ingest(key, raw, mail, automatic, message)  # the other's row
        except Discarded:  # rolled back (the case it opened too): kept without a case
            async with self.store.transaction() as tx:
                await self._ignore(tx, key, message)
            return Ingested(None, None, False, False, ignored=True)

    async def _ingest(
        self,
        key: MailKey,
        raw: bytes,
        mail: parser.ParsedMail,
        automatic: str | None,
        message: NewMessage,
    ) -> Ingested:
        person = self._person(mail)
        address = person.normalized if person else ""
        rules = self._rules(mail)  # no store: first, since the process it sets is looked up
        subject = SubjectKey(
            rules.process or self.settings.process,
            normalize_subject(mail.subject, self.settings.subject_prefixes),
            opens=self._opens(mail, automatic, rules),
        )
        async with self.store.transaction() as tx:
            seen = await tx.find_arrival(
                key.listener, message.sha256, message.message_id, address, subject
            )  # the duplicate check, the sender's customer and its cases: one read
            duplicate = seen.duplicate
            if duplicate is not None:
                await tx.add_ledger(key, duplicate, message)
                case = await tx.case_of_message(duplicate)
                if case is None:  # the first copy was kept without a case (ignored)
                    return Ingested(None, None, False, True, ignored=True)
                return Ingested(case.id, case.case_number, False, True)
            check_rules(rules)  # Quarantine or Discard: before any customer or case
            customer, looked_up = await self._customer(tx, person, seen.customer)
            by_subject = seen.by_subject if looked_up else None
            case, is_new, reopened = await self._find_or_open(
                tx, mail, person, customer, automatic, subject, by_subject
            )
            if case is None:  # automatic mail that matches no case: kept, ignored
                await self._ignore(tx, key, message)
                return Ingested(None, None, False, False, ignored=True)
            row = await tx.add_message(case.id, message)
            await tx.add_participants(case.id, participants(mail))
            await add_attachments(tx, self.settings, row, raw, mail)
            ack, told = None, False
            if not await self._awaits_approval(tx, case, is_new):
                arrival = Arrival(
                    case,
                    is_new,
                    row,
                    mail,
                    customer,
                    automatic,
                    raw,
                    message.new_text or "",
                    rules,
                    reopened=reopened,
                )
                ack = await self._route_and_acknowledge(tx, arrival)
                told = await tell_crm(
                    tx, self.settings.listener, self.settings.webhook_events, arrival
                )
            await tx.add_ledger(key, row, message)
        self._wake(ack, told)
        return Ingested(case.id, case.case_number, is_new, False, ack=ack)

    def _wake(self, ack: str | None, told: bool) -> None:
        """After the commit: the senders have something new (an ack, an event)."""
        if (ack == "queued" or told) and self.ack_queued is not None:
            self.ack_queued.set()

    @staticmethod
    async def _ignore(tx: Transaction, key: MailKey, message: NewMessage) -> None:
        """Keep the mail without a case, marked ignored, and its ledger row."""
        row = await tx.add_message(None, dataclasses.replace(message, ignored=True))
        await tx.add_ledger(key, row, message)

    def _opens(self, mail: parser.ParsedMail, automatic: str | None, rules: RuleOutcome) -> bool:
        """Whether the mail opens a case unless its customer has one by its subject
        (`SubjectKey.opens`): it names none, no rule stops it, an unknown sender gets a
        customer, and it is not automatic mail to ignore. A wrong yes costs a gap in the
        case numbers (PostgreSQL), a wrong no a round trip."""
        s = self.settings
        return not (
            names_a_case(mail)
            or rules.discard
            or rules.quarantine is not None
            or s.unknown_sender != "CreateCustomer"
            or (automatic and s.automatic_mail == "Ignore")
        )

    def _rules(self, mail: parser.ParsedMail) -> RuleOutcome:
        if not self.settings.rules:
            return RuleOutcome()
        return evaluate(self.settings.rules, mail_view(mail, self.settings.all_own_addresses))

    async def approve(self, case_id: int) -> str:
        """Open a case that awaited approval, then route and acknowledge its first mail.
        Routing that discards or quarantines it now rejects the case instead."""
        why = ""
        async with self.store.transaction() as tx:
            info = await tx.case_info(case_id)
            if info.status != PENDING:
                return f"case {info.case_number} is {info.status}, not {PENDING}"
            await tx.set_case_status(case_id, "open")
            row, raw = await tx.first_message(case_id)
            ready = await _prepare(raw)
            mail, s = ready.mail, self.settings
            automatic = automatic_unless_replied_to(
                ready.automatic, mail, s.uses_reply_to, s.all_own_addresses
            )
            customer = await tx.get_customer(info.customer_id) if info.customer_id else None
            case = CaseRef(info.id, info.case_number)
            arrival = Arrival(
                case,
                True,
                row,
                mail,
                customer,
                automatic,
                raw,
                ready.new_text,
                self._rules(mail),
            )
            told = False
            try:
                ack = await self._route_and_acknowledge(tx, arrival)
                told = await tell_crm(
                    tx, self.settings.listener, self.settings.webhook_events, arrival
                )
            except (Discarded, QuarantineNow) as exc:  # nothing to quarantine any more
                ack = None
                why = str(exc)
        if ack is None and why:
            async with self.store.transaction() as tx:
                await tx.set_case_status(case_id, "rejected")
            return f"case {info.case_number} rejected by routing ({why})"
        self._wake(ack, told)
        return f"case {info.case_number} approved (acknowledgement: {ack or 'not configured'})"

    async def quarantine(self, key: MailKey, raw: bytes, reason: str, attempts: int) -> int:
        """Keep an unprocessable mail with its reason (it will be moved to the error folder)."""
        strip = self.settings.extract_attachments
        message = new_message(
            self.settings, raw, await prepare_for_quarantine(raw, strip, reason), None
        )
        async with self.store.transaction() as tx:
            return await tx.add_quarantine(key, raw, message, reason, attempts)

    # ----- steps ----------------------------------------------------------------------
    async def _awaits_approval(self, tx: Transaction, case: CaseRef, is_new: bool) -> bool:
        """New cases wait for a supervisor under RequireApproval; so do their follow-ups."""
        if is_new and self.settings.require_approval:
            await tx.set_case_status(case.id, PENDING)
            return True
        return not is_new and (await tx.case_info(case.id)).status == PENDING

    async def _route_and_acknowledge(self, tx: Transaction, arrival: Arrival) -> str | None:
        """The Rules' outcome and the hook's decision applied, then the acknowledgement."""
        hook = self.settings.hook
        said = await self._run_hook(tx, arrival) if hook is not None else None
        decision = combine(arrival.rules, said)
        await apply(tx, arrival.case.id, arrival.row, decision, _who(hook, arrival.rules))
        if decision.acknowledge is False and (said is None or said.acknowledge is None):
            vetoed = ", ".join(arrival.rules.matched)
            return f"skipped: NoAcknowledgement (rule {vetoed})" if self.settings.ack else None
        return await acknowledge(
            tx,
            self.settings.listener,
            self.settings.ack,
            self.settings.all_own_addresses,
            arrival,
            decision.acknowledge,
        )

    def _person(self, mail: parser.ParsedMail) -> parser.Address | None:
        """The sender whose customer the case is for (CustomerFrom)."""
        s = self.settings
        return chosen_address(mail, s.customer_from, s.all_own_addresses)

    async def _customer(
        self, tx: Transaction, person: parser.Address | None, found: Customer | None
    ) -> tuple[Customer | None, bool]:
        """The sender's (`person`'s) customer as `find_arrival` `found` it, or what
        UnknownSender says without one; and whether its cases by subject are those
        `find_arrival` looked up (not for the DefaultCustomer: a new one has none)."""
        address = person.normalized if person else ""
        if found is not None:
            return found, True
        policy = self.settings.unknown_sender
        if policy == "Quarantine":
            raise QuarantineNow(f"unknown sender {address or '(none)'} (UnknownSender=Quarantine)")
        if policy == "DefaultCustomer" and self.settings.default_customer_id is not None:
            default = await tx.get_customer(self.settings.default_customer_id)
            if default is None:
                raise LookupError(f"DefaultCustomer {self.settings.default_customer_id} not found")
            return default, False
        if not address:
            return None, True
        return await tx.create_customer(person.name if person else "", address, "auto"), True

    async def _find_or_open(
        self,
        tx: Transaction,
        mail: parser.ParsedMail,
        person: parser.Address | None,
        customer: Customer | None,
        automatic: str | None,
        subject: SubjectKey,
        by_subject: tuple[CaseRef | None, CaseCandidate | None] | None,
    ) -> tuple[CaseRef | None, bool, bool]:
        """(case, opened, reopened): join an open case by headers or case token (see
        `follow_ups`: its participants only), or the customer's by subject; else reopen the
        closed case it would have joined (closed less than ReopenDays ago); else open one,
        related to the case it named or that closed case. In the process a rule's
        SetProcess names, else the listener's CaseProcess. An automatic mail never reopens
        a case. `person`: the sender (CustomerFrom), whom a new case is from; `subject`:
        the process and normalized subject; `by_subject`: the customer's cases by it, as
        `find_arrival` found them (None: look them up)."""
        s = self.settings
        process, normalized = subject.process, subject.normalized
        scope = Scope(s.listener, process, anyone=s.follow_ups_from == "Anyone")
        named = await named_case(tx, mail, scope)
        customer_id = customer.id if customer else None
        if named.join is not None:
            return named.join, False, False
        if by_subject is None:
            by_subject = await tx.cases_by_subject(customer_id, process, normalized)
        case, closed_by_subject = by_subject
        if case is not None:
            return case, False, False
        related = named.related_case_id
        closed = await closed_case(tx, mail, scope, closed_by_subject)
        if closed.case is not None:
            now = dt.datetime.now(dt.UTC)
            if not automatic and reopens(closed.case, s.reopen_days, now):
                await tx.reopen_case(closed.case.id, now.isoformat(timespec="seconds"))
                return closed.case.ref, False, True
            related = closed.case.id
        related = related or closed.related_case_id
        if automatic and self.settings.automatic_mail == "Ignore":
            return None, False, False
        sender = person or parser.Address("", "")
        new = NewCase(
            listener=self.settings.listener,
            process=process,
            sender=sender.address,
            sender_name=sender.name,
            subject=mail.subject,
            normalized_subject=normalized,
            customer_id=customer.id if customer else None,
            related_case_id=related,
        )
        return await tx.create_case(new), True, False

    async def _run_hook(self, tx: Transaction, arrival: Arrival) -> RoutingDecision:
        """Run the installation's routing procedure in this transaction."""
        assert self.settings.hook is not None
        info = await tx.case_info(arrival.case.id)
        message = message_view(
            arrival.row,
            arrival.mail,
            arrival.automatic,
            arrival.new_text,
            self.settings.all_own_addresses,
        )
        context = hook_context(
            self.settings.listener, info, arrival.is_new, message, arrival.customer, arrival.rules
        )
        return await self.settings.hook.run(context, tx)


async def _prepare(raw: bytes, *, strip: bool = False) -> Prepared:
    """Parsed in a worker process, within the per-mail budget (QuarantineNow past it)."""
    return await shared().prepare(raw, strip)


def _who(hook: RoutingHook | None, rules: RuleOutcome) -> str:
    """Who decided, for a quarantine reason: the hook, else the last rule that applied."""
    if hook is not None:
        return f"routing hook {hook.name}"
    return f"rule {rules.matched[-1]}" if rules.matched else "rules"
