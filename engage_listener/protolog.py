"""Protocol log files: every line exchanged with a mail server, secrets masked.

The original service wrote the password into this file in clear; here LOGIN and
AUTHENTICATE arguments are always replaced by *** before anything is written, and
message literals are recorded as a size marker rather than their content.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import TextIO

_LOGIN = re.compile(r"^(\S+ LOGIN) .*$", re.IGNORECASE)
_AUTH = re.compile(r"^(\S+ AUTHENTICATE \S+|AUTH \S+)(?: .*)?$", re.IGNORECASE)
_AUTH_NO_IR = re.compile(r"^(\S+ AUTHENTICATE \S+|AUTH \S+)$", re.IGNORECASE)
_PASS = re.compile(r"^(PASS) .*$", re.IGNORECASE)


def expand_path(pattern: str, listener: str, now: dt.datetime | None = None) -> Path:
    """Expand %date%, %time% and %listener% in a ProtocolLogFile value."""
    moment = now or dt.datetime.now()
    safe_listener = re.sub(r"[^A-Za-z0-9_.-]", "_", listener)
    return Path(
        pattern.replace("%date%", moment.strftime("%Y%m%d"))
        .replace("%time%", moment.strftime("%H%M%S"))
        .replace("%listener%", safe_listener)
    )


def mask_command(line: str) -> str:
    """Hide credentials in a client command line."""
    match = _LOGIN.match(line)
    if match:
        return f"{match.group(1)} ***"
    match = _AUTH.match(line) or _PASS.match(line)
    if match:
        return f"{match.group(1)} ***"
    return line


class ProtocolLog:
    """Append-only protocol log for one connection."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file: TextIO = os.fdopen(fd, "a", encoding="utf-8", errors="replace")
        self.path = path
        self._mask_next = False

    def _write(self, direction: str, text: str) -> None:
        if self._file.closed:  # the loop may report a closed connection after close()
            return
        stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        self._file.write(f"{stamp} {direction} {text}\n")

    def sent(self, line: str) -> None:
        """Record a line sent by us, credentials masked."""
        if self._mask_next:
            self._mask_next = False
            self._write("C:", "***")
            return
        # "AUTHENTICATE MECH" with no initial response: the next line is the payload.
        self._mask_next = bool(_AUTH_NO_IR.match(line))
        self._write("C:", mask_command(line))

    def received(self, line: bytes) -> None:
        """Record a line received from the server."""
        self._write("S:", line.decode("utf-8", "replace"))

    def literal(self, size: int) -> None:
        """Record that a literal of `size` bytes was received, without its content."""
        self._write("S:", f"<{size} bytes of literal data>")

    def note(self, text: str) -> None:
        """Record a local event (connect, TLS, close)."""
        self._write("--", text)

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
