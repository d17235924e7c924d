"""IMAP text handling that needs no connection: quoting, UID sets, responses, endpoints.

Split from `imap` (the aioimaplib adapter) so that module stays small; nothing here
imports aioimaplib.
"""

from __future__ import annotations

import datetime as dt
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from engage_listener.sources.endpoint import MailEndpoint
from engage_listener.sources.imap import utf7 as imap_utf7

UIDVALIDITY_RE = re.compile(rb"\[UIDVALIDITY (\d+)\]")
EXISTS_RE = re.compile(rb"^(\d+) EXISTS")
EXPUNGE_RE = re.compile(rb"^(\d+) EXPUNGE")
FETCH_HEAD_RE = re.compile(rb"^\d+ FETCH \(")
UID_RE = re.compile(rb"UID (\d+)")
SIZE_RE = re.compile(rb"RFC822\.SIZE (\d+)")
INTERNALDATE_RE = re.compile(rb'INTERNALDATE "([^"]+)"')
LIST_DELIM_RE = re.compile(rb'\) (?:"\\?(.)"|NIL) ')
MAX_SET_LENGTH = 4000  # characters of one UID set, well under server line limits


@dataclass(frozen=True)
class ImapLimits:
    """Bounds on what a server may send; tests shrink them to stay fast.

    Decisions: a line that is not a literal holds at most `max_line` bytes (SEARCH,
    whose one line lists every UID, gets the whole response budget); a literal larger
    than MaxMessageSize + `literal_allowance` is refused the moment it is announced
    (RFC822.SIZE is only an estimate on some servers, hence the slack); one command's
    response is at most `max_response` bytes unless a FETCH expects more; every command
    has an overall deadline, a FETCH's being `fetch_allowance` plus its expected or
    announced size at `floor_rate` bytes a second, so a server trickling a byte now and
    then (which keeps the inactivity timer happy) is still cut off.
    """

    max_line: int = 1024 * 1024
    max_response: int = 64 * 1024 * 1024
    literal_allowance: int = 16 * 1024 * 1024
    floor_rate: float = 64 * 1024.0
    fetch_allowance: float = 30.0
    header_cap: int = 256 * 1024  # BODY.PEEK[HEADER]<0.n> of an oversize mail


@dataclass(frozen=True)
class ImapEndpoint(MailEndpoint):
    """An IMAP server (see `MailEndpoint`), with the bounds on what it may send."""

    limits: ImapLimits = ImapLimits()

    @property
    def max_literal(self) -> int:
        """The largest literal accepted from the server."""
        return self.max_message_size + self.limits.literal_allowance


@dataclass
class FolderState:
    """What SELECT told us about the input folder."""

    name: str
    uidvalidity: int
    exists: int


def quote(text: str) -> str:
    """An IMAP quoted string (RFC 3501 section 9): backslash and double quote escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_mailbox(name: str) -> str:
    """Mailbox name as an IMAP quoted string in modified UTF-7."""
    return quote(imap_utf7.encode(name))


def uid_sets(uids: Iterable[int]) -> list[str]:
    """Compress UIDs into IMAP sets ("1:4,7"), split so no command line gets too long."""
    return [uid_set for uid_set, _ in uid_chunks(uids)]


def uid_chunks(uids: Iterable[int]) -> list[tuple[str, list[int]]]:
    """`uid_sets`, each with the UIDs it stands for (ascending, no duplicates)."""
    ordered = sorted(set(uids))
    chunks: list[tuple[str, list[int]]] = []
    items: list[str] = []
    members: list[int] = []
    length, start = 0, 0
    for end in range(1, len(ordered) + 1):
        if end < len(ordered) and ordered[end] == ordered[end - 1] + 1:
            continue  # the run from `start` goes on
        low, high = ordered[start], ordered[end - 1]
        item = str(low) if low == high else f"{low}:{high}"
        if items and length + len(item) + 1 > MAX_SET_LENGTH:
            chunks.append((",".join(items), members))
            items, members, length = [], [], 0
        items.append(item)
        members.extend(ordered[start:end])
        length += len(item) + 1
        start = end
    if items:
        chunks.append((",".join(items), members))
    return chunks


def track_exists(exists: int, lines: Iterable[bytes]) -> int:
    """The folder's message count after the untagged EXISTS/EXPUNGE lines, in order."""
    for line in lines:
        if m := EXISTS_RE.match(line):
            exists = int(m.group(1))
        elif EXPUNGE_RE.match(line):
            exists = max(0, exists - 1)
    return exists


def parse_bodies(lines: Sequence[Any]) -> list[tuple[int, bytes]]:
    """Pair each FETCH line with its literal; the UID may stand before or after the literal.

    The literals in `lines` are emptied as they are taken."""
    result: list[tuple[int, bytes]] = []
    uid: int | None = None
    body: bytes | None = None
    look_for_uid = False
    for item in lines:
        if isinstance(item, bytearray):
            body, look_for_uid = bytes(item), uid is None
            item.clear()  # the response is not read again: hold each mail once, not twice
            continue
        if FETCH_HEAD_RE.match(item):
            if uid is not None and body is not None:
                result.append((uid, body))
            uid, body, look_for_uid = None, None, True
        if look_for_uid and (m := UID_RE.search(item)):
            uid, look_for_uid = int(m.group(1)), False
    if uid is not None and body is not None:
        result.append((uid, body))
    return result


def keepalive(sock: socket.socket | None) -> None:
    """TCP keepalive so a silently dead peer is noticed within minutes, even in IDLE."""
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def internal_date(line: bytes) -> dt.datetime | None:
    """The INTERNALDATE in a FETCH line ("22-Nov-2026 07:51:00 +0000"), aware; None if absent."""
    match = INTERNALDATE_RE.search(line)
    if not match:
        return None
    try:
        return dt.datetime.strptime(match.group(1).decode().strip(), "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        return None


def imap_date(day: dt.date) -> str:
    """A date as IMAP SEARCH wants it (SINCE 1-Feb-2026)."""
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    return f"{day.day}-{months[day.month - 1]}-{day.year}"
