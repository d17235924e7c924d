"""Parse every mail of the shared third-party corpus; compare with Zammad's expectations.

The corpus lives outside the repository (``../shared/corpus``; its files keep
their own licenses and must not be copied here). Every mail must parse without
an exception. For Zammad's mails the ``.yml`` files give the expected sender
address, subject and attachment file names, which are compared exactly; the
cases where Zammad's expectation is Zammad-specific are listed one by one in
``KNOWN_DIFFERENCES`` with the reason.

The ``.yml`` files are Ruby-tagged YAML; PyYAML is not a dependency, so the few
fields needed are read by ``read_expectation`` (a small reader for YAML scalars).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from engage_listener.mail import parser
from tests.support.paths import CORPUS

MAIL_SUFFIXES = {".box", ".eml", ".txt", ".elm"}

# Zammad copies the HTML body (and other "original format" parts) into
# attachments named message.html; those are its body storage, not attachments
# of the mail, so expected attachments carrying these preferences are skipped.
ZAMMAD_BODY_COPIES = ("content-alternative: true", "original-format: true")

# (file, field) -> why our result differs from Zammad's on purpose. Each entry is
# checked both ways: the difference must exist (no stale entries) and no other may.
_UNNAMED = (
    "unnamed part: Zammad invents a name from the type (image.gif, file, document.html, "
    "delivery-status.txt, video.mov); we use Content-Description, an Outlook-style "
    "Content-ID, else part-N.ext"
)
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {
    ("mail008", "attachments"): _UNNAMED,
    ("mail018", "attachments"): _UNNAMED,
    ("mail042", "attachments"): _UNNAMED,
    ("mail053", "attachments"): _UNNAMED,
    ("mail062", "attachments"): _UNNAMED,
    ("mail078", "attachments"): _UNNAMED,
    ("mail080", "attachments"): _UNNAMED,
    ("mail100", "attachments"): _UNNAMED + " (Zammad also uses a bare Content-ID)",
    ("mail014", "attachments"): "':' is replaced in file names (forbidden on Windows, an NTFS "
    "alternate-stream separator)",
    ("mail018", "subject"): "we decode the UTF-7 encoded word (+ANw- is Ü) and turn folding "
    "tabs into spaces; Zammad leaves both",
    ("mail027", "subject"): "the encoded word contains CR LF; we remove control characters "
    "(a space stays), Zammad keeps them",
    ("mail035", "from"): "From is a bare quoted address; we drop the quotes, Zammad keeps them",
    ("mail053", "from"): "From is 'MAILER-DAEMON' without a domain: unusable for matching a "
    "customer, and the mail has no other sender field",
    ("mail064", "attachments"): "Zammad's expectation is mojibake of the decomposed UTF-8 name; "
    "ours is the correctly decoded name",
    ("mail071", "from"): "the address contains spaces (<power quadrant system@example.com>): "
    "invalid, so unusable rather than a guess at another customer's address",
    ("mail073", "attachments"): "RFC 2231 name declared us-ascii but holding %F6: we fall back "
    "to windows-1252 (ö), Zammad writes U+FFFD",
    ("mail076", "from"): "broken From '\"...\"@example.com>': we drop the stray '>'",
    ("mail085", "attachments"): "Apple Mail splits the HTML body into two text/html parts; we "
    "keep both as body, Zammad makes the second an attachment",
    ("mail087", "from"): "From 'Test test@example.com' (no angle brackets): we extract the "
    "address, Zammad keeps the whole text as the address",
    ("mail087", "attachments"): "an unnamed text part without Content-Type is body text "
    "(RFC 2045 default text/plain), Zammad calls it 'file'",
    ("mail102", "attachments"): "duplicate names: we add ' (2)', Zammad inserts a digit",
    ("mail117", "from"): "RFC 2047 encoded words are not allowed in an address: kept as given "
    "(decoding them is an address-spoofing vector)",
    ("mail118", "from"): "RFC 2047 encoded words are not allowed in an address: kept as given "
    "(decoding them is an address-spoofing vector)",
}


def _mails() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix in MAIL_SUFFIXES)


def _require_corpus() -> None:
    if not CORPUS.is_dir():
        pytest.skip(
            f"mail corpus not found at {CORPUS} (expected ../shared/corpus next to the "
            "repository); the corpus is third-party data and is not kept in the repo"
        )


# ----- a small reader for the YAML scalars we need ------------------------------------
_ESCAPES = {
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "t": "\t",
    "\t": "\t",
    "n": "\n",
    "v": "\v",
    "f": "\f",
    "r": "\r",
    "e": "\x1b",
    " ": " ",
    '"': '"',
    "/": "/",
    "\\": "\\",
    "N": "\x85",
    "_": "\xa0",
    "L": "\u2028",
    "P": "\u2029",
}
_HEX_ESCAPE = {"x": 2, "u": 4, "U": 8}


def _fold(lines: list[str]) -> str:
    """YAML flow folding: a single line break is a space, n empty lines are n-1 breaks."""
    out = lines[0].rstrip(" \t") if len(lines) > 1 else lines[0]
    blank = 0
    for index, line in enumerate(lines[1:], start=1):
        last = index == len(lines) - 1
        text = line.strip(" \t") if not last else line.lstrip(" \t")
        if not text and not last:
            blank += 1
            continue
        out += "\n" * blank if blank else " "
        out += text
        blank = 0
    return out


def _unescape_double(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\" or i + 1 >= len(text):
            out.append(char)
            i += 1
            continue
        code = text[i + 1]
        if code in _HEX_ESCAPE:
            width = _HEX_ESCAPE[code]
            out.append(chr(int(text[i + 2 : i + 2 + width], 16)))
            i += 2 + width
        else:
            out.append(_ESCAPES.get(code, code))
            i += 2
    return "".join(out)


def _double_quoted(text: str) -> str:
    """Body of a double-quoted scalar (without the quotes): escapes and folding."""
    lines = text.split("\n")
    joined: list[str] = []
    carry = ""
    for line in lines:
        if line.rstrip(" \t").endswith("\\") and not line.rstrip(" \t").endswith("\\\\"):
            carry += line.rstrip(" \t")[:-1] if not carry else line.strip(" \t")[:-1]
            continue  # escaped line break: join without a space
        joined.append(carry + (line if not carry else line.lstrip(" \t")))
        carry = ""
    if carry:
        joined.append(carry)
    return _unescape_double(_fold(joined))


def _quoted_end(text: str, quote: str) -> int:
    """Index of the closing quote in ``text`` (which starts after the opening one)."""
    i = 0
    while i < len(text):
        if text[i] == "\\" and quote == '"':
            i += 2
            continue
        if text[i] == quote:
            if quote == "'" and text[i + 1 : i + 2] == "'":
                i += 2
                continue
            return i
        i += 1
    raise ValueError("unterminated quoted scalar")


def _scalar(lines: list[str], index: int, start: str, indent: int) -> str:
    """The scalar value that begins with ``start`` on line ``index``."""
    rest = [start, *lines[index + 1 :]]
    text = "\n".join(rest)
    if start[:1] in ("'", '"'):
        quote = start[0]
        body = text[1 : 1 + _quoted_end(text[1:], quote)]
        return _fold(body.split("\n")).replace("''", "'") if quote == "'" else _double_quoted(body)
    if start.startswith(("|", ">")):
        block = []
        for line in lines[index + 1 :]:
            if line.strip() and len(line) - len(line.lstrip(" ")) <= indent:
                break
            block.append(line)
        width = min((len(x) - len(x.lstrip(" ")) for x in block if x.strip()), default=0)
        body = "\n".join(x[width:] for x in block).rstrip("\n")
        return body if start.startswith("|") else _fold(body.split("\n"))
    plain = [start]
    for line in lines[index + 1 :]:
        if not line.strip() or len(line) - len(line.lstrip(" ")) <= indent:
            break
        plain.append(line)
    return _fold(plain).strip()


@dataclass(frozen=True)
class Expectation:
    from_email: str
    subject: str
    attachments: tuple[str, ...]


def read_expectation(path: Path) -> Expectation:
    """from_email, subject and real attachment file names of one Zammad .yml."""
    lines = path.read_text(encoding="utf-8").split("\n")
    top: dict[str, str] = {}
    for index, line in enumerate(lines):
        match = re.match(r"^(from_email|subject): ?(.*)$", line)
        if match:
            top[match.group(1)] = _scalar(lines, index, match.group(2), 0)
    names: list[str] = []
    for item in _attachment_items(lines):
        text = "\n".join(item)
        if any(mark in text for mark in ZAMMAD_BODY_COPIES):
            continue
        for index, line in enumerate(item):
            match = re.match(r"^  filename: ?(.*)$", line)
            if match:
                names.append(_scalar(item, index, match.group(1), 2))
    return Expectation(top.get("from_email", ""), top.get("subject", ""), tuple(names))


def _attachment_items(lines: list[str]) -> list[list[str]]:
    """The lines of each item of the top-level ``attachments:`` list."""
    items: list[list[str]] = []
    in_list = False
    for line in lines:
        if line.startswith("attachments:"):
            in_list = True
        elif in_list and line.startswith("- "):
            items.append([line])
        elif in_list and line[:1].isalpha():
            in_list = False  # the next top-level key
        elif in_list and items:
            items[-1].append(line)
    return items


# ----- tests --------------------------------------------------------------------------
@pytest.mark.parametrize("path", _mails(), ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_mail_parses(path: Path) -> None:
    raw = path.read_bytes()
    mail = parser.parse(raw)
    assert mail.parsed, mail.defects
    assert not any(d.startswith("parser failed") for d in mail.defects), mail.defects
    assert isinstance(mail.text, str)
    for attachment in mail.attachments:
        assert attachment.size == len(attachment.payload)
        assert "/" not in attachment.filename and "\\" not in attachment.filename
    assert len({a.filename for a in mail.attachments}) == len(mail.attachments)

    stripped = parser.strip_attachments(raw)
    both = parser.parse(raw, strip=True)  # one walk for both, as the engine does
    assert both.stripped == stripped
    assert dataclasses.replace(both, stripped=None) == mail
    again = parser.parse(stripped)
    assert again.message_id == mail.message_id
    assert (again.sender and again.sender.address) == (mail.sender and mail.sender.address)
    if re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0].isascii():  # else read with hints
        assert (again.subject, again.sender) == (mail.subject, mail.sender)  # from the parts
    kept = {a.payload for a in again.attachments}
    assert all(a.payload in kept for a in mail.attachments if a.inline)
    if not any("multipart with Content-Transfer-Encoding" in d for d in mail.defects):
        for attachment in mail.attachments:
            if not attachment.inline:
                note = f"[attachment removed: {attachment.filename} ".encode()
                assert note in stripped


def test_corpus_is_complete() -> None:
    _require_corpus()
    assert len(_mails()) >= 180


def _zammad_cases() -> list[Path]:
    zammad = CORPUS / "zammad"
    return sorted(zammad.glob("*.yml")) if zammad.is_dir() else []


def compare(yml: Path) -> dict[str, tuple[object, object]]:
    """Fields where our parse differs from Zammad's expectation: field -> (ours, theirs)."""
    expected = read_expectation(yml)
    mail = parser.parse(yml.with_suffix(".box").read_bytes())
    ours = {
        "from": mail.sender.address if mail.sender else "",
        "subject": mail.subject,
        "attachments": tuple(a.filename for a in mail.attachments),
    }
    theirs = {
        "from": expected.from_email,
        "subject": expected.subject,
        "attachments": expected.attachments,
    }
    return {key: (ours[key], theirs[key]) for key in ours if ours[key] != theirs[key]}


@pytest.mark.parametrize("yml", _zammad_cases(), ids=lambda p: p.stem)
def test_zammad_expectations(yml: Path) -> None:
    differences = compare(yml)
    unexplained = {k: v for k, v in differences.items() if (yml.stem, k) not in KNOWN_DIFFERENCES}
    assert not unexplained
    stale = [k for (stem, k) in KNOWN_DIFFERENCES if stem == yml.stem and k not in differences]
    assert not stale, f"listed as known differences but now equal: {stale}"


def test_zammad_match_counts() -> None:
    """Summary: how many expectations match (printed with ``pytest -s``)."""
    cases = _zammad_cases()
    if not cases:
        _require_corpus()
        pytest.skip("no Zammad expectations in the corpus")
    total = 3 * len(cases)
    mismatched = sum(len(compare(yml)) for yml in cases)
    print(
        f"\nZammad expectations matched: {total - mismatched}/{total} "
        f"({len(KNOWN_DIFFERENCES)} listed known differences)"
    )
    assert mismatched == len(KNOWN_DIFFERENCES)
