"""The structure of a raw mail: header fields and a tree of MIME parts, by offsets.

The stdlib feedparser pushes every line through Python code; here boundaries are
found with ``bytes.find`` and parts are kept as offsets into the raw bytes, which
is several times faster and lets :func:`engage_listener.mail.parser.strip_attachments`
cut parts out of the original bytes without re-serialising (and so altering)
the rest of the mail. Broken structure is repaired where a reader would guess
the same way, and every repair is recorded as a defect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from engage_listener.mail.text import decode_bytes, decode_transfer, parse_params

__all__ = [
    "MAX_DEPTH",
    "MAX_PARTS",
    "Part",
    "build_tree",
    "charset_hints",
    "field_text",
    "read_fields",
]

MAX_DEPTH = 50  # nested multiparts deeper than this are kept as one opaque part
MAX_PARTS = 5000  # parts beyond this stay only in the raw mail
MAX_REPAIRS = 100  # stray header lines repaired per entity (each costs a look-ahead)
_HEADER_END = re.compile(rb"\n\r?\n")
_FIELD_LINES = re.compile(rb"([!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)(?:\n|\Z)")
_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
_CONTENT_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_GUESS_BOUNDARY = re.compile(rb"^--([!-~]{1,200}?)(--)?[ \t]*\r?$", re.M)
_ALNUM = re.compile(rb"[A-Za-z0-9]")
_KNOWN_FIELDS = frozenset(
    {
        b"from",
        b"to",
        b"cc",
        b"subject",
        b"date",
        b"message-id",
        b"received",
        b"return-path",
        b"mime-version",
        b"content-type",
        b"content-transfer-encoding",
        b"reply-to",
        b"sender",
        b"in-reply-to",
        b"references",
        b"delivered-to",
        b"x-mailer",
        b"user-agent",
    }
)
# UTF-8 is tried anyway and windows-1252 is the last resort: no use as hints.
_NO_HINT = frozenset(
    {
        "utf-8",
        "utf8",
        "us-ascii",
        "ascii",
        "iso-8859-1",
        "latin1",
        "latin-1",
        "windows-1252",
        "cp1252",
        "iso-8859-15",
    }
)
_CHARSET_PARAM = re.compile(rb"""charset\s*=\s*["']?([A-Za-z0-9_.:-]{1,40})""", re.I)
_IDENTITY = frozenset({"", "7bit", "8bit", "binary"})


@dataclass(eq=False, slots=True)
class Part:
    """One MIME entity; ``buf[start:end]`` is the entity, ``buf[body_start:end]`` its body."""

    buf: bytes
    start: int
    body_start: int
    end: int
    fields: list[tuple[str, str]]
    content_type: str = "text/plain"
    params: dict[str, str] = field(default_factory=dict)
    children: list[Part] = field(default_factory=list)
    opaque: bool = False  # a multipart not split (too deep / too many parts)
    _first: dict[str, str] | None = None  # first value per name, built on first use

    def header(self, name: str) -> str | None:
        """First value of a field (lower-case name), unfolded, not RFC 2047 decoded."""
        if self._first is None:
            self._first = {}
            for key, value in self.fields:
                self._first.setdefault(key, value)
        return self._first.get(name)

    def set_fields(self, fields: list[tuple[str, str]]) -> None:
        self.fields, self._first = fields, None

    @property
    def body(self) -> bytes:
        return self.buf[self.body_start : self.end]


@dataclass(slots=True)
class _Context:
    defects: list[str]
    parts: int = 0
    eight_bit: list[tuple[Part, list[tuple[str, bytes]]]] = field(default_factory=list)


