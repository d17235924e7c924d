"""The case engine: one raw mail becomes a case (or joins one), in one transaction.

Everything for a mail (customer, case, message, attachments, the routing
procedure's changes and the ledger row) commits together or not at all, which is
what lets the listener move the mail on the server afterwards without ever losing
it or making a second case of it. A routing hook that fails rolls it all back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
from dataclasses import dataclass

from engage_listener.cases.ack import AckIdentity, build_ack, skip_reason
from engage_listener.cases.follow_ups import Scope, named_case, participants
from engage_listener.cases.hooks import (
    CaseView,
    CustomerView,
    HookContext,
    MessageView,
    RoutingDecision,
    RoutingHook,
)
from engage_listener.cases.ingested import Ingested
from engage_listener.config.ack import DEFAULT_MAX_PER_HOUR, DEFAULT_MAX_PER_RECIPIENT_PER_HOUR
from engage_listener.config.model import AutomaticMail, FollowUpsFrom, UnknownSender
from engage_listener.config.templates import AckTemplate
from engage_listener.errors import QuarantineNow
from engage_listener.mail import parser
from engage_listener.mail.authres import unauthenticated
from engage_listener.mail.fields import recipient_key
from engage_listener.mail.parse_pool import Prepared, prepare_for_quarantine, shared
from engage_listener.mail.subjects import normalize_subject
from engage_listener.store.interface import (
    CaseRef,
    Customer,
    MailKey,
    NewAck,
    NewAttachment,
    NewCase,
    NewMessage,
    Store,
    Transaction,
)
from engage_listener.store.records import CaseStatus

REPLAY_MAILBOX = "#quarantine"  # ledger mailbox of mails replayed from quarantine
PENDING: CaseStatus = "pending-approval"


@dataclass(frozen=True)
class EngineSettings:
    """Per-listener case rules, from the listener's configuration."""

    listener: str
    extract_attachments: bool
    process: str | None = None
    unknown_sender: UnknownSender = "CreateCustomer"
    default_customer_id: int | None = None
    automatic_mail: AutomaticMail = "Ignore"  # Ignore: never opens a case
    subject_prefixes: tuple[str, ...] = ()
    hook: RoutingHook | None = None
    ack: AckSettings | None = None
    require_approval: bool = False
    follow_ups_from: FollowUpsFrom = "Participants"  # see follow_ups


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


