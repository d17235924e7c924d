"""Turning one raw mail into sender, subject, bodies and attachments, never failing.

A mail that breaks the parser must still become a case (SPEC: never lose a
mail), so :func:`parse` and :func:`strip_attachments` catch everything and
report problems as ``defects`` instead. For speed they avoid
``email.policy.default`` entirely: structure comes from :mod:`.mime_tree`
(offsets into the raw bytes), text decoding from :mod:`.mime_text`, and single
fields from :mod:`.mime_fields`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any

from engage_listener.mail.fields import (
    clean_line,
    message_id,
    parse_addresses,
    parse_date,
    references,
    sanitize_filename,
)
from engage_listener.mail.parts import Found, Walker
from engage_listener.mail.text import decode_bytes, decode_words
from engage_listener.mail.tree import Part, build_tree

__all__ = [
    "Address",
    "Attachment",
    "ParsedMail",
    "parse",
    "sanitize_filename",
    "strip_attachments",
    "unparsed",
]

MAX_DEFECTS = 100
_EMPTY: Mapping[str, str] = MappingProxyType({})
_CONTENT_FIELDS = (b"content-type", b"content-transfer-encoding", b"content-disposition")


@dataclass(frozen=True)
class Address:
    """One mailbox of an address field."""

    address: str  # as given, stripped; "" when unusable
    name: str  # display name, RFC 2047 decoded

    @property
    def normalized(self) -> str:
        """The address lower-cased, for matching customers."""
        return self.address.strip().lower()


@dataclass(frozen=True)
class Attachment:
    """One attachment (or inline resource) with its decoded bytes."""

    filename: str
    content_type: str
    size: int
    content_id: str | None
    inline: bool
    payload: bytes


@dataclass(frozen=True)
class ParsedMail:
    """Everything the case engine needs from a mail; see :func:`parse`."""

    parsed: bool
    sender: Address | None
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    subject: str
    date: dt.datetime | None
    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    text: str
    html: str | None
    attachments: tuple[Attachment, ...]
    defects: tuple[str, ...]
    headers: Mapping[str, str]
    stripped: bytes | None = None  # with parse(strip=True): see strip_attachments

    def __reduce__(self) -> tuple[object, tuple[dict[str, object]]]:
        """Pickled by a parse worker process (see parse_pool): a read-only mapping does not
        pickle, so the headers travel as a dict and are wrapped again on arrival."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["headers"] = dict(self.headers)
        return _unpickle, (state,)


def _unpickle(state: dict[str, Any]) -> ParsedMail:
    state["headers"] = MappingProxyType(state["headers"])
    return ParsedMail(**state)


def unparsed(why: str) -> ParsedMail:
    """A mail left unread on purpose (its parse was stopped): ``why`` is its one defect.
    Nothing of it is decoded (that could be what took so long); the raw mail is kept."""
    return ParsedMail(
        False, None, (), (), (), "", None, None, None, (), "", None, (), (why,), _EMPTY
    )


def parse(raw: bytes, *, strip: bool = False) -> ParsedMail:
    """Read a mail. Never raises: on total failure ``parsed`` is False and defects say why.

    With `strip`, also what :func:`strip_attachments` gives, from the same walk (one
    parse and one decoding of each attachment instead of two).
    """
    try:
        return _parse(bytes(raw), strip)
    except Exception as exc:  # includes RecursionError and MemoryError
        failed = _failed(raw, exc)
        return replace(failed, stripped=strip_attachments(raw)) if strip else failed


def _parse(raw: bytes, strip: bool = False) -> ParsedMail:
    defects: list[str] = []
    root = build_tree(raw, defects)
    walker = Walker(defects)
    walker.walk(root)
    walker.finish()
    stripped = None
    if strip:
        try:
            stripped = _cut(raw, root, walker.found)
        except Exception:  # nothing is lost: the mail is kept whole
            stripped = raw
    headers = _header_map(root, defects)
    if not root.fields:
        defects.append("no header fields found: not a mail message")
    return ParsedMail(
        parsed=bool(root.fields),
        sender=_sender(root, defects),
        reply_to=_addresses(root, "reply-to", defects),
        to=_addresses(root, "to", defects),
        cc=_addresses(root, "cc", defects),
        subject=clean_line(decode_words(root.header("subject") or "", defects)),
        date=parse_date(root.header("date")),
        message_id=message_id(root.header("message-id")),
        in_reply_to=message_id(root.header("in-reply-to")),
        references=references(root.header("references")),
        text=walker.text(),
        html=walker.html(),
        attachments=tuple(_attachment(found) for found in walker.found),
        defects=_unique(defects),
        headers=headers,
        stripped=stripped,
    )


