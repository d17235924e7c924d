"""Text-level MIME decoding: charsets, RFC 2047 words, RFC 2231 parameters, HTML.

Mail in the wild lies about its charset, mixes encodings, and breaks every
encoding rule, so every function here is total: it returns its best reading
and, where useful, a note of what was wrong, but never raises. All of it is
regexes and C-level codecs, because the ingest speed budget leaves no room for
``email.policy.default``'s header registry.
"""

from __future__ import annotations

import binascii
import codecs
import html
import re
from functools import lru_cache

__all__ = [
    "decode_base64",
    "decode_bytes",
    "decode_transfer",
    "decode_words",
    "html_to_text",
    "parse_params",
    "sniff_html_charset",
]

# Declared charsets that are routinely wrong, mapped to the supersets that
# mailers really use (WHATWG encoding spec practice).
_SUPERSETS = {
    "iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "l1": "cp1252",
    "iso_8859-1": "cp1252", "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030",
    "gb_2312-80": "gb18030", "cn-gb": "gb18030", "euc-cn": "gb18030", "big5": "big5hkscs",
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932",
    "ks_c_5601-1987": "cp949", "euc-kr": "cp949", "iso-8859-8-i": "iso-8859-8",
    "windows-874": "cp874", "tis-620": "cp874", "iso-2022-jp": "iso2022_jp_ext",
    "csiso2022jp": "iso2022_jp_ext", "utf8": "utf-8", "unicode-1-1-utf-7": "utf-7",
    "x-unknown": "", "unknown": "", "unknown-8bit": "", "x-user-defined": "",
    "default": "", "charset": "", "ansi_x3.4-1968": "ascii",
}  # fmt: skip
# What a declared charset often really is when it fails to decode.
_ALTERNATES = {
    "iso2022_jp_ext": ("cp932", "euc_jp"), "cp932": ("euc_jp",), "euc_jp": ("cp932",),
    "iso2022_jp": ("iso2022_jp_ext", "cp932", "euc_jp"),
}  # fmt: skip
# Codecs for which pure-ASCII bytes do not mean the same text (escapes, EBCDIC, UTF-16...).
_ASCII_UNSAFE = ("iso2022", "utf-7", "utf-16", "utf-32", "hz", "cp037", "cp273", "cp424",
                 "cp500", "cp875", "cp1026", "cp1140")  # fmt: skip