def read_fields(
    buf: bytes, start: int, end: int, defects: list[str], *, top: bool = False
) -> tuple[list[tuple[str, bytes]], int]:
    """Raw header fields (name, unfolded value) of the entity at ``start``, and where its
    body begins. A stray line inside the header block is skipped when real header
    fields follow it (mail068: a pasted "---- Original message ----" line); otherwise
    it is taken as the start of the body, as the stdlib feedparser would.
    """
    if buf.startswith(b"\n", start) or buf.startswith(b"\r\n", start):
        return [], buf.index(b"\n", start) + 1
    found = _HEADER_END.search(buf, start, end)
    block_end = found.start() + 1 if found else end
    body_start = found.end() if found else end
    fields = _well_formed_fields(buf, start, block_end)
    if fields is not None:
        return fields, min(body_start, end)
    chunks: list[tuple[str, list[bytes]]] = []  # joined at the end: folds can be many
    offset = start
    repairs = 0
    lines = buf[start:block_end].split(b"\n")
    for index, raw_line in enumerate(lines):
        line = raw_line.removesuffix(b"\r")
        if line[:1] in (b" ", b"\t") and chunks:
            chunks[-1][1].append(line)
        elif (name := _FIELD_NAME.match(line)) is not None:
            chunks.append((name.group(1).decode("ascii").lower(), [line[name.end() :]]))
        elif not line or (top and index == 0 and line.startswith(b"From ")):
            pass  # the end of the block, or an mbox separator line
        elif chunks and repairs < MAX_REPAIRS and _fields_follow(lines, index + 1):
            repairs += 1
            defects.append("unindented header continuation line")
            chunks[-1][1].append(b" " + line)
        elif top and not chunks and repairs < MAX_REPAIRS and _fields_follow(lines, index + 1):
            repairs += 1
            defects.append("stray line before the header fields skipped")
        else:
            defects.append("header section ended by a line that is not a header field")
            body_start = offset
            break
        offset += len(raw_line) + 1
    return [(name, b"".join(parts)) for name, parts in chunks], min(body_start, end)


def _well_formed_fields(buf: bytes, start: int, end: int) -> list[tuple[str, bytes]] | None:
    """Fast path, one regex match per field; None when any line does not fit."""
    fields: list[tuple[str, bytes]] = []
    pos = start
    while pos < end:
        match = _FIELD_LINES.match(buf, pos, end)
        if match is None:
            return None
        value = match.group(2)
        if b"\n" in value:
            value = value.replace(b"\r\n", b"").replace(b"\n", b"")
        fields.append((match.group(1).decode("ascii").lower(), value.removesuffix(b"\r")))
        pos = match.end()
    return fields


def _fields_follow(lines: list[bytes], index: int) -> bool:
    """Whether what follows still looks like a header section (well-known fields)."""
    known = other = 0
    for line in lines[index : index + 200]:
        name = _FIELD_NAME.match(line)
        if name is not None:
            known += name.group(1).lower() in _KNOWN_FIELDS
        elif line[:1] not in (b" ", b"\t"):
            other += 1
    return known >= 3 or (known >= 2 and known >= other)


def field_text(value: bytes, hints: tuple[str, ...] = ()) -> str:
    """Raw field bytes to text (8-bit bytes as UTF-8, else a charset the mail declares)."""
    value = value.strip(b" \t\r\n")
    if value.isascii():
        return value.decode("ascii")
    return decode_bytes(value, None, hints)[0]


def build_tree(raw: bytes, defects: list[str]) -> Part:
    """Parse the whole mail into a tree of parts; never explodes message/rfc822."""
    ctx = _Context(defects)
    root = _parse_part(raw, 0, len(raw), 0, ctx, "text/plain")
    if ctx.eight_bit:  # raw 8-bit header bytes: read them in a charset the mail declares
        hints = charset_hints(raw)
        for part, raw_fields in ctx.eight_bit:
            part.set_fields([(name, field_text(value, hints)) for name, value in raw_fields])
    return root


def charset_hints(buf: bytes) -> tuple[str, ...]:
    """Charsets declared anywhere in the mail (forwarded mails too), in order of
    appearance; UTF-8, ASCII and Latin-1 left out since they are tried anyway."""
    found: dict[str, None] = {}
    for match in _CHARSET_PARAM.finditer(buf):
        charset = match.group(1).decode("ascii").lower()
        if charset not in _NO_HINT:
            found[charset] = None
            if len(found) >= 8:
                break
    return tuple(found)


def _parse_part(
    buf: bytes, start: int, end: int, depth: int, ctx: _Context, default_type: str
) -> Part:
    """One entity: its fields, content type and (for multiparts) its children."""
    ctx.parts += 1
    raw_fields, body_start = read_fields(buf, start, end, ctx.defects, top=depth == 0)
    part = Part(buf, start, body_start, end, [(k, field_text(v)) for k, v in raw_fields])
    if any(not value.isascii() for _, value in raw_fields):
        ctx.eight_bit.append((part, raw_fields))
    declared = part.header("content-type")
    ctype, params = parse_params(declared) if declared is not None else (default_type, {})
    if _CONTENT_TYPE.fullmatch(ctype) is None:
        ctx.defects.append(f"invalid Content-Type {ctype[:60]!r}, read as text/plain")
        ctype = "text/plain"
    part.content_type, part.params = ctype, params
    if ctype.startswith("multipart/"):
        _split(part, depth, ctx)
    return part


