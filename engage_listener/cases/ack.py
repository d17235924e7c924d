"""Acknowledgement mails: what to write to the customer, and whether to write at all.

No I/O: the engine decides *when* (once per case, recorded in the store) and
:mod:`engage_listener.outbox.smtp` sends. Decisions:

* Templates use ``str.format`` syntax over :data:`PLACEHOLDERS` only; values
  are inserted verbatim (a subject ``{x}`` is harmless), HTML-escaped in the
  HTML part and flattened to one line in the subject (no header injection).
* Values from the mail are cut (subject 100, name 64 characters) and lose their
  control characters (C0, C1, line separators, bidi overrides), in every part:
  whoever writes to us must not choose the text our own account sends out.
* The subject always carries ``[Case#N]`` so replies thread into the case; a
  token already in the customer's subject is dropped from ``{subject}``.
* RFC 3834: ``Auto-Submitted: auto-replied``, no ``Precedence``, and never an
  answer to automatic mail, daemons, no-reply senders or ourselves.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from engage_listener.config.templates import AckTemplate, substitute
from engage_listener.mail.automatic import is_noreply_address
from engage_listener.mail.fields import recipient_key
from engage_listener.mail.subjects import case_token, find_case_token

MAX_REFERENCES = 20  # RFC 5322 3.6.4 lets us trim; keep the first and the latest ones
MAX_SUBJECT_VALUE = 100  # characters of the customer's subject an acknowledgement repeats
MAX_NAME_VALUE = 64  # characters of the sender's (or customer's) name
_TOKEN_IN_SUBJECT = re.compile(r"\[\s*case\s*#\s*[0-9a-z][0-9a-z-]*\s*\]", re.IGNORECASE)
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]+")
_MSGID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+>")  # printable ASCII, no < >


def _one_line(value: str) -> str:
    """Header-safe: no CR/LF or other controls, runs of whitespace collapsed."""
    return " ".join(_CONTROLS.sub(" ", value).split())


def render(template: AckTemplate, values: Mapping[str, str]) -> tuple[str, str, str | None]:
    """(subject, text, html) with ``values`` filled in; missing values become ``""``.

    Raises ValueError only for templates that :func:`template_problems` rejects.
    """
    subject_values = {k: _one_line(v) for k, v in values.items()}
    subject = _one_line(substitute(template.subject, subject_values))
    text = substitute(template.text, values)
    html_body = None
    if template.html is not None:
        escaped = {k: html.escape(v) for k, v in values.items()}
        html_body = substitute(template.html, escaped)
    return subject, text, html_body


@dataclass(frozen=True)
class AckIdentity:
    """Who the acknowledgement comes from; the Message-ID domain defaults to From's."""

    from_address: str
    from_name: str = ""
    reply_to: str | None = None
    message_id_domain: str | None = None


def _domain(identity: AckIdentity) -> str:
    """An ASCII domain for our Message-IDs (IDNA-encoded when needed)."""
    domain = identity.message_id_domain or identity.from_address.rpartition("@")[2]
    try:
        return domain.strip().lower().encode("idna").decode("ascii") or "localhost"
    except UnicodeError:
        return "localhost"


def _msgids(value: str) -> list[str]:
    """The ``<id>`` tokens of a header value; bare ``id@host`` words get brackets."""
    if "<" not in value:
        value = " ".join(f"<{word}>" for word in value.split() if "@" in word)
    return _MSGID.findall(value)


def _references(original_references: Sequence[str], original_id: str | None) -> list[str]:
    """The thread so far plus the customer's mail, deduplicated and capped."""
    refs: list[str] = []
    for candidate in [*original_references, original_id or ""]:
        for found in _msgids(candidate):
            if found not in refs:
                refs.append(found)
    if len(refs) > MAX_REFERENCES:
        refs = [refs[0], *refs[-(MAX_REFERENCES - 1) :]]
    return refs


def _cut(text: str, limit: int) -> str:
    """At most `limit` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _subject_value(original_subject: str) -> str:
    """The customer's subject for display: without our token, one line, bounded."""
    text = _cut(_one_line(_TOKEN_IN_SUBJECT.sub(" ", original_subject)), MAX_SUBJECT_VALUE)
    return text or "(sin asunto / no subject)"


