"""Bounded reads from a POP3 server: every answer has a size cap, a line cap and a deadline.

poplib reads a multi-line answer for as long as the server sends it, with only the
socket timeout between two bytes; a hostile (or broken) server could send an endless
RETR body, an endless line, or trickle one byte just inside the timeout for ever.
This reader is the only way `Pop3Conn`, poplib.POP3 with implicit TLS, a protocol
log and raw multi-line reads, takes bytes from its socket.

Decisions:

* Deadline per command, on top of the socket timeout: a fixed allowance plus the
  answer's size at a floor rate (`ReadLimits.floor_rate`, 64 KB/s): the size is the
  larger of what the server listed (RETR, TOP) and what has arrived so far, so a big
  UIDL listing at a decent rate passes and a trickle does not. Each recv gets at most
  the time left, so a slow server cannot stretch one read past the deadline.
* Caps: status and listing lines STATUS_LINE_MAX, message lines `line_max`, a body
  `max_bytes` (the caller's: MaxMessageSize plus an allowance), a listing
  `listing_max`. Breaking one raises :class:`ReadLimitExceeded`, a TransientError: the
  session is out of step and is aborted, the listener backs off.
* A body is gathered in one bytearray with a sentinel newline in front and scanned
  chunk by chunk for the terminating "." line; dot-stuffing is undone once at the end
  (only when present), so the peak is about twice the mail, like the line reader it
  replaces, and the per-line Python work is gone.
"""

from __future__ import annotations

import math
import poplib
import socket
import ssl
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engage_listener.errors import ConnectionLostError

if TYPE_CHECKING:
    from engage_listener.observe.protolog import ProtocolLog
    from engage_listener.sources.pop3.session import Pop3Endpoint

STATUS_LINE_MAX = 8192  # status and listing lines
RECV_CHUNK = 64 * 1024
EOF = "-ERR EOF"  # how poplib reports a connection closed by the server
_TERMINATORS = (b"\n.\r\n", b"\n.\n")


class ReadLimitExceeded(ConnectionLostError):
    """The server broke a read limit (size, line length, deadline): the session is aborted."""


class ServerClosed(Exception):
    """The server closed the connection; `pop3` turns it into poplib's EOF answer."""


@dataclass(frozen=True)
class ReadLimits:
    """The read caps of a POP3 session; tests shrink them, the defaults suit real servers."""

    line_max: int = 8 * 1024 * 1024  # one line of a mail (RFC 5322 says 998)
    size_allowance: int = 1024 * 1024  # RETR may exceed MaxMessageSize by this much
    header_max: int = 8 * 1024 * 1024  # TOP n 0: the header of one mail
    listing_max: int = 64 * 1024 * 1024  # UIDL/LIST answers (about two million mails)
    floor_rate: float = 64 * 1024  # bytes per second a server must at least keep up
    allowance: float = 60.0  # seconds every command gets on top of its size's share


class BoundedReader:
    """Buffered reads from one socket (a new reader after STLS drops what was buffered)."""

    def __init__(self, sock: socket.socket, timeout: float, limits: ReadLimits) -> None:
        self.sock = sock
        self.timeout = timeout
        self.limits = limits
        self.buf = bytearray()
        self.what = "the greeting"
        self._started = time.monotonic()
        self._expected = 0
        self._received = 0

    def start(self, what: str, expected: int = 0) -> None:
        """A new command: its deadline counts from now, scaled to `expected` bytes."""
        self.what = what
        self._started = time.monotonic()
        self._expected = expected
        self._received = 0

    def deadline(self) -> float:
        share = max(self._expected, self._received) / self.limits.floor_rate
        return self._started + self.limits.allowance + share

    def _fill(self) -> None:
        """One recv, given no more than the time left before the deadline."""
        remaining = self.deadline() - time.monotonic()
        if remaining <= 0:
            raise self._late()
        self.sock.settimeout(min(self.timeout, remaining))
        try:
            data = self.sock.recv(RECV_CHUNK)
        except TimeoutError:
            if time.monotonic() >= self.deadline():
                raise self._late() from None
            raise
        if not data:
            raise ServerClosed
        self._received += len(data)
        self.buf += data

    def _late(self) -> ReadLimitExceeded:
        seconds = math.ceil(self.deadline() - self._started)
        return ReadLimitExceeded(
            f"{self.what}: no complete answer within its {seconds} s deadline "
            f"({self._received} bytes arrived)"
        )

    def readline(self, limit: int = STATUS_LINE_MAX) -> bytes:
        """One line with its CRLF; longer than `limit` raises."""
        start = 0
        while True:
            end = self.buf.find(b"\n", start)
            if end >= 0:
                if end >= limit:
                    break
                line = bytes(self.buf[: end + 1])
                del self.buf[: end + 1]
                return line
            if len(self.buf) > limit:
                break
            start = len(self.buf)
            self._fill()
        raise ReadLimitExceeded(f"{self.what}: a line longer than {limit} bytes")

    def body(self, max_bytes: int) -> bytes:
        """A multi-line answer after its status line, with the byte-stuffing undone."""
        line_max = self.limits.line_max
        buf, self.buf = bytearray(b"\n") + self.buf, bytearray()
        line_start = new = 1  # where the current line and the unscanned bytes begin
        while True:
            end, size = _terminator(buf, max(0, new - 4))
            if end >= 0:
                self.buf = bytearray(buf[end + size :])  # the next answer's, if pipelined
                del buf[end + 1 :]
                break
            if len(buf) - 1 > max_bytes:
                raise ReadLimitExceeded(f"{self.what}: an answer longer than {max_bytes} bytes")
            first = buf.find(b"\n", new)  # lines inside one chunk are shorter than a chunk
            if (first if first >= 0 else len(buf)) - line_start > line_max:
                raise ReadLimitExceeded(f"{self.what}: a line longer than {line_max} bytes")
            if first >= 0:
                line_start = buf.rfind(b"\n", new) + 1
            new = len(buf)
            self._fill_into(buf)
        if b"\n.." in buf:
            buf = buf.replace(b"\n..", b"\n.")
        del buf[0]
        return bytes(buf)

    def _fill_into(self, buf: bytearray) -> None:
        self._fill()
        buf += self.buf
        self.buf.clear()