def _split(part: Part, depth: int, ctx: _Context) -> None:
    """Find the children of a multipart, repairing what can be repaired."""
    if depth >= MAX_DEPTH or ctx.parts >= MAX_PARTS:
        why = f"nesting deeper than {MAX_DEPTH}" if depth >= MAX_DEPTH else "too many parts"
        ctx.defects.append(f"{why}: a multipart was kept unsplit as one attachment")
        part.opaque = True
        return
    buf, start, end = part.buf, part.body_start, part.end
    cte = (part.header("content-transfer-encoding") or "").strip().lower()
    if cte not in _IDENTITY:  # illegal on multiparts, but seen: decode, then split
        ctx.defects.append(f"multipart with Content-Transfer-Encoding {cte[:20]!r}")
        buf = decode_transfer(buf[start:end], cte)[0]
        start, end = 0, len(buf)
    spans = _find_parts(buf, start, end, part.params.get("boundary", ""), ctx.defects)
    if spans is None:
        part.content_type, part.params = "text/plain", {}
        return
    child_type = "message/rfc822" if part.content_type == "multipart/digest" else "text/plain"
    for child_start, child_end in spans:
        if ctx.parts >= MAX_PARTS:
            ctx.defects.append(f"more than {MAX_PARTS} parts: the rest is only in the raw mail")
            break
        part.children.append(_parse_part(buf, child_start, child_end, depth + 1, ctx, child_type))


def _find_parts(
    buf: bytes, start: int, end: int, boundary: str, defects: list[str]
) -> list[tuple[int, int]] | None:
    """Spans of the body parts between boundary lines; None when there are none."""
    delimiters = _delimiters(buf, start, end, boundary.encode("utf-8", "replace"))
    if not delimiters:
        guessed = _guess_boundary(buf, start, end)
        delimiters = _delimiters(buf, start, end, guessed) if guessed else []
        what = "missing" if not boundary else "not found in the body"
        note = "boundary guessed from the body" if delimiters else "read as plain text"
        defects.append(f"multipart boundary {what}: {note}")
    spans: list[tuple[int, int]] = []
    for index, (_, line_end, closing) in enumerate(delimiters):
        if closing:
            break
        child_start = min(line_end + 1, end)
        following = delimiters[index + 1][0] if index + 1 < len(delimiters) else None
        spans.append((child_start, _before_newline(buf, child_start, following or end)))
    else:
        if delimiters:
            defects.append("multipart without closing boundary")
    if delimiters and not spans:
        defects.append("multipart without body parts: read as plain text")
    return spans or None


def _before_newline(buf: bytes, floor: int, pos: int) -> int:
    """``pos`` moved before the line break that belongs to the next delimiter."""
    if pos > floor and buf[pos - 1] == 0x0A:
        pos -= 1
        if pos > floor and buf[pos - 1] == 0x0D:
            pos -= 1
    return pos


def _delimiters(buf: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int, bool]]:
    """Boundary lines as (line start, offset of its line break, is closing)."""
    if not boundary:
        return []
    needle = b"--" + boundary
    found: list[tuple[int, int, bool]] = []
    pos = buf.find(needle, start, end)
    while pos >= 0:
        if pos == start or buf[pos - 1] == 0x0A:
            after = pos + len(needle)
            closing = buf.startswith(b"--", after, end)
            stop = _line_break(buf, after + 2 if closing else after, end)
            if stop is not None:
                found.append((pos, stop, closing))
                if closing or len(found) > MAX_PARTS:
                    break  # past MAX_PARTS the rest stays in the last part
        pos = buf.find(needle, pos + 1, end)
    return found


def _line_break(buf: bytes, pos: int, end: int) -> int | None:
    """Offset of the line break after optional blanks, or None if other text follows."""
    while pos < end and buf[pos] in (0x20, 0x09, 0x0D):
        pos += 1
    return pos if pos >= end or buf[pos] == 0x0A else None


def _guess_boundary(buf: bytes, start: int, end: int) -> bytes | None:
    """A boundary for a multipart that lost its own: a ``--token`` line seen twice."""
    seen: set[bytes] = set()
    for match in _GUESS_BOUNDARY.finditer(buf, start, end):
        token = match.group(1)
        if _ALNUM.search(token) is None:
            continue  # "------" rulers are not boundaries
        if token in seen or match.group(2):
            return token
        seen.add(token)
        if len(seen) > 20:
            break
    return None
