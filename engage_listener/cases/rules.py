"""The listener's Rules applied to one mail: routing without code.

`evaluate` runs a listener's rules (`config.model.RuleConfig`, read by `config.rules`)
on a `MailView` and returns a `RuleOutcome`. The case engine is to apply it before the
routing hook, which sees the outcome; `engage-listener rules test` shows it for a .eml.

Semantics:
- Rules are tried in order; a rule applies when all its Match elements hold, and then its
  actions apply in file order. A later SetProcess, SetInbox or SetPriority overrides an
  earlier one; AddTag adds a tag once (first place kept); NoAcknowledgement cannot be
  undone. Discard, Quarantine and Stop end the evaluation after the rule's own actions
  (`stopped` is then true: later rules were not looked at).
- Comparisons fold case (`str.casefold`) unless CaseSensitive; a Regex is searched (not
  anchored) with RE2 (see `config.rules`), case-insensitive unless CaseSensitive.
- From, To and Cc are tested address by address: Equals against the address, Contains
  and Regex against the address or the display name, Domain against the address's
  domain or a parent of it (`example.org` matches a@mx.example.org, never
  a@badexample.org; IDNA and Unicode forms compare equal). Field To is To, Cc and the
  delivered-to address. A Header Domain reads the header's value as addresses
  (Reply-To, Sender, Return-Path...).
- Exists on a Header: the header is present (even empty); on a field: the field is not
  empty (From: has an address, To: any recipient or delivered-to address).
- Subject and header values are compared whole for Equals (surrounding whitespace
  trimmed). Body is the text body (from the HTML when there is no plain text), its first
  `MAX_BODY_CHARS` characters: a rule must cost the same on a 150 MB mail as on a small one.

Decisions: only `config` and `mail` are imported, so the evaluator is usable (and tested)
without a store; the view is built by `mail_view` from a ParsedMail, and the redesigned
engine will build the same view it gives the hook.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, assert_never

from engage_listener.config.model import (
    AddTag,
    Discard,
    ListenerConfig,
    MatchConfig,
    NoAcknowledgement,
    Quarantine,
    RuleAction,
    RuleConfig,
    SetInbox,
    SetPriority,
    SetProcess,
    Stop,
)
from engage_listener.config.rules import compile_pattern
from engage_listener.mail.fields import parse_addresses, recipient_key
from engage_listener.mail.parser import Address, ParsedMail

MAX_BODY_CHARS = 1_048_576  # the first 1 MB of text is matched; the rest never costs time


class Headers(Mapping[str, str]):
    """Header fields by name in any case (`X-Spam-Flag` finds `x-spam-flag`), read-only."""

    def __init__(self, fields: Mapping[str, str]) -> None:
        self._fields = {name.lower(): value for name, value in fields.items()}

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


@dataclass(frozen=True)
class MailView:
    """What rules look at in a mail: addresses, subject, text body and decoded headers."""

    from_: Address | None
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    delivered_to: str | None
    subject: str
    body: str
    headers: Headers


@dataclass(frozen=True)
class RuleOutcome:
    """What the rules decided; None and empty mean "no rule said" (the listener's default)."""

    matched: tuple[str, ...] = ()  # names of the rules that applied, in order
    process: str | None = None
    inbox: str | None = None
    priority: int | None = None
    tags: tuple[str, ...] = ()
    acknowledge: bool = True  # False after NoAcknowledgement
    discard: bool = False
    quarantine: str | None = None  # the reason
    stopped: bool = False  # Stop, Discard or Quarantine ended the evaluation


def evaluate(rules: Sequence[RuleConfig], mail: MailView) -> RuleOutcome:
    """Apply the rules in order (see the module's semantics)."""
    outcome = RuleOutcome()
    for rule in rules:
        if not all(matches(m, mail) for m in rule.matches):
            continue
        outcome = replace(outcome, matched=(*outcome.matched, rule.name))
        for action in rule.actions:
            outcome = _apply(outcome, action)
        if outcome.stopped:
            break
    return outcome


def _apply(outcome: RuleOutcome, action: RuleAction) -> RuleOutcome:
    changes: dict[str, Any]
    match action:
        case SetProcess(process):
            changes = {"process": process}
        case SetInbox(inbox):
            changes = {"inbox": inbox}
        case SetPriority(priority):
            changes = {"priority": priority}
        case AddTag(tag):
            changes = {"tags": tuple(dict.fromkeys((*outcome.tags, tag)))}
        case NoAcknowledgement():
            changes = {"acknowledge": False}
        case Discard():
            changes = {"discard": True, "stopped": True}
        case Quarantine(reason):
            changes = {"quarantine": reason, "stopped": True}
        case Stop():
            changes = {"stopped": True}
        case _:
            assert_never(action)
    return replace(outcome, **changes)


def matches(match: MatchConfig, mail: MailView) -> bool:
    """Whether one Match holds for the mail."""
    if match.header is not None:
        return _header_matches(match, mail.headers.get(match.header))
    if match.field in ("From", "To", "Cc"):
        found = _addresses(mail, match.field)
        if match.operator == "Exists":
            return bool(found) == (match.value == "true")
        return _any_address(match, found)
    text = mail.subject if match.field == "Subject" else mail.body[:MAX_BODY_CHARS]
    if match.operator == "Exists":
        return bool(text.strip()) == (match.value == "true")
    return _text_matches(match, text)


def _header_matches(match: MatchConfig, value: str | None) -> bool:
    if match.operator == "Exists":
        return (value is not None) == (match.value == "true")
    if value is None:
        return False
    if match.operator == "Domain":
        return _any_address(match, _header_addresses(value))
    return _text_matches(match, value[:MAX_BODY_CHARS])


def _addresses(mail: MailView, field: str) -> tuple[Address, ...]:
    """The addresses a field stands for; To is To, Cc and the delivered-to address."""
    if field == "From":
        found = [mail.from_] if mail.from_ is not None else []
    elif field == "Cc":
        found = list(mail.cc)
    else:
        found = [*mail.to, *mail.cc]
        known = {a.address.lower() for a in found}
        if mail.delivered_to and mail.delivered_to.lower() not in known:
            found.append(Address(mail.delivered_to, ""))
    return tuple(a for a in found if a.address or a.name)


def _header_addresses(value: str) -> tuple[Address, ...]:
    return tuple(Address(a, n) for n, a in parse_addresses(value, []))


def _any_address(match: MatchConfig, found: Iterable[Address]) -> bool:
    """One of the addresses satisfies the Match (see the module's semantics)."""
    return any(_address_holds(match, item) for item in found)


def _address_holds(match: MatchConfig, item: Address) -> bool:
    if match.operator == "Domain":
        return _in_domain(item.address, match.value)
    values = (item.address,) if match.operator == "Equals" else (item.address, item.name)
    return any(value and _text_matches(match, value) for value in values)


def _text_matches(match: MatchConfig, value: str) -> bool:
    """Contains, Equals or Regex on one value."""
    if match.operator == "Regex":
        pattern = compile_pattern(match.value, match.case_sensitive)
        try:
            return pattern.search(value) is not None
        except UnicodeEncodeError:  # a lone surrogate: RE2 reads UTF-8, so replace it
            return pattern.search(value.encode("utf-8", "replace").decode()) is not None
    want, have = match.value, value
    if not match.case_sensitive:
        want, have = want.casefold(), have.casefold()
    if match.operator == "Equals":
        return have.strip() == want.strip()
    return want in have


def _in_domain(address: str, domain: str) -> bool:
    """The address's domain is `domain` or a subdomain of it."""
    _, at, have = address.strip().strip("<>").rpartition("@")
    if not at:
        return False
    have, want = _ascii_domain(have), _ascii_domain(domain)
    return bool(want) and (have == want or have.endswith("." + want))


def _ascii_domain(domain: str) -> str:
    """Lower-case ASCII (IDNA) form, trailing dot dropped; as given when not encodable."""
    domain = domain.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return domain


# ------------------------------------------------------------------ building the view


def delivered_to(
    headers: Mapping[str, str],
    to: Sequence[Address],
    cc: Sequence[Address],
    own_addresses: Iterable[str],
) -> str | None:
    """The address the mail was delivered to: `Delivered-To` (the topmost one), else
    `X-Original-To`, else the first To/Cc address that is one of the listener's own
    (compared without case or `+tag`: support+billing@ is delivered to support@)."""
    fields = headers if isinstance(headers, Headers) else Headers(headers)
    for name in ("Delivered-To", "X-Original-To"):
        value = fields.get(name)
        if value and value.strip():
            pairs = parse_addresses(value, [])
            found = next((a for _, a in pairs if "@" in a), None)
            return found or value.strip()
    own = {recipient_key(a) for a in own_addresses if a.strip()}
    return next((a.address for a in (*to, *cc) if recipient_key(a.address) in own), None)


def listener_addresses(listener: ListenerConfig) -> tuple[str, ...]:
    """The listener's own addresses: its UserName when it is one, and the
    Acknowledgement's (FromAddress, ReplyTo, OwnAddresses, already collected there)."""
    own = [listener.username] if "@" in listener.username else []
    ack = listener.acknowledgement
    own += list(ack.own_addresses) if ack is not None else []
    return tuple(dict.fromkeys(a.lower() for a in own))


def mail_view(mail: ParsedMail, own_addresses: Iterable[str] = ()) -> MailView:
    """The view rules see of a parsed mail (the body capped at MAX_BODY_CHARS)."""
    return MailView(
        from_=mail.sender,
        to=mail.to,
        cc=mail.cc,
        delivered_to=delivered_to(mail.headers, mail.to, mail.cc, own_addresses),
        subject=mail.subject,
        body=mail.text[:MAX_BODY_CHARS],
        headers=Headers(mail.headers),
    )