def _terminator(buf: bytearray, start: int) -> tuple[int, int]:
    """Where the line "." ends the answer (the index of its leading newline), and its size."""
    found = [(at, len(t)) for t in _TERMINATORS if (at := buf.find(t, start)) >= 0]
    return min(found) if found else (-1, 0)


class Pop3Conn(poplib.POP3):
    """poplib.POP3 with implicit TLS, a protocol log and a raw multi-line reader."""

    def __init__(
        self, ep: Pop3Endpoint, context: ssl.SSLContext | None, protolog: ProtocolLog | None
    ) -> None:
        self.protolog = protolog
        self._implicit = context
        self._limits = ep.limits
        self._timeout = ep.timeout
        self._reader: BoundedReader | None = None
        try:
            super().__init__(ep.host, ep.port, ep.timeout)
        except BaseException:
            self.shut()  # e.g. the greeting timed out after the socket was opened
            raise

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout)
        if self._implicit is None:
            return sock
        try:
            return self._implicit.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise

    @property
    def reader(self) -> BoundedReader:
        """The socket's reader; a new socket (after STLS) gets a new, empty one."""
        if self._reader is None or self._reader.sock is not self.sock:
            self._reader = BoundedReader(self.sock, self._timeout, self._limits)
        return self._reader

    def _putcmd(self, line: str) -> None:
        if self.protolog is not None:
            self.protolog.sent(line)  # masks PASS
        self.reader.start(line.split(" ", 1)[0] or "a continuation")  # never the argument
        self.sock.sendall(line.encode(self.encoding) + b"\r\n")

    def _getline(self) -> tuple[bytes, int]:
        try:
            line = self.reader.readline(STATUS_LINE_MAX)
        except ServerClosed:
            raise poplib.error_proto(EOF) from None
        text = line.rstrip(b"\r\n")
        if self.protolog is not None:
            self.protolog.received(text)
        return text, len(line)

    def _getlongresp(self) -> tuple[bytes, list[bytes], int]:
        """poplib's, with a cap on the whole answer (UIDL and LIST listings)."""
        resp, _ = self._getline()
        if not resp.startswith(b"+"):
            raise poplib.error_proto(resp)
        lines: list[bytes] = []
        octets = 0
        line, size = self._getline()
        while line != b".":
            if line.startswith(b".."):
                size -= 1
                line = line[1:]
            octets += size
            if octets > self._limits.listing_max:
                raise ReadLimitExceeded(f"a listing longer than {self._limits.listing_max} bytes")
            lines.append(line)
            line, size = self._getline()
        return resp, lines, octets

    def body(self, command: str, max_bytes: int, expected: int = 0) -> bytes:
        """A multi-line answer as sent by the server, with only the byte-stuffing undone;
        `expected` (the listed size) scales its deadline, `max_bytes` caps it."""
        self._putcmd(command)
        self.reader.start(command, expected)
        status, _ = self._getline()
        if not status.startswith(b"+"):
            raise poplib.error_proto(status)
        try:
            data = self.reader.body(max_bytes)
        except ServerClosed:
            raise poplib.error_proto(EOF) from None
        if self.protolog is not None:
            self.protolog.literal(len(data))
            self.protolog.literal_data(data)  # only with ProtocolLogBodies
        return data

    def shut(self) -> None:
        """Close without QUIT; safe after a failed __init__ and when already closed."""
        with suppress(OSError, AttributeError):
            self.close()