def _failed(raw: object, exc: BaseException) -> ParsedMail:
    """The result for a mail the parser could not read at all (raw is kept elsewhere)."""
    why = f"parser failed: {type(exc).__name__}: {str(exc)[:200]}"
    try:
        text = decode_bytes(bytes(raw) if isinstance(raw, bytes | bytearray) else b"")[0]
    except Exception:  # even the fallback must not raise
        text = ""
    return ParsedMail(
        False, None, (), (), (), "", None, None, None, (), text, None, (), (why,), _EMPTY
    )


def _attachment(found: Found) -> Attachment:
    return Attachment(
        found.filename,
        found.content_type,
        len(found.payload),
        found.content_id,
        found.inline,
        found.payload,
    )


def _unique(defects: list[str]) -> tuple[str, ...]:
    """Defects without repeats, capped so a pathological mail cannot flood the store."""
    unique = list(dict.fromkeys(defects))
    if len(unique) > MAX_DEFECTS:
        unique = [*unique[:MAX_DEFECTS], f"... and {len(unique) - MAX_DEFECTS} more defects"]
    return tuple(unique)


def _header_map(root: Part, defects: list[str]) -> Mapping[str, str]:
    """Lower-case name -> first value, RFC 2047 decoded, for auto-reply detection."""
    headers: dict[str, str] = {}
    for name, value in root.fields:
        if name not in headers:
            headers[name] = decode_words(value, defects).replace("\x00", "")
    return MappingProxyType(headers)


def _addresses(part: Part, name: str, defects: list[str]) -> tuple[Address, ...]:
    value = part.header(name)
    if value is None:
        return ()
    return tuple(Address(a, n) for n, a in parse_addresses(value, defects))


def _sender(root: Part, defects: list[str]) -> Address | None:
    """From's first usable mailbox (any From field); else Sender, Reply-To (set by
    the author, unlike the envelope's Return-Path, often a bulk mailer's), Return-Path."""
    from_ = tuple(
        Address(a, n)
        for key, value in root.fields
        if key == "from"
        for n, a in parse_addresses(value, defects)
    )
    usable = next((a for a in from_ if a.address), None)
    if usable is not None:
        return usable
    if root.header("from") is None:
        defects.append("no From field")
    for fallback in ("sender", "reply-to", "return-path"):
        found = next((a for a in _addresses(root, fallback, []) if a.address), None)
        if found is not None:
            defects.append(f"sender taken from {fallback.title()} (From unusable)")
            name = from_[0].name if from_ and from_[0].name else found.name
            return Address(found.address, name)
    return from_[0] if from_ else None


def strip_attachments(raw: bytes) -> bytes:
    """The raw mail with each non-inline attachment replaced by a short text note.

    Bodies, inline images and all other bytes stay exactly as they were. Never
    raises: on any problem the mail is returned unchanged (nothing is lost).
    """
    try:
        return _strip(bytes(raw))
    except Exception:  # includes RecursionError and MemoryError
        return bytes(raw) if isinstance(raw, bytes | bytearray) else b""


def _strip(raw: bytes) -> bytes:
    root = build_tree(raw, [])
    walker = Walker([])
    walker.walk(root)
    walker.finish()
    return _cut(raw, root, walker.found)


def _cut(raw: bytes, root: Part, found_parts: list[Found]) -> bytes:
    newline = b"\r\n" if b"\r\n" in raw[: root.body_start or 4096] else b"\n"
    cuts = sorted(
        (f.part.start, f.part.end, f) for f in found_parts if not f.inline and f.part.buf is raw
    )
    out: list[bytes] = []
    pos = 0
    for start, end, found in cuts:
        if start < pos:
            continue  # inside a part already cut
        out.append(raw[pos:start])
        if found.part is root:
            out.append(_kept_fields(raw, root, newline))
        out.append(_note(found, newline) + (newline if found.part is root else b""))
        pos = end
    out.append(raw[pos:])
    return b"".join(out)


def _note(found: Found, newline: bytes) -> bytes:
    """A small text/plain part standing in for a removed attachment."""
    text = (
        f"[attachment removed: {found.filename} ({found.content_type}, {len(found.payload)} bytes)]"
    )
    head = (
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Transfer-Encoding: 8bit",
        b"Content-Disposition: inline",
    )
    return newline.join(head) + newline + newline + text.encode("utf-8")


def _kept_fields(raw: bytes, root: Part, newline: bytes) -> bytes:
    """The top-level header lines minus the Content-* fields the note replaces."""
    kept: list[bytes] = []
    skipping = False
    for line in raw[root.start : root.body_start].splitlines():
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.split(b":", 1)[0].strip().lower() in _CONTENT_FIELDS
        if line.strip() and not skipping:
            kept.append(line)
    return b"".join(line + newline for line in kept)
