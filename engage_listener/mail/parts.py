"""Deciding which MIME parts are the message body and which are attachments.

The rules follow what mail clients show: the first text/plain and the last
text/html rendition of a multipart/alternative are the body; the root of a
multipart/related is the body and its other parts are inline resources;
text parts that are neither marked as attachments nor carry a file name are
body text; everything else (including a whole forwarded message/rfc822, which
is kept as one .eml and not exploded) is an attachment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engage_listener.mail.fields import clean_line, extension_for, sanitize_filename
from engage_listener.mail.text import (
    decode_bytes,
    decode_transfer,
    decode_words,
    html_to_text,
    parse_params,
    sniff_html_charset,
)
from engage_listener.mail.tree import Part, charset_hints, field_text, read_fields

__all__ = ["MAX_ATTACHMENTS", "REST_NAME", "Found", "Walker"]

MAX_ATTACHMENTS = 500  # attachments kept one by one; the rest become one opaque part
REST_NAME = "remaining-parts.txt"  # that part: the MIME source of the rest, as text

_BODY_TYPES = ("text/plain", "text/html")
_MESSAGE_TYPES = ("message/rfc822", "message/global")
_CID_NAME = re.compile(r"[\w\-. ]{1,100}\.[A-Za-z0-9]{2,5}")
_NAME_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".gif",
    ".bmp",
    ".webp",
    ".tif",
    ".tiff",
    ".svg",
    ".pdf",
    ".txt",
    ".html",
    ".htm",
)
_BODY_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(slots=True)
class Found:
    """An attachment: its part, chosen file name and decoded bytes."""

    part: Part
    filename: str
    content_type: str
    content_id: str | None
    inline: bool
    payload: bytes


def _disposition(part: Part) -> tuple[str, dict[str, str]]:
    value = part.header("content-disposition")
    return parse_params(value) if value is not None else ("", {})


def _declared_name(part: Part) -> str:
    """The file name the sender gave (disposition filename, else Content-Type name)."""
    return _disposition(part)[1].get("filename") or part.params.get("name") or ""


def _is_body(part: Part) -> bool:
    return (
        part.content_type in _BODY_TYPES
        and _disposition(part)[0] != "attachment"
        and not _declared_name(part).strip()
    )


def _content_id(part: Part) -> str | None:
    value = (part.header("content-id") or "").strip().strip("<>").strip()
    return value or None


class Walker:
    """Walks a part tree once, collecting body texts and attachments.

    Decisions: past MAX_ATTACHMENTS attachments, the rest are neither decoded nor named
    one by one (each costs a decode, a file name and a store row; a mail of 5,000 tiny
    parts is an attack, not a correspondence): `finish` keeps them as one text part
    holding their MIME source, and a defect says so. Nothing is lost: the raw mail is
    stored whole.
    """

    def __init__(self, defects: list[str]) -> None:
        self.defects = defects
        self.texts: list[str] = []
        self.htmls: list[str] = []
        self.found: list[Found] = []
        self._names: set[str] = set()
        self._numbers: dict[str, int] = {}  # see sanitize_filename
        self._rest: list[Part] = []  # attachments past MAX_ATTACHMENTS

    def walk(self, part: Part) -> None:
        """Classify ``part`` and, for multiparts, its children."""
        kind = part.content_type
        if part.opaque:
            self._attach(part)
        elif kind.startswith("multipart/") and part.children:
            if kind == "multipart/alternative":
                self._alternative(part)
            elif kind == "multipart/related":
                self._related(part)
            elif kind == "multipart/signed":
                self.walk(part.children[0])
                for child in part.children[1:]:
                    self._resource(child)
            else:
                for child in part.children:
                    self.walk(child)
        elif _is_body(part):
            self._body(part)
        else:
            self._attach(part)

    def text(self) -> str:
        """The plain body; derived from the HTML body when there is no plain text."""
        text = "\n".join(self.texts)
        if not text.strip() and self.htmls:
            return html_to_text("\n".join(self.htmls))
        return text

    def html(self) -> str | None:
        return "\n".join(self.htmls) if self.htmls else None

    def _alternative(self, part: Part) -> None:
        """First plain and last HTML rendition; other renditions of them are dropped."""
        bodies = [child for child in part.children if _is_body(child)]
        plain = next((c for c in bodies if c.content_type == "text/plain"), None)
        html = next((c for c in reversed(bodies) if c.content_type == "text/html"), None)
        for child in part.children:
            if child is plain or child is html:
                self._body(child)
            elif child not in bodies:
                self.walk(child)

    def _related(self, part: Part) -> None:
        """The root (``start`` or first part) is the body; the rest are resources."""
        start = part.params.get("start", "").strip().strip("<>")
        root = next(
            (c for c in part.children if start and _content_id(c) == start), part.children[0]
        )
        self.walk(root)
        for child in part.children:
            if child is not root:
                self._resource(child)

    def _resource(self, part: Part) -> None:
        if part.content_type.startswith("multipart/"):
            self.walk(part)
        else:
            self._attach(part)

    def _fallback_name(self, part: Part, kind: str, payload: bytes, cid: str | None) -> str:
        """For unnamed parts: a forwarded mail's subject, the part's description, an
        Outlook-style Content-ID (``image001.jpg@...``), else ``part-N.ext``."""
        extension = extension_for(kind)
        if kind in _MESSAGE_TYPES and (subject := nested_subject(payload)):
            return subject + ".eml"
        description = clean_line(decode_words(part.header("content-description") or "")).strip()
        if 0 < len(description) <= 80 and description.strip(" ."):
            return description if description.endswith(extension) else description + extension
        local = (cid or "").split("@", 1)[0]
        if _CID_NAME.fullmatch(local) and local.lower().endswith(_NAME_EXTENSIONS):
            return local
        return f"part-{len(self.found) + 1}{extension}"

    def _payload(self, part: Part) -> bytes:
        encoding = part.header("content-transfer-encoding") or ""
        payload, problem = decode_transfer(part.body, encoding)
        if problem:
            self.defects.append(f"{part.content_type} part: {problem}")
        return payload

    def _body(self, part: Part) -> None:
        payload = self._payload(part)
        is_html = part.content_type == "text/html"
        charset = part.params.get("charset") or (sniff_html_charset(payload) if is_html else None)
        text, wrong = decode_bytes(payload, charset)
        if wrong:
            self.defects.append(
                f"{part.content_type} part: charset {charset!r} unknown or "
                "wrong, decoded as UTF-8/windows-1252"
            )
        text = _BODY_CONTROLS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
        if is_html:
            self.htmls.append(text)
            return
        if part.params.get("format", "").lower() == "flowed":
            text = unflow(text, part.params.get("delsp", "").lower() == "yes")
        self.texts.append(text)

    def finish(self) -> None:
        """After `walk`: the attachments past MAX_ATTACHMENTS as one opaque part."""
        if not self._rest:
            return
        first = self._rest[0]
        same = [p for p in self._rest if p.buf is first.buf]
        start, end = min(p.start for p in same), max(p.end for p in same)
        span = Part(first.buf, start, start, end, [], "text/plain", opaque=True)
        others = [p.buf[p.start : p.end] for p in self._rest if p.buf is not first.buf]
        payload = b"\n".join([first.buf[start:end], *others])
        self.defects.append(
            f"more than {MAX_ATTACHMENTS} attachments: the other {len(self._rest)} kept as"
            f" one part, {REST_NAME}"
        )
        name = sanitize_filename(REST_NAME, self._names, "text/plain", self._numbers)
        self.found.append(Found(span, name, "text/plain", None, False, payload))
        self._rest = []

    def _attach(self, part: Part) -> None:
        if len(self.found) >= MAX_ATTACHMENTS:
            self._rest.append(part)
            return
        if part.opaque:
            payload, kind = part.buf[part.start : part.end], "message/rfc822"
        else:
            payload, kind = self._payload(part), part.content_type
        content_id = _content_id(part)
        name = _declared_name(part) or self._fallback_name(part, kind, payload, content_id)
        inline = content_id is not None and _disposition(part)[0] != "attachment"
        filename = sanitize_filename(name, self._names, kind, self._numbers)
        self.found.append(Found(part, filename, kind, content_id, inline, payload))


def nested_subject(payload: bytes) -> str:
    """The decoded subject of a forwarded message ("" when it has none)."""
    fields = dict(reversed(read_fields(payload, 0, len(payload), [], top=True)[0]))
    raw = fields.get("subject", b"")
    subject = field_text(raw, () if raw.isascii() else charset_hints(payload))
    return clean_line(decode_words(subject)).strip()


def unflow(text: str, delsp: bool) -> str:
    """Join RFC 3676 format=flowed soft line breaks (a line ending in a space)."""
    out: list[str] = []
    pending = ""
    for stuffed in text.split("\n"):
        line = stuffed.removeprefix(" ")  # space-stuffing
        if line.endswith(" ") and line != "-- ":
            pending += line[:-1] if delsp else line
            continue
        out.append(pending + line)
        pending = ""
    if pending:
        out.append(pending)
    return "\n".join(out)
