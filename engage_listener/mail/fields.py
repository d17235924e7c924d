"""Reading single header fields (addresses, dates, ids) and making safe file names.

Each reader takes the unfolded field text and returns a best reading; stdlib
helpers are wrapped because they raise on the hostile input that mail brings.
"""

from __future__ import annotations

import datetime as dt
import functools
import mimetypes
import re
from email.utils import getaddresses, parseaddr, parsedate_to_datetime

from engage_listener.mail.text import decode_words

__all__ = [
    "clean_line",
    "extension_for",
    "message_id",
    "parse_addresses",
    "parse_date",
    "references",
    "sanitize_filename",
]

MAX_ADDRESS_FIELD = 100_000  # longer address fields are cut before parsing
MAX_REFERENCES = 200
MAX_FAST = 512  # longest field tried with the fast address patterns
MAX_NAME = 150  # characters in a file name, extension included
_ANGLE = re.compile(
    r'\s*(?:"([^"\\]*)"|([^<>",;:@()\\]*?))\s*<\s*([^<>\s@",;:]+@[^<>\s@",;]+)\s*>\s*'
)
_BARE = re.compile(r'\s*<?\s*([^<>\s@",;:()]+@[^<>\s@",;:()]+?)\s*>?\s*')
_USABLE = re.compile(r'(?:"[^"\r\n]*"|[^@\s<>",;:()\\]+)@[^@\s<>",;:()\\]+')
_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?]*\?=")
_TOKEN = re.compile("\x01(\\d+)\x01")
_ANY_ADDRESS = re.compile(r'[^\s<>"\',;:()\[\]\\@]+@[^\s<>"\',;:()\[\]\\@]*[^\s<>"\',;:()\[\].\\@]')
_MSGID = re.compile(r"<\s*([^<>\s]+)\s*>")
_LINE_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile("[\t\n]")
_NAME_DROP = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAME_BAD = re.compile(r'[<>:"|?*]')
_DOTS = re.compile(r"\.{2,}")
_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CLOCK$", "CONIN$", "CONOUT$"]
    + [f"{kind}{n}" for kind in ("COM", "LPT") for n in "0123456789¹²³"]
)
_DOUBLE_EXTENSIONS = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst")
_EXTENSIONS = {
    "text/plain": ".txt", "text/html": ".html", "text/calendar": ".ics", "text/csv": ".csv",
    "text/xml": ".xml", "text/rfc822-headers": ".txt", "text/enriched": ".txt",
    "image/jpeg": ".jpg", "image/pjpeg": ".jpg", "image/png": ".png", "image/gif": ".gif",
    "image/bmp": ".bmp", "image/webp": ".webp", "image/tiff": ".tif", "image/svg+xml": ".svg",
    "application/pdf": ".pdf", "application/zip": ".zip", "application/msword": ".doc",
    "application/vnd.ms-excel": ".xls", "application/vnd.ms-powerpoint": ".ppt",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
    "application/json": ".json", "application/xml": ".xml", "application/ms-tnef": ".dat",
    "application/vnd.ms-tnef": ".dat", "application/pgp-signature": ".asc",
    "application/pgp-encrypted": ".pgp", "application/pgp-keys": ".asc",
    "application/pkcs7-signature": ".p7s", "application/x-pkcs7-signature": ".p7s",
    "application/pkcs7-mime": ".p7m", "application/x-pkcs7-mime": ".p7m",
    "application/octet-stream": ".bin", "message/rfc822": ".eml", "message/global": ".eml",
    "message/delivery-status": ".txt", "message/disposition-notification": ".txt",
    "audio/mpeg": ".mp3", "audio/wav": ".wav", "video/mp4": ".mp4", "video/quicktime": ".mov",
}  # fmt: skip


def clean_line(text: str) -> str:
    """One-line text (subject, display name): no control characters, tabs as spaces."""
    return _LINE_CONTROLS.sub("", _LINE_BREAKS.sub(" ", text.replace("\r\n", " ")))