def _name_value(name: str) -> str:
    """A display name from the mail or the store: one line, bounded."""
    return _cut(_one_line(name), MAX_NAME_VALUE)


def _values(
    case_number: str, original_subject: str, customer_name: str, received_at: datetime, to: str
) -> dict[str, str]:
    """The placeholder values of one acknowledgement."""
    return {
        "case_number": case_number,
        "case_token": case_token(case_number),
        "subject": _subject_value(original_subject),
        "customer_name": customer_name,
        "received_at": received_at.isoformat(sep=" ", timespec="minutes"),
        "sender": to,
    }


def _address(name: str, addr_spec: str) -> Address:
    """A header address; ValueError (not HeaderParseError) when it is unusable."""
    try:
        address = Address(_one_line(name), addr_spec=addr_spec.strip())
    except (HeaderParseError, ValueError) as exc:
        raise ValueError(f"unusable address {addr_spec!r}: {exc}") from None
    if not address.domain:
        raise ValueError(f"unusable address {addr_spec!r}: no domain")
    return address


def _set_body(message: EmailMessage, text: str, html_body: str | None) -> None:
    """UTF-8 quoted-printable parts: 7-bit clean, so no 8BITMIME is needed."""
    message.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    if html_body is not None:
        message.add_alternative(html_body, subtype="html", charset="utf-8", cte="quoted-printable")


def build_ack(
    identity: AckIdentity,
    template: AckTemplate,
    *,
    to_address: str,
    to_name: str,
    case_number: str,
    original_subject: str,
    original_message_id: str | None,
    original_references: Sequence[str],
    customer_name: str,
    received_at: datetime,
    now: datetime | None = None,
) -> EmailMessage:
    """The complete acknowledgement message. Raises ValueError for unusable addresses."""
    to_address = _one_line(parseaddr(to_address)[1] or to_address)
    to_name = _name_value(to_name)
    name = _name_value(customer_name) or to_name or to_address
    values = _values(case_number, original_subject, name, received_at, to_address)
    subject, text, html_body = render(template, values)
    if find_case_token(subject) != case_number:
        subject = f"{values['case_token']} {subject}"
    message = EmailMessage()
    message["From"] = _address(identity.from_name, identity.from_address)
    message["To"] = _address(to_name, to_address)
    if identity.reply_to:
        message["Reply-To"] = identity.reply_to
    message["Subject"] = subject
    message["Date"] = format_datetime(now or datetime.now(UTC))
    message["Message-ID"] = f"<{secrets.token_hex(16)}@{_domain(identity)}>"
    _thread(message, original_message_id, original_references)
    message["Auto-Submitted"] = "auto-replied"
    message["X-Auto-Response-Suppress"] = "All"
    _set_body(message, text, html_body)
    return message


def _thread(message: EmailMessage, original_id: str | None, references: Sequence[str]) -> None:
    """In-Reply-To and References, so mail clients show the ack in the customer's thread."""
    in_reply_to = _msgids(original_id or "")
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to[0]
    refs = _references(references, original_id)
    if refs:
        message["References"] = " ".join(refs)


def skip_reason(
    *,
    sender: str,
    automatic: str | None,
    own_addresses: Iterable[str],
    hook_acknowledge: bool | None,
    is_new_case: bool,
    on_follow_ups: bool,
) -> str | None:
    """Why this mail gets no acknowledgement, or None to send one.

    The hook may veto (False) or ask for an ack on a follow-up (True), but never
    overrides the loop-protection rules (automatic mail, robots, ourselves).
    """
    if hook_acknowledge is False:
        return "routing hook vetoed the acknowledgement"
    if not is_new_case and not on_follow_ups and hook_acknowledge is not True:
        return "follow-up to an existing case"
    if automatic is not None:
        return f"automatic mail ({automatic})"
    if "@" not in parseaddr(sender)[1] or is_noreply_address(sender):
        return "sender must not be answered (null, daemon, no-reply or unusable)"
    key = recipient_key(sender)
    if any(recipient_key(own) == key for own in own_addresses if own.strip()):
        return "sender is one of our own addresses (mail loop)"
    return None
