"""Which case a mail that names one (by In-Reply-To/References or `[Case#N]`) may join.

Case numbers are sequential and Message-IDs travel in every quoted reply, so naming a
case proves nothing. A mail joins the case it names only when the case belongs to this
listener's CaseProcess (this listener's own cases when it has none) and the sender is one
of the case's participants: the customer's addresses, or any From/To/Cc address of the
case's mails so far. Otherwise the engine opens a new case that records the one named
(`related_case_id`), so an agent still sees the connection and nobody outside a case can
write into it.

Decisions:

* `FollowUpsFrom Anyone` drops the participant check only; the process boundary holds
  always (a token never joins another team's case).
* Every named case is tried, headers first, newest first: a reply whose References also
  name a stranger's thread still finds the case the sender takes part in.
* Participants are kept per case (`case_participants`), bounded per mail, so the check is
  one indexed look-up however long the case; for the cases a reply's headers name, it
  is made in the same read (`takes_part`).
* A closed case is looked for only when no open case takes the mail (`closed_case`), by
  the same three ways (headers, token, the customer's subject) and the same rules: an
  open case of the thread always wins over a closed one. What then happens (reopen
  within ReopenDays, else a new related case) is the engine's (`reopens`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from engage_listener.mail import parser
from engage_listener.mail.subjects import find_case_token
from engage_listener.store.interface import CaseCandidate, CaseRef, Transaction

MAX_PARTICIPANTS_PER_MAIL = 100  # From, To and Cc addresses one mail adds to its case


@dataclass(frozen=True)
class Scope:
    """Where follow-ups may join: this listener's process, and who may write into a case."""

    listener: str
    process: str | None
    anyone: bool = False  # FollowUpsFrom Anyone


@dataclass(frozen=True)
class Named:
    """The outcome: the case to join, or the case named that the mail may not join."""

    join: CaseRef | None
    related_case_id: int | None


def in_scope(case: CaseCandidate, scope: Scope) -> bool:
    """The same CaseProcess; without one, this listener's cases without a process."""
    if scope.process is not None:
        return case.process == scope.process
    return case.process is None and case.listener == scope.listener


def names_a_case(mail: parser.ParsedMail) -> bool:
    """Whether the mail names a case at all (a header or a case token): else only its
    customer's cases by subject can take it."""
    return bool(_named_ids(mail) or find_case_token(mail.subject))


def _named_ids(mail: parser.ParsedMail) -> list[str]:
    """The Message-IDs the mail's In-Reply-To and References name."""
    return [r for r in (mail.in_reply_to, *mail.references) if r]


async def named_case(tx: Transaction, mail: parser.ParsedMail, scope: Scope) -> Named:
    """The case the mail names and may join, else the first one it named (or nothing)."""
    sender = mail.sender.normalized if mail.sender else ""
    refs = _named_ids(mail)
    refused: CaseCandidate | None = None
    for case in await tx.cases_by_message_ids(refs, "" if scope.anyone else sender):
        if await _may_join(tx, case, sender, scope):
            return Named(case.ref, None)
        refused = refused or case
    token = find_case_token(mail.subject)
    by_number = await tx.case_by_number(token) if token else None
    if by_number is not None:
        if await _may_join(tx, by_number, sender, scope):
            return Named(by_number.ref, None)
        refused = refused or by_number
    return Named(None, refused.id if refused else None)


async def _may_join(tx: Transaction, case: CaseCandidate, sender: str, scope: Scope) -> bool:
    if not in_scope(case, scope):
        return False
    if scope.anyone or not sender:
        return scope.anyone
    if case.takes_part is not None:  # asked with the look-up (cases_by_message_ids)
        return case.takes_part
    return await tx.is_participant(case.id, sender)


@dataclass(frozen=True)
class ClosedNamed:
    """A closed case the mail would have joined were it open (`case`), else one it named
    but may not join (`related_case_id`), as `Named` for open cases."""

    case: CaseCandidate | None
    related_case_id: int | None


async def closed_case(
    tx: Transaction,
    mail: parser.ParsedMail,
    scope: Scope,
    by_subject: CaseCandidate | None,
) -> ClosedNamed:
    """The closed case the mail would have joined were it open: by header or token (its
    participants only, in scope), else the customer's by subject (`by_subject`: read
    with the open one, `Transaction.cases_by_subject`)."""
    sender = mail.sender.normalized if mail.sender else ""
    refs = _named_ids(mail)
    refused: CaseCandidate | None = None
    for case in await tx.closed_cases_by_message_ids(refs):
        if await _may_join(tx, case, sender, scope):
            return ClosedNamed(case, None)
        refused = refused or case
    token = find_case_token(mail.subject)
    by_number = await tx.closed_case_by_number(token) if token else None
    if by_number is not None:
        if await _may_join(tx, by_number, sender, scope):
            return ClosedNamed(by_number, None)
        refused = refused or by_number
    return ClosedNamed(by_subject, refused.id if refused else None)


def reopens(case: CaseCandidate, reopen_days: int, now: dt.datetime) -> bool:
    """Whether a mail for this closed case reopens it: closed less than `reopen_days`
    ago (0: never). A case without a close time counts as closed long ago."""
    if reopen_days <= 0 or not case.closed_at:
        return False
    closed = dt.datetime.fromisoformat(case.closed_at)
    if closed.tzinfo is None:
        closed = closed.replace(tzinfo=dt.UTC)
    return now - closed < dt.timedelta(days=reopen_days)


def participants(mail: parser.ParsedMail) -> Sequence[str]:
    """The mail's From, To and Cc addresses, lower-cased, at most MAX_PARTICIPANTS_PER_MAIL."""
    found = [mail.sender] if mail.sender else []
    found += [*mail.to, *mail.cc]
    addresses = dict.fromkeys(a.normalized for a in found if "@" in a.address)
    return list(addresses)[:MAX_PARTICIPANTS_PER_MAIL]