def parse_addresses(value: str, problems: list[str]) -> list[tuple[str, str]]:
    """(display name, address) pairs; the address is "" when it is unusable."""
    if len(value) > MAX_ADDRESS_FIELD:
        problems.append("address field too long: cut before parsing")
        value = value[:MAX_ADDRESS_FIELD]
    pairs = _fast_pairs(value)
    if pairs is None:
        pairs = _stdlib_pairs(value, problems)
    if not any(a for _, a in pairs) and "<" not in value and "@" in decode_words(value):
        found = _ANY_ADDRESS.findall(decode_words(value))
        if found:
            problems.append("address field is malformed; addresses found by pattern")
            pairs = [(name, "") for name, _ in pairs[:1]] + [("", a) for a in found]
            pairs = _merge_name(pairs)
    return [(clean_line(decode_words(name)).strip(), address) for name, address in pairs]


def _merge_name(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Give a lone display name to the first address found after it."""
    if len(pairs) >= 2 and pairs[0][0] and not pairs[0][1] and not pairs[1][0]:
        return [(pairs[0][0], pairs[1][1]), *pairs[2:]]
    return [pair for pair in pairs if pair[1]]


def _fast_pairs(value: str) -> list[tuple[str, str]] | None:
    """The two common shapes (``a@b``, ``Name <a@b>``) without the stdlib parser."""
    if len(value) > MAX_FAST:  # the patterns backtrack quadratically on long blank runs
        return None
    bare = _BARE.fullmatch(value)
    if bare is not None:
        return [("", bare.group(1))]
    angle = _ANGLE.fullmatch(value)
    if angle is not None:
        return [((angle.group(1) or angle.group(2) or "").strip(), angle.group(3))]
    return None


def _stdlib_pairs(value: str, problems: list[str]) -> list[tuple[str, str]]:
    """Anything else, through ``email.utils.getaddresses`` (guarded)."""
    words: list[str] = []

    def protect(match: re.Match[str]) -> str:  # encoded words may hide commas and quotes
        words.append(match.group(0))
        return f"\x01{len(words) - 1}\x01"

    def restore(text: str) -> str:
        return _TOKEN.sub(lambda m: words[int(m.group(1))], text) if words else text

    try:
        parsed = getaddresses([_WORD.sub(protect, value) if "=?" in value else value])
    except Exception as exc:  # the stdlib parser fails in odd ways on hostile input
        problems.append(f"address field could not be parsed ({type(exc).__name__})")
        return []
    pairs: list[tuple[str, str]] = []
    for raw_name, raw_address in parsed:
        name, address = restore(raw_name), restore(raw_address).strip()
        if address and _USABLE.fullmatch(address) is None:
            problems.append(f"unusable address {address[:80]!r}")
            name, address = name or address, ""
        if name or address:
            pairs.append((name, address))
    return pairs


def parse_date(value: str | None) -> dt.datetime | None:
    """An aware datetime (UTC when the zone is unknown), or None."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except Exception:  # ValueError, TypeError, OverflowError, IndexError seen in the wild
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def message_id(value: str | None) -> str | None:
    """The id inside the first ``<...>``, else the first word; None when empty."""
    if not value:
        return None
    found = _MSGID.search(value)
    if found is not None:
        return found.group(1)[:998]
    words = value.split()
    return words[0].strip("<>")[:998] or None if words else None


def references(value: str | None) -> tuple[str, ...]:
    """All ids of a References field (the newest ones when there are very many)."""
    if not value:
        return ()
    ids = _MSGID.findall(value) or [word.strip("<>") for word in value.split()]
    return tuple(i[:998] for i in ids[-MAX_REFERENCES:] if i)


def extension_for(content_type: str) -> str:
    """A file extension for a MIME type ("" when none is known)."""
    known = _EXTENSIONS.get(content_type)
    if known is not None:
        return known
    try:
        return mimetypes.guess_extension(content_type, strict=False) or ""
    except Exception:  # mimetypes reads system files; never let that break a mail
        return ""


def sanitize_filename(
    name: str, used: set[str], content_type: str = "", numbers: dict[str, int] | None = None
) -> str:
    """A file name safe on any file system and unique among ``used`` (which it joins).

    Path parts, traversal, control and bidi characters, characters Windows
    forbids, leading dots and reserved device names are removed; long names are
    cut keeping the extension; an empty result becomes "attachment" + extension.

    Decisions: a duplicate becomes ``name (2)``, ``name (3)``...; `numbers` (one dict
    per mail) remembers the last number given per name, so the next duplicate starts
    there instead of trying 2, 3... again: 1,000 attachments of one name cost 1,000
    tries, not 500,000 (a 660 kB mail took 21 s before).
    """
    parts = [p for p in re.split(r"[/\\]", _NAME_DROP.sub("", name)) if p.strip(" .")]
    clean = _DOTS.sub(".", _NAME_BAD.sub("_", "_".join(parts))).strip(" .")
    if not clean:
        clean = "attachment" + extension_for(content_type.lower())
    stem, ext = _split_extension(clean)
    if stem.split(".")[0].strip().upper() in _RESERVED:
        stem = "_" + stem
    candidate = base = _fit(stem, ext, "")
    if candidate in used:
        number = numbers.get(base, 1) if numbers is not None else 1
        while candidate in used:
            number += 1
            candidate = _fit(stem, ext, f" ({number})")
        if numbers is not None:
            numbers[base] = number
    used.add(candidate)
    return candidate


def _split_extension(name: str) -> tuple[str, str]:
    """("report", ".pdf"); a long or odd tail after the last dot is no extension."""
    lower = name.lower()
    for double in _DOUBLE_EXTENSIONS:
        if lower.endswith(double) and len(name) > len(double):
            return name[: -len(double)], name[-len(double) :]
    dot = name.rfind(".")
    if dot <= 0 or len(name) - dot > 16 or " " in name[dot:]:
        return name, ""
    return name[:dot], name[dot:]


def _fit(stem: str, ext: str, suffix: str) -> str:
    """stem + suffix + ext within MAX_NAME characters and 255 UTF-8 bytes."""
    room = MAX_NAME - len(ext) - len(suffix)
    stem = stem[: max(room, 1)]
    while len((stem + suffix + ext).encode("utf-8")) > 255 and len(stem) > 1:
        stem = stem[:-1]
    stem = stem if ext else stem.rstrip(" .")
    return (stem or "_") + suffix + ext


# an address with nothing for parseaddr to take apart: no name, no quotes, no comment
_BARE_ADDRESS = re.compile(r'[^\s<>()",;:\[\]\\@]+@[^\s<>()",;:\[\]\\@]+')
_LWS = " \t\r\n"  # the only white space parseaddr skips (a no-break space is text to it)
KEY_CACHED_LENGTH = 320  # longer addresses are keyed anew each time: a cache of mail's
# addresses must not hold 4,096 of 100 kB each


def bare_address(value: str) -> str:
    """``parseaddr(value)[1]``, the common shapes (``a@b``, ``<a@b>``) without running
    email's address parser (~0.1 ms a call: two a mail in the parse worker, more on the
    event loop)."""
    stripped = value.strip(_LWS)
    if stripped.startswith("<") and stripped.endswith(">"):
        inner = stripped[1:-1].strip(_LWS)
        if _BARE_ADDRESS.fullmatch(inner):
            return inner
    elif _BARE_ADDRESS.fullmatch(stripped):
        return stripped
    return parseaddr(value)[1]


def recipient_key(address: str) -> str:
    """Comparable form: lower-case, without ``+tag`` sub-addressing (``a+1@x`` and
    ``A+2@x`` are one mailbox, for loop protection and the per-recipient limit).

    Decisions: cached (up to KEY_CACHED_LENGTH characters), and `bare_address`: every
    mail's routing view compares its recipients with the listener's own addresses
    (`rules.delivered_to`), and email's address parser cost ~0.1 ms a call there, 4% of
    the event loop's time a mail."""
    if len(address) > KEY_CACHED_LENGTH:
        return _recipient_key(address)
    return _cached_recipient_key(address)


def _recipient_key(address: str) -> str:
    bare = bare_address(address).strip().lower() or address.strip().lower()
    local, at, domain = bare.rpartition("@")
    if not at:
        return bare
    return f"{local.split('+', 1)[0]}@{domain}"


_cached_recipient_key = functools.lru_cache(maxsize=4096)(_recipient_key)