class CaseEngine:
    """Ingests mails of one listener into the store (see `intake.contract.Handler`)."""

    def __init__(
        self, store: Store, settings: EngineSettings, ack_queued: asyncio.Event | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self.ack_queued = ack_queued  # set after a commit that queued an acknowledgement

    def prepare(self, raw: bytes) -> asyncio.Future[Prepared]:
        """What `ingest` would first do, started ahead of it in a parse worker (its future
        is what `ingest` takes as `prepared`); see parse_pool."""
        return shared().submit(raw, self.settings.extract_attachments)

    async def ingest(self, key: MailKey, raw: bytes, prepared: object = None) -> Ingested:
        """Parse (unless `prepare` did), then commit customer, case, message, attachments,
        routing and ledger."""
        if isinstance(prepared, asyncio.Future):  # from `prepare`; parse-timeout raises here
            prepared = await prepared
        if not isinstance(prepared, Prepared):
            prepared = await _prepare(raw, strip=self.settings.extract_attachments)
        mail, automatic = prepared.mail, prepared.automatic
        message = self._message(raw, prepared, automatic)
        async with self.store.transaction() as tx:
            duplicate = await tx.find_duplicate(key.listener, message.sha256, message.message_id)
            if duplicate is not None:
                await tx.add_ledger(key, duplicate, message)
                case = await tx.case_of_message(duplicate)
                if case is None:  # the first copy was automatic mail, kept without a case
                    return Ingested(None, None, False, True, ignored=True)
                return Ingested(case.id, case.case_number, False, True)
            customer = await self._customer(tx, mail)
            case, is_new = await self._find_or_open(tx, mail, customer, automatic)
            if case is None:  # automatic mail that matches no case: kept, ignored
                row = await tx.add_message(None, dataclasses.replace(message, ignored=True))
                await tx.add_ledger(key, row, message)
                return Ingested(None, None, False, False, ignored=True)
            row = await tx.add_message(case.id, message)
            await tx.add_participants(case.id, participants(mail))
            await self._attach(tx, row, raw, mail)
            ack = None
            if not await self._awaits_approval(tx, case, is_new):
                arrival = Arrival(case, is_new, row, mail, customer, automatic, raw)
                ack = await self._route_and_acknowledge(tx, arrival)
            await tx.add_ledger(key, row, message)
        if ack == "queued" and self.ack_queued is not None:
            self.ack_queued.set()
        return Ingested(case.id, case.case_number, is_new, False, ack=ack)

    async def approve(self, case_id: int) -> str:
        """Open a case that awaited approval, then route and acknowledge its first mail."""
        async with self.store.transaction() as tx:
            info = await tx.case_info(case_id)
            if info.status != PENDING:
                return f"case {info.case_number} is {info.status}, not {PENDING}"
            await tx.set_case_status(case_id, "open")
            row, raw = await tx.first_message(case_id)
            ready = await _prepare(raw)
            mail, automatic = ready.mail, ready.automatic
            customer = await tx.get_customer(info.customer_id) if info.customer_id else None
            case = CaseRef(info.id, info.case_number)
            arrival = Arrival(case, True, row, mail, customer, automatic, raw)
            ack = await self._route_and_acknowledge(tx, arrival)
        if ack == "queued" and self.ack_queued is not None:
            self.ack_queued.set()
        return f"case {info.case_number} approved (acknowledgement: {ack or 'not configured'})"

    async def quarantine(self, key: MailKey, raw: bytes, reason: str, attempts: int) -> int:
        """Keep an unprocessable mail with its reason (it will be moved to the error folder)."""
        strip = self.settings.extract_attachments
        message = self._message(raw, await prepare_for_quarantine(raw, strip, reason), None)
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
        decision = await self._route(tx, arrival) if self.settings.hook is not None else None
        hook_says = decision.acknowledge if decision else None
        return await self._acknowledge(tx, arrival, hook_says)

    async def _customer(self, tx: Transaction, mail: parser.ParsedMail) -> Customer | None:
        """The sender's customer, or what UnknownSender says to do without one."""
        address = mail.sender.normalized if mail.sender else ""
        found = await tx.find_customer(address) if address else None
        if found is not None:
            return found
        policy = self.settings.unknown_sender
        if policy == "Quarantine":
            raise QuarantineNow(f"unknown sender {address or '(none)'} (UnknownSender=Quarantine)")
        if policy == "DefaultCustomer" and self.settings.default_customer_id is not None:
            default = await tx.get_customer(self.settings.default_customer_id)
            if default is None:
                raise LookupError(f"DefaultCustomer {self.settings.default_customer_id} not found")
            return default
        if not address:
            return None
        name = mail.sender.name if mail.sender else ""
        return await tx.create_customer(name, address, "auto")

    async def _find_or_open(
        self,
        tx: Transaction,
        mail: parser.ParsedMail,
        customer: Customer | None,
        automatic: str | None,
    ) -> tuple[CaseRef | None, bool]:
        """Join an open case by headers or case token (see `follow_ups`: its participants
        only), or the customer's by subject; else open one."""
        normalized = normalize_subject(mail.subject, self.settings.subject_prefixes)
        s = self.settings
        named = await named_case(
            tx, mail, Scope(s.listener, s.process, anyone=s.follow_ups_from == "Anyone")
        )
        case = named.join
        if case is None:
            customer_id = customer.id if customer else None
            case = await tx.open_case_by_subject(customer_id, self.settings.process, normalized)
        if case is not None:
            return case, False
        if automatic and self.settings.automatic_mail == "Ignore":
            return None, False
        sender = mail.sender or parser.Address("", "")
        new = NewCase(
            listener=self.settings.listener,
            process=self.settings.process,
            sender=sender.address,
            sender_name=sender.name,
            subject=mail.subject,
            normalized_subject=normalized,
            customer_id=customer.id if customer else None,
            related_case_id=named.related_case_id,
        )
        return await tx.create_case(new), True

    async def _route(self, tx: Transaction, arrival: Arrival) -> RoutingDecision:
        """Run the installation's routing procedure in this transaction, then apply it."""
        assert self.settings.hook is not None
        case, mail, customer, row = arrival.case, arrival.mail, arrival.customer, arrival.row
        info = await tx.case_info(case.id)
        sender = mail.sender or parser.Address("", "")
        context = HookContext(
            listener=self.settings.listener,
            case=CaseView(
                info.id,
                info.case_number,
                info.process,
                info.status,
                info.inbox,
                info.subject,
                arrival.is_new,
            ),
            message=MessageView(
                row,
                mail.message_id,
                sender.address,
                sender.name,
                mail.subject,
                mail.text,
                tuple(a.filename for a in mail.attachments),
                arrival.automatic,
            ),
            customer=CustomerView(customer.id, customer.name, customer.addresses)
            if customer
            else None,
        )
        decision = await self.settings.hook.run(context, tx)
        await tx.apply_decision(
            case.id, row, decision.inbox, decision.priority, decision.tags, decision.acknowledge
        )
        return decision

    async def _acknowledge(
        self, tx: Transaction, arrival: Arrival, hook_says: bool | None
    ) -> str | None:
        """Queue the acknowledgement in this transaction; returns "queued" or why not."""
        ack = self.settings.ack
        if ack is None:
            return None
        case, mail, customer = arrival.case, arrival.mail, arrival.customer
        sender = mail.sender or parser.Address("", "")
        reason = skip_reason(
            sender=sender.address,
            automatic=arrival.automatic,
            own_addresses=ack.own_addresses,
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
            self.settings.listener,
            case.id,
            arrival.row,
            sender.address,
            str(message["Subject"]),
            str(message["Message-ID"]),
            message.as_bytes(),
        )
        if await tx.listener_acks(self.settings.listener, since) >= ack.max_per_hour:
            why = f"MaxPerHour: {ack.max_per_hour} acknowledgements in the last hour"
            await tx.add_outbox(row, state="suppressed", last_error=why)  # recorded, never sent
            return f"suppressed: {why}"
        await tx.add_outbox(row)
        return "queued"

    def _message(self, raw: bytes, ready: Prepared, automatic: str | None) -> NewMessage:
        mail = ready.mail
        sender = mail.sender or parser.Address("", "")
        stored = mail.stripped if self.settings.extract_attachments else None
        return NewMessage(
            listener=self.settings.listener,
            message_id=mail.message_id,
            in_reply_to=mail.in_reply_to,
            sender=sender.address,
            sender_name=sender.name,
            subject=mail.subject,
            sent_at=mail.date,
            received_at=dt.datetime.now(dt.UTC),
            sha256=ready.sha256,
            raw=raw,
            parsed=mail.parsed,
            body_text=mail.text,
            body_html=mail.html,
            defects="\n".join(mail.defects),
            automatic=automatic,
            stored_mime=stored,
        )

    async def _attach(self, tx: Transaction, row: int, raw: bytes, mail: parser.ParsedMail) -> None:
        """ExtractAttachments True: one row per attachment; False: the whole mail as one .eml,
        whose bytes are the message's raw (stored once: see `store.NewAttachment`)."""
        if not self.settings.extract_attachments:
            eml = NewAttachment(_eml_name(mail.subject), "message/rfc822", raw, raw_of_message=True)
            await tx.add_attachment(row, eml)
            return
        for item in mail.attachments:
            await tx.add_attachment(
                row,
                NewAttachment(
                    item.filename, item.content_type, item.payload, item.content_id, item.inline
                ),
            )


async def _prepare(raw: bytes, *, strip: bool = False) -> Prepared:
    """Parsed in a worker process, within the per-mail budget (QuarantineNow past it)."""
    return await shared().prepare(raw, strip)


def _eml_name(subject: str) -> str:
    """A safe file name for the whole mail stored as one attachment."""
    stem = re.sub(r"[^\w\- ]+", "_", subject, flags=re.UNICODE).strip(" ._")[:80]
    return f"{stem or 'message'}.eml"