_NOT_CHARSETS = frozenset(
    {
        "unicode-escape",
        "raw-unicode-escape",
        "undefined",
        "idna",
        "punycode",
        "unicode_escape",
        "raw_unicode_escape",
    }
)
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_SPACE_ONLY = re.compile(r"[ \t\r\n]*")
_PARAM = re.compile(r'[\s;]*([^\s=;"]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"?|([^;]*))', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_SECTION = re.compile(r"^(.*?)\*(\d{1,3})(\*?)$")
_B64_VALID = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\r\n"
_B64_KEEP = re.compile(rb"[^A-Za-z0-9+/]")
_META_CHARSET = re.compile(rb"<meta[^>]{0,200}?charset\s*=\s*[\"']?\s*([-\w.:]{1,40})", re.I)
_UU_LINE_END = re.compile(rb"\s+$")


@lru_cache(maxsize=256)
def _codec(charset: str) -> str | None:
    """The Python codec for a declared charset, or None when unknown/useless."""
    name = charset.strip().strip("\"'").lower().split("*", 1)[0]
    name = _SUPERSETS.get(name, name)
    if not name:
        return None
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if info.name in _NOT_CHARSETS or not getattr(info, "_is_text_encoding", True):
        return None  # Python codecs that are no mail charset (escapes, zlib, rot13 ...)
    return info.name


def decode_bytes(
    data: bytes, charset: str | None = None, hints: tuple[str, ...] = ()
) -> tuple[str, bool]:
    """Bytes to text: declared charset (and its usual impostors), then UTF-8, then the
    ``hints`` (other charsets the mail declares), then windows-1252, then latin-1.

    The flag is True when a declared charset was unknown or did not fit the bytes.
    """
    codec = _codec(charset) if charset else None
    wrong = codec is None and bool(charset) and not _is_placeholder(charset or "")
    if codec is None and b"\x1b$" in data and data.isascii():
        codec = "iso2022_jp_ext"  # undeclared ISO-2022-JP: escape sequences give it away
    candidates = [codec, *_ALTERNATES.get(codec or "", ())] if codec else []
    if codec is not None and data.isascii() and not codec.startswith(_ASCII_UNSAFE):
        return data.decode("ascii"), False
    hinted = [
        alt for hint in map(_codec, hints) if hint for alt in (hint, *_ALTERNATES.get(hint, ()))
    ]
    for index, name in enumerate([*candidates, "utf-8", *hinted, "cp1252"]):
        if name is None:
            continue
        try:
            return data.decode(name), wrong or (codec is not None and index > 0)
        except UnicodeDecodeError as exc:
            if name == "utf-8" and _cut_utf8(data, exc.start):
                return data.decode("utf-8", "replace"), True
        except (LookupError, ValueError):
            continue
    return data.decode("latin-1"), True


def _cut_utf8(data: bytes, error_at: int) -> bool:
    """UTF-8 whose only flaw is a sequence cut off at the end (a truncated word/part)."""
    return (
        error_at >= len(data) - 3
        and 0xC2 <= data[error_at] <= 0xF4
        and not data[:error_at].isascii()
    )


def _is_placeholder(charset: str) -> bool:
    """Labels like ``unknown-8bit`` that honestly say "no idea" (not a defect)."""
    return _SUPERSETS.get(charset.strip().strip("\"'").lower()) == ""


def decode_words(text: str, problems: list[str] | None = None) -> str:
    """Decode RFC 2047 encoded words, joining adjacent words (even split characters)."""
    if "=?" not in text:
        return text
    out: list[str] = []
    pending: list[tuple[str, list[bytes]]] = []  # adjacent encoded words, not decoded yet
    pos = 0
    for match in _ENCODED_WORD.finditer(text):
        gap = text[pos : match.start()]
        if not pending or _SPACE_ONLY.fullmatch(gap) is None:
            _flush(pending, out, problems)
            out.append(gap)
        charset, kind, payload = match.groups()
        raw = payload.encode("utf-8", "replace")
        data = decode_base64(raw)[0] if kind in "bB" else binascii.a2b_qp(raw, header=True)
        if pending and pending[-1][0] == charset.lower():
            pending[-1][1].append(data)
        else:
            pending.append((charset.lower(), [data]))
        pos = match.end()
    _flush(pending, out, problems)
    out.append(text[pos:])
    return "".join(out)


def _flush(
    pending: list[tuple[str, list[bytes]]], out: list[str], problems: list[str] | None
) -> None:
    """Decode the collected run of encoded words into ``out``."""
    for charset, chunks in pending:
        decoded, bad = decode_bytes(b"".join(chunks), charset)
        if bad and problems is not None:
            problems.append(f"encoded word in unknown or wrong charset {charset!r}")
        out.append(decoded)
    pending.clear()


def parse_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type/sub; a=b; c*=utf-8''x`` into its main value and parameters.

    Tolerates missing semicolons and unterminated quotes, joins RFC 2231
    continuations and decodes RFC 2231 and (non-standard) RFC 2047 values.
    """
    main, _, rest = value.partition(";")
    simple: dict[str, str] = {}
    sections: dict[str, dict[int, tuple[str, bool]]] = {}
    pos = 0
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if match is None:
            nxt = rest.find(";", pos + 1)
            if nxt < 0:
                break
            pos = nxt
            continue
        pos = max(match.end(), pos + 1)
        name = match.group(1).lower()
        quoted, bare = match.group(2), match.group(3)
        val = _QUOTED_PAIR.sub(r"\1", quoted) if quoted is not None else (bare or "").strip()
        _store_param(name, val, simple, sections)
    for name, parts in sections.items():
        simple[name] = _join_sections(parts)
    for name, val in simple.items():
        if "=?" in val:
            simple[name] = decode_words(val)
    return main.strip().lower(), simple


def _store_param(
    name: str,
    val: str,
    simple: dict[str, str],
    sections: dict[str, dict[int, tuple[str, bool]]],
) -> None:
    """Record one parameter; RFC 2231 forms go to ``sections`` to be joined later."""
    section = _SECTION.match(name)
    if section is not None:
        base, number, extended = section.group(1), int(section.group(2)), bool(section.group(3))
        sections.setdefault(base, {}).setdefault(number, (val, extended))
    elif name.endswith("*"):
        sections.setdefault(name[:-1], {}).setdefault(0, (val, True))
    else:
        simple.setdefault(name, val)


def _join_sections(parts: dict[int, tuple[str, bool]]) -> str:
    """Join RFC 2231 sections; percent-decode extended ones in the declared charset."""
    charset = ""
    chunks: list[bytes] = []
    first = min(parts)
    for index in sorted(parts):
        val, extended = parts[index]
        if extended:
            if index == first and val.count("'") >= 2:
                charset, _, val = val.split("'", 2)
            chunks.append(_percent_decode(val))
        else:
            chunks.append(val.encode("utf-8"))
    return decode_bytes(b"".join(chunks), charset or "utf-8")[0]


def _percent_decode(text: str) -> bytes:
    """``%E4bc`` to bytes, leaving malformed escapes as they are."""
    raw = text.encode("utf-8", "replace")
    if b"%" not in raw:
        return raw
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x25 and _is_hex(raw[i + 1 : i + 3]):
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


def decode_base64(data: bytes) -> tuple[bytes, bool]:
    """Lenient base64: skip junk, repair padding. The flag is True when input was bad."""
    bad = bool(data.translate(None, _B64_VALID))  # C speed, unlike a regex scan
    try:
        return binascii.a2b_base64(data), bad
    except (binascii.Error, ValueError):
        clean = _B64_KEEP.sub(b"", data)
        clean = clean[: len(clean) - len(clean) % 4] if len(clean) % 4 == 1 else clean
        clean += b"=" * (-len(clean) % 4)
        try:
            return binascii.a2b_base64(clean), True
        except (binascii.Error, ValueError):
            return b"", True


def decode_transfer(data: bytes, encoding: str) -> tuple[bytes, str | None]:
    """Undo a Content-Transfer-Encoding; returns the bytes and a defect note or None."""
    encoding = encoding.strip().lower()
    if encoding == "base64":
        payload, bad = decode_base64(data)
        return payload, "invalid base64 (decoded leniently)" if bad else None
    if encoding == "quoted-printable":
        return binascii.a2b_qp(data), None
    if encoding in ("x-uuencode", "uuencode", "x-uue", "uue"):
        return decode_uu(data), None
    if encoding in ("", "7bit", "8bit", "binary", "7-bit", "8-bit"):
        return data, None
    return data, f"unknown Content-Transfer-Encoding {encoding[:40]!r} (kept as is)"


def decode_uu(data: bytes) -> bytes:
    """uuencode body (with or without begin/end lines), line by line, leniently."""
    out: list[bytes] = []
    for line in data.splitlines():
        if line.startswith((b"begin ", b"end")) or not line.strip():
            continue
        try:
            out.append(binascii.a2b_uu(_UU_LINE_END.sub(b"", line)))
        except (binascii.Error, ValueError):
            count = ((line[0] - 32) & 63) * 4 // 3 if line else 0
            try:
                out.append(binascii.a2b_uu(line[: count + 1]))
            except (binascii.Error, ValueError):
                continue
    return b"".join(out)


def sniff_html_charset(data: bytes) -> str | None:
    """The charset an HTML part declares in its own <meta> tag, if any."""
    match = _META_CHARSET.search(data, 0, 4096)
    return match.group(1).decode("ascii", "replace") if match else None


_BLOCK = re.compile(
    r"<\s*/?\s*(?:br|p|div|tr|li|h[1-6]|table|blockquote|pre|hr|ul|ol|dd|dt|section|article"
    r"|header|footer|address|center)\b[^<>]*>",
    re.I,
)
_CELL = re.compile(r"<\s*/\s*t[dh]\s*>", re.I)
_TAG = re.compile(r"<[^<>]*>")  # [^<>]: a stray "<" must not make this quadratic
_LINE_SPACE = re.compile(r"[ \t\f\v\u00a0]+")
_BLANK_RUN = re.compile(r"\n{3,}")


def html_to_text(markup: str) -> str:
    """Readable plain text from HTML: no scripts/styles/comments, block tags as lines."""
    markup = _drop_between(markup, _COMMENT_OPEN, _COMMENT_CLOSE, drop_rest=True)
    for tag in ("script", "style"):
        markup = _drop_between(markup, *_tag_pair(tag), drop_rest=True)
    for tag in ("head", "title"):  # an unclosed <head> is common; keep its text then
        markup = _drop_between(markup, *_tag_pair(tag), drop_rest=False)
    markup = _CELL.sub(" ", _BLOCK.sub("\n", markup.replace("\r\n", "\n").replace("\n", " ")))
    text = html.unescape(_TAG.sub("", markup))
    lines = (_LINE_SPACE.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_RUN.sub("\n\n", "\n".join(lines)).strip()


_COMMENT_OPEN = re.compile(r"<!--")
_COMMENT_CLOSE = re.compile(r"-->")


@lru_cache(maxsize=8)
def _tag_pair(tag: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    return re.compile(rf"<{tag}\b", re.I), re.compile(rf"</\s*{tag}\s*>", re.I)


def _drop_between(
    text: str, opener: re.Pattern[str], closer: re.Pattern[str], *, drop_rest: bool
) -> str:
    """Remove every ``opener ... closer`` span in linear time."""
    begin = opener.search(text)
    if begin is None:
        return text
    out: list[str] = []
    pos = 0
    while begin is not None:
        out.append(text[pos : begin.start()])
        close = closer.search(text, begin.end())
        if close is None:
            pos = len(text) if drop_rest else begin.start()
            break
        pos = close.end()
        begin = opener.search(text, pos)
    out.append(text[pos:])
    return "".join(out)
